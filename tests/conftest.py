"""Test factories: tiny audio corpora written in the real manifest format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def tone_sequence(freqs: list[float], seconds_each: float = 0.25, sr: int = 16000,
                  seed: int = 0) -> np.ndarray:
    """A "word" per frequency: tones with a little noise, distinct enough to learn."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds_each * sr)) / sr
    parts = [0.3 * np.sin(2 * np.pi * f * t) for f in freqs]
    wave = np.concatenate(parts) + 0.01 * rng.standard_normal(len(parts) * len(t))
    return wave.astype(np.float32)


def write_corpus(folder: Path, items: list[tuple[str, str, list[float]]], name: str = "train",
                 lang: str = "de") -> Path:
    """items: (id, transcript, frequencies). Writes wavs and an ASR + ST manifest; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "audio").mkdir(exist_ok=True)
    rows = []
    for i, (uid, text, freqs) in enumerate(items):
        wave = tone_sequence(freqs, seed=i)
        sf.write(folder / "audio" / f"{uid}.wav", wave, 16000)
        base = {"audio": f"audio/{uid}.wav", "duration": len(wave) / 16000, "src_lang": lang,
                "src_text": text}
        rows.append({"id": f"{uid}-asr", **base, "tgt_lang": lang, "tgt_text": text})
        rows.append({"id": f"{uid}-st", **base, "tgt_lang": "en", "tgt_text": text.upper()})
    manifest = folder / f"{name}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


TWO_UTTERANCES = [
    ("u1", "eins zwei drei", [300, 500, 700, 900, 1100]),
    ("u2", "vier fünf", [1500, 1300, 400, 2000]),
]


@pytest.fixture
def two_utterances(tmp_path) -> Path:
    """A corpus folder with train.jsonl and dev.jsonl holding the same two recordings."""
    write_corpus(tmp_path / "corpus", TWO_UTTERANCES, "train")
    write_corpus(tmp_path / "corpus", TWO_UTTERANCES, "dev")
    return tmp_path / "corpus"


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))


LLM_WORDS = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(61)]


def tiny_tokenizer(words=LLM_WORDS):
    """A whitespace word-level tokenizer (no chat template: the plain prompt layout is used)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def tiny_llm_folder(path: Path, words=LLM_WORDS, hidden=32, layers=2, heads=4, kv_heads=2) -> Path:
    """A random tiny LLaMA + tokenizer saved as a Hugging Face folder (what --llm takes)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(words), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=256, initializer_range=0.2, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(path)
    tiny_tokenizer(words).save_pretrained(path)
    return path


# words of TWO_UTTERANCES' transcripts and translations (upper case), for a tiny LLM vocabulary,
# and those of the base-LLM prompt layout (models/prompt.py) that the whitespace tokenizer sees
CORPUS_WORDS = ["<unk>", "<s>", "</s>", "eins", "zwei", "drei", "vier", "fünf",
                "EINS", "ZWEI", "DREI", "VIER", "FÜNF",
                "German:", "English:", "transcript:", "Speech:", "Transcript:"]


def train_two_stages(root: Path, ctc_steps: int, s2_steps: int) -> tuple[Path, Path, Path]:
    """(corpus, stage-2 run, tiny LLM folder) after training both stages on TWO_UTTERANCES
    through the real CLI (SpecAugment off, stage-2 lr 0.01, LoRA rank 4)."""
    from speechllama.cli import main

    corpus = root / "corpus"
    write_corpus(corpus, TWO_UTTERANCES, "train")
    write_corpus(corpus, TWO_UTTERANCES, "dev")
    llm = tiny_llm_folder(root / "llm", CORPUS_WORDS)
    common = ["--config", str(TINY), "--data", str(corpus)]
    assert main(["train", "ctc", *common, "--out", str(root / "ctc"), f"train.max_steps={ctc_steps}",
                 "features.spec_augment=false"]) == 0
    assert main(["train", "speech-llm", *common, "--out", str(root / "s2"), "--compressor",
                 str(root / "ctc"), "--llm", str(llm), f"train.max_steps={s2_steps}",
                 "features.spec_augment=false", "train.lr=0.01", "llm.lora_rank=4"]) == 0
    return corpus, root / "s2", llm


def train_on_another_llms_labels(corpus: Path, label_llm: Path, out: Path, ctc_steps: int) -> Path:
    """A compressor whose CTC labels are ``label_llm``'s tokens, then 2 stage-2 steps (piece prior
    on) on a different tiny LLM; returns the stage-2 run folder."""
    from speechllama.cli import main

    other = tiny_llm_folder(out / "other-llm", CORPUS_WORDS[::-1])
    common = ["--config", str(TINY), "--data", str(corpus)]
    assert main(["train", "ctc", *common, "--out", str(out / "ctc"), f"train.max_steps={ctc_steps}",
                 "features.spec_augment=false", "compressor.labels=llm_tokens",
                 f"compressor.label_llm={label_llm}"]) == 0
    assert main(["train", "speech-llm", *common, "--llm", str(other), "--out", str(out / "s2"),
                 "--compressor", str(out / "ctc"), "train.max_steps=2",
                 "speech_llm.piece_prior=true"]) == 0
    return out / "s2"


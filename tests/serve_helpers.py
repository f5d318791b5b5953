"""Factories for the server tests: a tiny trained model, test clips, a long file, a live uvicorn server.

The model is trained once per pytest session (cached under the session's base temp folder), so
test_serve*.py modules share it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from conftest import CORPUS_WORDS, TINY, TWO_UTTERANCES, tiny_llm_folder, tone_sequence, write_corpus

API_KEY = "test-key"
SR = 16000
PAUSE_LEVEL = 0.002  # amplitude of the faint noise in pauses (~ -54 dBFS)
MAX_SECONDS = 3.0  # data.max_seconds of the model: long files are cut into segments of at most this


def pause(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return (PAUSE_LEVEL * rng.standard_normal(int(seconds * SR))).astype(np.float32)


def trained_model(tmp_path_factory) -> Path:
    """A stage-2 run folder of a tiny model with LLM-token CTC labels (transcripts decode jointly
    with CTC), trained on TWO_UTTERANCES in both tasks as tests/test_speech_llm.py's; cached for
    the session. Its segments are at most MAX_SECONDS long, so a long file has many."""
    from speechllama.cli import main

    root = tmp_path_factory.getbasetemp() / "serve-model"
    if (root / "done").exists():
        return root / "s2"
    write_corpus(root / "corpus", TWO_UTTERANCES, "train")
    write_corpus(root / "corpus", TWO_UTTERANCES, "dev")
    llm = tiny_llm_folder(root / "llm", CORPUS_WORDS)
    common = ["--config", str(TINY), "--data", str(root / "corpus"), "--llm", str(llm)]
    settings = ["features.spec_augment=false", f"data.max_seconds={MAX_SECONDS}"]
    assert main(["train", "ctc", *common, "--out", str(root / "ctc"), "train.max_steps=150",
                 *settings, "compressor.labels=llm_tokens"]) == 0
    assert main(["train", "speech-llm", *common, "--out", str(root / "s2"), "--compressor",
                 str(root / "ctc"), "train.max_steps=250", *settings, "train.lr=0.01",
                 "llm.lora_rank=4"]) == 0
    (root / "done").touch()
    return root / "s2"


def clip(k: int) -> np.ndarray:
    """Test clip k: utterance k % 2 of TWO_UTTERANCES with noise seed k (same words, other samples)."""
    _, _, freqs = TWO_UTTERANCES[k % 2]
    return tone_sequence(freqs, seed=k)


def write_clips(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        sf.write(folder / f"clip{k}.wav", clip(k), SR)
        paths.append(folder / f"clip{k}.wav")
    return paths


def long_wave(seconds: float, gap_s: float = 0.8, seed: int = 0,
              ) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Test clips 0, 1, 2, ... each after a pause (faint noise), until the wave is ``seconds`` long
    -> (wave, [start, end) seconds of every clip)."""
    rng = np.random.default_rng(seed)
    parts, spans, total, k = [], [], 0, 0
    while total < seconds * SR:
        gap, speech = pause(gap_s, rng), clip(k)
        spans.append(((total + len(gap)) / SR, (total + len(gap) + len(speech)) / SR))
        parts += [gap, speech]
        total += len(gap) + len(speech)
        k += 1
    return np.concatenate(parts), spans


def free_socket() -> socket.socket:
    """A listening-ready socket bound to a free port on 127.0.0.1 (handed to uvicorn: no race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def live_server(app):
    """Run ``app`` with a real uvicorn server in a thread; yields its base URL; stops it after."""
    import uvicorn

    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the uvicorn server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()

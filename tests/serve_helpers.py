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


def crops(n: int, seed: int = 0) -> list[np.ndarray]:
    """n pieces of a long wave of clips and pauses, 1.2-3 s long, starting anywhere: cut through the
    tones, they are words the tiny model cannot read, so its outputs are near-ties; with bf16
    weights some of them decode differently in a batch of another shape (docs/serving.md)."""
    rng = np.random.default_rng(seed)
    wave, _ = long_wave(60.0, seed=seed)
    out = []
    for _ in range(n):
        size = int(rng.uniform(1.2, MAX_SECONDS) * SR)
        start = int(rng.integers(0, len(wave) - size))
        out.append(wave[start : start + size])
    return out


def wav_bytes(wave: np.ndarray, sr: int = SR) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def multipart(data: bytes, filename: str = "audio.wav", **fields: str) -> tuple[bytes, str]:
    """(body, Content-Type) of a transcription form, for requests sent over a raw socket."""
    boundary = "speechllama-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 "Content-Type: audio/wav\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def raw_post(url: str, path: str, body: bytes, content_type: str, api_key: str | None = None,
             send: int | None = None) -> socket.socket:
    """POST over a plain socket, sending the first ``send`` bytes of the body (all by default), and
    return the open socket: the test decides when the client goes away (``close()``)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            + (f"Authorization: Bearer {api_key}\r\n" if api_key else "") + "\r\n").encode()
    sock.sendall(head + body[:send])
    return sock


def wait_for(condition, what: str, timeout_s: float = 120.0):
    """Poll ``condition()`` until it is true (a bound on a hang, not a timed assertion)."""
    end = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)
    return value

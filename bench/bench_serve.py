#!/usr/bin/env python
"""Serving bench: the real ``speechllama serve`` against the same files decoded offline, one run.

Prints Markdown tables (docs/serving.md):
- throughput (audio seconds per wall second) and p50/p95 latency at 1, 8 and 32 concurrent clients,
  and the same files decoded offline one by one (``model.transcribe(file)``);
- the batching gain at 16 clients: the server with --max-batch 16 against the same server with
  --max-batch 1 (nothing else differs);
- a bounded load test: 200 requests from 32 clients, errors, the server's RSS growth, results
  equal to offline;
- long form: RTFx of one 10-minute file through the server against the sum of its segments
  decoded offline one at a time.

By default a tiny model is trained first, as the tests do (seconds), on tone "speech": its numbers
measure the serving machinery (HTTP, queue, batching) far more than a model. ``--model DIR --data
MANIFEST`` measures a real one on the manifest's audio. Only ratios within one run mean anything.

    .venv/bin/python bench/bench_serve.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder (default: train a tiny one, as tests/serve_helpers.py)")
    p.add_argument("--data", help="JSONL manifest whose audio to use with --model (rows' src_lang)")
    p.add_argument("--files", type=int, default=32, help="distinct files the clients send")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the server and offline")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    p.add_argument("--load-requests", type=int, default=200)
    p.add_argument("--long-minutes", type=float, default=10.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="the frozen LLM's weights, served and offline alike (serve's default: float32)")
    return p.parse_args(argv)


def tiny_setup(root: Path, n: int):
    """Train the tests' tiny model; -> (model dir, [(file, lang)], long wave)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import serve_helpers as helpers

    class Factory:  # what trained_model() needs of pytest's tmp_path_factory
        def getbasetemp(self):
            return root

    model = helpers.trained_model(Factory())
    files = [(str(p), "de") for p in helpers.write_clips(root / "clips", n)]
    return model, files, lambda seconds: helpers.long_wave(seconds)[0]


def manifest_setup(model: str, manifest: str, n: int):
    """A real model and the audio of a manifest's first ``n`` rows (one row per file)."""
    rows, seen = [], set()
    for line in Path(manifest).read_text().splitlines():
        row = json.loads(line)
        audio = str((Path(manifest).parent / row["audio"]).resolve())
        if audio not in seen:
            seen.add(audio)
            rows.append((audio, row.get("src_lang")))
        if len(rows) == n:
            break

    def long_wave(seconds):
        from speechllama.audio import load_audio

        rng, parts, total = np.random.default_rng(0), [], 0
        while total < seconds * SR:
            pause = (0.002 * rng.standard_normal(int(0.8 * SR))).astype(np.float32)
            parts += [pause, load_audio(rows[len(parts) // 2 % len(rows)][0])]
            total += len(pause) + len(parts[-1])
        return np.concatenate(parts)

    return Path(model), rows, long_wave


class Server:
    """``speechllama serve`` in a subprocess on a free port; ``url``, ``rss_mb()``."""

    def __init__(self, model: Path, threads: int, device: str, max_batch: int, dtype: str):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "speechllama", "serve", "--model", str(model), "--port", str(self.port),
             "--device", device, "--max-batch", str(max_batch), "--dtype", dtype],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self):
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"speechllama serve exited: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(30)

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/health").json()


def offline_one_by_one(model, files) -> tuple[list[str], list[float]]:
    texts, seconds = [], []
    for path, lang in files:
        start = time.perf_counter()
        texts.append(model.transcribe(path, src_lang=lang))
        seconds.append(time.perf_counter() - start)
    return texts, seconds


def hammer(url: str, files, uploads, clients: int, n: int) -> dict:
    """``n`` transcription requests over ``files`` (round robin) from ``clients`` threads."""
    http = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=clients))

    def one(i):
        k = i % len(files)
        data = {"model": "bench", **({"language": files[k][1]} if files[k][1] else {})}
        start = time.perf_counter()
        try:
            r = http.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", uploads[k])}, data=data)
            text = r.json()["text"] if r.status_code == 200 else None
        except httpx.HTTPError:
            text = None
        return k, text, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        out = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    http.close()
    return {"ks": [o[0] for o in out], "texts": [o[1] for o in out], "latency": [o[2] for o in out],
            "wall": wall}


def row(name: str, audio_s: float, wall: float, latency: list[float], equal: str) -> str:
    p50, p95 = np.percentile(latency, [50, 95])
    return (f"| {name} | {audio_s / wall:.1f} | {1000 * p50:.0f} | {1000 * p95:.0f} | {equal} |")


def served_rows(server: Server, args, files, uploads, durations, reference) -> list[str]:
    rows = []
    for c in args.clients:
        hammer(server.url, files, uploads, c, c)  # warm-up
        n = max(args.requests, c)
        res = hammer(server.url, files, uploads, c, n)
        audio = sum(durations[k] for k in res["ks"])
        same = sum(t == reference[k] for k, t in zip(res["ks"], res["texts"]))
        rows.append(row(f"served, {c} client{'s' * (c > 1)}", audio, res["wall"], res["latency"],
                        f"{same}/{n}"))
    return rows


def batching_gain(model_dir, args, files, uploads, durations, rounds: int = 3) -> tuple[float, float]:
    """Median throughput at 16 clients of a server with --max-batch 16 and one with --max-batch 1,
    both up at once and measured in alternation (a shared machine's load drifts)."""
    with Server(model_dir, args.threads, args.device, 16, args.dtype) as batched, \
            Server(model_dir, args.threads, args.device, 1, args.dtype) as single:
        out = {batched.url: [], single.url: []}
        for server in (batched, single):
            hammer(server.url, files, uploads, 16, 16)  # warm-up
        for _ in range(rounds):
            for url in out:
                res = hammer(url, files, uploads, 16, max(args.requests, 64))
                out[url].append(sum(durations[k] for k in res["ks"]) / res["wall"])
    return float(np.median(out[batched.url])), float(np.median(out[single.url]))


def load_test(server: Server, args, files, uploads, reference) -> str:
    before = server.rss_mb()
    res = hammer(server.url, files, uploads, 32, args.load_requests)
    after = server.rss_mb()
    errors = sum(t is None for t in res["texts"])
    same = sum(t == reference[k] for k, t in zip(res["ks"], res["texts"]))
    stats = server.stats()
    return (f"{args.load_requests} requests, 32 clients: {errors} errors, {same}/{args.load_requests} "
            f"equal to offline, server RSS {before:.0f} -> {after:.0f} MB ({after - before:+.1f} MB), "
            f"{res['wall']:.1f} s; batches so far: {stats['batches']}, mean {stats['mean_batch']}, "
            f"largest {stats['largest_batch']}")


def long_form(server: Server, model, wave: np.ndarray, lang: str | None) -> list[str]:
    """One long file served vs its segments decoded offline one at a time (same cut points)."""
    from speechllama.inference.api import Job

    buf = tempfile.SpooledTemporaryFile()
    sf.write(buf, wave, SR, format="WAV")
    buf.seek(0)
    data = {"model": "bench", "response_format": "verbose_json", **({"language": lang} if lang else {})}
    start = time.perf_counter()
    r = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("long.wav", buf.read())},
                   data=data, timeout=3600)
    served = time.perf_counter() - start
    segments = r.json()["segments"]
    offline, same = 0.0, 0
    for seg in segments:
        piece = wave[round(seg["start"] * SR): round(seg["end"] * SR)]
        start = time.perf_counter()
        text = model.run([Job(piece, "asr", lang)])[0].text
        offline += time.perf_counter() - start
        same += text == seg["text"]
    minutes = len(wave) / SR / 60
    return ["| long form | audio | segments | wall s | RTFx |", "|---|---|---|---|---|",
            f"| served, one request | {minutes:.1f} min | {len(segments)} | {served:.2f} | "
            f"{60 * minutes / served:.0f} |",
            f"| offline, segment by segment | {minutes:.1f} min | {len(segments)} | {offline:.2f} | "
            f"{60 * minutes / offline:.0f} |",
            f"\nlong form speed-up {offline / served:.2f}x; {same}/{len(segments)} segment texts "
            "equal to the same segment decoded alone"]


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from speechllama import load

    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    if args.model:
        model_dir, files, make_long = manifest_setup(args.model, args.data, args.files)
    else:
        model_dir, files, make_long = tiny_setup(workdir, args.files)
    model = load(model_dir, device=args.device, dtype=getattr(torch, args.dtype))  # as served
    uploads = [Path(p).read_bytes() for p, _ in files]
    durations = [sf.info(p).duration for p, _ in files]
    reference, seconds = offline_one_by_one(model, files)
    rows = ["| setting | audio s per s | p50 ms | p95 ms | equal to offline |", "|---|---|---|---|---|",
            row("offline, one by one", sum(durations), sum(seconds), seconds, "-")]
    with Server(model_dir, args.threads, args.device, 16, args.dtype) as server:
        rows += served_rows(server, args, files, uploads, durations, reference)
        load_line = load_test(server, args, files, uploads, reference)
        long_rows = long_form(server, model, make_long(60 * args.long_minutes), files[0][1])
    batched, single = batching_gain(model_dir, args, files, uploads, durations)
    print(f"model: {model_dir}; {len(files)} files of {np.mean(durations):.2f} s on average; "
          f"{args.threads} torch threads, device {args.device}\n")
    print("\n".join(rows))
    print(f"\nbatching gain at 16 clients: {batched:.1f} audio s/s with --max-batch 16, "
          f"{single:.1f} with --max-batch 1: **{batched / single:.2f}x**")
    print(f"\nload test: {load_line}\n")
    print("\n".join(long_rows))


if __name__ == "__main__":
    main()

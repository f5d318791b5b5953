#!/usr/bin/env python
"""What on-the-fly waveform augmentation costs a training batch: the features of --rows rows of
~3 s from the fbank cache vs decoded + augmented + fbank, side by side in ONE run (interleaved
repetitions, 1 thread by default; the fastest repetition of each, the least disturbed on a shared
machine, as the work is deterministic). Only ratios within one run mean anything (docs/bench.md).

Variants: the cache lookup (what rows that are not augmented cost), decode + fbank (augmentation
with identity transforms), each augmentation alone, and the defaults of AugmentConfig with
prob=1 (speed from [0.9, 1.0, 1.1], noise on half the rows, telephone on a tenth, gain). Rows are
the recordings of --data with a duration in [2.5, 3.5] s; without that manifest, synthetic tone
sequences of 3 s.

    .venv/bin/python bench/bench_augment.py --data runs/demo/data/train.jsonl --threads 1
"""

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speechllama.audio import fbank, load_audio
from speechllama.audio.augment import Augmenter
from speechllama.config import AugmentConfig
from speechllama.data import read_manifest
from speechllama.data.features import load_features

IDENTITY = AugmentConfig(prob=1.0, speeds=[1.0], noise_prob=0.0, telephone_prob=0.0, gain_db=0.0)
VARIANTS = {
    "decode + fbank": IDENTITY,
    "+ speed 0.9": replace(IDENTITY, speeds=[0.9]),
    "+ white noise": replace(IDENTITY, noise_prob=1.0, noise_kinds=["white"]),
    "+ pink noise": replace(IDENTITY, noise_prob=1.0, noise_kinds=["pink"]),
    "+ babble": replace(IDENTITY, noise_prob=1.0, noise_kinds=["babble"]),
    "+ telephone (mu-law)": replace(IDENTITY, telephone_prob=1.0),
    "+ gain": replace(IDENTITY, gain_db=6.0),
    "defaults, prob=1": AugmentConfig(prob=1.0),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="runs/demo/data/train.jsonl", help="manifest to take rows from")
    p.add_argument("--rows", type=int, default=30, help="rows per batch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15, help="timed repetitions of each variant")
    return p.parse_args(argv)


def rows_of(manifest: Path, n: int, folder: Path) -> list[str]:
    """n distinct recordings of 2.5-3.5 s from the manifest, or n synthetic ones of 3 s."""
    if manifest.exists():
        paths = sorted({u.audio for u in read_manifest(manifest) if 2.5 <= u.duration <= 3.5})
        if len(paths) >= n:
            return paths[:: len(paths) // n][:n]
    rng = np.random.default_rng(0)
    t = np.arange(3 * 16000) / 16000
    for i in range(n):
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 3000) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(folder / f"{i}.wav", wave.astype(np.float32), 16000)
    return [str(folder / f"{i}.wav") for i in range(n)]


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        paths = rows_of(Path(args.data), args.rows, Path(tmp))
        store = load_features(paths, Path(tmp) / "cache.safetensors", progress=False)
        seconds = sum(store.num_frames(p) for p in paths) / 100
        g = torch.Generator().manual_seed(0)
        runs = {"cache lookup": lambda: [store.get(p) for p in paths]}
        for name, cfg in VARIANTS.items():
            augment = Augmenter(cfg, paths)
            runs[name] = lambda a=augment: [fbank(a(load_audio(p), g)) for p in paths]
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):  # interleaved: a load change on the machine hits all alike
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    base, plain = min(times["cache lookup"]), min(times["decode + fbank"])
    print(f"{len(paths)} rows, {seconds:.0f} s of audio, {args.threads} thread(s), "
          f"fastest of {args.repeats}", file=sys.stderr)
    print(f"{'features of one batch':<24} {'ms':>8} {'x cache':>9} {'x decode+fbank':>15}")
    for name, t in times.items():
        ms = min(t) * 1000
        print(f"{name:<24} {ms:8.1f} {ms / 1000 / base:9.0f} {ms / 1000 / plain:15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

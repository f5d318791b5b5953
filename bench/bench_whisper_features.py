"""The pretrained ear's feature pass (the frozen Whisper-base encoder, unpadded, batched with a key
mask): seconds of audio per second in float32 vs bf16 autocast, and 30-s padded calls, side by
side on the same clips, plus how far bf16 moves the features (cosine to float32).

    .venv/bin/python bench/bench_whisper_features.py --data runs/demo/data/train.jsonl --clips 200
"""

from __future__ import annotations

import argparse
import time

import torch

from speechllama.audio import load_audio
from speechllama.data import read_manifest
from speechllama.models.backbones import WhisperBackbone
from speechllama.models.whisper import encode, load_whisper_encoder, log_mel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a manifest (JSONL)")
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = sorted({u.audio for u in read_manifest(args.data)})[: args.clips]
    waves = [load_audio(p) for p in paths]
    seconds = sum(len(w) for w in waves) / 16000
    backbone = WhisperBackbone(load_whisper_encoder(), 0, 1, 8)
    backbone.features(waves[:4])  # warm-up
    results = {}
    for name, dtype in (("float32", None), ("bf16", torch.bfloat16)):
        backbone.dtype = dtype
        start = time.perf_counter()
        results[name] = backbone.features(waves)
        print(f"{name:8s} unpadded, batched: {seconds / (time.perf_counter() - start):6.1f} s of audio "
              f"per second ({len(waves)} clips, {seconds:.0f} s, {args.threads} threads)")
    cos = torch.cat([torch.nn.functional.cosine_similarity(a, b, dim=-1)
                     for a, b in zip(results["float32"], results["bf16"])])
    print(f"bf16 vs float32 features: per-frame cosine mean {cos.mean():.4f}, min {cos.min():.4f}")
    start, n = time.perf_counter(), min(16, len(waves))
    with torch.no_grad():
        for w in waves[:n]:  # what a 30-s padded encoder call costs (Whisper's own way)
            mel = torch.nn.functional.pad(log_mel(torch.as_tensor(w)), (0, 0, 0, 3000))[:3000][None]
            encode(backbone.encoder, mel, torch.tensor([3000]))
    padded = sum(len(w) for w in waves[:n]) / 16000
    print(f"float32  30-s padded, one clip a call: {padded / (time.perf_counter() - start):6.1f} s of "
          "audio per second")


if __name__ == "__main__":
    main()

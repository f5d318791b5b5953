#!/usr/bin/env python
"""Stage-2 training with the frozen LLM stored in bf16 vs float32, side by side in ONE run.

Both run bf16 autocast (the demo's ``train.bf16=true``); ``SpeechLLMTask`` stores a frozen
pretrained LLM in bf16 when ``train.bf16`` is on (LoRA and the audio encoder stay float32). Prints
the step time of each (the two models take turns on the same batches, A, B, A, B, ..., so a load
change on the machine hits both alike; the ratio is the result, docs/bench.md) and the memory the
LLM's weights take.

    .venv/bin/python bench/bench_frozen_dtype.py --compressor runs/demo/ctc --data runs/demo/data
"""

import argparse
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compressor", default="runs/demo/ctc", help="stage-1 run/checkpoint folder")
    p.add_argument("--data", default="runs/demo/data", help="corpus folder with train.jsonl")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="timed steps per model")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from speechllama.config import load_config
    from speechllama.models.build import build_speech_llm
    from speechllama.recipes.budgets import STAGE2
    from speechllama.training.speech_llm import SpeechLLMTask

    cfg = load_config(None, [*STAGE2, f"data.train={Path(args.data) / 'train.jsonl'}",
                             f"speech_llm.compressor={args.compressor}"])
    task = SpeechLLMTask(cfg, progress=False)  # its model: frozen LLM in bf16
    fp32, _ = build_speech_llm(task.cfg, task.model.compressor, None, task.ctc_tokenizer)
    fp32.encoder.load_state_dict(task.model.encoder.state_dict())
    models = {"bf16 frozen weights": task.model, "float32 frozen weights": fp32}
    opts = {k: torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], lr=1e-4)
            for k, m in models.items()}
    batches = iter(task.sampler)
    seconds = dict.fromkeys(models, 0.0)
    for step in range(args.steps + 1):  # the first round warms up, untimed
        batch = task.collate(next(batches), torch.Generator().manual_seed(step))
        for name, model in models.items():
            model.train()
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, _ = task.loss(model, batch)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            if step:
                seconds[name] += time.perf_counter() - start
    print(f"| frozen LLM weights | s/step ({args.steps} steps, {args.threads} threads) | speed-up "
          "| LLM weights, MB |")
    print("|---|---:|---:|---:|")
    base = seconds["float32 frozen weights"]
    for name, s in seconds.items():
        mb = sum(q.numel() * q.element_size() for q in models[name].llm.parameters()) / 2**20
        print(f"| {name} | {s / args.steps:.2f} | {base / s:.2f}x | {mb:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""On 2 cores, do two 1-thread `torchrun` ranks train faster than one process with two threads?

Runs `speechllama train ctc` (stage 1) and `speechllama train speech-llm` (stage 2) at the demo's
settings (STAGE1 / STAGE2 of speechllama/recipes/demo.py, steps shortened) as:

    a   one process, 2 threads (OMP_WAIT_POLICY as inherited)
    a_p one process, 2 threads, OMP_WAIT_POLICY=PASSIVE (what scripts/demo.sh exports)
    b   one process, 1 thread
    c   torchrun --nproc_per_node 2, 1 thread per rank

on the same data for the same number of steps, one after the other in ONE run, and prints
utterances/s and the ratios c/a, c/a_p, c/b, a/b. The training time comes from each run's
log.jsonl; the utterances are counted exactly by replaying every rank's sampler (the loop's own
`items_per_s` counts rank 0 times the world size) and also shown as logged. See docs/bench.md.

    .venv/bin/python bench/bench_ddp.py --data runs/demo/data --compressor runs/demo/ctc
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {  # name: (description, processes, threads per process, extra environment)
    "a": ("1 process x 2 threads", 1, 2, {}),
    "a_p": ("1 process x 2 threads, OMP_WAIT_POLICY=PASSIVE", 1, 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "b": ("1 process x 1 thread", 1, 1, {}),
    "c": ("torchrun 2 ranks x 1 thread", 2, 1, {}),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="runs/demo/data", help="corpus folder with train.jsonl")
    p.add_argument("--compressor", default="runs/demo/ctc", help="stage-1 run for stage 2")
    p.add_argument("--steps1", type=int, default=150, help="stage-1 steps per run")
    p.add_argument("--steps2", type=int, default=20, help="stage-2 steps per run (0: skip stage 2)")
    p.add_argument("--repeats", type=int, default=1, help="rounds of all configs (median reported)")
    p.add_argument("--configs", default="a,a_p,b,c", help="subset of " + ",".join(CONFIGS))
    p.add_argument("--keep", action="store_true", help="keep the temporary run folders")
    return p.parse_args(argv)


def overrides(stage: str, steps: int) -> list[str]:
    """The demo's settings for the stage, cut to ``steps`` steps, logging often, no extra checkpoint."""
    from speechllama.recipes.budgets import STAGE1, STAGE2

    every = 10 if stage == "ctc" else 1
    return [*(STAGE1 if stage == "ctc" else STAGE2), f"train.max_steps={steps}",
            "train.max_minutes=0", f"train.log_every={every}", f"train.checkpoint_every={10 * steps}"]


def command(stage: str, procs: int, out: Path, args) -> list[str]:
    cmd = [sys.executable, "-m", "speechllama", "train", stage, "--out", str(out),
           "--data", str(args.data)]
    if procs > 1:
        cmd[1:3] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                    "-m", "speechllama"]
    if stage == "speech-llm":
        cmd += ["--compressor", str(args.compressor)]
    return cmd + overrides(stage, args.steps1 if stage == "ctc" else args.steps2)


def steady_rate(rows: list[dict], skip: int) -> float:
    """Utterances/s between the first logged row at step >= skip and the last row.

    items_per_s * elapsed_s gives the items seen up to a row (counted on rank 0, times the world
    size under torchrun)."""
    first = next(r for r in rows if r["step"] >= skip)
    last = rows[-1]
    if last is first:
        return last["items_per_s"]
    items = last["items_per_s"] * last["elapsed_s"] - first["items_per_s"] * first["elapsed_s"]
    return items / (last["elapsed_s"] - first["elapsed_s"])


def exact_items(stage: str, steps: int, args) -> dict[int, int]:
    """Utterances in the first ``steps`` batches of all ranks, for 1 and for 2 processes: the
    sampler is a pure function of the items' lengths, the seed, the rank and the world size."""
    from speechllama.config import load_config
    from speechllama.data.batching import LengthBucketSampler

    extra = [f"data.train={Path(args.data) / 'train.jsonl'}"]
    if stage == "ctc":
        from speechllama.training.ctc import CTCTask as Task
    else:
        from speechllama.training.speech_llm import SpeechLLMTask as Task
        extra.append(f"speech_llm.compressor={args.compressor}")
    cfg = load_config(None, overrides(stage, steps) + extra)
    frames = Task(cfg, progress=False).sampler.lengths
    out = {}
    for world in (1, 2):
        samplers = [iter(LengthBucketSampler(frames, cfg.data.max_frames, cfg.train.seed,
                                             rank=r, world_size=world)) for r in range(world)]
        out[world] = sum(len(next(it)) for it in samplers for _ in range(steps))
    return out


def run_one(stage: str, name: str, out: Path, args) -> dict:
    desc, procs, threads, extra = CONFIGS[name]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **extra}
    out.mkdir(parents=True)
    start = time.perf_counter()
    with open(out / "stdout.txt", "w") as f:
        code = subprocess.run(command(stage, procs, out, args), env=env, stdout=f,
                              stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    if code != 0:
        tail = (out / "stdout.txt").read_text()[-3000:]
        raise SystemExit(f"{stage} {name} failed (exit {code}):\n{tail}")
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = rows[-1]["step"]
    result = {"wall": wall, "log": rows[-1]["items_per_s"], "train_s": rows[-1]["elapsed_s"],
              "steady": steady_rate(rows, max(2, steps // 5)), "steps": steps,
              "batches": steps * procs / rows[-1]["elapsed_s"], "load": os.getloadavg()[0]}
    print(f"[bench] {stage} {name} ({desc}): {result}", file=sys.stderr, flush=True)
    return result


def print_stage(stage: str, results: dict[str, list[dict]], steps: int) -> None:
    keys = ("exact", "log", "steady", "batches", "train_s", "wall", "load")
    med = {n: {k: statistics.median(r[k] for r in rs) for k in keys} for n, rs in results.items()}
    reps = len(next(iter(results.values())))
    print(f"\n### `speechllama train {stage}`, {steps} steps per run, demo settings "
          f"(median of {reps} run{'s' if reps > 1 else ''})\n")
    print("| config | utt/s exact | utt/s log | utt/s log, steady | batches/s | training s | "
          "wall s (with start-up) | load avg at end |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for n, m in med.items():
        print(f"| {n}: {CONFIGS[n][0]} | {m['exact']:.2f} | {m['log']:.2f} | {m['steady']:.2f} | "
              f"{m['batches']:.3f} | {m['train_s']:.1f} | {m['wall']:.1f} | {m['load']:.2f} |")
    pairs = [("c", b) for b in ("a", "a_p", "b")] + [("a", "b")]
    print("\n| ratio | utt/s exact | utt/s log | utt/s log, steady | batches/s |\n"
          "|---|---:|---:|---:|---:|")
    for x, y in pairs:
        if x in med and y in med:
            print(f"| {x} / {y} | " + " | ".join(f"{med[x][k] / med[y][k]:.2f}" for k in keys[:4])
                  + " |")


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    if not (Path(args.data) / "train.jsonl").is_file():
        raise SystemExit(f"{args.data}/train.jsonl not found (run bash scripts/demo.sh, or pass --data)")
    stages = [("ctc", args.steps1)]
    if args.steps2 > 0 and Path(args.compressor).exists():
        stages.append(("speech-llm", args.steps2))
    elif args.steps2 > 0:
        print(f"stage 2 skipped: no compressor at {args.compressor} (pass --compressor)")
    tmp = Path(tempfile.mkdtemp(prefix="speechllama-bench-ddp-"))
    print(f"# speechllama DDP bench, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
          f"data `{args.data}`, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    try:
        for stage, steps in stages:
            results: dict[str, list[dict]] = {n: [] for n in names}
            for rep in range(args.repeats):
                for n in names:  # interleaved, so drift in machine load hits every config alike
                    results[n].append(run_one(stage, n, tmp / f"{stage}-{n}-{rep}", args))
            items = exact_items(stage, steps, args)  # after the timed runs: costs no timing
            for n, rs in results.items():
                for r in rs:
                    r["exact"] = items[CONFIGS[n][1]] / r["train_s"]
            print_stage(stage, results, steps)
    finally:
        if args.keep:
            print(f"\nrun folders kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

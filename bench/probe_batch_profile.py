"""Where a batched `SpeechToText.run` spends its time: the same files decoded one by one and in
one call (in-process, no HTTP), then the torch profiler's top operators of the batched call.
docs/serving.md ("Why 1.66x") quotes it for the demo's model:

    .venv/bin/python bench/probe_batch_profile.py --model runs/demo/model \
        --data runs/demo/data/test.jsonl --files 16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="manifest; its first --files distinct recordings")
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import speechllama
    from speechllama.audio import load_audio
    from speechllama.inference.api import Job

    model = speechllama.load(args.model, dtype=getattr(torch, args.dtype), device="cpu")
    files: dict[str, str] = {}
    for line in Path(args.data).read_text().splitlines():
        row = json.loads(line)
        files.setdefault(str((Path(args.data).parent / row["audio"]).resolve()), row["src_lang"])
        if len(files) == args.files:
            break
    jobs = [Job(load_audio(path), "asr", lang) for path, lang in files.items()]
    model.run(jobs[:2])  # warm-up
    start = time.perf_counter()
    alone = [model.run([job])[0].text for job in jobs]
    one_by_one = time.perf_counter() - start
    start = time.perf_counter()
    together = [t.text for t in model.run(jobs)]
    batched = time.perf_counter() - start
    same = sum(a == b for a, b in zip(alone, together))
    print(f"{len(jobs)} files: one by one {one_by_one:.2f} s, batched {batched:.2f} s: "
          f"{one_by_one / batched:.2f}x; {same}/{len(jobs)} equal")
    print("output tokens:", [len(model.bundle.tokenizer(t)["input_ids"]) for t in together])
    with torch.profiler.profile() as prof:
        model.run(jobs)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main()

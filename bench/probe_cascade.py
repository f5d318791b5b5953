#!/usr/bin/env python
"""The cascade a piece-prior model starts from: the CTC compressor's greedy transcript of each ST
row, translated from text by the frozen LLM with the speech model's prompt (evaluate.text_mt_ceiling
with the transcript in place of the reference). Next to it, the ceiling from the reference.

    .venv/bin/python bench/probe_cascade.py --compressor runs/demo/ctc --data runs/demo/data/dev.jsonl --rows 10
"""

import argparse
import dataclasses

from speechllama.config import LLMConfig
from speechllama.data import read_manifest
from speechllama.data.features import feature_cache_path, load_features
from speechllama.evaluation.evaluate import ctc_outputs, text_mt_ceiling
from speechllama.evaluation.metrics import first_per_group
from speechllama.models.build import load_compressor
from speechllama.models.llm import load_llm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compressor", default="runs/demo/ctc")
    ap.add_argument("--data", default="runs/demo/data/dev.jsonl")
    ap.add_argument("--rows", type=int, default=10, help="ST rows per language pair and subset")
    ap.add_argument("--llm", default="", help="shipped name or folder (default: the default LLM)")
    args = ap.parse_args()

    rows = first_per_group([u for u in read_manifest(args.data) if u.task == "st"], args.rows)
    bundle = load_compressor(args.compressor)
    store = load_features([u.audio for u in rows], feature_cache_path(args.data))
    texts, _ = ctc_outputs(bundle, [store.get(u.audio) for u in rows])
    llm, tok = load_llm(args.llm or LLMConfig().path, lora_rank=0)
    llm.eval()
    heard = [dataclasses.replace(u, src_text=t or ".") for u, t in zip(rows, texts)]
    for name, rs in (("reference transcript (the ceiling)", rows), ("compressor's transcript", heard)):
        m = text_mt_ceiling(llm, tok, LLMConfig().system_prompt, rs)["macro"]
        print(f"{name}: BLEU {m['st_bleu_all']:.1f} (numbers {m['st_bleu_numbers']:.1f}, "
              f"sentences {m['st_bleu_sentences']:.1f})", flush=True)


if __name__ == "__main__":
    main()

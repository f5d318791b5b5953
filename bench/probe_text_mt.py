#!/usr/bin/env python
"""The text-MT ceiling of a frozen LLM on the demo's test rows, without any speech model.

For the first ``--rows`` ST rows of each (language pair, numbers/sentences) group it puts the
reference source transcript's tokens where the audio vectors go in the speech model's prompt
(speechllama.models.prompt) and lets the frozen LLM (no LoRA) translate greedily: the same
measurement ``speechllama evaluate`` reports as "text-MT ceiling" next to a speech model's BLEU
(speechllama.evaluation.evaluate.text_mt_ceiling). What a perfect ear would be worth with no translation
learned in stage 2.

    .venv/bin/python bench/probe_text_mt.py --llm gemma3-270m --rows 15
    .venv/bin/python bench/probe_text_mt.py --llm smollm2 --rows 15
"""

import argparse
import time

from speechllama.config import LLMConfig
from speechllama.data import read_manifest
from speechllama.evaluation.evaluate import text_mt_ceiling
from speechllama.evaluation.metrics import first_per_group
from speechllama.models.llm import load_llm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/demo/data/test.jsonl")
    ap.add_argument("--rows", type=int, default=15, help="ST rows per language pair and subset")
    ap.add_argument("--llm", default="", help="shipped name or folder (default: the default LLM)")
    args = ap.parse_args()

    llm, tok = load_llm(args.llm or LLMConfig().path, lora_rank=0)
    llm.eval()
    rows = first_per_group([u for u in read_manifest(args.data) if u.task == "st"], args.rows)
    start = time.time()
    result = text_mt_ceiling(llm, tok, LLMConfig().system_prompt, rows)
    print(f"{'pair':8} {'subset':10} {'rows':>4} {'BLEU':>6} {'chrF':>6}")
    for t in result["table"]:
        print(f"{t['pair']:8} {t['subset']:10} {t['n']:4d} {t['bleu']:6.1f} {t['chrf']:6.1f}")
    print(" ".join(f"{k} {v:.1f}" for k, v in result["macro"].items() if "bleu" in k),
          f"({len(rows)} rows, {time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()

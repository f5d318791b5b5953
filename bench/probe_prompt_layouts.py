#!/usr/bin/env python
"""Which prompt layout lets a base LLM (no chat template) translate from text? Inference only.

The text-MT ceiling (speechllama.evaluation.evaluate.text_mt_ceiling: the reference source transcript in the
audio slot, the frozen LLM, greedy) under each candidate layout of models/prompt.plain_layout, on
the same rows. The chosen layout is the current plain_layout ("German:<audio>\\nEnglish:").

    .venv/bin/python bench/probe_prompt_layouts.py --llm gemma3-270m --rows 8
"""

import argparse

from speechllama.config import LLMConfig
from speechllama.data import read_manifest
from speechllama.evaluation.evaluate import text_mt_ceiling
from speechllama.evaluation.metrics import first_per_group
from speechllama.models import prompt
from speechllama.models.llm import load_llm

A = prompt.AUDIO_PLACEHOLDER
LAYOUTS = {  # (task, src, tgt) -> text with the placeholder; ST rows only here
    "instruction + Audio/Answer (the SmolLM2-era plain layout)":
        lambda t, s, g: f"{prompt.instruction(t, s, g)}\nAudio:{A}\nAnswer:",
    "instruction + source/target labels":
        lambda t, s, g: f"{prompt.instruction(t, s, g)}\n{prompt.language_name(s)}:{A}\n"
                        f"{prompt.language_name(g)}:",
    "source/target labels (current)": prompt.plain_layout,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/demo/data/test.jsonl")
    ap.add_argument("--rows", type=int, default=8, help="ST rows per language pair and subset")
    ap.add_argument("--llm", default="", help="shipped name or folder (default: the default LLM)")
    args = ap.parse_args()

    llm, tok = load_llm(args.llm or LLMConfig().path, lora_rank=0)
    llm.eval()
    if getattr(tok, "chat_template", None):
        raise SystemExit(f"{args.llm} has a chat template: build_prompt uses it, not a plain layout")
    rows = first_per_group([u for u in read_manifest(args.data) if u.task == "st"], args.rows)
    print(f"| layout | BLEU all | numbers | sentences |  ({len(rows)} ST rows)\n|---|---:|---:|---:|")
    for name, layout in LAYOUTS.items():
        prompt.plain_layout = layout  # build_prompt looks it up at call time
        m = text_mt_ceiling(llm, tok, LLMConfig().system_prompt, rows)["macro"]
        print(f"| {name} | {m['st_bleu_all']:.1f} | {m['st_bleu_numbers']:.1f} | "
              f"{m['st_bleu_sentences']:.1f} |", flush=True)


if __name__ == "__main__":
    main()

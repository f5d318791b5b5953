#!/usr/bin/env python
"""Can the frozen LLM translate the demo's sentences from TEXT? Inference only, no training.

For the first ``--rows`` ST rows of each (language, numbers/sentences) group it puts the reference
source transcript's own tokens where the audio vectors go in the real prompt (the speech
translation instruction, the demo's system prompt) and lets the frozen LLM (no LoRA) translate
greedily. The BLEU it reaches is what a perfect audio side would be worth with no translation
learned in stage 2: the starting point stage 2's LoRA and audio encoder have to improve on.

    .venv/bin/python bench/probe_text_mt.py --data runs/demo/data/test.jsonl --rows 10
"""

import argparse
from collections import defaultdict

import torch

from speechllama.config import LLMConfig
from speechllama.data import read_manifest
from speechllama.decode import DecodingOptions, generate
from speechllama.evaluate import subset_of, translation_scores
from speechllama.models.llm import audio_text_mask, build_prompt, default_llm_path, instruction, load_llm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/demo/data/test.jsonl")
    ap.add_argument("--rows", type=int, default=10, help="ST rows per language and subset")
    ap.add_argument("--llm", default=None, help="LLM folder (default: SmolLM2-135M-Instruct)")
    args = ap.parse_args()

    llm, tok = load_llm(args.llm or default_llm_path(), lora_rank=0)
    llm.eval()
    groups = defaultdict(list)
    for u in read_manifest(args.data):
        if u.task == "st" and len(groups[(u.src_lang, subset_of(u.id))]) < args.rows:
            groups[(u.src_lang, subset_of(u.id))].append(u)
    system = LLMConfig().system_prompt
    print(f"{'pair':8} {'subset':10} {'rows':>4} {'BLEU':>6} {'chrF':>6}  example")
    macro = defaultdict(list)
    for (lang, subset), rows in sorted(groups.items()):
        hyps = []
        for u in rows:
            before, after = build_prompt(tok, instruction("st", u.src_lang, u.tgt_lang), system=system)
            source = tok(u.src_text, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([before + source + after])
            valid = torch.ones_like(ids, dtype=torch.bool)
            mask = audio_text_mask(torch.tensor([len(before)]), torch.tensor([len(source)]), valid,
                                   causal_audio=True)  # plain causal text
            with torch.no_grad():
                out = generate(llm, llm.get_input_embeddings()(ids), mask, valid, tok.eos_token_id,
                               DecodingOptions(max_new_tokens=40))
            hyps.append(tok.decode(out[0], skip_special_tokens=True).strip())
        s = translation_scores([u.tgt_text for u in rows], hyps)
        macro[subset].append(s["bleu"])
        print(f"{lang}-en {subset:10} {len(rows):4d} {s['bleu']:6.1f} {s['chrf']:6.1f}  "
              f"{rows[0].src_text!r} -> {hyps[0][:70]!r} (ref {rows[0].tgt_text!r})")
    for subset, vals in sorted(macro.items()):
        print(f"macro BLEU {subset}: {sum(vals) / len(vals):.1f}")


if __name__ == "__main__":
    main()

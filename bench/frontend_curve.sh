#!/usr/bin/env bash
# The CTC compressor's learning curve at the demo's stage-1 settings (900 steps of two 1-thread DDP
# ranks), for comparing front-end recipes: CER on dev every 300 steps, per voice source.
#   bash bench/frontend_curve.sh NAME [section.key=value ...]      e.g.
#   bash bench/frontend_curve.sh sp256 compressor.labels=sentencepiece compressor.vocab_size=256
# Needs the demo corpus in $DATA (default runs/demo/data, from `speechllama data demo`); writes
# runs/frontend/NAME/ (checkpoints), NAME.log (training) and NAME.curve (one JSON line a checkpoint:
# macro CER % on the espeak-ng and the real-speech rows of dev.jsonl). Never reads a test split.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1; shift
data=${DATA:-runs/demo/data}
out=runs/frontend
mkdir -p "$out"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
for source in espeak real; do  # dev rows of one voice source (the speaker field starts with it)
  prefix=$([ $source = real ] && echo fillets || echo $source)
  grep "\"speaker\": \"$prefix-" "$data/dev.jsonl" > "$data/dev-$source.jsonl" || true
done
start=$(date +%s)
.venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=2 -m speechllama train ctc \
  --data "$data" --out "$out/$name" train.max_steps=900 train.bf16=true compressor.dropout=0.0 \
  features.spec_augment=false train.checkpoint_every=300 train.keep_checkpoints=10 "$@" > "$out/$name.log" 2>&1
echo "training: $(( $(date +%s) - start )) s" | tee -a "$out/$name.log"
for ckpt in "$out/$name"/step-*; do
  .venv/bin/python - "$ckpt" "$data" <<'PY' | tee -a "$out/$name.curve"
import json, sys
from pathlib import Path
from speechllama.evaluation.evaluate import evaluate_ctc
ckpt, data = sys.argv[1], Path(sys.argv[2])
row = {"checkpoint": ckpt}
for source in ("espeak", "real"):
    manifest = data / f"dev-{source}.jsonl"
    if manifest.stat().st_size:
        row[f"dev_{source}_cer"] = round(evaluate_ctc(ckpt, manifest, progress=False)["macro_cer"], 1)
print(json.dumps(row))
PY
done

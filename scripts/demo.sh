#!/usr/bin/env bash
# The main job: install, build the demo corpus, train and evaluate. Everything under runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/install.sh
# Two OpenMP threads spin at barriers when anything else runs: let them sleep instead.
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/speechllama demo --out runs/demo "$@"
echo "demo finished in $(( $(date +%s) - start )) s (including installation); report: runs/demo/report.md"

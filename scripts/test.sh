#!/usr/bin/env bash
# The test suite: install what it needs, then pytest (all CPU, tiny models).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export OMP_NUM_THREADS=1
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"

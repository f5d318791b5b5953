#!/usr/bin/env bash
# GPU smoke test: stage 1, stage 2 in bf16 under DDP and FSDP2 (world size 1 each), a decode, all
# through the real CLI on CUDA; prints step time and peak GPU memory next to `speechllama plan`.
# A few minutes on any CUDA machine with the project installed (bash scripts/install.sh, with a
# CUDA build of torch). Not part of the test suite. Usage:
#   bash bench/gpu_smoke.sh [--llm gemma3-270m] [--steps 20] [--gpu-memory 80] [--device cuda]
# `--device cpu` checks the script itself on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" bench/gpu_smoke.py "$@"

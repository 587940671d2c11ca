#!/usr/bin/env bash
# The prepared GPU check (scripts/gpu_check.py): every trainer in fp16 and amp on CUDA for a few iterations,
# then every benchmark with --device cuda; the summary goes to ${OUT:-gpu_check}/gpu_check.{json,md}.
# Usage on a machine with CUDA, after scripts/install.sh:  bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
export PYTHONUNBUFFERED=1 VLPROMPT_CACHE="${VLPROMPT_CACHE:-$(mktemp -d)}"
exec "$PYTHON" scripts/gpu_check.py --out "${OUT:-gpu_check}" "$@"

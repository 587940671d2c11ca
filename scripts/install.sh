#!/usr/bin/env bash
# Create .venv (or $VENV) and install vlprompt with its test extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch + torchvision resolve as a matching pair from the package registry.
"$VENV/bin/python" -m pip install --quiet -e ".[dev]"
echo "vlprompt installed in $VENV"

#!/usr/bin/env bash
# Download one dataset into the layout its reader expects (see DATASETS.md).
# Usage: scripts/download_data.sh <dataset> [DATA_ROOT]
#   <dataset>  a class name (OxfordPets) or a configs/datasets stem (oxford_pets)
#   DATA_ROOT  defaults to $DATA, else ./data
# Run `python -m vlprompt.datasets.download <dataset> --root DIR` (no --download) to see the plan first.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 <dataset> [DATA_ROOT]   (e.g. $0 oxford_pets \$DATA)" >&2
    exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${2:-${DATA:-./data}}"
PYTHON="${PYTHON:-python}"
ROOT="$(mkdir -p "$ROOT" && cd "$ROOT" && pwd)"
cd "$REPO"
exec "$PYTHON" -m vlprompt.datasets.download "$1" --root "$ROOT" --download

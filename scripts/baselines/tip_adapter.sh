#!/usr/bin/env bash
# Tip-Adapter or Tip-Adapter-F over CoOp's few-shot protocol (shots x seeds), with the reference's per-dataset
# hyper-parameters (configs/trainers/<TRAINER>/<backbone>_<dataset>.yaml, from gaopengcuhk/Tip-Adapter configs/).
#   bash scripts/baselines/tip_adapter.sh DATASET BACKBONE [KEY VALUE ...]
#   e.g. TRAINER=TipAdapter_F bash scripts/baselines/tip_adapter.sh dtd rn50
# BACKBONE: rn50 | vit_b16 (or CFG=<stem> in the environment: that config for every shots value).
# Env: TRAINER (TipAdapter, default, or TipAdapter_F), SHOTS ("1 2 4 8 16"), SEEDS ("1 2 3"), CFG, DATA, OUTPUT,
# PYTHON (scripts/lib.sh).  The two trainers share the cached augmented views of each seed's training images.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [ $# -lt 2 ]; then sed -n '2,8p' "$0"; exit 1; fi
TRAINER=${TRAINER:-TipAdapter}; DATASET=$1; BACKBONE=$2; shift 2
case "${TRAINER}" in
    TipAdapter | TipAdapter_F) ;;
    *) echo "error: TRAINER=${TRAINER}; use TipAdapter or TipAdapter_F" >&2; exit 1 ;;
esac
FIXED_CFG=${CFG:-}
per_dataset() { if [ -n "${FIXED_CFG}" ]; then echo "${FIXED_CFG}"; else echo "${BACKBONE}_$1"; fi; }
fewshot_grid "${DATASET}" per_dataset "$@"

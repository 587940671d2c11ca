#!/usr/bin/env bash
# One trainer config over CoOp's few-shot protocol (shots x seeds); used for the linear probe and CLIP-LoRA.
#   bash scripts/baselines/main.sh TRAINER DATASET CFG [KEY VALUE ...]
#   e.g. bash scripts/baselines/main.sh LinearProbeCLIP oxford_pets rn50
# TRAINER: a registered trainer; DATASET: a configs/datasets/ stem; CFG: a configs/trainers/TRAINER/ stem (the same
# for every shots value); trailing KEY VALUE pairs go to train.py.
# Env: SHOTS ("1 2 4 8 16"), SEEDS ("1 2 3"), DATA, OUTPUT, PYTHON (scripts/lib.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [ $# -lt 3 ]; then sed -n '2,7p' "$0"; exit 1; fi
TRAINER=$1; DATASET=$2; FIXED_CFG=$3; shift 3
fixed_config() { echo "${FIXED_CFG}"; }
fewshot_grid "${DATASET}" fixed_config "$@"

#!/usr/bin/env bash
# Cross-dataset / domain-generalisation source run: train on all ImageNet classes, 16 shots
# (CoCoOp's scripts/cocoop/xd_train.sh at KaiyangZhou/CoOp@ff61507).
#   bash scripts/cocoop/xd_train.sh SEED [KEY VALUE ...]
# Env: TRAINER (default CoCoOp), CFG (default vit_b16_c4_ep10_batch1_ctxv1), SHOTS (16), DATASET (imagenet),
# DATA, OUTPUT, PYTHON.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
if [ $# -lt 1 ]; then sed -n '2,7p' "$SCRIPT_PATH"; exit 1; fi
TRAINER="${TRAINER:-CoCoOp}"
CFG="${CFG:-vit_b16_c4_ep10_batch1_ctxv1}"
SHOTS="${SHOTS:-16}"
xd_train "$@"

#!/usr/bin/env bash
# Base-to-new generalisation, step 2: evaluate the base-trained model on the new half of the classes
# (CoCoOp's scripts/cocoop/base2new_test.sh at KaiyangZhou/CoOp@ff61507).
#   bash scripts/cocoop/base2new_test.sh DATASET SEED [KEY VALUE ...]
# Same env as base2new_train.sh, plus LOADEP: the epoch to load, by default the last one the training run
# saved (CoCoOp hard-coded 10, which breaks for CoOp's 200/50-epoch configs), and SUB (default new).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
if [ $# -lt 2 ]; then sed -n '2,7p' "$SCRIPT_PATH"; exit 1; fi
TRAINER="${TRAINER:-CoCoOp}"
CFG="${CFG:-vit_b16_c4_ep10_batch1_ctxv1}"
SHOTS="${SHOTS:-16}"
base2new_test "$@"

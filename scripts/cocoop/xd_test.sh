#!/usr/bin/env bash
# Cross-dataset / domain-generalisation target: evaluate the xd_train.sh model on another dataset
# (CoCoOp's scripts/cocoop/xd_test.sh at KaiyangZhou/CoOp@ff61507).
#   bash scripts/cocoop/xd_test.sh DATASET SEED [KEY VALUE ...]    e.g. ... xd_test.sh imagenetv2 1
# Same env as xd_train.sh (SOURCE instead of DATASET, default imagenet), plus LOADEP (default: the last
# epoch the source run saved; CoCoOp hard-coded 10).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
if [ $# -lt 2 ]; then sed -n '2,7p' "$SCRIPT_PATH"; exit 1; fi
TRAINER="${TRAINER:-CoCoOp}"
CFG="${CFG:-vit_b16_c4_ep10_batch1_ctxv1}"
SHOTS="${SHOTS:-16}"
xd_test "$@"

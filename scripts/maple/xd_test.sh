#!/usr/bin/env bash
# Cross-dataset / domain-generalisation target: evaluate the xd_train.sh model on another dataset
# (muzairkhattak/multimodal-prompt-learning@69bce21 scripts/{maple,independent-vlp,vpt}/xd_test_*.sh).
#   bash scripts/maple/xd_test.sh DATASET SEED [KEY VALUE ...]    e.g. ... xd_test.sh imagenetv2 1
# Same env as xd_train.sh (SOURCE instead of DATASET, default imagenet), plus LOADEP (default: the last epoch the
# source run saved; the reference hard-codes 2).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"
if [ $# -lt 2 ]; then sed -n '2,7p' "$SCRIPT_PATH"; exit 1; fi
TRAINER="${TRAINER:-MaPLe}"
CFG="${CFG:-$(xd_cfg "$TRAINER")}"
SHOTS="${SHOTS:-16}"
xd_test "$@"

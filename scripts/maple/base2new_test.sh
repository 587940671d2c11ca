#!/usr/bin/env bash
# Base-to-new generalisation, step 2: evaluate the base-trained model on the new half of the classes
# (muzairkhattak/multimodal-prompt-learning@69bce21 scripts/{maple,independent-vlp,vpt}/base2new_test_*.sh).
#   bash scripts/maple/base2new_test.sh DATASET SEED [KEY VALUE ...]
# Same env as base2new_train.sh, plus LOADEP: the epoch to load, by default the last one the training run
# saved (the reference hard-codes 5), and SUB (default new).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"
if [ $# -lt 2 ]; then sed -n '2,7p' "$SCRIPT_PATH"; exit 1; fi
TRAINER="${TRAINER:-MaPLe}"
CFG="${CFG:-$(base2new_cfg "$TRAINER")}"
SHOTS="${SHOTS:-16}"
base2new_test "$@"

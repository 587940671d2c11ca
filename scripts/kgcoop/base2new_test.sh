#!/usr/bin/env bash
# Base-to-new generalisation, step 2: evaluate the base-trained KgCoOp model on the new half of the classes
# (KgCoOp's scripts/base2new_test.sh at htyao89/KgCoOp@c43ccc3, one seed per call).
#   bash scripts/kgcoop/base2new_test.sh DATASET SEED [KEY VALUE ...]
# Same env as base2new_train.sh (W selects the training run's folder), plus LOADEP: the epoch to load, by
# default the last one the training run saved (the reference hard-codes 100), and SUB (default new).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
if [ $# -lt 2 ]; then sed -n '2,6p' "$SCRIPT_PATH"; exit 1; fi
TRAINER=KgCoOp
CFG="${CFG:-vit_b16_ep100_ctxv1}"
SHOTS="${SHOTS:-16}"
W="${W:-8.0}"
SHOTS_TAG="_${W}"  # the reference's folder shots_<S>_<W>
# N_CTX 4 and CLASS_TOKEN_POSITION end as the reference passes them (N_CTX only matters without CTX_INIT)
base2new_test "$1" "$2" TRAINER.KGCOOP.N_CTX 4 TRAINER.KGCOOP.CSC False TRAINER.KGCOOP.CLASS_TOKEN_POSITION end \
    TRAINER.KGCOOP.W "$W" "${@:3}"

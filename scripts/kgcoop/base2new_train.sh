#!/usr/bin/env bash
# Base-to-new generalisation, step 1: train KgCoOp on the base half of the classes, test on base
# (KgCoOp's scripts/base2new_train.sh at htyao89/KgCoOp@c43ccc3, one seed per call).
#   bash scripts/kgcoop/base2new_train.sh DATASET SEED [KEY VALUE ...]
# Env: W (knowledge-guided weight lambda, default 8.0, part of the folder name as in the reference),
# CFG (a configs/trainers/KgCoOp/ stem, default vit_b16_ep100_ctxv1), SHOTS (default 16), DATA, OUTPUT, PYTHON.
# The reference's three seeds: for SEED in 1 2 3; do bash scripts/kgcoop/base2new_train.sh DATASET $SEED; done
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
if [ $# -lt 2 ]; then sed -n '2,7p' "$SCRIPT_PATH"; exit 1; fi
TRAINER=KgCoOp
CFG="${CFG:-vit_b16_ep100_ctxv1}"
SHOTS="${SHOTS:-16}"
W="${W:-8.0}"
SHOTS_TAG="_${W}"  # the reference's folder shots_<S>_<W>
# N_CTX 4 and CLASS_TOKEN_POSITION end as the reference passes them (N_CTX only matters without CTX_INIT)
base2new_train "$1" "$2" TRAINER.KGCOOP.N_CTX 4 TRAINER.KGCOOP.CSC False TRAINER.KGCOOP.CLASS_TOKEN_POSITION end \
    TRAINER.KGCOOP.W "$W" "${@:3}"

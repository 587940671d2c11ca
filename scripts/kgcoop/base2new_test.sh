#!/usr/bin/env bash
# Base-to-new generalisation, step 2: evaluate the base-trained KgCoOp model on the new half of the classes
# (KgCoOp's scripts/base2new_test.sh at htyao89/KgCoOp@c43ccc3, one seed per call).
#   bash scripts/kgcoop/base2new_test.sh DATASET SEED [KEY VALUE ...]
# Same env as base2new_train.sh (W selects the training run's folder), plus LOADEP: the epoch to load, by
# default the last one the training run saved (the reference hard-codes 100), and SUB (default new).
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,6p' "$0"; exit 1; fi  # before lib.sh, which changes directory
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
TRAINER=KgCoOp
CFG="${CFG:-vit_b16_ep100_ctxv1}"
SHOTS="${SHOTS:-16}"
W="${W:-8.0}"
SUB="${SUB:-new}"
DATASET=$1; SEED=$2; shift 2
require_file "configs/datasets/${DATASET}.yaml" "dataset config"
require_file "configs/trainers/${TRAINER}/${CFG}.yaml" "trainer config"

COMMON_DIR="${DATASET}/shots_${SHOTS}_${W}/${TRAINER}/${CFG}/seed${SEED}"
MODEL_DIR="${OUTPUT}/base2new/train_base/${COMMON_DIR}"
DIR="${OUTPUT}/base2new/test_${SUB}/${COMMON_DIR}"
run_exists "$DIR" && exit 0
if [ ! -d "$MODEL_DIR" ]; then
    echo "error: $MODEL_DIR not found; run scripts/kgcoop/base2new_train.sh first" >&2; exit 1
fi
LOADEP="${LOADEP:-$(last_epoch "$MODEL_DIR")}"
train_py "$DATASET" "$SEED" "$DIR" --model-dir "$MODEL_DIR" ${LOADEP:+--load-epoch "$LOADEP"} --eval-only \
    TRAINER.KGCOOP.N_CTX 4 TRAINER.KGCOOP.CSC False TRAINER.KGCOOP.CLASS_TOKEN_POSITION end \
    DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES "$SUB" "$@"

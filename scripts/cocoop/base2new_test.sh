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
SUB="${SUB:-new}"
DATASET=$1; SEED=$2; shift 2
require_file "configs/datasets/${DATASET}.yaml" "dataset config"
require_file "configs/trainers/${TRAINER}/${CFG}.yaml" "trainer config"

COMMON_DIR="${DATASET}/shots_${SHOTS}/${TRAINER}/${CFG}/seed${SEED}"
MODEL_DIR="${OUTPUT}/base2new/train_base/${COMMON_DIR}"
DIR="${OUTPUT}/base2new/test_${SUB}/${COMMON_DIR}"
run_exists "$DIR" && exit 0
if [ ! -d "$MODEL_DIR" ]; then echo "error: $MODEL_DIR not found; run scripts/cocoop/base2new_train.sh first" >&2; exit 1; fi
LOADEP="${LOADEP:-$(last_epoch "$MODEL_DIR")}"
train_py "$DATASET" "$SEED" "$DIR" --model-dir "$MODEL_DIR" ${LOADEP:+--load-epoch "$LOADEP"} --eval-only \
    DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES "$SUB" "$@"

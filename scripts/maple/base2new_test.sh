#!/usr/bin/env bash
# Base-to-new generalisation, step 2: evaluate the base-trained model on the new half of the classes
# (muzairkhattak/multimodal-prompt-learning@69bce21 scripts/{maple,independent-vlp,vpt}/base2new_test_*.sh).
#   bash scripts/maple/base2new_test.sh DATASET SEED [KEY VALUE ...]
# Same env as base2new_train.sh, plus LOADEP: the epoch to load, by default the last one the training run
# saved (the reference hard-codes 5), and SUB (default new).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"
if [ $# -lt 2 ]; then sed -n '2,7p' "$0"; exit 1; fi
TRAINER="${TRAINER:-MaPLe}"
CFG="${CFG:-$(base2new_cfg "$TRAINER")}"
SHOTS="${SHOTS:-16}"
SUB="${SUB:-new}"
DATASET=$1; SEED=$2; shift 2
require_file "configs/datasets/${DATASET}.yaml" "dataset config"
require_file "configs/trainers/${TRAINER}/${CFG}.yaml" "trainer config"

COMMON_DIR="${DATASET}/shots_${SHOTS}/${TRAINER}/${CFG}/seed${SEED}"
MODEL_DIR="${OUTPUT}/base2new/train_base/${COMMON_DIR}"
DIR="${OUTPUT}/base2new/test_${SUB}/${COMMON_DIR}"
run_exists "$DIR" && exit 0
if [ ! -d "$MODEL_DIR" ]; then echo "error: $MODEL_DIR not found; run scripts/maple/base2new_train.sh first" >&2; exit 1; fi
LOADEP="${LOADEP:-$(last_epoch "$MODEL_DIR")}"
train_py "$DATASET" "$SEED" "$DIR" --model-dir "$MODEL_DIR" ${LOADEP:+--load-epoch "$LOADEP"} --eval-only \
    DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES "$SUB" "$@"

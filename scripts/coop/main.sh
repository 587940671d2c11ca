#!/usr/bin/env bash
# CoOp few-shot training, seeds 1-3 (CoOp's scripts/coop/main.sh at KaiyangZhou/CoOp@ff61507).
#   bash scripts/coop/main.sh DATASET CFG CTP NCTX SHOTS CSC [KEY VALUE ...]
#   e.g. bash scripts/coop/main.sh oxford_pets rn50_ep50 end 16 1 False
# DATASET: a configs/datasets/ stem; CFG: a configs/trainers/CoOp/ stem; CTP: end|middle|front;
# NCTX: context length; SHOTS: 1|2|4|8|16; CSC: False|True; trailing KEY VALUE pairs go to train.py.
# Env: DATA, OUTPUT, PYTHON (scripts/lib.sh), SEEDS (default "1 2 3").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
if [ $# -lt 6 ]; then sed -n '2,7p' "$SCRIPT_PATH"; exit 1; fi
TRAINER=CoOp
DATASET=$1; CFG=$2; CTP=$3; NCTX=$4; SHOTS=$5; CSC=$6; shift 6
require_file "configs/datasets/${DATASET}.yaml" "dataset config"
require_file "configs/trainers/${TRAINER}/${CFG}.yaml" "trainer config"

for SEED in ${SEEDS:-1 2 3}; do
    DIR="${OUTPUT}/${DATASET}/${TRAINER}/${CFG}_${SHOTS}shots/nctx${NCTX}_csc${CSC}_ctp${CTP}/seed${SEED}"
    run_exists "$DIR" && continue
    train_py "$DATASET" "$SEED" "$DIR" \
        TRAINER.COOP.N_CTX "$NCTX" TRAINER.COOP.CSC "$CSC" TRAINER.COOP.CLASS_TOKEN_POSITION "$CTP" \
        DATASET.NUM_SHOTS "$SHOTS" "$@"
done

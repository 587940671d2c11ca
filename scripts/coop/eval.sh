#!/usr/bin/env bash
# Evaluate ImageNet-trained CoOp models on another dataset (domain shift), seeds 1-3
# (CoOp's scripts/coop/eval.sh at KaiyangZhou/CoOp@ff61507).
#   bash scripts/coop/eval.sh DATASET CFG [KEY VALUE ...]     e.g. bash scripts/coop/eval.sh imagenetv2 rn50_ep50
# Loads the models that `scripts/coop/main.sh imagenet CFG end 16 16 False` wrote, at their last saved epoch
# (CoOp hard-coded --load-epoch 50 and a folder name that only matched its released weights).
# Env: DATA, OUTPUT, PYTHON, SEEDS (default "1 2 3"), MODEL_ROOT (default $OUTPUT/imagenet/CoOp), LOADEP.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
if [ $# -lt 2 ]; then sed -n '2,8p' "$SCRIPT_PATH"; exit 1; fi
TRAINER=CoOp
DATASET=$1; CFG=$2; shift 2
SHOTS=16; NCTX=16; CSC=False; CTP=end
require_file "configs/datasets/${DATASET}.yaml" "dataset config"
require_file "configs/trainers/${TRAINER}/${CFG}.yaml" "trainer config"
MODEL_ROOT="${MODEL_ROOT:-${OUTPUT}/imagenet/${TRAINER}}"

for SEED in ${SEEDS:-1 2 3}; do
    EXP="${CFG}_${SHOTS}shots/nctx${NCTX}_csc${CSC}_ctp${CTP}"
    MODEL_DIR="${MODEL_ROOT}/${EXP}/seed${SEED}"
    DIR="${OUTPUT}/evaluation/${TRAINER}/${EXP}/${DATASET}/seed${SEED}"
    run_exists "$DIR" && continue
    EPOCH="${LOADEP:-$(last_epoch "$MODEL_DIR")}"
    if [ -z "$EPOCH" ]; then echo "error: no checkpoint in $MODEL_DIR; train it with scripts/coop/main.sh first" >&2; exit 1; fi
    train_py "$DATASET" "$SEED" "$DIR" --model-dir "$MODEL_DIR" --load-epoch "$EPOCH" --eval-only \
        TRAINER.COOP.N_CTX "$NCTX" TRAINER.COOP.CSC "$CSC" TRAINER.COOP.CLASS_TOKEN_POSITION "$CTP" "$@"
done

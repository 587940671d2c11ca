#!/bin/bash
# LMPT (or its zero-shot baseline) on a multi-label dataset, CoOp's main.sh layout: one run per seed, finished
# runs skipped, interrupted ones resumed from their last checkpoint (docs/methods/lmpt.md).
#
#   bash scripts/lmpt/main.sh DATA DATASET CFG
#     DATA     dataset root (holds coco/ and voc/, see DATASETS.md; any folder for synthetic_multilabel)
#     DATASET  coco_lt | voc_lt | synthetic_multilabel  (configs/datasets/<DATASET>.yaml)
#     CFG      configs/trainers/LMPT/<CFG>.yaml: rn50_ep50_batch64, vit_b16_ep50_batch64, tiny_vit_ep10,
#              zs_rn50, zs_vit_b16 (the zs_* configs run TRAINER=ZeroshotCLIPMultiLabel by default)
#   env: PROTOCOL  clean (default: best epoch on held-out training images, sigmoid scores) or paper (best epoch
#                  on the test set, softmax scores: the LMPT repository's protocol, optimistic; for the zs_*
#                  configs also LMPT's zero-shot class text, first-word names, unlabelled images left out and
#                  top-5 P/R/F1)
#        TRAINER (LMPT, or ZeroshotCLIPMultiLabel for zs_* configs), SEEDS ("1 2 3"), OUTPUT (output),
#        PYTHON (python), extra KEY VALUE config overrides in OPTS
#   Output: ${OUTPUT}/${DATASET}/${TRAINER}/${CFG}_${PROTOCOL}/seed${SEED}; summarise with
#        python parse_test_res.py <that folder without seed*> --keyword mAP   (or mAP_head, mAP_tail, ...)
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${1:?usage: bash scripts/lmpt/main.sh DATA DATASET CFG}
DATASET=${2:?usage: bash scripts/lmpt/main.sh DATA DATASET CFG}
CFG=${3:?usage: bash scripts/lmpt/main.sh DATA DATASET CFG}
case "${CFG}" in
    zs_*) DEFAULT_TRAINER=ZeroshotCLIPMultiLabel ;;
    *) DEFAULT_TRAINER=LMPT ;;
esac
TRAINER=${TRAINER:-${DEFAULT_TRAINER}}
PROTOCOL=${PROTOCOL:-clean}
SEEDS=${SEEDS:-"1 2 3"}
OUTPUT=${OUTPUT:-output}
PYTHON=${PYTHON:-python}
OPTS=${OPTS:-}

case "${PROTOCOL}" in
    clean) ;;
    paper)
        OPTS="${OPTS} TEST.MULTILABEL.SCORE softmax"
        if [ "${TRAINER}" = "LMPT" ]; then
            OPTS="${OPTS} TRAINER.LMPT.VAL_SOURCE dataset"
        elif [ "${TRAINER}" = "ZeroshotCLIPMultiLabel" ]; then
            OPTS="${OPTS} TRAINER.ZEROSHOTCLIPMULTILABEL.TEXT lmpt_concat76"
            OPTS="${OPTS} TRAINER.ZEROSHOTCLIPMULTILABEL.FIRST_WORD_NAMES True"
            OPTS="${OPTS} TRAINER.ZEROSHOTCLIPMULTILABEL.SKIP_UNLABELED True TEST.MULTILABEL.TOP_K 5"
        fi
        ;;
    *) echo "error: PROTOCOL=${PROTOCOL}; choose clean or paper" >&2; exit 1 ;;
esac

for SEED in ${SEEDS}; do
    DIR=${OUTPUT}/${DATASET}/${TRAINER}/${CFG}_${PROTOCOL}/seed${SEED}
    if grep -qs "^Finish training" "${DIR}"/log.txt*; then
        echo "Skip ${DIR} (finished)"
        continue
    fi
    echo "Run ${DIR}"
    # shellcheck disable=SC2086  # OPTS is a list of KEY VALUE words
    ${PYTHON} train.py \
        --root "${DATA}" \
        --seed "${SEED}" \
        --trainer "${TRAINER}" \
        --dataset-config-file "configs/datasets/${DATASET}.yaml" \
        --config-file "configs/trainers/LMPT/${CFG}.yaml" \
        --output-dir "${DIR}" \
        ${OPTS}
done

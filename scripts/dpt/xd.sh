#!/bin/bash
# DPT cross-dataset transfer (the reference's protocol): for each seed, train on all ImageNet classes
# (16 shots), then evaluate the last checkpoint zero-shot on each target dataset (all classes).  Report the mean
# over the 10 targets (the reference's notebook averaged 11 numbers, source included).  Finished runs
# are skipped, interrupted trainings resume.
#
#   bash scripts/dpt/xd.sh DATA [CFG]
#     CFG  configs/trainers/DPT/<CFG>.yaml (default vit_b16_best_imagenet: 2 tokens, std 0.08, momentum 0, 32 epochs,
#          the reference's cross-dataset source model)
#   env: SEEDS ("1 2 3"), SHOTS (16), SOURCE (imagenet), TARGETS (the 10 CoOp datasets; add imagenetv2
#        imagenet_sketch imagenet_a imagenet_r for domain generalisation), PROJFREE (1 = evaluate with
#        TRAINER.DPT.SHARED_VISUAL False, the reference's crossds_projfree), LOADEP (the config's MAX_EPOCH),
#        OUTPUT (output), PYTHON (python)
#   then: python parse_test_res.py ${OUTPUT}/evaluation/DPT --table
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${1:?usage: bash scripts/dpt/xd.sh DATA [CFG]}
CFG=${2:-vit_b16_best_imagenet}
SEEDS=${SEEDS:-"1 2 3"}
SHOTS=${SHOTS:-16}
SOURCE=${SOURCE:-imagenet}
TARGETS=${TARGETS:-"caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101"}
PROJFREE=${PROJFREE:-0}
OUTPUT=${OUTPUT:-output}
PYTHON=${PYTHON:-python}
CFG_FILE=configs/trainers/DPT/${CFG}.yaml
LOADEP=${LOADEP:-$(sed -n 's/^ *MAX_EPOCH: *\([0-9][0-9]*\).*/\1/p' "${CFG_FILE}")}
EVAL_OPTS=""
EVAL_TAG=""
if [ "${PROJFREE}" = "1" ]; then
    EVAL_OPTS="TRAINER.DPT.SHARED_VISUAL False"
    EVAL_TAG=_projfree
fi

for SEED in ${SEEDS}; do
    MODEL_DIR=${OUTPUT}/${SOURCE}/DPT/${CFG}_${SHOTS}shots/seed${SEED}
    if grep -qs "^Finish training" "${MODEL_DIR}"/log.txt*; then
        echo "Skip ${MODEL_DIR} (finished)"
    else
        echo "Run ${MODEL_DIR}"
        ${PYTHON} train.py --root "${DATA}" --seed "${SEED}" --trainer DPT \
            --dataset-config-file "configs/datasets/${SOURCE}.yaml" --config-file "${CFG_FILE}" \
            --output-dir "${MODEL_DIR}" DATASET.NUM_SHOTS "${SHOTS}"
    fi
    for TARGET in ${TARGETS}; do
        DIR=${OUTPUT}/evaluation/DPT/${CFG}_${SHOTS}shots${EVAL_TAG}/${TARGET}/seed${SEED}
        if grep -qs "^\* accuracy:" "${DIR}"/log.txt*; then
            echo "Skip ${DIR} (finished)"
            continue
        fi
        echo "Run ${DIR}"
        # shellcheck disable=SC2086  # EVAL_OPTS is a list of KEY VALUE words
        ${PYTHON} train.py --root "${DATA}" --seed "${SEED}" --trainer DPT \
            --dataset-config-file "configs/datasets/${TARGET}.yaml" --config-file "${CFG_FILE}" \
            --output-dir "${DIR}" --model-dir "${MODEL_DIR}" --load-epoch "${LOADEP}" --eval-only ${EVAL_OPTS}
    done
done

#!/bin/bash
# DPT base-to-novel (the reference's protocol): for each seed, train on the base half of the classes
# (16 shots; the final test on the base classes is the "base" accuracy), then evaluate the last checkpoint on
# the novel classes ("new").  Finished runs are skipped, interrupted trainings resume from their checkpoint.
#
#   bash scripts/dpt/base2new.sh DATA DATASET [CFG]
#     DATA     dataset root
#     DATASET  configs/datasets/<DATASET>.yaml (e.g. dtd, eurosat, imagenet)
#     CFG      configs/trainers/DPT/<CFG>.yaml (default vit_b16_c4_ep8_batch4; the reference's per-dataset
#              best settings are vit_b16_best_<dataset>)
#   env: SEEDS ("1 2 3"), SHOTS (16), LOADEP (the config's MAX_EPOCH), OUTPUT (output), PYTHON (python),
#        OPTS (extra KEY VALUE overrides) with TAG (a folder suffix naming them, required with OPTS)
#   then: python parse_test_res.py ${OUTPUT}/base2new --table    (base, new and their harmonic mean)
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${1:?usage: bash scripts/dpt/base2new.sh DATA DATASET [CFG]}
DATASET=${2:?usage: bash scripts/dpt/base2new.sh DATA DATASET [CFG]}
CFG=${3:-vit_b16_c4_ep8_batch4}
SEEDS=${SEEDS:-"1 2 3"}
SHOTS=${SHOTS:-16}
OUTPUT=${OUTPUT:-output}
PYTHON=${PYTHON:-python}
OPTS=${OPTS:-}
TAG=${TAG:-}
CFG_FILE=configs/trainers/DPT/${CFG}.yaml
LOADEP=${LOADEP:-$(sed -n 's/^ *MAX_EPOCH: *\([0-9][0-9]*\).*/\1/p' "${CFG_FILE}")}
if [ -n "${OPTS}" ] && [ -z "${TAG}" ]; then
    echo "error: OPTS='${OPTS}' changes the runs; set TAG to a folder suffix that names the change" >&2
    exit 1
fi

for SEED in ${SEEDS}; do
    COMMON=${DATASET}/shots_${SHOTS}/DPT/${CFG}${TAG:+_${TAG}}/seed${SEED}
    TRAIN_DIR=${OUTPUT}/base2new/train_base/${COMMON}
    TEST_DIR=${OUTPUT}/base2new/test_new/${COMMON}
    if grep -qs "^Finish training" "${TRAIN_DIR}"/log.txt*; then
        echo "Skip ${TRAIN_DIR} (finished)"
    else
        echo "Run ${TRAIN_DIR}"
        # shellcheck disable=SC2086  # OPTS is a list of KEY VALUE words
        ${PYTHON} train.py --root "${DATA}" --seed "${SEED}" --trainer DPT \
            --dataset-config-file "configs/datasets/${DATASET}.yaml" --config-file "${CFG_FILE}" \
            --output-dir "${TRAIN_DIR}" \
            ${OPTS} DATASET.NUM_SHOTS "${SHOTS}" DATASET.SUBSAMPLE_CLASSES base
    fi
    if grep -qs "^\* accuracy:" "${TEST_DIR}"/log.txt*; then
        echo "Skip ${TEST_DIR} (finished)"
    else
        echo "Run ${TEST_DIR}"
        # shellcheck disable=SC2086
        ${PYTHON} train.py --root "${DATA}" --seed "${SEED}" --trainer DPT \
            --dataset-config-file "configs/datasets/${DATASET}.yaml" --config-file "${CFG_FILE}" \
            --output-dir "${TEST_DIR}" --model-dir "${TRAIN_DIR}" --load-epoch "${LOADEP}" --eval-only \
            ${OPTS} DATASET.NUM_SHOTS "${SHOTS}" DATASET.SUBSAMPLE_CLASSES new
    fi
done

#!/bin/bash
# LangevinCoOp phase 1: noise-free prompt pre-training on CIFAR-LT, the reference's script/no_noise_train.sh
# (Walter-pixel/COOP_Langevin_Public@7fe769c; docs/methods/langevin_coop.md).  One run per imbalance ratio and
# seed; finished runs are skipped, interrupted ones resume from their last checkpoint.  Each run saves
# saved_prompts/prompt_epoch_<e>.pth, the starting points of phase 2 (scripts/langevin/ld_train.sh).
#
#   bash scripts/langevin/no_noise_train.sh DATA [DATASET] [CFG]
#     DATA     dataset root (holds cifar-10-python/ or cifar-100-python/)
#     DATASET  cifar10_lt (default) or cifar100_lt  (configs/datasets/<DATASET>.yaml)
#     CFG      configs/trainers/LangevinCoOp/<CFG>.yaml (default rn50_ctx15_csc_nonoise_ep200_batch512)
#   env: SEEDS ("1 2 3"), RATIOS ("0.005 0.01 0.02 0.1"), OUTPUT (output), PYTHON (python), extra KEY VALUE
#        config overrides in OPTS
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${1:?usage: bash scripts/langevin/no_noise_train.sh DATA [DATASET] [CFG]}
DATASET=${2:-cifar10_lt}
CFG=${3:-rn50_ctx15_csc_nonoise_ep200_batch512}
SEEDS=${SEEDS:-"1 2 3"}
RATIOS=${RATIOS:-"0.005 0.01 0.02 0.1"}
OUTPUT=${OUTPUT:-output}
PYTHON=${PYTHON:-python}
OPTS=${OPTS:-}

for RATIO in ${RATIOS}; do
    for SEED in ${SEEDS}; do
        DIR=${OUTPUT}/${DATASET}/LangevinCoOp/${CFG}/imb${RATIO}/seed${SEED}
        if grep -qs "^Finish training" "${DIR}"/log.txt*; then
            echo "Skip ${DIR} (finished)"
            continue
        fi
        echo "Run ${DIR}"
        # shellcheck disable=SC2086  # OPTS is a list of KEY VALUE words
        ${PYTHON} train.py \
            --root "${DATA}" \
            --seed "${SEED}" \
            --trainer LangevinCoOp \
            --dataset-config-file "configs/datasets/${DATASET}.yaml" \
            --config-file "configs/trainers/LangevinCoOp/${CFG}.yaml" \
            --output-dir "${DIR}" \
            DATASET.IMB_RATIO "${RATIO}" ${OPTS}
    done
done

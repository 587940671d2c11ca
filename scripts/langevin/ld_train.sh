#!/bin/bash
# LangevinCoOp phase 2: Langevin dynamics from a phase-1 prompt, the reference's script/LD_train.sh
# (Walter-pixel/COOP_Langevin_Public@7fe769c; docs/methods/langevin_coop.md).  For each imbalance ratio and seed
# it starts from <phase-1 run>/saved_prompts/prompt_epoch_<INIT_EPOCH>.pth (--init-from), samples a prompt per
# epoch after burn-in into OUTPUT_DIR/sample_bank/ and reports the one-model and K-sample hard-vote accuracies.
# Finished runs are skipped, interrupted ones resume (bank included).
#
#   bash scripts/langevin/ld_train.sh DATA [DATASET] [CFG] [PHASE1_CFG]
#     CFG         configs/trainers/LangevinCoOp/<CFG>.yaml (default rn50_ctx15_csc_ld_ep400_batch512)
#     PHASE1_CFG  the phase-1 config name (default rn50_ctx15_csc_nonoise_ep200_batch512)
#   env: INIT_EPOCH (160; the author's cluster script used 120), NOISE_MODE (the config's: ref_small;
#        or sgld_temp / sgld / none), TEMP (sgld_temp temperature), SEEDS ("1 2 3"),
#        RATIOS ("0.005 0.01 0.02 0.1"), OUTPUT (output), PYTHON (python), extra KEY VALUE overrides in OPTS
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${1:?usage: bash scripts/langevin/ld_train.sh DATA [DATASET] [CFG] [PHASE1_CFG]}
DATASET=${2:-cifar10_lt}
CFG=${3:-rn50_ctx15_csc_ld_ep400_batch512}
PHASE1_CFG=${4:-rn50_ctx15_csc_nonoise_ep200_batch512}
INIT_EPOCH=${INIT_EPOCH:-160}
NOISE_MODE=${NOISE_MODE:-}
TEMP=${TEMP:-}
SEEDS=${SEEDS:-"1 2 3"}
RATIOS=${RATIOS:-"0.005 0.01 0.02 0.1"}
OUTPUT=${OUTPUT:-output}
PYTHON=${PYTHON:-python}
OPTS=${OPTS:-}

TAG=init${INIT_EPOCH}
if [ -n "${NOISE_MODE}" ]; then
    TAG=${TAG}_${NOISE_MODE}
    OPTS="${OPTS} TRAINER.LANGEVINCOOP.NOISE_MODE ${NOISE_MODE}"
fi
if [ -n "${TEMP}" ]; then
    TAG=${TAG}_T${TEMP}
    OPTS="${OPTS} TRAINER.LANGEVINCOOP.TEMP ${TEMP}"
fi

for RATIO in ${RATIOS}; do
    for SEED in ${SEEDS}; do
        PHASE1_DIR=${OUTPUT}/${DATASET}/LangevinCoOp/${PHASE1_CFG}/imb${RATIO}/seed${SEED}
        INIT=${PHASE1_DIR}/saved_prompts/prompt_epoch_${INIT_EPOCH}.pth
        DIR=${OUTPUT}/${DATASET}/LangevinCoOp/${CFG}_${TAG}/imb${RATIO}/seed${SEED}
        if grep -qs "^Finish training" "${DIR}"/log.txt*; then
            echo "Skip ${DIR} (finished)"
            continue
        fi
        if [ ! -f "${INIT}" ]; then
            echo "error: ${INIT} is missing; run scripts/langevin/no_noise_train.sh first" >&2
            exit 1
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
            --init-from "${INIT}" \
            DATASET.IMB_RATIO "${RATIO}" ${OPTS}
    done
done

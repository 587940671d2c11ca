#!/bin/bash
# MLPT (or a baseline under the same label noise) on one dataset, one config, one noise level, over seeds.
# The reference's scripts/mlpt/main.sh (LZHMS/MLPT@8f9708e) with its output layout (docs/methods/mlpt.md);
# finished runs are skipped and an interrupted run resumes from its checkpoint (the reference re-ran --eval-only
# on any existing folder).
#
#   bash scripts/mlpt/main.sh DATASET CFG SHOTS NUM_FP
#     DATASET  configs/datasets/<DATASET>.yaml (dtd, caltech101, fgvc_aircraft, oxford_flowers, oxford_pets, ucf101)
#     CFG      configs/trainers/MLPT/<CFG>.yaml (rn50_ep50, vit_b32_ep50, vit_b16_ep50)
#     SHOTS    shots per class (16)
#     NUM_FP   noisy shots per class (0, 2, 4, 8): DATASET.NUM_FP, per-class noise (datasets/label_noise.py)
#   env: DATA (./data), SEEDS ("1 2 3"; the reference ran seed 1 only), TRAINER (MLPT, or CoOp for the baseline:
#        same YAML, same noisy few-shot set), NCTX (16), CSC (False), CTP (end), GCE (False: GCE warm-up, MLPT only),
#        LITERAL (0; 1 = the reference's make_noise, DATASET.NOISE_LITERAL, folder suffix _literal),
#        OUTPUT (output), PYTHON (python), NPROC (1; N > 1 trains with torchrun on N processes, same results
#        within float rounding: DATALOADER.TRAIN_X.BATCH_SIZE stays the global batch and must divide by N),
#        OPTS (extra KEY VALUE overrides) with TAG (a suffix of the <CFG>_<SHOTS>shots folder naming them,
#        required with OPTS)
#   then: python parse_test_res.py ${OUTPUT}/<DATASET>/<TRAINER>/<CFG>_<SHOTS>shots/nctx16_cscFalse_ctpend/GCEFalse/<SHOTS>shots_<NUM_FP>noise
set -euo pipefail
cd "$(dirname "$0")/../.."

USAGE="usage: bash scripts/mlpt/main.sh DATASET CFG SHOTS NUM_FP"
DATASET=${1:?${USAGE}}
CFG=${2:?${USAGE}}
SHOTS=${3:?${USAGE}}
NUM_FP=${4:?${USAGE}}
DATA=${DATA:-./data}
SEEDS=${SEEDS:-"1 2 3"}
TRAINER=${TRAINER:-MLPT}
NCTX=${NCTX:-16}
CSC=${CSC:-False}
CTP=${CTP:-end}
GCE=${GCE:-False}
LITERAL=${LITERAL:-0}
OUTPUT=${OUTPUT:-output}
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-1}
OPTS=${OPTS:-}
TAG=${TAG:-}
if [ -n "${OPTS}" ] && [ -z "${TAG}" ]; then
    echo "error: OPTS='${OPTS}' changes the runs; set TAG to a folder suffix that names the change" >&2
    exit 1
fi

case ${TRAINER} in
    MLPT) NODE=TRAINER.MLPT; METHOD_OPTS="${NODE}.USE_ROBUSTLOSS ${GCE}" ;;
    CoOp)
        NODE=TRAINER.COOP; METHOD_OPTS=""
        if [ "${GCE}" != "False" ]; then
            echo "error: GCE=${GCE} needs TRAINER=MLPT (CoOp has no GCE loss here)" >&2
            exit 1
        fi ;;
    *) echo "error: TRAINER=${TRAINER}; choose MLPT or CoOp" >&2; exit 1 ;;
esac
NOISE_OPTS="DATASET.NUM_FP ${NUM_FP}"
SUFFIX=""
if [ "${LITERAL}" = "1" ]; then
    NOISE_OPTS="${NOISE_OPTS} DATASET.NOISE_LITERAL True"
    SUFFIX=_literal
fi

LAUNCH="${PYTHON}"
if [ "${NPROC}" -gt 1 ]; then
    LAUNCH="${PYTHON} -m torch.distributed.run --standalone --nproc_per_node ${NPROC}"
fi

for SEED in ${SEEDS}; do
    DIR=${OUTPUT}/${DATASET}/${TRAINER}/${CFG}_${SHOTS}shots${TAG:+_${TAG}}/nctx${NCTX}_csc${CSC}_ctp${CTP}/GCE${GCE}/${SHOTS}shots_${NUM_FP}noise${SUFFIX}/seed${SEED}
    if grep -qs "^Finish training" "${DIR}"/log.txt*; then
        echo "Skip ${DIR} (finished)"
        continue
    fi
    echo "Run ${DIR}"
    # shellcheck disable=SC2086  # METHOD_OPTS / NOISE_OPTS / OPTS are lists of KEY VALUE words
    ${LAUNCH} train.py --root "${DATA}" --seed "${SEED}" --trainer "${TRAINER}" \
        --dataset-config-file "configs/datasets/${DATASET}.yaml" --config-file "configs/trainers/MLPT/${CFG}.yaml" \
        --output-dir "${DIR}" \
        ${NODE}.N_CTX "${NCTX}" ${NODE}.CSC "${CSC}" ${NODE}.CLASS_TOKEN_POSITION "${CTP}" ${METHOD_OPTS} \
        DATASET.NUM_SHOTS "${SHOTS}" ${NOISE_OPTS} ${OPTS}
done

#!/bin/bash
# CoOp's few-shot protocol for the frozen-feature baselines beside CoOp and CLIP-LoRA, in one table: 11 datasets x
# 1/2/4/8/16 shots x 3 seeds of LinearProbeCLIP, CLIP_Adapter, TipAdapter, TipAdapter_F, CoOp (16 generic context
# vectors, class token at the end) and CLIP_LoRA, on one backbone, then `parse_test_res.py --table` over the tree.
# Every run is skipped when its folder exists (scripts/lib.sh); the feature cache (TEST.FEATURE_CACHE) lets the
# frozen-feature methods share the image features of each split, so a dataset's test images are encoded once per
# backbone for the whole grid.
#
#   bash scripts/reproduce/few_shot_baselines.sh DATA
#   env: BACKBONE (vit_b16; rn50 = the backbone of the baselines' papers, then without CLIP_LoRA, whose recipe is
#        ViT-B/16), DATASETS (the 11 below), SHOTS ("1 2 4 8 16"), SEEDS ("1 2 3"), TRAINERS (all six),
#        OUTPUT (output/few_shot_baselines), PYTHON (python), TABLE_ONLY=1 (only print the table of finished runs),
#        SMOKE=1 (CPU plumbing check: the Synthetic dataset, the tiny CLIP pre-trained on it, shots "1 2", seed 1)
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${1:?usage: bash scripts/reproduce/few_shot_baselines.sh DATA}
export DATA
export OUTPUT=${OUTPUT:-output/few_shot_baselines}
export PYTHON=${PYTHON:-python}
export VLPROMPT_SKIP_ENV_INFO=1
TRAINERS=${TRAINERS:-"LinearProbeCLIP CLIP_Adapter TipAdapter TipAdapter_F CoOp CLIP_LoRA"}
if [ "${SMOKE:-0}" = "1" ]; then
    DATASETS=${DATASETS:-synthetic}
    BACKBONE=tiny_vit
    export SHOTS=${SHOTS:-"1 2"} SEEDS=${SEEDS:-"1"}
    # the tiny CLIP pre-trained on the Synthetic shapes, where MODEL.BACKBONE.NAME tiny-vit-synthetic finds it
    PRETRAINED=${VLPROMPT_PRETRAINED_DIR:-output/pretrained}/tiny-vit-synthetic.pth
    if [ "${TABLE_ONLY:-0}" != "1" ] && [ ! -f "${PRETRAINED}" ]; then
        "${PYTHON}" scripts/pretrain_tiny_clip.py --name tiny-vit-synthetic
    fi
else
    DATASETS=${DATASETS:-"caltech101 dtd eurosat fgvc_aircraft food101 imagenet oxford_flowers oxford_pets \
stanford_cars sun397 ucf101"}
    BACKBONE=${BACKBONE:-vit_b16}
    export SHOTS=${SHOTS:-"1 2 4 8 16"} SEEDS=${SEEDS:-"1 2 3"}
fi
source scripts/baselines/common.sh  # coop_schedule; resolves DATA and OUTPUT to absolute paths

# config TRAINER DATASET SHOTS: the trainer's config stem for one cell of the grid ("" = not run on this backbone).
config() {
    local trainer=$1 dataset=$2 shots=$3
    if [ "${BACKBONE}" = tiny_vit ]; then
        case "${trainer}" in
            LinearProbeCLIP) echo tiny_vit ;;
            CLIP_Adapter) echo tiny_vit_ep50 ;;
            TipAdapter) echo tiny_vit_aug2 ;;
            TipAdapter_F) echo tiny_vit_aug2_ep10 ;;
            CoOp) echo tiny_vit_ep50_ctxv1 ;;
            CLIP_LoRA) echo tiny_vit_qkv_r2_a1_iters10_batch8 ;;
        esac
        return
    fi
    case "${trainer}" in
        LinearProbeCLIP) echo "${BACKBONE}" ;;
        CLIP_Adapter | CoOp) coop_schedule "${BACKBONE}" "${dataset}" "${shots}" ;;
        TipAdapter | TipAdapter_F) echo "${BACKBONE}_${dataset}" ;;
        CLIP_LoRA) if [ "${BACKBONE}" = vit_b16 ]; then echo vit_b16_qkv_r2_a1_iters500; fi ;;
    esac
}

# run_trainer TRAINER DATASET: every shots value and seed of one trainer on one dataset (finished runs skipped).
run_trainer() {
    local trainer=$1 dataset=$2 shots cfg
    for shots in ${SHOTS}; do
        cfg=$(config "${trainer}" "${dataset}" "${shots}")
        if [ -z "${cfg}" ]; then
            echo "Skip ${trainer} on ${BACKBONE}: no recipe for this backbone"
            return
        fi
        if [ "${trainer}" = CoOp ]; then
            bash scripts/coop/main.sh "${dataset}" "${cfg}" end 16 "${shots}" False
        else
            SHOTS=${shots} bash scripts/baselines/main.sh "${trainer}" "${dataset}" "${cfg}"
        fi
    done
}

if [ "${TABLE_ONLY:-0}" != "1" ]; then
    for DATASET in ${DATASETS}; do
        for TRAINER in ${TRAINERS}; do
            run_trainer "${TRAINER}" "${DATASET}"
        done
    done
fi
"${PYTHON}" parse_test_res.py "${OUTPUT}" --table

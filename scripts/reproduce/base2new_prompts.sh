#!/usr/bin/env bash
# Base-to-new generalisation of six prompt learners in one table: CoOp, CoCoOp, MaPLe, KgCoOp, PromptSRC and DPT,
# each with its published ViT-B/16 recipe, trained on 16 shots of the base half of the classes of CoOp's 11 datasets
# (and tested on them) and evaluated on the new half, seeds 1 2 3; then one `parse_test_res.py --table` over the
# tree (every run, then base / new / H per dataset and method).  Each method runs through its own scripts:
#   CoOp       scripts/cocoop/base2new_{train,test}.sh, TRAINER=CoOp CFG=vit_b16_ctxv1 (vit_b16_ep50_ctxv1 on
#              ImageNet), the CoCoOp paper's CoOp baseline
#   CoCoOp     scripts/cocoop/base2new_{train,test}.sh, vit_b16_c4_ep10_batch1_ctxv1
#   MaPLe      scripts/maple/base2new_{train,test}.sh, vit_b16_c2_ep5_batch4_2ctx
#   KgCoOp     scripts/kgcoop/base2new_{train,test}.sh, vit_b16_ep100_ctxv1, lambda 8.0
#   PromptSRC  scripts/promptsrc/base2new_{train,test}.sh, vit_b16_c2_ep20_batch4_4+4ctx
#   DPT        scripts/dpt/base2new.sh, the reference's per-dataset vit_b16_best_<dataset>
# Finished runs are skipped (each method's scripts check its folder), so an interrupted grid picks up where it was.
#
#   bash scripts/reproduce/base2new_prompts.sh DATA
#   env: TRAINERS ("CoOp CoCoOp MaPLe KgCoOp PromptSRC DPT"), DATASETS (the 11 below), SEEDS ("1 2 3"),
#        SHOTS (16), OUTPUT (<repo>/output/base2new_prompts; the runs go to $OUTPUT/base2new/), PYTHON,
#        TABLE_ONLY=1 (only print the table of finished runs),
#        SMOKE=1 (CPU plumbing check: the Synthetic dataset, each method's tiny config on the tiny CLIP pre-trained
#        on it (trained first when missing), seed 1, 4 shots, 1 epoch)
set -euo pipefail
ARGC=$#
if [ $# -ge 1 ]; then DATA=$1; fi
OUTPUT_GIVEN=${OUTPUT:-}
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"  # ROOT, absolute DATA / OUTPUT, PYTHON; cd to the repository
if [ "$ARGC" -lt 1 ]; then sed -n '2,20p' "$SCRIPT_PATH"; exit 1; fi
if [ -z "$OUTPUT_GIVEN" ]; then OUTPUT="$ROOT/output/base2new_prompts"; fi
export DATA OUTPUT PYTHON VLPROMPT_SKIP_ENV_INFO=1
TRAINERS=${TRAINERS:-"CoOp CoCoOp MaPLe KgCoOp PromptSRC DPT"}
EXTRA=()  # KEY VALUE pairs every train.py run gets
if [ "${SMOKE:-0}" = "1" ]; then
    DATASETS=${DATASETS:-synthetic}
    SEEDS=${SEEDS:-1}
    export SHOTS=${SHOTS:-4}
    EXTRA=(OPTIM.MAX_EPOCH 1)
    TINY_CLIP="${VLPROMPT_PRETRAINED_DIR:-$ROOT/output/pretrained}/tiny-vit-synthetic.pth"
    if [ "${TABLE_ONLY:-0}" != "1" ] && [ ! -f "$TINY_CLIP" ]; then
        "$PYTHON" scripts/pretrain_tiny_clip.py --name tiny-vit-synthetic
    fi
else
    DATASETS=${DATASETS:-"imagenet caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 \
dtd eurosat ucf101"}
    SEEDS=${SEEDS:-"1 2 3"}
    export SHOTS=${SHOTS:-16}
fi

# config TRAINER DATASET: the config stem of one method on one dataset.
config() {
    local trainer=$1 dataset=$2
    if [ "${SMOKE:-0}" = "1" ]; then
        case "$trainer" in
            CoOp) echo tiny_vit_ep50_ctxv1 ;;
            CoCoOp) echo tiny_vit_c4_ep10_batch4_ctxv1 ;;
            MaPLe) echo tiny_vit_c2_ep20_batch8_2ctx ;;
            KgCoOp) echo tiny_vit_ep50_ctxv1 ;;
            PromptSRC) echo "tiny_vit_c2_ep20_batch8_4+4ctx" ;;
            DPT) echo tiny_vit_c2_ep5_batch4 ;;
        esac
        return
    fi
    case "$trainer" in
        CoOp) if [ "$dataset" = imagenet ]; then echo vit_b16_ep50_ctxv1; else echo vit_b16_ctxv1; fi ;;
        CoCoOp) echo vit_b16_c4_ep10_batch1_ctxv1 ;;
        MaPLe) echo vit_b16_c2_ep5_batch4_2ctx ;;
        KgCoOp) echo vit_b16_ep100_ctxv1 ;;
        PromptSRC) echo "vit_b16_c2_ep20_batch4_4+4ctx" ;;
        DPT) echo "vit_b16_best_${dataset}" ;;
    esac
}

# base2new TRAINER DATASET SEED: train on base, then evaluate on new (each step skipped when finished).
base2new() {
    local trainer=$1 dataset=$2 seed=$3 cfg folder step
    cfg=$(config "$trainer" "$dataset")
    case "$trainer" in
        CoOp | CoCoOp | MaPLe | KgCoOp | PromptSRC)
            case "$trainer" in
                CoOp | CoCoOp) folder=cocoop ;;
                *) folder=$(echo "$trainer" | tr '[:upper:]' '[:lower:]') ;;  # scripts/{maple,kgcoop,promptsrc}
            esac
            for step in train test; do
                TRAINER=$trainer CFG=$cfg bash "scripts/${folder}/base2new_${step}.sh" "$dataset" "$seed" "${EXTRA[@]}"
            done ;;
        DPT)
            if [ ${#EXTRA[@]} -gt 0 ]; then
                SEEDS=$seed OPTS="${EXTRA[*]}" TAG=smoke LOADEP=1 bash scripts/dpt/base2new.sh "$DATA" "$dataset" "$cfg"
            else
                SEEDS=$seed bash scripts/dpt/base2new.sh "$DATA" "$dataset" "$cfg"
            fi ;;
        *) echo "error: TRAINERS has $trainer; choose from CoOp CoCoOp MaPLe KgCoOp PromptSRC DPT" >&2; exit 1 ;;
    esac
}

if [ "${TABLE_ONLY:-0}" != "1" ]; then
    for DATASET in $DATASETS; do
        for SEED in $SEEDS; do
            for TRAINER in $TRAINERS; do
                base2new "$TRAINER" "$DATASET" "$SEED"
            done
        done
    done
fi
"$PYTHON" parse_test_res.py "$OUTPUT/base2new" --table

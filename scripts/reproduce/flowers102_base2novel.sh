#!/bin/bash
# Flowers102 base-to-novel study of the seed notebook (zero-shot CLIP, CoCoOp, CLIP-LoRA, DISEF, improved DISEF) as
# one command, in two named variants; each method is trained on the base classes (labels 0-50) and tested on the
# base and the novel classes (51-101), then one table Base / Novel / HM per variant (HM from parse_test_res).
#
#   notebook      the notebook's recipes: all 10 training images per base class (torchvision's split), CLIP's own
#                 preprocessing, "CLIP-LoRA" = DISEF's LoRA recipe with early stopping, DISEF with 32 synthetic
#                 images per class (generate.py --preset notebook: SD 2.1-base, ViT-B/16 filter), improved DISEF
#                 (synthetic images only for classes with zero-shot val F1 < 0.70, filtered by the CLIP-LoRA run,
#                 lambda 0.95, lr 2e-5); printed beside the notebook's numbers
#   disef_paper   the references' recipes on 16 shots of CoOp's Flowers102 split (configs/datasets/oxford_flowers.yaml,
#                 base = first 51 labels as well): CLIP-LoRA's (q, k, v; r 2; 500 x 16 iterations) and
#                 DISEF's released one (64 synthetic images per class from generate.py --preset disef_paper:
#                 Realistic Vision V2.0, ViT-H-14 filter; Mixup/CutMix, RandAugment, Resize 256 + CenterCrop 224)
#
# Generation runs on a GPU with the LLaVA-1.5-7B and Stable Diffusion weights in the Hugging Face cache.  Finished
# runs and generated images are skipped; interrupted ones resume.
#
#   bash scripts/reproduce/flowers102_base2novel.sh DATA
#   env: VARIANTS ("notebook disef_paper"), SEEDS ("1"), OUTPUT (output/flowers102_base2novel), PYTHON (python),
#        DEVICE (cuda), TABLE_ONLY=1 (only print the tables of finished runs),
#        SMOKE=1 (CPU plumbing check: Synthetic dataset, tiny CLIP, random tiny LLaVA / Stable Diffusion)
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${1:?usage: bash scripts/reproduce/flowers102_base2novel.sh DATA}
VARIANTS=${VARIANTS:-"notebook disef_paper"}
SEEDS=${SEEDS:-"1"}
OUTPUT=${OUTPUT:-output/flowers102_base2novel}
PYTHON=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
export VLPROMPT_SKIP_ENV_INFO=1

if [ "${SMOKE:-0}" = "1" ]; then
    DEVICE=cpu
    "${PYTHON}" scripts/pretrain_tiny_clip.py --name tiny-vit-synthetic
fi

# configure VARIANT: the dataset, shots, configs, extra options and generation flags of one variant.
configure() {
    local variant=$1
    IMPROVED_CFG="" LORA_OPTS=() DISEF_OPTS=() IMPROVED_OPTS=()
    if [ "${SMOKE:-0}" = "1" ]; then
        DATASET=synthetic SHOTS=8
        ZS_CFG=tiny_vit COCOOP_CFG=tiny_vit_c4_ep10_batch4_ctxv1 COCOOP_EPOCH=10
        LORA_CFG=tiny_vit_qkv_r2_a1_iters10_batch8 DISEF_CFG=tiny_vit_qv_r8-4_a8_lam0.8_ep10_batch8
        LORA_EPOCH=last DISEF_EPOCH=last
        GEN=(--tiny-models --images-per-class 4 --batch-size 4 --init-size 32 --caption-max-new-tokens 8
             --cycle-budget 2 --filter-backbone tiny-vit-synthetic --no-quantize-4bit)
        if [ "${variant}" = notebook ]; then
            IMPROVED_CFG=tiny_vit_qv_r8-4_a8_lam0.95_ep10_batch8_f1
            LORA_OPTS=(TRAINER.CLIP_LORA.CLIP_PREPROCESS True)
            DISEF_OPTS=(TRAINER.DISEF.CLIP_PREPROCESS True TRAINER.DISEF.BATCHING mixed)
            IMPROVED_OPTS=(TRAINER.DISEF.CLIP_PREPROCESS True TRAINER.DISEF.BATCHING mixed)
        else
            DISEF_OPTS=(TRAINER.DISEF.MIXUP_ALPHA 0.1 TRAINER.DISEF.CUTMIX_ALPHA 0.1 TRAINER.DISEF.RANDAUGMENT_OPS 2
                        TRAINER.DISEF.TEST_RESIZE 36 TRAINER.DISEF.AVERAGE_TEMPLATES True)
        fi
    elif [ "${variant}" = notebook ]; then
        DATASET=flowers102 SHOTS=-1
        ZS_CFG=vit_b16 COCOOP_CFG=vit_b16_c4_ep10_batch1_ctxv1 COCOOP_EPOCH=10
        LORA_CFG=vit_b16_qv_r64-16_a32_ep15_notebook DISEF_CFG=vit_b16_qv_r64-16_a32_lam0.8_ep50_notebook
        IMPROVED_CFG=vit_b16_qv_r64-16_a32_lam0.95_lr2e-5_ep50_f1
        LORA_EPOCH=best DISEF_EPOCH=best
        GEN=()
    elif [ "${variant}" = disef_paper ]; then
        DATASET=oxford_flowers SHOTS=16  # CoOp's split (the references'), 16 of its training images per class
        ZS_CFG=vit_b16 COCOOP_CFG=vit_b16_c4_ep10_batch1_ctxv1 COCOOP_EPOCH=10
        LORA_CFG=vit_b16_qkv_r2_a1_iters500 DISEF_CFG=vit_b16_qv_r64-16_a32_lam0.8_ep50
        LORA_EPOCH=last DISEF_EPOCH=last
        GEN=()
    else
        echo "unknown variant ${variant}; choose from: notebook disef_paper" >&2
        exit 1
    fi
    DATASET_CFG=configs/datasets/${DATASET}.yaml
    ROOT_OUT=${OUTPUT}/${variant}
}

# run SPLIT TRAINER CFG SEED [train.py args...]: one train.py run into ROOT_OUT/SPLIT/DATASET/TRAINER/CFG/seedSEED,
# skipped when its log already has a result.
run() {
    local split=$1 trainer=$2 cfg=$3 seed=$4 subsample dir
    shift 4
    subsample=base
    [ "${split}" = test_new ] && subsample=new
    dir=${ROOT_OUT}/${split}/${DATASET}/${trainer}/${cfg}/seed${seed}
    if grep -qs "^\* accuracy:" "${dir}"/log.txt*; then
        echo "Skip ${dir} (finished)"
        return
    fi
    echo "Run ${dir}"
    "${PYTHON}" train.py --root "${DATA}" --seed "${seed}" --trainer "${trainer}" \
        --dataset-config-file "${DATASET_CFG}" --config-file "configs/trainers/${trainer}/${cfg}.yaml" \
        --output-dir "${dir}" "$@" DATASET.NUM_SHOTS "${SHOTS}" DATASET.SUBSAMPLE_CLASSES "${subsample}"
}

# base2new TRAINER CFG SEED LOAD_EPOCH [opts...]: train on base (tested on base), evaluate on new; opts go to both
# runs, the array TRAIN_ONLY (e.g. the synthetic image folder) to the training run only.
# LOAD_EPOCH: a number, "best" (model-best, early stopping), "last" (the last checkpoint) or "none" (zero-shot).
TRAIN_ONLY=()
base2new() {
    local trainer=$1 cfg=$2 seed=$3 epoch=$4 train_dir
    shift 4
    train_dir=${ROOT_OUT}/train_base/${DATASET}/${trainer}/${cfg}/seed${seed}
    run train_base "${trainer}" "${cfg}" "${seed}" "$@" "${TRAIN_ONLY[@]}"
    TRAIN_ONLY=()
    if [ "${epoch}" = last ]; then
        epoch=$(sed -n 's/^model\.pth\.tar-\([0-9][0-9]*\)$/\1/p' "${train_dir}"/*/checkpoint | head -n 1)
    fi
    if [ "${epoch}" = none ]; then
        run test_new "${trainer}" "${cfg}" "${seed}" "$@"
    elif [ "${epoch}" = best ]; then
        run test_new "${trainer}" "${cfg}" "${seed}" --eval-only --model-dir "${train_dir}" "$@"
    else
        run test_new "${trainer}" "${cfg}" "${seed}" --eval-only --model-dir "${train_dir}" --load-epoch "${epoch}" "$@"
    fi
}

# generate PRESET NAME SEED [generate.py args...]: synthetic images of the base classes (resumable).
generate() {
    local preset=$1 name=$2 seed=$3
    shift 3
    "${PYTHON}" scripts/disef/generate.py --preset "${preset}" --root "${DATA}" --dataset-config-file "${DATASET_CFG}" \
        --seed "${seed}" --num-shots "${SHOTS}" --subsample-classes base --device "${DEVICE}" \
        --output-dir "${ROOT_OUT}/synthetic/${DATASET}/${name}/seed${seed}" "${GEN[@]}" "$@"
}

# train_variant VARIANT SEED: the methods of one variant.
train_variant() {
    local variant=$1 seed=$2 syn
    base2new ZeroshotCLIP "${ZS_CFG}" "${seed}" none
    base2new CoCoOp "${COCOOP_CFG}" "${seed}" "${COCOOP_EPOCH}"
    base2new CLIP_LoRA "${LORA_CFG}" "${seed}" "${LORA_EPOCH}" "${LORA_OPTS[@]}"
    syn=${ROOT_OUT}/synthetic/${DATASET}/disef/seed${seed}
    generate "${variant}" disef "${seed}"
    TRAIN_ONLY=(TRAINER.DISEF.SYN_DIR "${syn}")
    base2new DISEF "${DISEF_CFG}" "${seed}" "${DISEF_EPOCH}" "${DISEF_OPTS[@]}"
    if [ -n "${IMPROVED_CFG}" ]; then
        syn=${ROOT_OUT}/synthetic/${DATASET}/improved/seed${seed}
        local lora_file=${ROOT_OUT}/train_base/${DATASET}/CLIP_LoRA/${LORA_CFG}/seed${seed}/lora_weights.pt
        # zero-shot F1 with the filter's backbone, then the CLIP-LoRA run as the filter
        generate "${variant}" improved "${seed}" --f1-threshold 0.7 --filter-lora "${lora_file}"
        TRAIN_ONLY=(TRAINER.DISEF.SYN_DIR "${syn}")
        base2new DISEF "${IMPROVED_CFG}" "${seed}" "${DISEF_EPOCH}" "${IMPROVED_OPTS[@]}"
    fi
}

for VARIANT in ${VARIANTS}; do
    configure "${VARIANT}"
    if [ "${TABLE_ONLY:-0}" != "1" ]; then
        for SEED in ${SEEDS}; do
            train_variant "${VARIANT}" "${SEED}"
        done
    fi
    echo "== ${VARIANT} =="
    "${PYTHON}" parse_test_res.py "${ROOT_OUT}" --table
    VARIANT=${VARIANT} IMPROVED_CFG=${IMPROVED_CFG} "${PYTHON}" - "${ROOT_OUT}" <<'PY'
"""Model | Base | Novel | HM of one variant (HM from vlprompt.parse_test_res), beside the seed notebook's numbers."""
import os
import sys

from vlprompt import parse_test_res

NOTEBOOK = {"Zero-shot CLIP": (71.33, 78.24, 74.62), "CoCoOp": (95.19, 71.11, 81.41),
            "CLIP-LoRA": (96.81, 74.13, 83.96), "DISEF": (95.27, 75.44, 84.20), "Improved DISEF": (95.07, 75.87, 84.39)}
NAMES = {"ZeroshotCLIP": "Zero-shot CLIP", "CoCoOp": "CoCoOp", "CLIP_LoRA": "CLIP-LoRA", "DISEF": "DISEF"}
rows = parse_test_res.harmonic_mean_rows(parse_test_res.collect_table(sys.argv[1], "accuracy"))
ours = {}
for row in rows:
    name = NAMES.get(row["trainer"], row["trainer"])
    if row["trainer"] == "DISEF" and row["config"] == os.environ["IMPROVED_CFG"]:
        name = "Improved DISEF"
    ours[name] = row
notebook = os.environ["VARIANT"] == "notebook"
print(f"\n| Model | Base | Novel | HM |{' notebook Base | notebook Novel | notebook HM |' if notebook else ''}")
print("|---|---|---|---|" + ("---|---|---|" if notebook else ""))
for name, reference in NOTEBOOK.items():
    row = ours.get(name)
    if row is None and not notebook:
        continue
    values = [f"{row['base']:.2f}", f"{row['new']:.2f}", f"{row['H']:.2f}"] if row else ["-", "-", "-"]
    values += [f"{v:.2f}" for v in reference] if notebook else []
    print(f"| {name} | " + " | ".join(values) + " |")
PY
done

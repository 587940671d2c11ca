#!/usr/bin/env bash
# Zero-shot CLIP with the dataset's hand-written prompt (CoOp's scripts/coop/zeroshot.sh at KaiyangZhou/CoOp@ff61507).
#   bash scripts/coop/zeroshot.sh DATASET CFG [KEY VALUE ...]     e.g. bash scripts/coop/zeroshot.sh dtd vit_b16
# CFG: a configs/trainers/ZeroshotCLIP/ stem (rn50, rn101, vit_b32, vit_b16, tiny_vit).
# Env: DATA, OUTPUT, PYTHON, TRAINER (ZeroshotCLIP or ZeroshotCLIP2).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
if [ $# -lt 2 ]; then sed -n '2,6p' "$SCRIPT_PATH"; exit 1; fi
TRAINER="${TRAINER:-ZeroshotCLIP}"
DATASET=$1; CFG=$2; shift 2
require_file "configs/datasets/${DATASET}.yaml" "dataset config"
require_file "configs/trainers/ZeroshotCLIP/${CFG}.yaml" "trainer config"

DIR="${OUTPUT}/${TRAINER}/${CFG}/${DATASET}"
run_exists "$DIR" && exit 0
"$PYTHON" train.py \
    --root "$DATA" --trainer "$TRAINER" \
    --dataset-config-file "configs/datasets/${DATASET}.yaml" \
    --config-file "configs/trainers/ZeroshotCLIP/${CFG}.yaml" \
    --output-dir "$DIR" --eval-only "$@"

#!/usr/bin/env bash
# Cross-dataset / domain-generalisation source run: train on all ImageNet classes, 16 shots
# (muzairkhattak/multimodal-prompt-learning@69bce21 scripts/{maple,independent-vlp,vpt}/xd_train_*.sh).
#   bash scripts/maple/xd_train.sh SEED [KEY VALUE ...]
# Env: TRAINER (MaPLe, IVLP or VPT; default MaPLe), CFG (default the reference's: MaPLe
# vit_b16_c2_ep5_batch4_2ctx_cross_datasets, IVLP and VPT their base-to-new configs), SHOTS (16), DATASET (imagenet),
# DATA, OUTPUT, PYTHON.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"
if [ $# -lt 1 ]; then sed -n '2,8p' "$SCRIPT_PATH"; exit 1; fi
TRAINER="${TRAINER:-MaPLe}"
CFG="${CFG:-$(xd_cfg "$TRAINER")}"
SHOTS="${SHOTS:-16}"
xd_train "$@"

#!/usr/bin/env bash
# Base-to-new generalisation, step 1: train on the base half of the classes, test on base
# (muzairkhattak/multimodal-prompt-learning@69bce21 scripts/{maple,independent-vlp,vpt}/base2new_train_*.sh).
#   bash scripts/maple/base2new_train.sh DATASET SEED [KEY VALUE ...]
# Env: TRAINER (MaPLe, IVLP or VPT; default MaPLe), CFG (a configs/trainers/$TRAINER/ stem; default the
# reference's: MaPLe vit_b16_c2_ep5_batch4_2ctx, IVLP vit_b16_c2_ep5_batch4_2+2ctx, VPT vit_b16_c2_ep5_batch4_4),
# SHOTS (default 16), DATA, OUTPUT, PYTHON.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/defaults.sh"
if [ $# -lt 2 ]; then sed -n '2,8p' "$SCRIPT_PATH"; exit 1; fi
TRAINER="${TRAINER:-MaPLe}"
CFG="${CFG:-$(base2new_cfg "$TRAINER")}"
SHOTS="${SHOTS:-16}"
base2new_train "$@"

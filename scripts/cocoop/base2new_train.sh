#!/usr/bin/env bash
# Base-to-new generalisation, step 1: train on the base half of the classes, test on base
# (CoCoOp's scripts/cocoop/base2new_train.sh at KaiyangZhou/CoOp@ff61507).
#   bash scripts/cocoop/base2new_train.sh DATASET SEED [KEY VALUE ...]
# Env: TRAINER (default CoCoOp; also CoOp, ZeroshotCLIP, ...), CFG (a configs/trainers/$TRAINER/ stem,
# default vit_b16_c4_ep10_batch1_ctxv1), SHOTS (default 16), DATA, OUTPUT, PYTHON.
# CoCoOp paper settings: CoOp uses CFG=vit_b16_ctxv1 (vit_b16_ep50_ctxv1 on ImageNet).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
if [ $# -lt 2 ]; then sed -n '2,8p' "$SCRIPT_PATH"; exit 1; fi
TRAINER="${TRAINER:-CoCoOp}"
CFG="${CFG:-vit_b16_c4_ep10_batch1_ctxv1}"
SHOTS="${SHOTS:-16}"
base2new_train "$@"

#!/usr/bin/env bash
# CLIP-Adapter over CoOp's few-shot protocol (shots x seeds) with CoOp's epochs per shots value, as the reference
# (gaopengcuhk/CLIP-Adapter) says to run it: <backbone>_ep50 for 1 shot and ImageNet, _ep100 for 2-4, 200 epochs
# for 8-16 (configs/trainers/CLIP_Adapter/).
#   bash scripts/baselines/clip_adapter.sh DATASET BACKBONE [KEY VALUE ...]
#   e.g. bash scripts/baselines/clip_adapter.sh caltech101 rn50
# BACKBONE: rn50 | vit_b16 (or CFG=<stem> in the environment: that config for every shots value).
# Env: SHOTS ("1 2 4 8 16"), SEEDS ("1 2 3"), CFG, DATA, OUTPUT, PYTHON (scripts/lib.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [ $# -lt 2 ]; then sed -n '2,8p' "$0"; exit 1; fi
TRAINER=CLIP_Adapter; DATASET=$1; BACKBONE=$2; shift 2
FIXED_CFG=${CFG:-}
schedule() { if [ -n "${FIXED_CFG}" ]; then echo "${FIXED_CFG}"; else coop_schedule "${BACKBONE}" "$1" "$2"; fi; }
fewshot_grid "${DATASET}" schedule "$@"

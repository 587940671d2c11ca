#!/usr/bin/env bash
# Base-to-new generalisation, step 1: train PromptSRC on the base half of the classes, test on base
# (muzairkhattak/PromptSRC@bb95c77 scripts/promptsrc/base2new_train.sh, one seed per call).
#   bash scripts/promptsrc/base2new_train.sh DATASET SEED [KEY VALUE ...]
# Env: CFG (a configs/trainers/PromptSRC/ stem, default vit_b16_c2_ep20_batch4_4+4ctx), SHOTS (default 16),
# DATA, OUTPUT, PYTHON (scripts/lib.sh).  The reference's three seeds:
#   for SEED in 1 2 3; do bash scripts/promptsrc/base2new_train.sh DATASET $SEED; done
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
if [ $# -lt 2 ]; then sed -n '2,7p' "$SCRIPT_PATH"; exit 1; fi
TRAINER=PromptSRC
CFG="${CFG:-vit_b16_c2_ep20_batch4_4+4ctx}"
SHOTS="${SHOTS:-16}"
base2new_train "$@"

#!/usr/bin/env bash
# Base-to-new generalisation, step 2: evaluate the base-trained PromptSRC prompts on the new half of the classes
# (muzairkhattak/PromptSRC@bb95c77 scripts/promptsrc/base2new_test.sh, one seed per call).
#   bash scripts/promptsrc/base2new_test.sh DATASET SEED [KEY VALUE ...]
# Same env as base2new_train.sh, plus LOADEP: the epoch to load, by default the last one the training run saved
# (the reference hard-codes 20; that checkpoint holds the Gaussian-aggregated prompts), and SUB (default new).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
if [ $# -lt 2 ]; then sed -n '2,6p' "$SCRIPT_PATH"; exit 1; fi
TRAINER=PromptSRC
CFG="${CFG:-vit_b16_c2_ep20_batch4_4+4ctx}"
SHOTS="${SHOTS:-16}"
base2new_test "$@"

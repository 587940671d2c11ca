#!/usr/bin/env bash
# Offline CPU demo (about 2 minutes on 2 cores): zero-shot CLIP, CoOp and CoCoOp on the synthetic dataset
# with a tiny CLIP, base-to-new generalisation, seeds 1 and 2, then one results table.
#   bash scripts/demo.sh
# 1. scripts/pretrain_tiny_clip.py pre-trains the tiny CLIP for a few seconds (skipped if its file exists).
# 2. For each trainer and seed: scripts/cocoop/base2new_train.sh (train on base classes, test on base), then
#    scripts/cocoop/base2new_test.sh (test on new classes); finished runs are skipped.
# 3. parse_test_res.py --table prints mean ± std over seeds and the base/new harmonic mean.
# Env: OUTPUT (default output/demo), DATA (default ./data), PYTHON; each run's full log is in its folder.
set -euo pipefail
export OUTPUT="${OUTPUT:-output/demo}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# One torch thread per run: the tiny models gain nothing from more, and OpenMP threads that compete with
# other processes for 2 cores slow a run down by 10x or more.  No env dump.
export DATA OUTPUT PYTHON OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" VLPROMPT_SKIP_ENV_INFO=1
DATASET=synthetic
SEEDS="1 2"
RUNS=("ZeroshotCLIP tiny_vit" "CoOp tiny_vit_ep50_ctxv1" "CoCoOp tiny_vit_c4_ep10_batch4_ctxv1")
mkdir -p "$OUTPUT"
LOG="$OUTPUT/demo.log"
: > "$LOG"

accuracy() {  # accuracy DIR: the last "* accuracy: X%" of DIR/log.txt
    sed -n 's/^\* accuracy: \(.*\)%$/\1/p' "$1/log.txt" | tail -n 1
}

run_step() {  # run_step SCRIPT TRAINER CFG SEED SPLIT: run quietly, print one line, show the log tail on failure
    local script=$1 trainer=$2 cfg=$3 seed=$4 split=$5 dir
    dir="$OUTPUT/base2new/$split/$DATASET/shots_16/$trainer/$cfg/seed$seed"
    if ! TRAINER="$trainer" CFG="$cfg" bash "scripts/cocoop/$script" "$DATASET" "$seed" >> "$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        echo "error: $script failed for $trainer seed $seed; full output in $LOG" >&2
        exit 1
    fi
    printf '  %-13s seed %s  %-12s accuracy %s%%\n' "$trainer" "$seed" "${split#*_} classes" "$(accuracy "$dir")"
}

start=$SECONDS
echo "== 1/3 Pre-training the tiny CLIP on synthetic image/caption pairs"
"$PYTHON" scripts/pretrain_tiny_clip.py --name tiny-vit-synthetic 2>&1 | tee -a "$LOG" | sed 's/^/  /'
echo "== 2/3 Base-to-new runs on $DATASET (train on base classes, test on base and new)"
for run in "${RUNS[@]}"; do
    read -r trainer cfg <<< "$run"
    for seed in $SEEDS; do
        run_step base2new_train.sh "$trainer" "$cfg" "$seed" train_base
        run_step base2new_test.sh "$trainer" "$cfg" "$seed" test_new
    done
done
echo "== 3/3 Results (runs under $OUTPUT/base2new; $((SECONDS - start)) s)"
"$PYTHON" parse_test_res.py "$OUTPUT/base2new" --table

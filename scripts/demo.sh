#!/usr/bin/env bash
# Offline CPU demo of every registered trainer (about 1.5 minutes on 2 cores): a tiny CLIP pre-trained on synthetic
# shapes, ZeroshotCLIP / CoOp / CoCoOp base-to-new, one run of every other method on the synthetic data it needs,
# then one results table and one figure.
#   bash scripts/demo.sh
# The steps, the per-trainer settings and the data written for them: scripts/demo.py (one Python process).
# Env: OUTPUT (default output/demo; finished runs are skipped on a re-run), DATA (default ./data), SEEDS (of the
# base-to-new runs, default 1), FIGURE (default $OUTPUT/demo.png; FIGURE=docs/images/demo.png refreshes
# README's figure), PYTHON.  What the runs print goes to $OUTPUT/demo.log, each run's own log to its folder.
set -euo pipefail
export OUTPUT="${OUTPUT:-output/demo}"
FIGURE="${FIGURE:+$(case "$FIGURE" in /*) echo "$FIGURE" ;; *) echo "$PWD/$FIGURE" ;; esac)}"  # from the caller's dir
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # absolute DATA / OUTPUT, PYTHON; cd to the repository root
FIGURE="${FIGURE:-$OUTPUT/demo.png}"
# One torch thread: the tiny models gain nothing from more, and OpenMP threads that compete with other processes
# for 2 cores slow a run down by 10x or more.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" VLPROMPT_SKIP_ENV_INFO=1
# shellcheck disable=SC2086  # SEEDS is a list
exec "$PYTHON" scripts/demo.py --output "$OUTPUT" --data "$DATA" --figure "$FIGURE" --seeds ${SEEDS:-1}

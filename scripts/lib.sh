# Sourced by the experiment scripts: repository root, Python, DATA/OUTPUT folders, skip-if-done, epochs.
#
#   DATA    dataset root                  (default: <repo>/data)
#   OUTPUT  where run folders are written (default: <repo>/output)
#   PYTHON  interpreter                   (default: $PYTHON, else <repo>/.venv/bin/python, else python3)
# Relative DATA/OUTPUT are read from the caller's directory; the scripts then run from the repository root,
# so they work from anywhere (CoOp's scripts began with `cd ../..` and only worked from their own folder).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
SCRIPT_PATH="$(_abspath "$0")"  # the calling script, for its usage text (read after the cd below)
DATA="$(_abspath "${DATA:-$ROOT/data}")"
OUTPUT="$(_abspath "${OUTPUT:-$ROOT/output}")"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="$(command -v python3 || command -v python)"; fi
fi
cd "$ROOT"

# run_exists DIR: return 0 (and say why) if DIR already exists: the run is skipped, as in CoOp's scripts.
run_exists() {
    if [ -d "$1" ]; then
        if grep -qs '^\* accuracy:' "$1/log.txt"; then
            echo "Oops! The results exist at $1 (so skip this job)"
        else
            echo "Oops! $1 exists but has no result (crashed or running?); delete it to re-run (so skip this job)"
        fi
        return 0
    fi
    return 1
}

# last_epoch RUN_DIR: epoch of the last checkpoint a training run saved (from <model>/checkpoint), or nothing.
last_epoch() {
    local pointer
    for pointer in "$1"/*/checkpoint; do
        if [ -f "$pointer" ]; then sed -n 's/^model\.pth\.tar-\([0-9][0-9]*\)$/\1/p' "$pointer"; return 0; fi
    done
}

# require_file PATH WHAT: fail with one line when a config file is missing.
require_file() {
    if [ ! -f "$1" ]; then echo "error: $2 not found: $1" >&2; exit 1; fi
}

# train_py DATASET SEED DIR [ARG ...]: train.py on configs/datasets/DATASET.yaml and
# configs/trainers/$TRAINER/$CFG.yaml into DIR; further flags and KEY VALUE pairs follow.
train_py() {
    local dataset=$1 seed=$2 dir=$3
    shift 3
    "$PYTHON" train.py \
        --root "$DATA" --seed "$seed" --trainer "$TRAINER" \
        --dataset-config-file "configs/datasets/${dataset}.yaml" \
        --config-file "configs/trainers/${TRAINER}/${CFG}.yaml" \
        --output-dir "$dir" "$@"
}

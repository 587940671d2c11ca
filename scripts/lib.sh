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

# The base-to-new and cross-dataset protocols of CoCoOp's scripts, shared by every method's script (CoCoOp,
# MaPLe / IVLP / VPT, KgCoOp, PromptSRC): the calling script sets TRAINER, CFG, SHOTS (and SUB, SOURCE,
# SHOTS_TAG) and passes method-specific KEY VALUE pairs before the user's.  A finished run is skipped.

# base2new_train DATASET SEED [KEY VALUE ...]: train on the base classes, test on them.
base2new_train() {
    local dataset=$1 seed=$2
    shift 2
    _require_configs "$dataset"
    local dir="${OUTPUT}/base2new/train_base/$(_base2new_run "$dataset" "$seed")"
    run_exists "$dir" && return 0
    train_py "$dataset" "$seed" "$dir" DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base "$@"
}

# base2new_test DATASET SEED [KEY VALUE ...]: evaluate that run's last epoch on the $SUB (default new) classes.
base2new_test() {
    local dataset=$1 seed=$2 sub="${SUB:-new}"
    shift 2
    _require_configs "$dataset"
    local run
    run="$(_base2new_run "$dataset" "$seed")"
    _eval_run "$dataset" "$seed" "${OUTPUT}/base2new/train_base/${run}" "${OUTPUT}/base2new/test_${sub}/${run}" \
        base2new_train.sh DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES "$sub" "$@"
}

# xd_train SEED [KEY VALUE ...]: train on all classes of $DATASET (default imagenet), the cross-dataset source.
xd_train() {
    local dataset="${DATASET:-imagenet}" seed=$1
    shift 1
    _require_configs "$dataset"
    local dir="${OUTPUT}/${dataset}/${TRAINER}/${CFG}_${SHOTS}shots/seed${seed}"
    run_exists "$dir" && return 0
    train_py "$dataset" "$seed" "$dir" DATASET.NUM_SHOTS "$SHOTS" "$@"
}

# xd_test DATASET SEED [KEY VALUE ...]: evaluate the $SOURCE (default imagenet) run on DATASET.
xd_test() {
    local dataset=$1 seed=$2 source="${SOURCE:-imagenet}"
    shift 2
    _require_configs "$dataset"
    _eval_run "$dataset" "$seed" "${OUTPUT}/${source}/${TRAINER}/${CFG}_${SHOTS}shots/seed${seed}" \
        "${OUTPUT}/evaluation/${TRAINER}/${CFG}_${SHOTS}shots/${dataset}/seed${seed}" xd_train.sh "$@"
}

_require_configs() {
    require_file "configs/datasets/$1.yaml" "dataset config"
    require_file "configs/trainers/${TRAINER}/${CFG}.yaml" "trainer config"
}

_base2new_run() { echo "$1/shots_${SHOTS}${SHOTS_TAG:-}/${TRAINER}/${CFG}/seed$2"; }

# _eval_run DATASET SEED MODEL_DIR DIR TRAIN_SCRIPT [ARG ...]: --eval-only of MODEL_DIR's last epoch into DIR.
_eval_run() {
    local dataset=$1 seed=$2 model_dir=$3 dir=$4 train_script=$5
    shift 5
    run_exists "$dir" && return 0
    if [ ! -d "$model_dir" ]; then
        echo "error: $model_dir not found; run $(dirname "$SCRIPT_PATH")/$train_script first" >&2
        exit 1
    fi
    local epoch="${LOADEP:-$(last_epoch "$model_dir")}"
    train_py "$dataset" "$seed" "$dir" --model-dir "$model_dir" ${epoch:+--load-epoch "$epoch"} --eval-only "$@"
}

# Sourced by scripts/baselines/*.sh: the shots x seeds loop of CoOp's few-shot protocol, skipping finished runs.
#
# Env (besides DATA, OUTPUT, PYTHON from scripts/lib.sh): SHOTS (default "1 2 4 8 16"), SEEDS (default "1 2 3").
# A run goes to ${OUTPUT}/<dataset>/<trainer>/<config>_<shots>shots/seed<seed>, CoOp's folder layout.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

# fewshot_grid DATASET CONFIG_FN [KEY VALUE ...]: for every shots value, CFG=$(CONFIG_FN DATASET SHOTS), then
# train.py for every seed (TRAINER must be set; trailing KEY VALUE pairs go to train.py).
fewshot_grid() {
    local dataset=$1 config_fn=$2 shots seed dir
    shift 2
    require_file "configs/datasets/${dataset}.yaml" "dataset config"
    for shots in ${SHOTS:-1 2 4 8 16}; do
        CFG=$("${config_fn}" "${dataset}" "${shots}")
        require_file "configs/trainers/${TRAINER}/${CFG}.yaml" "trainer config"
        for seed in ${SEEDS:-1 2 3}; do
            dir="${OUTPUT}/${dataset}/${TRAINER}/${CFG}_${shots}shots/seed${seed}"
            run_exists "${dir}" && continue
            train_py "${dataset}" "${seed}" "${dir}" DATASET.NUM_SHOTS "${shots}" "$@"
        done
    done
}

# coop_schedule BACKBONE DATASET SHOTS: CoOp's epochs per shots value (its COOP.md): <backbone>_ep50 for 1 shot and
# for ImageNet, <backbone>_ep100 for 2 and 4 shots, <backbone> (200 epochs) for 8 and 16.
coop_schedule() {
    local backbone=$1 dataset=$2 shots=$3
    if [ "${dataset}" = imagenet ] || [ "${shots}" = 1 ]; then echo "${backbone}_ep50"
    elif [ "${shots}" = 2 ] || [ "${shots}" = 4 ]; then echo "${backbone}_ep100"
    else echo "${backbone}"; fi
}

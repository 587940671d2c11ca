#!/bin/bash
# Reproduce MLPT's noisy-label tables (LZHMS/MLPT@8f9708e) with the CoOp baseline in the same grid, made fair:
# both methods see the same per-class noisy few-shot set (DATASET.NUM_FP, datasets/label_noise.py) and the same
# YAML (configs/trainers/MLPT/<CFG>.yaml holds only CoOp's hyper-parameters).  Six datasets x noise 0/2/4/8 of 16
# shots x RN50 / ViT-B/32, every seed; then one table of test accuracy (mean ± std over seeds) per method and
# noise level, with the reference's numbers beside it.  The reference's MLPT numbers were obtained under its
# broken noise (only the first NUM_FP items, about one class, corrupted; docs/methods/mlpt.md); run LITERAL="0 1"
# to also train MLPT under that noise.
#
#   bash scripts/reproduce/mlpt.sh DATA
#   env: SEEDS ("1 2 3"), DATASETS ("dtd caltech101 fgvc_aircraft oxford_flowers oxford_pets ucf101"),
#        CFGS ("rn50_ep50 vit_b32_ep50"), NOISE ("0 2 4 8"), SHOTS (16), TRAINERS ("MLPT CoOp"),
#        LITERAL ("0"; "0 1" adds MLPT under the reference's noise), NCTX (16), CSC (False), OUTPUT (output),
#        PYTHON (python), OPTS + TAG (extra KEY VALUE overrides and the folder suffix naming them, as in
#        scripts/mlpt/main.sh), TABLE_ONLY=1 (only print the table of finished runs)
#   CPU smoke run: DATASETS=synthetic CFGS=tiny_vit_ctx4_csc_ep40 NCTX=4 CSC=True NOISE="0 8" SEEDS=1 LITERAL="0 1"
#                  (the tiny-vit-synthetic weights: python scripts/pretrain_tiny_clip.py --name tiny-vit-synthetic)
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${1:?usage: bash scripts/reproduce/mlpt.sh DATA}
export DATA
export SEEDS=${SEEDS:-"1 2 3"}
export DATASETS=${DATASETS:-"dtd caltech101 fgvc_aircraft oxford_flowers oxford_pets ucf101"}
export CFGS=${CFGS:-"rn50_ep50 vit_b32_ep50"}
export NOISE=${NOISE:-"0 2 4 8"}
export SHOTS=${SHOTS:-16}
export TRAINERS=${TRAINERS:-"MLPT CoOp"}
export LITERAL_MODES=${LITERAL:-"0"}
export NCTX=${NCTX:-16}
export CSC=${CSC:-False}
export OUTPUT=${OUTPUT:-output}
export PYTHON=${PYTHON:-python}
export OPTS=${OPTS:-}
export TAG=${TAG:-}
unset LITERAL

if [ "${TABLE_ONLY:-0}" != "1" ]; then
    for DATASET in ${DATASETS}; do
        for CFG in ${CFGS}; do
            for FP in ${NOISE}; do
                for TRAINER in ${TRAINERS}; do
                    TRAINER=${TRAINER} bash scripts/mlpt/main.sh "${DATASET}" "${CFG}" "${SHOTS}" "${FP}"
                done
                for MODE in ${LITERAL_MODES}; do
                    if [ "${MODE}" = "1" ] && [ "${FP}" != "0" ]; then
                        TRAINER=MLPT LITERAL=1 bash scripts/mlpt/main.sh "${DATASET}" "${CFG}" "${SHOTS}" "${FP}"
                    fi
                done
            done
        done
    done
fi

${PYTHON} - <<'PY'
"""Test accuracy (%) per dataset x backbone x method and noise level, the reference's numbers beside it."""
import os
import os.path as osp

import numpy as np

from vlprompt.parse_test_res import END_MARKERS_TRAIN, parse_run

env = os.environ
# The reference's numbers at F = 0 / 2 / 4 / 8 of 16 shots: MLPT from its logs (seed 1, under its class-0-only
# noise; output/*/RCoOp/*/GCEFalse_FactorBiLoss, which the output/*/MLPT logs match line for line), CoOp (CE) from
# its output/*/CoOp/*/parse_results.txt (3 seeds, per-class noise).
REFERENCE = {
    ("MLPT", "rn50_ep50"): {"dtd": (65.0, 62.4, 60.3, 56.9), "caltech101": (92.0, 91.8, 86.6, 90.1),
                            "fgvc_aircraft": (29.3, 29.7, 29.5, 28.2), "oxford_flowers": (94.4, 94.3, 90.3, 89.2),
                            "oxford_pets": (89.5, 87.4, 87.2, 86.8), "ucf101": (74.8, 76.7, 73.7, 73.0)},
    ("MLPT", "vit_b32_ep50"): {"dtd": (64.9, 65.7, 63.8, 60.5), "caltech101": (94.3, 94.3, 92.7, 86.5),
                               "fgvc_aircraft": (30.7, 30.5, 31.9, 29.6), "oxford_flowers": (90.9, 90.0, 90.7, 88.8),
                               "oxford_pets": (91.0, 87.7, 84.9, 81.9), "ucf101": (78.6, 77.9, 78.6, 76.1)},
    ("CoOp", "rn50_ep50"): {"dtd": (63.13, 59.23, 54.80, 45.67), "caltech101": (92.00, 85.83, 83.17, 76.80),
                            "fgvc_aircraft": (29.20, 26.20, 24.07, 19.47), "oxford_flowers": (93.13, 88.87, 85.47, 76.37),
                            "oxford_pets": (88.47, 86.13, 83.13, 71.20), "ucf101": (74.65, 71.53, 68.93, 62.03)},
    ("CoOp", "vit_b32_ep50"): {"dtd": (64.70, 60.83, 57.47, 45.80), "caltech101": (95.13, 90.70, 89.10, 81.27),
                               "fgvc_aircraft": (29.90, 28.47, 26.33, 21.83), "oxford_flowers": (93.90, 88.47, 86.03, 77.47),
                               "oxford_pets": (90.43, 88.07, 83.87, 66.67), "ucf101": (78.75, 75.43, 73.17, 68.27)},
}
NOMINAL = (0, 2, 4, 8)


def cell(exp_dir: str) -> str:
    values = [parse_run(osp.join(exp_dir, f"seed{s}"), "accuracy", END_MARKERS_TRAIN)[0]
              for s in env["SEEDS"].split() if osp.isdir(osp.join(exp_dir, f"seed{s}"))]
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    return f"{np.mean(values):.2f}" + (f" ± {np.std(values):.2f}" if len(values) > 1 else "")


noise = [int(f) for f in env["NOISE"].split()]
shots = env["SHOTS"]
methods = [(t, "") for t in env["TRAINERS"].split()]
if "1" in env["LITERAL_MODES"].split():
    methods.append(("MLPT", "_literal"))
print(f"Test accuracy (%), {shots} shots, NUM_FP noisy shots per class, seeds {env['SEEDS']} "
      "(reference: MLPT seed 1 under its class-0-only noise; CoOp 3 seeds under per-class noise)")
print("| dataset | config | method | " + " | ".join(f"F={f}" for f in noise) + " | reference |")
print("|---|---|---|" + "---:|" * len(noise) + "---|")
for dataset in env["DATASETS"].split():
    for cfg in env["CFGS"].split():
        for trainer, suffix in methods:
            ctx = f"nctx{env['NCTX']}_csc{env['CSC']}_ctpend/GCEFalse"
            tag = f"_{env['TAG']}" if env["TAG"] else ""
            root = osp.join(env["OUTPUT"], dataset, trainer, f"{cfg}_{shots}shots{tag}", ctx)
            cells = [cell(osp.join(root, f"{shots}shots_{f}noise{suffix if f else ''}")) for f in noise]
            ref = REFERENCE.get((trainer, cfg), {}).get(dataset)
            ref_text = " / ".join(f"{ref[NOMINAL.index(f)]:.1f}" for f in noise if f in NOMINAL) if ref else "n/a"
            name = trainer + (" (literal noise)" if suffix else "")
            print(f"| {dataset} | {cfg} | {name} | " + " | ".join(cells) + f" | {ref_text} |")
PY

#!/usr/bin/env python
"""Generate DISEF's synthetic training images for a vlprompt dataset (resumable; see --help).

    python scripts/disef/generate.py --preset disef_paper --root DATA \
        --dataset-config-file configs/datasets/flowers102.yaml --seed 1 --num-shots 16 --subsample-classes base \
        --output-dir output/disef_images/flowers102/seed1 [--f1-threshold 0.7 --filter-lora L.pt]

``--preset disef_paper`` (the released DISEF pipeline) or ``--preset notebook`` (the seed notebook's choices)
sets every generation flag that is not given.  Re-running the same command continues where a previous run
stopped.  Sharded by class over several GPUs, nodes or array tasks into one output folder (shard I of N generates
the classes c with c % N == I; I and N come from --shard-index/--num-shards, else from torchrun's RANK/WORLD_SIZE,
srun's SLURM_PROCID/SLURM_NTASKS or a Slurm array's SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT)::

    torchrun --nproc-per-node 8 scripts/disef/generate.py ... --output-dir OUT     # one GPU per rank
    sbatch --array=0-15 --gpus=1 --wrap "python scripts/disef/generate.py ... --output-dir OUT"
    python scripts/disef/generate.py --output-dir OUT --merge                      # by hand, if needed

The pipeline is ``vlprompt.trainers.disef`` (``python -m vlprompt.trainers.disef.cli`` is the same command);
docs/methods/disef.md describes it, its presets and its differences from the reference.
"""
import os
import sys

sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from vlprompt.trainers.disef.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

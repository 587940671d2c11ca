#!/usr/bin/env python
"""Train or evaluate a registered trainer, with CoOp's command line (see ``python train.py --help``).

    python train.py --root DATA --seed 1 --trainer CoOp \
        --dataset-config-file configs/datasets/dtd.yaml \
        --config-file configs/trainers/CoOp/rn50_ep50.yaml \
        --output-dir output/dtd/CoOp/rn50_ep50_16shots/seed1 DATASET.NUM_SHOTS 16

The code lives in ``vlprompt/train.py``; once installed, ``vlprompt-train`` takes the same arguments from
any directory.
"""
import os
import sys

# The repository root goes to the end of the import path: `vlprompt` and `dassl` are still found there,
# while `import datasets` / `import clip` (e.g. inside transformers) keep meaning the installed libraries.
_ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT] + [_ROOT]

from vlprompt.train import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())

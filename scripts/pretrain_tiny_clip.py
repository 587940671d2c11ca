"""Pre-train a tiny CLIP on synthetic shapes and save it where ``MODEL.BACKBONE.NAME tiny-vit-synthetic`` finds it.

    python scripts/pretrain_tiny_clip.py                      # -> output/pretrained/tiny-vit-synthetic.pth
    python scripts/pretrain_tiny_clip.py --name tiny-rn-synthetic --steps 100
    python scripts/pretrain_tiny_clip.py --output /tmp/my_tiny_clip.pth --force

An existing file is kept (skip-if-done) unless ``--force``.  The recipe and why it is short: clip/pretrain_tiny.py.
"""
from __future__ import annotations

import argparse
import logging
import os.path as osp
import sys
import time

sys.path.append(osp.dirname(osp.dirname(osp.abspath(__file__))))  # the repository root

from vlprompt.clip.pretrain_tiny import PretrainConfig, pretrain_tiny_clip, save_state_dict  # noqa: E402
from vlprompt.trainers.common.clip_loading import PRETRAINED_TINY, pretrained_tiny_path  # noqa: E402

logger = logging.getLogger("pretrain_tiny_clip")


def build_parser() -> argparse.ArgumentParser:
    defaults = PretrainConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="tiny-vit-synthetic", choices=sorted(PRETRAINED_TINY),
                        help="registered backbone name; sets the architecture and the default output file")
    parser.add_argument("--output", default="", help="file to write (default: the registered name's file)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimisation steps")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the weights, images and sampling")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    path = args.output or pretrained_tiny_path(args.name)
    if osp.isfile(path) and not args.force:
        logger.info(f"{path} exists (pass --force to re-train); skipping")
        return 0
    arch = PRETRAINED_TINY[args.name][1]
    start = time.time()
    state_dict, _ = pretrain_tiny_clip(PretrainConfig(arch=arch, steps=args.steps, seed=args.seed))
    save_state_dict(state_dict, path)
    logger.info(f"Saved {path} ({time.time() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

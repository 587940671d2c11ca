"""Train or evaluate a registered trainer, with CoOp's command line.

    python train.py --root DATA --seed 1 --trainer CoOp \
        --dataset-config-file configs/datasets/dtd.yaml \
        --config-file configs/trainers/CoOp/rn50_ep50.yaml \
        --output-dir output/dtd/CoOp/rn50_ep50_16shots/seed1 DATASET.NUM_SHOTS 16

Config precedence (later wins): defaults + every method's keys → dataset YAML → method YAML
→ command-line flags → trailing ``KEY VALUE`` opts. Unlike CoOp's script, ``--seed 0`` is honoured.
"""
from __future__ import annotations

import argparse
import logging
import os
import os.path as osp
import sys

import torch

from dassl.engine import build_trainer
from dassl.utils import (
    UnreadableImageError,
    close_logger,
    collect_env_info,
    destroy_distributed,
    init_distributed,
    is_main_process,
    set_random_seed,
    setup_logger,
)

logger = logging.getLogger("train")


class ConfigError(ValueError):
    """A config file or key is wrong; the message names the file/key and the fix."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=str, default="", help="path to dataset")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument("--resume", type=str, default="", help="checkpoint directory (from which the training resumes)")
    parser.add_argument("--seed", type=int, default=-1, help="fixed seed when >= 0 (0 included)")
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="", help="path to config file")
    parser.add_argument("--dataset-config-file", type=str, default="", help="path to config file for dataset setup")
    parser.add_argument("--trainer", type=str, default="", help="name of trainer")
    parser.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    parser.add_argument("--head", type=str, default="", help="name of head")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    parser.add_argument("--load-epoch", type=int, help="load model weights at this epoch for evaluation")
    parser.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    for flag, (key, help_text) in _trainer_flags().items():  # flags that trainers declare (CLI_FLAGS)
        parser.add_argument(flag, type=str, default=None, dest=_flag_dest(flag), help=f"{help_text} (= {key})")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="modify config options using the command-line")
    return parser


def _trainer_flags() -> dict:
    """flag -> (config key, help) declared by the registered trainers."""
    from vlprompt import trainers  # noqa: F401  (registers every trainer)
    from dassl.engine import trainer_cli_flags

    return trainer_cli_flags()


def _set_string_key(cfg, key: str, value: str) -> None:
    """Set a string config key from a flag, verbatim (no literal-eval: a path stays a path)."""
    *parents, last = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    if not isinstance(node.get(last), str):
        raise ConfigError(f"flag for {key}: only string keys can be trainer flags")
    node[last] = value


def _flag_dest(flag: str) -> str:
    return "trainer_flag_" + flag.lstrip("-").replace("-", "_")


def _closest_key(cfg, full_key: str) -> str:
    from dassl.utils import get_most_similar_str_to_a_from_b

    def _flatten(node, prefix=""):
        for k, v in node.items():
            name = f"{prefix}{k}"
            if hasattr(v, "items"):
                yield from _flatten(v, name + ".")
            else:
                yield name

    return get_most_similar_str_to_a_from_b(full_key, list(_flatten(cfg)))


def _merge_file(cfg, path: str, what: str) -> None:
    if not osp.isfile(path):
        raise ConfigError(f"{what} not found: {path}")
    try:
        cfg.merge_from_file(path)
    except KeyError as err:
        key = str(err).strip("'\"").replace("Non-existent config key: ", "")
        raise ConfigError(f"unknown config key {key} in {path} (did you mean {_closest_key(cfg, key)}?)") from err
    except ValueError as err:
        raise ConfigError(f"bad value in {path}: {err}") from err


def _merge_opts(cfg, opts) -> None:
    if len(opts) % 2 != 0:
        raise ConfigError(f"config overrides must be KEY VALUE pairs, got an odd number: {opts}")
    for key in opts[0::2]:
        node = cfg
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node:
                raise ConfigError(f"unknown config key {key} on the command line (did you mean {_closest_key(cfg, key)}?)")
            node = node[part]
    try:
        cfg.merge_from_list(opts)
    except ValueError as err:
        raise ConfigError(f"bad command-line value: {err}") from err


def reset_cfg(cfg, args) -> None:
    """Apply the command-line flags that map onto config keys."""
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed is not None and args.seed >= 0:
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head
    for flag, (key, _) in _trainer_flags().items():
        value = getattr(args, _flag_dest(flag), None)
        if value is not None:
            _set_string_key(cfg, key, value)


def setup_cfg(args):
    """Build the frozen config in CoOp's order: dataset YAML, method YAML, flags, opts."""
    from vlprompt.trainers.config import get_cfg

    cfg = get_cfg()
    if args.dataset_config_file:
        _merge_file(cfg, args.dataset_config_file, "dataset config file")
    if args.config_file:
        _merge_file(cfg, args.config_file, "config file")
    reset_cfg(cfg, args)
    _merge_opts(cfg, args.opts or [])
    cfg.freeze()
    return cfg


def print_args(args, cfg) -> None:
    lines = ["***************", "** Arguments **", "***************"]
    for key in sorted(args.__dict__):
        lines.append(f"{key}: {args.__dict__[key]}")
    lines += ["************", "** Config **", "************", str(cfg)]
    logger.info("\n".join(lines))


def main(args) -> None:
    cfg = setup_cfg(args)
    init_distributed(use_cuda=cfg.USE_CUDA)  # torchrun: one process per GPU (or gloo on CPU)
    if is_main_process():
        setup_logger(cfg.OUTPUT_DIR)
    else:
        setup_logger(None, level=logging.WARNING)  # only rank 0 writes log.txt
    if cfg.SEED >= 0:
        logger.info(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True
    print_args(args, cfg)
    logger.info("Collecting env info ...")
    if os.environ.get("VLPROMPT_SKIP_ENV_INFO") != "1":
        logger.info(f"** System info **\n{collect_env_info()}\n")
    trainer = build_trainer(cfg)
    if args.eval_only:
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        trainer.test()
        return
    if not args.no_train:
        trainer.train()


# Errors that mean bad input (a missing folder or file, an unknown name or key, a bad value, an
# unreadable image): reported as one line. Anything else is a bug and keeps its traceback.
USER_ERRORS = (FileNotFoundError, KeyError, ValueError, UnreadableImageError)


def cli(argv=None) -> int:
    """Run ``main``; a user error (missing file, unknown name or key) is one line on stderr, exit 1."""
    args = build_parser().parse_args(argv)
    try:
        main(args)
        destroy_distributed()
    except USER_ERRORS as err:
        if os.environ.get("VLPROMPT_DEBUG") == "1":
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}  (set VLPROMPT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    finally:
        close_logger()  # a later run in the same process must not write into this run's log.txt
    return 0


if __name__ == "__main__":
    sys.exit(cli())

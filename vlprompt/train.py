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
import contextlib
import glob
import logging
import os
import os.path as osp
import subprocess
import sys

import torch
import yaml

from dassl.engine import build_trainer
from dassl.engine.run_guard import (ConfigChangedError, RunInterrupted, RunLock, RunLockedError, RunManifest,
                                    interruptible, position_text)
from dassl.utils import (
    UnreadableImageError,
    broadcast_object,
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
    parser.add_argument("--resume-anyway", action="store_true",
                        help="resume an output folder even though its run manifest records another config")
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
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"malformed YAML in {where}: {problem}; fix the file") from err
    except (TypeError, AttributeError) as err:
        raise ConfigError(f"{path} is not a YAML mapping of config keys ({err}); fix the file") from err
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
    with guarded_output_dir(cfg, args) as lock:
        run(args, cfg, lock)


def run(args, cfg, lock: RunLock) -> None:
    if is_main_process():
        setup_logger(cfg.OUTPUT_DIR)
    else:
        setup_logger(None, level=logging.WARNING)  # only rank 0 writes log.txt
    if lock.stale_owner:
        logger.info(f"Took over a stale lock of a run that ended without releasing it ({lock.stale_owner})")
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


@contextlib.contextmanager
def guarded_output_dir(cfg, args):
    """Rank 0 locks OUTPUT_DIR for the run and checks / writes its run manifest; every rank learns the outcome."""
    lock = RunLock(cfg.OUTPUT_DIR)
    error = None
    if is_main_process():
        try:
            lock.acquire()
            if not args.eval_only:
                check_and_write_manifest(cfg, args.resume_anyway)
        except (RunLockedError, ConfigChangedError) as err:
            lock.release()
            error = err
    error = broadcast_object(error)
    if error is not None:
        raise error
    try:
        yield lock
    finally:
        lock.release()


def check_and_write_manifest(cfg, resume_anyway: bool) -> None:
    """A folder holding checkpoints may only be resumed with the config that made them (see RunManifest)."""
    manifest = RunManifest(cfg.OUTPUT_DIR)
    resume_dir = cfg.RESUME or cfg.OUTPUT_DIR
    has_checkpoints = bool(glob.glob(osp.join(resume_dir, "*", "model.pth.tar-*")))
    if has_checkpoints:
        RunManifest(resume_dir).check(cfg, resume_anyway=resume_anyway)
        if manifest.read() is not None and not resume_anyway:
            return  # the folder's own record stays as its first run wrote it
    manifest.write(cfg, extra=run_provenance())


def run_provenance() -> dict:
    """Package version and, in a git checkout, the commit (with a flag for uncommitted changes)."""
    from vlprompt import __version__

    info = {"vlprompt_version": __version__, "torch_version": torch.__version__}
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    if osp.isdir(osp.join(root, ".git")):
        try:
            commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            info.update(git_commit=commit, git_dirty=bool(dirty))
        except (OSError, subprocess.SubprocessError):
            pass
    return info


# Errors that mean bad input (a missing folder or file, an unknown name or key, a bad value, an
# unreadable image): reported as one line. Anything else is a bug and keeps its traceback.
USER_ERRORS = (FileNotFoundError, KeyError, ValueError, UnreadableImageError, RunLockedError)


def cli(argv=None) -> int:
    """Run ``main``; a user error (missing file, unknown name or key) is one line on stderr, exit 1; Ctrl-C or
    SIGTERM stop cleanly with one line and exit 130 / 143 (the last complete checkpoint set stays)."""
    args = build_parser().parse_args(argv)
    try:
        with interruptible():
            main(args)
        destroy_distributed()
    except RunInterrupted as stop:
        if is_main_process():
            print(f"interrupted {position_text()}; re-run the same command to resume", file=sys.stderr)
        return stop.exit_code
    except USER_ERRORS as err:
        if os.environ.get("VLPROMPT_DEBUG") == "1":
            raise
        if is_main_process():
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"error: {message}  (set VLPROMPT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    finally:
        close_logger()  # a later run in the same process must not write into this run's log.txt
    return 0


if __name__ == "__main__":
    sys.exit(cli())

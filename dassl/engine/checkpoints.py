"""Checkpoint sets: every registered model of one epoch, written and read as one unit.

Dassl keeps one folder per model (``<output>/<model name>/model.pth.tar-<epoch>`` and a ``checkpoint`` pointer)
and writes them one after the other, so a run killed between two models' saves left models of different
epochs, and resuming took the epoch of whichever model was loaded last.  Here:

- ``write_checkpoint_set`` writes each model's file under a ``.pending`` name first, then a commit record
  (``<output>/checkpoint-commit.json``) naming them, then renames them into place and updates the pointers,
  then removes the record.  A kill at any instant leaves the old or the new complete set:
  ``recover_checkpoint_sets`` (run before resuming) finishes a recorded commit and drops uncommitted files.
- ``saved_epochs`` lists the epochs a model folder holds from the file names (the pointer is not trusted), and
  resuming takes the newest epoch that every model has.
- Checkpoints only ever hold tensors and primitives, and are read with ``weights_only=True``.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import os.path as osp
import re
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Set

import torch

from dassl.utils import load_checkpoint, mkdir_if_missing

from .run_guard import critical_section

__all__ = ["CheckpointError", "CheckpointMismatchError", "check_state_dict_fits", "write_checkpoint_set", "recover_checkpoint_sets", "saved_epochs",
           "common_epochs", "read_checkpoint_set", "epoch_file"]

logger = logging.getLogger("dassl.engine.trainer")

COMMIT_RECORD = "checkpoint-commit.json"
PENDING = ".pending"
POINTER = "checkpoint"
_EPOCH_FILE = re.compile(r"^model\.pth\.tar-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint folder cannot be resumed or loaded; the message names the file and the fix."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's keys or shapes do not fit the module it is loaded into."""


def check_state_dict_fits(module: torch.nn.Module, state_dict: Mapping[str, Any], where: str) -> None:
    """Raise one line naming missing, unexpected and mis-shaped keys (what strict loading would reject)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state_dict))
              if hasattr(state_dict[k], "shape") and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            f"{where} does not fit the model ({_few('missing', missing)}{_few('unexpected', unexpected)}"
            f"{_few('shape mismatch', shapes)}): it comes from another trainer, backbone or class count; check "
            "--model-dir / --output-dir and the config")


def _few(what: str, items: Sequence[str], limit: int = 3) -> str:
    if not items:
        return ""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{what} {list(items[:limit])}{more}; "


def epoch_file(epoch: int) -> str:
    """Dassl's file name of the checkpoint written after ``epoch`` epochs."""
    return f"model.pth.tar-{epoch}"


def _atomic_save(obj: Any, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_checkpoint_set(directory: str, states: Mapping[str, Dict[str, Any]], file_name: str,
                         update_pointer: bool = True) -> List[str]:
    """Write ``states[name]`` to ``<directory>/<name>/<file_name>`` for every model, as one unit.

    Returns the final paths.  ``update_pointer`` rewrites each model's ``checkpoint`` pointer (Dassl's file,
    kept for tools that read it).
    """
    with critical_section():  # Ctrl-C / SIGTERM wait until the set is complete
        finals = []
        for name, state in states.items():
            folder = osp.join(directory, name)
            mkdir_if_missing(folder)
            final = osp.join(folder, file_name)
            _atomic_save(state, final + PENDING)
            finals.append(final)
        record = osp.join(directory, COMMIT_RECORD)
        _atomic_write_text(record, json.dumps({"files": [osp.relpath(p, directory) for p in finals],
                                               "pointer": update_pointer}))
        _apply_commit(directory, finals, update_pointer)
        os.remove(record)
    for path in finals:
        logger.info(f"Checkpoint saved to {path}")
    return finals


def _apply_commit(directory: str, finals: Iterable[str], update_pointer: bool) -> None:
    for final in finals:
        if osp.exists(final + PENDING):
            os.replace(final + PENDING, final)
        if update_pointer:
            _atomic_write_text(osp.join(osp.dirname(final), POINTER), f"{osp.basename(final)}\n")


def recover_checkpoint_sets(directory: str, names: Sequence[str]) -> None:
    """Finish a checkpoint set whose commit was recorded; remove pending and temporary files left by a kill."""
    record = osp.join(directory, COMMIT_RECORD)
    if osp.isfile(record):
        try:
            with open(record) as f:
                content = json.load(f)
            finals = [osp.join(directory, rel) for rel in content["files"]]
        except (OSError, ValueError, KeyError, TypeError):
            finals = None  # a torn record: nothing was renamed yet (the record is written before any rename)
        if finals is not None:
            _apply_commit(directory, finals, bool(content.get("pointer", True)))
            logger.info(f"Completed an interrupted checkpoint save: {', '.join(finals)}")
        os.remove(record)
    for name in names:
        for leftover in glob.glob(osp.join(directory, name, f"*{PENDING}")) + glob.glob(
                osp.join(directory, name, "*.tmp[0-9]*")):
            os.remove(leftover)
            logger.info(f"Removed {leftover} (an incomplete save of an interrupted run)")


def saved_epochs(directory: str, name: str) -> Set[int]:
    """Epochs with a ``model.pth.tar-<epoch>`` file in ``<directory>/<name>``."""
    folder = osp.join(directory, name)
    if not osp.isdir(folder):
        return set()
    return {int(m.group(1)) for m in map(_EPOCH_FILE.match, os.listdir(folder)) if m}


def common_epochs(directory: str, names: Sequence[str]) -> List[int]:
    """Epochs saved for every model, newest first.

    Raises ``CheckpointError`` when some model has checkpoints but no epoch is shared by all of them.
    """
    per_model = {name: saved_epochs(directory, name) for name in names}
    if not any(per_model.values()):
        return []
    common = set.intersection(*per_model.values())
    if not common:
        summary = ", ".join(f"{name}: {_describe(epochs)}" for name, epochs in per_model.items())
        raise CheckpointError(f"checkpoints in {directory} share no epoch ({summary}); delete them or use another "
                              "--output-dir")
    newest = max(max(e) for e in per_model.values() if e)
    if max(common) < newest:
        summary = ", ".join(f"{name} up to {max(epochs)}" for name, epochs in per_model.items() if epochs)
        logger.warning(f"Models were saved up to different epochs ({summary}); resuming from epoch {max(common)}, "
                       "the newest epoch every model has")
    return sorted(common, reverse=True)


def _describe(epochs: Set[int]) -> str:
    return "none" if not epochs else f"epochs {min(epochs)}-{max(epochs)}" if len(epochs) > 1 else f"epoch {min(epochs)}"


def read_checkpoint_set(directory: str, names: Sequence[str], epochs: Sequence[int]) -> tuple[int, Dict[str, Any]]:
    """The newest of ``epochs`` whose files all load, and their contents; unreadable epochs are skipped (logged)."""
    problems = []
    for index, epoch in enumerate(epochs):
        try:
            return epoch, {name: _read_epoch_file(directory, name, epoch) for name in names}
        except CheckpointError as err:
            problems.append(str(err))
            fallback = f"falling back to epoch {epochs[index + 1]}" if index + 1 < len(epochs) else "no older epoch"
            logger.warning(f"{err}; {fallback}")
    raise CheckpointError(f"no readable checkpoint in {directory} ({problems[0]}); delete the broken files or use "
                          "another --output-dir")


def _read_epoch_file(directory: str, name: str, epoch: int) -> Dict[str, Any]:
    path = osp.join(directory, name, epoch_file(epoch))
    try:
        checkpoint = load_checkpoint(path)
    except (ValueError, RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path} is unreadable ({_first_line(err)})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a checkpoint of this engine (no state_dict)")
    if checkpoint.get("epoch") != epoch:
        raise CheckpointError(f"{path} says epoch {checkpoint.get('epoch')}, its name says {epoch}")
    return checkpoint


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__

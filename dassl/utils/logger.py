"""Log to stdout and ``OUTPUT_DIR/log.txt`` through the standard ``logging`` module.

Upstream Dassl replaces ``sys.stdout`` with a tee; we attach two handlers to the root logger
instead (bare message format, so ``log.txt`` reads exactly like Dassl's). An existing
``log.txt`` is never overwritten: the new log gets a timestamp suffix, as upstream.
"""
from __future__ import annotations

import logging
import os.path as osp
import sys
import time
from typing import Optional

from .tools import mkdir_if_missing

__all__ = ["setup_logger", "close_logger"]

_HANDLER_TAG = "_vlprompt_handler"


def _log_path(output: str) -> str:
    if output.endswith(".txt") or output.endswith(".log"):
        fpath = output
    else:
        fpath = osp.join(output, "log.txt")
    if osp.exists(fpath):
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
    return fpath


def close_logger() -> None:
    """Remove (and close) the handlers a previous ``setup_logger`` call installed."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_TAG, False):
            root.removeHandler(handler)
            handler.close()


def setup_logger(output: Optional[str] = None, level: int = logging.INFO) -> Optional[str]:
    """Send INFO+ records to stdout and, when ``output`` is given, to its ``log.txt``.

    Returns the log file path (None without ``output``). Calling it again replaces the handlers.
    """
    close_logger()
    root = logging.getLogger()
    root.setLevel(min(root.level or level, level) if root.level else level)
    formatter = logging.Formatter("%(message)s")
    handlers = [logging.StreamHandler(sys.stdout)]
    fpath = None
    if output:
        fpath = _log_path(output)
        mkdir_if_missing(osp.dirname(fpath) or ".")
        handlers.append(logging.FileHandler(fpath, mode="w", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.setLevel(level)
        setattr(handler, _HANDLER_TAG, True)
        root.addHandler(handler)
    return fpath

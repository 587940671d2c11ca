"""Progress on long loops: a tqdm bar in a terminal, a few plain log lines everywhere else.

A bar redraws itself with carriage returns; written to a file or a CI log that becomes hundreds of frames.
``progress`` therefore shows tqdm only when stderr is a terminal and otherwise logs one line every
``PLAIN_EVERY_SECONDS`` (and at the end of loops longer than that), through ``logging``.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

from tqdm import tqdm

__all__ = ["progress", "stderr_is_terminal"]

T = TypeVar("T")
logger = logging.getLogger(__name__)
PLAIN_EVERY_SECONDS = 30.0


def stderr_is_terminal() -> bool:
    """True when a progress bar would be seen by a person (stderr is a TTY)."""
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None)) and stream.isatty()


def progress(iterable: Iterable[T], desc: str, total: Optional[int] = None, enabled: bool = True) -> Iterator[T]:
    """Iterate ``iterable``, showing progress as described in the module docstring.

    Args:
        iterable: what to iterate.
        desc: a short label ("eval test", "encode val").
        total: number of items when ``len(iterable)`` is not defined.
        enabled: False shows nothing (e.g. on every rank but the first under torchrun).
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not enabled:
        yield from iterable
        return
    if stderr_is_terminal():
        yield from tqdm(iterable, desc=desc, total=total, leave=False)
        return
    yield from _plain_progress(iterable, desc, total)


def _plain_progress(iterable: Iterable[T], desc: str, total: Optional[int]) -> Iterator[T]:
    start = last = time.time()
    count = 0
    for item in iterable:
        yield item
        count += 1
        now = time.time()
        if now - last >= PLAIN_EVERY_SECONDS:
            last = now
            logger.info(f"{desc}: {count}{'/' + str(total) if total else ''} ({now - start:.0f} s)")
    if last != start:  # only loops that already printed a line report their end
        logger.info(f"{desc}: done, {count} in {time.time() - start:.0f} s")

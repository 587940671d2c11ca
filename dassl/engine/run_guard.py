"""What keeps an output folder trustworthy: clean interruption, one writer at a time, and a run manifest.

- ``interruptible()``: while it is active, SIGINT / SIGTERM raise ``RunInterrupted`` at once, except inside a
  ``critical_section()`` (a checkpoint being written), where the signal waits until the section ends.  The
  command line turns it into one line and exit code 130 / 143; the last complete checkpoint set is intact.
- ``RunLock``: a lock file in the output folder (owner PID, host, start time), held with ``flock`` for the
  run's lifetime, so a second live run into the same folder is refused; a lock whose owner died is stale and
  taken over.
- ``RunManifest``: the resolved config of the run that created the folder (``run_manifest.json``); resuming
  with a config that changes results stops with one line naming the differing keys.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import os.path as osp
import signal
import socket
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

__all__ = ["RunInterrupted", "interruptible", "critical_section", "set_position", "position_text", "RunLock",
           "RunLockedError", "RunManifest", "ConfigChangedError", "RESULT_NEUTRAL_KEYS"]

logger = logging.getLogger(__name__)

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM arrived (a ``BaseException``, like ``KeyboardInterrupt``, so no handler swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 128 + self.signum)


class _SignalState:
    depth = 0  # nesting of critical sections
    pending: Optional[int] = None  # a signal that arrived inside one
    epoch: Optional[int] = None  # where training is, for the interruption message
    batch: Optional[int] = None


_STATE = _SignalState()


def _handler(signum, frame) -> None:
    if _STATE.depth > 0:
        _STATE.pending = signum
        return
    raise RunInterrupted(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Install the SIGINT / SIGTERM handlers for the body (main thread only), restore the previous ones after."""
    signals = (signal.SIGINT, signal.SIGTERM)
    try:
        previous = {s: signal.signal(s, _handler) for s in signals}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _STATE.pending = None


@contextlib.contextmanager
def critical_section() -> Iterator[None]:
    """A stretch that a signal must not cut (writing a checkpoint set); the signal is acted on right after."""
    _STATE.depth += 1
    try:
        yield
    finally:
        _STATE.depth -= 1
        if _STATE.depth == 0 and _STATE.pending is not None:
            signum, _STATE.pending = _STATE.pending, None
            raise RunInterrupted(signum)


def set_position(epoch: Optional[int], batch: Optional[int]) -> None:
    """Record where training is (1-based epoch and batch) for the interruption message."""
    _STATE.epoch, _STATE.batch = epoch, batch


def position_text() -> str:
    if _STATE.epoch is None:
        return "before training started"
    return f"at epoch {_STATE.epoch}" + (f", batch {_STATE.batch}" if _STATE.batch is not None else "")


# --------------------------------------------------------------------------------------------- lock
class RunLockedError(RuntimeError):
    """Another live run holds the output folder."""


class RunLock:
    """``<folder>/run.lock``: held with ``flock`` while the run lives (the kernel drops it when the process dies)."""

    FILE = "run.lock"

    def __init__(self, folder: str) -> None:
        self.path = osp.join(folder, self.FILE)
        self._handle = None
        self.stale_owner = ""  # the owner line of a lock taken over from a run that died

    def acquire(self) -> None:
        os.makedirs(osp.dirname(self.path), exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise RunLockedError(f"another run is writing to {osp.dirname(self.path)} ({owner}); wait for it to "
                                 "finish or use another --output-dir") from None
        handle.seek(0)
        self.stale_owner = handle.read().strip()
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        handle.write(f"PID {os.getpid()} on {socket.gethostname()}, started {started}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            os.remove(self.path)
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# --------------------------------------------------------------------------------------------- manifest
# Keys that never change what a run computes: resuming with other values is fine.
RESULT_NEUTRAL_KEYS = (
    "OUTPUT_DIR", "RESUME", "VERBOSE", "USE_CUDA", "DATASET.ROOT", "DATALOADER.NUM_WORKERS",
    "DATALOADER.PERSISTENT_WORKERS", "DATALOADER.CACHE_IMAGES_MAX", "TRAIN.PRINT_FREQ", "TRAIN.CHECKPOINT_FREQ",
    "TEST.FEATURE_CACHE", "MODEL.BACKBONE.TRUST_LOCAL_ARCHIVE",
)


class ConfigChangedError(ValueError):
    """Resuming an output folder with a config that changes results."""


def flatten_cfg(node: Mapping, prefix: str = "") -> Dict[str, Any]:
    """``{"A.B.C": value}`` of a (yacs) config tree; lists and tuples become lists (JSON's view)."""
    flat: Dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            flat.update(flatten_cfg(value, name + "."))
        else:
            flat[name] = list(value) if isinstance(value, (list, tuple)) else value
    return flat


def _neutral(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESULT_NEUTRAL_KEYS)


class RunManifest:
    """``<folder>/run_manifest.json``: the config (and versions) of the run that started the folder."""

    FILE = "run_manifest.json"

    def __init__(self, folder: str) -> None:
        self.path = osp.join(folder, self.FILE)

    def read(self) -> Optional[Dict[str, Any]]:
        if not osp.isfile(self.path):
            return None
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            logger.warning(f"{self.path} is unreadable; writing a new one")
            return None

    def write(self, cfg, extra: Optional[Mapping[str, Any]] = None) -> None:
        content = {"config": flatten_cfg(cfg), "created": datetime.datetime.now().isoformat(timespec="seconds"),
                   **(extra or {})}
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(content, f, indent=1, sort_keys=True, default=str)
        os.replace(tmp, self.path)

    def differences(self, cfg) -> List[Tuple[str, Any, Any]]:
        """``(key, saved, now)`` for every result-changing key that differs from the saved config."""
        saved = (self.read() or {}).get("config", {})
        now = json.loads(json.dumps(flatten_cfg(cfg), default=str))
        keys = sorted(set(saved) | set(now))
        return [(k, saved.get(k, "<absent>"), now.get(k, "<absent>")) for k in keys
                if not _neutral(k) and saved.get(k, "<absent>") != now.get(k, "<absent>")]

    def check(self, cfg, resume_anyway: bool = False, limit: int = 4) -> None:
        """Raise ``ConfigChangedError`` naming the first differing keys (unless ``resume_anyway``)."""
        if self.read() is None:
            return
        diffs = self.differences(cfg)
        if not diffs:
            return
        shown = "; ".join(f"{k}: {saved!r} -> {now!r}" for k, saved, now in diffs[:limit])
        more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
        if resume_anyway:
            logger.warning(f"Resuming {osp.dirname(self.path)} with a changed config ({shown}{more}) "
                           "because of --resume-anyway")
            return
        raise ConfigChangedError(f"{osp.dirname(self.path)} holds a run with another config ({shown}{more}); use a "
                                 "new --output-dir, or --resume-anyway to continue it with this config")

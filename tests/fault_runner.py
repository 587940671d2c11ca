"""Run train.py in this process and SIGKILL it at a chosen point (the fault-injection tests' child process).

    python tests/fault_runner.py POINT -- <train.py arguments>

POINT is one of
- ``epoch:N``: right after the training passes of epoch N (1-based), before its validation and checkpoint;
- ``save:FILE``: inside the save of checkpoint FILE (e.g. ``model.pth.tar-2``): the first model's file of the
  set is on disk under its pending name, nothing is committed;
- ``rename:FILE``: half-way through committing the set FILE: the first model's file is in place, the others
  are not yet renamed.
The kill is a real SIGKILL: no Python cleanup runs, as when a job is killed by a scheduler or OOM.
"""
from __future__ import annotations

import os
import os.path as osp
import signal
import sys

sys.path.append(osp.dirname(osp.dirname(osp.abspath(__file__))))


def kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    kind, _, arg = point.partition(":")
    from dassl.engine import TrainerX, checkpoints

    if kind == "epoch":
        run_epoch = TrainerX.run_epoch

        def run_epoch_then_kill(self):
            run_epoch(self)
            if self.epoch + 1 == int(arg):
                kill_now()

        TrainerX.run_epoch = run_epoch_then_kill
    elif kind == "save":
        atomic_save = checkpoints._atomic_save

        def save_then_kill(obj, path):
            atomic_save(obj, path)
            if osp.basename(path) == arg + checkpoints.PENDING:
                kill_now()

        checkpoints._atomic_save = save_then_kill
    elif kind == "rename":
        apply_commit = checkpoints._apply_commit

        def commit_half_then_kill(directory, finals, update_pointer):
            finals = list(finals)
            if osp.basename(finals[0]) == arg:
                apply_commit(directory, finals[:1], update_pointer)
                kill_now()
            apply_commit(directory, finals, update_pointer)

        checkpoints._apply_commit = commit_half_then_kill
    else:
        raise SystemExit(f"unknown fault point {point!r}")


if __name__ == "__main__":
    point, separator, *train_args = sys.argv[1:]
    assert separator == "--", "usage: fault_runner.py POINT -- <train.py arguments>"
    install(point)
    from vlprompt import train

    sys.exit(train.cli(train_args))

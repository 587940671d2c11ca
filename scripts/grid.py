"""Run an experiment grid (trainers × configs × datasets × shots × seeds) locally or on Slurm.

    python scripts/grid.py grid.yaml                   # run what is not finished, then print the table
    python scripts/grid.py grid.yaml --dry-run         # list the runs and their state

Each run is ``train.py`` into the same output folder a per-method shell script would use
(default ``{output_root}/{dataset}/{trainer}/{config}_{shots}shots/seed{seed}``). A run whose
``log.txt`` has a result after ``Finish training`` is skipped; a run that was killed is started
again into its folder and resumes from its last checkpoint. Jobs go through submitit: its local
executor (``executor: local``, ``workers`` at a time, one GPU each when ``gpus`` are listed) or
Slurm job arrays (``executor: slurm``; preempted jobs are requeued and resume). submitit comes with the
optional ``cluster`` extra (``pip install "vlprompt[cluster]"``); without it ``--dry-run`` and the result
table of a finished grid still work, and a grid with runs left stops with one line naming the extra.

Example grid.yaml::

    root: ./data
    output_root: output
    datasets: [dtd, eurosat]          # configs/datasets/<name>.yaml
    shots: [1, 2, 4, 8, 16]
    seeds: [1, 2, 3]
    runs:
      - trainer: CoOp
        configs: [rn50_ep50]           # configs/trainers/<trainer>/<name>.yaml
        opts: {TRAINER.COOP.N_CTX: 16, TRAINER.COOP.CSC: False}
        layout: "{dataset}/{trainer}/{config}_{shots}shots/nctx16_cscFalse_ctpend/seed{seed}"
    opts: {}                            # extra KEY: VALUE for every run
    executor: local                     # local | slurm
    workers: 2
    gpus: []                            # local: CUDA ids, one per worker
    slurm: {partition: gpu, gpus_per_node: 1, cpus_per_task: 8, mem_gb: 32, timeout_min: 720, array_parallelism: 32}
"""
from __future__ import annotations

import argparse
import logging
import os
import os.path as osp
import queue
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.append(REPO_ROOT)

from vlprompt.extras import MissingExtraError, require  # noqa: E402

logger = logging.getLogger("grid")


def _pickle_jobs_by_value() -> None:
    """Ship this script's job class to submitit's worker processes by value (scripts/ is no package)."""
    try:
        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    except (ImportError, KeyError, ValueError):
        pass  # submitit depends on cloudpickle, so this is only reached when no job can be submitted anyway


DEFAULT_LAYOUT = "{dataset}/{trainer}/{config}_{shots}shots/seed{seed}"
GRID_KEYS = {"root", "output_root", "datasets", "shots", "seeds", "runs", "opts", "executor", "workers", "gpus",
             "slurm", "subsample"}
RUN_KEYS = {"trainer", "configs", "opts", "layout"}
SLURM_KEYS = {"partition", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "array_parallelism", "account",
              "qos", "constraint", "setup"}


@dataclass
class Run:
    """One ``train.py`` invocation of the grid."""

    trainer: str
    config: str
    dataset: str
    shots: int
    seed: int
    output_dir: str
    argv: List[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.trainer}/{self.config}/{self.shots}shots/seed{self.seed}"


class GridError(ValueError):
    """A grid file is wrong; the message names the key and the file."""


def import_submitit():
    """The ``submitit`` module, which runs the jobs; it comes with the optional ``cluster`` extra."""
    return require("submitit", "cluster", "scripts/grid.py (running jobs)")


def _check_keys(section: Dict[str, Any], allowed: set, where: str, path: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise GridError(f"unknown key(s) {unknown} in {where} of {path}; allowed: {sorted(allowed)}")


def load_grid(path: str) -> Dict[str, Any]:
    if not osp.isfile(path):
        raise GridError(f"grid file not found: {path}")
    with open(path) as f:
        grid = yaml.safe_load(f) or {}
    _check_keys(grid, GRID_KEYS, "the top level", path)
    for i, run in enumerate(grid.get("runs", [])):
        _check_keys(run, RUN_KEYS, f"runs[{i}]", path)
    _check_keys(grid.get("slurm") or {}, SLURM_KEYS, "slurm", path)
    for key in ("datasets", "seeds", "runs"):
        if not grid.get(key):
            raise GridError(f"{path}: '{key}' must list at least one entry")
    return grid


def _opts_list(opts: Optional[Dict[str, Any]]) -> List[str]:
    out = []
    for key, value in (opts or {}).items():
        out += [str(key), str(value)]
    return out


def expand_grid(grid: Dict[str, Any]) -> List[Run]:
    """Every run of the grid, in a stable order (dataset, trainer, config, shots, seed)."""
    root = grid.get("root", "./data")
    output_root = grid.get("output_root", "output")
    runs = []
    for dataset in grid["datasets"]:
        dataset_cfg = osp.join(REPO_ROOT, "configs", "datasets", f"{dataset}.yaml")
        for spec in grid["runs"]:
            trainer = spec["trainer"]
            for config in spec["configs"]:
                config_file = osp.join(REPO_ROOT, "configs", "trainers", trainer, f"{config}.yaml")
                for shots in grid.get("shots", [-1]):
                    for seed in grid["seeds"]:
                        rel = (spec.get("layout") or DEFAULT_LAYOUT).format(
                            dataset=dataset, trainer=trainer, config=config, shots=shots, seed=seed)
                        output_dir = osp.join(output_root, rel)
                        argv = ["--root", root, "--seed", str(seed), "--trainer", trainer,
                                "--dataset-config-file", dataset_cfg, "--config-file", config_file,
                                "--output-dir", output_dir, "DATASET.NUM_SHOTS", str(shots)]
                        if grid.get("subsample"):
                            argv += ["DATASET.SUBSAMPLE_CLASSES", str(grid["subsample"])]
                        argv += _opts_list(grid.get("opts")) + _opts_list(spec.get("opts"))
                        runs.append(Run(trainer, config, dataset, shots, seed, output_dir, argv))
    return runs


def _log_finished(path: str) -> bool:
    finished = False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if line in ("Finish training", "Finished training"):
                finished = True
            elif finished and line == "=> result":
                return True
    return False


def is_finished(output_dir: str) -> bool:
    """True when a log of the run (``log.txt`` or a resumed ``log.txt-<time>``) has a final result."""
    if not osp.isdir(output_dir):
        return False
    from vlprompt import parse_test_res

    return any(_log_finished(path) for path in parse_test_res.run_logs(output_dir))


class TrainJob:
    """A picklable callable that runs ``train.py`` in the job's process (submitit ``Checkpointable``).

    On preemption submitit calls ``checkpoint``, which resubmits the same run; the trainer then
    resumes from the checkpoints in its output folder.
    """

    def __init__(self, argv: List[str], cuda_device: Optional[str] = None):
        self.argv = argv
        self.cuda_device = cuda_device

    def __call__(self) -> int:
        if self.cuda_device is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = self.cuda_device
        os.environ.setdefault("VLPROMPT_SKIP_ENV_INFO", "1")
        sys.path.append(REPO_ROOT)
        from vlprompt import train

        code = train.cli(self.argv)
        if code != 0:
            raise RuntimeError(f"train.py exited with {code}: {' '.join(self.argv)}")
        return code

    def checkpoint(self, *args, **kwargs):
        submitit = import_submitit()
        return submitit.helpers.DelayedSubmission(TrainJob(self.argv, self.cuda_device))


def slurm_parameters(grid: Dict[str, Any]) -> Dict[str, Any]:
    """submitit ``update_parameters`` arguments for a Slurm job array from the grid's ``slurm`` block."""
    s = grid.get("slurm") or {}
    params: Dict[str, Any] = {
        "name": "vlprompt-grid",
        "timeout_min": int(s.get("timeout_min", 720)),
        "gpus_per_node": int(s.get("gpus_per_node", 1)),
        "cpus_per_task": int(s.get("cpus_per_task", 8)),
        "mem_gb": int(s.get("mem_gb", 32)),
        "tasks_per_node": 1,
        "nodes": 1,
        "slurm_array_parallelism": int(s.get("array_parallelism", 32)),
        "slurm_signal_delay_s": 120,  # time to write the last checkpoint before preemption
    }
    for key in ("partition", "account", "qos", "constraint", "setup"):
        if s.get(key):
            params[f"slurm_{key}"] = s[key]
    return params


def make_executor(grid: Dict[str, Any], log_folder: str):
    submitit = import_submitit()
    kind = grid.get("executor", "local")
    if kind == "slurm":
        executor = submitit.AutoExecutor(folder=log_folder, cluster="slurm")
        executor.update_parameters(**slurm_parameters(grid))
        return executor
    if kind == "local":
        executor = submitit.LocalExecutor(folder=log_folder)
        executor.update_parameters(timeout_min=int((grid.get("slurm") or {}).get("timeout_min", 720)))
        return executor
    raise GridError(f"executor={kind!r}; choose one of local, slurm")


def run_local(runs: List[Run], grid: Dict[str, Any], log_folder: str) -> List[str]:
    """Run ``workers`` jobs at a time through submitit's local executor; return the failed run names."""
    _pickle_jobs_by_value()
    executor = make_executor(grid, log_folder)
    gpus = [str(g) for g in grid.get("gpus") or []]
    workers = max(1, int(grid.get("workers", len(gpus) or 1)))
    slots: "queue.Queue[Optional[str]]" = queue.Queue()
    for i in range(workers):
        slots.put(gpus[i % len(gpus)] if gpus else None)

    def _one(run: Run) -> Optional[str]:
        device = slots.get()
        try:
            logger.info(f"start {run.name} -> {run.output_dir}")
            executor.submit(TrainJob(run.argv, device)).result()
            return None
        except Exception as err:  # report and keep the rest of the grid going
            logger.error(f"failed {run.name}: {err}")
            return run.name
        finally:
            slots.put(device)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [name for name in pool.map(_one, runs) if name]


def run_slurm(runs: List[Run], grid: Dict[str, Any], log_folder: str) -> List[str]:
    _pickle_jobs_by_value()
    executor = make_executor(grid, log_folder)
    jobs = executor.submit_array([TrainJob(run.argv) for run in runs]) if hasattr(executor, "submit_array") else None
    if jobs is None:
        with executor.batch():
            jobs = [executor.submit(TrainJob(run.argv)) for run in runs]
    logger.info(f"submitted {len(jobs)} jobs (array {jobs[0].job_id.split('_')[0] if jobs else '-'})")
    failed = []
    for run, job in zip(runs, jobs):
        try:
            job.result()
        except Exception as err:
            logger.error(f"failed {run.name}: {err}")
            failed.append(run.name)
    return failed


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", help="grid YAML file")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and whether they are finished")
    parser.add_argument("--keyword", default="accuracy", help="metric for the final table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        grid = load_grid(args.grid)
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    runs = expand_grid(grid)
    todo = [r for r in runs if not is_finished(r.output_dir)]
    if todo and not args.dry_run:
        try:  # before anything is started or logged: a missing extra is one line, not a traceback per job
            import_submitit()
        except MissingExtraError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    logger.info(f"{len(runs)} runs in the grid, {len(runs) - len(todo)} finished, {len(todo)} to run")
    if args.dry_run:
        for r in runs:
            print(f"{'done' if r not in todo else 'todo'}  {r.name}  {r.output_dir}")
        return 0
    output_root = grid.get("output_root", "output")
    log_folder = osp.join(output_root, "_grid_logs")
    failed = []
    if todo:
        failed = (run_slurm if grid.get("executor") == "slurm" else run_local)(todo, grid, log_folder)
    from vlprompt import parse_test_res

    roots = sorted({osp.join(output_root, d) for d in grid["datasets"] if osp.isdir(osp.join(output_root, d))})
    for root in roots:
        parse_test_res.print_table(root, args.keyword)
    if failed:
        print(f"error: {len(failed)} run(s) failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

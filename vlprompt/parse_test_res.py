"""Summarise test results over seed folders (CoOp's ``parse_test_res.py``) or a whole output tree.

    python parse_test_res.py output/dtd/CoOp/rn50_16shots/nctx16_cscFalse_ctpend      # mean ± std over seeds
    python parse_test_res.py output/base2new/test_new/dtd/... --test-log               # eval-only logs
    python parse_test_res.py output/ --multi-exp                                        # several experiments
    python parse_test_res.py output/ --table [--format csv]                            # everything, one table

A seed folder holds ``log.txt``; its metric is the last ``* <keyword>: X%`` line after the end
marker (``Finish training`` or the older ``Finished training``; ``=> result`` with ``--test-log``).
A run that was resumed logs to ``log.txt-<timestamp>``: the newest log with a result counts.
``--table`` reads the config dump of every ``log.txt`` below the folder and groups runs by
dataset × trainer × config × shots × subsample; base/new pairs also get their harmonic mean.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import re
import sys
from collections import OrderedDict, defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np

END_MARKERS_TRAIN = ("Finish training", "Finished training")
END_MARKERS_TEST = ("=> result",)


def metric_regex(keyword: str) -> re.Pattern:
    return re.compile(rf"\* {re.escape(keyword)}: ([\.\deE+-]+)%")


def parse_log(fpath: str, keyword: str, end_markers) -> Optional[float]:
    """The last ``* keyword: X%`` value after the first end marker in ``fpath`` (None if absent)."""
    regex = metric_regex(keyword)
    value, good_to_go = None, False
    with open(fpath, "r", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line in end_markers:
                good_to_go = True
            if good_to_go:
                match = regex.search(line)
                if match:
                    value = float(match.group(1))
    return value


def run_logs(run_dir: str) -> List[str]:
    """``log.txt`` then the ``log.txt-<timestamp>`` files of later (resumed) runs, oldest first."""
    names = sorted(n for n in os.listdir(run_dir) if n.startswith("log.txt-"))
    base = [osp.join(run_dir, "log.txt")] if osp.isfile(osp.join(run_dir, "log.txt")) else []
    return base + [osp.join(run_dir, n) for n in names]


def parse_run(run_dir: str, keyword: str, end_markers) -> Tuple[Optional[float], Optional[str]]:
    """The metric of the newest log in ``run_dir`` that has one (a resumed run writes a new log)."""
    for fpath in reversed(run_logs(run_dir)):
        value = parse_log(fpath, keyword, end_markers)
        if value is not None:
            return value, fpath
    return None, None


def compute_ci95(res) -> float:
    return 1.96 * np.std(res) / np.sqrt(len(res))


def parse_function(*metrics, directory: str = "", args=None, end_markers=END_MARKERS_TRAIN) -> Dict[str, float]:
    """Print per-seed values and ``mean% +- spread%`` for each metric of the seed folders in ``directory``."""
    print(f"Parsing files in {directory}")
    subdirs = sorted(d for d in os.listdir(directory) if not d.startswith("."))
    outputs = []
    for subdir in subdirs:
        run_dir = osp.join(directory, subdir)
        if not osp.isfile(osp.join(run_dir, "log.txt")):
            raise FileNotFoundError(f"{run_dir}/log.txt is missing (every sub-folder of {directory} must be a run folder)")
        output = OrderedDict(file=osp.join(run_dir, "log.txt"))
        for metric in metrics:
            value, fpath = parse_run(run_dir, metric["keyword"], end_markers)
            if value is not None:
                output["file"] = fpath
                output[metric["name"]] = value
        if len(output) > 1:
            outputs.append(output)
    if not outputs:
        raise ValueError(f"Nothing found in {directory}")
    metrics_results = defaultdict(list)
    for output in outputs:
        msg = ""
        for key, value in output.items():
            msg += f"{key}: {value:.2f}%. " if isinstance(value, float) else f"{key}: {value}. "
            if key != "file":
                metrics_results[key].append(value)
        print(msg)
    output_results = OrderedDict()
    print("===")
    print(f"Summary of directory: {directory}")
    for key, values in metrics_results.items():
        avg = float(np.mean(values))
        spread = compute_ci95(values) if args is not None and args.ci95 else float(np.std(values))
        print(f"* {key}: {avg:.2f}% +- {spread:.2f}%")
        output_results[key] = avg
    print("===")
    return output_results


# ----------------------------------------------------------------------------- --table


_CFG_LINE = re.compile(r"^( *)([A-Za-z0-9_]+):(?: (.*))?$")


def read_run_config(fpath: str) -> Dict[str, str]:
    """Flattened ``KEY.SUB: value`` pairs of the config dump and the argument block of a log.txt."""
    flat: Dict[str, str] = {}
    stack: List[Tuple[int, str]] = []
    section = None
    with open(fpath, "r", errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if line == "** Arguments **":
                section = "args"
                continue
            if line == "** Config **":
                section = "cfg"
                stack = []
                continue
            if line.startswith("Collecting env info") or line.startswith("Loading trainer"):
                if section == "cfg":
                    break
                continue
            if section == "args" and ": " in line and not line.startswith("*"):
                key, value = line.split(": ", 1)
                flat[f"args.{key}"] = value
            elif section == "cfg":
                match = _CFG_LINE.match(line)
                if not match:
                    continue
                indent, key, value = len(match.group(1)), match.group(2), match.group(3)
                while stack and stack[-1][0] >= indent:
                    stack.pop()
                if value is None:
                    stack.append((indent, key))
                else:
                    flat[".".join([k for _, k in stack] + [key])] = value.strip()
    return flat


def _run_key(fpath: str, root: str) -> Tuple[str, str, str, str, str, str]:
    cfg = read_run_config(fpath)
    dataset = cfg.get("DATASET.NAME", "?")
    trainer = cfg.get("TRAINER.NAME", "?")
    config_file = cfg.get("args.config_file", "")
    config = osp.splitext(osp.basename(config_file))[0] if config_file else "-"
    shots = cfg.get("DATASET.NUM_SHOTS", "-")
    subsample = cfg.get("DATASET.SUBSAMPLE_CLASSES", "all")
    # Runs that differ in anything else (e.g. n_ctx) live in different experiment folders.
    exp_dir = osp.relpath(osp.dirname(osp.dirname(fpath)), root)
    return dataset, trainer, config, shots, subsample, exp_dir


def collect_table(root: str, keyword: str) -> List[dict]:
    """One row per experiment folder (runs grouped over their seed folders)."""
    groups: Dict[tuple, List[float]] = defaultdict(list)
    for dirpath, _, filenames in os.walk(root):
        if "log.txt" not in filenames:
            continue
        value, fpath = parse_run(dirpath, keyword, END_MARKERS_TRAIN + END_MARKERS_TEST)
        if value is not None:
            groups[_run_key(fpath, root)].append(value)
    rows = []
    for (dataset, trainer, config, shots, subsample, exp_dir), values in sorted(groups.items()):
        rows.append({"dataset": dataset, "trainer": trainer, "config": config, "shots": shots, "classes": subsample,
                     "mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values), "folder": exp_dir})
    return rows


def harmonic_mean_rows(rows: List[dict]) -> List[dict]:
    """For each (dataset, trainer, config, shots) with both a base and a new row: H = 2BN/(B+N)."""
    by_key = defaultdict(dict)
    for row in rows:
        by_key[(row["dataset"], row["trainer"], row["config"], row["shots"])][row["classes"]] = row
    out = []
    for (dataset, trainer, config, shots), d in sorted(by_key.items()):
        if "base" in d and "new" in d:
            b, n = d["base"]["mean"], d["new"]["mean"]
            out.append({"dataset": dataset, "trainer": trainer, "config": config, "shots": shots,
                        "base": b, "new": n, "H": 2 * b * n / (b + n) if b + n > 0 else 0.0,
                        "n": min(d["base"]["n"], d["new"]["n"])})
    return out


def print_table(root: str, keyword: str, fmt: str = "github") -> None:
    from tabulate import tabulate

    rows = collect_table(root, keyword)
    if not rows:
        raise ValueError(f"Nothing found in {root}")
    if fmt == "csv":
        print("dataset,trainer,config,shots,classes,mean,std,n,folder")
        for r in rows:
            print(f"{r['dataset']},{r['trainer']},{r['config']},{r['shots']},{r['classes']},"
                  f"{r['mean']:.2f},{r['std']:.2f},{r['n']},{r['folder']}")
    else:
        table = [[r["dataset"], r["trainer"], r["config"], r["shots"], r["classes"],
                  f"{r['mean']:.2f} ± {r['std']:.2f}", r["n"], r["folder"]] for r in rows]
        headers = ["dataset", "trainer", "config", "shots", "classes", keyword, "seeds", "folder"]
        print(tabulate(table, headers=headers, tablefmt=fmt))
    hm = harmonic_mean_rows(rows)
    if hm:
        print()
        if fmt == "csv":
            print("dataset,trainer,config,shots,base,new,H,seeds")
            for r in hm:
                print(f"{r['dataset']},{r['trainer']},{r['config']},{r['shots']},{r['base']:.2f},{r['new']:.2f},{r['H']:.2f},{r['n']}")
        else:
            table = [[r["dataset"], r["trainer"], r["config"], r["shots"], f"{r['base']:.2f}", f"{r['new']:.2f}",
                      f"{r['H']:.2f}", r["n"]] for r in hm]
            print(tabulate(table, headers=["dataset", "trainer", "config", "shots", "base", "new", "H", "seeds"],
                           tablefmt=fmt))


def main(args) -> None:
    keyword = args.keyword
    metric = {"name": keyword, "keyword": keyword}
    if args.table:
        print_table(args.directory, keyword, "csv" if args.format == "csv" else "github")
        return
    end_markers = END_MARKERS_TEST if args.test_log else END_MARKERS_TRAIN
    if args.multi_exp:
        final_results = defaultdict(list)
        for directory in sorted(d for d in os.listdir(args.directory) if not d.startswith(".")):
            directory = osp.join(args.directory, directory)
            results = parse_function(metric, directory=directory, args=args, end_markers=end_markers)
            for key, value in results.items():
                final_results[key].append(value)
        print("Average performance")
        for key, values in final_results.items():
            print(f"* {key}: {np.mean(values):.2f}%")
    else:
        parse_function(metric, directory=args.directory, args=args, end_markers=end_markers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=str, help="path to directory")
    parser.add_argument("--ci95", action="store_true", help=r"compute 95\% confidence interval")
    parser.add_argument("--test-log", action="store_true", help="parse test-only logs")
    parser.add_argument("--multi-exp", action="store_true", help="parse multiple experiments")
    parser.add_argument("--keyword", default="accuracy", type=str, help="which keyword to extract")
    parser.add_argument("--table", action="store_true", help="one table of every run found under the directory")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="--table output format")
    return parser


def cli(argv=None) -> int:
    """``parse_test_res.py`` / ``vlprompt-parse``: a bad folder or an empty result is one line on stderr, exit 1."""
    arguments = build_parser().parse_args(argv)
    if not osp.isdir(arguments.directory):
        print(f"error: directory not found: {arguments.directory}", file=sys.stderr)
        return 1
    try:
        main(arguments)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())

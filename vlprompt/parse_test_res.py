"""Summarise test results over seed folders (CoOp's ``parse_test_res.py``) or a whole output tree.

    python parse_test_res.py output/dtd/CoOp/rn50_16shots/nctx16_cscFalse_ctpend      # mean ± std over seeds
    python parse_test_res.py output/base2new/test_new/dtd/... --test-log               # eval-only logs
    python parse_test_res.py output/ --multi-exp                                        # several experiments
    python parse_test_res.py output/ --table [--format markdown|latex|csv]             # everything, one table
    python parse_test_res.py output/ --plot figures/results.pdf                        # figures (needs matplotlib)

A seed folder holds ``log.txt``; its metric is the last ``* <keyword>: X%`` line after the end
marker (``Finish training`` or the older ``Finished training``; ``=> result`` with ``--test-log``).
A run that was resumed logs to ``log.txt-<timestamp>``: the newest log with a result counts.
A seed folder without a result (still running, crashed, not started) is listed as skipped and
counted in ``n/m`` seeds; ``--strict`` turns any such folder into an error.
``--table`` and ``--plot`` read the config dump of every ``log.txt`` below the folder (the end marker
follows the run's ``--eval-only`` flag) and group runs by dataset x backbone x trainer x config x shots x
classes x folder; base/new pairs also get their harmonic mean H.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from collections import OrderedDict, defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .results_plots import PlotDependencyError, check_plot_path, require_matplotlib, write_plots
from .results_runs import (  # noqa: F401  (re-exported: scripts and tests import them from here)
    END_MARKERS_TEST, END_MARKERS_TRAIN, collect_rows, harmonic_mean_rows, metric_regex, parse_log, parse_run,
    read_run_config, run_logs,
)
from .results_tables import FORMATS, format_tables, skipped_notes


__all__ = [
    "END_MARKERS_TEST", "END_MARKERS_TRAIN", "IncompleteRunsError", "build_parser", "cli", "collect_rows",
    "collect_table", "compute_ci95", "harmonic_mean_rows", "main", "metric_regex", "parse_function", "parse_log",
    "parse_run", "plot_results", "print_table", "read_run_config", "run_logs",
]


class IncompleteRunsError(ValueError):
    """``--strict`` and a seed folder without a result."""


def compute_ci95(res) -> float:
    return 1.96 * np.std(res) / np.sqrt(len(res))


def incomplete_message(folders: Sequence[str], where: str) -> str:
    return (f"incomplete runs under {where} (--strict): {', '.join(folders)} have no result; "
            "wait for them, rerun them or remove their folders")


# ----------------------------------------------------------------------------- one experiment (seed folders)


def seed_folders(directory: str) -> Tuple[List[str], List[str]]:
    """(sub-folders with a log, sub-folders without one); an error when none has a log."""
    subdirs = sorted(d for d in os.listdir(directory)
                     if not d.startswith(".") and osp.isdir(osp.join(directory, d)))
    with_log = [d for d in subdirs if run_logs(osp.join(directory, d))]
    if not with_log:
        raise FileNotFoundError(f"no seed folder with a log.txt in {directory}; point at the folder that holds "
                                "seed1/, seed2/, ... (or use --table for a whole output tree)")
    return with_log, [d for d in subdirs if d not in with_log]


def read_seed(run_dir: str, metrics, end_markers) -> "OrderedDict[str, object]":
    """``file`` and the value of each metric found in the newest log of ``run_dir`` that has it."""
    output: "OrderedDict[str, object]" = OrderedDict(file=osp.join(run_dir, "log.txt"))
    for metric in metrics:
        value, fpath = parse_run(run_dir, metric["keyword"], end_markers)
        if value is not None:
            output["file"] = fpath
            output[metric["name"]] = value
    return output


def parse_function(*metrics, directory: str = "", args=None, end_markers=END_MARKERS_TRAIN) -> Dict[str, float]:
    """Print per-seed values, the skipped seed folders and ``mean% +- spread%`` of each metric in ``directory``."""
    print(f"Parsing files in {directory}")
    with_log, without_log = seed_folders(directory)
    outputs, skipped = [], [(d, "no log.txt") for d in without_log]
    for subdir in with_log:
        output = read_seed(osp.join(directory, subdir), metrics, end_markers)
        if len(output) > 1:
            outputs.append(output)
        else:
            skipped.append((subdir, f"no result after {' / '.join(end_markers)} (still running or crashed)"))
    skipped.sort()
    if skipped and getattr(args, "strict", False):
        raise IncompleteRunsError(incomplete_message([d for d, _ in skipped], directory))
    if not outputs:
        raise ValueError(f"Nothing found in {directory}: none of its {len(skipped)} seed folders has a result yet")
    metrics_results = defaultdict(list)
    for output in outputs:
        msg = ""
        for key, value in output.items():
            msg += f"{key}: {value:.2f}%. " if isinstance(value, float) else f"{key}: {value}. "
            if key != "file":
                metrics_results[key].append(value)
        print(msg)
    for folder, why in skipped:
        print(f"skipped: {folder} ({why})")
    output_results = OrderedDict()
    print("===")
    print(f"Summary of directory: {directory}")
    for key, values in metrics_results.items():
        avg = float(np.mean(values))
        spread = compute_ci95(values) if args is not None and args.ci95 else float(np.std(values))
        print(f"* {key}: {avg:.2f}% +- {spread:.2f}%")
        output_results[key] = avg
    total = len(outputs) + len(skipped)
    names = f" (skipped: {', '.join(d for d, _ in skipped)})" if skipped else ""
    print(f"seeds: {len(outputs)}/{total}{names}")
    print("===")
    return output_results


# ----------------------------------------------------------------------------- a whole tree: tables and plots


def collect_table(root: str, keyword: str) -> List[dict]:
    """One row per experiment folder with at least one finished seed (see ``results_runs.collect_rows``)."""
    return [r for r in collect_rows(root, keyword) if r["mean"] is not None]


def check_complete(rows: Sequence[dict], root: str) -> None:
    skipped = [folder for r in rows for folder, _ in r.get("skipped", [])]
    if skipped:
        raise IncompleteRunsError(incomplete_message(skipped, root))


def collect_or_fail(root: str, keyword: str, strict: bool = False) -> List[dict]:
    rows = collect_rows(root, keyword)
    if not rows:
        raise ValueError(f"Nothing found in {root}: no log.txt below it")
    if strict:
        check_complete(rows, root)
    return rows


def print_table(root: str, keyword: str, fmt: str = "markdown", strict: bool = False) -> None:
    """Every experiment below ``root`` as one table (``fmt``: markdown (alias github), latex or csv)."""
    fmt = "markdown" if fmt == "github" else fmt
    rows = collect_or_fail(root, keyword, strict)
    print(format_tables(rows, harmonic_mean_rows(rows), keyword, fmt))


def plot_results(root: str, keyword: str, path: str, strict: bool = False, show_table: Optional[str] = None) -> None:
    """Write the figures of every experiment below ``root``; print the table too when ``show_table`` is a format."""
    rows = collect_or_fail(root, keyword, strict)
    hm_rows = harmonic_mean_rows(rows)
    if show_table:
        print(format_tables(rows, hm_rows, keyword, show_table))
    elif skipped_notes(rows):
        print("\n".join(skipped_notes(rows)))
    for file in write_plots(rows, hm_rows, keyword, path):
        print(f"wrote {file}")


def summarise_tree(args) -> None:
    """``--table`` / ``--format`` / ``--plot``: every run below the directory."""
    strict, plot, fmt = getattr(args, "strict", False), getattr(args, "plot", None), getattr(args, "format", None)
    wants_table = args.table or fmt is not None
    if plot:
        check_plot_path(plot)
        require_matplotlib()  # before reading any log: a missing extra is the only thing to fix
        table_format = (fmt or "markdown") if wants_table else None
        plot_results(args.directory, args.keyword, plot, strict, show_table=table_format)
    else:
        print_table(args.directory, args.keyword, fmt or "markdown", strict)


def summarise_experiments(args) -> None:
    """CoOp's modes: the seed folders of one experiment, or (``--multi-exp``) of each sub-folder."""
    metric = {"name": args.keyword, "keyword": args.keyword}
    end_markers = END_MARKERS_TEST if args.test_log else END_MARKERS_TRAIN
    if not args.multi_exp:
        parse_function(metric, directory=args.directory, args=args, end_markers=end_markers)
        return
    final_results = defaultdict(list)
    for name in sorted(d for d in os.listdir(args.directory) if not d.startswith(".")):
        directory = osp.join(args.directory, name)
        if not osp.isdir(directory):  # a notes file beside the experiments
            continue
        results = parse_function(metric, directory=directory, args=args, end_markers=end_markers)
        for key, value in results.items():
            final_results[key].append(value)
    print("Average performance")
    for key, values in final_results.items():
        print(f"* {key}: {np.mean(values):.2f}%")


def main(args) -> None:
    if args.table or getattr(args, "format", None) or getattr(args, "plot", None):
        summarise_tree(args)
    else:
        summarise_experiments(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=str, help="path to directory")
    parser.add_argument("--ci95", action="store_true", help=r"compute 95%% confidence interval")
    parser.add_argument("--test-log", action="store_true", help="parse test-only logs")
    parser.add_argument("--multi-exp", action="store_true", help="parse multiple experiments")
    parser.add_argument("--keyword", default="accuracy", type=str, help="which keyword to extract")
    parser.add_argument("--table", action="store_true", help="one table of every run found under the directory")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="table format (default markdown); implies --table")
    parser.add_argument("--plot", metavar="FILE", default=None,
                        help="write figures: FILE (.png or .pdf) is the summary, FILE's stem + _<dataset> one per "
                             "dataset (needs matplotlib: pip install \"vlprompt[plots]\")")
    parser.add_argument("--strict", action="store_true",
                        help="a seed folder without a result (running, crashed) is an error instead of skipped")
    return parser


def cli(argv=None) -> int:
    """``parse_test_res.py`` / ``vlprompt-parse``: a bad folder or an empty result is one line on stderr, exit 1."""
    arguments = build_parser().parse_args(argv)
    if not osp.isdir(arguments.directory):
        print(f"error: directory not found: {arguments.directory}", file=sys.stderr)
        return 1
    try:
        main(arguments)
    except (ValueError, FileNotFoundError, PlotDependencyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())

"""Run folders -> result rows: Dassl's ``log.txt`` result lines, its config dump, and seeds grouped per experiment.

A run (seed) folder holds ``log.txt`` (and ``log.txt-<timestamp>`` after a resume). Its metric is the last
``* <keyword>: X%`` line after the end marker: ``Finish training`` (or the older ``Finished training``) for
a training run, ``=> result`` for an ``--eval-only`` run. A run folder whose logs have no such line is
*skipped* (still running, or crashed) and reported, never silently left out of a seed count.

Rows (one per experiment folder, i.e. the parent of the seed folders) are plain dicts, see ``collect_rows``.
"""
from __future__ import annotations

import os
import os.path as osp
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

END_MARKERS_TRAIN = ("Finish training", "Finished training")
END_MARKERS_TEST = ("=> result",)
# Class groups of long-tailed datasets, in display order: head/medium/tail (COCO-LT, VOC-LT, the synthetic
# multi-label set) and many/medium/few (CIFAR-LT). LMPT logs "* mAP_head: X%", LangevinCoOp "* many_accuracy: X%".
GROUP_ORDER = ("head", "many", "medium", "tail", "few")
SEED_FOLDER = re.compile(r"^seed\d+$")
_NUMBER = r"([\.\deE+-]+)%"


def metric_regex(keyword: str) -> re.Pattern:
    return re.compile(rf"\* {re.escape(keyword)}: {_NUMBER}")


def group_regex(keyword: str) -> re.Pattern:
    """``* <keyword>_<group>: X%`` or ``* <group>_<keyword>: X%`` at the start of a line."""
    kw = re.escape(keyword)
    return re.compile(rf"^\* (?:{kw}_(?P<after>[A-Za-z]+)|(?P<before>[A-Za-z]+)_{kw}): {_NUMBER}")


def read_result_block(fpath: str, keyword: str, end_markers: Sequence[str]) -> Tuple[Optional[float], Dict[str, float]]:
    """The last ``keyword`` value and last class-group values after the first end marker in ``fpath``."""
    value_re, groups_re = metric_regex(keyword), group_regex(keyword)
    value: Optional[float] = None
    groups: Dict[str, float] = {}
    good_to_go = False
    with open(fpath, "r", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line in end_markers:
                good_to_go = True
            if not good_to_go:
                continue
            match = value_re.search(line)
            if match:
                value = float(match.group(1))
            match = groups_re.match(line)
            if match:
                name = match.group("after") or match.group("before")
                if name in GROUP_ORDER:
                    groups[name] = float(match.group(3))
    return value, groups


def parse_log(fpath: str, keyword: str, end_markers) -> Optional[float]:
    """The last ``* keyword: X%`` value after the first end marker in ``fpath`` (None if absent)."""
    return read_result_block(fpath, keyword, end_markers)[0]


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


def end_markers_for(cfg: Dict[str, str]) -> Tuple[str, ...]:
    """Training logs end with ``Finish training``; only eval-only logs may count the first ``=> result``
    (a training log prints validation ``=> result`` blocks too, so a crashed run would look finished)."""
    eval_only = cfg.get("args.eval_only")
    if eval_only == "True":
        return END_MARKERS_TEST
    if eval_only == "False":
        return END_MARKERS_TRAIN
    return END_MARKERS_TRAIN + END_MARKERS_TEST  # hand-written or foreign log: no argument block


@dataclass
class RunResult:
    """One seed folder: its value (None when skipped), class-group values, config, and why it was skipped."""

    run_dir: str
    value: Optional[float] = None
    groups: Dict[str, float] = field(default_factory=dict)
    config: Dict[str, str] = field(default_factory=dict)
    log: Optional[str] = None
    reason: str = ""

    @property
    def done(self) -> bool:
        return self.value is not None


def read_run(run_dir: str, keyword: str, end_markers: Optional[Sequence[str]] = None) -> RunResult:
    """The newest log of ``run_dir`` with a result; ``end_markers=None`` picks them per log (train/eval-only)."""
    logs = run_logs(run_dir)
    if not logs:
        return RunResult(run_dir, reason="no log.txt")
    config: Dict[str, str] = {}
    for fpath in reversed(logs):
        cfg = read_run_config(fpath)
        config = config or cfg
        value, groups = read_result_block(fpath, keyword, end_markers or end_markers_for(cfg))
        if value is not None:
            return RunResult(run_dir, value, groups, cfg, fpath)
    newest = osp.basename(logs[-1])
    return RunResult(run_dir, config=config, log=logs[-1],
                     reason=f"no '* {keyword}:' result in {newest} (still running or crashed)")


# ----------------------------------------------------------------------------- a whole output tree


def find_run_dirs(root: str) -> List[str]:
    """Folders below ``root`` with a log, plus ``seed<N>`` folders without one beside them (queued runs)."""
    found: List[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if "log.txt" in filenames or any(n.startswith("log.txt-") for n in filenames):
            found.append(dirpath)
    with_logs = set(found)
    inside = [d for d in found if osp.normpath(d) != osp.normpath(root)]  # never look beside ``root`` itself
    for parent in sorted({osp.dirname(d) for d in inside}):
        for name in sorted(os.listdir(parent)):
            path = osp.join(parent, name)
            if not SEED_FOLDER.match(name) or path in with_logs or not osp.isdir(path):
                continue
            if not any(d.startswith(path + os.sep) for d in with_logs):  # seed1/eval/log.txt: not empty
                found.append(path)
    return sorted(found)


def shots_sort_key(shots: str) -> Tuple[int, float, str]:
    """Shots sort as numbers (2 before 16); a non-number last."""
    try:
        return 0, float(shots), ""
    except ValueError:
        return 1, 0.0, shots


def experiment_fields(cfg: Dict[str, str]) -> Dict[str, str]:
    config_file = cfg.get("args.config_file", "")
    return {
        "dataset": cfg.get("DATASET.NAME") or "?",
        "backbone": cfg.get("MODEL.BACKBONE.NAME") or "-",
        "trainer": cfg.get("TRAINER.NAME") or "?",
        "config": osp.splitext(osp.basename(config_file))[0] if config_file else "-",
        "shots": cfg.get("DATASET.NUM_SHOTS", "-"),
        "classes": cfg.get("DATASET.SUBSAMPLE_CLASSES", "all"),
    }


def has_experiment_fields(cfg: Dict[str, str]) -> bool:
    """A log cut inside its config dump lacks TRAINER.NAME (dumped after DATASET and MODEL, keys sorted)."""
    return bool(cfg.get("DATASET.NAME")) and bool(cfg.get("TRAINER.NAME"))


def _mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values))


def summarise_group(fields: Dict[str, str], folder: str, runs: List[RunResult], root: str) -> dict:
    """One table row: mean/std over the finished seeds, ``n``/``total`` seeds, the skipped ones named."""
    done = [r for r in runs if r.done]
    mean, std = _mean_std([r.value for r in done])
    names = [g for g in GROUP_ORDER if any(g in r.groups for r in done)]
    groups = {g: _mean_std([r.groups[g] for r in done if g in r.groups]) for g in names}
    settings = next((r.config for r in done), None) or next((r.config for r in runs if r.config), {})
    return {**fields, "mean": mean, "std": std, "n": len(done), "total": len(runs), "folder": folder,
            "values": [r.value for r in done], "groups": groups, "settings": settings,
            "skipped": [(osp.relpath(r.run_dir, root), r.reason) for r in runs if not r.done]}


def group_runs(runs: Iterable[RunResult], root: str) -> List[dict]:
    """Runs grouped per experiment folder and config; a run without a (complete) config dump joins its siblings."""
    by_folder: Dict[str, List[RunResult]] = defaultdict(list)
    for run in runs:
        by_folder[osp.relpath(osp.dirname(run.run_dir), root)].append(run)
    rows = []
    for folder, folder_runs in by_folder.items():
        known = [experiment_fields(r.config) for r in folder_runs if has_experiment_fields(r.config)]
        fallback = known[0] if known else experiment_fields({})
        buckets: Dict[tuple, List[RunResult]] = defaultdict(list)
        for run in folder_runs:
            fields = experiment_fields(run.config) if has_experiment_fields(run.config) else fallback
            buckets[tuple(fields.items())].append(run)
        rows += [summarise_group(dict(key), folder, group, root) for key, group in buckets.items()]
    rows.sort(key=lambda r: (r["dataset"], r["backbone"], r["trainer"], r["config"], shots_sort_key(r["shots"]),
                             r["classes"], r["folder"]))
    label_methods(rows)
    return rows


def collect_rows(root: str, keyword: str) -> List[dict]:
    """Every experiment below ``root``: dataset, backbone, trainer, config, shots, classes, folder, mean, std,
    n (finished seeds), total (seed folders), values, groups ({name: (mean, std)}), skipped [(folder, why)],
    settings (the flattened config) and method (a plot label)."""
    return group_runs((read_run(d, keyword) for d in find_run_dirs(root)), root)


# ----------------------------------------------------------------------------- base/new pairs


def _pairing_folder(folder: str) -> str:
    """The folder with its base/new parts dropped (train_base/dtd/x and test_new/dtd/x pair up)."""
    parts = [p for p in folder.split(os.sep) if "base" not in p.lower() and "new" not in p.lower()]
    return os.sep.join(parts)


def _base_new_pairs(rows: List[dict]) -> List[Tuple[dict, dict]]:
    by_key: Dict[tuple, Dict[str, List[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["mean"] is not None and row["classes"] in ("base", "new"):
            key = (row["dataset"], row.get("backbone", "-"), row["trainer"], row["config"], row["shots"])
            by_key[key][row["classes"]].append(row)
    pairs = []
    for key in sorted(by_key, key=lambda k: (*k[:4], shots_sort_key(k[4]))):
        bases, news = by_key[key]["base"], by_key[key]["new"]
        if len(bases) == 1 and len(news) == 1:
            pairs.append((bases[0], news[0]))
            continue
        news_by_folder = {_pairing_folder(r["folder"]): r for r in news}
        pairs += [(b, news_by_folder[_pairing_folder(b["folder"])]) for b in bases
                  if _pairing_folder(b["folder"]) in news_by_folder]
    return pairs


def harmonic_mean(base: float, new: float) -> float:
    return 2 * base * new / (base + new) if base + new > 0 else 0.0


def harmonic_mean_rows(rows: List[dict]) -> List[dict]:
    """For each base row with its new row (same dataset, backbone, trainer, config, shots): H = 2BN/(B+N)."""
    out = []
    for base, new in _base_new_pairs(rows):
        b, n = base["mean"], new["mean"]
        out.append({"dataset": base["dataset"], "backbone": base.get("backbone", "-"), "trainer": base["trainer"],
                    "config": base["config"], "shots": base["shots"], "base": b, "new": n, "H": harmonic_mean(b, n),
                    "base_std": base.get("std"), "new_std": new.get("std"),
                    "n": min(base["n"], new["n"]),
                    "total": max(base.get("total", base["n"]), new.get("total", new["n"])),
                    "method": base.get("method", f"{base['trainer']} {base['config']}")})
    return out


# ----------------------------------------------------------------------------- plot labels

_NOT_A_VARIANT = ("args.", "DATASET.", "OUTPUT_DIR", "SEED", "RESUME", "TRAINER.NAME", "MODEL.BACKBONE.NAME")


def _variant_keys(bucket: List[dict]) -> List[str]:
    """Config keys whose values differ between rows of one point (same dataset, method, shots, classes)."""
    keys = set().union(*(r["settings"] for r in bucket))
    return sorted(k for k in keys if not k.startswith(_NOT_A_VARIANT)
                  and len({r["settings"].get(k) for r in bucket}) > 1
                  and not any("/" in (r["settings"].get(k) or "") for r in bucket))  # paths differ anyway


def label_methods(rows: List[dict]) -> None:
    """``row["method"]``: trainer and config (+ backbone when several), + the settings that tell rows apart."""
    several_backbones = len({r["backbone"] for r in rows}) > 1
    family_keys: Dict[tuple, set] = defaultdict(set)
    buckets: Dict[tuple, List[dict]] = defaultdict(list)
    for row in rows:
        family = (row["trainer"], row["config"], row["backbone"])
        buckets[(*family, row["dataset"], row["shots"], row["classes"])].append(row)
    for key, bucket in buckets.items():
        if len(bucket) > 1:
            family_keys[key[:3]].update(_variant_keys(bucket))
    for row in rows:
        family = (row["trainer"], row["config"], row["backbone"])
        label = f"{row['trainer']} {row['config']}" + (f" {row['backbone']}" if several_backbones else "")
        variant = [f"{k.rsplit('.', 1)[-1]}={row['settings'].get(k, '-')}" for k in sorted(family_keys[family])]
        row["method"] = label + (f" ({', '.join(variant)})" if variant else "")
    for bucket in buckets.values():  # still alike (they differ in a path or a data setting): name the folder
        if len({r["method"] for r in bucket}) < len(bucket):
            for row in bucket:
                row["method"] += f" [{osp.basename(row['folder'])}]"

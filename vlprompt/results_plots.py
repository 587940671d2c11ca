"""Figures of result rows (``results_runs.collect_rows``): one file per dataset plus a summary over datasets.

What is drawn depends on what the runs are:

- few-shot: runs of a dataset differ by shots -> accuracy against shots, one line per method, a band of
  mean ± std over seeds; zero-shot runs (shots <= 0) are dashed horizontal lines;
- base-to-new: base and new runs pair up -> grouped bars base / new / H;
- long-tailed: the logs print class-group values -> grouped bars overall / head / medium / tail
  (or many / medium / few);
- anything else -> one bar per method (mean ± std).

matplotlib is imported only here, and only when a plot is asked for; figures are drawn on the
non-interactive Agg canvas (no display, no global pyplot state).
"""
from __future__ import annotations

import os
import os.path as osp
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .results_runs import harmonic_mean
from .results_tables import group_names

if TYPE_CHECKING:  # matplotlib stays optional: imported at run time only by require_matplotlib
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOT_SUFFIXES = (".png", ".pdf")
MISSING_MATPLOTLIB = '--plot needs matplotlib, which is not installed: pip install "vlprompt[plots]"'

MeanStd = Tuple[Optional[float], Optional[float]]


class PlotDependencyError(RuntimeError):
    """matplotlib is missing (the ``plots`` extra)."""


def require_matplotlib():
    """``(Figure, FigureCanvasAgg)``; a missing matplotlib is one clear error, not a traceback."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise PlotDependencyError(MISSING_MATPLOTLIB) from err
    return Figure, FigureCanvasAgg


def check_plot_path(path: str) -> None:
    if osp.splitext(path)[1].lower() not in PLOT_SUFFIXES:
        raise ValueError(f"--plot {path}: the file name must end in .png or .pdf")


# ----------------------------------------------------------------------------- what a panel shows


@dataclass
class Curves:
    """Few-shot lines: method -> shots -> (mean, std); zero-shot methods -> one value."""

    points: Dict[str, Dict[int, MeanStd]] = field(default_factory=dict)
    flat: Dict[str, float] = field(default_factory=dict)


@dataclass
class Bars:
    """Grouped bars: one series per method, one bar per category."""

    categories: List[str]
    series: Dict[str, List[MeanStd]] = field(default_factory=dict)


@dataclass
class Panel:
    kind: str  # "fewshot" | "base2new" | "groups" | "overall"
    title: str
    ylabel: str
    curves: Optional[Curves] = None
    bars: Optional[Bars] = None


PANEL_TITLES = {"fewshot": "few-shot", "base2new": "base-to-new", "groups": "class groups", "overall": "results"}


def as_shots(shots: str) -> Optional[int]:
    try:
        return int(shots)
    except ValueError:
        return None


def bar_labels(rows: Sequence[dict]) -> List[str]:
    """Method labels, with shots / classes added when they vary among ``rows`` (else bars would collide)."""
    several_shots = len({r["shots"] for r in rows}) > 1
    several_classes = len({r.get("classes", "all") for r in rows}) > 1
    return [r["method"] + (f", {r['shots']} shots" if several_shots else "")
            + (f", {r['classes']} classes" if several_classes else "") for r in rows]


def fewshot_panel(rows: Sequence[dict], keyword: str) -> Tuple[Optional[Panel], List[dict]]:
    """Curves when the dataset's all-class runs cover at least two shot counts."""
    candidates = [r for r in rows if r["classes"] == "all" and as_shots(r["shots"]) is not None]
    shot_rows = [r for r in candidates if as_shots(r["shots"]) > 0]
    if len({r["shots"] for r in shot_rows}) < 2:
        return None, []
    curves = Curves()
    for r in shot_rows:
        curves.points.setdefault(r["method"], {})[as_shots(r["shots"])] = (r["mean"], r["std"])
    zero_shot = [r for r in candidates if as_shots(r["shots"]) <= 0]
    curves.flat = {r["method"]: r["mean"] for r in zero_shot}
    return Panel("fewshot", PANEL_TITLES["fewshot"], keyword, curves=curves), shot_rows + zero_shot


def base_new_panel(hm_rows: Sequence[dict], keyword: str) -> Optional[Panel]:
    if not hm_rows:
        return None
    bars = Bars(["base", "new", "H"])
    for label, r in zip(bar_labels(hm_rows), hm_rows):
        bars.series[label] = [(r["base"], r.get("base_std")), (r["new"], r.get("new_std")), (r["H"], None)]
    return Panel("base2new", PANEL_TITLES["base2new"], keyword, bars=bars)


def groups_panel(rows: Sequence[dict], keyword: str) -> Tuple[Optional[Panel], List[dict]]:
    grouped = [r for r in rows if r.get("groups")]
    if not grouped:
        return None, []
    names = group_names(grouped)
    bars = Bars([keyword, *names])
    for label, r in zip(bar_labels(grouped), grouped):
        bars.series[label] = [(r["mean"], r["std"])] + [r["groups"].get(g, (None, None)) for g in names]
    return Panel("groups", PANEL_TITLES["groups"], keyword, bars=bars), grouped


def overall_panel(rows: Sequence[dict], keyword: str) -> Optional[Panel]:
    if not rows:
        return None
    bars = Bars([keyword])
    for label, r in zip(bar_labels(rows), rows):
        bars.series[label] = [(r["mean"], r["std"])]
    return Panel("overall", PANEL_TITLES["overall"], keyword, bars=bars)


def dataset_panels(rows: Sequence[dict], hm_rows: Sequence[dict], keyword: str) -> List[Panel]:
    """The panels of one dataset's rows; runs that fit no special panel get plain bars."""
    finished = [r for r in rows if r["mean"] is not None]
    few, few_rows = fewshot_panel(finished, keyword)
    b2n = base_new_panel(hm_rows, keyword)
    grp, grp_rows = groups_panel(finished, keyword)
    used = {id(r) for r in few_rows + grp_rows}
    if b2n is not None:
        used |= {id(r) for r in finished if r["classes"] in ("base", "new")}
    rest = overall_panel([r for r in finished if id(r) not in used], keyword)
    return [p for p in (few, b2n, grp, rest) if p is not None]


# ----------------------------------------------------------------------------- averages over datasets


def _average(per_dataset: List[Dict[str, Dict[object, Optional[float]]]]) -> Dict[str, Dict[object, float]]:
    """label -> x -> mean over datasets; a point counts only if every dataset that has the label has it."""
    labels = sorted({label for d in per_dataset for label in d})
    out: Dict[str, Dict[object, float]] = {}
    for label in labels:
        having = [d[label] for d in per_dataset if label in d]
        xs = set.intersection(*(set(x for x, v in points.items() if v is not None) for points in having))
        if xs:
            out[label] = {x: float(np.mean([points[x] for points in having])) for x in xs}
    return out


def average_curves(curves: List[Curves]) -> Curves:
    points = _average([{m: {x: v[0] for x, v in p.items()} for m, p in c.points.items()} for c in curves])
    flat = _average([{m: {0: v} for m, v in c.flat.items()} for c in curves])
    return Curves({m: {x: (v, None) for x, v in p.items()} for m, p in points.items()},
                  {m: p[0] for m, p in flat.items()})


def average_bars(bars: List[Bars], harmonic: bool = False) -> Bars:
    """Per-category mean over datasets; with ``harmonic``, H is recomputed from the mean base and new
    (as papers print the average row), not averaged."""
    categories = list(dict.fromkeys(c for b in bars for c in b.categories))
    per_dataset = [{m: dict(zip(b.categories, (v[0] for v in values))) for m, values in b.series.items()} for b in bars]
    out = Bars(categories)
    for label, points in _average(per_dataset).items():
        if harmonic and "base" in points and "new" in points:
            points["H"] = harmonic_mean(points["base"], points["new"])
        out.series[label] = [(points.get(c), None) for c in categories]
    return out


def summary_panels(panels_by_dataset: Dict[str, List[Panel]]) -> List[Panel]:
    """One panel per kind found: the average over the datasets that have that kind of panel."""
    by_kind: Dict[str, List[Panel]] = defaultdict(list)
    for panels in panels_by_dataset.values():
        for panel in panels:
            by_kind[panel.kind].append(panel)
    out = []
    for kind in PANEL_TITLES:
        found = by_kind.get(kind)
        if not found:
            continue
        title = f"{PANEL_TITLES[kind]}: average over {len(found)} dataset{'s' if len(found) > 1 else ''}"
        if kind == "fewshot":
            out.append(Panel(kind, title, found[0].ylabel, curves=average_curves([p.curves for p in found])))
        else:
            out.append(Panel(kind, title, found[0].ylabel,
                             bars=average_bars([p.bars for p in found], harmonic=kind == "base2new")))
    return out


# ----------------------------------------------------------------------------- drawing


def draw_curves(ax: "Axes", curves: Curves, colors: Dict[str, str]) -> None:
    shots = sorted({x for points in curves.points.values() for x in points})
    for label in sorted(curves.points):
        points = curves.points[label]
        xs = sorted(points)
        ys = np.array([points[x][0] for x in xs], dtype=float)
        ax.plot(xs, ys, marker="o", label=label, color=colors[label])
        stds = [points[x][1] for x in xs]
        if all(s is not None for s in stds):
            stds = np.array(stds, dtype=float)
            ax.fill_between(xs, ys - stds, ys + stds, color=colors[label], alpha=0.2, linewidth=0)
    for label in sorted(curves.flat):
        ax.axhline(curves.flat[label], linestyle="--", label=label, color=colors[label])
    ax.set_xscale("log", base=2)  # shots 1, 2, 4, 8, 16 evenly spaced, as in the CoOp paper
    ax.set_xticks(shots, labels=[str(s) for s in shots])
    ax.minorticks_off()
    ax.set_xlabel("shots per class")


def draw_bars(ax: "Axes", bars: Bars, colors: Dict[str, str]) -> None:
    x = np.arange(len(bars.categories))
    width = 0.8 / max(len(bars.series), 1)
    for k, (label, values) in enumerate(bars.series.items()):
        heights = [np.nan if mean is None else mean for mean, _ in values]
        has_std = any(std is not None for _, std in values)
        yerr = [np.nan if std is None else std for _, std in values] if has_std else None
        ax.bar(x - 0.4 + width * (k + 0.5), heights, width, yerr=yerr, capsize=2, label=label, color=colors[label])
    ax.set_xticks(x, labels=bars.categories)


def panel_labels(panel: Panel) -> List[str]:
    if panel.curves is not None:
        return list(panel.curves.points) + list(panel.curves.flat)
    return list(panel.bars.series)


def draw_figure(title: str, panels: List[Panel], colors: Dict[str, str]) -> "Figure":
    Figure, FigureCanvasAgg = require_matplotlib()
    fig = Figure(figsize=(5.5 * len(panels), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        if panel.curves is not None:
            draw_curves(ax, panel.curves, colors)
        else:
            draw_bars(ax, panel.bars, colors)
        ax.set_title(panel.title)
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def method_colors(panels: List[Panel]) -> Dict[str, str]:
    """The same method has the same colour in every figure."""
    labels = sorted({label for p in panels for label in panel_labels(p)})
    return {label: f"C{i % 10}" for i, label in enumerate(labels)}


def plot_paths(path: str, datasets: Sequence[str]) -> Dict[str, str]:
    """``out/fig.png`` -> ``{dataset: out/fig_<dataset>.png}``."""
    stem, suffix = osp.splitext(path)
    return {d: f"{stem}_{re.sub(r'[^A-Za-z0-9._-]+', '_', d)}{suffix}" for d in datasets}


def build_figures(rows: Sequence[dict], hm_rows: Sequence[dict], keyword: str, path: str) -> Dict[str, "Figure"]:
    """``{file: Figure}``: one figure per dataset with a finished run, and ``path`` for the summary."""
    require_matplotlib()
    datasets = sorted({r["dataset"] for r in rows if r["mean"] is not None})
    if not datasets:
        raise ValueError("nothing to plot: no seed folder below the directory has a result yet")
    panels = {d: dataset_panels([r for r in rows if r["dataset"] == d],
                                [h for h in hm_rows if h["dataset"] == d], keyword) for d in datasets}
    summary = summary_panels(panels)
    colors = method_colors([p for ps in panels.values() for p in ps] + summary)
    figures = {file: draw_figure(d, panels[d], colors) for d, file in plot_paths(path, datasets).items()}
    figures[path] = draw_figure(f"summary ({len(datasets)} dataset{'s' if len(datasets) > 1 else ''})", summary,
                                colors)
    return figures


def write_plots(rows: Sequence[dict], hm_rows: Sequence[dict], keyword: str, path: str) -> Dict[str, "Figure"]:
    """Draw and save every figure (PNG or PDF from ``path``'s suffix); returns ``{file: Figure}``."""
    check_plot_path(path)
    figures = build_figures(rows, hm_rows, keyword, path)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    for file, fig in figures.items():
        fig.savefig(file, dpi=150)
    return figures

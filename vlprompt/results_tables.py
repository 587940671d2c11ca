"""Result rows (``results_runs.collect_rows``) as markdown, LaTeX (booktabs) or CSV tables.

Two tables: every experiment (mean ± std over its finished seeds, ``n/m`` seeds) and, when base and new
runs pair up, base / new / harmonic mean H. Skipped seed folders are listed below the tables.
In LaTeX the best mean of each column is bold among the rows that are comparable: same dataset, shots
and classes (comparing DTD with ImageNet would bold whichever dataset is easiest).
"""
from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from .results_runs import GROUP_ORDER

FORMATS = ("markdown", "latex", "csv")


@dataclass(frozen=True)
class Number:
    """A numeric cell: a mean and, when shown, its std over seeds (None = no value)."""

    mean: Optional[float]
    std: Optional[float] = None


Cell = Union[str, Number]


@dataclass
class Table:
    headers: List[str]
    rows: List[List[Cell]] = field(default_factory=list)
    blocks: List[tuple] = field(default_factory=list)  # rows with equal block keys compete for bold


# ----------------------------------------------------------------------------- table contents


def group_names(rows: Sequence[dict]) -> List[str]:
    """Class groups (head/medium/tail, many/medium/few) found in any row, in display order."""
    return [g for g in GROUP_ORDER if any(g in r.get("groups", {}) for r in rows)]


def needs_folder(rows: Sequence[dict]) -> bool:
    """True when two rows would look alike without their folder (e.g. they differ in n_ctx only)."""
    keys = [(r["dataset"], r.get("backbone"), r["trainer"], r["config"], r["shots"], r["classes"]) for r in rows]
    return len(set(keys)) < len(keys)


def seeds_cell(row: dict) -> str:
    return f"{row['n']}/{row.get('total', row['n'])}"


def results_table(rows: Sequence[dict], keyword: str, with_folder: bool = True) -> Table:
    groups = group_names(rows)
    headers = ["dataset", "backbone", "trainer", "config", "shots", "classes", keyword, *groups, "seeds"]
    table = Table(headers + (["folder"] if with_folder else []))
    for r in rows:
        cells: List[Cell] = [r["dataset"], r.get("backbone", "-"), r["trainer"], r["config"], r["shots"], r["classes"],
                             Number(r["mean"], r["std"])]
        cells += [Number(r.get("groups", {}).get(g, (None, None))[0]) for g in groups]
        cells.append(seeds_cell(r))
        table.rows.append(cells + ([r["folder"]] if with_folder else []))
        table.blocks.append((r["dataset"], r["shots"], r["classes"]))
    return table


def harmonic_table(hm_rows: Sequence[dict]) -> Table:
    table = Table(["dataset", "backbone", "trainer", "config", "shots", "base", "new", "H", "seeds"])
    for r in hm_rows:
        table.rows.append([r["dataset"], r.get("backbone", "-"), r["trainer"], r["config"], r["shots"],
                           Number(r["base"]), Number(r["new"]), Number(r["H"]), f"{r['n']}/{r.get('total', r['n'])}"])
        table.blocks.append((r["dataset"], r["shots"]))
    return table


def skipped_runs(rows: Sequence[dict]) -> List[Tuple[str, str]]:
    return [item for r in rows for item in r.get("skipped", [])]


# ----------------------------------------------------------------------------- bold


def best_cells(table: Table) -> Set[Tuple[int, int]]:
    """(row, column) of each column's best mean within a block; ties at the printed precision all count."""
    by_block: Dict[tuple, List[int]] = defaultdict(list)
    for i, block in enumerate(table.blocks):
        by_block[block].append(i)
    best: Set[Tuple[int, int]] = set()
    for members in by_block.values():
        for j in range(len(table.headers)):
            values = {i: round(table.rows[i][j].mean, 2) for i in members
                      if isinstance(table.rows[i][j], Number) and table.rows[i][j].mean is not None}
            if len(values) < 2:  # a lone value is not "best" of anything
                continue
            top = max(values.values())
            best.update((i, j) for i, v in values.items() if v == top)
    return best


# ----------------------------------------------------------------------------- markdown


def number_text(cell: Number, pm: str = "±") -> str:
    if cell.mean is None:
        return "-"
    return f"{cell.mean:.2f}" + (f" {pm} {cell.std:.2f}" if cell.std is not None else "")


def render_markdown(table: Table) -> str:
    from tabulate import tabulate

    body = [[number_text(c) if isinstance(c, Number) else c for c in row] for row in table.rows]
    # disable_numparse: "63.20" stays "63.20" (tabulate would print 63.2)
    return tabulate(body, headers=table.headers, tablefmt="github", disable_numparse=True)


# ----------------------------------------------------------------------------- LaTeX

_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def latex_number(cell: Number, bold: bool) -> str:
    if cell.mean is None:
        return "-"
    mean = f"{cell.mean:.2f}"
    mean = rf"\textbf{{{mean}}}" if bold else mean
    return mean + (rf" $\pm$ {cell.std:.2f}" if cell.std is not None else "")


def render_latex(table: Table) -> str:
    """booktabs tabular; a ``\\midrule`` between datasets; the best mean per column and block in bold."""
    numeric = [any(isinstance(row[j], Number) for row in table.rows) for j in range(len(table.headers))]
    spec = "".join("r" if is_number else "l" for is_number in numeric)
    best = best_cells(table)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in table.headers) + r" \\", r"\midrule"]
    for i, row in enumerate(table.rows):
        if i > 0 and table.blocks[i][0] != table.blocks[i - 1][0]:
            lines.append(r"\midrule")
        cells = [latex_number(c, (i, j) in best) if isinstance(c, Number) else latex_escape(c)
                 for j, c in enumerate(row)]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CSV


def _fixed(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2f}"


def csv_text(header: List[str], body: List[List[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(body)
    return buffer.getvalue().rstrip("\n")


def results_csv(rows: Sequence[dict]) -> str:
    """The historical columns first (scripts read them by position), then backbone, seed folders, skipped, groups."""
    groups = group_names(rows)
    header = ["dataset", "trainer", "config", "shots", "classes", "mean", "std", "n", "folder",
              "backbone", "seeds_total", "skipped"] + [c for g in groups for c in (g, f"{g}_std")]
    body = []
    for r in rows:
        line = [r["dataset"], r["trainer"], r["config"], r["shots"], r["classes"], _fixed(r["mean"]), _fixed(r["std"]),
                r["n"], r["folder"], r.get("backbone", "-"), r.get("total", r["n"]),
                ";".join(folder for folder, _ in r.get("skipped", []))]
        for g in groups:
            mean, std = r.get("groups", {}).get(g, (None, None))
            line += [_fixed(mean), _fixed(std)]
        body.append(line)
    return csv_text(header, body)


def harmonic_csv(hm_rows: Sequence[dict]) -> str:
    header = ["dataset", "trainer", "config", "shots", "base", "new", "H", "seeds", "backbone", "seeds_total"]
    body = [[r["dataset"], r["trainer"], r["config"], r["shots"], _fixed(r["base"]), _fixed(r["new"]), _fixed(r["H"]),
             r["n"], r.get("backbone", "-"), r.get("total", r["n"])] for r in hm_rows]
    return csv_text(header, body)


# ----------------------------------------------------------------------------- all together


def skipped_notes(rows: Sequence[dict], prefix: str = "") -> List[str]:
    skipped = skipped_runs(rows)
    if not skipped:
        return []
    total = sum(r.get("total", r["n"]) for r in rows)
    lines = [f"{prefix}Skipped {len(skipped)} of {total} seed folders (not in the means):"]
    return lines + [f"{prefix}- {folder}: {why}" for folder, why in skipped]


def format_tables(rows: Sequence[dict], hm_rows: Sequence[dict], keyword: str, fmt: str = "markdown") -> str:
    """The results table, the base/new/H table when there is one, and the skipped runs, in ``fmt``."""
    if fmt == "csv":
        parts = [results_csv(rows)] + ([harmonic_csv(hm_rows)] if hm_rows else [])
        return "\n\n".join(parts)  # skipped folders are a column: extra lines would break CSV readers
    render: Callable[[Table], str] = render_latex if fmt == "latex" else render_markdown
    main = results_table(rows, keyword, with_folder=fmt != "latex" or needs_folder(rows))
    parts = [render(main)] + ([render(harmonic_table(hm_rows))] if hm_rows else [])
    notes = skipped_notes(rows, prefix="% " if fmt == "latex" else "")
    return "\n\n".join(parts + (["\n".join(notes)] if notes else []))

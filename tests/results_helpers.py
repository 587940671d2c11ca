"""Hand-written run folders in the format ``train.py`` logs, and parsers for the tables ``parse_test_res`` prints."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from vlprompt import parse_test_res


def log_text(dataset: str, trainer: str, config: str, shots: int, backbone: str = "RN50", classes: str = "all",
             eval_only: bool = False, result: Optional[Dict[str, float]] = None, n_ctx: int = 16,
             validation: Sequence[float] = ()) -> str:
    """A ``log.txt``: argument block, config dump, optional validation blocks, and the final result when
    ``result`` is given ({"accuracy": 71.5, "many_accuracy": 80.0, ...}); without it the run "crashed"."""
    lines = ["Setting fixed seed: 1", "***************", "** Arguments **", "***************",
             f"config_file: configs/trainers/{trainer}/{config}.yaml", f"eval_only: {eval_only}",
             "output_dir: somewhere", "************", "** Config **", "************",
             "DATASET:", f"  NAME: {dataset}", f"  NUM_SHOTS: {shots}", f"  SUBSAMPLE_CLASSES: {classes}",
             "MODEL:", "  BACKBONE:", f"    NAME: {backbone}", "OUTPUT_DIR: somewhere", "SEED: 1",
             "TRAINER:", "  COOP:", f"    N_CTX: {n_ctx}", f"  NAME: {trainer}",
             "Collecting env info ...", f"Loading trainer: {trainer}"]
    for acc in validation:  # a training run evaluates on val after epochs: "=> result" blocks before the end
        lines += ["Evaluate on the *val* set", "=> result", "* total: 100", f"* accuracy: {acc:.2f}%"]
    if result is not None:
        if not eval_only:
            lines += ["Finish training", "Deploy the last-epoch model"]
        lines += ["Evaluate on the *test* set", "=> result", "* total: 1,000"]
        lines += [f"* {key}: {value:.2f}%" for key, value in result.items()]
        lines.append("Elapsed: 0:00:42")
    return "\n".join(lines) + "\n"


def write_run(run_dir: Path, dataset: str, trainer: str, config: str, shots: int,
              result: Optional[Dict[str, float]] = None, **kwargs) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "log.txt").write_text(log_text(dataset, trainer, config, shots, result=result, **kwargs))
    return run_dir


def write_seeds(exp_dir: Path, dataset: str, trainer: str, config: str, shots: int,
                values: Sequence[Optional[float]], keyword: str = "accuracy", groups: Optional[List[dict]] = None,
                **kwargs) -> Path:
    """``seed1/``, ``seed2/``, ... with one value each; None writes a crashed run (no result block)."""
    for i, value in enumerate(values):
        result = None if value is None else {keyword: value, **((groups or [{}] * len(values))[i])}
        write_run(exp_dir / f"seed{i + 1}", dataset, trainer, config, shots, result=result, **kwargs)
    return exp_dir


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def std(values: Sequence[float]) -> float:
    m = mean(values)
    return (sum((v - m) ** 2 for v in values) / len(values)) ** 0.5


def run_cli(argv: Sequence[str], capsys):
    code = parse_test_res.cli([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def markdown_tables(text: str) -> List[List[Dict[str, str]]]:
    """Every github-style table in ``text`` as a list of {header: cell}."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            headers, body = current[0], [r for r in current[1:] if not set("".join(r)) <= set("-: ")]
            tables.append([dict(zip(headers, row)) for row in body])
            current = []
    return tables


def latex_tables(text: str) -> List[List[Dict[str, str]]]:
    """Every booktabs tabular in ``text`` as a list of {header: cell} (cells still hold \\textbf, $\\pm$)."""
    tables = []
    for block in re.findall(r"\\toprule\n(.*?)\\bottomrule", text, flags=re.S):
        lines = [line[:-len(r" \\")] for line in block.splitlines() if line.endswith(r" \\")]
        rows = [[c.strip() for c in line.split(" & ")] for line in lines]
        tables.append([dict(zip(rows[0], row)) for row in rows[1:]])
    return tables


def latex_value(cell: str) -> Optional[float]:
    """The mean in a LaTeX cell (``\\textbf{63.20} $\\pm$ 0.50`` -> 63.2)."""
    match = re.match(r"(?:\\textbf\{)?([\d.]+)", cell)
    return float(match.group(1)) if match else None


def markdown_value(cell: str) -> Optional[float]:
    """The mean in a markdown cell (``63.20 ± 0.50`` -> 63.2, ``-`` -> None)."""
    match = re.match(r"([\d.]+)", cell)
    return float(match.group(1)) if match else None


def markdown_std(cell: str) -> Optional[float]:
    match = re.search(r"± ([\d.]+)", cell)
    return float(match.group(1)) if match else None

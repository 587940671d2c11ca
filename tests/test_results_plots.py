"""parse_test_res --plot: files written (PNG, PDF), plotted values read back from the figures' artists equal
the printed table's means; a missing matplotlib or a bad file name is one line on stderr."""
from __future__ import annotations

import builtins

import numpy as np
import pytest

from results_helpers import markdown_std, markdown_tables, markdown_value, run_cli, write_seeds
from vlprompt import parse_test_res
from vlprompt.results_runs import harmonic_mean

DATASETS = ("DescribableTextures", "OxfordPets")
SHOTS = (1, 2, 4)


@pytest.fixture
def matplotlib_installed():
    pytest.importorskip("matplotlib")


@pytest.fixture
def captured_figures(monkeypatch):
    """The ``{file: Figure}`` the CLI saved, kept for reading their artists back."""
    figures = {}
    original = parse_test_res.write_plots

    def keep(*args, **kwargs):
        figures.update(original(*args, **kwargs))
        return figures

    monkeypatch.setattr(parse_test_res, "write_plots", keep)
    return figures


@pytest.fixture
def fewshot_tree(tmp_path):
    """Two datasets x two methods x shots 1/2/4 x 3 seeds, a zero-shot run per dataset, and a crashed seed."""
    root = tmp_path / "out"
    rng = np.random.default_rng(0)
    for d, dataset in enumerate(DATASETS):
        for trainer, base in (("CoOp", 50.0), ("CoCoOp", 55.0)):
            for shots in SHOTS:
                accs = list(np.round(base + 10 * d + 3 * np.log2(shots) + rng.normal(0, 1.5, 3), 2))
                crashed = [None] if (trainer, shots) == ("CoOp", 2) else []
                write_seeds(root / dataset / trainer / f"{shots}shots", dataset, trainer, "rn50", shots,
                            accs + crashed)
        write_seeds(root / dataset / "ZeroshotCLIP", dataset, "ZeroshotCLIP", "rn50", -1, [40.0 + d])
    return root


def table_means(markdown: str, shots_filter=None):
    """{(dataset, "trainer config", shots): (mean, std)} from the printed results table."""
    return {(r["dataset"], f"{r['trainer']} {r['config']}", int(r["shots"])):
            (markdown_value(r["accuracy"]), markdown_std(r["accuracy"])) for r in markdown_tables(markdown)[0]}


def lines_by_label(fig):
    (ax,) = fig.axes
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def bars_by_label(fig):
    from matplotlib.container import BarContainer

    (ax,) = fig.axes
    return {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers if isinstance(c, BarContainer)}


def test_fewshot_curves_equal_table_means(fewshot_tree, tmp_path, capsys, captured_figures, matplotlib_installed):
    path = tmp_path / "figs" / "fewshot.png"
    code, out, _ = run_cli([fewshot_tree, "--table", "--plot", path], capsys)
    assert code == 0
    files = [path] + [tmp_path / "figs" / f"fewshot_{d}.png" for d in DATASETS]
    for file in files:
        assert f"wrote {file}" in out
        assert file.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and file.stat().st_size > 1000
    table = table_means(out)
    assert table[("DescribableTextures", "CoOp rn50", 2)] and "Skipped 2 of" in out  # the crashed seeds
    for d in DATASETS:
        lines = lines_by_label(captured_figures[str(tmp_path / "figs" / f"fewshot_{d}.png")])
        assert set(lines) == {"CoOp rn50", "CoCoOp rn50", "ZeroshotCLIP rn50"}
        for method in ("CoOp rn50", "CoCoOp rn50"):
            xs, ys = lines[method]
            assert xs == list(SHOTS)
            assert ys == pytest.approx([table[(d, method, s)][0] for s in SHOTS], abs=0.005)
        assert lines["ZeroshotCLIP rn50"][1] == pytest.approx([table[(d, "ZeroshotCLIP rn50", -1)][0]] * 2)
    summary = lines_by_label(captured_figures[str(path)])
    for method in ("CoOp rn50", "CoCoOp rn50"):
        expected = [np.mean([table[(d, method, s)][0] for d in DATASETS]) for s in SHOTS]
        assert summary[method][1] == pytest.approx(expected, abs=0.005)


def test_fewshot_band_is_mean_plus_minus_std(fewshot_tree, tmp_path, capsys, captured_figures, matplotlib_installed):
    path = tmp_path / "fig.png"
    code, out, _ = run_cli([fewshot_tree, "--table", "--plot", path], capsys)
    table = table_means(out)
    fig = captured_figures[str(tmp_path / "fig_OxfordPets.png")]
    (ax,) = fig.axes
    bands = [c for c in ax.collections if c.get_paths() and len(c.get_paths()[0].vertices) > 2]
    assert code == 0 and len(bands) == 2  # one per few-shot method
    expected = []
    for method in ("CoCoOp rn50", "CoOp rn50"):
        means, stds = zip(*(table[("OxfordPets", method, s)] for s in SHOTS))
        expected.append((min(np.subtract(means, stds)), max(np.add(means, stds))))
    found = sorted((band.get_paths()[0].vertices[:, 1].min(), band.get_paths()[0].vertices[:, 1].max())
                   for band in bands)
    assert np.allclose(found, sorted(expected), atol=0.01)


def test_pdf_files_are_written(fewshot_tree, tmp_path, capsys, matplotlib_installed):
    path = tmp_path / "fig.pdf"
    code, out, _ = run_cli([fewshot_tree, "--plot", path], capsys)
    assert code == 0
    for file in [path] + [tmp_path / f"fig_{d}.pdf" for d in DATASETS]:
        assert file.read_bytes().startswith(b"%PDF") and file.stat().st_size > 1000
    assert "Skipped 2 of" in out and "|" not in out  # without --table: skipped runs and files only


def test_base_to_new_bars_equal_the_h_table(tmp_path, capsys, captured_figures, matplotlib_installed):
    values = {("EuroSAT", "CoOp"): ([91.0, 93.5], [55.0, 61.0]), ("EuroSAT", "CoCoOp"): ([88.0, 87.0], [70.0, 72.5]),
              ("DTD", "CoOp"): ([80.0, 81.0], [45.0, 47.0]), ("DTD", "CoCoOp"): ([77.0, 78.0], [55.0, 57.0])}
    for (dataset, trainer), (base, new) in values.items():
        write_seeds(tmp_path / "base2new" / "train_base" / dataset / trainer, dataset, trainer, "vit_b16", 16, base,
                    classes="base", backbone="ViT-B/16")
        write_seeds(tmp_path / "base2new" / "test_new" / dataset / trainer, dataset, trainer, "vit_b16", 16, new,
                    classes="new", backbone="ViT-B/16", eval_only=True)
    path = tmp_path / "b2n.png"
    code, out, _ = run_cli([tmp_path, "--table", "--plot", path], capsys)
    assert code == 0
    h_table = {(r["dataset"], f"{r['trainer']} {r['config']}"): [markdown_value(r[k]) for k in ("base", "new", "H")]
               for r in markdown_tables(out)[1]}
    assert len(h_table) == 4
    for dataset in ("EuroSAT", "DTD"):
        bars = bars_by_label(captured_figures[str(tmp_path / f"b2n_{dataset}.png")])
        assert set(bars) == {"CoOp vit_b16", "CoCoOp vit_b16"}
        for method, heights in bars.items():
            assert heights == pytest.approx(h_table[(dataset, method)], abs=0.005)
    summary = bars_by_label(captured_figures[str(path)])
    for method, heights in summary.items():
        base = np.mean([h_table[(d, method)][0] for d in ("EuroSAT", "DTD")])
        new = np.mean([h_table[(d, method)][1] for d in ("EuroSAT", "DTD")])
        assert heights == pytest.approx([base, new, harmonic_mean(base, new)], abs=0.01)


def test_long_tailed_group_bars_equal_the_group_columns(tmp_path, capsys, captured_figures, matplotlib_installed):
    for trainer, offset in (("LMPT", 0.0), ("ZeroshotCLIPMultiLabel", -12.0)):
        groups = [{"mAP_head": 70.0 + offset + s, "mAP_medium": 55.0 + offset - s, "mAP_tail": 35.0 + offset + 2 * s,
                   "mAP_softmax": 1.0} for s in range(3)]
        write_seeds(tmp_path / "COCO-LT" / trainer, "COCO-LT", trainer, "rn50", 16,
                    [58.0 + offset, 59.0 + offset, 61.0 + offset], keyword="mAP", groups=groups)
    path = tmp_path / "lt.png"
    code, out, _ = run_cli([tmp_path, "--keyword", "mAP", "--table", "--plot", path], capsys)
    assert code == 0
    table = markdown_tables(out)[0]
    assert list(table[0])[6:10] == ["mAP", "head", "medium", "tail"]  # mAP_softmax is not a class group
    bars = bars_by_label(captured_figures[str(tmp_path / "lt_COCO-LT.png")])
    for row in table:
        expected = [markdown_value(row[k]) for k in ("mAP", "head", "medium", "tail")]
        assert bars[f"{row['trainer']} {row['config']}"] == pytest.approx(expected, abs=0.005)
    assert [t.get_text() for t in captured_figures[str(path)].axes[0].get_xticklabels()] == [
        "mAP", "head", "medium", "tail"]


def test_many_medium_few_accuracies_of_langevin_logs(tmp_path, capsys, captured_figures, matplotlib_installed):
    """LangevinCoOp prints "* many_accuracy: 80.1% (3 classes)"; the ensemble's hard_vote_* lines are not groups."""
    exp = write_seeds(tmp_path / "cifar10_lt" / "LangevinCoOp", "CIFAR10LT", "LangevinCoOp", "rn50", -1, [70.0, 72.0],
                      groups=[{"many_accuracy": 90.0, "medium_accuracy": 70.0, "few_accuracy": 40.0},
                              {"many_accuracy": 92.0, "medium_accuracy": 71.0, "few_accuracy": 44.0}])
    for seed in ("seed1", "seed2"):
        log = exp / seed / "log.txt"
        text = log.read_text().replace("_accuracy: 90.00%", "_accuracy: 90.00% (3 classes)")
        log.write_text(text + "=> ensemble result (5 samples)\n* hard_vote_accuracy: 99.0%\n"
                              "* hard_vote_many_accuracy: 99.0% (3 classes)\n")
    path = tmp_path / "lt.png"
    code, out, _ = run_cli([tmp_path, "--table", "--plot", path], capsys)
    (row,) = markdown_tables(out)[0]
    assert code == 0 and [markdown_value(row[k]) for k in ("accuracy", "many", "medium", "few")] == [
        71.0, 91.0, 70.5, 42.0]
    assert bars_by_label(captured_figures[str(path)])["LangevinCoOp rn50"] == pytest.approx([71.0, 91.0, 70.5, 42.0])


def test_single_experiment_folder_gets_plain_bars(tmp_path, capsys, captured_figures, matplotlib_installed):
    exp = write_seeds(tmp_path / "exp", "DescribableTextures", "CoOp", "rn50", 16, [60.0, 64.0])
    code, _, _ = run_cli([exp, "--plot", tmp_path / "one.png"], capsys)
    bars = bars_by_label(captured_figures[str(tmp_path / "one_DescribableTextures.png")])
    assert code == 0 and bars == {"CoOp rn50": [62.0]}


def test_missing_matplotlib_is_one_line_naming_the_extra(fewshot_tree, tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code, out, err = run_cli([fewshot_tree, "--plot", tmp_path / "fig.png"], capsys)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == ['error: --plot needs matplotlib, which is not installed: '
                                        'pip install "vlprompt[plots]"']
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("name", ["fig.jpg", "fig"])
def test_plot_file_must_be_png_or_pdf(fewshot_tree, tmp_path, capsys, name):
    code, _, err = run_cli([fewshot_tree, "--plot", tmp_path / name], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and ".png or .pdf" in err


def test_strict_plot_refuses_incomplete_groups(fewshot_tree, tmp_path, capsys, matplotlib_installed):
    code, _, err = run_cli([fewshot_tree, "--plot", tmp_path / "fig.png", "--strict"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "CoOp/2shots/seed4" in err
    assert not list(tmp_path.glob("*.png"))

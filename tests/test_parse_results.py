"""parse_test_res tables on hand-written run folders: seeds counted n/m with skipped folders named, --strict,
markdown / LaTeX / CSV agreeing, bold best values, the backbone column and base/new pairing."""
from __future__ import annotations

import re

import pytest

from results_helpers import (latex_tables, latex_value, markdown_std, markdown_tables, markdown_value, mean,
                             run_cli, std, write_run, write_seeds)
from vlprompt import parse_test_res
from vlprompt.results_runs import harmonic_mean


@pytest.fixture
def incomplete_tree(tmp_path):
    """Two experiments of 3 seed folders each: one seed crashed, one seed folder still empty (queued)."""
    root = tmp_path / "out"
    write_seeds(root / "dtd" / "CoOp" / "rn50_16shots", "DescribableTextures", "CoOp", "rn50", 16, [70.0, 80.0, None])
    write_seeds(root / "pets" / "CoOp" / "rn50_16shots", "OxfordPets", "CoOp", "rn50", 16, [60.0, 62.0])
    (root / "pets" / "CoOp" / "rn50_16shots" / "seed3").mkdir()
    return root


def test_table_counts_seeds_and_lists_skipped_folders(incomplete_tree, capsys):
    code, out, _ = run_cli([incomplete_tree, "--table"], capsys)
    assert code == 0
    rows = {r["dataset"]: r for r in markdown_tables(out)[0]}
    assert rows["DescribableTextures"]["seeds"] == "2/3" and rows["OxfordPets"]["seeds"] == "2/3"
    assert markdown_value(rows["DescribableTextures"]["accuracy"]) == 75.0  # the crashed seed is not averaged in
    assert markdown_std(rows["DescribableTextures"]["accuracy"]) == 5.0
    notes = out[out.index("Skipped"):].splitlines()
    assert notes[0] == "Skipped 2 of 6 seed folders (not in the means):"
    assert re.match(r"- dtd/CoOp/rn50_16shots/seed3: no '\* accuracy:' result in log.txt", notes[1]), notes
    assert notes[2] == "- pets/CoOp/rn50_16shots/seed3: no log.txt"


def test_strict_turns_an_incomplete_group_into_one_line_error(incomplete_tree, capsys):
    code, out, err = run_cli([incomplete_tree, "--table", "--strict"], capsys)
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "dtd/CoOp/rn50_16shots/seed3" in err and "pets/CoOp/rn50_16shots/seed3" in err and "--strict" in err


def test_strict_passes_when_every_seed_has_a_result(tmp_path, capsys):
    write_seeds(tmp_path / "exp", "DescribableTextures", "CoOp", "rn50", 16, [70.0, 80.0])
    code, out, _ = run_cli([tmp_path, "--table", "--strict"], capsys)
    assert code == 0 and markdown_tables(out)[0][0]["seeds"] == "2/2" and "Skipped" not in out


def test_crashed_training_run_with_validation_results_is_skipped(tmp_path, capsys):
    """Validation prints "=> result" blocks during training: only an eval-only log may end at one."""
    exp = tmp_path / "exp"
    write_run(exp / "seed1", "DescribableTextures", "CoOp", "rn50", 16, result={"accuracy": 70.0})
    write_run(exp / "seed2", "DescribableTextures", "CoOp", "rn50", 16, validation=[55.0, 66.0])  # died in epoch 3
    code, out, _ = run_cli([tmp_path, "--table"], capsys)
    row = markdown_tables(out)[0][0]
    assert code == 0 and row["seeds"] == "1/2" and markdown_value(row["accuracy"]) == 70.0
    assert "- exp/seed2: no '* accuracy:' result" in out


def test_run_cut_inside_its_config_dump_joins_its_siblings(tmp_path, capsys):
    exp = write_seeds(tmp_path / "exp", "DescribableTextures", "CoOp", "rn50", 16, [70.0, 72.0])
    full = (exp / "seed1" / "log.txt").read_text()
    (exp / "seed3").mkdir()
    (exp / "seed3" / "log.txt").write_text(full[:full.index("TRAINER:")])  # killed while writing the dump
    code, out, _ = run_cli([tmp_path, "--table"], capsys)
    (row,) = markdown_tables(out)[0]
    assert code == 0 and row["trainer"] == "CoOp" and row["seeds"] == "2/3" and "- exp/seed3: no" in out


def test_resumed_run_counts_its_newest_log_with_a_result(tmp_path, capsys):
    run = write_run(tmp_path / "exp" / "seed1", "DescribableTextures", "CoOp", "rn50", 16)  # interrupted
    (run / "log.txt-2024-01-02-10-00-00").write_text(
        (run / "log.txt").read_text() + "Finish training\n=> result\n* accuracy: 64.00%\n")
    code, out, _ = run_cli([tmp_path, "--table", "--strict"], capsys)
    assert code == 0 and markdown_value(markdown_tables(out)[0][0]["accuracy"]) == 64.0


# ----------------------------------------------------------------------------- CoOp-style seed mode


def test_seed_mode_reports_n_of_m_and_names_skipped_folders(tmp_path, capsys):
    exp = write_seeds(tmp_path / "exp", "DescribableTextures", "CoOp", "rn50", 16, [70.0, 80.0, None])
    (exp / "seed4").mkdir()
    code, out, _ = run_cli([exp], capsys)
    assert code == 0
    assert "* accuracy: 75.00% +- 5.00%" in out
    assert "seeds: 2/4 (skipped: seed3, seed4)" in out
    assert "skipped: seed3 (no result after Finish training / Finished training" in out
    assert "skipped: seed4 (no log.txt)" in out
    assert out.count("file: ") == 2


def test_seed_mode_strict_is_one_line_error(tmp_path, capsys):
    exp = write_seeds(tmp_path / "exp", "DescribableTextures", "CoOp", "rn50", 16, [70.0, None, 72.0])
    code, _, err = run_cli([exp, "--strict"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "seed2" in err and "seed1" not in err


def test_seed_mode_on_a_folder_without_seed_folders_says_where_to_point(tmp_path, capsys):
    (tmp_path / "exp" / "not_a_run").mkdir(parents=True)
    code, _, err = run_cli([tmp_path / "exp"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "no seed folder with a log.txt in" in err and "--table" in err


# ----------------------------------------------------------------------------- formats


@pytest.fixture
def mixed_tree(tmp_path):
    """Few-shot runs of two methods on two datasets with two backbones, and a base/new pair."""
    root = tmp_path / "out"
    values = {("CoOp", 1): [50.1, 52.3, 51.0], ("CoOp", 4): [60.0, 61.5, 59.9],
              ("CoCoOp", 1): [55.5, 54.0, 56.2], ("CoCoOp", 4): [58.0, 58.8, 57.1]}
    for dataset, offset in (("DescribableTextures", 0.0), ("OxfordPets", 20.0)):
        for (trainer, shots), accs in values.items():
            write_seeds(root / dataset / trainer / f"{shots}shots", dataset, trainer, "vit_b16", shots,
                        [a + offset for a in accs], backbone="ViT-B/16")
    write_seeds(root / "rn" / "CoOp", "OxfordPets", "CoOp", "rn50", 4, [70.0, 71.0], backbone="RN50")
    write_seeds(root / "b2n" / "train_base" / "CoOp", "EuroSAT", "CoOp", "vit_b16", 16, [90.0, 92.0],
                classes="base", backbone="ViT-B/16")
    write_seeds(root / "b2n" / "test_new" / "CoOp", "EuroSAT", "CoOp", "vit_b16", 16, [60.0, 64.0],
                classes="new", backbone="ViT-B/16", eval_only=True)
    return root


def numbers_of(table, parse_value, parse_std=None):
    """Every numeric cell of a parsed table, keyed by (row index, column), with std where printed."""
    out = {}
    for i, row in enumerate(table):
        for column, cell in row.items():
            if column in ("dataset", "backbone", "trainer", "config", "shots", "classes", "seeds", "folder"):
                continue
            out[(i, column)] = (parse_value(cell), parse_std(cell) if parse_std else None)
    return out


def latex_std(cell: str):
    match = re.search(r"\$\\pm\$ ([\d.]+)", cell)
    return float(match.group(1)) if match else None


def test_latex_numbers_equal_markdown_numbers(mixed_tree, capsys):
    _, markdown, _ = run_cli([mixed_tree, "--table"], capsys)
    code, latex, _ = run_cli([mixed_tree, "--format", "latex"], capsys)  # --format implies --table
    assert code == 0
    for marker in (r"\begin{tabular}", r"\toprule", r"\midrule", r"\bottomrule", r"\end{tabular}"):
        assert marker in latex
    md_tables, tex_tables = markdown_tables(markdown), latex_tables(latex)
    assert len(md_tables) == len(tex_tables) == 2  # results, then base/new/H
    for md, tex in zip(md_tables, tex_tables):
        assert len(md) == len(tex)
        md_numbers = numbers_of(md, markdown_value, markdown_std)
        assert md_numbers and md_numbers == numbers_of(tex, latex_value, latex_std)
        for md_row, tex_row in zip(md, tex):
            assert tex_row["backbone"] == md_row["backbone"] and tex_row["seeds"] == md_row["seeds"]
    h_row = md_tables[1][0]
    assert markdown_value(h_row["H"]) == round(harmonic_mean(91.0, 62.0), 2)


def bold_columns(table, column):
    return {i for i, row in enumerate(table) if row[column].startswith(r"\textbf{")}


def test_latex_bolds_the_best_value_of_each_column_among_comparable_rows(tmp_path, capsys):
    """Three methods on one long-tailed dataset win different columns; a second dataset is compared apart."""
    groups = {"A": (62.0, 80.0, 60.0, 30.0), "B": (61.0, 85.0, 55.0, 29.0), "C": (60.0, 70.0, 58.0, 41.0)}
    for dataset, offset in (("COCO-LT", 0.0), ("VOC-LT", -20.0)):
        for trainer, (overall, head, medium, tail) in groups.items():
            g = {"mAP_head": head + offset, "mAP_medium": medium + offset, "mAP_tail": tail + offset}
            write_seeds(tmp_path / dataset / trainer, dataset, trainer, "rn50", 16, [overall + offset] * 2,
                        keyword="mAP", groups=[g, g])
    code, out, _ = run_cli([tmp_path, "--keyword", "mAP", "--format", "latex"], capsys)
    table = latex_tables(out)[0]
    assert code == 0 and [r["trainer"] for r in table] == ["A", "B", "C", "A", "B", "C"]
    for column in ("mAP", "head", "medium", "tail"):
        for block in ((0, 1, 2), (3, 4, 5)):
            values = {i: latex_value(table[i][column]) for i in block}
            best = {i for i, v in values.items() if v == max(values.values())}
            assert bold_columns(table, column) & set(block) == best, (column, values)
    assert bold_columns(table, "tail") == {2, 5} and bold_columns(table, "head") == {1, 4}
    assert r"\midrule" in out.split(r"\midrule", 1)[1]  # a rule between the two datasets


def test_backbone_is_a_column_in_every_format(mixed_tree, capsys):
    _, markdown, _ = run_cli([mixed_tree, "--table"], capsys)
    assert {r["backbone"] for r in markdown_tables(markdown)[0]} == {"ViT-B/16", "RN50"}
    assert markdown_tables(markdown)[1][0]["backbone"] == "ViT-B/16"
    _, csv_out, _ = run_cli([mixed_tree, "--format", "csv"], capsys)
    main_csv, h_csv = csv_out.strip().split("\n\n")
    header = main_csv.splitlines()[0].split(",")
    assert header[:9] == ["dataset", "trainer", "config", "shots", "classes", "mean", "std", "n", "folder"]
    rn50 = [dict(zip(header, line.split(","))) for line in main_csv.splitlines()[1:] if ",RN50," in line]
    assert len(rn50) == 1 and rn50[0]["mean"] == "70.50" and rn50[0]["n"] == "2" and rn50[0]["seeds_total"] == "2"
    assert h_csv.splitlines()[0] == "dataset,trainer,config,shots,base,new,H,seeds,backbone,seeds_total"
    assert h_csv.splitlines()[1].startswith("EuroSAT,CoOp,vit_b16,16,91.00,62.00,")


def test_csv_names_skipped_folders_in_a_column(incomplete_tree, capsys):
    _, out, _ = run_cli([incomplete_tree, "--format", "csv"], capsys)
    lines = out.strip().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert [(r["n"], r["seeds_total"], r["skipped"]) for r in rows] == [
        ("2", "3", "dtd/CoOp/rn50_16shots/seed3"), ("2", "3", "pets/CoOp/rn50_16shots/seed3")]


def test_base_and_new_pair_by_folder_when_variants_share_a_config(tmp_path, capsys):
    for nctx, (b, n) in ((4, (80.0, 70.0)), (16, (90.0, 50.0))):
        write_seeds(tmp_path / "train_base" / f"nctx{nctx}", "EuroSAT", "CoOp", "vit_b16", 16, [b], classes="base",
                    n_ctx=nctx)
        write_seeds(tmp_path / "test_new" / f"nctx{nctx}", "EuroSAT", "CoOp", "vit_b16", 16, [n], classes="new",
                    n_ctx=nctx, eval_only=True)
    rows = parse_test_res.harmonic_mean_rows(parse_test_res.collect_table(str(tmp_path), "accuracy"))
    assert sorted(round(r["H"], 4) for r in rows) == sorted(round(harmonic_mean(b, n), 4)
                                                           for b, n in ((80.0, 70.0), (90.0, 50.0)))


def test_mean_and_std_are_over_finished_seeds(tmp_path):
    accs = [61.3, 64.9, 58.2]
    write_seeds(tmp_path / "exp", "DescribableTextures", "CoOp", "rn50", 2, accs + [None])
    (row,) = parse_test_res.collect_table(str(tmp_path), "accuracy")
    assert row["mean"] == pytest.approx(mean(accs)) and row["std"] == pytest.approx(std(accs))
    assert (row["n"], row["total"]) == (3, 4)

"""DPT end to end on the synthetic dataset with the tiny ViT CLIP, driven by scripts/dpt/base2new.sh.

The script runs with a recording ``PYTHON`` (it writes down each ``train.py`` command instead of starting a
process); the test then runs those exact commands in-process: training on the base classes, then the eval-only
run on the novel classes.  Checked: training changes the selected tokens and lowers the training loss (every
training image, test transform, before vs after, same seed); the decoded prompt is in log.txt each epoch, in
tensorboard and beside the checkpoint; the eval-only run and the interpret command recover it; a second script
run skips both finished jobs; parse_test_res tabulates base/new.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess

import pytest

from vlprompt import parse_test_res
from vlprompt import train
from dassl.engine import build_trainer
from dassl.utils import set_random_seed
from dassl.utils.logger import close_logger
from dpt_helpers import REPO_ROOT, SMALL_SYNTHETIC, train_set_loss
from helpers import run_train

EPOCHS = 3
CFG = "tiny_vit_c2_ep5_batch4"
COMMON = f"synthetic/shots_8/DPT/{CFG}_small/seed1"
PROMPT_LINE = re.compile(r'^(Initial DPT prompt|DPT prompt after epoch \d+/\d+|Loaded DPT prompt): "(.*)" -> '
                         r'"(.*)" ids \[([\d, ]+)\]')
RECORDER = '#!/bin/bash\n[ "$1" = train.py ] && shift\nprintf "%q " "$@" >> "$RECORD"\necho >> "$RECORD"\n'


def prompt_lines(log_path) -> list[tuple[str, str, str, list[int]]]:
    """(what, prompt, template, ids) of every prompt line of a log."""
    out = []
    for line in open(log_path).read().splitlines():
        match = PROMPT_LINE.match(line)
        if match:
            out.append((match.group(1), match.group(2), match.group(3), [int(i) for i in match.group(4).split(", ")]))
    return out


def run_script(data_root: str, out, record) -> subprocess.CompletedProcess:
    env = dict(os.environ, SEEDS="1", SHOTS="8", LOADEP=str(EPOCHS), OUTPUT=str(out), PYTHON=str(out / "python"),
               RECORD=str(record), TAG="small", OPTS=" ".join(SMALL_SYNTHETIC + ["OPTIM.MAX_EPOCH", str(EPOCHS)]))
    command = ["bash", "scripts/dpt/base2new.sh", data_root, "synthetic", CFG]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True)


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    """Output root after base2new.sh's training and novel-class evaluation (run in-process)."""
    out = tmp_path_factory.mktemp("dpt")
    (out / "python").write_text(RECORDER)
    (out / "python").chmod(0o755)
    record = out / "commands.txt"
    first = run_script(data_root, out, record)
    commands = [shlex.split(line) for line in record.read_text().splitlines()]
    assert len(commands) == 2 and "--eval-only" in commands[1], (first.stdout, commands)
    for argv in commands:
        assert run_train(argv) == 0
        close_logger()  # later in-process trainers must not write into this run's log.txt
    record.unlink()
    second = run_script(data_root, out, record)
    return {"out": out, "train_argv": commands[0], "first": first.stdout, "second": second.stdout,
            "train": out / "base2new/train_base" / COMMON, "test": out / "base2new/test_new" / COMMON}


def test_script_layout_and_skip(runs):
    assert f"Run {runs['train']}" in runs["first"] and f"Run {runs['test']}" in runs["first"]
    assert runs["second"].count("Skip ") == 2 and "Run " not in runs["second"]
    assert not (runs["out"] / "commands.txt").exists()  # the second run started no train.py at all


def test_prompt_logged_each_epoch_and_changed(runs):
    lines = prompt_lines(runs["train"] / "log.txt")
    assert [what for what, *_ in lines] == (["Initial DPT prompt"] +
                                            [f"DPT prompt after epoch {e}/{EPOCHS}" for e in range(1, EPOCHS + 1)])
    initial, (_, prompt, template, final) = lines[0][3], lines[-1]
    assert len(final) == 2 and final != initial, (initial, final)
    assert template.startswith(prompt + " ") and template.endswith(" of a {}.")  # "<t1 t2> of a {}."
    saved = json.loads((runs["train"] / "prompt_learner" / f"prompt-{EPOCHS}.json").read_text())
    assert (saved["ids"], saved["prompt"], saved["template"], saved["epoch"]) == (final, prompt, template, EPOCHS)


def test_prompt_in_tensorboard(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs["train"] / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    texts = events.Tensors("train/prompt/text_summary")
    assert [t.step for t in texts] == list(range(1, EPOCHS + 1))
    _, prompt, template, _ = prompt_lines(runs["train"] / "log.txt")[-1]
    assert texts[-1].tensor_proto.string_val[0].decode() == f'"{prompt}" -> "{template}"'
    assert [s.step for s in events.Scalars("train/prompt_changes")] == list(range(1, EPOCHS + 1))


def test_training_lowers_the_loss(runs, tmp_path):
    argv = list(runs["train_argv"])
    argv[argv.index("--output-dir") + 1] = str(tmp_path / "probe")
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    set_random_seed(cfg.SEED)
    trainer = build_trainer(cfg)
    lines = prompt_lines(runs["train"] / "log.txt")
    assert trainer.model.prompt_learner.describe()["ids"] == lines[0][3]  # same initial scores as the run
    before = train_set_loss(trainer)
    trainer.load_model(str(runs["train"]), epoch=EPOCHS)
    assert trainer.model.prompt_learner.describe()["ids"] == lines[-1][3]
    after = train_set_loss(trainer)
    assert after < 0.9 * before, (before, after)  # observed ratios 0.3-0.76 over seeds and data orders


def test_eval_only_and_interpret_recover_the_prompt(runs, capsys):
    final = prompt_lines(runs["train"] / "log.txt")[-1]
    loaded = prompt_lines(runs["test"] / "log.txt")[-1]
    assert loaded[0] == "Loaded DPT prompt" and loaded[1:] == final[1:]
    assert "* accuracy:" in (runs["test"] / "log.txt").read_text()
    spec = importlib.util.spec_from_file_location("dpt_interpret", os.path.join(REPO_ROOT, "scripts/dpt/interpret.py"))
    interpret = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(interpret)
    capsys.readouterr()
    assert interpret.main([str(runs["train"])]) == 0
    out = capsys.readouterr().out
    assert f'prompt: "{final[1]}"' in out and f'template: "{final[2]}"' in out and f"ids: {final[3]}" in out, out
    assert "selection: reference, filter_special=True, roundtrip=True" in out
    assert interpret.main([str(runs["out"] / "missing")]) == 1


def test_parse_test_res_tabulates_base_and_new(runs, capsys):
    parse_test_res.main(parse_test_res.build_parser().parse_args(
        [str(runs["out"] / "base2new"), "--table", "--format", "csv"]))
    table = capsys.readouterr().out.splitlines()
    assert "dataset,trainer,config,shots,base,new,H,seeds,backbone,seeds_total" in table
    assert any(line.startswith(f"Synthetic,DPT,{CFG},8,") for line in table), table

"""LangevinCoOp end to end on a synthetic CIFAR-10-LT copy with the tiny ViT CLIP: phase 2 starts from phase 1's
prompt exactly, the bank holds the last K samples, a run killed in phase 2 resumes with the same bank, the
ensemble encodes every test image once for any K and scores every test image, the loss is the logit-adjusted
cross-entropy, TensorBoard gets our tags (percent) or, in literal mode, the reference's (fractions), and bad
configs fail in check_cfg."""
from __future__ import annotations

import argparse
import math
import os
import os.path as osp
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from langevin_helpers import build_trainer_in_process, run_train, train_args, write_shape_cifar10
from vlprompt.trainers.langevin_coop import LangevinCoOp, SampleBank

N_TEST = 40  # 4 classes x 10 test images
PHASE1_EPOCHS, PHASE2_EPOCHS, START, K = 6, 12, 4, 3  # from the tiny configs


@pytest.fixture(scope="module")
def lt_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("cifar_lt"))
    write_shape_cifar10(root)
    return root


@pytest.fixture(scope="module")
def phase1(lt_root, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("phase1"))
    assert run_train(train_args(lt_root, out, phase=1)) == 0
    return out


def _init_file(phase1: str) -> str:
    return osp.join(phase1, "saved_prompts", f"prompt_epoch_{START}.pth")


@pytest.fixture(scope="module")
def phase2(lt_root, phase1, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("phase2"))
    assert run_train(train_args(lt_root, out, phase=2, init_from=_init_file(phase1))) == 0
    return out


def _ctx(path: str) -> torch.Tensor:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]["ctx"]


def _log_text(out: str) -> str:
    """Every log of a run folder, oldest first (a resumed run writes ``log.txt-<time>`` beside ``log.txt``)."""
    paths = sorted((osp.join(out, f) for f in os.listdir(out) if f.startswith("log.txt")), key=osp.getmtime)
    return "".join(open(p).read() for p in paths)


def _log_values(out: str, key: str):
    return [float(v) for v in re.findall(rf"\* {key}: ([\d.]+)%", _log_text(out))]


def test_phase1_saves_reference_prompts(phase1):
    """Prompts after epoch indices 0, 2, 4 and the last (5); the last equals the final Dassl checkpoint."""
    assert sorted(os.listdir(osp.join(phase1, "saved_prompts"))) == [f"prompt_epoch_{e}.pth" for e in (0, 2, 4, 5)]
    final = _ctx(osp.join(phase1, "prompt_learner", f"model.pth.tar-{PHASE1_EPOCHS}"))
    assert torch.equal(_ctx(osp.join(phase1, "saved_prompts", "prompt_epoch_5.pth")), final)
    assert not torch.equal(_ctx(_init_file(phase1)), final)
    assert not osp.exists(osp.join(phase1, "sample_bank"))  # BURN_IN > MAX_EPOCH: no sampling in phase 1


def test_phase2_starts_from_phase1_prompt(lt_root, phase1, tmp_path):
    """Phase 2 loads the phase-1 prompt bit for bit, starts at its epoch index, and takes lr / weight decay from
    OPTIM unless the literal INIT_LOAD_OPTIM switch is on; noise starts at BURN_IN + 1."""
    trainer = build_trainer_in_process(train_args(lt_root, str(tmp_path / "a"), 2, init_from=_init_file(phase1)))
    trainer.before_train()
    trainer.close_writer()
    assert trainer.start_epoch == START
    # Noise only on the prompt: the optimizer holds ctx and nothing else is trainable.
    assert [n for n, p in trainer.model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]
    assert [p for g in trainer.optim.param_groups for p in g["params"]] == [trainer.prompt_learner.ctx]
    assert torch.equal(trainer.prompt_learner.ctx.detach(), _ctx(_init_file(phase1)))
    schedule = {}
    for trainer.epoch in (START, 6, 7, 8, 11):
        trainer.before_epoch()
        group = trainer.optim.param_groups[0]
        schedule[trainer.epoch] = (group["lr"], group["noise_mode"], group["weight_decay"])
    assert schedule == {4: (0.05, "none", 1e-9), 6: (0.05, "none", 1e-9), 7: (pytest.approx(0.005), "none", 1e-9),
                        8: (pytest.approx(0.005), "sgld_temp", 1e-9), 11: (pytest.approx(0.005), "sgld_temp", 1e-9)}
    # The literal switch: the checkpoint's optimizer hyper-parameters override OPTIM.LR / WEIGHT_DECAY.
    ckpt = torch.load(_init_file(phase1), weights_only=True)
    ckpt["optim_hparams"] = {"initial_lr": 0.3, "lr": 0.3, "weight_decay": 0.01}
    torch.save(ckpt, tmp_path / "ckpt.pth")
    literal = build_trainer_in_process(train_args(lt_root, str(tmp_path / "b"), 2, init_from=str(tmp_path / "ckpt.pth"),
                                                  opts=["TRAINER.LANGEVINCOOP.INIT_LOAD_OPTIM", "True"]))
    literal.before_train()
    literal.close_writer()
    literal.epoch = START
    literal.before_epoch()
    assert (literal.optim.param_groups[0]["lr"], literal.optim.param_groups[0]["weight_decay"]) == (0.3, 0.01)


def _reference_prompt_file(phase1: str, path: str, with_namespace: bool) -> torch.Tensor:
    """A prompt file in the reference's layout (prp_epoch_<E>.pth) holding our phase-1 prompt; return its ctx."""
    state = torch.load(_init_file(phase1), weights_only=True)["state_dict"]
    learner = {"ctx": state["ctx"], "token_prefix": torch.zeros(4, 1, 8), "token_suffix": torch.zeros(4, 3, 8)}
    ckpt = {"prompt_learner_state": learner, "at_epoch": START, "loss": torch.tensor(1.5),
            "optim_prompt_state_dict": {"state": {}, "param_groups": [
                {"lr": 0.05, "weight_decay": 1e-9, "initial_lr": 0.2, "params": [0]}]}}
    if with_namespace:
        ckpt["config"] = argparse.Namespace(lr_prompt=0.05)  # what the reference stores: refused when loading
    torch.save(ckpt, path)
    return state["ctx"]


def test_reference_prompt_file_starts_phase_2(lt_root, phase1, tmp_path, capsys):
    """A reference prp_epoch_<E>.pth re-saved without its argparse Namespace starts phase 2 at epoch E (its
    class-name buffers dropped, INIT_LOAD_OPTIM reading initial_lr from its optimizer state); the original file
    is refused in one line naming it."""
    ctx = _reference_prompt_file(phase1, str(tmp_path / "prp_epoch_4.pth"), with_namespace=False)
    trainer = build_trainer_in_process(train_args(lt_root, str(tmp_path / "a"), 2, init_from=str(
        tmp_path / "prp_epoch_4.pth"), opts=["TRAINER.LANGEVINCOOP.INIT_LOAD_OPTIM", "True"]))
    trainer.before_train()
    trainer.close_writer()
    assert trainer.start_epoch == START and (trainer.base_lr, trainer.weight_decay) == (0.2, 1e-9)
    assert torch.equal(trainer.prompt_learner.ctx.detach(), ctx)
    _reference_prompt_file(phase1, str(tmp_path / "raw.pth"), with_namespace=True)
    assert run_train(train_args(lt_root, str(tmp_path / "b"), 2, init_from=str(tmp_path / "raw.pth"))) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "raw.pth" in err[0] and "argparse.Namespace" in err[0], err


def test_bank_holds_the_last_k_samples(phase2):
    """Epoch indices 9, 10, 11 on disk (older files pruned after the last checkpoint), the newest equal to the
    final weights, all distinct; training resumed at epoch index 4 (trained again, as the reference)."""
    bank_dir = osp.join(phase2, "sample_bank")
    expected = [f"sample_epoch_{e:05d}.pth" for e in range(PHASE2_EPOCHS - K, PHASE2_EPOCHS)]
    assert sorted(os.listdir(bank_dir)) == expected
    samples = [torch.load(osp.join(bank_dir, f), weights_only=True) for f in sorted(os.listdir(bank_dir))]
    assert [s["epoch"] for s in samples] == [9, 10, 11]
    final = _ctx(osp.join(phase2, "prompt_learner", f"model.pth.tar-{PHASE2_EPOCHS}"))
    assert torch.equal(samples[-1]["state_dict"]["ctx"], final)
    assert not torch.equal(samples[0]["state_dict"]["ctx"], samples[1]["state_dict"]["ctx"])
    log = _log_text(phase2)
    assert re.search(r"^epoch \[(\d+)/12\]", log, re.M).group(1) == str(START + 1)
    assert "=> ensemble result (3 samples, epoch indices 9-11)" in log
    assert len(_log_values(phase2, "hard_vote_accuracy")) == 1


class Killed(RuntimeError):
    pass


def test_killed_phase2_resumes_with_the_same_bank(lt_root, phase1, phase2, tmp_path, monkeypatch):
    """Kill during epoch index 11 (last checkpoint after 8, sample 7 already evicted from the window), resume:
    the bank and the final prompt equal the uninterrupted run's, bit for bit."""
    out = str(tmp_path / "killed")
    original = LangevinCoOp.run_epoch

    def run_epoch_or_die(self):
        if self.epoch == 11:
            raise Killed
        original(self)

    monkeypatch.setattr(LangevinCoOp, "run_epoch", run_epoch_or_die)
    with pytest.raises(Killed):
        run_train(train_args(lt_root, out, phase=2, init_from=_init_file(phase1)))
    monkeypatch.undo()
    bank_dir = osp.join(out, "sample_bank")
    assert sorted(os.listdir(bank_dir)) == [f"sample_epoch_{e:05d}.pth" for e in (7, 8, 9, 10)]
    assert run_train(train_args(lt_root, out, phase=2, init_from=_init_file(phase1))) == 0
    assert "Previous epoch: 9" in _log_text(out)
    assert sorted(os.listdir(bank_dir)) == sorted(os.listdir(osp.join(phase2, "sample_bank")))
    for name in os.listdir(bank_dir):
        assert torch.equal(_ctx(osp.join(bank_dir, name)), _ctx(osp.join(phase2, "sample_bank", name))), name
    assert _log_values(out, "hard_vote_accuracy") == _log_values(phase2, "hard_vote_accuracy")


def _reference_vote(trainer, states):
    """The reference's ensemble: per sample, load it and run the whole test set through the full model; then
    per-class vote counts and their first maximum.  Returns the voted labels and the test labels."""
    votes = []
    for state in states:
        trainer.prompt_learner.load_state_dict(state)
        with torch.no_grad():
            votes.append(torch.cat([trainer.model(b["img"]).argmax(1) for b in trainer.test_loader]))
    labels = torch.cat([b["label"] for b in trainer.test_loader])
    votes = torch.stack(votes)  # (K, N)
    final = []
    for column in votes.t().tolist():
        counts = [column.count(c) for c in range(trainer.num_classes)]
        final.append(counts.index(max(counts)))  # first maximum: lowest class index
    return torch.tensor(final), labels


def _reference_vote_accuracy(trainer, states) -> float:
    final, labels = _reference_vote(trainer, states)
    return 100.0 * (final == labels).double().mean().item()


@pytest.mark.parametrize("k", [1, 6])
def test_ensemble_encodes_each_test_image_once(lt_root, phase2, tmp_path, k):
    """With a bank of k samples the image encoder sees each of the N test images exactly once and the text
    encoder runs k + 1 times; every test image is scored; the vote equals the reference's K-pass vote."""
    trainer = build_trainer_in_process(train_args(lt_root, str(tmp_path), 2, opts=[
        "TRAINER.LANGEVINCOOP.MAX_SAMPLES", str(k), "TRAINER.LANGEVINCOOP.BURN_IN", "0",
        "TRAINER.LANGEVINCOOP.ONE_MODEL_LAST_BATCH", "True"]))
    trainer.load_model(phase2, epoch=PHASE2_EPOCHS)
    trainer.bank = SampleBank(str(tmp_path / "bank"), k)  # k samples around the final prompt
    base = trainer.prompt_learner.ctx.detach().clone()
    g = torch.Generator().manual_seed(k)
    for epoch in range(k):
        trainer.bank.add(epoch, {"ctx": base + 0.05 * torch.randn(base.shape, generator=g)})
    images, text_calls = [], []
    hooks = [trainer.model.image_encoder.register_forward_hook(lambda m, i, o: images.append(i[0].shape[0])),
             trainer.model.text_encoder.register_forward_hook(lambda m, i, o: text_calls.append(1))]
    trainer.test()
    assert sum(images) == N_TEST == len(trainer.dm.dataset.test)
    assert len(text_calls) == k + 1
    results = trainer.last_results
    assert results["one_model"]["total"] == N_TEST and results["ensemble"]["total"] == N_TEST
    assert results["ensemble"]["num_samples"] == k and len(results["ensemble"]["curve"]) == k
    assert torch.equal(trainer.prompt_learner.ctx.detach(), base)  # the current prompt is restored
    trainer.test()  # a later evaluation in the same run reuses the features
    assert sum(images) == N_TEST
    for hook in hooks:
        hook.remove()
    states = [s for _, s in trainer.bank.items()]
    assert results["ensemble"]["hard_vote_accuracy"] == pytest.approx(_reference_vote_accuracy(trainer, states))


def test_eval_only_reproduces_the_final_results(lt_root, phase2, tmp_path):
    """--eval-only --model-dir --load-epoch re-reads the bank from disk: same one-model and vote accuracies."""
    out = str(tmp_path / "eval")
    extra = ["--eval-only", "--model-dir", phase2, "--load-epoch", str(PHASE2_EPOCHS)]
    assert run_train(train_args(lt_root, out, 2, extra=extra)) == 0
    assert "* total: 40" in _log_text(out)
    assert _log_values(out, "accuracy")[-1:] == _log_values(phase2, "accuracy")[-1:]
    assert _log_values(out, "hard_vote_accuracy") == _log_values(phase2, "hard_vote_accuracy")


def test_loss_is_logit_adjusted_and_learns(lt_root, tmp_path):
    """compute_loss = CE(logits + log(pi + 1e-12)) with pi the long-tailed training frequencies, and 60
    noise-free steps on one batch cut it by more than half."""
    trainer = build_trainer_in_process(train_args(lt_root, str(tmp_path), 1, opts=["OPTIM.LR", "0.01"]))
    assert trainer.dm.dataset.cls_num_list == [40, 18, 8, 4]
    batch = next(iter(trainer.train_loader_x))
    image, label = batch["img"], batch["label"]
    trainer.set_model_mode("train")
    logits = trainer.model(image)
    prior = torch.log(torch.tensor([40, 18, 8, 4], dtype=torch.float64) / 70 + 1e-12).float()
    first = trainer.compute_loss(logits, label)
    torch.testing.assert_close(first, F.cross_entropy(logits + prior, label))
    for _ in range(60):
        loss = trainer.compute_loss(trainer.model(image), label)
        trainer.model_backward_and_update(loss)
    assert loss.item() < 0.5 * first.item(), (first.item(), loss.item())


def test_reference_numerics_switch(lt_root, tmp_path):
    """REFERENCE_NUMERICS: the logit adjustment is added in float64 (the loss is float64 and equals the formula in
    float64) and the text tower rounds through fp16, so the text features differ slightly from the default's."""
    literal = build_trainer_in_process(train_args(lt_root, str(tmp_path / "a"), 1, opts=[
        "TRAINER.LANGEVINCOOP.REFERENCE_NUMERICS", "True"]))
    default = build_trainer_in_process(train_args(lt_root, str(tmp_path / "b"), 1))
    batch = next(iter(literal.train_loader_x))
    with torch.no_grad():
        logits = literal.model(batch["img"])
        loss = literal.compute_loss(logits, batch["label"])
        prior = torch.log(torch.tensor([40, 18, 8, 4], dtype=torch.float64) / 70 + 1e-12)
        assert loss.dtype == torch.float64
        torch.testing.assert_close(loss, F.cross_entropy(logits.double() + prior, batch["label"]))
        assert torch.equal(literal.prompt_learner.ctx, default.prompt_learner.ctx)  # same seed, same init
        diff = (literal.model.encode_text() - default.model.encode_text()).abs().max().item()
    assert 0 < diff < 1e-2, diff


@pytest.mark.parametrize("opts,match", [
    (["TRAINER.LANGEVINCOOP.NOISE_MODE", "langevin"], "TRAINER.LANGEVINCOOP.NOISE_MODE"),
    (["OPTIM.NAME", "adam"], "OPTIM.NAME"),
    (["TRAINER.LANGEVINCOOP.BURN_IN", "10"], "MAX_SAMPLES"),
    (["TRAINER.LANGEVINCOOP.INIT_FROM", "/nonexistent/prompt.pth"], "INIT_FROM"),
])
def test_bad_config_fails_in_one_line(lt_root, tmp_path, capsys, opts, match):
    assert run_train(train_args(lt_root, str(tmp_path), 2, opts=opts)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


# ---------------------------------------------------------------------------------------------- tensorboard
def _scalars(out: str) -> dict:
    """Every scalar of a run folder's event files: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(osp.join(out, "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _reference_shot_acc(pred: np.ndarray, labels: np.ndarray, train_counts) -> tuple:
    """The reference's shot_acc: over the classes present in ``labels``, per-class accuracy averaged within
    many (>= 100 training images) / median (<= 20 is few) / few; numpy's mean of nothing is NaN."""
    many, median, few = [], [], []
    for c in np.unique(labels):
        acc = (pred[labels == c] == c).sum() / (labels == c).sum()
        (many if train_counts[c] >= 100 else few if train_counts[c] <= 20 else median).append(acc)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.mean(many), np.mean(median), np.mean(few)


def _close(value: float, expected: float) -> bool:
    return (math.isnan(value) and math.isnan(expected)) or abs(value - expected) < 1e-6


def test_default_run_writes_our_tags_in_percent(phase2):
    """Default: OneModel/test_acc, .../test_acc_medium, AllModel/..., in percent; no reference tag; an empty
    group (no many-shot class here) gets no scalar."""
    scalars = _scalars(phase2)
    final_step = PHASE2_EPOCHS - 1
    for tag in ("OneModel/test_acc", "OneModel/test_acc_medium", "OneModel/test_acc_few", "AllModel/test_acc",
                "AllModel/test_acc_medium", "AllModel/test_acc_few", "AllModel/test_acc_soft",
                "OneModel/train_loss_main", "OneModel/train_acc", "lr/lr_prompt"):
        assert scalars[tag][-1][0] == final_step, tag
    assert not [t for t in scalars if "Acc@1" in t or "median" in t or t.startswith("All Model/")]
    assert "OneModel/test_acc_many" not in scalars and "AllModel/test_acc_many" not in scalars
    for tag, keyword in (("OneModel/test_acc", "accuracy"), ("OneModel/test_acc_medium", "medium_accuracy"),
                         ("AllModel/test_acc", "hard_vote_accuracy")):
        assert abs(scalars[tag][-1][1] - _log_values(phase2, keyword)[-1]) <= 0.05 + 1e-6, tag  # percent
    assert len(scalars[f"AllModel/test_acc_vs_num_samples/epoch_{PHASE2_EPOCHS}"]) == K
    assert [v for _, v in scalars["lr/lr_prompt"]] == pytest.approx([0.05] * 3 + [0.005] * 5)


@pytest.fixture(scope="module")
def literal_phase2(lt_root, phase1, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("literal"))
    opts = ["TRAINER.LANGEVINCOOP.ONE_MODEL_LAST_BATCH", "True"]
    assert run_train(train_args(lt_root, out, phase=2, init_from=_init_file(phase1), opts=opts)) == 0
    return out


def test_literal_run_writes_the_reference_tags_as_fractions(lt_root, literal_phase2, tmp_path):
    """ONE_MODEL_LAST_BATCH: the reference's tags (OneModel/test_Acc@1, OneModel/test_acc_median,
    "All Model/test_acc_*") hold the reference's figures as fractions: the one-model ones over the last test
    batch only (8 of 40 images), recomputed here batch by batch with the reference's shot_acc; the ensemble's
    over the whole test set.  None of our tags is written."""
    scalars = _scalars(literal_phase2)
    reference_tags = {"OneModel/test_Acc@1", "OneModel/test_acc_many", "OneModel/test_acc_median",
                      "OneModel/test_acc_few", "AllModel/test_Acc@1", "All Model/test_acc_many",
                      "All Model/test_acc_median", "All Model/test_acc_few", "OneModel/train_loss_main",
                      "lr/lr_prompt"}
    assert reference_tags <= set(scalars)
    ours = [t for t in scalars if t.startswith(("OneModel/", "AllModel/", "All Model/")) and t not in reference_tags]
    assert not ours, ours

    trainer = build_trainer_in_process(train_args(lt_root, str(tmp_path), 2))
    trainer.load_model(literal_phase2, epoch=PHASE2_EPOCHS)
    trainer.set_model_mode("eval")
    with torch.no_grad():
        for batch in trainer.test_loader:  # the reference resets its accumulators in this loop
            pred, labels = trainer.model(batch["img"]).argmax(1).numpy(), batch["label"].numpy()
    assert len(labels) == 8
    counts = trainer.dm.dataset.cls_num_list
    expected = {"OneModel/test_Acc@1": (pred == labels).mean()}
    groups = _reference_shot_acc(pred, labels, counts)
    expected.update(zip(("OneModel/test_acc_many", "OneModel/test_acc_median", "OneModel/test_acc_few"), groups))
    states = [torch.load(osp.join(literal_phase2, "sample_bank", f), weights_only=True)["state_dict"]
              for f in sorted(os.listdir(osp.join(literal_phase2, "sample_bank")))]
    voted, test_labels = _reference_vote(trainer, states)
    expected["AllModel/test_Acc@1"] = (voted == test_labels).double().mean().item()
    groups = _reference_shot_acc(voted.numpy(), test_labels.numpy(), counts)
    expected.update(zip(("All Model/test_acc_many", "All Model/test_acc_median", "All Model/test_acc_few"), groups))
    assert math.isnan(expected["OneModel/test_acc_many"])  # no many-shot class: the reference logs NaN
    for tag, value in expected.items():
        step, logged = scalars[tag][-1]
        assert step == PHASE2_EPOCHS - 1 and _close(logged, float(value)), (tag, logged, value)
    log = _log_text(literal_phase2)
    assert f"* last_batch_accuracy: {100 * expected['OneModel/test_Acc@1']:.1f}% (8 images" in log
    assert f"* last_batch_medium_accuracy: {100 * expected['OneModel/test_acc_median']:.1f}%" in log

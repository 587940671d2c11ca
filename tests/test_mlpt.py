"""MLPT's pieces (``trainers/mlpt.py``, docs/methods/mlpt.md): the GMM co-divide, the refined and co-guessed
targets against their formulas recomputed here by hand, the losses, the oracle split and its own random source,
and on a tiny random CLIP the summed-logit test, the one-text-pass step against the reference's six-pass step,
the empty-split guards, checkpoints of both branches, ``--eval-only`` and ``parse_test_res.py``.  Under torchrun
MLPT is checked by ``tests/test_registry_ddp.py``.
"""
from __future__ import annotations

import logging
import math
import os.path as osp
import random
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from vlprompt.trainers.mlpt import (
    BRANCHES,
    clean_probability,
    co_guessed_targets,
    divide,
    gce_loss,
    probability_mse,
    refined_targets,
    sharpen,
    soft_cross_entropy,
    split_rng,
)

from helpers import build, build_cfg
from helpers import REPO_ROOT, last_accuracy, run_train

TINY_CONFIG = "configs/trainers/MLPT/tiny_vit_ctx4_csc_ep40.yaml"
SYNTHETIC_YAML = osp.join(REPO_ROOT, "configs", "datasets", "synthetic.yaml")


# ----------------------------------------------------------------------------- GMM co-divide


def test_gmm_clean_probability_separates_two_loss_groups():
    rng = np.random.RandomState(0)
    clean = rng.normal(0.3, 0.1, size=120).clip(0)  # small CE: clean labels
    noisy = rng.normal(2.5, 0.5, size=80)  # large CE: noisy labels
    losses = np.concatenate([clean, noisy])
    is_clean = np.r_[np.ones(120), np.zeros(80)]
    np.random.seed(0)  # the GMM's k-means init uses NumPy's global RNG, as the reference
    prob = clean_probability(losses)
    assert roc_auc_score(is_clean, prob) > 0.95
    assert ((prob > 0.5) == is_clean).mean() > 0.95  # the threshold split is right as well
    assert prob.shape == (200,) and np.all((0 <= prob) & (prob <= 1))


@pytest.mark.parametrize("losses", [np.full(50, 1.7), np.zeros(3), np.array([2.0]), np.full(10, 1.0) + 1e-15])
def test_gmm_degenerate_losses_are_all_clean(losses):
    prob = clean_probability(losses)
    np.testing.assert_array_equal(prob, np.ones(len(losses)))


# ----------------------------------------------------------------------------- targets and losses


def _sharpen_by_hand(row, temperature):
    powered = [v ** (1 / temperature) for v in row]
    return [v / sum(powered) for v in powered]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 0.25])
def test_refined_targets_match_the_formula(temperature):
    probs = [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.7, 0.2]]
    weights, labels = [0.9, 0.2, 0.0], [0, 1, 2]
    expected = []
    for p, w, y in zip(probs, weights, labels):
        refined = [w * (1.0 if c == y else 0.0) + (1 - w) * p[c] for c in range(3)]
        expected.append(_sharpen_by_hand(refined, temperature))
    got = refined_targets(torch.tensor(weights, dtype=torch.float64), torch.tensor(labels),
                          torch.tensor(probs, dtype=torch.float64), temperature)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    if temperature == 0.5:  # one value by hand: row 0 refines to [0.96, 0.03, 0.01], squared and renormalised
        assert got[0, 0].item() == pytest.approx(0.9216 / (0.9216 + 0.0009 + 0.0001), abs=1e-9)


def test_co_guessed_targets_match_the_formula():
    p_a = [[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]
    p_b = [[0.3, 0.45, 0.25], [0.3, 0.3, 0.4]]
    expected = [_sharpen_by_hand([(a + b) / 2 for a, b in zip(ra, rb)], 0.5) for ra, rb in zip(p_a, p_b)]
    got = co_guessed_targets(torch.tensor(p_a, dtype=torch.float64), torch.tensor(p_b, dtype=torch.float64), 0.5)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    # by hand: the mean is [0.4, 0.35, 0.25]; squared [0.16, 0.1225, 0.0625], sum 0.345
    assert got[0].tolist() == pytest.approx([0.16 / 0.345, 0.1225 / 0.345, 0.0625 / 0.345])


def test_losses_match_their_formulas():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    targets = torch.softmax(torch.randn(4, 5, generator=gen, dtype=torch.float64), -1)
    labels = torch.tensor([0, 3, 4, 1])
    probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits.tolist()]
    soft_ce = -sum(t * math.log(p) for prow, trow in zip(probs, targets.tolist()) for p, t in zip(prow, trow)) / 4
    mse = sum((p - t) ** 2 for prow, trow in zip(probs, targets.tolist()) for p, t in zip(prow, trow)) / 20
    gce = sum((1 - (probs[i][y] + 1e-6) ** 0.5) / 0.5 for i, y in enumerate(labels.tolist())) / 4
    assert soft_cross_entropy(logits, targets).item() == pytest.approx(soft_ce, rel=1e-12)
    assert probability_mse(logits, targets).item() == pytest.approx(mse, rel=1e-12)
    assert gce_loss(logits, labels, 0.5).item() == pytest.approx(gce, rel=1e-12)
    onehot = F.one_hot(labels, 5).double()
    assert soft_cross_entropy(logits, onehot).item() == pytest.approx(F.cross_entropy(logits, labels).item())


def test_sharpen_keeps_argmax_and_normalises():
    p = torch.tensor([[0.4, 0.35, 0.25]])
    s = sharpen(p, 0.5)
    assert s.sum().item() == pytest.approx(1.0) and s[0, 0] > p[0, 0] and s.argmax() == 0


# ----------------------------------------------------------------------------- oracle split


def test_oracle_split_sizes_per_class():
    labels = np.repeat(np.arange(4), 16)  # 4 classes x 16 shots
    pred_clean = np.zeros(64, dtype=bool)
    for c in range(4):
        pred_clean[c * 16: c * 16 + 10 + c] = True  # 10, 11, 12, 13 predicted clean
    labelled, unlabelled = divide(pred_clean, labels, num_clean=12, num_noisy=4, oracle=True, rng=random.Random(0))
    assert Counter(labels[labelled].tolist()) == {0: 10, 1: 11, 2: 12, 3: 12}  # S - F = 12, fewer kept whole
    assert Counter(labels[unlabelled].tolist()) == {0: 4, 1: 4, 2: 4, 3: 3}
    assert pred_clean[labelled].all() and not pred_clean[unlabelled].any()
    assert len(set(labelled)) == len(labelled)  # no repeats
    # F = 0: the unlabelled set is every predicted-noisy sample (Dassl returns its input for num_shots < 1)
    _, unlabelled = divide(pred_clean, labels, num_clean=16, num_noisy=0, oracle=True, rng=random.Random(0))
    assert sorted(unlabelled) == np.flatnonzero(~pred_clean).tolist()
    labelled, unlabelled = divide(pred_clean, labels, num_clean=12, num_noisy=4, oracle=False, rng=random.Random(0))
    assert len(labelled) == 46 and len(unlabelled) == 18


def test_oracle_split_draws_depend_on_seed_epoch_and_branch_only():
    """The split's own RNG: the global stream (e.g. drawn by a first run's few-shot sampling) changes nothing."""
    labels = np.repeat(np.arange(4), 16)
    pred_clean = np.arange(64) % 3 != 0

    def split(seed, epoch, branch):
        return divide(pred_clean, labels, 10, 4, True, split_rng(seed, epoch, branch))

    random.seed(0)
    first = split(1, 3, BRANCHES[0])
    random.seed(123)
    random.random()
    assert split(1, 3, BRANCHES[0]) == first
    assert split(1, 4, BRANCHES[0]) != first and split(2, 3, BRANCHES[0]) != first
    assert split(1, 3, BRANCHES[1]) != first
    # the same draws as Dassl-style sampling with random.Random(f"mlpt-oracle-split-{seed}-{epoch}-{branch}")
    rng = random.Random(f"mlpt-oracle-split-1-3-{BRANCHES[0]}")
    clean = np.flatnonzero(pred_clean)
    expected = [i for c in range(4) for i in rng.sample([int(j) for j in clean if labels[j] == c], 10)]
    assert first[0] == expected


# ----------------------------------------------------------------------------- trainer on a tiny random CLIP


@pytest.fixture(scope="module")
def small_trainer(data_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mlpt_unit"))
    cfg = build_cfg("MLPT", TINY_CONFIG, out, data_root, backbone="tiny-vit",
                    opts=["DATASET.NUM_SHOTS", "4", "DATASET.NUM_FP", "2", "OPTIM.MAX_EPOCH", "2",
                          "TRAINER.MLPT.WARMUP_EPOCH", "1"])
    return build(cfg)


def _batch(trainer, n=8):
    return next(iter(torch.utils.data.DataLoader(trainer.pool_train, batch_size=n)))


def test_test_logits_are_the_sum_of_two_coop_branches(small_trainer):
    from vlprompt.trainers.common.prompt_clip import PromptCLIP

    model = small_trainer.model
    image = _batch(small_trainer)["img"]
    branches = [PromptCLIP(getattr(model, b), model.text_encoder, _ClipParts(model)) for b in BRANCHES]
    with torch.no_grad():
        expected = branches[0](image) + branches[1](image)
        torch.testing.assert_close(small_trainer.model_inference(image), expected)
        assert not torch.allclose(branches[0](image), branches[1](image))  # different random inits


class _ClipParts:
    """What PromptCLIP reads from a CLIP model, taken from MLPT's shared towers."""

    def __init__(self, model):
        self.visual, self.logit_scale = model.image_encoder, model.logit_scale


def test_one_text_pass_step_equals_reference_six_pass_step(small_trainer):
    """The co-divide step's gradient on ctx1 equals the reference's: three full forwards of each branch."""
    trainer, model = small_trainer, small_trainer.model
    batch_x, batch_u = _batch(trainer, 8), _batch(trainer, 6)
    weights = torch.rand(len(trainer.pool), generator=torch.Generator().manual_seed(1))

    def full(branch, image):  # the reference's CustomCLIP forward: image and text towers every call
        learner = getattr(model, branch)
        text = model.text_encoder(learner(), learner.tokenized_prompts)
        text = text / text.norm(dim=-1, keepdim=True)
        feat = model.image_encoder(image)
        feat = feat / feat.norm(dim=-1, keepdim=True)
        return model.logit_scale.exp() * feat @ text.t()

    x, y, u = batch_x["img"], batch_x["label"], batch_u["img"]
    with torch.no_grad():
        p_x = (full(BRANCHES[0], x).softmax(1) + full(BRANCHES[1], x).softmax(1)) / 2
        w = weights[batch_x["index"]].unsqueeze(1)
        r = w * F.one_hot(y, p_x.shape[1]) + (1 - w) * p_x
        t_x = r ** 2 / (r ** 2).sum(1, keepdim=True)
        p_u = (full(BRANCHES[0], u).softmax(1) + full(BRANCHES[1], u).softmax(1)) / 2
        t_u = p_u ** 2 / (p_u ** 2).sum(1, keepdim=True)
    ctx = model.prompt_learner1.ctx
    loss = -(t_x * full(BRANCHES[0], x).log_softmax(1)).sum(1).mean() + \
        ((full(BRANCHES[0], u).softmax(1) - t_u) ** 2).mean()
    expected_grad = torch.autograd.grad(loss, ctx)[0]

    captured = {}
    before = {b: getattr(model, b).ctx.detach().clone() for b in BRANCHES}
    original = trainer.backward_and_update
    trainer.backward_and_update = lambda loss, names: captured.update(
        loss=loss.item(), names=names, grad=torch.autograd.grad(loss, getattr(model, names[0]).ctx)[0])
    try:
        summary = trainer.codivide_step(BRANCHES[0], batch_x, BRANCHES[1], weights, iter([batch_u]))
    finally:
        trainer.backward_and_update = original
    assert captured["names"] == [BRANCHES[0]]
    assert captured["loss"] == pytest.approx(loss.item(), rel=1e-5)
    scale = expected_grad.abs().max().item()  # float32 sums in another order: compare at the gradient's scale
    torch.testing.assert_close(captured["grad"], expected_grad, rtol=1e-4, atol=1e-4 * scale)
    assert summary["loss1"] == pytest.approx(loss.item(), rel=1e-5)
    for b in BRANCHES:
        torch.testing.assert_close(getattr(model, b).ctx.detach(), before[b])


def test_empty_splits_are_guarded(small_trainer, caplog):
    trainer = small_trainer
    trainer.epoch = 1
    n = len(trainer.pool)
    before = trainer.model.prompt_learner1.ctx.detach().clone()
    with caplog.at_level(logging.WARNING, logger="vlprompt.trainers.mlpt"):
        trainer.run_loader(trainer.division_pass(BRANCHES[0], BRANCHES[1], np.zeros(n)))  # nothing clean: warm-up
    assert "predicts no clean sample" in caplog.text
    assert not torch.equal(before, trainer.model.prompt_learner1.ctx.detach())
    seen = []
    original = trainer.codivide_step
    trainer.codivide_step = lambda *args: seen.append(args[-1]) or original(*args)
    try:
        trainer.run_loader(trainer.division_pass(BRANCHES[1], BRANCHES[0], np.ones(n)))  # all clean: no unlabelled
    finally:
        trainer.codivide_step = original
    assert seen and all(it is None for it in seen)


def test_checkpoints_eval_only_and_parse_test_res(data_root, tmp_path):
    exp = tmp_path / "synthetic" / "MLPT" / "tiny_4shots" / "4shots_2noise"
    out = str(exp / "seed1")
    common = ["--root", data_root, "--seed", "1", "--trainer", "MLPT", "--dataset-config-file", SYNTHETIC_YAML,
              "--config-file", osp.join(REPO_ROOT, TINY_CONFIG)]
    opts = ["MODEL.BACKBONE.NAME", "tiny-vit", "DATASET.NUM_SHOTS", "4", "DATASET.NUM_FP", "2", "OPTIM.MAX_EPOCH", "2",
            "TRAINER.MLPT.WARMUP_EPOCH", "1", "TRAINER.MLPT.LOSS_DUMP_FREQ", "2"]
    assert run_train(common + ["--output-dir", out] + opts) == 0
    for branch in BRANCHES:
        assert osp.isfile(osp.join(out, branch, "model.pth.tar-2"))
    log = open(osp.join(out, "log.txt")).read()
    assert re.search(r"co-divide \[prompt_learner1\]: \d+/40 predicted clean; flagged \d+/20 noisy labels", log)
    header = open(osp.join(out, "ClipLoss", "clip_2.csv")).readline().strip()
    assert header == "clip1_loss,clip1_prob,clip2_loss,clip2_prob,label,true_label"
    trained_acc = last_accuracy(osp.join(out, "log.txt"))

    eval_dir = str(tmp_path / "eval")
    assert run_train(common + ["--output-dir", eval_dir, "--eval-only", "--model-dir", out, "--load-epoch", "2"]
                     + opts) == 0
    assert last_accuracy(osp.join(eval_dir, "log.txt")) == trained_acc

    result = subprocess.run([sys.executable, osp.join(REPO_ROOT, "parse_test_res.py"), str(exp)],
                            capture_output=True, text=True, check=True)
    assert f"* accuracy: {trained_acc:.2f}% +- 0.00%" in result.stdout


@pytest.mark.parametrize("opts, match", [
    (["DATASET.NUM_SHOTS", "4", "DATASET.NUM_FP", "4"], "DATASET.NUM_FP=4 must be < DATASET.NUM_SHOTS=4"),
    (["TRAINER.MLPT.THRESHOLD", "1.0"], "TRAINER.MLPT.THRESHOLD=1.0"),
    (["TRAINER.MLPT.WARMUP_EPOCH", "41"], "TRAINER.MLPT.WARMUP_EPOCH=41"),
    (["TRAINER.MLPT.TEM", "0.0"], "TEM=0.0 must be > 0"),
])
def test_bad_config_fails_in_check_cfg_with_the_key(data_root, tmp_path, opts, match):
    cfg = build_cfg("MLPT", TINY_CONFIG, str(tmp_path), data_root, backbone="tiny-vit", opts=opts)
    with pytest.raises(ValueError, match=re.escape(match)):
        build(cfg)


def test_resume_through_codivide_is_bit_identical(data_root, tmp_path):
    """Roll a finished run back to its epoch-2 checkpoint and resume: same weights (GMM RNG restored)."""
    import shutil

    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    argv = ["--root", data_root, "--seed", "1", "--trainer", "MLPT", "--dataset-config-file", SYNTHETIC_YAML,
            "--config-file", osp.join(REPO_ROOT, TINY_CONFIG)]
    opts = ["MODEL.BACKBONE.NAME", "tiny-vit", "DATASET.NUM_SHOTS", "4", "DATASET.NUM_FP", "2", "OPTIM.MAX_EPOCH", "4",
            "TRAINER.MLPT.WARMUP_EPOCH", "1", "TRAIN.CHECKPOINT_FREQ", "1"]
    assert run_train(argv + ["--output-dir", full] + opts) == 0
    for branch in BRANCHES:
        shutil.copytree(osp.join(full, branch), osp.join(resumed, branch),
                        ignore=shutil.ignore_patterns("model.pth.tar-3", "model.pth.tar-4"))
        with open(osp.join(resumed, branch, "checkpoint"), "w") as f:
            f.write("model.pth.tar-2\n")
    assert run_train(argv + ["--output-dir", resumed] + opts) == 0
    assert "Previous epoch: 2" in open(osp.join(resumed, "log.txt")).read()
    for branch in BRANCHES:
        a, b = (torch.load(osp.join(d, branch, "model.pth.tar-4"), weights_only=False)["state_dict"]["ctx"]
                for d in (full, resumed))
        assert torch.equal(a, b), branch
    assert last_accuracy(osp.join(resumed, "log.txt")) == last_accuracy(osp.join(full, "log.txt"))


@pytest.mark.parametrize("robust", [False, True])
def test_warmup_step_uses_ce_or_gce_on_one_branch(data_root, tmp_path, robust):
    cfg = build_cfg("MLPT", TINY_CONFIG, str(tmp_path), data_root, backbone="tiny-vit",
                    opts=["DATASET.NUM_SHOTS", "4", "TRAINER.MLPT.USE_ROBUSTLOSS", str(robust)])
    trainer = build(cfg)
    batch = _batch(trainer, 8)
    model = trainer.model
    with torch.no_grad():
        logits = model.logits(model.encode_image(batch["img"]), model.encode_text(BRANCHES[1]))
    p_y = logits.softmax(1).gather(1, batch["label"].unsqueeze(1)).squeeze(1)
    expected = ((1 - (p_y + 1e-6) ** 0.5) / 0.5).mean() if robust else -p_y.log().mean()
    captured = {}
    trainer.backward_and_update = lambda loss, names: captured.update(loss=loss.item(), names=names)
    summary = trainer.warmup_step(BRANCHES[1], batch)
    assert captured == {"loss": pytest.approx(expected.item(), rel=1e-5), "names": [BRANCHES[1]]}
    assert set(summary) == {"loss2", "acc2"}

"""LinearProbeCLIP (trainers/linear_probe.py) against CoOp's lpclip (KaiyangZhou/CoOp@ff61507 lpclip/linear_probe.py).

- The probe's logits are scikit-learn's decision function (multi-class) or its sigmoid split in two (binary).
- The C search picks what lpclip's own loop picks: its 7-value grid, then 8 bisection steps, each fitting both
  ends and moving towards the better one (ties to the left), kept here as the reference and run on real fits.
- On the Synthetic base classes with the pre-trained tiny CLIP it beats zero-shot CLIP, and ``--eval-only`` on
  its checkpoint gives the same accuracy without refitting.
- ``L2_NORMALIZE False`` fits on the image tower's raw output, cached under its own key.
"""
from __future__ import annotations

import os.path as osp

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from helpers import build, build_cfg, eval_only, last_accuracy, run_train, train_argv
from vlprompt.trainers.linear_probe import (INITIAL_C_GRID, LogisticFits, LogisticHead, bisect_regularisation,
                                            classifier_weights)

CONFIG = "configs/trainers/LinearProbeCLIP/tiny_vit.yaml"
BASE = ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base"]


def _blobs(n_cls: int, per_class: int, dim: int, seed: int, spread: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian blobs: a problem where C matters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_cls, dim))
    y = np.repeat(np.arange(n_cls), per_class)
    return centres[y] + spread * rng.normal(size=(len(y), dim)), y


def _lpclip_search(train_x, train_y, val_x, val_y, num_step: int = 8):
    """lpclip/linear_probe.py's search, as written there (a fit per call, nothing remembered)."""
    def fit(c):
        return LogisticRegression(solver="lbfgs", max_iter=1000, C=c).fit(train_x, train_y)

    search_list = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    acc_list = [sum(fit(c).predict(val_x) == val_y) / len(val_y) for c in search_list]
    c_peak = search_list[np.argmax(acc_list)]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    for _ in range(num_step):
        clf_left, clf_right = fit(c_left), fit(c_right)
        acc_left = sum(clf_left.predict(val_x) == val_y) / len(val_y)
        acc_right = sum(clf_right.predict(val_x) == val_y) / len(val_y)
        if acc_left < acc_right:
            c_final, clf_final = c_right, clf_right
            c_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_right = np.log10(c_right)
        else:
            c_final, clf_final = c_left, clf_left
            c_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_left = np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final, clf_final


@pytest.mark.parametrize("n_cls", [2, 5])
def test_logits_are_the_logistic_regression_decision(n_cls):
    """argmax = sklearn's predict; multi-class logits = decision_function; binary softmax = predict_proba."""
    x, y = _blobs(n_cls, 12, 6, seed=n_cls)
    clf = LogisticRegression(solver="lbfgs", max_iter=1000, C=0.7).fit(x, y)
    head = LogisticHead(6, n_cls)
    head.load_fit(*classifier_weights(clf, n_cls), reg_c=0.7)
    logits = head(torch.from_numpy(x).float())
    assert logits.dtype == torch.float64 and head.reg_c.item() == 0.7
    expected = x.astype(np.float32).astype(np.float64) @ clf.coef_.T + clf.intercept_  # (N, 1 or n_cls)
    if n_cls == 2:
        np.testing.assert_allclose((logits[:, 1] - logits[:, 0]).numpy(), expected[:, 0], rtol=0, atol=1e-9)
        np.testing.assert_allclose(torch.softmax(logits, 1)[:, 1].numpy(),
                                   clf.predict_proba(x.astype(np.float32))[:, 1], rtol=0, atol=1e-9)
    else:
        np.testing.assert_allclose(logits.numpy(), expected, rtol=0, atol=1e-9)
    assert np.array_equal(logits.argmax(1).numpy(), clf.predict(x.astype(np.float32)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_picks_what_lpclip_picks(seed):
    """Same C and the same fitted classifier as lpclip's loop, with each C fitted once instead of up to three times."""
    train_x, train_y = _blobs(4, 6, 5, seed=seed, spread=2.0)
    val_x, val_y = _blobs(4, 4, 5, seed=seed + 100, spread=2.0)
    fits = LogisticFits(train_x, train_y, val_x, val_y, max_iter=1000)
    chosen, tried = bisect_regularisation(fits.val_accuracy, INITIAL_C_GRID, 8)
    expected_c, expected_clf = _lpclip_search(train_x, train_y, val_x, val_y)
    assert chosen == expected_c
    assert len(tried) == 7 + 2 * 8 and len(fits.fits) < len(tried)  # bisection ends are revisited, not refitted
    np.testing.assert_array_equal(fits.fit(chosen).coef_, expected_clf.coef_)


def test_bisection_rules_on_a_known_curve():
    """The range shrinks towards the better end in log10 space; the last step's winner is kept."""
    def flat_then_peak(c):  # 0 below C = 100, then a peak at C = 10**3.3
        return 1.0 - min(1.0, abs(np.log10(c) - 3.3) / 10) if c >= 1e2 else 0.0

    chosen, tried = bisect_regularisation(flat_then_peak, INITIAL_C_GRID, 3)
    # grid: 1e6 -> 0.73, 1e4 -> 0.93, 1e2 -> 0.87: peak 1e4, range [1e3, 1e5]
    # step 1: 1e3 (0.97) vs 1e5 (0.83): left wins, range [1e3, 1e4]; step 2: 1e3 (0.97) vs 1e4 (0.93): left,
    # range [1e3, 10**3.5]; step 3: 1e3 (0.97) vs 10**3.5 (0.98): right wins
    assert [c for c, _ in tried[7:]] == pytest.approx([1e3, 1e5, 1e3, 1e4, 1e3, 10 ** 3.5])
    assert chosen == pytest.approx(10 ** 3.5)
    assert bisect_regularisation(flat_then_peak, INITIAL_C_GRID, 0)[0] == 1e4
    # ties: the grid's first best value (1e6 over 1e4) and, in a step, the left end
    assert bisect_regularisation(lambda c: 1.0, INITIAL_C_GRID, 1) == (1e5, [(c, 1.0) for c in INITIAL_C_GRID]
                                                                       + [(1e5, 1.0), (1e7, 1.0)])


def test_beats_zero_shot_and_eval_only_reloads_the_fit(data_root, pretrained_tiny_dir, tmp_path, monkeypatch):
    """16 shots of the 5 base classes: above zero-shot CLIP; --eval-only gives the same accuracy from the checkpoint."""
    monkeypatch.setenv("VLPROMPT_PRETRAINED_DIR", pretrained_tiny_dir)
    _, zero_shot = eval_only(build_cfg("ZeroshotCLIP", "configs/trainers/ZeroshotCLIP/tiny_vit.yaml",
                                       str(tmp_path / "zs"), data_root, opts=BASE))
    run = str(tmp_path / "run")
    assert run_train(train_argv("LinearProbeCLIP", CONFIG, data_root, run, opts=BASE)) == 0
    trained = last_accuracy(osp.join(run, "log.txt"))
    assert trained > zero_shot + 10, f"linear probe {trained:.1f}% vs zero-shot {zero_shot:.1f}%"
    log = open(osp.join(run, "log.txt")).read()
    assert "Step 8/8" in log and "Chosen C" in log

    out = str(tmp_path / "eval")
    argv = train_argv("LinearProbeCLIP", CONFIG, data_root, out, opts=BASE,
                      extra=["--eval-only", "--model-dir", run, "--load-epoch", "1"])
    assert run_train(argv) == 0
    assert last_accuracy(osp.join(out, "log.txt")) == trained
    assert "Chosen C" not in open(osp.join(out, "log.txt")).read()  # nothing refitted


def test_raw_features_switch_uses_the_tower_output_and_its_own_cache_key(data_root, tmp_path):
    """L2_NORMALIZE False: encode_image is the tower's output (norms != 1), cached apart from normalised features."""
    def trainer(normalize: bool):
        opts = ["DATASET.NUM_SHOTS", "4", "TRAINER.LINEARPROBECLIP.L2_NORMALIZE", str(normalize)]
        return build(build_cfg("LinearProbeCLIP", CONFIG, str(tmp_path / str(normalize)), data_root,
                               backbone="tiny-vit", opts=opts))

    raw, normalised = trainer(False), trainer(True)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tower = raw.model.image_encoder(images)
        torch.testing.assert_close(raw.model.encode_image(images), tower, rtol=0, atol=0)
        torch.testing.assert_close(normalised.model.encode_image(images), tower / tower.norm(dim=-1, keepdim=True))
    assert not torch.allclose(tower.norm(dim=-1), torch.ones(3))
    items = raw.dm.split_items["train_x"]
    assert raw.image_feature_key("train_x", items) == normalised.image_feature_key("train_x", items) + "-raw"

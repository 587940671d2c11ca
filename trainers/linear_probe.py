"""Linear-probe CLIP: logistic regression on frozen CLIP image features, as CoOp's few-shot baseline runs it.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", arXiv:2103.00020
(appendix A.3, the linear-probe protocol), as run by Zhou et al., "Learning to Prompt for Vision-Language
Models", arXiv:2109.01134.  Reference implementation: KaiyangZhou/CoOp@ff61507 ``lpclip/`` (feature extraction
and ``linear_probe.py``).

The few-shot training images and the validation images are encoded once by CLIP's frozen image tower (test
transform, no augmentation).  A scikit-learn ``LogisticRegression`` (L2, lbfgs, 1,000 iterations) is fitted on
the training features for each inverse regularisation strength ``C`` of a coarse grid, the best ``C`` on the
validation images seeds a log-space bisection of ``NUM_STEP`` steps, and the classifier of the last step's
winner is kept.  Its weights are checkpointed, so ``--eval-only`` reloads the probe without refitting.
Differences from the reference: docs/methods/linear_probe.md.
"""
from __future__ import annotations

import logging
import warnings
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY
from dassl.utils import broadcast_object, is_main_process

from .common.custom_clip import CustomCLIP, l2_normalize
from .common.frozen_features import FrozenFeatureTrainer

logger = logging.getLogger(__name__)

# lpclip's first sweep of the inverse regularisation strength C, in its order (ties go to the earlier value).
INITIAL_C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.LINEARPROBECLIP = CN()
    # Precision of the image tower that encodes the features: fp16 (lpclip: CLIP loaded on CUDA in half), fp32
    # or amp; fp16/amp fall back to fp32 on a CPU (warned).  The regression itself always runs in float64.
    cfg.TRAINER.LINEARPROBECLIP.PREC = "fp16"
    # Values of C tried first, in order; the best on val (the first one on ties) seeds the bisection
    cfg.TRAINER.LINEARPROBECLIP.C_GRID = INITIAL_C_GRID
    # Bisection steps in log10(C) after the grid (lpclip --num_step 8); 0 keeps the grid's best C
    cfg.TRAINER.LINEARPROBECLIP.NUM_STEP = 8
    # lbfgs iterations per fit (lpclip: max_iter=1000)
    cfg.TRAINER.LINEARPROBECLIP.MAX_ITER = 1000
    # True: L2-normalised image features (CLIP's encode_image, shared with every other trainer's feature cache);
    # False: the image tower's raw output, literally as lpclip's feat_extractor.py saves it (clip_model.visual)
    cfg.TRAINER.LINEARPROBECLIP.L2_NORMALIZE = True


# ---------------------------------------------------------------------------------------------- the C search
def bisect_regularisation(val_accuracy: Callable[[float], float], grid: Sequence[float], num_step: int
                          ) -> Tuple[float, List[Tuple[float, float]]]:
    """lpclip's search for C: the grid, then ``num_step`` log-space bisection steps; returns (C, tried).

    ``val_accuracy(C)`` scores a fit on the validation images.  With ``p`` the grid's best (first on ties), the
    range starts at ``[p / 10, 10 p]``; each step scores both ends, keeps the better (the left one on ties) as
    the step's winner and halves the range, in log10 space, towards it.  The result is the last step's winner
    (``p`` itself when ``num_step`` is 0).  ``tried`` lists (C, accuracy) in the order scored.
    """
    tried: List[Tuple[float, float]] = []

    def score(c: float) -> float:
        acc = val_accuracy(c)
        tried.append((c, acc))
        return acc

    scores = [score(c) for c in grid]
    chosen = grid[int(np.argmax(scores))]
    c_left, c_right = 1e-1 * chosen, 1e1 * chosen
    for _ in range(num_step):
        acc_left, acc_right = score(c_left), score(c_right)
        middle = 0.5 * (np.log10(c_right) + np.log10(c_left))
        if acc_left < acc_right:
            chosen, log_left, log_right = c_right, middle, np.log10(c_right)
        else:
            chosen, log_left, log_right = c_left, np.log10(c_left), middle
        c_left, c_right = np.power(10, log_left), np.power(10, log_right)
    return float(chosen), tried


class LogisticFits:
    """Fits of ``LogisticRegression(C)`` on fixed data, each C fitted once (the bisection revisits its ends)."""

    def __init__(self, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                 max_iter: int) -> None:
        self.train_x, self.train_y, self.val_x, self.val_y = train_x, train_y, val_x, val_y
        self.max_iter = max_iter
        self.fits: Dict[float, LogisticRegression] = {}
        self.not_converged = 0

    def fit(self, c: float) -> LogisticRegression:
        if c not in self.fits:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                self.fits[c] = LogisticRegression(solver="lbfgs", max_iter=self.max_iter, C=c).fit(
                    self.train_x, self.train_y)
            self.not_converged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        return self.fits[c]

    def val_accuracy(self, c: float) -> float:
        """Fraction of validation images predicted right (lpclip: ``sum(pred == label) / len(label)``)."""
        pred = self.fit(c).predict(self.val_x)
        return int((pred == self.val_y).sum()) / len(self.val_y)


def classifier_weights(clf: LogisticRegression, n_cls: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(n_cls, E)`` weights and ``(n_cls,)`` biases whose argmax is ``clf.predict``.

    A two-class fit has one row ``w`` (class 1 iff ``w x + b > 0``): it becomes the rows ``-w/2, w/2``, whose
    softmax is the fit's sigmoid.
    """
    if not np.array_equal(clf.classes_, np.arange(n_cls)):
        raise ValueError(f"LinearProbeCLIP: the training split has labels {clf.classes_.tolist()}, expected every "
                         f"class 0..{n_cls - 1}; use a few-shot split with all classes (DATASET.NUM_SHOTS >= 1)")
    weight, bias = clf.coef_, clf.intercept_
    if n_cls == 2:
        weight, bias = np.concatenate([-weight / 2, weight / 2]), np.concatenate([-bias / 2, bias / 2])
    return weight, bias


# ---------------------------------------------------------------------------------------------- model
class LogisticHead(nn.Module):
    """The fitted classifier: ``logits = x W^T + b`` in float64, with the chosen C and a fitted flag (buffers)."""

    def __init__(self, embed_dim: int, n_cls: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(n_cls, embed_dim, dtype=torch.float64))  # (n_cls, E)
        self.register_buffer("bias", torch.zeros(n_cls, dtype=torch.float64))
        self.register_buffer("reg_c", torch.zeros((), dtype=torch.float64))  # the chosen inverse strength C
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def load_fit(self, weight: np.ndarray, bias: np.ndarray, reg_c: float) -> None:
        self.weight.copy_(torch.from_numpy(weight))
        self.bias.copy_(torch.from_numpy(bias))
        self.reg_c.fill_(reg_c)

    def forward(self, features: Tensor) -> Tensor:
        return features.to(self.weight.dtype) @ self.weight.t() + self.bias  # (B, n_cls)


class LinearProbeModel(CustomCLIP):
    """Frozen image tower + ``LogisticHead``; features L2-normalised or raw (``L2_NORMALIZE``)."""

    per_image_text = False  # no text side: cached evaluation scores big chunks

    def __init__(self, clip_model: nn.Module, n_cls: int, normalize: bool) -> None:
        super().__init__(clip_model)
        self.normalize = normalize
        self.classifier = LogisticHead(clip_model.visual.output_dim, n_cls)

    def encode_image(self, image: Tensor) -> Tensor:
        features = self.image_encoder(image.to(self.dtype))  # (B, E)
        return l2_normalize(features) if self.normalize else features

    def logits_from_image_features(self, image_features: Tensor) -> Tensor:
        return self.classifier(image_features)


@TRAINER_REGISTRY.register()
class LinearProbeCLIP(FrozenFeatureTrainer):
    """Linear probe on frozen CLIP image features (CoOp's ``lpclip`` baseline).

    "Learning Transferable Visual Models From Natural Language Supervision", https://arxiv.org/abs/2103.00020
    """

    LEARNABLE = ("classifier",)
    CFG_NODE = "LINEARPROBECLIP"

    def check_cfg(self, cfg) -> None:
        node = cfg.TRAINER.LINEARPROBECLIP
        if not node.C_GRID or any(c <= 0 for c in node.C_GRID):
            raise ValueError(f"TRAINER.LINEARPROBECLIP.C_GRID={tuple(node.C_GRID)}; give at least one C > 0")
        if node.NUM_STEP < 0 or node.MAX_ITER < 1:
            raise ValueError(f"TRAINER.LINEARPROBECLIP: NUM_STEP={node.NUM_STEP} must be >= 0 and "
                             f"MAX_ITER={node.MAX_ITER} >= 1")
        super().check_cfg(cfg)

    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        return LinearProbeModel(clip_model, len(classnames), self.method_cfg().L2_NORMALIZE)

    def image_feature_key(self, split: str, data_source: Sequence) -> str:
        """Raw (un-normalised) features get entries of their own."""
        key = super().image_feature_key(split, data_source)
        return key if self.method_cfg().L2_NORMALIZE else f"{key}-raw"

    def fit(self) -> None:
        """Encode train and val (cached), search C on rank 0, give every rank the chosen classifier."""
        train_x, train_y = self.split_features("train_x")
        val_x, val_y = self.split_features("val")
        fitted = self.search(train_x, train_y, val_x, val_y) if is_main_process() else None
        weight, bias, reg_c = broadcast_object(fitted)
        self.model.classifier.load_fit(weight, bias, reg_c)
        self.write_scalar("train/log10_C", float(np.log10(reg_c)), self.epoch)

    def search(self, train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor
               ) -> Tuple[np.ndarray, np.ndarray, float]:
        node = self.method_cfg()
        fits = LogisticFits(train_x.double().numpy(), train_y.numpy(), val_x.double().numpy(), val_y.numpy(),
                            node.MAX_ITER)
        logger.info(f"Searching C on {len(val_y)} val images ({len(train_y)} training images, "
                    f"{len(node.C_GRID)} grid values + {node.NUM_STEP} bisection steps)")
        reg_c, tried = bisect_regularisation(fits.val_accuracy, tuple(node.C_GRID), node.NUM_STEP)
        n_grid = len(node.C_GRID)
        logger.info("Grid (C: val accuracy): " + ", ".join(f"{c:.0e}: {100 * acc:.2f}%" for c, acc in tried[:n_grid]))
        for step in range(node.NUM_STEP):
            (c_left, acc_left), (c_right, acc_right) = tried[n_grid + 2 * step:n_grid + 2 * step + 2]
            logger.info(f"Step {step + 1}/{node.NUM_STEP}: C {c_left:.6g}: {100 * acc_left:.2f}%, "
                        f"C {c_right:.6g}: {100 * acc_right:.2f}%")
        if fits.not_converged:
            logger.warning(f"{fits.not_converged} of {len(fits.fits)} fits stopped at MAX_ITER={node.MAX_ITER} "
                           "before lbfgs converged (as in lpclip)")
        logger.info(f"Chosen C = {reg_c:.6g} ({len(fits.fits)} distinct fits)")
        weight, bias = classifier_weights(fits.fit(reg_c), self.num_classes)
        return weight, bias, reg_c

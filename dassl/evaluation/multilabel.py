"""Multi-label evaluator: per-class average precision -> mAP, group mAPs, thresholded P/R/F1.

Written for long-tailed multi-label recognition (LMPT, Xia et al., arXiv:2305.04536; its metrics in
richard-peng-xia/LMPT@aab39ca ``lmpt/metrics.py``), usable by any multi-label trainer whose model returns logits
``(B, C)`` and whose batches carry multi-hot labels ``(B, C)`` (``DatasetWrapper`` builds them from tuple labels).

- AP per class is scikit-learn's ``average_precision_score`` (non-interpolated,
  ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds, ties grouped), computed for all
  classes at once. Classes without a positive in the evaluated split have no AP and are left out of
  every mean (scikit-learn's macro average would warn and count them as 0).
- Group mAPs (``mAP_head`` / ``mAP_medium`` / ``mAP_tail`` for COCO-LT and VOC-LT) are the mean AP
  over the index lists in ``dataset.groups``, whatever the group names are.
- Scores: ``TEST.MULTILABEL.SCORE`` = ``sigmoid`` (default; per-class ranking = the logit's),
  ``softmax`` over the classes (what the LMPT repository scores with) or ``logit``.
  The mAP under the other ranking (``mAP_softmax`` or ``mAP_sigmoid``) is reported too.
- Thresholded metrics: an image-class pair is predicted when its score exceeds ``TEST.MULTILABEL.THRESHOLD``
  (or, with ``TEST.MULTILABEL.TOP_K`` > 0, when the class is among the image's K best). CP / CR / CF1 are class
  means (CF1 is the mean per-class F1, not the harmonic mean of CP and CR; a class with no true positive
  counts 0), OP / OR / OF1 are taken over all image-class pairs.

Everything is computed from the whole split at once: under torchrun the engine's ``test()`` gathers every
rank's outputs in dataset order before ``process``, so each rank evaluates exactly the single-process set.
Every value is printed in Dassl's ``* name: value%`` form, so ``parse_test_res.py --keyword mAP``
(or ``mAP_tail``, ``CF1``, ...) reads it; the first result (what ``SimpleTrainer.test`` returns for
model selection) is ``mAP``.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence

import torch
from torch import Tensor
from yacs.config import CfgNode as CN

from dassl.config import register_cfg_defaults

from .build import EVALUATOR_REGISTRY
from .evaluator import EvaluatorBase

logger = logging.getLogger(__name__)

SCORES = ("sigmoid", "softmax", "logit")
# Threshold used when TEST.MULTILABEL.THRESHOLD < 0: 0.5 on probabilities, LMPT test.py's --thre 0.3 on
# softmax scores, 0 on logits (= sigmoid 0.5).
DEFAULT_THRESHOLDS = {"sigmoid": 0.5, "softmax": 0.3, "logit": 0.0}


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TEST.MULTILABEL = CN()
    # How logits become scores for ranking and thresholds: sigmoid (per class), softmax (over classes,
    # the LMPT repository's choice) or logit (raw; same AP as sigmoid)
    cfg.TEST.MULTILABEL.SCORE = "sigmoid"
    # Threshold for CP/CR/CF1/OP/OR/OF1 on those scores; < 0 = 0.5 (sigmoid), 0.3 (softmax), 0.0 (logit)
    cfg.TEST.MULTILABEL.THRESHOLD = -1.0
    # > 0: for those metrics, predict the TOP_K best-scoring classes of each image instead of thresholding
    # (LMPT's zero-shot script: 5); 0 = threshold
    cfg.TEST.MULTILABEL.TOP_K = 0


def logits_to_scores(logits: Tensor, score: str) -> Tensor:
    """``(N, C)`` logits -> scores in float64 (``sigmoid``, ``softmax`` over classes, or ``logit``)."""
    logits = logits.double()
    if score == "sigmoid":
        return torch.sigmoid(logits)
    if score == "softmax":
        return torch.softmax(logits, dim=1)
    if score == "logit":
        return logits
    raise ValueError(f"TEST.MULTILABEL.SCORE={score!r}; choose one of {', '.join(SCORES)}")


def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """Per-class AP ``(C,)`` of ``scores`` ``(N, C)`` against 0/1 ``targets`` ``(N, C)``; NaN without positives.

    Equals ``sklearn.metrics.average_precision_score(targets[:, c], scores[:, c])``: every positive
    contributes the precision at the end of its group of tied scores, divided by the number of positives.
    """
    n = scores.shape[0]
    targets = (targets > 0.5).double()
    order = torch.argsort(scores, dim=0, descending=True, stable=True)  # (N, C)
    sorted_scores = scores.gather(0, order)  # (N, C)
    sorted_targets = targets.gather(0, order)  # (N, C)
    ranks = torch.arange(1, n + 1, dtype=torch.float64).unsqueeze(1)  # (N, 1)
    precision = sorted_targets.cumsum(0) / ranks  # (N, C): precision after the first k items
    group_end = torch.ones_like(sorted_targets, dtype=torch.bool)  # (N, C): last item of a tie group
    group_end[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    index = torch.arange(n).unsqueeze(1).expand_as(group_end)  # (N, C)
    # For each position, the first group end at or after it (reverse cumulative minimum).
    end_of_group = torch.where(group_end, index, n - 1).flip(0).cummin(0).values.flip(0)  # (N, C)
    precision_at_end = precision.gather(0, end_of_group)  # (N, C)
    positives = sorted_targets.sum(0)  # (C,)
    ap = (sorted_targets * precision_at_end).sum(0) / positives  # (C,); 0/0 = NaN without positives
    return ap


def mean_ap(ap: Tensor, classes: Optional[Sequence[int]] = None) -> float:
    """Mean of the finite APs among ``classes`` (all by default); NaN when none is finite."""
    if classes is not None:
        ap = ap[torch.as_tensor(list(classes), dtype=torch.long)]
    ap = ap[~torch.isnan(ap)]
    return float(ap.mean()) if ap.numel() else float("nan")


def top_k_predictions(scores: Tensor, k: int) -> Tensor:
    """Boolean ``(N, C)``: the ``k`` highest scores of each row (all classes when ``k >= C``)."""
    k = min(k, scores.shape[1])
    pred = torch.zeros_like(scores, dtype=torch.bool)
    return pred.scatter_(1, scores.topk(k, dim=1).indices, True)


def threshold_metrics(scores: Tensor, targets: Tensor, threshold: float) -> Dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 (fractions) of ``scores > threshold`` against 0/1 ``targets``."""
    return prediction_metrics(scores > threshold, targets)


def prediction_metrics(pred: Tensor, targets: Tensor) -> Dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 (fractions) of boolean predictions ``(N, C)`` against 0/1 ``targets``."""
    truth = targets > 0.5  # (N, C)
    tp = (pred & truth).sum(0).double()  # (C,)
    fp = (pred & ~truth).sum(0).double()
    fn = (~pred & truth).sum(0).double()
    has_tp = tp > 0
    precision = torch.where(has_tp, tp / (tp + fp).clamp(min=1), torch.zeros_like(tp))  # (C,)
    recall = torch.where(has_tp, tp / (tp + fn).clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(has_tp, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(tp))
    tp_all, fp_all, fn_all = tp.sum(), fp.sum(), fn.sum()
    op = float(tp_all / (tp_all + fp_all)) if tp_all > 0 else 0.0
    orr = float(tp_all / (tp_all + fn_all)) if tp_all > 0 else 0.0
    of1 = 2 * op * orr / (op + orr) if op + orr > 0 else 0.0
    return OrderedDict(CP=float(precision.mean()), CR=float(recall.mean()), CF1=float(f1.mean()),
                       OP=op, OR=orr, OF1=of1)


@EVALUATOR_REGISTRY.register()
class MultiLabelClassification(EvaluatorBase):
    """mAP (+ group mAPs from ``dataset.groups``) and thresholded P/R/F1 of multi-label logits.

    Built by ``build_evaluator(cfg, lab2cname=..., dataset=...)``; ``process(logits (B, C), labels (B, C))``
    accumulates, ``evaluate()`` prints the ``=> result`` block and returns the values in percent.
    """

    def __init__(self, cfg, lab2cname: Optional[Mapping[int, str]] = None, dataset=None, **kwargs) -> None:
        super().__init__(cfg)
        node = cfg.TEST.MULTILABEL
        if node.SCORE not in SCORES:
            raise ValueError(f"TEST.MULTILABEL.SCORE={node.SCORE!r}; choose one of {', '.join(SCORES)}")
        self.score = node.SCORE
        if node.TOP_K < 0:
            raise ValueError(f"TEST.MULTILABEL.TOP_K={node.TOP_K}; use 0 (threshold) or a number of classes >= 1")
        self.threshold = node.THRESHOLD if node.THRESHOLD >= 0 else DEFAULT_THRESHOLDS[node.SCORE]
        self.top_k = node.TOP_K
        self.alt_score = "softmax" if node.SCORE != "softmax" else "sigmoid"
        self._lab2cname = lab2cname
        self.groups: Dict[str, list] = {k: list(v) for k, v in (getattr(dataset, "groups", None) or {}).items()}
        self.reset()

    def reset(self) -> None:
        self._logits = []
        self._labels = []

    def process(self, mo: Tensor, gt: Tensor) -> None:
        # mo: logits (B, C); gt: multi-hot labels (B, C)
        if gt.dim() != 2 or gt.shape != mo.shape:
            raise ValueError(f"MultiLabelClassification expects multi-hot labels of shape {tuple(mo.shape)}, got "
                             f"{tuple(gt.shape)}; use a multi-label dataset (Datum labels as tuples)")
        self._logits.append(mo.detach().float().cpu())
        self._labels.append(gt.detach().float().cpu())

    def evaluate(self) -> "OrderedDict[str, float]":
        logits = torch.cat(self._logits)  # (N, C)
        labels = torch.cat(self._labels)  # (N, C)
        scores = logits_to_scores(logits, self.score)
        ap = average_precision(scores, labels)  # (C,)
        results = OrderedDict(mAP=100.0 * mean_ap(ap))
        for name, classes in self.groups.items():
            value = mean_ap(ap, classes)
            if value == value:  # a group whose classes have no positive here is left out
                results[f"mAP_{name}"] = 100.0 * value
        alt_ap = average_precision(logits_to_scores(logits, self.alt_score), labels)
        results[f"mAP_{self.alt_score}"] = 100.0 * mean_ap(alt_ap)
        pred = top_k_predictions(scores, self.top_k) if self.top_k > 0 else scores > self.threshold
        for key, value in prediction_metrics(pred, labels).items():
            results[key] = 100.0 * value
        n_valid = int((~torch.isnan(ap)).sum())
        lines = ["=> result", f"* total: {logits.shape[0]:,}",
                 f"* classes with positives: {n_valid}/{ap.numel()}",
                 f"* scores: {self.score} ("
                 + (f"top-{self.top_k} predictions" if self.top_k > 0 else f"threshold {self.threshold:g}") + ")"]
        lines += [f"* {key}: {value:.2f}%" for key, value in results.items()]
        logger.info("\n".join(lines))
        if self.cfg.TEST.PER_CLASS_RESULT:
            self._log_per_class(ap, labels.sum(0))
        return results

    def _log_per_class(self, ap: Tensor, positives: Tensor) -> None:
        lines = ["=> per-class result"]
        for c in range(ap.numel()):
            name = self._lab2cname[c] if self._lab2cname else str(c)
            value = "n/a" if torch.isnan(ap[c]) else f"{100.0 * float(ap[c]):.2f}%"
            lines.append(f"* class: {c} ({name})\tpositives: {int(positives[c]):,}\tAP: {value}")
        logger.info("\n".join(lines))

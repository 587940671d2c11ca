"""Evaluators printing Dassl's ``=> result`` / ``* name: value%`` block."""
from __future__ import annotations

import logging
import os.path as osp
from collections import OrderedDict, defaultdict

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score

from .build import EVALUATOR_REGISTRY

logger = logging.getLogger(__name__)


class EvaluatorBase:
    """Accumulates model outputs with ``process`` and summarises them with ``evaluate``."""

    def __init__(self, cfg):
        self.cfg = cfg

    def reset(self):
        raise NotImplementedError

    def process(self, mo, gt):
        raise NotImplementedError

    def evaluate(self):
        raise NotImplementedError


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Single-label classification: accuracy, error, macro-F1, optional per-class accuracy."""

    def __init__(self, cfg, lab2cname=None, **kwargs):
        super().__init__(cfg)
        self._lab2cname = lab2cname
        self._per_class_res = None
        if cfg.TEST.PER_CLASS_RESULT and lab2cname is None:
            raise ValueError("TEST.PER_CLASS_RESULT needs the label→classname mapping")
        self.reset()

    def reset(self):
        self._correct = 0
        self._total = 0
        self._y_true = []
        self._y_pred = []
        if self.cfg.TEST.PER_CLASS_RESULT:
            self._per_class_res = defaultdict(list)

    def process(self, mo, gt):
        # mo (torch.Tensor): model output [batch, num_classes]; gt: ground truth [batch]
        pred = mo.max(1)[1]
        matches = pred.eq(gt).float()
        self._correct += int(matches.sum().item())
        self._total += gt.shape[0]
        self._y_true.extend(gt.data.cpu().numpy().tolist())
        self._y_pred.extend(pred.data.cpu().numpy().tolist())
        if self._per_class_res is not None:
            for i, label in enumerate(gt):
                self._per_class_res[label.item()].append(int(matches[i].item()))

    def evaluate(self):
        results = OrderedDict()
        acc = 100.0 * self._correct / self._total
        err = 100.0 - acc
        macro_f1 = 100.0 * f1_score(self._y_true, self._y_pred, average="macro", labels=np.unique(self._y_true))
        results["accuracy"] = acc
        results["error_rate"] = err
        results["macro_f1"] = macro_f1
        lines = [
            "=> result",
            f"* total: {self._total:,}",
            f"* correct: {self._correct:,}",
            f"* accuracy: {acc:.1f}%",
            f"* error: {err:.1f}%",
            f"* macro_f1: {macro_f1:.1f}%",
        ]
        logger.info("\n".join(lines))
        if self._per_class_res is not None:
            accs = []
            lines = ["=> per-class result"]
            for label in sorted(self._per_class_res.keys()):
                res = self._per_class_res[label]
                correct, total = sum(res), len(res)
                a = 100.0 * correct / total
                accs.append(a)
                lines.append(f"* class: {label} ({self._lab2cname[label]})\ttotal: {total:,}\tcorrect: {correct:,}\tacc: {a:.1f}%")
            mean_acc = float(np.mean(accs))
            lines.append(f"* average: {mean_acc:.1f}%")
            logger.info("\n".join(lines))
            results["perclass_accuracy"] = mean_acc
        if self.cfg.TEST.COMPUTE_CMAT:
            cmat = confusion_matrix(self._y_true, self._y_pred, normalize="true")
            save_path = osp.join(self.cfg.OUTPUT_DIR, "cmat.pt")
            torch.save(cmat, save_path)
            logger.info(f"Confusion matrix is saved to {save_path}")
        return results

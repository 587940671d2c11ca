"""LangevinCoOp's test figures: many/medium/few accuracies, the reference's last-test-batch slice and the
TensorBoard tag names of both styles (ours in percent, the reference's in fractions)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Mapping, Sequence

import torch
from torch import Tensor


def group_accuracies(pred: Tensor, labels: Tensor, groups: Mapping[str, Sequence[int]], num_classes: int
                     ) -> Dict[str, float]:
    """Mean per-class accuracy (%) over each group's classes that have test images; NaN for a group without any.

    As the reference, a class absent from ``labels`` does not count (its accuracy is undefined).
    """
    labels, pred = labels.cpu(), pred.cpu()
    correct = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, (pred == labels).double())
    total = torch.bincount(labels, minlength=num_classes).double()
    out = {}
    for name, classes in groups.items():
        classes = [c for c in classes if total[c] > 0]
        out[name] = float(100.0 * (correct[classes] / total[classes]).mean()) if classes else math.nan
    return out


def last_batch_size(num_items: int, batch_size: int) -> int:
    """Number of items in the last batch of ``num_items`` split into batches of ``batch_size`` (in order)."""
    return num_items - (math.ceil(num_items / batch_size) - 1) * batch_size


@dataclass(frozen=True)
class TagStyle:
    """TensorBoard tag names (``str.format`` patterns over ``split`` and ``group``) and the scale of the values.

    Attributes:
        one_model / one_model_group: the current prompt's accuracy, overall and per group.
        ensemble / ensemble_group: the hard vote's accuracy, overall and per group.
        group_names: spelling of a group in its tag (default: the group's own name).
        scale: factor applied to a percentage (0.01 writes fractions).
        empty_group_nan: write NaN for a group without test classes (else skip the tag).
        extras: also write our additional scalars (train accuracy, soft vote, accuracy vs number of samples).
    """

    one_model: str
    one_model_group: str
    ensemble: str
    ensemble_group: str
    scale: float
    empty_group_nan: bool
    extras: bool
    group_names: Mapping[str, str] = field(default_factory=dict)

    def group_tag(self, pattern: str, split: str, group: str) -> str:
        return pattern.format(split=split, group=self.group_names.get(group, group))


# Ours: one prefix per figure, "medium" spelled out, percentages.
OUR_TAGS = TagStyle(one_model="OneModel/{split}_acc", one_model_group="OneModel/{split}_acc_{group}",
                    ensemble="AllModel/{split}_acc", ensemble_group="AllModel/{split}_acc_{group}",
                    scale=1.0, empty_group_nan=False, extras=True)
# The reference's names (main_coop_prp_langevin_allclsloss.py): "median" for medium, a space in the ensemble's
# group prefix, fractions in [0, 1], NaN for an empty group (numpy's mean of nothing).
REFERENCE_TAGS = TagStyle(one_model="OneModel/{split}_Acc@1", one_model_group="OneModel/{split}_acc_{group}",
                          ensemble="AllModel/{split}_Acc@1", ensemble_group="All Model/{split}_acc_{group}",
                          scale=0.01, empty_group_nan=True, extras=False, group_names={"medium": "median"})

"""Votes of LangevinCoOp's ensemble: the majority of the samples' argmax labels (ties -> lowest class index,
as the reference's first maximum of the per-class counts) and the mean-probability ("soft") vote."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


class VoteAccumulator:
    """Running hard-vote counts and soft-vote probability sums over ensemble members.

    Args:
        num_items: number of test items N.
        num_classes: C.
        device: where the ``(N, C)`` accumulators live.
    """

    def __init__(self, num_items: int, num_classes: int, device: Optional[torch.device] = None) -> None:
        self.num_classes = num_classes
        self.counts = torch.zeros(num_items, num_classes, dtype=torch.long, device=device)  # (N, C)
        self.prob_sum = torch.zeros(num_items, num_classes, dtype=torch.float64, device=device)  # (N, C)
        self.num_members = 0

    def add_labels(self, labels: Tensor) -> None:
        """One member's predicted labels ``(N,)``."""
        self.counts.scatter_add_(1, labels.view(-1, 1), torch.ones_like(labels).view(-1, 1))
        self.num_members += 1

    def add_logits(self, logits: Tensor) -> None:
        """One member's logits ``(N, C)``: its argmax is its vote, its softmax joins the soft vote."""
        self.add_labels(logits.argmax(dim=1))
        self.prob_sum += logits.double().softmax(dim=1)

    def hard(self) -> Tensor:
        """Majority label ``(N,)``; a tie goes to the lowest class index."""
        index = torch.arange(self.num_classes, device=self.counts.device)
        key = self.counts * self.num_classes - index  # (N, C): higher count first, then lower index
        return key.argmax(dim=1)

    def soft(self) -> Tensor:
        """Label of the highest mean probability ``(N,)``."""
        return self.prob_sum.argmax(dim=1)


def hard_vote(votes: Tensor, num_classes: int) -> Tensor:
    """Majority vote of ``votes`` ``(K, N)`` (K members' labels) -> ``(N,)``; ties -> lowest class index."""
    acc = VoteAccumulator(votes.shape[1], num_classes, votes.device)
    for member in votes:
        acc.add_labels(member)
    return acc.hard()


def soft_vote(probs: Tensor) -> Tensor:
    """Argmax of the mean of ``probs`` ``(K, N, C)`` over the K members -> ``(N,)``."""
    return probs.mean(dim=0).argmax(dim=1)

"""A plain supervised baseline: ``SimpleNet`` (small CNN + linear classifier) trained with cross-entropy.

It exercises the engine end to end without CLIP (the tests' and the first demo's toy trainer);
Dassl registers the same idea under the same name.
"""
from __future__ import annotations

import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.metrics import compute_accuracy


@TRAINER_REGISTRY.register()
class Vanilla(TrainerX):
    """Supervised training of ``SimpleNet`` on the labeled split (cross-entropy)."""


    def check_cfg(self, cfg):
        if not cfg.MODEL.BACKBONE.NAME:
            raise ValueError("Vanilla needs MODEL.BACKBONE.NAME (e.g. cnn_small); pass --backbone cnn_small")

    def forward_backward(self, batch):
        input, label, _ = self.parse_batch_train(batch)
        output = self.model(input)
        loss = F.cross_entropy(output, label)
        self.backward_and_update(loss)
        return {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}

"""The training recipe of LangevinCoOp outside the trainer: the lr of each epoch, the logit-adjustment prior,
the reference's CIFAR augmentation and the reference's fp16 rounding in the text tower."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torchvision.transforms import (Compose, Normalize, RandAugment, RandomCrop, RandomHorizontalFlip, Resize,
                                    ToTensor)

from dassl.data.transforms import INTERPOLATION_MODES

PRIOR_EPS = 1e-12  # log(pi^tau + 1e-12), as the reference


def lr_at_epoch(epoch: int, base_lr: float, scheduler: str, stepsize: Union[int, Sequence[int]], gamma: float
                ) -> float:
    """Learning rate of epoch index ``epoch``: single_step decays every ``stepsize``, multi_step at each milestone.

    A milestone ``m`` takes effect from epoch index ``m`` (``lr * gamma^#{m <= epoch}``), whatever epoch the run
    starts at; non-positive entries are ignored.
    """
    steps = [int(s) for s in (stepsize if isinstance(stepsize, (list, tuple)) else [stepsize]) if int(s) > 0]
    if scheduler == "single_step":
        n_decays = epoch // steps[0] if steps else 0
    else:
        n_decays = sum(epoch >= m for m in steps)
    return base_lr * gamma ** n_decays


def log_prior(class_counts: Sequence[int], tau: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """``log(pi_c^tau + 1e-12)`` with ``pi_c = n_c / sum(n)``: the logit adjustment of Menon et al. ``(C,)``.

    Computed in float64 and returned in ``dtype`` (the reference adds it to the logits in float64).
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    return torch.log((counts / counts.sum()) ** tau + PRIOR_EPS).to(dtype)


def reference_transforms(cfg) -> Tuple[Compose, Compose]:
    """The reference's CIFAR pipeline: random crop (``NATIVE_SIZE``, zero padding ``INPUT.CROP_PADDING``), flip and
    RandAugment at the images' stored size, then resize to ``INPUT.SIZE``, to tensor and normalise.

    Returns ``(train, test)``; the test transform only resizes and normalises.
    """
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    size = tuple(cfg.INPUT.SIZE)
    normalize = Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    native = cfg.TRAINER.LANGEVINCOOP.NATIVE_SIZE
    train = Compose([RandomCrop(native, padding=cfg.INPUT.CROP_PADDING), RandomHorizontalFlip(),
                     RandAugment(num_ops=cfg.INPUT.RANDAUGMENT_N, magnitude=cfg.INPUT.RANDAUGMENT_M),
                     Resize(size, interpolation=interp), ToTensor(), normalize])
    test = Compose([Resize(size, interpolation=interp), ToTensor(), normalize])
    return train, test


class RoundThroughHalf(nn.Module):
    """``module(x)`` rounded to fp16 and cast back to the input's dtype."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x).half().to(x.dtype)


def round_text_tower_to_fp16(text_encoder: nn.Module) -> nn.Module:
    """Make an fp32 text encoder round like the reference's: its positional embedding and the output of the final
    LayerNorm go through fp16 (the reference's text encoder records CLIP's fp16 dtype before the model is cast to
    fp32, then casts to that dtype).  Modifies ``text_encoder`` in place and returns it."""
    embedding = text_encoder.positional_embedding
    text_encoder.positional_embedding = nn.Parameter(embedding.detach().half().to(embedding.dtype),
                                                     requires_grad=False)
    text_encoder.ln_final = RoundThroughHalf(text_encoder.ln_final)
    return text_encoder

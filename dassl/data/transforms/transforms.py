"""``build_transform`` with Dassl's transform names and fixed order (as Dassl's ``dassl/data/transforms/transforms.py``)."""
from __future__ import annotations

import logging
import random
from typing import Optional, Sequence

import torch
from torchvision.transforms import (
    CenterCrop,
    ColorJitter,
    Compose,
    GaussianBlur,
    InterpolationMode,
    Normalize,
    RandomApply,
    RandomCrop,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToTensor,
)

from .autoaugment import CIFAR10Policy, ImageNetPolicy, SVHNPolicy
from .randaugment import RandAugment, RandAugment2, RandAugmentFixMatch

logger = logging.getLogger(__name__)

AVAI_CHOICES = [
    "random_flip",
    "random_resized_crop",
    "normalize",
    "instance_norm",
    "random_crop",
    "random_translation",
    "center_crop",  # the test pipeline always center-crops; kept for config compatibility
    "cutout",
    "imagenet_policy",
    "cifar10_policy",
    "svhn_policy",
    "randaugment",
    "randaugment_fixmatch",
    "randaugment2",
    "gaussian_noise",
    "colorjitter",
    "randomgrayscale",
    "gaussian_blur",
]

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


class Random2DTranslation:
    """With probability p, resize to 1.125× and randomly crop back to (height, width)."""

    def __init__(self, height: int, width: int, p: float = 0.5, interpolation=InterpolationMode.BILINEAR):
        self.height, self.width, self.p, self.interpolation = height, width, p, interpolation

    def __call__(self, img):
        if random.uniform(0, 1) > self.p:
            return Resize((self.height, self.width), interpolation=self.interpolation)(img)
        new_w, new_h = int(round(self.width * 1.125)), int(round(self.height * 1.125))
        resized = Resize((new_h, new_w), interpolation=self.interpolation)(img)
        x1 = int(round(random.uniform(0, new_w - self.width)))
        y1 = int(round(random.uniform(0, new_h - self.height)))
        return resized.crop((x1, y1, x1 + self.width, y1 + self.height))


class InstanceNormalization:
    """Per-channel (x − mean) / (std + eps) over H·W of a [C, H, W] tensor."""

    def __init__(self, eps: float = 1e-8):
        self.eps = eps

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        c, h, w = img.shape
        flat = img.reshape(c, h * w)
        mean = flat.mean(1).view(c, 1, 1)
        std = flat.std(1).view(c, 1, 1)
        return (img - mean) / (std + self.eps)


class Cutout:
    """Zero ``n_holes`` squares of side ``length`` at uniform random centres (clipped)."""

    def __init__(self, n_holes: int = 1, length: int = 16):
        self.n_holes, self.length = n_holes, length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[1:]
        mask = torch.ones(h, w, dtype=img.dtype)
        for _ in range(self.n_holes):
            y, x = random.randrange(h), random.randrange(w)
            y1, y2 = max(0, y - self.length // 2), min(h, y + self.length // 2)
            x1, x2 = max(0, x - self.length // 2), min(w, x + self.length // 2)
            mask[y1:y2, x1:x2] = 0
        return img * mask


class GaussianNoise:
    """With probability p add N(mean, std²) noise."""

    def __init__(self, mean: float = 0.0, std: float = 0.15, p: float = 0.5):
        self.mean, self.std, self.p = mean, std, p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if random.uniform(0, 1) > self.p:
            return img
        return img + torch.randn_like(img) * self.std + self.mean


def build_transform(cfg, is_train: bool = True, choices: Optional[Sequence[str]] = None):
    """Build the train or test pipeline from ``cfg.INPUT`` (None when INPUT.NO_TRANSFORM)."""
    if cfg.INPUT.NO_TRANSFORM:
        logger.info("Note: no transform is applied!")
        return None
    if choices is None:
        choices = cfg.INPUT.TRANSFORMS
    for choice in choices:
        if choice not in AVAI_CHOICES:
            raise ValueError(f"INPUT.TRANSFORMS contains unknown transform {choice!r}; choose from {AVAI_CHOICES}")
    if cfg.INPUT.INTERPOLATION not in INTERPOLATION_MODES:
        raise ValueError(f"INPUT.INTERPOLATION={cfg.INPUT.INTERPOLATION!r}; choose one of {list(INTERPOLATION_MODES)}")
    target_size = f"{cfg.INPUT.SIZE[0]}x{cfg.INPUT.SIZE[1]}"
    normalize = Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    if is_train:
        return _build_transform_train(cfg, choices, target_size, normalize)
    return _build_transform_test(cfg, choices, target_size, normalize)


def _build_transform_train(cfg, choices, target_size, normalize):
    logger.info("Building transform_train")
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    size = tuple(cfg.INPUT.SIZE)
    tfm = []
    if "random_crop" not in choices and "random_resized_crop" not in choices:
        logger.info(f"+ resize to {target_size}")
        tfm.append(Resize(size, interpolation=interp))
    if "random_translation" in choices:
        logger.info("+ random translation")
        tfm.append(Random2DTranslation(size[0], size[1], interpolation=interp))
    if "random_crop" in choices:
        logger.info(f"+ random crop (padding = {cfg.INPUT.CROP_PADDING})")
        tfm.append(RandomCrop(size, padding=cfg.INPUT.CROP_PADDING))
    if "random_resized_crop" in choices:
        scale = tuple(cfg.INPUT.RRCROP_SCALE)
        logger.info(f"+ random resized crop (size={size}, scale={scale})")
        tfm.append(RandomResizedCrop(size, scale=scale, interpolation=interp))
    if "random_flip" in choices:
        logger.info("+ random flip")
        tfm.append(RandomHorizontalFlip())
    if "imagenet_policy" in choices:
        logger.info("+ imagenet policy")
        tfm.append(ImageNetPolicy())
    if "cifar10_policy" in choices:
        logger.info("+ cifar10 policy")
        tfm.append(CIFAR10Policy())
    if "svhn_policy" in choices:
        logger.info("+ svhn policy")
        tfm.append(SVHNPolicy())
    if "randaugment" in choices:
        logger.info(f"+ randaugment (n={cfg.INPUT.RANDAUGMENT_N}, m={cfg.INPUT.RANDAUGMENT_M})")
        tfm.append(RandAugment(cfg.INPUT.RANDAUGMENT_N, cfg.INPUT.RANDAUGMENT_M))
    if "randaugment_fixmatch" in choices:
        logger.info(f"+ randaugment_fixmatch (n={cfg.INPUT.RANDAUGMENT_N})")
        tfm.append(RandAugmentFixMatch(cfg.INPUT.RANDAUGMENT_N))
    if "randaugment2" in choices:
        logger.info(f"+ randaugment2 (n={cfg.INPUT.RANDAUGMENT_N})")
        tfm.append(RandAugment2(cfg.INPUT.RANDAUGMENT_N))
    if "colorjitter" in choices:
        logger.info("+ color jitter")
        tfm.append(ColorJitter(cfg.INPUT.COLORJITTER_B, cfg.INPUT.COLORJITTER_C, cfg.INPUT.COLORJITTER_S, cfg.INPUT.COLORJITTER_H))
    if "randomgrayscale" in choices:
        logger.info("+ random gray scale")
        tfm.append(RandomGrayscale(p=cfg.INPUT.RGS_P))
    if "gaussian_blur" in choices:
        logger.info("+ gaussian blur")
        tfm.append(RandomApply([GaussianBlur(cfg.INPUT.GB_K)], p=cfg.INPUT.GB_P))
    logger.info("+ to torch tensor of range [0, 1]")
    tfm.append(ToTensor())
    if "cutout" in choices:
        logger.info(f"+ cutout (n_holes={cfg.INPUT.CUTOUT_N}, length={cfg.INPUT.CUTOUT_LEN})")
        tfm.append(Cutout(cfg.INPUT.CUTOUT_N, cfg.INPUT.CUTOUT_LEN))
    if "normalize" in choices:
        logger.info(f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})")
        tfm.append(normalize)
    if "gaussian_noise" in choices:
        logger.info(f"+ gaussian noise (mean={cfg.INPUT.GN_MEAN}, std={cfg.INPUT.GN_STD})")
        tfm.append(GaussianNoise(cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD))
    if "instance_norm" in choices:
        logger.info("+ instance normalization")
        tfm.append(InstanceNormalization())
    return Compose(tfm)


def _build_transform_test(cfg, choices, target_size, normalize):
    logger.info("Building transform_test")
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    tfm = []
    logger.info(f"+ resize the smaller edge to {max(cfg.INPUT.SIZE)}")
    tfm.append(Resize(max(cfg.INPUT.SIZE), interpolation=interp))
    logger.info(f"+ {target_size} center crop")
    tfm.append(CenterCrop(tuple(cfg.INPUT.SIZE)))
    logger.info("+ to torch tensor of range [0, 1]")
    tfm.append(ToTensor())
    if "normalize" in choices:
        logger.info(f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})")
        tfm.append(normalize)
    if "instance_norm" in choices:
        logger.info("+ instance normalization")
        tfm.append(InstanceNormalization())
    return Compose(tfm)

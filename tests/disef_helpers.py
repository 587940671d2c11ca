"""Helpers for the DISEF tests: small real images, tiny offline generation models, scripted filters."""
from __future__ import annotations

import os
import os.path as osp
from functools import lru_cache
from typing import Iterable, Sequence

from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny models are built from config objects: no hub access

CLASSNAMES = ("red circle", "green square", "blue triangle")


def write_real_images(folder: str, per_class: int = 2, size: tuple[int, int] = (20, 14)) -> dict[int, list[str]]:
    """``per_class`` small non-square PNGs per class of ``CLASSNAMES`` (colour = class); label -> paths."""
    colours = ((220, 30, 30), (30, 170, 60), (40, 80, 220))
    os.makedirs(folder, exist_ok=True)
    real = {}
    for label, colour in enumerate(colours):
        paths = []
        for k in range(per_class):
            path = osp.join(folder, f"class{label}_{k}.png")
            Image.new("RGB", size, tuple(min(255, c + 10 * k) for c in colour)).save(path)
            paths.append(path)
        real[label] = paths
    return real


@lru_cache(maxsize=None)
def tiny_models():
    """(img2img pipeline, llava model, llava processor), built once per session, random but seeded."""
    from vlprompt.trainers.disef.fakes import tiny_img2img_pipeline, tiny_llava

    words = [w for name in CLASSNAMES for w in name.split()]
    pipe = tiny_img2img_pipeline(words, seed=0)
    model, processor = tiny_llava(words + "provide a detailed caption for the image focusing on the object knowing "
                                          "it's".split(), seed=0)
    return pipe, model, processor


class CountingUNet:
    """Wraps ``pipe.unet.forward`` and records the batch size of every call."""

    def __init__(self, pipe) -> None:
        self.batches: list[int] = []
        self.original = pipe.unet.forward
        self.pipe = pipe

        def forward(sample, *args, **kwargs):
            self.batches.append(sample.shape[0])
            return self.original(sample, *args, **kwargs)

        pipe.unet.forward = forward

    def restore(self) -> None:
        self.pipe.unet.forward = self.original


class ScriptedFilter:
    """A filter whose predictions are given in advance (one per generated image, in order)."""

    def __init__(self, predictions: Iterable[int]) -> None:
        self.remaining = list(predictions)
        self.seen = 0

    def predict(self, images: Sequence[Image.Image]) -> list[int]:
        out, self.remaining = self.remaining[:len(images)], self.remaining[len(images):]
        self.seen += len(images)
        if len(out) != len(images):
            raise AssertionError("ScriptedFilter ran out of predictions")
        return out


class ConstantFilter:
    """Predicts ``label`` for every image."""

    def __init__(self, label: int) -> None:
        self.label = label

    def predict(self, images: Sequence[Image.Image]) -> list[int]:
        return [self.label] * len(images)


class SolidGenerator:
    """A fast stand-in for Stable Diffusion: one solid image per prompt, colour from the seed; counts calls."""

    def __init__(self, fail_after: int = -1) -> None:
        self.images = 0
        self.fail_after = fail_after

    def __call__(self, images, prompts, seeds):
        if 0 <= self.fail_after <= self.images:
            raise KeyboardInterrupt("simulated kill")
        self.images += len(images)
        return [Image.new("RGB", (16, 16), (s % 256, (s >> 8) % 256, (s >> 16) % 256)) for s in seeds]


def files_on_disk(root: str) -> set[str]:
    from vlprompt.trainers.disef.manifest import image_files

    return {osp.relpath(p, root) for p in image_files(root, partial=False)}

"""Prompt templates, in one place for every method.

- ``IMAGENET_TEMPLATES``: the 80 templates of OpenAI's ImageNet zero-shot notebook (Radford et al. 2021,
  arXiv:2103.00020), in the notebook's order, as CoOp's ``trainers/imagenet_templates.py`` holds them;
  ``IMAGENET_TEMPLATES_SELECT``: the 7 that CoOp's ``ZeroshotCLIP2`` ensembles.
- ``dataset_template(name)``: a dataset's hand-written prompt, which each dataset class carries as its
  ``TEMPLATE`` attribute (CoOp's ``CUSTOM_TEMPLATES``); "a photo of a {}." for datasets without one.
- ``dataset_templates(name)``: the dataset's list of prompts to average (its ``TEMPLATES`` attribute, e.g.
  ImageNet's 7), or its single template.
"""
from __future__ import annotations

import logging

from dassl.data.datasets import DATASET_REGISTRY

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a photo of a {}."


def dataset_template(dataset_name: str) -> str:
    """The registered dataset's ``TEMPLATE`` ("{}" = class name), or ``DEFAULT_TEMPLATE`` (logged)."""
    from vlprompt import datasets  # noqa: F401  (registers the dataset classes)

    template = None
    if dataset_name in DATASET_REGISTRY.registered_names():
        template = getattr(DATASET_REGISTRY.get(dataset_name), "TEMPLATE", None)
    if template is None:
        logger.info(f"No template for dataset {dataset_name}; using {DEFAULT_TEMPLATE!r}")
        return DEFAULT_TEMPLATE
    return template


def dataset_templates(dataset_name: str) -> tuple[str, ...]:
    """The registered dataset's ``TEMPLATES`` (prompts whose text features are averaged), else its one template."""
    from vlprompt import datasets  # noqa: F401  (registers the dataset classes)

    templates = None
    if dataset_name in DATASET_REGISTRY.registered_names():
        templates = getattr(DATASET_REGISTRY.get(dataset_name), "TEMPLATES", None)
    return tuple(templates) if templates else (dataset_template(dataset_name),)


IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# The 7-template subset used by ZeroshotCLIP2, in CoOp's order.
IMAGENET_TEMPLATES_SELECT: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

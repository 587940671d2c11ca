"""Prompt templates, in one place for every method.

- ``IMAGENET_TEMPLATES``: the 80 templates of OpenAI's ImageNet zero-shot notebook (Radford et al. 2021,
  arXiv:2103.00020), in the notebook's order, as CoOp's ``trainers/imagenet_templates.py`` holds them;
  ``IMAGENET_TEMPLATES_SELECT``: the 7 that CoOp's ``ZeroshotCLIP2`` ensembles (the data lives in
  ``datasets/prompt_templates.py``, where ImageNet's reader finds it too).
- ``dataset_template(name)``: a dataset's hand-written prompt, which each dataset class carries as its
  ``TEMPLATE`` attribute (CoOp's ``CUSTOM_TEMPLATES``); "a photo of a {}." for datasets without one.
- ``dataset_templates(name)``: the dataset's list of prompts to average (its ``TEMPLATES`` attribute, e.g.
  ImageNet's 7), or its single template.
"""
from __future__ import annotations

import logging

from dassl.data.datasets import DATASET_REGISTRY
from vlprompt.datasets.prompt_templates import IMAGENET_TEMPLATES, IMAGENET_TEMPLATES_SELECT  # noqa: F401

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

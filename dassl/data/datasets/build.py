"""Dataset registry and builder."""
from __future__ import annotations

import logging
from typing import Callable

from dassl.utils import Registry, check_availability

logger = logging.getLogger(__name__)

DATASET_REGISTRY = Registry("DATASET")

# Functions ``fn(dataset, cfg) -> dataset`` that DataManager applies, in registration order, to every dataset
# it builds (e.g. label noise). The engine applies what is registered without knowing what it is.
_DATASET_POSTPROCESSORS: list[Callable] = []


def register_dataset_postprocess(fn: Callable) -> Callable:
    """Decorator: run ``fn(dataset, cfg)`` on every built dataset (it returns the dataset, changed or not)."""
    if fn not in _DATASET_POSTPROCESSORS:
        _DATASET_POSTPROCESSORS.append(fn)
    return fn


def postprocess_dataset(dataset, cfg):
    """Apply every registered post-processing function to ``dataset``."""
    for fn in _DATASET_POSTPROCESSORS:
        dataset = fn(dataset, cfg)
    return dataset


def build_dataset(cfg):
    """Instantiate the registered dataset ``cfg.DATASET.NAME``."""
    avai_datasets = DATASET_REGISTRY.registered_names()
    check_availability(cfg.DATASET.NAME, avai_datasets)
    if cfg.VERBOSE:
        logger.info(f"Loading dataset: {cfg.DATASET.NAME}")
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)

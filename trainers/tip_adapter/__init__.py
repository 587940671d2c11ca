"""Tip-Adapter and Tip-Adapter-F (arXiv:2207.09519, first version arXiv:2111.03930).

``trainer.py``: the two trainers; ``cache_model.py``: the cache, its logits and the alpha/beta search;
``views.py``: the augmented training views, encoded once and cached.
"""
from .trainer import TipAdapter, TipAdapter_F  # noqa: F401  (registers both trainers)

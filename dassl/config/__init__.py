"""Config: Dassl's default tree plus an extension hook for project keys.

``register_cfg_defaults(fn)`` is our addition: every method and dataset module registers a
function that adds its own keys (each with a default and a comment), and ``extend_cfg``
applies all of them before any YAML is merged, so an unknown key in a YAML still fails.
"""
from typing import Callable, List

from .defaults import _C as cfg_default

_CFG_DEFAULT_HOOKS: List[Callable] = []


def get_cfg_default():
    """A deep copy of the default config tree; callers may mutate it."""
    return cfg_default.clone()


def clean_cfg(cfg, trainer: str) -> None:
    """Delete every TRAINER child except NAME and the one named ``trainer.upper()``."""
    keep = {"NAME", trainer.upper()}
    for key in list(cfg.TRAINER.keys()):
        if key not in keep:
            cfg.TRAINER.pop(key, None)


def register_cfg_defaults(fn: Callable) -> Callable:
    """Decorator: ``fn(cfg)`` adds keys to the tree; applied by ``extend_cfg`` (idempotent)."""
    if fn not in _CFG_DEFAULT_HOOKS:
        _CFG_DEFAULT_HOOKS.append(fn)
    return fn


def extend_cfg(cfg):
    """Apply every registered ``add_cfg_defaults`` hook to ``cfg`` and return it."""
    for fn in _CFG_DEFAULT_HOOKS:
        fn(cfg)
    return cfg

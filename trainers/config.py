"""The project's config: Dassl defaults + every registered method's and dataset's keys."""
from __future__ import annotations

from dassl.config import extend_cfg, get_cfg_default


def get_cfg():
    """Dassl's default tree extended with the keys of every trainer and dataset module.

    Importing ``trainers`` and ``datasets`` registers all methods, datasets and their
    ``add_cfg_defaults`` hooks; the returned node is not frozen.
    """
    from vlprompt import datasets  # noqa: F401  (registers datasets and their config keys)
    from vlprompt import trainers  # noqa: F401  (registers trainers and their config keys)

    return extend_cfg(get_cfg_default())

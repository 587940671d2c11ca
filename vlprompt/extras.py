"""Optional dependencies: a missing one stops with one line naming the extra that installs it.

The extras of pyproject.toml: ``generation`` (diffusers, transformers: DISEF's captioner and image generator),
``cluster`` (submitit: scripts/grid.py), ``plots`` (matplotlib: parse_test_res.py --plot).
"""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra and the install command."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module``, or raise ``MissingExtraError`` saying that ``what`` needs the optional ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"{what} needs {module.split('.')[0]}, from the optional '{extra}' extra, which is "
                                f'not installed; install it with: pip install "vlprompt[{extra}]"') from err

"""vlprompt: prompt learning and parameter-efficient fine-tuning of CLIP on a Dassl-compatible engine.

The repository keeps CoOp's layout: ``clip/``, ``datasets/`` and ``trainers/`` sit at the top level of a
checkout, yet they are imported as ``vlprompt.clip``, ``vlprompt.datasets`` and ``vlprompt.trainers``, so they
never shadow (and are never shadowed by) the widely installed ``clip`` and HuggingFace ``datasets`` packages.
In a checkout this package reaches those folders by adding the repository root to its search path; an
installed wheel carries them inside ``vlprompt/``.  Only the engine keeps its own top-level name, ``dassl``
(Dassl's module paths, which CoOp-format few-shot caches and CoOp trainer code refer to).
"""
import os as _os

__version__ = "0.2.0"

_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_ROOT, "train.py")) and _os.path.isdir(_os.path.join(_ROOT, "trainers")):
    __path__.append(_ROOT)  # noqa: F821  (a checkout: the top-level method/dataset/CLIP folders are subpackages)

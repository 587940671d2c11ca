"""Reading pickles that may come from elsewhere without running any code stored in them.

A pickle is a small program: besides data it can name any importable function (``os.system``, a class whose
``__reduce__`` was chosen by whoever wrote the file) and call it while loading.  Few-shot caches, ImageNet's
``preprocessed.pkl``, CIFAR's python batches and the class-frequency pickles of the long-tailed benchmarks are
files people copy between machines and download from the web, so every pickle the project reads goes through
``SafeUnpickler``: its ``find_class`` resolves a fixed allow-list of names (plain containers and scalars, Dassl's
``Datum``, ``collections.OrderedDict`` and the NumPy functions that rebuild arrays and scalars) and refuses
everything else *before* anything is called.  Modules outside the list are never even imported.

PyTorch files (checkpoints, caches, sample banks) go through ``torch_load_weights``: ``torch.load`` with
``weights_only=True``, whose own unpickler rebuilds tensors and plain containers only, with torch's multi-line
errors turned into the same one-line exceptions.  Both exceptions subclass ``ValueError``, which ``train.py``
reports as one line on stderr.

Usage::

    data = load_pickle(path)                     # dict / list / Datum / ndarray ... or UnsafePickleError
    batch = load_pickle(path, encoding="bytes")  # Python 2 pickles (CIFAR batches)
    checkpoint = torch_load_weights(path)        # tensors and containers, or UnsafePickleError
"""
from __future__ import annotations

import importlib
import io
import pickle
import re
from typing import Any, Callable, Dict, Tuple

__all__ = ["SafeUnpickler", "UnsafePickleError", "UnreadablePickleError", "load_pickle", "loads_pickle",
           "torch_load_weights", "ALLOWED_GLOBALS"]

# Python built-ins a data pickle may name: containers and scalar types, nothing that calls or imports.
_BUILTIN_TYPES: Dict[str, type] = {t.__name__: t for t in (
    dict, list, tuple, set, frozenset, int, float, complex, bool, str, bytes, bytearray)}
# Python 2 spellings found in old pickles (``__builtin__`` module, ``unicode`` / ``long`` types).
_PY2_BUILTIN_TYPES: Dict[str, type] = {**_BUILTIN_TYPES, "unicode": str, "long": int}


def _builtin(table: Dict[str, type]) -> Callable[[str], Any]:
    return lambda name: table[name]


def _numpy_core(submodule: str) -> Callable[[str], Any]:
    """Resolve ``numpy.core.<submodule>.<name>`` / ``numpy._core.<submodule>.<name>`` in the installed NumPy.

    NumPy 2 renamed ``numpy.core`` to ``numpy._core`` (files written by either name both occur); importing the
    old name warns, so the object is taken from whichever module exists.
    """
    def resolve(name: str) -> Any:
        try:
            module = importlib.import_module(f"numpy._core.{submodule}")
        except ImportError:  # NumPy 1.x
            module = importlib.import_module(f"numpy.core.{submodule}")
        return getattr(module, name)

    return resolve


def _numpy_top(name: str) -> Any:
    import numpy

    return getattr(numpy, name)


def _codecs(name: str) -> Any:
    # Protocol-2 pickles written by Python 3 store ``bytes`` as _codecs.encode(text, "latin1"): a pure conversion.
    import codecs

    return getattr(codecs, name)


def _collections(name: str) -> Any:
    import collections

    return getattr(collections, name)


def _dassl_datum(name: str) -> Any:
    # Imported lazily: dassl.utils is imported by dassl.data, so a top-level import would be circular.
    from dassl.data.datasets.base_dataset import Datum

    return Datum


# (module as written in the pickle) -> (allowed names, how to resolve one).  Nothing outside this table loads.
ALLOWED_GLOBALS: Dict[str, Tuple[frozenset, Callable[[str], Any]]] = {
    "builtins": (frozenset(_BUILTIN_TYPES), _builtin(_BUILTIN_TYPES)),
    "__builtin__": (frozenset(_PY2_BUILTIN_TYPES), _builtin(_PY2_BUILTIN_TYPES)),
    "collections": (frozenset({"OrderedDict"}), _collections),
    "_codecs": (frozenset({"encode"}), _codecs),
    # the few-shot caches and ImageNet's preprocessed.pkl of CoOp / Dassl hold Datum objects by this path
    "dassl.data.datasets.base_dataset": (frozenset({"Datum"}), _dassl_datum),
    # NumPy arrays (protocol <= 4: _reconstruct + ndarray + dtype; protocol 5: _frombuffer) and scalars
    "numpy": (frozenset({"ndarray", "dtype"}), _numpy_top),
    "numpy.core.multiarray": (frozenset({"_reconstruct", "scalar"}), _numpy_core("multiarray")),
    "numpy._core.multiarray": (frozenset({"_reconstruct", "scalar"}), _numpy_core("multiarray")),
    "numpy.core.numeric": (frozenset({"_frombuffer"}), _numpy_core("numeric")),
    "numpy._core.numeric": (frozenset({"_frombuffer"}), _numpy_core("numeric")),
}


class UnsafePickleError(ValueError):
    """A pickle names a global outside the allow-list; the load stopped before anything was called."""


class UnreadablePickleError(ValueError):
    """A file is not a readable pickle (truncated, corrupt, or not a pickle at all)."""


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only resolves ``ALLOWED_GLOBALS``.

    ``source`` names the file in the error message.  Persistent ids are refused by the base class (no
    ``persistent_load``), and the ``copyreg`` extension opcodes also go through ``find_class``.
    """

    def __init__(self, file, source: str = "<bytes>", **kwargs) -> None:
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = ALLOWED_GLOBALS.get(module)
        if allowed is None or name not in allowed[0]:
            raise UnsafePickleError(
                f"{self.source}: refused to unpickle {module}.{name} (a pickle may only hold plain data, NumPy arrays "
                f"and Dassl Datum objects; loading it could run code); remove the file (caches are rebuilt) or get "
                f"it again from a source you trust")
        return allowed[1](name)


def _unpickle(stream, source: str, encoding: str) -> Any:
    try:
        return SafeUnpickler(stream, source=source, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError) as err:
        # one line: the reason without the internals of a corrupt stream
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UnreadablePickleError(f"{source}: not a readable pickle ({type(err).__name__}: {reason}); remove "
                                    f"the file (caches are rebuilt) or copy it again") from err


def load_pickle(path: str, encoding: str = "ASCII") -> Any:
    """Unpickle the file at ``path`` with ``SafeUnpickler``.

    Args:
        path: the file.
        encoding: how Python 2 ``str`` objects are decoded (``"bytes"`` keeps them as bytes, as CIFAR needs).

    Raises:
        UnsafePickleError: the file names a global outside the allow-list (nothing of it ran).
        UnreadablePickleError: the file is truncated or not a pickle.
    """
    with open(path, "rb") as f:
        return _unpickle(f, path, encoding)


def loads_pickle(data: bytes, source: str = "<bytes>", encoding: str = "ASCII") -> Any:
    """``load_pickle`` for bytes already in memory; ``source`` names them in errors."""
    return _unpickle(io.BytesIO(data), source, encoding)


# ----------------------------------------------------------------------------- torch files

# torch's weights-only unpickler names the global it refused as "GLOBAL module.name" or "unsupported GLOBAL x.y".
_REFUSED_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")
_REASON_CHARS = 160  # enough of a corrupt-file message to recognise it, short enough for one line


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:_REASON_CHARS]


def torch_load_weights(path: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a refusal or a corrupt file becomes one line naming ``path``.

    ``weights_only=True`` rebuilds tensors, plain containers and numbers only, and stops at any other global
    before calling it, so nothing stored in the file runs.  torch's own messages span several lines; here they
    become ``UnsafePickleError`` (the refused global is named) or ``UnreadablePickleError``.
    """
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError,
            KeyError) as err:
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused:
            raise UnsafePickleError(
                f"{path}: refused to load {refused.group(1)} (only tensors, numbers and plain containers are read, "
                f"weights_only=True; unpickling other objects could run code); if you trust the file, re-save just "
                f"its tensors as described in docs/files-from-elsewhere.md") from err
        raise UnreadablePickleError(f"{path}: not a readable PyTorch file ({type(err).__name__}: {_first_line(err)}); "
                                    f"copy it again or delete it") from err

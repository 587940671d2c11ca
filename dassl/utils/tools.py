"""Small file, string and environment helpers (Dassl's ``dassl.utils.tools``)."""
from __future__ import annotations

import difflib
import errno
import json
import logging
import os
import os.path as osp
import random
import sys
import time
import urllib.request
import warnings
from typing import Any, List, Sequence

import numpy as np
import PIL
import torch
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "mkdir_if_missing",
    "check_isfile",
    "read_json",
    "write_json",
    "set_random_seed",
    "download_url",
    "read_image",
    "collect_env_info",
    "listdir_nohidden",
    "get_most_similar_str_to_a_from_b",
    "check_availability",
    "tolist_if_not",
    "UnreadableImageError",
]


class UnreadableImageError(OSError):
    """An image file exists but cannot be decoded."""


def mkdir_if_missing(dirname: str) -> None:
    if not osp.exists(dirname):
        try:
            os.makedirs(dirname)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise


def check_isfile(fpath: str) -> bool:
    isfile = osp.isfile(fpath)
    if not isfile:
        warnings.warn(f'No file found at "{fpath}"')
    return isfile


def read_json(fpath: str) -> Any:
    with open(fpath, "r") as f:
        return json.load(f)


def write_json(obj: Any, fpath: str) -> None:
    mkdir_if_missing(osp.dirname(fpath) or ".")
    tmp = f"{fpath}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=4, separators=(",", ": "))
    os.replace(tmp, fpath)


def set_random_seed(seed: int) -> None:
    """Seed Python ``random``, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def download_url(url: str, dst: str) -> None:
    """Download ``url`` to ``dst`` through a ``.part`` file so an interrupted download leaves nothing."""
    from tqdm import tqdm

    mkdir_if_missing(osp.dirname(dst) or ".")
    part = dst + ".part"
    with urllib.request.urlopen(url) as src, open(part, "wb") as out:
        total = int(src.headers.get("Content-Length") or 0)
        # disable=None: a bar only when the output is a terminal (no carriage-return frames in logs)
        with tqdm(total=total, unit="B", unit_scale=True, desc=osp.basename(dst), disable=None) as bar:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))
    os.replace(part, dst)


def read_image(path: str) -> Image.Image:
    """Read an image as RGB; an undecodable file raises ``UnreadableImageError`` naming it."""
    if not osp.exists(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        return Image.open(path).convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise UnreadableImageError(f"cannot read image {path}: {err} — re-download it (see DATASETS.md)") from err


def collect_env_info() -> str:
    from torch.utils.collect_env import get_pretty_env_info

    return get_pretty_env_info() + f"\n        Pillow ({PIL.__version__})"


def listdir_nohidden(path: str, sort: bool = False) -> List[str]:
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    if sort:
        items.sort()
    return items


def get_most_similar_str_to_a_from_b(a: str, b: Sequence[str]) -> str:
    """The string in ``b`` most similar to ``a`` (ties go to the later candidate, as upstream)."""
    highest_sim, chosen = 0.0, None
    for candidate in b:
        sim = difflib.SequenceMatcher(None, a, candidate).ratio()
        if sim >= highest_sim:
            highest_sim, chosen = sim, candidate
    return chosen


def check_availability(requested: str, available: Sequence[str]) -> None:
    if requested not in available:
        closest = get_most_similar_str_to_a_from_b(requested, available)
        raise ValueError(
            f"The requested one is expected to belong to {list(available)}, "
            f"but got [{requested}] (do you mean [{closest}]?)"
        )


def tolist_if_not(x: Any) -> list:
    if not isinstance(x, list):
        x = [x]
    return x

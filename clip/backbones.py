"""One table of the CLIP backbones ``vlprompt.clip.load`` knows: name -> download, checksum, resolution, tower.

The nine OpenAI checkpoints (Radford et al. 2021, arXiv:2103.00020; URLs and SHA256 sums as published in
openai/CLIP's ``clip/clip.py``) and the offline tiny architectures of ``clip/tiny.py``.  Other packages add
their own named backbones with ``register_backbone`` (e.g. the pre-trained tiny CLIPs of the trainers), so
that the input resolution and tower type of every name are known before any weights load.

open_clip models are named ``open_clip:<model>:<pretrained>`` (``<model>`` an open_clip architecture name or a
path to its JSON config, ``<pretrained>`` one of its pretrained tags or a path to a weights file).  They are
not listed up front: ``backbone_info`` resolves such a name on first use from open_clip's own config tables
(``clip/open_clip_loader.py``, no download) and adds the entry to the table.
"""
from __future__ import annotations

import os.path as osp
import re
from dataclasses import dataclass
from typing import Optional

from .tiny import TINY_CONFIGS

OPENAI_URL_ROOT = "https://openaipublic.azureedge.net/clip/models"
TOWERS = ("vit", "resnet")
ACTIVATIONS = ("quick_gelu", "gelu")  # MLP activation of the transformer blocks
OPEN_CLIP_PREFIX = "open_clip:"  # MODEL.BACKBONE.NAME = open_clip:<model>:<pretrained tag or weights file>
WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".tar")  # how a weights-file path ends


@dataclass(frozen=True)
class Backbone:
    """What is known of a named CLIP before loading it."""

    name: str
    tower: str  # image tower: "vit" (VisionTransformer) or "resnet" (ModifiedResNet)
    resolution: int  # input image side in pixels
    sha256: str = ""  # of the downloaded file; "" for models built offline
    filename: str = ""  # file name under the download root
    tiny_arch: str = ""  # clip.tiny architecture key for seeded random tiny models
    activation: str = "quick_gelu"  # MLP activation: "quick_gelu" (OpenAI) or "gelu" (many open_clip models)
    # Input normalisation the weights were trained with; () = not checked (OpenAI and tiny names, whose
    # reference configs do not all use CLIP's statistics).  open_clip names carry their pretrained config's.
    pixel_mean: tuple[float, ...] = ()
    pixel_std: tuple[float, ...] = ()

    @property
    def url(self) -> str:
        """Download URL (OpenAI's layout: ``<root>/<sha256>/<file>``), or "" when nothing is downloaded."""
        return f"{OPENAI_URL_ROOT}/{self.sha256}/{self.filename}" if self.sha256 else ""

    @property
    def is_resnet(self) -> bool:
        return self.tower == "resnet"

    @property
    def is_open_clip(self) -> bool:
        return is_open_clip_name(self.name)


def _openai(name: str, tower: str, resolution: int, sha256: str, filename: str) -> Backbone:
    return Backbone(name, tower, resolution, sha256=sha256, filename=filename)


def _tiny(name: str, arch: str) -> Backbone:
    tower = "vit" if isinstance(TINY_CONFIGS[arch]["vision_layers"], int) else "resnet"
    return Backbone(name, tower, TINY_CONFIGS[arch]["image_resolution"], tiny_arch=arch)


# Every named backbone, in the order `available_models` lists them.
BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    _openai("RN50", "resnet", 224, "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt"),
    _openai("RN101", "resnet", 224, "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", "RN101.pt"),
    _openai("RN50x4", "resnet", 288, "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd",
            "RN50x4.pt"),
    _openai("RN50x16", "resnet", 384, "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa",
            "RN50x16.pt"),
    _openai("RN50x64", "resnet", 448, "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c",
            "RN50x64.pt"),
    _openai("ViT-B/32", "vit", 224, "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
            "ViT-B-32.pt"),
    _openai("ViT-B/16", "vit", 224, "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
            "ViT-B-16.pt"),
    _openai("ViT-L/14", "vit", 224, "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
            "ViT-L-14.pt"),
    _openai("ViT-L/14@336px", "vit", 336, "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
            "ViT-L-14-336px.pt"),
    _tiny("tiny-vit", "vit"),
    _tiny("tiny-rn", "rn"),
)}


def register_backbone(backbone: Backbone) -> Backbone:
    """Add a named backbone (same name twice must describe the same backbone)."""
    if backbone.tower not in TOWERS:
        raise ValueError(f"backbone {backbone.name}: tower {backbone.tower!r}; choose one of {', '.join(TOWERS)}")
    if backbone.activation not in ACTIVATIONS:
        raise ValueError(f"backbone {backbone.name}: activation {backbone.activation!r}; choose one of "
                         f"{', '.join(ACTIVATIONS)}")
    known = BACKBONES.get(backbone.name)
    if known is not None and known != backbone:
        raise KeyError(f"backbone {backbone.name!r} is already registered as {known}")
    BACKBONES[backbone.name] = backbone
    return backbone


def backbone_info(name: str) -> Optional[Backbone]:
    """The table entry of ``name``, or None for a name the table does not know (e.g. a file path).

    An ``open_clip:<model>:<pretrained>`` name is resolved from open_clip's config tables on first use (nothing
    is downloaded) and added to the table; a name that cannot work raises a one-line error instead: unknown
    model or tag, missing weights file, or an architecture vlprompt's CLIP cannot represent.
    """
    known = BACKBONES.get(name)
    if known is None and is_open_clip_name(name):
        from .open_clip_loader import describe_open_clip  # imports open_clip (seconds): only when needed

        known = register_backbone(describe_open_clip(name))
    return known


def is_open_clip_name(name: str) -> bool:
    """Whether ``name`` is an ``open_clip:<model>:<pretrained>`` backbone name."""
    return name.startswith(OPEN_CLIP_PREFIX)


class OpenClipNameError(ValueError):
    """A backbone name starts with ``open_clip:`` but is not ``open_clip:<model>:<pretrained>``."""


def split_open_clip_name(name: str) -> tuple[str, str]:
    """``open_clip:<model>:<pretrained>`` -> ``(model, pretrained)``; the pretrained part may contain ":"."""
    model, sep, pretrained = name[len(OPEN_CLIP_PREFIX):].partition(":")
    if not is_open_clip_name(name) or not model or not sep or not pretrained:
        raise OpenClipNameError(
            f"MODEL.BACKBONE.NAME={name!r}: expected open_clip:<model>:<pretrained tag or weights file>, e.g. "
            "open_clip:ViT-B-16:laion2b_s34b_b88k or open_clip:ViT-B-16:/path/to/open_clip_model.safetensors")
    return model, pretrained


def backbone_label(name: str) -> str:
    """A short file-name-safe label of a backbone name, for cache file names (not unique: hash the full name).

    ``ViT-B/16`` -> ``ViT-B-16``; ``open_clip:ViT-B-16:laion2b_s34b_b88k`` -> ``open_clip-ViT-B-16-laion2b_s34b_b88k``;
    a path keeps its file name only (``open_clip:ViT-B-16:/ckpt/epoch_32.pt`` -> ``open_clip-ViT-B-16-epoch_32.pt``).
    """
    parts = split_open_clip_name(name) if is_open_clip_name(name) else (name,)
    parts = [osp.basename(part.rstrip("/\\")) if _looks_like_path(part) else part for part in parts]
    prefix = [OPEN_CLIP_PREFIX.rstrip(":")] if is_open_clip_name(name) else []
    label = re.sub(r"[^A-Za-z0-9._+-]+", "-", "-".join(prefix + parts)).strip("-.")
    return label[:80] or "backbone"


def _looks_like_path(part: str) -> bool:
    """A file path rather than a model name or tag (``ViT-B/16`` has a slash but is a name)."""
    return part.startswith(("/", "~", ".")) or part.lower().endswith(WEIGHT_FILE_SUFFIXES + (".json",))


def openai_models() -> list[str]:
    """Names of the released OpenAI checkpoints (downloaded and SHA256-checked)."""
    return [b.name for b in BACKBONES.values() if b.sha256]


def tiny_models() -> list[str]:
    """Names of the seeded random tiny models built offline."""
    return [b.name for b in BACKBONES.values() if b.tiny_arch]


def known_checkpoint_hashes() -> dict[str, str]:
    """SHA256 -> name of every downloadable checkpoint (to recognise a local copy of an official file)."""
    return {b.sha256: b.name for b in BACKBONES.values() if b.sha256}

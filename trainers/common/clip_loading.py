"""Loading CLIP for the prompt trainers, and the fp16 / fp32 / amp precision recipes.

Written once for every method (CoOp's ``load_clip_to_cpu`` and precision handling, KaiyangZhou/CoOp). CoOp's
``load_clip_to_cpu(cfg)`` becomes ``load_clip_to_cpu(backbone_name)``: it takes what ``clip.load`` takes (an
OpenAI name, ``tiny-vit``/``tiny-rn``, ``open_clip:<model>:<pretrained tag or weights file>``, or a path) plus
the names in ``PRETRAINED_TINY`` — tiny CLIPs that ``clip/pretrain_tiny.py`` pre-trained on synthetic shapes,
stored under ``pretrained_dir()``.  ``check_input_size`` and ``check_pixel_stats`` compare ``INPUT.SIZE`` and
``INPUT.PIXEL_MEAN``/``PIXEL_STD`` with what the backbone table says (docs/backbones.md).

Precision (CoOp's ``TRAINER.<NAME>.PREC``):
- ``fp16``: the reference recipe for the frozen towers — conv/linear/attention weights and projections in half
  precision, CLIP computes in fp16.  The learnable modules keep fp32 *master* weights (the reference makes them
  half and runs SGD on fp16 values, where small updates round away); they are cast to fp16 where they meet the
  frozen tensors (``PromptLearnerBase.construct_prompts``, CoCoOp's meta-net), so gradients arrive in fp32.
  On a CPU this falls back to ``fp32`` with a warning (fp16 matmuls are slow or missing there).
- ``fp32``: everything in fp32.
- ``amp``: CLIP and the learnable modules in fp32; the training forward runs under ``torch.autocast`` with
  a ``GradScaler`` (CUDA only; on a CPU it falls back to ``fp32`` with a warning).
"""
from __future__ import annotations

import logging
import math
import os
import os.path as osp
from typing import Optional, Sequence, Union

import torch
from torch import nn

from dassl.config import register_cfg_defaults
from vlprompt import clip
from vlprompt.clip import Backbone, backbone_info, register_backbone
from vlprompt.clip.backbones import OPEN_CLIP_PREFIX, is_open_clip_name
from vlprompt.clip.model import CLIP, convert_weights

logger = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32", "amp")
# Registered pre-trained tiny CLIPs: backbone name -> (file name under pretrained_dir(), tiny architecture).
PRETRAINED_TINY: dict[str, tuple[str, str]] = {
    "tiny-vit-synthetic": ("tiny-vit-synthetic.pth", "vit"),
    "tiny-rn-synthetic": ("tiny-rn-synthetic.pth", "rn"),
}
PRETRAINED_DIR_ENV = "VLPROMPT_PRETRAINED_DIR"  # overrides where PRETRAINED_TINY files are looked up
# The pre-trained tiny CLIPs join the backbone table, so their resolution and tower are known before loading.
for _name, (_, _arch) in PRETRAINED_TINY.items():
    _tiny = backbone_info(f"tiny-{_arch}")
    register_backbone(Backbone(_name, _tiny.tower, _tiny.resolution))
_REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    """Keys of CLIP loading shared by every CLIP trainer."""
    # True = MODEL.BACKBONE.NAME may be a local TorchScript archive whose SHA256 is not one of OpenAI's released
    # checkpoints (e.g. your own traced model). Opening TorchScript runs code stored in the file, so the default
    # False refuses such files with one line; plain torch.save state dicts and the named models never need it
    cfg.MODEL.BACKBONE.TRUST_LOCAL_ARCHIVE = False


class BackboneNotFoundError(FileNotFoundError):
    """``MODEL.BACKBONE.NAME`` names no known CLIP, tiny model or existing file."""


def pretrained_dir() -> str:
    """Folder of the pre-trained tiny CLIP files: ``$VLPROMPT_PRETRAINED_DIR`` or ``<repo>/output/pretrained``."""
    return os.environ.get(PRETRAINED_DIR_ENV) or osp.join(_REPO_ROOT, "output", "pretrained")


def pretrained_tiny_path(name: str) -> str:
    """File that the registered pre-trained tiny CLIP ``name`` is stored in (it may not exist yet)."""
    if name not in PRETRAINED_TINY:
        raise KeyError(f"{name!r} is not a pre-trained tiny CLIP; choose one of {sorted(PRETRAINED_TINY)}")
    return osp.join(pretrained_dir(), PRETRAINED_TINY[name][0])


def available_backbones() -> list[str]:
    """Every fixed name ``load_clip_to_cpu`` accepts besides a file path and ``open_clip:<model>:<pretrained>``."""
    return clip.available_models() + clip.tiny_models() + list(PRETRAINED_TINY)


def resolve_backbone(name: str) -> str:
    """What ``clip.load`` should receive for ``MODEL.BACKBONE.NAME`` = ``name``; raises if it cannot exist.

    OpenAI and tiny names pass through, a registered pre-trained tiny name becomes its file path, an
    ``open_clip:`` name passes through once open_clip's tables know its model and tag (or its weights file
    exists) and its architecture is one our CLIP represents, and any other string must be an existing file.
    Called from ``check_cfg``, i.e. before anything is loaded or downloaded.
    """
    if name in clip.available_models() or name in clip.tiny_models():
        return name
    if is_open_clip_name(name):
        backbone_info(name)  # one-line ValueError / FileNotFoundError when it cannot work
        return name
    if name in PRETRAINED_TINY:
        path = pretrained_tiny_path(name)
        if not osp.isfile(path):
            raise BackboneNotFoundError(
                f"MODEL.BACKBONE.NAME={name}: pre-trained file {path} is missing; create it with "
                f"`python scripts/pretrain_tiny_clip.py --name {name}` (or set ${PRETRAINED_DIR_ENV})")
        return path
    if osp.isfile(osp.expanduser(name)):
        return osp.expanduser(name)
    raise BackboneNotFoundError(f"MODEL.BACKBONE.NAME={name!r} is neither a file, {OPEN_CLIP_PREFIX}<model>:"
                                f"<pretrained> nor one of {available_backbones()}; fix --backbone or the config's "
                                "MODEL.BACKBONE.NAME")


def check_input_size(backbone_name: str, input_size: tuple, resolution: Optional[int] = None) -> None:
    """Raise if ``INPUT.SIZE`` differs from the backbone's input resolution (known by name, or given)."""
    info = backbone_info(backbone_name)
    resolution = resolution or (info.resolution if info else None)
    if resolution is not None and tuple(input_size) != (resolution, resolution):
        raise ValueError(f"INPUT.SIZE={tuple(input_size)} but {backbone_name} takes {resolution}x{resolution} "
                         f"images; set INPUT.SIZE ({resolution}, {resolution}) in the trainer config")


def check_pixel_stats(backbone_name: str, pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> None:
    """Raise if ``INPUT.PIXEL_MEAN``/``PIXEL_STD`` differ from the statistics the backbone was trained with.

    Checked for backbones whose table entry records them (``open_clip:`` names, from the pretrained tag);
    OpenAI and tiny names are not checked, since some reference configs (LMPT's) normalise them otherwise.
    """
    info = backbone_info(backbone_name)
    if info is None or not info.pixel_mean:
        return
    if not (_close(pixel_mean, info.pixel_mean) and _close(pixel_std, info.pixel_std)):
        raise ValueError(f"INPUT.PIXEL_MEAN={list(pixel_mean)} / PIXEL_STD={list(pixel_std)} but {backbone_name} was "
                         f"trained with mean {list(info.pixel_mean)} and std {list(info.pixel_std)}; set "
                         f"INPUT.PIXEL_MEAN {list(info.pixel_mean)} and INPUT.PIXEL_STD {list(info.pixel_std)}")


def _close(values: Sequence[float], expected: Sequence[float]) -> bool:
    """Equal to the published constants up to the digits a YAML file carries."""
    return len(values) == len(expected) and all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
                                                for a, b in zip(values, expected))


def load_clip_to_cpu(backbone_name: str, trust_local_archive: bool = False) -> CLIP:
    """CLIP on the CPU in fp32 and eval mode (``clip.load(..., device="cpu", jit=False)``).

    The official weights are fp16 values, so fp32 here equals the reference's fp16 model upcast with
    ``.float()``; ``cast_clip`` then applies the run's precision.  ``trust_local_archive``
    (``MODEL.BACKBONE.TRUST_LOCAL_ARCHIVE``) lets a local TorchScript archive that is not a released OpenAI
    checkpoint load; without it such a file is refused (opening TorchScript runs code stored in the file).
    """
    model, _ = clip.load(resolve_backbone(backbone_name), device="cpu", jit=False,
                         trust_local_archive=trust_local_archive)
    return model.eval()


def resolve_precision(precision: str, device: Union[str, torch.device]) -> str:
    """The precision actually used on ``device``: fp16 and amp need CUDA and fall back to fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and torch.device(device).type != "cuda":
        logger.warning(f"PREC={precision} needs a CUDA device; running in fp32 on {torch.device(device).type}")
        return "fp32"
    return precision


def cast_clip(clip_model: CLIP, precision: str) -> CLIP:
    """Apply a resolved precision in place: ``fp16`` -> OpenAI's half recipe, ``fp32``/``amp`` -> all fp32."""
    if precision == "fp16":
        convert_weights(clip_model)
    else:
        clip_model.float()
    return clip_model


def cast_learnable(module: nn.Module, clip_model: CLIP, fp32_master: bool = True) -> nn.Module:
    """Give a learnable module its training dtype, in place.

    Args:
        module: the learnable submodule.
        clip_model: CLIP after ``cast_clip`` (its dtype is the compute dtype of the frozen towers).
        fp32_master: keep fp32 parameters whatever CLIP's dtype (default; the module casts them to the compute
            dtype in its forward); ``False`` gives parameters and buffers CLIP's dtype, literally as CoOp/CoCoOp do
            (half under fp16).  Buffers (frozen token embeddings) keep their dtype under ``fp32_master``.
    """
    if not fp32_master:
        return module.to(clip_model.dtype)
    for param in module.parameters():
        if param.is_floating_point():
            param.data = param.data.float()
    return module

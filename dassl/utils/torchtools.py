"""Checkpoint save/resume/load and small model utilities (Dassl's ``torchtools``).

Differences from upstream, on purpose: checkpoints are written atomically (temp file +
rename) and hold only tensors and primitives, so they load with ``weights_only=True``, which is
how ``load_checkpoint`` reads every checkpoint (nothing stored in a shared file can run).
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import shutil
from collections import OrderedDict
from typing import Any, Dict, Iterable, Optional

import torch
import torch.nn as nn

from .safe_pickle import torch_load_weights
from .tools import mkdir_if_missing

logger = logging.getLogger(__name__)

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "resume_from_checkpoint",
    "open_all_layers",
    "open_specified_layers",
    "count_num_param",
    "load_pretrained_weights",
    "init_network_weights",
    "set_bn_to_eval",
    "adjust_learning_rate",
]


def _atomic_torch_save(obj: Any, fpath: str) -> None:
    tmp = f"{fpath}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, fpath)


def save_checkpoint(
    state: Dict[str, Any],
    save_dir: str,
    is_best: bool = False,
    remove_module_from_keys: bool = True,
    model_name: str = "",
) -> str:
    """Save ``state`` to ``save_dir/model.pth.tar-<epoch>`` (or ``model_name``) and update ``checkpoint``."""
    mkdir_if_missing(save_dir)
    if remove_module_from_keys:
        state_dict = state["state_dict"]
        state["state_dict"] = OrderedDict((k[7:] if k.startswith("module.") else k, v) for k, v in state_dict.items())
    if not model_name:
        model_name = "model.pth.tar-" + str(state["epoch"])
    fpath = osp.join(save_dir, model_name)
    _atomic_torch_save(state, fpath)
    logger.info(f"Checkpoint saved to {fpath}")
    pointer = osp.join(save_dir, "checkpoint")
    with open(pointer + ".tmp", "w") as f:
        f.write(f"{osp.basename(fpath)}\n")
    os.replace(pointer + ".tmp", pointer)
    if is_best:
        best_fpath = osp.join(osp.dirname(fpath), "model-best.pth.tar")
        shutil.copy(fpath, best_fpath)
        logger.info(f'Best checkpoint saved to "{best_fpath}"')
    return fpath


def load_checkpoint(fpath: Optional[str]) -> Dict[str, Any]:
    """Load a checkpoint onto the CPU (or CUDA when available), reading tensors and plain data only.

    ``torch.load(weights_only=True)``: a checkpoint is a file people share, and unpickling arbitrary objects
    from it could run code.  Our checkpoints hold tensors and primitives only, so they always load; a file that
    holds anything else (e.g. upstream Dassl's pickled warm-up scheduler object) or is corrupt stops with one
    line naming it (``UnsafePickleError`` / ``UnreadablePickleError``, both ``ValueError``s).
    """
    if fpath is None:
        raise ValueError("File path is None")
    if not osp.exists(fpath):
        raise FileNotFoundError(f'File is not found at "{fpath}"')
    map_location = None if torch.cuda.is_available() else "cpu"
    return torch_load_weights(fpath, map_location=map_location)


def resume_from_checkpoint(fdir: str, model: nn.Module, optimizer=None, scheduler=None) -> int:
    """Restore model/optimizer/scheduler from the file named in ``fdir/checkpoint``; return the next epoch."""
    with open(osp.join(fdir, "checkpoint"), "r") as f:
        fname = f.readlines()[0].strip("\n")
    fpath = osp.join(fdir, fname)
    logger.info(f'Loading checkpoint from "{fpath}"')
    checkpoint = load_checkpoint(fpath)
    model.load_state_dict(checkpoint["state_dict"])
    logger.info("Loaded model weights")
    if optimizer is not None and checkpoint.get("optimizer") is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        logger.info("Loaded optimizer")
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
        logger.info("Loaded scheduler")
    start_epoch = checkpoint["epoch"]
    logger.info(f"Previous epoch: {start_epoch}")
    return start_epoch


def adjust_learning_rate(optimizer, base_lr, epoch, stepsize=20, gamma=0.1, linear_decay=False, final_lr=0, max_epoch=100):
    """Deprecated upstream helper, kept for import compatibility."""
    if linear_decay:
        lr = base_lr + (final_lr - base_lr) * epoch / max_epoch
    else:
        lr = base_lr * (gamma ** (epoch // stepsize))
    for group in optimizer.param_groups:
        group["lr"] = lr


def set_bn_to_eval(m: nn.Module) -> None:
    if m.__class__.__name__.find("BatchNorm") != -1:
        m.eval()


def open_all_layers(model: nn.Module) -> None:
    model.train()
    for p in model.parameters():
        p.requires_grad = True


def open_specified_layers(model: nn.Module, open_layers) -> None:
    if isinstance(model, nn.DataParallel):
        model = model.module
    if isinstance(open_layers, str):
        open_layers = [open_layers]
    for layer in open_layers:
        if not hasattr(model, layer):
            raise ValueError(f"{layer} is not an attribute of the model")
    for name, module in model.named_children():
        is_open = name in open_layers
        module.train(is_open)
        for p in module.parameters():
            p.requires_grad = is_open


def count_num_param(model: Optional[nn.Module] = None, params: Optional[Iterable] = None) -> int:
    if model is not None:
        return sum(p.numel() for p in model.parameters())
    if params is not None:
        return sum(p.numel() for p in params)
    raise ValueError("model and params must be provided")


def load_pretrained_weights(model: nn.Module, weight_path: str) -> None:
    """Load every key of ``weight_path`` whose name and shape match ``model``; report the rest."""
    checkpoint = load_checkpoint(weight_path)
    state_dict = checkpoint.get("state_dict", checkpoint)
    model_dict = model.state_dict()
    matched, discarded = OrderedDict(), []
    for k, v in state_dict.items():
        k = k[7:] if k.startswith("module.") else k
        if k in model_dict and model_dict[k].size() == v.size():
            matched[k] = v
        else:
            discarded.append(k)
    model_dict.update(matched)
    model.load_state_dict(model_dict)
    if not matched:
        logger.warning(f"Cannot load {weight_path} (check the key names manually)")
    else:
        logger.info(f"Successfully loaded pretrained weights from {weight_path}")
        if discarded:
            logger.info(f"Layers discarded due to unmatched keys or size: {discarded}")


def init_network_weights(model: nn.Module, init_type: str = "normal", gain: float = 0.02) -> None:
    def _init(m):
        name = m.__class__.__name__
        if hasattr(m, "weight") and (name.find("Conv") != -1 or name.find("Linear") != -1):
            if init_type == "normal":
                nn.init.normal_(m.weight.data, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight.data, gain=gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight.data, a=0, mode="fan_in")
            elif init_type == "orthogonal":
                nn.init.orthogonal_(m.weight.data, gain=gain)
            else:
                raise NotImplementedError(f"initialization method {init_type} is not implemented")
            if hasattr(m, "bias") and m.bias is not None:
                nn.init.constant_(m.bias.data, 0.0)
        elif name.find("BatchNorm") != -1 and m.affine:
            nn.init.constant_(m.weight.data, 1.0)
            nn.init.constant_(m.bias.data, 0.0)
        elif name.find("InstanceNorm") != -1 and m.weight is not None and m.bias is not None:
            nn.init.constant_(m.weight.data, 1.0)
            nn.init.constant_(m.bias.data, 0.0)

    model.apply(_init)

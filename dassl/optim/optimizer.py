"""``build_optimizer`` (Dassl's ``dassl/optim/optimizer.py`` semantics)."""
from __future__ import annotations

import logging
import warnings

import torch
import torch.nn as nn

from .radam import RAdam

logger = logging.getLogger(__name__)

AVAI_OPTIMS = ["adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw"]


def _param_source(model, optim_cfg):
    if optim_cfg.STAGED_LR:
        if not isinstance(model, nn.Module):
            raise TypeError("When OPTIM.STAGED_LR is True, the model given to build_optimizer() must be an nn.Module")
        if isinstance(model, nn.DataParallel):
            model = model.module
        new_layers = optim_cfg.NEW_LAYERS
        if isinstance(new_layers, str):
            if new_layers is None:
                warnings.warn("new_layers is empty (staged_lr is useless)")
            new_layers = [new_layers]
        base_params, new_params = [], []
        for name, module in model.named_children():
            (new_params if name in new_layers else base_params).extend(module.parameters())
        return [
            {"params": base_params, "lr": optim_cfg.LR * optim_cfg.BASE_LR_MULT},
            {"params": new_params},
        ]
    if isinstance(model, nn.Module):
        return model.parameters()
    return model


def build_optimizer(model, optim_cfg, param_groups=None):
    """Optimizer named ``OPTIM.NAME`` over ``model``'s parameters (or ``param_groups``)."""
    name = optim_cfg.NAME
    if name not in AVAI_OPTIMS:
        raise ValueError(f"optim must be one of {AVAI_OPTIMS}, but got {name}")
    if param_groups is not None and optim_cfg.STAGED_LR:
        warnings.warn("OPTIM.STAGED_LR will be ignored, if you need to use staged_lr, please bind it with param_groups yourself.")
    params = param_groups if param_groups is not None else _param_source(model, optim_cfg)
    lr, wd = optim_cfg.LR, optim_cfg.WEIGHT_DECAY
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=betas)
    if name == "amsgrad":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=betas, amsgrad=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
                               dampening=optim_cfg.SGD_DAMPNING, nesterov=optim_cfg.SGD_NESTEROV)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
                                   alpha=optim_cfg.RMSPROP_ALPHA)
    if name == "radam":
        return RAdam(params, lr=lr, weight_decay=wd, betas=betas)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=betas)

"""Backbones, heads and networks for ``SimpleNet`` (CoOp-family trainers never use these)."""
from __future__ import annotations

import logging

import torch.nn as nn

from dassl.utils import Registry, check_availability

logger = logging.getLogger(__name__)

BACKBONE_REGISTRY = Registry("BACKBONE")
HEAD_REGISTRY = Registry("HEAD")
NETWORK_REGISTRY = Registry("NETWORK")


class Backbone(nn.Module):
    """A feature extractor exposing ``out_features`` (its output width)."""

    @property
    def out_features(self):
        return getattr(self, "_out_features", None)


def build_backbone(name, verbose=True, **kwargs):
    check_availability(name, BACKBONE_REGISTRY.registered_names())
    if verbose:
        logger.info(f"Backbone: {name}")
    return BACKBONE_REGISTRY.get(name)(**kwargs)


def build_head(name, verbose=True, **kwargs):
    check_availability(name, HEAD_REGISTRY.registered_names())
    if verbose:
        logger.info(f"Head: {name}")
    return HEAD_REGISTRY.get(name)(**kwargs)


def build_network(name, verbose=True, **kwargs):
    check_availability(name, NETWORK_REGISTRY.registered_names())
    if verbose:
        logger.info(f"Network: {name}")
    return NETWORK_REGISTRY.get(name)(**kwargs)


class _ConvNetSmall(Backbone):
    """Three conv blocks + global pooling: a tiny backbone for tests and the toy trainer."""

    def __init__(self, width: int = 32, **kwargs):
        super().__init__()
        layers, in_ch = [], 3
        for _ in range(3):
            layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_ch = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self._out_features = width

    def forward(self, x):
        return self.features(x)


@BACKBONE_REGISTRY.register()
def cnn_small(**kwargs):
    return _ConvNetSmall(**kwargs)


@BACKBONE_REGISTRY.register()
def resnet18(pretrained=True, **kwargs):
    """torchvision ResNet-18 without its classifier (pretrained weights need a download)."""
    import torchvision

    weights = torchvision.models.ResNet18_Weights.DEFAULT if pretrained else None
    net = torchvision.models.resnet18(weights=weights)
    out = net.fc.in_features
    net.fc = nn.Identity()
    wrapper = Backbone()
    wrapper.add_module("net", net)
    wrapper._out_features = out
    wrapper.forward = net.forward
    return wrapper


class MLP(nn.Module):
    def __init__(self, in_features=2048, hidden_layers=(), activation="relu", bn=True, dropout=0.0):
        super().__init__()
        if isinstance(hidden_layers, int):
            hidden_layers = [hidden_layers]
        acts = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU}
        if activation not in acts:
            raise ValueError(f"MODEL.HEAD.ACTIVATION={activation!r}; choose one of {list(acts)}")
        layers = []
        for hidden_dim in hidden_layers:
            layers.append(nn.Linear(in_features, hidden_dim))
            if bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(acts[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_features = hidden_dim
        self.out_features = in_features
        self.mlp = nn.Sequential(*layers)

    def forward(self, x):
        return self.mlp(x)


@HEAD_REGISTRY.register()
def mlp(**kwargs):
    return MLP(**kwargs)

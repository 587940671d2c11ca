"""Text features of hand-written prompts, computed once for a frozen text tower (zero-shot classifiers).

Used by ZeroshotCLIP / ZeroshotCLIP2 and by any method whose text
side is frozen: ``class_text_features(clip_model, classnames, templates)`` returns one L2-normalised row per
class, averaged over templates (prompt ensembling, Radford et al. 2021, arXiv:2103.00020, section 3.1.4).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from dassl.utils import progress
from vlprompt import clip

from .prompt_clip import l2_normalize
from .text_encoder import TextEncoder


@torch.no_grad()
def encode_texts(clip_model: nn.Module, texts: Sequence[str], truncate_at_eot: bool = True,
                 batch_size: int = 1000) -> Tensor:
    """L2-normalised features ``(len(texts), E)`` on CLIP's device, in ``batch_size`` chunks."""
    encoder = TextEncoder(clip_model, truncate_at_eot=truncate_at_eot)
    device = clip_model.token_embedding.weight.device
    features = []
    for start in range(0, len(texts), batch_size):
        tokens = clip.tokenize(list(texts[start:start + batch_size])).long().to(device)  # (n, 77)
        embeddings = clip_model.token_embedding(tokens).to(encoder.dtype)  # (n, 77, D)
        features.append(l2_normalize(encoder(embeddings, tokens)))
    return torch.cat(features)  # (len(texts), E)


@torch.no_grad()
def class_text_features(clip_model: nn.Module, classnames: Sequence[str], templates: Sequence[str],
                        truncate_at_eot: bool = True) -> Tensor:
    """Zero-shot classifier weights ``(n_cls, E)``: per template encode and normalise, average, normalise.

    ``templates`` hold one ``{}`` for the class name (``_`` in names is read as a space).
    """
    names = [name.replace("_", " ") for name in classnames]
    total = None
    for template in progress(templates, "text features", enabled=len(templates) > 1):
        features = encode_texts(clip_model, [template.format(name) for name in names], truncate_at_eot)
        total = features if total is None else total + features
    return l2_normalize(total / len(templates))  # (n_cls, E)

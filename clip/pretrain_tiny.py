"""Contrastive pre-training of a tiny CLIP on synthetic shape images, for the offline demo and tests.

The CLIP objective of Radford et al. (arXiv:2103.00020, Figure 3): a symmetric cross-entropy over the
image-text similarity matrix of a batch.  Images are drawn by the ``Synthetic`` dataset's renderer
(``datasets/synthetic.py``) for all 48 colour x shape classes, from a generation stream
(``"pretrain-<seed>-<class>"``) that differs from the dataset's (``"<GEN_SEED>-<label>"``), and go through the
same pipeline as the dataset's test images (JPEG, bicubic resize, CLIP normalisation).  Captions are varied
templates such as "a photo of a red circle.".  Each step sees one image per class, so a batch has no
duplicate captions.

The default budget (25 steps, about 3 s on one CPU core) is small on purpose.  Longer pre-training on the
exact downstream concepts makes zero-shot as good as the frozen features allow (a 16-shot linear probe
does no better), which leaves prompt learning nothing to show.  After 25 steps the model is a *weak* CLIP:
zero-shot on the demo's 5 base classes is about 45% (chance 20%) while a linear probe on its frozen image
features reaches about 70% -- the regime of the CoOp paper, where learning the prompt from 16 shots pays
off (demo: CoOp ~55% on base classes, and below zero-shot on new ones).

Runs single-threaded, so the result is the same on any number of cores (for a given torch build).  The
state dict is saved in OpenAI key layout with values on the fp16 grid, so ``clip.load(path)`` reproduces it
exactly.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import random
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms.functional import normalize, pil_to_tensor, resize

from .clip import BICUBIC, OPENAI_MEAN, OPENAI_STD, tokenize
from .model import CLIP, build_model
from .tiny import TINY_CONFIGS, tiny_state_dict

logger = logging.getLogger(__name__)

# Caption templates of the pre-training pairs; "{}" = class name such as "red circle".
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a small {}.",
    "a large {}.",
    "a {} on a textured background.",
)
JPEG_QUALITY = 95  # as the Synthetic dataset writes its files
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learned temperature at 100


@dataclass
class PretrainConfig:
    """Hyper-parameters of ``pretrain_tiny_clip`` (the defaults are what the demo uses)."""

    arch: str = "vit"  # a clip.tiny architecture: "vit" or "rn"
    steps: int = 25  # optimisation steps, 48 image-caption pairs each (few on purpose, see the module doc)
    images_per_class: int = 24  # rendered training images per class (re-sampled with flips)
    eval_images_per_class: int = 8  # held-out images per class for the logged zero-shot accuracy
    render_size: int = 64  # side of the drawn images, as DATASET.SYNTHETIC.IMAGE_SIZE
    lr: float = 2e-3  # AdamW peak learning rate, cosine decay after a linear warm-up
    warmup_steps: int = 20
    weight_decay: float = 0.05
    init_logit_scale: float = math.log(1 / 0.07)  # CLIP's initial temperature
    seed: int = 0
    templates: tuple[str, ...] = CAPTION_TEMPLATES  # caption templates, "{}" = class name


def _to_model_input(image: Image.Image, input_size: int) -> Tensor:
    """JPEG round trip, bicubic resize to ``input_size``, CLIP normalisation: ``(3, R, R)``."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    image = resize(image, [input_size, input_size], interpolation=BICUBIC)
    return normalize(pil_to_tensor(image).float() / 255.0, OPENAI_MEAN, OPENAI_STD)


def render_pool(images_per_class: int, render_size: int, input_size: int, stream: str) -> tuple[Tensor, Tensor]:
    """Images ``(48 * n, 3, R, R)`` and labels ``(48 * n,)`` of every synthetic class, from RNG ``stream``."""
    from vlprompt.datasets.synthetic import MAX_CLASSES, class_spec, render_image  # the dataset's own renderer

    images, labels = [], []
    for label in range(MAX_CLASSES):
        shape, _, rgb = class_spec(label)
        rng = random.Random(f"{stream}-{label}")
        for _ in range(images_per_class):
            images.append(_to_model_input(render_image(rng, render_size, shape, rgb), input_size))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def synthetic_class_names() -> list[str]:
    from vlprompt.datasets.synthetic import MAX_CLASSES, class_names

    return class_names(MAX_CLASSES)


def contrastive_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> Tensor:
    """CLIP's symmetric InfoNCE for matched rows of ``(B, E)`` features (normalised here)."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * image_features @ text_features.t()  # (B, B)
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def _crop_to_eot(tokens: Tensor) -> Tensor:
    """Drop the padding after the last EOT of the batch (exact under causal attention)."""
    return tokens[:, : int(tokens.argmax(dim=-1).max()) + 1]


@torch.no_grad()
def zero_shot_accuracy(model: CLIP, images: Tensor, labels: Tensor, classnames: list[str],
                       template: str = CAPTION_TEMPLATES[0]) -> float:
    """Top-1 accuracy (%) of ``model`` classifying ``images`` with one prompt per class."""
    was_training = model.training
    model.eval()
    text = F.normalize(model.encode_text(_crop_to_eot(tokenize([template.format(c) for c in classnames]))), dim=-1)
    image = F.normalize(model.encode_image(images), dim=-1)
    model.train(was_training)
    return (image @ text.t()).argmax(dim=-1).eq(labels).float().mean().item() * 100


def _sample_pairs(rng: random.Random, images: Tensor, by_class: list[list[int]], captions: Tensor
                  ) -> tuple[Tensor, Tensor]:
    """One randomly flipped image ``(C, 3, R, R)`` and one random caption ``(C, L)`` per class."""
    n_cls, n_templates = captions.shape[:2]
    picks = torch.tensor([rng.choice(rows) for rows in by_class])
    batch = images[picks]  # (C, 3, R, R)
    flip = torch.tensor([rng.random() < 0.5 for _ in range(n_cls)])
    batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)  # random horizontal flip
    template_ids = torch.tensor([rng.randrange(n_templates) for _ in range(n_cls)])
    return batch, _crop_to_eot(captions[torch.arange(n_cls), template_ids])  # (C, L)


def _lr_factor(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch on one thread (deterministic across core counts, and fastest for tiny ops)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pretrain_tiny_clip(cfg: PretrainConfig) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Train a tiny CLIP from ``tiny_state_dict(cfg.arch, cfg.seed)``; return its state dict and metrics."""
    if cfg.arch not in TINY_CONFIGS:
        raise ValueError(f"PretrainConfig.arch={cfg.arch!r}; choose one of {sorted(TINY_CONFIGS)}")
    with _single_thread():
        return _pretrain(cfg)


def _pretrain(cfg: PretrainConfig) -> tuple[dict[str, Tensor], dict[str, float]]:
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model = build_model(tiny_state_dict(cfg.arch, seed=cfg.seed), fp16=False).float().train()
    with torch.no_grad():
        model.logit_scale.fill_(cfg.init_logit_scale)
    input_size = model.visual.input_resolution
    classnames = synthetic_class_names()
    images, labels = render_pool(cfg.images_per_class, cfg.render_size, input_size, f"pretrain-{cfg.seed}")
    eval_images, eval_labels = render_pool(cfg.eval_images_per_class, cfg.render_size, input_size,
                                           f"pretrain-eval-{cfg.seed}")
    captions = tokenize([t.format(c) for c in classnames for t in cfg.templates])  # (48 * T, 77)
    captions = captions.view(len(classnames), len(cfg.templates), -1)  # (48, T, 77)
    by_class = [torch.nonzero(labels == c).flatten().tolist() for c in range(len(classnames))]
    # The 49408-row token embedding gets sparse gradients (only caption tokens) and its own SparseAdam:
    # a dense AdamW update of it would cost more than the rest of the tiny model.
    model.token_embedding.sparse = True
    dense = [p for name, p in model.named_parameters() if name != "token_embedding.weight"]
    optimizers = [torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay),
                  torch.optim.SparseAdam([model.token_embedding.weight], lr=cfg.lr)]
    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _lr_factor(step, cfg)) for opt in optimizers]
    loss = torch.tensor(float("nan"))
    for _ in range(cfg.steps):
        batch, tokens = _sample_pairs(rng, images, by_class, captions)
        loss = contrastive_loss(model.encode_image(batch), model.encode_text(tokens), model.logit_scale)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer, scheduler in zip(optimizers, schedulers):
            optimizer.step()
            scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    model.token_embedding.sparse = False
    model.eval()
    state_dict = {k: v.detach().half().float() if v.is_floating_point() else v.detach()
                  for k, v in model.state_dict().items()}  # fp16 grid: clip.load reproduces it exactly
    model.load_state_dict(state_dict)
    metrics = {"final_loss": loss.item(), "logit_scale": model.logit_scale.exp().item(),
               "zero_shot_acc_48": zero_shot_accuracy(model, eval_images, eval_labels, classnames)}
    logger.info(f"Pre-trained tiny CLIP ({cfg.arch}, {cfg.steps} steps): " +
                ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return state_dict, metrics


def save_state_dict(state_dict: dict[str, Tensor], path: str) -> None:
    """Write ``state_dict`` to ``path`` atomically (temporary file, then rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state_dict, tmp)
    os.replace(tmp, path)

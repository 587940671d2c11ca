"""``DeepPromptTrainer``: what the MaPLe, IVLP and VPT trainers share.

- one learnable module, ``prompt_learner``, holding every prompt (so a checkpoint, or a weight average over
  epochs, is one state dict);
- checks that image prompts get a ViT backbone and that a prompt depth fits the towers;
- under torchrun, every rank starts from rank 0's random prompts (also without ``--seed``);
- the reference's fp16 parameters on request (``reference_half_parameters``);
- evaluation computes the prompts and class text features once per split instead of once per batch;
- checkpoints of the reference (muzairkhattak/multimodal-prompt-learning@69bce21), which hold the whole model
  under ``prompt_learner.*``, ``image_encoder.*`` and ``text_encoder.*``, load after ``from_reference_layout``,
  also from the reference's own model folder (``REFERENCE_MODEL_NAME``) of a run directory.
"""
from __future__ import annotations

import logging
import os.path as osp
import re
from typing import ClassVar, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from vlprompt import clip
from vlprompt.clip.model import VisionTransformer
from dassl.engine.checkpoints import check_state_dict_fits
from dassl.utils import broadcast_object, is_distributed, load_checkpoint

from ..common.prompt_trainer import ClipPromptTrainer

logger = logging.getLogger(__name__)

__all__ = ["DeepPromptTrainer", "from_reference_layout", "is_reference_layout", "share_initial_parameters"]

# Top-level names of the reference's CustomCLIP, whose whole state dict its checkpoints hold.
REFERENCE_PREFIXES = ("prompt_learner.", "image_encoder.", "text_encoder.")
# Reference key -> our prompt-learner key; every other key of a reference checkpoint is frozen CLIP (dropped).
REFERENCE_KEYS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"^prompt_learner\.(.+)$"), r"\1"),  # MaPLe's and IVLP's learners: the same names as ours
    (re.compile(r"^image_encoder\.VPT$"), "visual_ctx"),  # IVLP / VPT: layer-0 image prompts
    (re.compile(r"^image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow$"), "deep_visual_prompts.{}"),
    (re.compile(r"^text_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow$"), "deep_text_prompts.{}"),
)


def is_reference_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether a checkpoint holds the reference's whole model (keys under its ``CustomCLIP`` attributes)."""
    return any(key.startswith(REFERENCE_PREFIXES) for key in state_dict)


def from_reference_layout(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our ``prompt_learner`` state dict from a reference checkpoint's whole-model state dict.

    ``prompt_learner.<name>`` keeps ``<name>`` (MaPLe: ``ctx``, ``proj.*``, ``compound_prompts_text.k``,
    ``compound_prompt_projections.k.*``; IVLP: ``ctx``); the per-block ``VPT_shallow`` prompts of block ``i``
    become ``deep_{visual,text}_prompts.{i-1}`` and ``image_encoder.VPT`` becomes ``visual_ctx``.  The frozen
    CLIP weights are dropped; the class-name buffers are left for ``drop_frozen_buffers``.
    """
    converted = {}
    for key, value in state_dict.items():
        for pattern, target in REFERENCE_KEYS:
            match = pattern.match(key)
            if match is None:
                continue
            if "{}" in target:  # block i holds the prompts of layer i, our list index i-1
                converted[target.format(int(match.group(1)) - 1)] = value
            else:
                converted[match.expand(target)] = value
            break
    return converted


@torch.no_grad()
def share_initial_parameters(module: nn.Module) -> None:
    """Under torchrun, copy rank 0's initial parameters to every rank (runs without ``--seed`` draw per rank)."""
    if not is_distributed():
        return
    shared = broadcast_object({name: p.detach().cpu() for name, p in module.named_parameters()})
    for name, param in module.named_parameters():
        param.copy_(shared[name])


class DeepPromptTrainer(ClipPromptTrainer):
    """Base of the deep-prompt trainers; a subclass implements ``build_custom_clip`` and its ``check_cfg``."""

    LEARNABLE = ("prompt_learner",)
    # Folder the reference's trainer saves its model in (its register_model name), read by load_model when a
    # run directory has no prompt_learner/ folder; "" = the same folder as ours.
    REFERENCE_MODEL_NAME: ClassVar[str] = ""

    # ------------------------------------------------------------------ config
    def check_vit_backbone(self, cfg, what: str) -> None:
        """Image prompts need a token sequence: refuse a ResNet backbone before CLIP loads."""
        backbone = clip.backbone_info(cfg.MODEL.BACKBONE.NAME)
        if backbone is not None and backbone.is_resnet:
            raise ValueError(f"{what} need a ViT image tower but MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME}; "
                             "use a ViT backbone (e.g. ViT-B/16)")

    @staticmethod
    def check_depth(key: str, depth: int, layers: int, tower: str) -> None:
        """A prompt depth ``J`` needs ``1 <= J <= layers`` (layer 0 plus layers 1..J-1)."""
        if not 1 <= depth <= layers:
            raise ValueError(f"{key}={depth} but the {tower} tower has {layers} layers; use 1..{layers}")

    @staticmethod
    def check_image_tower(clip_model: nn.Module, what: str) -> None:
        if not isinstance(clip_model.visual, VisionTransformer):
            raise ValueError(f"{what} need a ViT image tower; this backbone has a {type(clip_model.visual).__name__}")

    # ------------------------------------------------------------------ model
    def reference_half_parameters(self) -> Sequence[str]:
        """Learner parameters the reference keeps in fp16 under ``PREC fp16`` (cast so when restoring it)."""
        return ()

    def build_model(self) -> None:
        super().build_model()
        learner = self.model.prompt_learner
        share_initial_parameters(learner)
        names = self.reference_half_parameters()
        if names and self.precision == "fp16":
            params = dict(learner.named_parameters())
            for name in names:
                params[name].data = params[name].data.half()  # same Parameter: the optimizer keeps it
            logger.info(f"Reference parameter dtypes: {list(names)} in fp16, the other prompts in fp32")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def test(self, split: Optional[str] = None) -> float:
        """Dassl's test, with the prompts and class text features computed once for the split."""
        with self.model.reuse_prompts():
            return super().test(split)

    # ------------------------------------------------------------------ checkpoints
    def reference_model_dir(self, directory: str) -> str:
        """``<directory>/<REFERENCE_MODEL_NAME>`` when a run directory holds only the reference's folder, else ""."""
        if not directory or not self.REFERENCE_MODEL_NAME or osp.isdir(osp.join(directory, "prompt_learner")):
            return ""
        folder = osp.join(directory, self.REFERENCE_MODEL_NAME)
        return folder if osp.isdir(folder) else ""

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Ours (``<directory>/prompt_learner/``), or a reference run's ``<directory>/<REFERENCE_MODEL_NAME>/``."""
        reference_dir = self.reference_model_dir(directory)
        if not reference_dir:
            super().load_model(directory, epoch)
            return
        path = osp.join(reference_dir, "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}")
        if not osp.exists(path):
            raise FileNotFoundError(f'Model not found at "{path}"; check --model-dir and --load-epoch')
        checkpoint = load_checkpoint(path)
        state_dict = self.drop_frozen_buffers(checkpoint["state_dict"])
        logger.info(f'Loading the reference\'s weights to prompt_learner from "{path}" (epoch = {checkpoint["epoch"]})')
        learner = self.model.prompt_learner
        check_state_dict_fits(learner, state_dict, path)
        learner.load_state_dict(state_dict, strict=True)

    def drop_frozen_buffers(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A checkpoint's learnable entries: ours as saved, a reference checkpoint's after ``from_reference_layout``."""
        if is_reference_layout(state_dict):
            logger.info("Checkpoint in the reference's whole-model layout: keeping its prompt parameters")
            state_dict = from_reference_layout(state_dict)
        return super().drop_frozen_buffers(state_dict)

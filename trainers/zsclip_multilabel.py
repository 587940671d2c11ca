"""Zero-shot CLIP for multi-label recognition: the baseline LMPT compares against (spec ``shared/specs/lmpt.md`` §4.5).

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", arXiv:2103.00020, as
evaluated by LMPT (Xia et al., arXiv:2305.04536; richard-peng-xia/LMPT@aab39ca ``zero_shot_clip/test.py``).
Every class is scored independently by ``100 cos(image, text)``; the multi-label evaluator
(``dassl/evaluation/multilabel.py``) ranks images per class.

- ``TEXT template`` (default): one template with the dataset's full class names ("a photo of a traffic light.").
- ``TEXT lmpt_concat76``: the repository's text — the 80 ImageNet templates filled with the name, joined with
  spaces and cut to the first 76 characters (≈ three templates).
Fixed on purpose (spec §4.5, §6.16): the repository took only the first word of each class name ("traffic",
"hot", "dining", "baseball" twice); here the full names are used in both modes. The repository skipped the
48 unlabelled COCO-LT test images; they are kept here (they only add negatives). Its P/R/F1 came from top-5
predictions; here they use ``TEST.MULTILABEL.THRESHOLD`` like every multi-label run.
"""
from __future__ import annotations

import logging
from typing import Sequence

from torch import nn
from yacs.config import CfgNode as CN

from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY

from .common.text_features import encode_texts
from .imagenet_templates import IMAGENET_TEMPLATES
from .zsclip import ZeroshotCLIP, ZeroshotCLIPModel

logger = logging.getLogger(__name__)

TEXT_MODES = ("template", "lmpt_concat76")
LMPT_TEXT_CHARS = 76  # zero_shot_clip/test.py keeps the first 76 characters of the joined templates


@register_cfg_defaults
def add_cfg_defaults(cfg) -> None:
    cfg.TRAINER.ZEROSHOTCLIPMULTILABEL = CN()
    # fp16 (CLIP in half precision), fp32 or amp; fp16/amp fall back to fp32 on a CPU (warning)
    cfg.TRAINER.ZEROSHOTCLIPMULTILABEL.PREC = "fp16"
    # Class text: template (TEMPLATE with the full class name) or lmpt_concat76 (LMPT's 80 joined templates,
    # first 76 characters)
    cfg.TRAINER.ZEROSHOTCLIPMULTILABEL.TEXT = "template"
    # Template for TEXT template; "{}" is the class name
    cfg.TRAINER.ZEROSHOTCLIPMULTILABEL.TEMPLATE = "a photo of a {}."


def lmpt_concat_text(classname: str, templates: Sequence[str] = IMAGENET_TEMPLATES,
                     max_chars: int = LMPT_TEXT_CHARS) -> str:
    """All templates filled with ``classname``, joined by spaces, cut to ``max_chars`` characters."""
    return " ".join(t.format(classname) for t in templates)[:max_chars]


@TRAINER_REGISTRY.register()
class ZeroshotCLIPMultiLabel(ZeroshotCLIP):
    """Zero-shot CLIP scoring every class independently (multi-label), full class names.

    "Learning Transferable Visual Models From Natural Language Supervision", https://arxiv.org/abs/2103.00020
    """

    CFG_NODE = "ZEROSHOTCLIPMULTILABEL"

    def check_cfg(self, cfg) -> None:
        node = cfg.TRAINER.ZEROSHOTCLIPMULTILABEL
        if node.TEXT not in TEXT_MODES:
            raise ValueError(f"TRAINER.ZEROSHOTCLIPMULTILABEL.TEXT={node.TEXT!r}; "
                             f"choose one of {', '.join(TEXT_MODES)}")
        if node.TEXT == "template" and node.TEMPLATE.count("{}") != 1:
            raise ValueError(f"TRAINER.ZEROSHOTCLIPMULTILABEL.TEMPLATE={node.TEMPLATE!r} needs exactly one {{}}")
        if cfg.TEST.EVALUATOR != "MultiLabelClassification":
            raise ValueError(f"TEST.EVALUATOR={cfg.TEST.EVALUATOR!r}; ZeroshotCLIPMultiLabel needs "
                             "MultiLabelClassification (set it in the YAML)")
        super().check_cfg(cfg)

    def templates(self) -> Sequence[str]:
        return (self.cfg.TRAINER.ZEROSHOTCLIPMULTILABEL.TEMPLATE,)

    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        if self.cfg.TRAINER.ZEROSHOTCLIPMULTILABEL.TEXT == "template":
            return super().build_custom_clip(clip_model, classnames)
        texts = [lmpt_concat_text(name.replace("_", " ")) for name in classnames]
        logger.info(f"Class texts (LMPT's 76-character template concatenation): {texts}")
        clip_model.to(self.device)
        text_features = encode_texts(clip_model, texts, truncate_at_eot=self.cfg.MODEL.TEXT_ENCODER_TRUNCATE)
        return ZeroshotCLIPModel(clip_model, text_features)

"""Zero-shot CLIP for multi-label recognition: the zero-shot baseline of LMPT.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", arXiv:2103.00020, as
evaluated by LMPT (Xia et al., arXiv:2305.04536; reference richard-peng-xia/LMPT@aab39ca
``zero_shot_clip/test.py``).  Every class is scored independently by ``100 cos(image, class text)`` with a
frozen CLIP and the multi-label evaluator (``dassl/evaluation/multilabel.py``) ranks the images per class.  The
class text is one template with the dataset's full class names (``TEXT template``) or, as in the reference,
the 80 ImageNet templates filled with the name, joined and cut to 76 characters (``TEXT lmpt_concat76``).
Differences from the reference script and the switches: docs/methods/lmpt.md.
"""
from __future__ import annotations

import logging
from typing import Sequence

from torch import nn
from yacs.config import CfgNode as CN

from dassl.config import register_cfg_defaults
from dassl.engine import TRAINER_REGISTRY

from .common.text_features import encode_texts
from .common.templates import IMAGENET_TEMPLATES
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
    # True = LMPT's zero-shot script, which keeps only the first word of each class name ("traffic" for
    # "traffic light", "hot" for "hot dog", "baseball" for two classes); False = the full names
    cfg.TRAINER.ZEROSHOTCLIPMULTILABEL.FIRST_WORD_NAMES = False
    # True = LMPT's zero-shot script, which leaves out the test images without any label (48 on COCO-LT);
    # False = they are kept (they only add negatives), as in LMPT's own evaluation
    cfg.TRAINER.ZEROSHOTCLIPMULTILABEL.SKIP_UNLABELED = False


def class_text_names(classnames: Sequence[str], first_word: bool) -> list[str]:
    """Class names for the prompts ("_" read as a space); only their first word when ``first_word``."""
    names = [name.replace("_", " ") for name in classnames]
    return [name.split()[0] for name in names] if first_word else names


def lmpt_concat_text(classname: str, templates: Sequence[str] = IMAGENET_TEMPLATES,
                     max_chars: int = LMPT_TEXT_CHARS) -> str:
    """All templates filled with ``classname``, joined by spaces, cut to ``max_chars`` characters."""
    return " ".join(t.format(classname) for t in templates)[:max_chars]


@TRAINER_REGISTRY.register()
class ZeroshotCLIPMultiLabel(ZeroshotCLIP):
    """Zero-shot CLIP scoring every class independently (multi-label), with full class names.

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

    def build_data_manager(self):
        """Dassl's loaders; without the unlabelled evaluation images when ``SKIP_UNLABELED``."""
        dm = super().build_data_manager()
        if self.cfg.TRAINER.ZEROSHOTCLIPMULTILABEL.SKIP_UNLABELED:
            for split in ("val", "test"):
                items = dm.split_items[split]
                if items:
                    labelled = [item for item in items if item.label]
                    logger.info(f"SKIP_UNLABELED: {len(items) - len(labelled)} of {len(items)} {split} images "
                                "have no label and are left out")
                    dm.set_split(split, labelled)
        return dm

    def eval_split(self, split=None):
        """The engine's choice of split, with the items its loader reads as the data source (the feature-cache
        key is computed from them, so ``SKIP_UNLABELED`` runs never share features with full runs)."""
        name, loader, _ = super().eval_split(split)
        return name, loader, self.dm.split_items[name]

    def build_custom_clip(self, clip_model: nn.Module, classnames: Sequence[str]) -> nn.Module:
        node = self.cfg.TRAINER.ZEROSHOTCLIPMULTILABEL
        names = class_text_names(classnames, node.FIRST_WORD_NAMES)
        if node.TEXT == "template":
            return super().build_custom_clip(clip_model, names)
        texts = [lmpt_concat_text(name) for name in names]
        logger.info(f"Class texts (LMPT's 76-character template concatenation): {texts}")
        clip_model.to(self.device)
        text_features = encode_texts(clip_model, texts, truncate_at_eot=self.cfg.MODEL.TEXT_ENCODER_TRUNCATE)
        return ZeroshotCLIPModel(clip_model, text_features)

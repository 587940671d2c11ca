"""vlprompt's own OpenAI CLIP (Radford et al. 2021, arXiv:2103.00020): ``from vlprompt import clip``.

The module ``vlprompt.clip.clip`` keeps openai/CLIP's API (``load``, ``tokenize``, ``available_models``); the
backbone table (``backbone_info``, ``register_backbone``) says what each named model is before it loads.
"""

from .backbones import Backbone, backbone_info, register_backbone, tiny_models
from .clip import available_models, build_model, decode, encode, get_tokenizer, load, tokenize

__all__ = ["Backbone", "available_models", "backbone_info", "build_model", "decode", "encode", "get_tokenizer",
           "load", "register_backbone", "tiny_models", "tokenize"]

"""vlprompt's own OpenAI CLIP (Radford et al. 2021, arXiv:2103.00020): ``from clip import clip`` or ``import clip``."""

from .clip import available_models, build_model, decode, encode, get_tokenizer, load, tokenize

__all__ = ["available_models", "build_model", "decode", "encode", "get_tokenizer", "load", "tokenize"]

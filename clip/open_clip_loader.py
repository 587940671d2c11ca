"""open_clip models as vlprompt CLIP backbones: ``MODEL.BACKBONE.NAME open_clip:<model>:<pretrained>``.

open_clip (mlfoundations/open_clip, Ilharco et al. 2021; Cherti et al., "Reproducible scaling laws for
contrastive language-image learning", arXiv:2212.07143) trains OpenAI-architecture CLIPs on LAION, DataComp,
DFN and MetaCLIP data.  Its ``CLIP`` class keeps OpenAI's parameter names, so such a model fits our own
``clip.model.CLIP`` once three things are taken from open_clip's config instead of being assumed:

- the MLP activation: ``nn.GELU`` for most LAION/DataComp models, QuickGELU for OpenAI-recipe ones (the
  ``quick_gelu`` flag of the pretrained tag, else of the model config);
- the image tower's head width (80 in ViT-H-14) and the input resolution;
- the normalisation statistics of the pretrained tag (``pixel_mean``/``pixel_std`` of the backbone entry).

Everything else in the config must describe OpenAI's architecture; anything else (a timm or Hugging Face tower,
SigLIP's logit bias, CoCa's decoder, attentional or average pooling, LayerScale, other norm layers or MLP
widths, another tokenizer) is refused with one line naming the feature, before any download.

``<model>`` is an open_clip architecture name (``open_clip.list_models()``, e.g. ``ViT-B-16``) or the path of
a JSON config (open_clip's model-config format, or the ``open_clip_config.json`` of a hub repository).
``<pretrained>`` is a pretrained tag of that model (``open_clip.list_pretrained_tags_by_model``), fetched by
open_clip's own downloader into open_clip's cache, or the path of a local weights file (offline).

Safety: weights are read with safetensors or ``torch.load(weights_only=True)`` (``clip.clip.read_state_dict``);
a TorchScript archive opens only when it is one of OpenAI's released files (SHA256); nothing is executed
from a file, and no Hugging Face ``trust_remote_code`` path exists here.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os.path as osp
from functools import lru_cache
from typing import Any, Optional

from torch import Tensor

from .backbones import Backbone, WEIGHT_FILE_SUFFIXES, split_open_clip_name
from .clip import read_state_dict
from .model import CLIP, HEAD_WIDTH

logger = logging.getLogger(__name__)

# What vlprompt's tokenizer and prompt learners are built for (OpenAI's BPE vocabulary and context).
OPENAI_CONTEXT_LENGTH = 77
OPENAI_VOCAB_SIZE = 49408
MLP_RATIO = 4.0  # our ResidualAttentionBlock's MLP is 4x wide
SCHEMAS = ("hf-hub", "local-dir")  # open_clip's model-name schemas (their ":" clashes with ours)

# open_clip state-dict key -> ours (OpenAI layout).  open_clip's ``CLIP`` already uses OpenAI's names
# (visual.*, transformer.*, token_embedding.*, positional_embedding, ln_final.*, text_projection, logit_scale
# map to themselves); ``CustomTextCLIP`` (config ``custom_text``) keeps its text tower under ``text.``.
# A source ending in "." renames a prefix, any other source one exact key.
KEY_TABLE: tuple[tuple[str, str], ...] = (
    ("text.token_embedding.", "token_embedding."),
    ("text.positional_embedding", "positional_embedding"),
    ("text.transformer.", "transformer."),
    ("text.ln_final.", "ln_final."),
    ("text.text_projection", "text_projection"),
)
# Keys some files carry that we rebuild instead: the causal mask (older open_clip saved it).
DERIVED_KEYS = ("attn_mask", "text.attn_mask")

# Config fields we translate into clip.model.CLIP arguments or that do not change the eval forward; every
# other field must keep open_clip's default (the OpenAI architecture).
VISION_USED = {"layers", "width", "head_width", "patch_size", "image_size", "mlp_ratio"}
VISION_IGNORED = {
    "patch_dropout",  # drops patches in training only (eval forward unchanged); not implemented here
    "output_tokens", "attn_pooler_queries", "attn_pooler_heads",  # only with attentional_pool (refused)
}
TEXT_USED = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
TEXT_IGNORED = {
    "output_tokens",  # open_clip can also return token features; ours returns the pooled feature only
    "eos_id", "pad_id",  # used only by pool_type "eos" / embed_cls (both refused)
    "hf_model_pretrained", "hf_proj_type", "hf_pooler_type",  # only with hf_model_name (refused)
}
MODEL_USED = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text", "init_logit_scale",
              "nonscalar_logit_scale"}
# Why a non-default field cannot be represented (shown in the refusal).
FEATURE_NAMES = {
    "init_logit_bias": "SigLIP's sigmoid-loss logit bias",
    "multimodal_cfg": "CoCa's multimodal text decoder",
    "timm_model_name": "a timm image tower",
    "hf_model_name": "a Hugging Face text tower",
    "hf_tokenizer_name": "a Hugging Face tokenizer",
    "tokenizer_mode": "another tokenizer",
    "tokenizer_kwargs": "another tokenizer",
    "ls_init_value": "LayerScale",
    "attentional_pool": "attentional pooling",
    "no_ln_pre": "no LayerNorm before the transformer",
    "pos_embed_type": "fixed position embeddings",
    "final_ln_after_pool": "LayerNorm after pooling",
    "pool_type": "another pooling",
    "act_kwargs": "another activation",
    "norm_kwargs": "another norm layer",
    "block_type": "a custom attention block",
    "qk_norm": "QK LayerNorm",
    "scaled_cosine_attn": "cosine attention",
    "scale_heads": "per-head attention scales",
    "scale_attn_inner": "an extra LayerNorm in attention",
    "scale_attn": "an extra LayerNorm after attention",
    "scale_fc": "an extra LayerNorm in the MLP",
    "embed_cls": "a text class token",
    "no_causal_mask": "a bidirectional text encoder",
    "proj_type": "another text projection",
    "proj_bias": "a text projection with bias",
    "mlp_ratio": f"an MLP ratio other than {MLP_RATIO:g}",
    "context_length": f"a text context other than the {OPENAI_CONTEXT_LENGTH} tokens our prompt learners use",
    "vocab_size": f"a vocabulary other than OpenAI's {OPENAI_VOCAB_SIZE} BPE tokens",
    "image_size": "non-square images",
    "patch_size": "non-square patches",
}


class OpenClipBackboneError(ValueError):
    """An ``open_clip:`` backbone name names no usable model, tag or config."""


class UnsupportedOpenClipModel(OpenClipBackboneError):
    """The open_clip architecture has a feature vlprompt's OpenAI-architecture CLIP cannot represent."""


class OpenClipWeightsNotFound(FileNotFoundError):
    """The weights of an ``open_clip:`` backbone are neither a local file nor downloadable."""


@dataclasses.dataclass(frozen=True)
class OpenClipModel:
    """An ``open_clip:`` backbone name resolved from open_clip's tables (nothing loaded yet)."""

    name: str  # the full backbone name
    model: str  # open_clip architecture name, or the path of its JSON config
    pretrained: str  # pretrained tag, or the path of a weights file
    model_cfg: dict  # open_clip model config: embed_dim, vision_cfg, text_cfg, quick_gelu, ...
    pretrained_cfg: dict  # open_clip's entry for the tag (url / hf_hub / mean / std / ...); {} for a file
    quick_gelu: bool  # MLP activation the weights were trained with
    preprocess: dict  # open_clip PreprocessCfg fields: size, mean, std, interpolation, resize_mode, ...

    @property
    def weights_file(self) -> str:
        """The local weights path, or "" for a pretrained tag."""
        return "" if self.pretrained_cfg else osp.expanduser(self.pretrained)

    def backbone(self) -> Backbone:
        vision = self.model_cfg["vision_cfg"]
        is_resnet = isinstance(vision.get("layers"), (list, tuple))  # open_clip's default layers=12 is a ViT
        return Backbone(
            self.name, "resnet" if is_resnet else "vit", square_size(vision),
            activation="quick_gelu" if self.quick_gelu else "gelu",
            pixel_mean=tuple(float(v) for v in self.preprocess["mean"]),
            pixel_std=tuple(float(v) for v in self.preprocess["std"]),
        )


def _open_clip():
    """The installed open_clip package (a dependency of vlprompt; imported lazily because it takes seconds)."""
    import open_clip

    return open_clip


# ----------------------------------------------------------------------------- names and configs
def is_weights_path(text: str) -> bool:
    """A pretrained part that names a file (tags never contain a slash or a file suffix)."""
    return osp.isfile(osp.expanduser(text)) or "/" in text or osp.sep in text or \
        text.lower().endswith(WEIGHT_FILE_SUFFIXES + (".json",))


def read_json_config(path: str, name: str) -> tuple[dict, dict]:
    """(model config, preprocess overrides) of a JSON file: open_clip's model-config format or a hub
    repository's ``open_clip_config.json`` (``{"model_cfg": ..., "preprocess_cfg": ...}``)."""
    path = osp.expanduser(path)
    if not osp.isfile(path):
        raise OpenClipWeightsNotFound(f"{name}: model config {path} does not exist; give an open_clip model name "
                                      "(open_clip.list_models()) or the path of its JSON config")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OpenClipBackboneError(f"{name}: {path} is not a readable JSON model config ({err})") from err
    model_cfg = data.get("model_cfg", data) if isinstance(data, dict) else None
    if not isinstance(model_cfg, dict) or not all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise OpenClipBackboneError(f"{name}: {path} lacks embed_dim/vision_cfg/text_cfg; expected an open_clip "
                                    "model config (as in open_clip's model_configs/*.json)")
    return model_cfg, dict(data.get("preprocess_cfg") or {}) if "model_cfg" in data else {}


def model_config(model: str, name: str) -> tuple[str, dict, dict]:
    """(open_clip architecture name or config path, model config, preprocess overrides) of ``<model>``."""
    if model in SCHEMAS:
        raise OpenClipBackboneError(
            f"{name}: open_clip's {model}: schema is not supported in backbone names; download the repository's "
            "open_clip_config.json and weights, then use open_clip:<path/to/open_clip_config.json>:<weights file>")
    if model.lower().endswith(".json"):
        return (model, *read_json_config(model, name))
    open_clip = _open_clip()
    arch = model.replace("/", "-")  # open_clip's own spelling of "ViT-B/16"
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise OpenClipBackboneError(f"{name}: open_clip has no model {arch!r}; {hint}open_clip.list_models() lists "
                                    "them, or give the path of a JSON model config")
    return arch, cfg, {}


def pretrained_config(arch: str, pretrained: str, name: str) -> dict:
    """open_clip's table entry of a pretrained tag ({} for a weights file, which must exist)."""
    if is_weights_path(pretrained):
        path = osp.expanduser(pretrained)
        if not osp.isfile(path):
            raise OpenClipWeightsNotFound(f"{name}: weights file {path} does not exist; fix the path after the "
                                          "model name (or give a pretrained tag)")
        return {}
    if arch.lower().endswith(".json"):
        raise OpenClipBackboneError(f"{name}: a model given by its JSON config has no pretrained tags; give the "
                                    "path of its weights file")
    open_clip = _open_clip()
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise OpenClipBackboneError(f"{name}: {pretrained!r} is not a pretrained tag of open_clip's {arch} "
                                    f"(tags: {', '.join(tags) or 'none'}); or give the path of a weights file")
    return dict(cfg)


# ----------------------------------------------------------------------------- what we can represent
def square_size(vision_cfg: dict) -> int:
    size = vision_cfg.get("image_size", 224)
    return int(size[0]) if isinstance(size, (list, tuple)) else int(size)


def _is_square(value: Any) -> bool:
    return not isinstance(value, (list, tuple)) or len(set(value)) == 1


def _differs(value: Any, default: Any) -> bool:
    """A config value that changes the architecture: empty kwargs dicts and "default" block types do not."""
    if value in ({}, None) and default in ({}, None):
        return False
    return value != default


def _field_problems(section: str, cfg: dict, defaults: object, used: set, ignored: set) -> list[str]:
    """``section.field=value (feature)`` for every field that leaves OpenAI's architecture."""
    problems = []
    known = {f.name for f in dataclasses.fields(defaults)}
    for key, value in cfg.items():
        if key in ignored or (key.startswith("timm_") and key != "timm_model_name"):
            continue
        if key not in known:
            problems.append(f"{section}.{key} (a field open_clip {_open_clip().__version__} does not know)")
            continue
        if key == "block_type" and value in (None, "default"):
            continue
        if key in used:
            bad = (key == "mlp_ratio" and float(value) != MLP_RATIO) or \
                  (key in ("image_size", "patch_size") and not _is_square(value)) or \
                  (key == "context_length" and value != OPENAI_CONTEXT_LENGTH) or \
                  (key == "vocab_size" and value != OPENAI_VOCAB_SIZE)
        else:
            bad = _differs(value, getattr(defaults, key))
        if bad:
            problems.append(f"{section}.{key}={json.dumps(value)} ({FEATURE_NAMES.get(key, 'not OpenAI CLIP')})")
    return problems


def unsupported_features(model_cfg: dict) -> list[str]:
    """Every feature of an open_clip model config that vlprompt's CLIP cannot represent ([] = supported)."""
    open_clip = _open_clip()
    problems = [f"{key} ({FEATURE_NAMES.get(key, 'not OpenAI CLIP')})" for key, value in model_cfg.items()
                if key not in MODEL_USED and key != "preprocess_cfg" and value is not None]
    problems += _field_problems("vision_cfg", model_cfg["vision_cfg"], open_clip.CLIPVisionCfg(), VISION_USED,
                                VISION_IGNORED)
    problems += _field_problems("text_cfg", model_cfg["text_cfg"], open_clip.CLIPTextCfg(), TEXT_USED, TEXT_IGNORED)
    return problems


def check_supported(model_cfg: dict, name: str, shown: int = 4) -> None:
    """Refuse, in one line naming (the first ``shown`` of) the features, what ``unsupported_features`` finds."""
    problems = unsupported_features(model_cfg)
    if problems:
        more = f" and {len(problems) - shown} more" if len(problems) > shown else ""
        raise UnsupportedOpenClipModel(
            f"{name}: this open_clip model uses {'; '.join(problems[:shown])}{more}, which vlprompt's "
            "OpenAI-architecture CLIP cannot represent; choose an OpenAI-style open_clip model (e.g. ViT-B-16, "
            "ViT-L-14, ViT-H-14, RN50)")


def clip_arguments(model_cfg: dict, quick_gelu: bool) -> dict:
    """Constructor arguments of ``clip.model.CLIP`` for a supported open_clip model config."""
    open_clip = _open_clip()
    vision = {**dataclasses.asdict(open_clip.CLIPVisionCfg()), **model_cfg["vision_cfg"]}
    text = {**dataclasses.asdict(open_clip.CLIPTextCfg()), **model_cfg["text_cfg"]}
    is_resnet = isinstance(vision["layers"], (list, tuple))
    patch = vision["patch_size"]
    return dict(
        embed_dim=model_cfg["embed_dim"],
        image_resolution=square_size(vision),
        vision_layers=tuple(vision["layers"]) if is_resnet else vision["layers"],
        vision_width=vision["width"],
        vision_patch_size=None if is_resnet else int(patch[0] if isinstance(patch, (list, tuple)) else patch),
        context_length=text["context_length"],
        vocab_size=text["vocab_size"],
        transformer_width=text["width"],
        transformer_heads=text["heads"],
        transformer_layers=text["layers"],
        vision_head_width=vision.get("head_width", HEAD_WIDTH),
        quick_gelu=quick_gelu,
    )


# ----------------------------------------------------------------------------- resolving a name
@lru_cache(maxsize=None)
def resolve_open_clip(name: str) -> OpenClipModel:
    """Parse and check an ``open_clip:<model>:<pretrained>`` name against open_clip's tables (no download).

    Raises ``OpenClipBackboneError`` (unknown model or tag), ``UnsupportedOpenClipModel`` (architecture) or
    ``OpenClipWeightsNotFound`` (missing local file), each with a one-line message.
    """
    model, pretrained = split_open_clip_name(name)
    arch, model_cfg, preprocess_overrides = model_config(model, name)
    check_supported(model_cfg, name)
    pretrained_cfg = pretrained_config(arch, pretrained, name)
    quick_gelu = bool(model_cfg.get("quick_gelu", False))
    if "quick_gelu" in pretrained_cfg and bool(pretrained_cfg["quick_gelu"]) != quick_gelu:
        # The tag records the activation its weights were trained with; open_clip's create_model would only warn
        # and keep the config's (e.g. ViT-B-16 + openai builds nn.GELU there).
        logger.info(f"{name}: the tag was trained with {'QuickGELU' if pretrained_cfg['quick_gelu'] else 'GELU'}; "
                    f"using it instead of the {arch} config's")
        quick_gelu = bool(pretrained_cfg["quick_gelu"])
    transform = _open_clip().transform
    preprocess = transform.merge_preprocess_dict(transform.PreprocessCfg(), pretrained_cfg or preprocess_overrides)
    preprocess["size"] = square_size(model_cfg["vision_cfg"])
    if (preprocess["interpolation"], preprocess["resize_mode"]) != ("bicubic", "shortest"):
        logger.warning(f"{name}: open_clip evaluates these weights with {preprocess['interpolation']} "
                       f"interpolation and resize mode {preprocess['resize_mode']!r}; vlprompt's transforms follow "
                       "INPUT.INTERPOLATION and resize the shorter side (docs/backbones.md)")
    return OpenClipModel(name, arch, pretrained, model_cfg, pretrained_cfg, quick_gelu, preprocess)


def describe_open_clip(name: str) -> Backbone:
    """The backbone-table entry of an ``open_clip:`` name (tower, resolution, activation, normalisation)."""
    return resolve_open_clip(name).backbone()


# ----------------------------------------------------------------------------- weights
def fetch_weights(spec: OpenClipModel, cache_dir: Optional[str] = None) -> str:
    """Local path of the weights: the given file, or the tag's file fetched by open_clip's downloader.

    open_clip checks the SHA256 of URL downloads whose name carries it (OpenAI's and open_clip's release files)
    and leaves Hugging Face hub files to huggingface_hub's cache (safetensors preferred when the repository has
    them); a file already in the cache is not downloaded again.
    """
    if spec.weights_file:
        if not osp.isfile(spec.weights_file):  # resolved earlier, removed since
            raise OpenClipWeightsNotFound(f"{spec.name}: weights file {spec.weights_file} does not exist")
        return spec.weights_file
    source = spec.pretrained_cfg.get("hf_hub") or spec.pretrained_cfg.get("url") or spec.pretrained_cfg.get("file")
    logger.info(f"Fetching {spec.name} weights through open_clip ({source})")
    try:
        path = _open_clip().download_pretrained(spec.pretrained_cfg, cache_dir=cache_dir)
    except (OSError, RuntimeError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OpenClipWeightsNotFound(
            f"{spec.name}: fetching {source} failed ({first_line}); check the network, or download the file and use "
            f"open_clip:{spec.model}:<path to the file>") from err
    if not path or not osp.isfile(path):
        raise OpenClipWeightsNotFound(f"{spec.name}: open_clip returned no weights file for tag {spec.pretrained!r}")
    return path


def rename_key(key: str) -> str:
    """Our (OpenAI-layout) name of an open_clip state-dict key, by ``KEY_TABLE``."""
    for source, target in KEY_TABLE:
        if source.endswith(".") and key.startswith(source):
            return target + key[len(source):]
        if key == source:
            return target
    return key


def to_openai_layout(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """An open_clip ``CLIP``/``CustomTextCLIP`` state dict in our key layout (``KEY_TABLE``)."""
    converted = {rename_key(k): v for k, v in state_dict.items() if k not in DERIVED_KEYS}
    if "logit_scale" in converted:  # nonscalar_logit_scale models store shape (1,); ours is a scalar
        converted["logit_scale"] = converted["logit_scale"].reshape(())
    return converted


def check_fits(model: CLIP, state_dict: dict[str, Tensor], path: str, name: str) -> None:
    """Raise one line naming missing, unexpected and mis-shaped keys before a strict load."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {expected[k]}" for k in sorted(set(expected) & set(state_dict))
              if tuple(state_dict[k].shape) != expected[k]]
    if missing or unexpected or shapes:
        parts = [f"{label} {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if keys]
        raise OpenClipBackboneError(f"{path}: weights do not fit {name}: {'; '.join(parts)}; check that the file "
                                    "belongs to this open_clip model")


def load_open_clip(name: str, download_root: Optional[str] = None,
                   trust_local_archive: bool = False) -> tuple[CLIP, Backbone]:
    """Our ``CLIP`` (fp32, CPU, eval mode) holding the weights of an ``open_clip:`` backbone, and its entry.

    Args:
        name: ``open_clip:<model>:<pretrained tag or weights file>``.
        download_root: open_clip's download cache (None: open_clip's default).
        trust_local_archive: open a local TorchScript archive that is not a released OpenAI file (it runs
            code stored in the file); plain state dicts and safetensors never need it.
    """
    spec = resolve_open_clip(name)
    path = fetch_weights(spec, download_root)
    state_dict = to_openai_layout(read_state_dict(path, trusted=trust_local_archive))
    model = CLIP(**clip_arguments(spec.model_cfg, spec.quick_gelu))
    check_fits(model, state_dict, path, name)
    model.load_state_dict(state_dict, strict=True)
    model.float()  # fp16/bf16 files: computed in fp32 on the CPU; clip.load applies the device's precision
    logger.info(f"Loaded {name} from {path} ({'QuickGELU' if spec.quick_gelu else 'GELU'}, "
                f"{spec.preprocess['size']}px, mean {tuple(spec.preprocess['mean'])})")
    return model.eval(), spec.backbone()

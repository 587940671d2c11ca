"""Loading, preprocessing and tokenisation for OpenAI CLIP (Radford et al. 2021, arXiv:2103.00020).

API-compatible with openai/CLIP's ``clip.clip`` (``load``, ``tokenize``, ``available_models``, ``_MODELS``,
``_download``, ``_tokenizer``, ``_transform``, ``BICUBIC``).
Robustness fixes over the reference (none changes results for the official files):
- plain state-dict files load (the reference reuses an exhausted file object and hits EOFError);
- ``{"state_dict": ...}`` wrappers and ``module.`` prefixes are accepted;
- downloads go to ``<file>.part`` and are renamed only after the SHA256 matches;
- ``jit=True`` is not supported (TorchScript graph patching breaks on recent torch): it warns and loads the
  eager model instead.
Safety: opening a TorchScript archive runs code stored in it, so ``torch.jit.load`` is only called on a file
whose SHA256 is one of OpenAI's released checkpoints (a named model, verified after download and on every cache
hit, or a local copy of one), or on a local archive the caller trusts explicitly (``trust_local_archive=True``).
Any other local archive is refused with one line before it is opened as TorchScript (it is recognised by its
zip entry names).  Plain state dicts load with ``torch.load(weights_only=True)``.
Plain state dicts load with ``torch.load(weights_only=True)``, ``.safetensors`` files with safetensors (tensors
only, never code).
Extras: ``load("tiny-vit")``/``load("tiny-rn")`` build seeded random tiny models (``clip/tiny.py``) offline;
``load("open_clip:<model>:<pretrained tag or weights file>")`` builds an open_clip model into these modules
(``clip/open_clip_loader.py``; docs/backbones.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
import warnings
import zipfile
from functools import lru_cache
from typing import Iterable, Optional, Union

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import CenterCrop, Compose, Normalize, Resize, ToTensor
from tqdm import tqdm

from dassl.utils.safe_pickle import torch_load_weights

from .backbones import BACKBONES, is_open_clip_name, known_checkpoint_hashes, openai_models, tiny_models
from .model import ARCHIVE_EXTRA_KEYS, CLIP, build_model, convert_weights
from .simple_tokenizer import SimpleTokenizer
from .tiny import tiny_state_dict

try:
    from torchvision.transforms import InterpolationMode

    BICUBIC = InterpolationMode.BICUBIC
except ImportError:  # torchvision < 0.9
    BICUBIC = Image.BICUBIC

__all__ = ["available_models", "load", "tokenize", "decode", "encode", "get_tokenizer", "build_model",
           "read_state_dict"]
logger = logging.getLogger(__name__)

# OpenAI's API names, derived from the one backbone table (clip/backbones.py): name -> URL / tiny architecture.
_MODELS: dict[str, str] = {name: BACKBONES[name].url for name in openai_models()}
_TINY_MODELS: dict[str, str] = {name: BACKBONES[name].tiny_arch for name in tiny_models()}
_DEFAULT_ROOT = os.path.expanduser("~/.cache/clip")
_CHUNK_BYTES = 1 << 20
# Image statistics CLIP was trained with (openai/CLIP ``_transform``).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CONTEXT_LENGTH = 77  # text context of every released CLIP


class UntrustedArchiveError(ValueError):
    """A local TorchScript archive is not a released OpenAI checkpoint and was not trusted explicitly."""


def available_models() -> list[str]:
    """Names of the nine released OpenAI CLIP models."""
    return list(_MODELS)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, root: str = _DEFAULT_ROOT) -> str:
    """Download ``url`` into ``root`` (unless a verified copy is there) and return the file path.

    The bytes stream into ``<file>.part``, whose SHA256 must equal the hash in the URL before it is renamed
    to ``<file>``; on a mismatch or an interrupted download no partial file is left behind.
    """
    os.makedirs(root, exist_ok=True)
    filename = os.path.basename(url)
    expected = url.split("/")[-2]
    target = os.path.join(root, filename)
    if os.path.exists(target) and not os.path.isfile(target):
        raise RuntimeError(f"{target} exists and is not a regular file; remove it and retry")
    if os.path.isfile(target):
        if _sha256(target) == expected:
            return target
        logger.warning("%s exists but its SHA256 is not %s; downloading it again", target, expected)
    partial = target + ".part"
    try:
        digest = hashlib.sha256()
        with urllib.request.urlopen(url) as source, open(partial, "wb") as out:
            total = int(source.headers.get("Content-Length") or 0) or None
            # disable=None: a bar only in a terminal, never carriage-return frames in a log file
            with tqdm(total=total, unit="iB", unit_scale=True, unit_divisor=1024, desc=filename,
                      disable=None) as bar:
                for chunk in iter(lambda: source.read(_CHUNK_BYTES), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != expected:
            raise RuntimeError(f"{filename}: SHA256 checksum mismatch for download from {url} (expected {expected}, "
                               f"got {digest.hexdigest()}); nothing was saved, retry or download it manually")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


def _unwrap_state_dict(obj: object) -> object:
    """Accept a state dict, a ``{"state_dict": ...}`` wrapper or a ScriptModule; strip a ``module.`` prefix."""
    if isinstance(obj, torch.jit.ScriptModule):
        obj = obj.state_dict()
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(key, str) and key.startswith("module.") for key in obj):
        obj = {key[len("module."):]: value for key, value in obj.items()}
    return obj


def is_torchscript_archive(path: str) -> bool:
    """Whether ``path`` is a TorchScript zip archive, judged from its entry names only (nothing is executed).

    TorchScript archives hold ``<root>/code/...`` (the serialised program) and ``<root>/constants.pkl``; a
    ``torch.save`` zip has neither.
    """
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.split("/")[1:2] == ["code"] or name.split("/")[1:] == ["constants.pkl"] for name in names)


def _require_known_archive(path: str) -> None:
    """Refuse a TorchScript archive unless it is bit-identical to a released OpenAI checkpoint."""
    digest = _sha256(path)
    known = known_checkpoint_hashes()
    if digest in known:
        logger.info("%s is OpenAI's %s checkpoint (SHA256 verified)", path, known[digest])
        return
    raise UntrustedArchiveError(
        f"{path}: a TorchScript archive whose SHA256 {digest} is not one of OpenAI's released CLIP checkpoints; "
        f"opening it would run code stored in the file. Use it only if you trust it: pass "
        f"trust_local_archive=True (config MODEL.BACKBONE.TRUST_LOCAL_ARCHIVE True), or save its state dict "
        f"with torch.save and load that file instead")


class UnreadableWeightsError(ValueError):
    """A weights file is corrupt or holds no ``{name: tensor}`` state dict."""


def read_state_dict(path: str, trusted: bool = False) -> dict[str, Tensor]:
    """The ``{name: tensor}`` state dict stored in ``path``, on the CPU, in the file's own key layout.

    ``.safetensors`` files are read with safetensors and ``torch.save`` files with ``weights_only=True`` (tensors
    and containers only: no code from the file runs).  A TorchScript archive is opened only when ``trusted``
    (its SHA256 was already verified against a table, or the caller trusts it explicitly) or when it is
    bit-identical to a released OpenAI checkpoint; any other archive raises ``UntrustedArchiveError``.
    ``{"state_dict": ...}`` wrappers (training checkpoints) and ``module.`` prefixes are removed.
    """
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: object = load_file(path, device="cpu")
        except (SafetensorError, OSError) as err:
            raise UnreadableWeightsError(f"{path}: unreadable safetensors file ({err}); download it again") from err
    elif is_torchscript_archive(path):
        if not trusted:
            _require_known_archive(path)
        with warnings.catch_warnings():  # the official files are TorchScript; its deprecation is not actionable
            warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=FutureWarning)
            archive = torch.jit.load(path, map_location="cpu")
        # A traced vlprompt model also stores the causal-mask buffers (tracing drops "non-persistent").
        obj = {k: v for k, v in archive.state_dict().items() if not k.endswith(".attn_mask")}
    else:  # a plain state dict: tensors and containers only (reopened by path, unlike the reference)
        obj = torch_load_weights(path, map_location="cpu")
    state_dict = _unwrap_state_dict(obj)
    if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise UnreadableWeightsError(f"{path}: holds {type(state_dict).__name__}, not a state dict of tensors "
                                     "(or a {'state_dict': ...} checkpoint holding one)")
    return state_dict


def _load_state_dict(path: str, trusted: bool) -> dict[str, Tensor]:
    """State dict of an OpenAI TorchScript archive or of a plain ``torch.save``/safetensors file in OpenAI layout.

    ``trusted``: see ``read_state_dict``; otherwise a TorchScript archive must be a released OpenAI checkpoint.
    """
    state_dict = read_state_dict(path, trusted)
    if "text_projection" not in state_dict:
        raise RuntimeError(f"{path}: not a CLIP state dict (no 'text_projection' key); expected an OpenAI "
                           "TorchScript archive or a state dict in OpenAI key layout (an open_clip file loads as "
                           "open_clip:<model>:<file>)")
    return {k: v for k, v in state_dict.items() if k not in ARCHIVE_EXTRA_KEYS}


def _convert_image_to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def _transform(n_px: int, mean: tuple[float, ...] = OPENAI_MEAN, std: tuple[float, ...] = OPENAI_STD) -> Compose:
    """Eval preprocessing: bicubic resize of the short side, center crop, RGB, tensor, normalisation.

    ``mean``/``std``: the statistics the weights were trained with (OpenAI's by default).
    """
    return Compose([
        Resize(n_px, interpolation=BICUBIC),
        CenterCrop(n_px),
        _convert_image_to_rgb,  # after resize and crop, as the reference (matters for P/L/RGBA/CMYK images)
        ToTensor(),
        Normalize(mean, std),
    ])


def load(
    name: str,
    device: Union[str, torch.device] = "cuda" if torch.cuda.is_available() else "cpu",
    jit: bool = False,
    download_root: Optional[str] = None,
    trust_local_archive: bool = False,
) -> tuple[CLIP, Compose]:
    """Load a CLIP model and its eval preprocessing.

    Args:
        name: one of ``available_models()`` (downloaded and SHA256-checked), ``"tiny-vit"``/``"tiny-rn"``
            (seeded random tiny models, no download), ``"open_clip:<model>:<pretrained tag or weights file>"``
            (an open_clip model built into these modules, weights fetched by open_clip's downloader), or a path
            to an OpenAI TorchScript archive or a ``torch.save``/``.safetensors`` state dict in OpenAI key layout
            (e.g. a pre-trained tiny model ``.pth``).
        device: where to put the model.  Exactly ``"cpu"`` gives fp32 weights; any other device keeps the
            reference fp16 recipe.
        jit: unsupported; ``True`` logs a warning and loads the eager model.
        download_root: cache directory for downloads, default ``~/.cache/clip`` (open_clip names: open_clip's
            own default, i.e. ``~/.cache/clip`` for URLs and the Hugging Face cache for hub files).
        trust_local_archive: open a local TorchScript archive (``name`` is a path) even when its SHA256 is not
            one of OpenAI's released checkpoints.  Opening TorchScript runs code stored in the file, so the
            default refuses such files; plain state dicts never need it.

    Returns:
        ``(model, preprocess)``: the model in eval mode and a PIL -> tensor transform.

    Raises:
        UntrustedArchiveError: ``name`` is an unknown local TorchScript archive and ``trust_local_archive`` is off.
    """
    if jit:
        logger.warning("clip.load(jit=True) is not supported (TorchScript patching breaks on recent torch); "
                       "loading the eager model instead")
    if is_open_clip_name(name):
        return _load_open_clip(name, device, download_root, trust_local_archive)
    if name in _TINY_MODELS:
        state_dict = tiny_state_dict(_TINY_MODELS[name])
    elif name in _MODELS:  # _download verifies the SHA256, also of a file already in the cache
        state_dict = _load_state_dict(_download(_MODELS[name], download_root or _DEFAULT_ROOT), trusted=True)
    elif os.path.isfile(name):
        state_dict = _load_state_dict(name, trusted=trust_local_archive)
    else:
        raise RuntimeError(f"Model {name} not found; available models = {available_models()}, "
                           f"tiny models = {list(_TINY_MODELS)}, or pass a path to a .pt/.pth file")
    model = build_model(state_dict).to(device)
    if str(device) == "cpu":
        model.float()
    return model, _transform(model.visual.input_resolution)


def _load_open_clip(name: str, device: Union[str, torch.device], download_root: Optional[str],
                    trust_local_archive: bool) -> tuple[CLIP, Compose]:
    """``load`` for ``open_clip:`` names: fp32 weights as stored; off the CPU the reference fp16 recipe."""
    from .open_clip_loader import load_open_clip  # imports open_clip (seconds): only for open_clip names

    model, backbone = load_open_clip(name, download_root=download_root, trust_local_archive=trust_local_archive)
    model = model.to(device)
    if str(device) != "cpu":  # as for OpenAI names: conv/linear weights in half precision off the CPU
        convert_weights(model)
    return model, _transform(backbone.resolution, backbone.pixel_mean, backbone.pixel_std)


@lru_cache(maxsize=None)
def get_tokenizer() -> SimpleTokenizer:
    """The shared tokenizer (built on first use): ``.encoder`` maps token strings to ids, ``.decoder`` back."""
    return SimpleTokenizer()


def __getattr__(name: str) -> SimpleTokenizer:  # PEP 562: `clip.clip._tokenizer` without loading it at import
    if name == "_tokenizer":
        return get_tokenizer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def encode(text: str) -> list[int]:
    """BPE ids of ``text`` without SOT/EOT."""
    return get_tokenizer().encode(text)


def decode(ids: Union[Tensor, Iterable[int]]) -> str:
    """Text of a 1-D id sequence (OpenAI semantics: specials and padding are kept, word ends become spaces)."""
    if isinstance(ids, Tensor):
        ids = ids.tolist()
    return get_tokenizer().decode(ids)


def tokenize(texts: Union[str, list[str]], context_length: int = CONTEXT_LENGTH, truncate: bool = False) -> Tensor:
    """Token ids ``(n_texts, context_length)`` int32: SOT, BPE ids, EOT, zero padding.

    Raises RuntimeError when a text does not fit, unless ``truncate`` (then the last kept id is EOT).
    """
    if isinstance(texts, str):
        texts = [texts]
    tokenizer = get_tokenizer()
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    result = torch.zeros(len(texts), context_length, dtype=torch.int)
    for i, text in enumerate(texts):
        ids = [sot] + tokenizer.encode(text) + [eot]
        if len(ids) > context_length:
            if not truncate:
                raise RuntimeError(f"Input {text!r} is too long for context length {context_length} ({len(ids)} "
                                   "tokens with SOT/EOT); shorten it or pass truncate=True")
            ids = ids[:context_length]
            ids[-1] = eot
        result[i, :len(ids)] = torch.tensor(ids, dtype=torch.int)
    return result

"""LoRA for our OpenAI-architecture CLIP: attention with separate q/k/v/o projections and low-rank updates.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685, applied to CLIP as in
Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models" (CLIP-LoRA, arXiv:2405.18541;
reference MaxZanella/CLIP-LoRA@358f0d7) and in DISEF (Turrisi da Costa et al., arXiv:2312.03046; reference
vturrisi/disef@501ec4b, which uses loralib's ``MergedLinear``).

``apply_lora(clip_model, specs)`` replaces the ``nn.MultiheadAttention`` of the chosen blocks by
``LoRAMultiheadAttention``, whose four projections are the row blocks of the packed in-projection and the output
projection; the ones named in ``params`` become ``LoRALinear``: ``y = W0 x + b + s B A dropout(x)`` with A
Kaiming-uniform, B zero and ``s = alpha / sqrt(r)`` (CLIP-LoRA) or ``alpha / r`` (loralib).  The dropout mask on
the LoRA input is drawn per projection (CLIP-LoRA) or once per attention and shared by its projections
(``shared_dropout``, loralib's ``MergedLinear``).  It returns a ``LoRAWeights`` container holding exactly the A/B
tensors under CLIP-LoRA's checkpoint layout; ``save_lora``/``load_lora`` read and write CLIP-LoRA's file format.
Differences from the references (cached merging that never modifies ``W0``, block positions derived from the depth)
are listed in docs/methods/clip_lora.md.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dassl.utils.safe_pickle import torch_load_weights

logger = logging.getLogger(__name__)

SCALINGS = ("sqrt", "linear")  # alpha / sqrt(r) (CLIP-LoRA, rsLoRA) or alpha / r (loralib, DISEF, notebook)
ENCODERS = ("text", "vision", "both")
POSITIONS = ("all", "bottom", "mid", "up", "half-bottom", "half-up", "top3")
PROJECTIONS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "proj"}  # param letter -> attribute
LORA_MARKER = "lora_"  # every LoRA tensor name contains it; nothing else in CLIP does
FORMAT_VERSION = 1  # of the metadata written by save_lora
# Adapter settings that shape or scale the A/B tensors: a file loads only into a model that agrees on them
WEIGHT_KEYS = ("encoder", "r", "alpha", "params", "position", "scaling", "blocks")


class LoRAError(ValueError):
    """A LoRA setting or checkpoint does not fit the model; the message names the setting and the fix."""


def lora_scale(alpha: float, r: int, scaling: str) -> float:
    """The LoRA multiplier ``s``: ``alpha / sqrt(r)`` for ``"sqrt"``, ``alpha / r`` for ``"linear"``."""
    if scaling not in SCALINGS:
        raise LoRAError(f"LoRA scaling {scaling!r}; choose one of {', '.join(SCALINGS)}")
    if r < 1:
        raise LoRAError(f"LoRA rank r={r}; it must be >= 1")
    return alpha / math.sqrt(r) if scaling == "sqrt" else alpha / r


def block_indices(position: str, depth: int) -> list[int]:
    """0-based indices of the blocks that ``position`` selects in a tower of ``depth`` blocks.

    Thirds for bottom/mid/up (boundaries ``round(depth / 3)`` and ``round(2 depth / 3)``), halves for
    half-bottom/half-up (boundary ``depth // 2``), the last three for top3.  For 12 blocks this is the
    reference's table (bottom 0-3, mid 4-7, up 8-11, half-bottom 0-5, half-up 6-11, top3 9-11); for 24 blocks
    half-bottom is 0-11, half-up 12-23 and all 0-23, as the reference's ViT-L/14 rows.
    """
    if position not in POSITIONS:
        raise LoRAError(f"LoRA position {position!r}; choose one of {', '.join(POSITIONS)}")
    if depth < 1:
        raise LoRAError(f"LoRA position {position!r}: the encoder has {depth} blocks")
    first, second, half = round(depth / 3), round(2 * depth / 3), depth // 2
    ranges = {
        "all": range(depth),
        "bottom": range(first),
        "mid": range(first, second),
        "up": range(second, depth),
        "half-bottom": range(half),
        "half-up": range(half, depth),
        "top3": range(max(0, depth - 3), depth),
    }
    return list(ranges[position])


class LoRALinear(nn.Module):
    """A frozen linear map ``W0 x + b`` plus a trainable low-rank update ``s * B A dropout(x)``.

    Parameters are named ``weight``/``bias`` (frozen copies of the original) and ``w_lora_A`` (r, in) /
    ``w_lora_B`` (out, r), as in CLIP-LoRA.  ``train(False)`` switches to the merged weight (cached, see the
    module docstring); ``merge()``/``unmerge()`` do it by hand.
    """

    def __init__(self, weight: Tensor, bias: Optional[Tensor], r: int, alpha: float, dropout: float = 0.0,
                 scaling: str = "sqrt", merge_on_eval: bool = True) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        self.in_features, self.out_features = in_features, out_features
        self.r, self.alpha, self.scaling_mode = r, alpha, scaling
        self.scaling = lora_scale(alpha, r, scaling)
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        # LoRA tensors in fp32 even when W0 is fp16, as the reference's fresh fp32 Linear
        self.w_lora_A = nn.Parameter(torch.empty(r, in_features, device=weight.device))
        self.w_lora_B = nn.Parameter(torch.zeros(out_features, r, device=weight.device))
        nn.init.kaiming_uniform_(self.w_lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merge_on_eval = merge_on_eval
        self.register_buffer("merged_weight", None, persistent=False)  # W0 + s B A while merged
        self._merged_key: Optional[tuple] = None

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha}, scaling={self.scaling_mode} ({self.scaling:.4g}), merged={self.merged}")

    @property
    def merged(self) -> bool:
        return self.merged_weight is not None

    def delta_weight(self) -> Tensor:
        """``s * B @ A`` ``(out, in)`` in the LoRA dtype."""
        return self.scaling * (self.w_lora_B @ self.w_lora_A)

    def _state_key(self) -> tuple:
        """Changes whenever A, B or W0 are updated in place, moved or replaced (the cache is then stale)."""
        return tuple((t._version, t.data_ptr(), t.device, t.dtype) for t in (self.weight, self.w_lora_A, self.w_lora_B))

    @torch.no_grad()
    def merge(self) -> None:
        """Use ``W0 + s B A`` from now on (cached; ``W0`` itself is never modified)."""
        self.merged_weight = (self.weight.float() + self.delta_weight().float()).to(self.weight.dtype)
        self._merged_key = self._state_key()

    def unmerge(self) -> None:
        """Back to ``W0 x + s B A x`` (the form that trains A and B)."""
        self.merged_weight = None
        self._merged_key = None

    def train(self, mode: bool = True) -> "LoRALinear":
        super().train(mode)
        if self.merge_on_eval:
            self.unmerge() if mode else self.merge()
        return self

    def forward(self, x: Tensor, lora_input: Optional[Tensor] = None) -> Tensor:
        """``lora_input``: the LoRA branch's input when the caller drew the dropout mask (shared dropout)."""
        if self.merged:
            if self._merged_key != self._state_key():
                self.merge()  # A/B/W0 changed since the merge (optimizer step, load_state_dict, .to())
            return F.linear(x, self.merged_weight, self.bias)
        out = F.linear(x, self.weight, self.bias)
        lora_in = (self.lora_dropout(x) if lora_input is None else lora_input).to(self.w_lora_A.dtype)
        update = (lora_in @ self.w_lora_A.t()) @ self.w_lora_B.t()  # (..., r) -> (..., out)
        return out + (self.scaling * update).to(out.dtype)


def _projection(weight: Tensor, bias: Optional[Tensor], lora: Optional[dict]) -> nn.Module:
    """A plain frozen ``nn.Linear`` holding ``weight``/``bias``, or a ``LoRALinear`` when ``lora`` is given."""
    if lora is not None:
        return LoRALinear(weight, bias, **lora)
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    linear.requires_grad_(weight.requires_grad)  # a frozen CLIP stays frozen
    return linear


class LoRAMultiheadAttention(nn.Module):
    """Self/cross attention with four separate projections; a drop-in for CLIP's ``nn.MultiheadAttention``.

    Accepts ``nn.MultiheadAttention.forward``'s arguments and returns ``(output, None)``: attention weights are
    never computed (CLIP calls it with ``need_weights=False``).  Attention dropout is 0, as in the reference.
    ``shared_dropout``: one dropout mask on the attention input feeds the LoRA branch of every adapted projection
    (loralib's ``MergedLinear`` over the packed q/k/v projection); otherwise each projection draws its own.
    """

    def __init__(self, mha: nn.MultiheadAttention, params: Sequence[str], r: int, alpha: float,
                 dropout: float = 0.0, scaling: str = "sqrt", shared_dropout: bool = False) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
            raise LoRAError("LoRA needs attention with a packed in_proj_weight (kdim == vdim == embed_dim), as CLIP's")
        unknown = sorted(set(params) - set(PROJECTIONS))
        if unknown:
            raise LoRAError(f"LoRA params {unknown} unknown; choose a subset of {list(PROJECTIONS)}")
        self.embed_dim, self.num_heads = mha.embed_dim, mha.num_heads
        self.head_dim = mha.embed_dim // mha.num_heads
        self.batch_first = mha.batch_first
        self.params = tuple(p for p in PROJECTIONS if p in params)
        self.shared_dropout = shared_dropout
        # shared: the attention draws the mask (the layers get dropout 0); the output projection keeps its own
        self.lora_dropout = nn.Dropout(dropout) if shared_dropout and dropout > 0 else nn.Identity()
        lora = dict(r=r, alpha=alpha, dropout=0.0 if shared_dropout else dropout, scaling=scaling)
        width, weight, bias = mha.embed_dim, mha.in_proj_weight, mha.in_proj_bias
        for i, letter in enumerate(("q", "k", "v")):
            rows = slice(i * width, (i + 1) * width)  # in_proj_weight packs q, k, v by rows: (3E, E)
            setattr(self, PROJECTIONS[letter], _projection(weight[rows], None if bias is None else bias[rows],
                                                           lora if letter in params else None))
        out_lora = {**lora, "dropout": dropout} if shared_dropout else lora  # its input is the attention output
        self.proj = _projection(mha.out_proj.weight, mha.out_proj.bias, out_lora if "o" in params else None)

    def _lora_inputs(self, query: Tensor, key: Tensor, value: Tensor) -> dict[str, Tensor]:
        """Shared dropout in training: q/k/v's LoRA inputs under one mask (empty dict: each layer drops its own)."""
        if not (self.training and isinstance(self.lora_dropout, nn.Dropout)):
            return {}
        if query is key and key is value:  # self-attention (CLIP): dropout(x) once, as loralib's MergedLinear
            dropped = self.lora_dropout(query)
            return {"q": dropped, "k": dropped, "v": dropped}
        if not query.shape == key.shape == value.shape:
            raise LoRAError("shared LoRA dropout needs query, key and value of one shape; use per-projection "
                            "dropout (shared_dropout False) for this attention")
        mask = self.lora_dropout(torch.ones_like(query))  # one mask, already scaled by 1 / (1 - p)
        return {"q": query * mask, "k": key * mask, "v": value * mask}

    def _project(self, letter: str, x: Tensor, lora_inputs: dict[str, Tensor]) -> Tensor:
        layer = getattr(self, PROJECTIONS[letter])
        if isinstance(layer, LoRALinear) and letter in lora_inputs:
            return layer(x, lora_inputs[letter])
        return layer(x)

    def lora_layers(self) -> dict[str, LoRALinear]:
        """Attribute name -> ``LoRALinear`` for the adapted projections, in q, k, v, o order."""
        return {PROJECTIONS[p]: getattr(self, PROJECTIONS[p]) for p in self.params}

    def _heads(self, x: Tensor) -> Tensor:
        """``(L, N, E)`` -> ``(N, heads, L, head_dim)``."""
        length, batch, _ = x.shape
        return x.view(length, batch, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

    def _mask(self, attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor], batch: int, tgt_len: int,
              src_len: int, dtype: torch.dtype) -> Optional[Tensor]:
        """Additive float mask broadcastable to ``(N, heads, L, S)``, or None (PyTorch's mask conventions)."""
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, dtype)
            if mask.dim() == 2:
                if mask.shape != (tgt_len, src_len):
                    raise LoRAError(f"attn_mask is {tuple(mask.shape)}; expected ({tgt_len}, {src_len})")
                mask = mask.view(1, 1, tgt_len, src_len)
            elif mask.dim() == 3:
                if mask.shape != (batch * self.num_heads, tgt_len, src_len):
                    raise LoRAError(f"attn_mask is {tuple(mask.shape)}; expected "
                                    f"({batch * self.num_heads}, {tgt_len}, {src_len})")
                mask = mask.view(batch, self.num_heads, tgt_len, src_len)
            else:
                raise LoRAError(f"attn_mask must be 2-D or 3-D, got {mask.dim()}-D")
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, dtype).view(batch, 1, 1, src_len)  # (N, 1, 1, S)
            mask = padding if mask is None else mask + padding
        return mask

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, None]:
        if self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))  # -> (L, N, E)
        tgt_len, batch, width = query.shape
        src_len = key.shape[0]
        inputs = self._lora_inputs(query, key, value)
        q = self._heads(self._project("q", query, inputs))  # (N, H, L, Dh)
        k = self._heads(self._project("k", key, inputs))  # (N, H, S, Dh)
        v = self._heads(self._project("v", value, inputs))  # (N, H, S, Dh)
        mask = self._mask(attn_mask, key_padding_mask, batch, tgt_len, src_len, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0,
                                             is_causal=is_causal and mask is None)  # (N, H, L, Dh)
        out = out.permute(2, 0, 1, 3).reshape(tgt_len, batch, width)  # (L, N, E)
        out = self.proj(out)
        if self.batch_first:
            out = out.transpose(0, 1)  # (N, L, E)
        return out, None


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean masks (True = blocked) become 0 / -inf floats; float masks are cast to ``dtype``."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


@dataclass
class LoRASpec:
    """Where and how to adapt one tower (``encoder`` is ``"text"`` or ``"vision"``)."""

    encoder: str
    r: int = 2  # rank
    alpha: float = 1.0
    dropout: float = 0.25  # on the LoRA input, training mode only
    params: tuple = ("q", "k", "v")  # subset of q, k, v, o
    position: str = "all"  # see block_indices
    scaling: str = "sqrt"  # alpha / sqrt(r) (CLIP-LoRA) or "linear": alpha / r (loralib/DISEF)
    blocks: list = field(default_factory=list)  # filled by apply_lora: the adapted block indices
    shared_dropout: bool = False  # one dropout mask for q/k/v's LoRA inputs (loralib MergedLinear, DISEF)

    def check(self) -> None:
        if self.encoder not in ("text", "vision"):
            raise LoRAError(f"LoRASpec.encoder={self.encoder!r}; choose text or vision")
        lora_scale(self.alpha, self.r, self.scaling)
        if not 0 <= self.dropout < 1:
            raise LoRAError(f"LoRA dropout {self.dropout}; it must be in [0, 1)")
        if not self.params or set(self.params) - set(PROJECTIONS):
            raise LoRAError(f"LoRA params {list(self.params)}; choose a non-empty subset of {list(PROJECTIONS)}")
        if self.position not in POSITIONS:
            raise LoRAError(f"LoRA position {self.position!r}; choose one of {', '.join(POSITIONS)}")


def lora_specs(encoder: str, r: int = 2, alpha: float = 1.0, dropout: float = 0.25, params: Sequence[str] = "qkv",
               position: str = "all", scaling: str = "sqrt", text_r: int = 0, vision_r: int = 0,
               shared_dropout: bool = False) -> list[LoRASpec]:
    """Specs for ``encoder`` in text, vision or both (text first, as the reference numbers its layers).

    ``text_r``/``vision_r`` > 0 override ``r`` for that tower (DISEF: vision 64, text 16).
    """
    if encoder not in ENCODERS:
        raise LoRAError(f"LoRA encoder {encoder!r}; choose one of {', '.join(ENCODERS)}")
    towers = ("text", "vision") if encoder == "both" else (encoder,)
    ranks = {"text": text_r or r, "vision": vision_r or r}
    return [LoRASpec(tower, ranks[tower], alpha, dropout, tuple(p for p in PROJECTIONS if p in params), position,
                     scaling, shared_dropout=shared_dropout) for tower in towers]


def _resblocks(clip_model: nn.Module, encoder: str) -> nn.Sequential:
    if encoder == "text":
        return clip_model.transformer.resblocks
    transformer = getattr(clip_model.visual, "transformer", None)
    if transformer is None:
        raise LoRAError(f"LoRA on the vision encoder needs a ViT; this CLIP's image tower is "
                        f"{type(clip_model.visual).__name__} (use encoder 'text' or a ViT backbone)")
    return transformer.resblocks


class _LoRAPair(nn.Module):
    """Registers one layer's ``w_lora_A``/``w_lora_B`` (the same ``Parameter`` objects as the ``LoRALinear``)."""

    def __init__(self, layer: LoRALinear) -> None:
        super().__init__()
        self.w_lora_A = layer.w_lora_A
        self.w_lora_B = layer.w_lora_B


class LoRAWeights(nn.Module):
    """Exactly the LoRA tensors of an adapted CLIP, under the key layout ``layer_{i}.{proj}.w_lora_{A|B}``.

    Its ``state_dict`` is a LoRA-only checkpoint and its ``parameters()`` are what the optimizer trains.
    ``train(mode)`` is forwarded to the adapted layers (dropout on, merged weights off in training), which
    live inside CLIP and are not children of this module.
    """

    def __init__(self, attentions: Sequence[LoRAMultiheadAttention], specs: Sequence[LoRASpec]) -> None:
        super().__init__()
        self._layers: list[LoRALinear] = []  # plain list: not registered twice
        for i, attention in enumerate(attentions):
            pairs = nn.Module()
            for name, layer in attention.lora_layers().items():
                pairs.add_module(name, _LoRAPair(layer))
                self._layers.append(layer)
            self.add_module(f"layer_{i}", pairs)
        self.specs = list(specs)

    def lora_layers(self) -> list[LoRALinear]:
        return list(self._layers)

    def train(self, mode: bool = True) -> "LoRAWeights":
        super().train(mode)
        for layer in self._layers:
            layer.train(mode)
        return self

    def metadata(self) -> dict[str, Any]:
        """CLIP-LoRA's metadata keys plus one entry per adapted tower (ranks may differ)."""
        first = self.specs[0]
        towers = [spec.encoder for spec in self.specs]
        return {
            "r": first.r, "alpha": first.alpha, "params": list(first.params), "position": first.position,
            "encoder": "both" if len(towers) == 2 else towers[0],
            "format_version": FORMAT_VERSION,
            "adapters": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()}
                         for spec in self.specs],
        }

    def nested_state(self) -> dict[str, dict[str, dict[str, Tensor]]]:
        """``{'layer_i': {'q_proj': {'w_lora_A': T, 'w_lora_B': T}, ...}}`` (cloned, on the CPU)."""
        nested: dict[str, dict[str, dict[str, Tensor]]] = {}
        for key, tensor in self.state_dict().items():
            layer, proj, name = key.split(".")
            nested.setdefault(layer, {}).setdefault(proj, {})[name] = tensor.detach().cpu().clone()
        return nested


def apply_lora(clip_model: nn.Module, specs: Sequence[LoRASpec]) -> LoRAWeights:
    """Replace the attention of the selected blocks by ``LoRAMultiheadAttention``; return the LoRA tensors.

    Towers are adapted in the order of ``specs`` (text before vision reproduces the reference's layer
    numbering).  Only the new A/B tensors require grad afterwards; every other parameter is left as it was
    (call ``mark_only_lora_as_trainable`` to freeze the rest).
    """
    attentions: list[LoRAMultiheadAttention] = []
    seen = set()
    for spec in specs:
        spec.check()
        if spec.encoder in seen:
            raise LoRAError(f"LoRA specs adapt the {spec.encoder} encoder twice")
        seen.add(spec.encoder)
        resblocks = _resblocks(clip_model, spec.encoder)
        spec.blocks = block_indices(spec.position, len(resblocks))
        if not spec.blocks:
            raise LoRAError(f"LoRA position {spec.position!r} selects no block of the {len(resblocks)}-block "
                            f"{spec.encoder} encoder; choose another position")
        for index in spec.blocks:
            block = resblocks[index]
            if isinstance(block.attn, LoRAMultiheadAttention):
                raise LoRAError(f"{spec.encoder} block {index} already has LoRA; apply_lora once per model")
            attention = LoRAMultiheadAttention(block.attn, spec.params, spec.r, spec.alpha, spec.dropout,
                                               spec.scaling, spec.shared_dropout)
            block.attn = attention.train(block.training)  # same mode as the model (eval merges)
            attentions.append(attention)
        logger.info(f"LoRA on {spec.encoder} blocks {spec.blocks}: {''.join(spec.params)}, r={spec.r}, "
                    f"alpha={spec.alpha}, scaling={spec.scaling}, dropout={spec.dropout}"
                    f"{' (one mask shared by the projections)' if spec.shared_dropout else ''}")
    return LoRAWeights(attentions, specs)


def lora_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every LoRA tensor (name contains ``lora_``)."""
    return ((n, p) for n, p in model.named_parameters() if LORA_MARKER in n)


def mark_only_lora_as_trainable(model: nn.Module) -> int:
    """``requires_grad`` True exactly for LoRA tensors; returns their number of elements."""
    total = 0
    for name, param in model.named_parameters():
        param.requires_grad_(LORA_MARKER in name)
        total += param.numel() if param.requires_grad else 0
    return total


def save_lora(path: str, weights: LoRAWeights, extra_metadata: Optional[dict] = None) -> None:
    """Write CLIP-LoRA's file ``{'weights': {...}, 'metadata': {...}}`` atomically."""
    metadata = {**weights.metadata(), **(extra_metadata or {})}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save({"weights": weights.nested_state(), "metadata": metadata}, tmp)
    os.replace(tmp, path)


def read_lora_file(path: str) -> dict[str, Any]:
    """The ``{'weights', 'metadata'}`` dict of a LoRA file, on the CPU."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LoRA weights not found at {path}; train a LoRA model or fix the path")
    obj = torch_load_weights(path, map_location="cpu")
    if not isinstance(obj, dict) or "weights" not in obj or "metadata" not in obj:
        raise LoRAError(f"{path} is not a LoRA file (expected keys 'weights' and 'metadata')")
    return obj


def specs_from_metadata(metadata: dict[str, Any]) -> list[LoRASpec]:
    """The ``LoRASpec``s a file was trained with; plain CLIP-LoRA files get its defaults (sqrt, dropout 0.25)."""
    if "adapters" in metadata:  # files written before shared_dropout existed get its default (per projection)
        known = {f.name for f in fields(LoRASpec)}
        return [LoRASpec(**{**{k: v for k, v in a.items() if k in known}, "params": tuple(a["params"]), "blocks": []})
                for a in metadata["adapters"]]
    return lora_specs(metadata["encoder"], int(metadata["r"]), float(metadata["alpha"]),
                      params=metadata["params"], position=metadata["position"])


def load_lora(path: str, weights: LoRAWeights) -> dict[str, Any]:
    """Copy A/B from ``path`` into ``weights`` after checking the metadata matches; returns the metadata."""
    obj = read_lora_file(path)
    ours, theirs = weights.metadata(), obj["metadata"]
    for key in ("encoder", "r", "alpha", "params", "position"):
        if key in theirs and theirs[key] != ours[key]:
            raise LoRAError(f"{path}: LoRA metadata {key}={theirs[key]!r} but the model has {ours[key]!r}; "
                            "build the model with the file's settings")
    if "adapters" in theirs:  # per tower; dropout settings do not change the tensors, so they may differ
        shape = [{k: a.get(k) for k in WEIGHT_KEYS} for a in theirs["adapters"]]
        if shape != [{k: a.get(k) for k in WEIGHT_KEYS} for a in ours["adapters"]]:
            raise LoRAError(f"{path}: LoRA adapters {shape} but the model has "
                            f"{[{k: a.get(k) for k in WEIGHT_KEYS} for a in ours['adapters']]}; build the model "
                            "with the file's settings")
    flat = {f"{layer}.{proj}.{name}": tensor for layer, projs in obj["weights"].items()
            for proj, tensors in projs.items() for name, tensor in tensors.items()}
    weights.load_state_dict(flat, strict=True)
    return obj["metadata"]


def load_lora_into(clip_model: nn.Module, path: str) -> LoRAWeights:
    """Adapt ``clip_model`` as the file says and load its A/B (e.g. to filter images with a trained model)."""
    specs = specs_from_metadata(read_lora_file(path)["metadata"])
    weights = apply_lora(clip_model, specs)
    load_lora(path, weights)
    return weights

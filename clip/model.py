"""OpenAI CLIP architecture, written for vlprompt.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021,
arXiv:2103.00020.  Reference architecture: openai/CLIP ``clip/model.py`` (HEAD d05afc4); this file is
our own implementation of the same maths.

Compatibility contract (what CoOp-style code and LoRA code written against openai/CLIP rely on):
- parameter names and shapes equal OpenAI's, so the released state dicts load with ``strict=True``;
- every ``Transformer`` and ``ResidualAttentionBlock`` takes and returns sequence-first ``(L, N, D)``;
- each block calls ``self.attn(x, x, x, need_weights=False, attn_mask=mask)[0]``, so LoRA code may
  replace ``resblock.attn`` with its own module.

Deviations (none changes the outputs beyond float rounding; tests/test_clip_model.py compares with
open_clip):
- attention runs through ``F.scaled_dot_product_attention`` with the packed ``in_proj_weight``;
- the causal mask is a non-persistent buffer (moves with ``.to()``, absent from the state dict) and is
  sliced to the input length, so the text transformer accepts sequences shorter than 77;
- ``VisionTransformer.forward`` takes optional shallow visual prompt tokens (DPT's visual prompt, as in its
  reference alvitawa/fomo, a CoPrompt/MaPLe fork);
- both towers take optional deep prompts (layer-0 tokens replaced before layers 1..J-1, as in VPT-deep, IVLP and
  MaPLe; the convention is described in ``clip/prompting.py``).  Without them the computation is unchanged.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .prompting import TEXT_PROMPT_START, check_deep_prompts, insert_prompt_tokens, replace_prompt_tokens

logger = logging.getLogger(__name__)

# Every released CLIP uses 64-wide attention heads: openai/CLIP's build_model derives head counts as width // 64.
HEAD_WIDTH = 64
RESNET_DOWNSAMPLE = 32  # total stride of ModifiedResNet; the attention-pool grid is resolution // 32
# State-dict entries that OpenAI's TorchScript archives carry in addition to the module's parameters.
ARCHIVE_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back to the input dtype (needed by the fp16 recipe)."""

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x.float())
        return out.to(x.dtype)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the activation CLIP was trained with (not ``nn.GELU``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def set_mlp_activation(model: nn.Module, activation: Callable[[], nn.Module]) -> int:
    """Give the MLP of every ``ResidualAttentionBlock`` in ``model`` a fresh ``activation()``; returns the count.

    The activation holds no parameters and keeps OpenAI's submodule name ``mlp.gelu``, so state dicts are
    unchanged.  Used for open_clip models trained with ``nn.GELU`` instead of QuickGELU.
    """
    blocks = [m for m in model.modules() if isinstance(m, ResidualAttentionBlock)]
    for block in blocks:
        block.mlp.gelu = activation()
    return len(blocks)


class MultiheadAttention(nn.MultiheadAttention):
    """Sequence-first self-attention through ``F.scaled_dot_product_attention``.

    Keeps ``nn.MultiheadAttention``'s parameters (``in_proj_weight`` packs q, k, v by rows, ``out_proj``),
    so state dicts, ``isinstance`` checks and ``convert_weights`` are unchanged.  Calls that need
    attention weights, a key padding mask or cross-attention fall back to the parent implementation.
    """

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Optional[Tensor]]:
        self_attention = query is key and key is value
        if need_weights or key_padding_mask is not None or not self_attention or self.batch_first:
            return super().forward(
                query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal,
            )
        seq_len, batch, width = query.shape
        heads = self.num_heads
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)  # (L, N, 3D)
        qkv = qkv.view(seq_len, batch, 3, heads, width // heads)  # (L, N, 3, H, Dh)
        q, k, v = qkv.permute(2, 1, 3, 0, 4).unbind(0)  # each (N, H, L, Dh)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:  # MHA: True = blocked; SDPA would read True as allowed
                attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill_(
                    attn_mask, float("-inf"))
            attn_mask = attn_mask.to(q.dtype)
            if attn_mask.dim() == 3:  # (N*H, L, L) -> (N, H, L, L)
                attn_mask = attn_mask.view(batch, heads, seq_len, seq_len)
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout,
                                             is_causal=is_causal and attn_mask is None)  # (N, H, L, Dh)
        out = out.permute(2, 0, 1, 3).reshape(seq_len, batch, width)  # (L, N, D)
        return self.out_proj(out), None


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``, on ``(L, N, D)``."""

    def __init__(self, d_model: int, n_head: int, attn_mask: Optional[Tensor] = None) -> None:
        super().__init__()
        self.attn = MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, d_model * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(d_model * 4, d_model)),
        ]))
        self.ln_2 = LayerNorm(d_model)
        # Non-persistent: follows .to(device) but never appears in (or is required by) a state dict.
        self.register_buffer("attn_mask", attn_mask, persistent=False)

    def attention(self, x: Tensor) -> Tensor:
        mask = self.attn_mask
        if mask is not None:
            seq_len = x.shape[0]
            mask = mask[:seq_len, :seq_len].to(dtype=x.dtype, device=x.device)  # causal mask for L <= 77
        return self.attn(x, x, x, need_weights=False, attn_mask=mask)[0]

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    """A stack of ``layers`` residual attention blocks; input and output are ``(L, N, width)``."""

    def __init__(self, width: int, layers: int, heads: int, attn_mask: Optional[Tensor] = None) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x: Tensor, deep_prompts: Sequence[Tensor] = (), prompt_start: int = TEXT_PROMPT_START) -> Tensor:
        """Run the blocks on ``x (L, N, width)``.

        Args:
            deep_prompts: prompts of layers ``1 .. len(deep_prompts)``, each ``(P, width)`` or ``(N or 1, P,
                width)``: before block ``k`` the ``P`` tokens at ``prompt_start`` are replaced by
                ``deep_prompts[k-1]`` (``clip/prompting.py``).  Empty: the plain stack.
            prompt_start: position of the first prompt token; negative counts from the end (``-P``: the last
                ``P`` tokens, where the image tower appends its prompts).
        """
        if not deep_prompts:
            return self.resblocks(x)
        check_deep_prompts(deep_prompts, self.layers, deep_prompts[0].shape[-2])
        for index, block in enumerate(self.resblocks):
            if 0 < index <= len(deep_prompts):
                x = replace_prompt_tokens(x, deep_prompts[index - 1], prompt_start)  # (L, N, width)
            x = block(x)
        return x


class Bottleneck(nn.Module):
    """ResNet bottleneck with anti-aliased downsampling: AvgPool after the 3x3 conv, never a strided conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Sequential] = None
        self.stride = stride
        if stride > 1 or inplanes != out_planes:
            # Key "-1" holds no parameters, so the state dict has downsample.0.* and downsample.1.*.
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, out_planes, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(out_planes)),
            ]))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling of a ``(N, C, H, W)`` map: the mean token queries all tokens; output ``(N, output_dim)``."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: Optional[int] = None) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads

    def forward(self, x: Tensor) -> Tensor:
        batch, channels = x.shape[:2]
        x = x.flatten(2).permute(2, 0, 1)  # (HW, N, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)  # (HW+1, N, C): mean token first
        x = x + self.positional_embedding[:, None, :].to(x.dtype)
        heads, head_dim = self.num_heads, channels // self.num_heads
        q = self.q_proj(x[:1]).view(1, batch, heads, head_dim).permute(1, 2, 0, 3)  # (N, H, 1, Dh)
        k = self.k_proj(x).view(-1, batch, heads, head_dim).permute(1, 2, 0, 3)  # (N, H, HW+1, Dh)
        v = self.v_proj(x).view(-1, batch, heads, head_dim).permute(1, 2, 0, 3)  # (N, H, HW+1, Dh)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, H, 1, Dh)
        out = out.permute(0, 2, 1, 3).reshape(batch, channels)  # (N, C)
        return self.c_proj(out)


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: 3-conv stem + avgpool, anti-aliased bottlenecks, attention pooling instead of avgpool+fc."""

    def __init__(self, layers: Sequence[int], output_dim: int, heads: int, input_resolution: int = 224,
                 width: int = 64) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.input_resolution = input_resolution
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)

        self._inplanes = width  # running channel count while the stages are built
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)

        embed_dim = width * 32  # channels after layer4: 8 * width * Bottleneck.expansion
        self.attnpool = AttentionPool2d(input_resolution // RESNET_DOWNSAMPLE, embed_dim, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        stage = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        stage += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def stem(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.conv1.weight.dtype)
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class VisionTransformer(nn.Module):
    """ViT image tower: patch conv, class token, learned positions, ln_pre, transformer, ln_post(CLS) @ proj."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        grid = input_resolution // patch_size
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def embed(self, x: Tensor) -> Tensor:
        """Image ``(N, 3, R, R)`` -> tokens ``(N, G*G+1, width)`` with class token and positions added."""
        x = self.conv1(x)  # (N, width, G, G)
        x = x.flatten(2).transpose(1, 2)  # (N, G*G, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (N, 1, width)
        x = torch.cat([cls, x], dim=1)  # (N, G*G+1, width)
        return x + self.positional_embedding.to(x.dtype)

    def forward(self, x: Tensor, prompt_tokens: Optional[Tensor] = None, deep_prompts: Sequence[Tensor] = ()) -> Tensor:
        """Encode images ``(N, 3, R, R)`` -> ``(N, output_dim)``.

        Args:
            x: images, already in the model's dtype.
            prompt_tokens: optional shallow visual prompts ``(N or 1, P, width)`` or ``(P, width)``.  As in DPT
                and MaPLe (alvitawa/fomo, muzairkhattak/multimodal-prompt-learning) they are appended after the
                class and patch tokens, after the positional embedding is added (they get none) and before
                ``ln_pre``; the output is still read from the class token.  ``None`` leaves the computation
                exactly as without prompts.
            deep_prompts: prompts of layers ``1 .. J-1`` (``(P, width)`` or ``(N or 1, P, width)`` each, the
                same ``P``); each replaces the last ``P`` tokens before its block.  They need ``prompt_tokens``.
        """
        if deep_prompts and prompt_tokens is None:
            raise ValueError("VisionTransformer: deep_prompts replace the layer-0 prompt_tokens; pass both")
        x = self.embed(x)  # (N, G*G+1, width)
        if prompt_tokens is not None:
            prompt_tokens = prompt_tokens.unsqueeze(0) if prompt_tokens.dim() == 2 else prompt_tokens  # (1|N, P, width)
            x = append_prompt_tokens(x, prompt_tokens)  # (N, G*G+1+P, width)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)  # (L, N, width)
        if deep_prompts:
            n_prompts = prompt_tokens.shape[-2]
            check_deep_prompts(deep_prompts, self.transformer.layers, n_prompts)
            x = self.transformer(x, deep_prompts=deep_prompts, prompt_start=-n_prompts)
        else:
            x = self.transformer(x)
        x = x.permute(1, 0, 2)  # (N, L, width)
        x = self.ln_post(x[:, 0, :])  # (N, width): class token
        return x @ self.proj  # (N, output_dim)


def append_prompt_tokens(tokens: Tensor, prompt_tokens: Tensor) -> Tensor:
    """Concatenate prompts ``(N or 1, P, D)`` after ``tokens (N, L, D)`` -> ``(N, L+P, D)``."""
    if prompt_tokens.dim() != 3 or prompt_tokens.shape[-1] != tokens.shape[-1]:
        raise ValueError(f"prompt_tokens has shape {tuple(prompt_tokens.shape)}; expected (N or 1, P, "
                         f"{tokens.shape[-1]}) to match the vision transformer width")
    batch = tokens.shape[0]
    if prompt_tokens.shape[0] not in (1, batch):
        raise ValueError(f"prompt_tokens batch is {prompt_tokens.shape[0]}; expected 1 or the image batch {batch}")
    prompt_tokens = prompt_tokens.to(tokens.dtype).expand(batch, -1, -1)  # (N, P, D)
    return torch.cat([tokens, prompt_tokens], dim=1)  # (N, L+P, D)


def build_causal_mask(context_length: int) -> Tensor:
    """Additive float mask ``(L, L)``: ``-inf`` strictly above the diagonal, 0 elsewhere."""
    return torch.full((context_length, context_length), float("-inf")).triu_(1)


class CLIP(nn.Module):
    """Contrastive Language-Image Pre-training model (Radford et al. 2021, arXiv:2103.00020).

    ``vision_layers`` as a 4-sequence builds a ModifiedResNet, as an int a VisionTransformer.
    ``vision_head_width`` (64 in every OpenAI model, 80 in open_clip's ViT-H-14) sets the image tower's head
    count; ``quick_gelu=False`` gives every transformer MLP ``nn.GELU`` instead of QuickGELU (open_clip models
    trained with GELU).  Neither changes a state-dict key.
    """

    def __init__(
        self,
        embed_dim: int,
        image_resolution: int,
        vision_layers: Union[Sequence[int], int],
        vision_width: int,
        vision_patch_size: Optional[int],
        context_length: int,
        vocab_size: int,
        transformer_width: int,
        transformer_heads: int,
        transformer_layers: int,
        vision_head_width: int = HEAD_WIDTH,
        quick_gelu: bool = True,
    ) -> None:
        super().__init__()
        self.context_length = context_length
        if isinstance(vision_layers, (tuple, list)):
            self.visual: nn.Module = ModifiedResNet(
                layers=vision_layers, output_dim=embed_dim, heads=vision_width * 32 // vision_head_width,
                input_resolution=image_resolution, width=vision_width,
            )
        else:
            if vision_patch_size is None:
                raise ValueError("CLIP: vision_patch_size is None but vision_layers is an int (ViT); pass a patch size")
            self.visual = VisionTransformer(
                input_resolution=image_resolution, patch_size=vision_patch_size, width=vision_width,
                layers=vision_layers, heads=vision_width // vision_head_width, output_dim=embed_dim,
            )
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads,
                                       attn_mask=build_causal_mask(context_length))
        if not quick_gelu:  # open_clip models trained with nn.GELU (most LAION/DataComp ones)
            set_mlp_activation(self, nn.GELU)
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """Random init for training from scratch (the released weights overwrite all of it)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features ** -0.5
            for linear in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(linear.weight, std=std)
            for stage in (self.visual.layer1, self.visual.layer2, self.visual.layer3, self.visual.layer4):
                for block in stage:
                    nn.init.zeros_(block.bn3.weight)
        width, layers = self.transformer.width, self.transformer.layers
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        attn_std = width ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, image: Tensor, prompt_tokens: Optional[Tensor] = None,
                     deep_prompts: Sequence[Tensor] = ()) -> Tensor:
        """Images ``(N, 3, R, R)`` -> features ``(N, E)``; prompts: ViT only, see VisionTransformer.forward."""
        image = image.to(self.dtype)
        if prompt_tokens is None and not deep_prompts:
            return self.visual(image)
        if not isinstance(self.visual, VisionTransformer):
            raise ValueError("CLIP.encode_image: prompt_tokens need a ViT image tower; this model uses "
                             f"{type(self.visual).__name__}")
        return self.visual(image, prompt_tokens=prompt_tokens, deep_prompts=deep_prompts)

    def encode_text(self, text: Tensor, prompt_tokens: Optional[Tensor] = None,
                    deep_prompts: Sequence[Tensor] = ()) -> Tensor:
        """Token ids ``(N, L <= context_length)`` -> features ``(N, E)`` read at the EOT (highest id) position.

        Args:
            prompt_tokens: optional layer-0 prompts ``(P, W)`` or ``(N or 1, P, W)`` inserted right after SOT;
                the rest of each row (and its EOT) moves back by ``P`` and the padding beyond the context
                length is dropped.  ``"a photo of a cat."`` with the prompts for "a photo" equals ``"of a cat."``
                with them inserted.
            deep_prompts: prompts of layers ``1 .. J-1``, each replacing the ``P`` prompt positions before its
                block (``clip/prompting.py``); they need ``prompt_tokens``.
        """
        if deep_prompts and prompt_tokens is None:
            raise ValueError("CLIP.encode_text: deep_prompts replace the layer-0 prompt_tokens; pass both")
        x = self.token_embedding(text).to(self.dtype)  # (N, L, W)
        eot = text.argmax(dim=-1)  # (N,): EOT has the largest id
        if prompt_tokens is not None:
            x, eot = insert_prompt_tokens(x, eot, prompt_tokens, self.context_length)  # (N, L', W)
        seq_len = x.shape[1]
        x = x + self.positional_embedding[:seq_len].to(self.dtype)
        x = x.permute(1, 0, 2)  # (L, N, W)
        if deep_prompts:
            check_deep_prompts(deep_prompts, self.transformer.layers, prompt_tokens.shape[-2])
            x = self.transformer(x, deep_prompts=deep_prompts, prompt_start=TEXT_PROMPT_START)
        else:
            x = self.transformer(x)
        x = x.permute(1, 0, 2)  # (N, L, W)
        x = self.ln_final(x).to(self.dtype)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection  # (N, E)

    def forward(self, image: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(logits_per_image (N_img, N_txt), logits_per_text (N_txt, N_img))``."""
        image_features = self.encode_image(image)
        text_features = self.encode_text(text)
        image_features = image_features / image_features.norm(dim=1, keepdim=True)
        text_features = text_features / text_features.norm(dim=1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


def convert_weights(model: nn.Module) -> None:
    """Cast conv/linear/attention weights and the ``proj``/``text_projection`` matrices to fp16, in place.

    LayerNorm, BatchNorm, embeddings, positional embeddings and ``logit_scale`` stay fp32, as in openai/CLIP.
    """

    def _to_fp16(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            module.weight.data = module.weight.data.half()
            if module.bias is not None:
                module.bias.data = module.bias.data.half()
        if isinstance(module, nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                         "in_proj_bias", "bias_k", "bias_v"):
                tensor = getattr(module, name)
                if tensor is not None:
                    tensor.data = tensor.data.half()
        for name in ("text_projection", "proj"):
            tensor = getattr(module, name, None)
            if isinstance(tensor, Tensor):
                tensor.data = tensor.data.half()

    model.apply(_to_fp16)


def _count_blocks(state_dict: dict, prefix: str) -> int:
    """Number of distinct 3rd dotted components among keys starting with ``prefix`` (e.g. block indices)."""
    return len({key.split(".")[2] for key in state_dict if key.startswith(prefix)})


def infer_config(state_dict: dict) -> dict:
    """Constructor arguments of ``CLIP`` inferred from an OpenAI-layout state dict (openai/CLIP's rules)."""
    if "visual.proj" in state_dict:
        vision_width = state_dict["visual.conv1.weight"].shape[0]
        vision_layers: Union[int, tuple] = len([k for k in state_dict
                                                if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
        vision_patch_size = state_dict["visual.conv1.weight"].shape[-1]
        grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        image_resolution = vision_patch_size * grid
    else:
        vision_layers = tuple(_count_blocks(state_dict, f"visual.layer{s}") for s in (1, 2, 3, 4))
        vision_width = state_dict["visual.layer1.0.conv1.weight"].shape[0]
        n_positions = state_dict["visual.attnpool.positional_embedding"].shape[0]
        grid = round((n_positions - 1) ** 0.5)
        if grid ** 2 + 1 != n_positions:
            raise ValueError(f"visual.attnpool.positional_embedding has {n_positions} rows; expected grid**2 + 1")
        vision_patch_size = None
        image_resolution = grid * RESNET_DOWNSAMPLE
    transformer_width = state_dict["ln_final.weight"].shape[0]
    return dict(
        embed_dim=state_dict["text_projection"].shape[1],
        image_resolution=image_resolution,
        vision_layers=vision_layers,
        vision_width=vision_width,
        vision_patch_size=vision_patch_size,
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        transformer_width=transformer_width,
        transformer_heads=transformer_width // HEAD_WIDTH,
        transformer_layers=_count_blocks(state_dict, "transformer.resblocks"),
    )


def build_model(state_dict: dict, fp16: bool = True) -> CLIP:
    """Build a CLIP whose hyperparameters are inferred from ``state_dict`` and load it strictly (eval mode).

    Args:
        state_dict: OpenAI key layout; the TorchScript extras ``input_resolution``, ``context_length`` and
            ``vocab_size`` are ignored.  The caller's dict is not modified.
        fp16: apply the reference fp16 recipe (``convert_weights``) before loading, as ``clip.load`` does;
            it rounds fp32 weights of conv/linear layers to fp16.  ``False`` keeps every weight in fp32.
    """
    state_dict = {k: v for k, v in state_dict.items() if k not in ARCHIVE_EXTRA_KEYS}
    model = CLIP(**infer_config(state_dict))
    if fp16:
        convert_weights(model)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()

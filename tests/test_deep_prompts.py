"""Deep prompts in CLIP's towers (clip/prompting.py, clip/model.py): the VPT-deep / IVLP / MaPLe convention.

Without prompts, with an empty list or with zero-token prompts the towers are bit-identical to plain CLIP.  With
prompts, both towers equal a reference-style loop written here (muzairkhattak/multimodal-prompt-learning's
``ResidualAttentionBlock_MaPLe``: slice the previous prompts off, concatenate the new ones, run the block with
PyTorch's own ``nn.MultiheadAttention``), on a 4-layer random CLIP so that a layer without prompts follows the
prompted ones.  Text prompts inserted after SOT move the EOT: "of a cat." with the tokens of "a photo" inserted
equals the prompt "a photo of a cat.".
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import tiny_clip_fp32
from vlprompt import clip
from vlprompt.clip.model import CLIP, build_model
from vlprompt.clip.tiny import TINY_CONFIGS, tiny_state_dict
from vlprompt.trainers.common.text_encoder import TextEncoder

WIDTH = 128  # text and image width of the tiny CLIP


@pytest.fixture(scope="module")
def deep_clip() -> CLIP:
    """A random 4-layer tiny CLIP (text and image), fp32, eval mode."""
    torch.manual_seed(0)
    config = dict(TINY_CONFIGS["vit"], vision_layers=4, transformer_layers=4)
    return CLIP(**config).float().eval()


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return _randn(n, 3, 32, 32, seed=seed)


def _tokens(texts) -> torch.Tensor:
    return clip.tokenize(texts).long()


# ---------------------------------------------------------------- the reference-style recomputation
def _reference_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One residual block as openai/CLIP writes it, with PyTorch's nn.MultiheadAttention (not our SDPA path)."""
    mask = block.attn_mask[:x.shape[0], :x.shape[0]] if block.attn_mask is not None else None
    h = block.ln_1(x)
    x = x + nn.MultiheadAttention.forward(block.attn, h, h, h, need_weights=False, attn_mask=mask)[0]
    return x + block.mlp(block.ln_2(x))


def _reference_text(model: CLIP, embeddings: torch.Tensor, tokens: torch.Tensor, deep) -> torch.Tensor:
    """The reference's TextEncoder on all 77 positions: before block i >= 1 rows 1..P are swapped for deep[i-1]."""
    batch = embeddings.shape[0]
    x = (embeddings + model.positional_embedding).permute(1, 0, 2)  # (77, N, D)
    for index, block in enumerate(model.transformer.resblocks):
        if 1 <= index <= len(deep):
            n_prompts = deep[index - 1].shape[0]
            prompt = deep[index - 1].expand(batch, -1, -1).permute(1, 0, 2)
            x = torch.cat([x[:1], prompt, x[1 + n_prompts:]], dim=0)
        x = _reference_block(block, x)
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(batch), tokens.argmax(dim=-1)] @ model.text_projection


def _reference_image(model: CLIP, images: torch.Tensor, first, deep) -> torch.Tensor:
    """The reference's VisionTransformer_MaPLe: prompts after the patches, the last P rows swapped per layer."""
    visual = model.visual
    batch = images.shape[0]
    x = visual.conv1(images).reshape(batch, visual.conv1.out_channels, -1).permute(0, 2, 1)
    cls = visual.class_embedding + torch.zeros(batch, 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    x = torch.cat([x, first.expand(batch, -1, -1)], dim=1)
    x = visual.ln_pre(x).permute(1, 0, 2)
    for index, block in enumerate(visual.transformer.resblocks):
        if 1 <= index <= len(deep):
            prompt = deep[index - 1].expand(batch, -1, -1).permute(1, 0, 2)
            x = torch.cat([x[:x.shape[0] - prompt.shape[0]], prompt], dim=0)
        x = _reference_block(block, x)
    return visual.ln_post(x.permute(1, 0, 2)[:, 0]) @ visual.proj


# ---------------------------------------------------------------- no prompts: bit-identical
def test_no_prompts_is_bit_identical():
    """deep_prompts=() and prompt_tokens=None give exactly the plain towers (text, image, bare transformer)."""
    model = tiny_clip_fp32("vit")
    images, tokens = _images(3), _tokens(["a photo of a red circle.", "a cat."])
    x = _randn(20, 2, WIDTH)
    with torch.no_grad():
        assert torch.equal(model.transformer(x, deep_prompts=()), model.transformer.resblocks(x))
        assert torch.equal(model.encode_text(tokens, prompt_tokens=None, deep_prompts=()), model.encode_text(tokens))
        assert torch.equal(model.encode_image(images, deep_prompts=()), model.visual(images))
        assert torch.equal(model.visual(images, prompt_tokens=None, deep_prompts=()), model.encode_image(images))
        encoder = TextEncoder(model)
        embeddings = model.token_embedding(tokens)
        assert torch.equal(encoder(embeddings, tokens, ()), encoder(embeddings, tokens))


def test_zero_token_prompts_are_bit_identical(deep_clip):
    """Prompts of zero tokens at every layer (the reference's N_CTX_VISION 0) leave both towers exactly plain."""
    images, tokens = _images(2), _tokens(["a photo of a dog.", "x"])
    empty = torch.zeros(0, WIDTH)
    with torch.no_grad():
        image = deep_clip.encode_image(images, prompt_tokens=empty[None], deep_prompts=[empty] * 3)
        text = deep_clip.encode_text(tokens, prompt_tokens=empty, deep_prompts=[empty] * 3)
        assert torch.equal(image, deep_clip.encode_image(images))
        assert torch.equal(text, deep_clip.encode_text(tokens))


def test_zero_valued_prompts_are_tokens_not_a_no_op(deep_clip):
    """Zero-valued prompts still take part in attention: unlike absent prompts they change the features."""
    images = _images(2)
    zeros = torch.zeros(2, WIDTH)
    with torch.no_grad():
        prompted = deep_clip.encode_image(images, prompt_tokens=zeros[None], deep_prompts=[zeros])
    assert (prompted - deep_clip.encode_image(images)).abs().max() > 1e-4


# ---------------------------------------------------------------- with prompts: equal to the per-layer loop
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_image_tower_equals_reference_loop(deep_clip, depth):
    """Appended layer-0 prompts + deep replacements before layers 1..J-1 equal the reference loop (4 layers)."""
    images = _images(3, seed=1)
    first, deep = _randn(1, 3, WIDTH, seed=2), [_randn(3, WIDTH, seed=3 + k) for k in range(depth - 1)]
    with torch.no_grad():
        ours = deep_clip.encode_image(images, prompt_tokens=first, deep_prompts=deep)
        reference = _reference_image(deep_clip, images, first, deep)
        shallow = deep_clip.encode_image(images, prompt_tokens=first)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    if depth > 1:  # the deep prompts matter
        assert (ours - shallow).abs().max() > 1e-4


@pytest.mark.parametrize("depth", [1, 3, 4])
@pytest.mark.parametrize("truncate", [True, False])
def test_text_tower_equals_reference_loop(deep_clip, depth, truncate):
    """TextEncoder with deep prompts (cropped at the last EOT, or all 77 positions) equals the reference loop."""
    tokens = _tokens(["X X of a red circle.", "X X of a very long green square with dots."])
    embeddings = deep_clip.token_embedding(tokens).detach()
    embeddings[:, 1:3] = _randn(2, WIDTH, seed=4)  # the layer-0 context replaces "X X"
    deep = [_randn(2, WIDTH, seed=5 + k) for k in range(depth - 1)]
    with torch.no_grad():
        ours = TextEncoder(deep_clip, truncate_at_eot=truncate)(embeddings, tokens, deep)
        reference = _reference_text(deep_clip, embeddings, tokens, deep)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_text_prompts_inserted_after_sot_move_the_eot(deep_clip):
    """encode_text("of a cat.", prompts) = the reference prompt "a photo of a cat." with the prompts in place of
    "a photo": same EOT feature, through the same causal mask, for rows of different lengths."""
    names = ["cat", "red circle with a long tail"]
    ctx = _randn(2, WIDTH, seed=6)
    deep = [_randn(2, WIDTH, seed=7 + k) for k in range(3)]
    full = _tokens([f"a photo of a {name}." for name in names])
    embeddings = deep_clip.token_embedding(full).detach()
    embeddings[:, 1:3] = ctx
    with torch.no_grad():
        inserted = deep_clip.encode_text(_tokens([f"of a {name}." for name in names]), prompt_tokens=ctx,
                                         deep_prompts=deep)
        reference = _reference_text(deep_clip, embeddings, full, deep)
    torch.testing.assert_close(inserted, reference, rtol=1e-5, atol=1e-5)


def test_prompts_per_sample_equal_shared(deep_clip):
    """A (P, D) or (1, P, D) prompt equals the same prompt repeated for every row (image and text)."""
    images, tokens = _images(3), _tokens(["a dog.", "a red star.", "x"])
    first, deep = _randn(1, 2, WIDTH, seed=8), [_randn(2, WIDTH, seed=9)]
    with torch.no_grad():
        shared = deep_clip.encode_image(images, prompt_tokens=first, deep_prompts=deep)
        unbatched = deep_clip.encode_image(images, prompt_tokens=first[0], deep_prompts=deep)
        repeated = deep_clip.encode_image(images, prompt_tokens=first.expand(3, -1, -1),
                                          deep_prompts=[deep[0].expand(3, -1, -1)])
        text_shared = deep_clip.encode_text(tokens, prompt_tokens=first[0], deep_prompts=deep)
        text_repeated = deep_clip.encode_text(tokens, prompt_tokens=first.expand(3, -1, -1),
                                              deep_prompts=[deep[0].expand(3, -1, -1)])
    assert torch.equal(unbatched, shared)
    torch.testing.assert_close(shared, repeated, rtol=0, atol=1e-6)
    torch.testing.assert_close(text_shared, text_repeated, rtol=0, atol=1e-6)


def test_every_layer_prompt_gets_a_gradient(deep_clip):
    """At depth 4 each of the 4 prompt sets of each tower reaches the output (no layer is skipped)."""
    prompts = [_randn(2, WIDTH, seed=10 + k).requires_grad_() for k in range(4)]
    text_prompts = [_randn(2, WIDTH, seed=20 + k).requires_grad_() for k in range(4)]
    image = deep_clip.encode_image(_images(2), prompt_tokens=prompts[0][None], deep_prompts=prompts[1:])
    text = deep_clip.encode_text(_tokens(["a dog.", "a cat."]), prompt_tokens=text_prompts[0],
                                 deep_prompts=text_prompts[1:])
    (image.square().sum() + text.square().sum()).backward()
    for name, group in (("image", prompts), ("text", text_prompts)):
        norms = [float(p.grad.norm()) for p in group]
        assert all(norm > 0 for norm in norms), f"{name} prompt gradients per layer: {norms}"


def test_fp32_prompts_meet_a_half_tower():
    """fp32 prompts are cast to the activations' dtype: with fp16 weights the result is fp16 and finite."""
    model = build_model(tiny_state_dict("vit"), fp16=True)  # OpenAI's fp16 recipe (LayerNorms stay fp32)
    x = _randn(17 + 2, 2, WIDTH).half()
    out = model.visual.transformer(x, deep_prompts=[_randn(2, WIDTH)], prompt_start=-2)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


# ---------------------------------------------------------------- errors
def test_prompt_errors_name_the_problem(deep_clip):
    images, tokens = _images(1), _tokens(["a dog."])
    prompt = _randn(1, 2, WIDTH)
    with pytest.raises(ValueError, match="at most 3"):
        deep_clip.encode_image(images, prompt_tokens=prompt, deep_prompts=[prompt[0]] * 4)
    with pytest.raises(ValueError, match="pass both"):
        deep_clip.encode_image(images, deep_prompts=[prompt[0]])
    with pytest.raises(ValueError, match="pass both"):
        deep_clip.encode_text(tokens, deep_prompts=[prompt[0]])
    with pytest.raises(ValueError, match="3 tokens"):
        deep_clip.encode_image(images, prompt_tokens=prompt, deep_prompts=[_randn(3, WIDTH)])
    with pytest.raises(ValueError, match="transformer width"):
        deep_clip.encode_text(tokens, prompt_tokens=_randn(2, 64))
    with pytest.raises(ValueError, match="context length 77"):
        deep_clip.encode_text(_tokens(["word " * 70]), prompt_tokens=_randn(8, WIDTH))
    resnet = tiny_clip_fp32("rn")
    with pytest.raises(ValueError, match="ModifiedResNet"):
        resnet.encode_image(_randn(1, 3, 64, 64), prompt_tokens=_randn(1, 1, 512), deep_prompts=[_randn(1, 512)])

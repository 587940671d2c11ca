"""clip.model: strict loading, hyperparameter inference, fp16 recipe, parity with open_clip, visual prompts.

Oracle: open_clip_torch 3.3.0 ``build_model_from_openai_state_dict`` on the same tiny random state dict
(``shared/specs/clip_model.md`` §4.3); features and logits must agree within 1e-5 in fp32.
"""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
from torch import nn

from vlprompt import clip
from vlprompt.clip.model import CLIP, MultiheadAttention, VisionTransformer, build_model, infer_config
from vlprompt.clip.tiny import TINY_CONFIGS, tiny_state_dict

PROMPTS = ["a photo of a cat.", "a diagram", "an origami dog, folded from red paper!", "x"]


@pytest.fixture
def mha_fastpath_off():
    """open_clip's batch-first MHA may take the fused fast path (~1e-6 drift); compare against the plain path."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(previous)


def _images(arch: str, n: int, seed: int = 0) -> torch.Tensor:
    size = TINY_CONFIGS[arch]["image_resolution"]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=["vit", "rn"])
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def state_dict(arch: str) -> dict:
    return tiny_state_dict(arch)


@pytest.fixture(scope="module")
def model(state_dict: dict) -> CLIP:
    return build_model(state_dict).float()


def test_build_model_infers_tiny_config_and_loads_strictly(arch, state_dict, model):
    """Every hyperparameter is inferred from shapes; the round trip state_dict -> model -> state_dict is exact."""
    assert infer_config(state_dict) == TINY_CONFIGS[arch]
    exported = model.state_dict()
    assert set(exported) == set(state_dict)  # no causal-mask buffer, nothing missing
    for key, value in state_dict.items():
        assert torch.equal(exported[key], value.to(exported[key].dtype)), key
    assert model.visual.input_resolution == TINY_CONFIGS[arch]["image_resolution"]
    assert model.context_length == 77 and model.vocab_size == 49408


def test_build_model_ignores_archive_extra_keys_and_keeps_callers_dict(state_dict):
    """The three TorchScript extras are dropped without mutating the caller's dict."""
    extended = {**state_dict, "input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
                "vocab_size": torch.tensor(49408)}
    build_model(extended)
    assert "context_length" in extended and len(extended) == len(state_dict) + 3


def test_tiny_state_dict_is_seeded_and_informative():
    """Same seed -> identical tensors, other seed -> different; BN stats and bn3 scales are not trivial."""
    first, again, other = tiny_state_dict("rn", seed=0), tiny_state_dict("rn", seed=0), tiny_state_dict("rn", seed=1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["visual.conv1.weight"], other["visual.conv1.weight"])
    assert first["visual.layer1.0.bn3.weight"].abs().min() > 0.5
    assert first["visual.bn1.running_var"].min() >= 0.5 and first["visual.bn1.running_mean"].abs().max() > 0
    assert first["logit_scale"].item() == pytest.approx(math.log(100.0))
    assert first["visual.conv1.weight"].dtype == torch.float32
    assert torch.equal(first["visual.conv1.weight"].half().float(), first["visual.conv1.weight"])  # fp16 grid


def test_convert_weights_dtype_map():
    """fp16 recipe: conv/linear/attention/proj in fp16; norms, embeddings and logit_scale stay fp32 (spec §1.9)."""
    vit, rn = build_model(tiny_state_dict("vit")), build_model(tiny_state_dict("rn"))
    block = vit.transformer.resblocks[0]
    half = [vit.visual.conv1.weight, vit.visual.proj, vit.text_projection, block.attn.in_proj_weight,
            block.attn.in_proj_bias, block.attn.out_proj.weight, block.mlp.c_fc.bias,
            rn.visual.attnpool.q_proj.weight, rn.visual.layer1[0].conv1.weight]
    full = [vit.logit_scale, vit.token_embedding.weight, vit.positional_embedding, vit.visual.class_embedding,
            vit.visual.positional_embedding, vit.ln_final.weight, vit.visual.ln_pre.bias,
            rn.visual.attnpool.positional_embedding, rn.visual.bn1.weight, rn.visual.bn1.running_var]
    assert [t.dtype for t in half] == [torch.float16] * len(half)
    assert [t.dtype for t in full] == [torch.float32] * len(full)
    assert vit.dtype == torch.float16


def test_fp16_flag_controls_rounding_of_fp32_weights():
    """With fp16=True an off-grid fp32 weight is rounded to fp16, with fp16=False it is kept bit for bit."""
    sd = tiny_state_dict("vit")
    sd["visual.proj"] = sd["visual.proj"] + 1e-4 * torch.randn(sd["visual.proj"].shape)
    assert not torch.equal(build_model(sd).float().visual.proj, sd["visual.proj"])
    assert torch.equal(build_model(sd, fp16=False).visual.proj, sd["visual.proj"])


def test_features_match_open_clip(arch, state_dict, model, mha_fastpath_off):
    """encode_image, encode_text and forward logits equal open_clip's OpenAI builder within 1e-5 (fp32)."""
    oracle = open_clip.model.build_model_from_openai_state_dict(dict(state_dict)).float()
    images, text = _images(arch, 4), clip.tokenize(PROMPTS)
    with torch.no_grad():
        ours_img, ours_txt = model.encode_image(images), model.encode_text(text)
        ref_img, ref_txt = oracle.encode_image(images), oracle.encode_text(text)
        ours_logits, ours_logits_t = model(images, text)
        ref_logits, ref_logits_t = oracle.get_logits(images, text)
    assert ref_img.abs().max() > 0.1 and ref_txt.abs().max() > 0.1  # features are not trivially small
    torch.testing.assert_close(ours_img, ref_img, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_txt, ref_txt, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_logits, ref_logits, rtol=1e-5, atol=1e-4)  # logits are x100
    torch.testing.assert_close(ours_logits_t, ref_logits_t, rtol=1e-5, atol=1e-4)
    assert ours_logits.shape == (4, len(PROMPTS))


class _ReferenceAttention(nn.Module):
    """A LoRA-style replacement for ``resblock.attn`` that runs torch's own nn.MultiheadAttention maths."""

    def __init__(self, attn: nn.MultiheadAttention) -> None:
        super().__init__()
        self.inner = attn
        self.calls: list[tuple] = []

    def forward(self, query, key, value, need_weights=True, attn_mask=None):
        self.calls.append((tuple(query.shape), need_weights, None if attn_mask is None else tuple(attn_mask.shape)))
        return nn.MultiheadAttention.forward(self.inner, query, key, value, need_weights=need_weights,
                                             attn_mask=attn_mask)


def test_sdpa_attention_equals_torch_mha_via_attn_swap():
    """Blocks call attn(x, x, x, need_weights=False, attn_mask=mask) on (L, N, D); swapping in torch's MHA
    leaves the features unchanged, and the text mask passed is the (L, L) causal mask."""
    model = build_model(tiny_state_dict("vit")).float()
    images, text = _images("vit", 3), clip.tokenize(PROMPTS[:3])
    with torch.no_grad():
        ours_img, ours_txt = model.encode_image(images), model.encode_text(text)
        swaps = []
        for block in [*model.transformer.resblocks, *model.visual.transformer.resblocks]:
            assert isinstance(block.attn, MultiheadAttention) and isinstance(block.attn, nn.MultiheadAttention)
            block.attn = _ReferenceAttention(block.attn)
            swaps.append(block.attn)
        ref_img, ref_txt = model.encode_image(images), model.encode_text(text)
    torch.testing.assert_close(ours_img, ref_img, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_txt, ref_txt, rtol=1e-6, atol=1e-6)
    assert swaps[0].calls == [((77, 3, 128), False, (77, 77))]  # text: sequence-first, causal mask
    assert swaps[-1].calls == [((17, 3, 128), False, None)]  # vision: 4x4 grid + CLS, no mask


def test_sdpa_attention_falls_back_when_weights_requested():
    """need_weights=True returns torch's attention weights, with the same output as the SDPA path."""
    attn = build_model(tiny_state_dict("vit")).float().visual.transformer.resblocks[0].attn
    x = torch.randn(5, 2, 128)
    out_fast, no_weights = attn(x, x, x, need_weights=False)
    out_ref, weights = attn(x, x, x, need_weights=True)
    assert no_weights is None and weights.shape == (2, 5, 5)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mask_kind", ["float", "bool", "per_head"])
def test_sdpa_attention_masks_follow_torch_mha(mask_kind):
    """Float, boolean (True = blocked) and (N*H, L, L) masks mean what they mean in nn.MultiheadAttention."""
    attn = build_model(tiny_state_dict("vit")).float().transformer.resblocks[0].attn
    x = torch.randn(6, 2, 128, generator=torch.Generator().manual_seed(0))
    blocked = torch.rand(6, 6, generator=torch.Generator().manual_seed(1)) > 0.6
    blocked.fill_diagonal_(False)  # every query keeps one key
    mask = {"float": torch.zeros(6, 6).masked_fill(blocked, float("-inf")), "bool": blocked,
            "per_head": torch.randn(2 * 2, 6, 6, generator=torch.Generator().manual_seed(2))}[mask_kind]
    ours, _ = attn(x, x, x, need_weights=False, attn_mask=mask)
    reference, _ = nn.MultiheadAttention.forward(attn, x, x, x, need_weights=False, attn_mask=mask)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


def test_transformer_accepts_shorter_sequences():
    """The causal mask is sliced: the first k rows of a 77-token pass equal a k-token pass."""
    model = build_model(tiny_state_dict("vit")).float()
    x = torch.randn(77, 2, 128)
    with torch.no_grad():
        full, short = model.transformer(x), model.transformer(x[:10])
    torch.testing.assert_close(short, full[:10], rtol=1e-5, atol=1e-5)


def _prompts(n: int, p: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, p, 128, generator=torch.Generator().manual_seed(seed))


def test_visual_prompts_none_is_bit_identical():
    """prompt_tokens=None gives exactly the plain path; prompts change the output."""
    model = build_model(tiny_state_dict("vit")).float()
    images = _images("vit", 3)
    with torch.no_grad():
        plain = model.encode_image(images)
        explicit_none = model.encode_image(images, prompt_tokens=None)
        direct = model.visual(images)
        prompted = model.encode_image(images, prompt_tokens=_prompts(1, 2))
    assert torch.equal(plain, explicit_none) and torch.equal(plain, direct)
    assert (prompted - plain).abs().max() > 1e-3


@pytest.mark.parametrize("n_prompts", [1, 4])
def test_visual_prompts_appended_after_patches_before_ln_pre(n_prompts):
    """Transformer input length is grid**2 + 1 + P; ln_pre sees the prompts unchanged (no positional
    embedding) in the last P rows, while the first grid**2 + 1 rows equal the plain path's."""
    model = build_model(tiny_state_dict("vit")).float()
    images, prompts = _images("vit", 3), _prompts(3, n_prompts)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.visual.ln_pre.register_forward_hook(lambda m, args, out: seen.__setitem__("ln_pre_in", args[0])),
        model.visual.transformer.register_forward_hook(lambda m, args, out: seen.__setitem__("tf_in", args[0])),
    ]
    with torch.no_grad():
        model.encode_image(images)
        plain_tokens = seen["ln_pre_in"]
        model.encode_image(images, prompt_tokens=prompts)
    for hook in hooks:
        hook.remove()
    grid = model.visual.input_resolution // model.visual.conv1.kernel_size[0]
    assert seen["tf_in"].shape == (grid ** 2 + 1 + n_prompts, 3, 128)  # sequence-first
    assert torch.equal(seen["ln_pre_in"][:, -n_prompts:], prompts)
    assert torch.equal(seen["ln_pre_in"][:, :-n_prompts], plain_tokens)


def test_visual_prompts_shared_batch_broadcasts():
    """A (1, P, D) prompt equals the same prompt repeated per image; wrong widths fail with a clear error."""
    model = build_model(tiny_state_dict("vit")).float()
    images, prompt = _images("vit", 3), _prompts(1, 2)
    with torch.no_grad():
        shared = model.encode_image(images, prompt_tokens=prompt)
        repeated = model.encode_image(images, prompt_tokens=prompt.expand(3, -1, -1).clone())
    torch.testing.assert_close(shared, repeated, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="vision transformer width"):
        model.encode_image(images, prompt_tokens=torch.zeros(1, 2, 64))
    with pytest.raises(ValueError, match="batch"):
        model.encode_image(images, prompt_tokens=torch.zeros(2, 2, 128))


def test_visual_prompts_need_vit():
    """The ResNet tower has no token sequence: prompts raise a ValueError naming the tower."""
    model = build_model(tiny_state_dict("rn")).float()
    assert not isinstance(model.visual, VisionTransformer)
    with pytest.raises(ValueError, match="ModifiedResNet"):
        model.encode_image(_images("rn", 1), prompt_tokens=torch.zeros(1, 1, 512))

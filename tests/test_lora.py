"""LoRA for CLIP (clip/lora.py): the invariants of CLIP-LoRA's and loralib's LoRA layers.

Tiny seeded CLIPs in fp32 on the CPU.  Checked: at init (B = 0) the adapted CLIP equals the original within 1e-6;
only LoRA tensors require grad and there are exactly 2·r·d per adapted d x d matrix; the layer equals its formula
(both scalings); merged and unmerged outputs agree; ten train/eval toggles change nothing; save -> load round-trips
exactly; position names select the reference's block indices; the attention equals nn.MultiheadAttention with masks;
with dropout, the shared mask equals loralib's MergedLinear (DISEF) and the per-projection masks CLIP-LoRA's layers,
on the same seed.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from vlprompt import clip
from vlprompt.clip.lora import LoRAError, LoRALinear, LoRAMultiheadAttention, apply_lora, block_indices, load_lora, \
    load_lora_into, lora_specs, mark_only_lora_as_trainable, save_lora
from vlprompt.clip.model import CLIP, build_model
from vlprompt.clip.tiny import tiny_state_dict


def tiny_clip(seed: int = 0) -> CLIP:
    return build_model(tiny_state_dict("vit", seed), fp16=False).float().eval()


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 3, 32, 32, generator=generator)
    tokens = clip.tokenize(["a photo of a red circle.", "a green square", "x"])
    return images, tokens


def randomise_lora(weights, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in weights.parameters():
            param.copy_(0.05 * torch.randn(param.shape, generator=generator))


def encode(model: CLIP, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_init_equals_unadapted_clip(mode):
    """B = 0 at init: image and text features equal the original CLIP's within 1e-6 (train and eval mode)."""
    original = tiny_clip()
    adapted = copy.deepcopy(original)
    apply_lora(adapted, lora_specs("both", r=4, alpha=2.0, dropout=0.25, params="qkvo"))
    adapted.train(mode == "train")
    images, tokens = inputs()
    for ours, ref in zip(encode(adapted, images, tokens), encode(original, images, tokens)):
        assert torch.allclose(ours, ref, atol=1e-6, rtol=0), (ours - ref).abs().max()


def test_only_lora_trainable_and_count():
    """requires_grad exactly on w_lora_A/B; the count is 2·r·d per adapted matrix; only they receive gradients."""
    model = tiny_clip()
    weights = apply_lora(model, lora_specs("both", r=2, params="qv", text_r=3, vision_r=5))
    n_trainable = mark_only_lora_as_trainable(model)
    text_d, vision_d = model.transformer.width, model.visual.transformer.width
    expected = (model.transformer.layers * 2 * (2 * 3 * text_d)
                + model.visual.transformer.layers * 2 * (2 * 5 * vision_d))
    assert n_trainable == expected == sum(p.numel() for p in weights.parameters())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.rsplit(".", 1)[-1] in ("w_lora_A", "w_lora_B") for n in trainable)
    assert all(".q_proj." in n or ".v_proj." in n for n in trainable)
    randomise_lora(weights)
    model.train()
    images, tokens = inputs()
    (model.encode_image(images).sum() + model.encode_text(tokens).sum()).backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name
        if param.requires_grad:
            assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("scaling, expected_scale", [("sqrt", 3.0 / math.sqrt(4)), ("linear", 3.0 / 4)])
def test_lora_linear_formula(scaling, expected_scale):
    """y = W0 x + b + s B A x with s = alpha/sqrt(r) or alpha/r; A Kaiming-uniform(a=sqrt 5), B zeros at init."""
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(6, 5, generator=generator), torch.randn(6, generator=generator)
    layer = LoRALinear(weight, bias, r=4, alpha=3.0, dropout=0.0, scaling=scaling)
    assert layer.scaling == pytest.approx(expected_scale)
    assert torch.equal(layer.w_lora_B, torch.zeros(6, 4))
    assert layer.w_lora_A.abs().max() <= 1 / math.sqrt(5)  # kaiming_uniform(a=sqrt 5) bound = 1/sqrt(fan_in)
    with torch.no_grad():
        layer.w_lora_B.copy_(0.1 * torch.randn(6, 4, generator=generator))
    x = torch.randn(7, 5, generator=generator)
    expected = x @ weight.t() + bias + expected_scale * (x @ layer.w_lora_A.t()) @ layer.w_lora_B.t()
    for mode in (True, False):  # unmerged (train) and merged (eval)
        layer.train(mode)
        assert torch.allclose(layer(x), expected, atol=1e-5), mode
    assert torch.equal(layer.weight, weight)  # W0 is never modified


def test_merged_and_unmerged_agree():
    model = tiny_clip()
    weights = apply_lora(model, lora_specs("both", r=4, alpha=4.0, params="qkvo"))
    randomise_lora(weights)
    model.eval()
    images, tokens = inputs()
    layers = weights.lora_layers()
    assert all(layer.merged for layer in layers)
    merged = encode(model, images, tokens)
    for layer in layers:
        layer.unmerge()
    unmerged = encode(model, images, tokens)
    for a, b in zip(merged, unmerged):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert not torch.allclose(merged[0], encode(tiny_clip(), images, tokens)[0], atol=1e-3)  # LoRA does act


def test_train_eval_toggling_changes_nothing():
    """Ten train/eval toggles: identical eval outputs and state dict, W0 untouched (no in-place drift)."""
    model = tiny_clip()
    weights = apply_lora(model, lora_specs("both", r=2, params="qkv"))
    randomise_lora(weights)
    model.eval()
    images, tokens = inputs()
    first = encode(model, images, tokens)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(10):
        model.train()
        model.eval()
    for a, b in zip(encode(model, images, tokens), first):
        assert torch.equal(a, b)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_merge_follows_parameter_updates():
    """A merged layer rebuilds its weight after A/B change in place (optimizer step, load_state_dict)."""
    model = tiny_clip()
    weights = apply_lora(model, lora_specs("vision", r=2, params="qv"))
    model.eval()
    images, tokens = inputs()
    before = encode(model, images, tokens)[0]
    randomise_lora(weights)  # in place, while merged
    after = encode(model, images, tokens)[0]
    for layer in weights.lora_layers():
        layer.unmerge()
    assert torch.allclose(after, encode(model, images, tokens)[0], atol=1e-5)
    assert not torch.allclose(before, after, atol=1e-3)


def test_save_load_roundtrip(tmp_path):
    """save_lora -> fresh CLIP + apply_lora + load_lora: identical A/B and outputs; CLIP-LoRA file layout."""
    model = tiny_clip()
    weights = apply_lora(model, lora_specs("both", r=2, alpha=1.0, params="qkv", position="all"))
    randomise_lora(weights)
    path = str(tmp_path / "lora_weights.pt")
    save_lora(path, weights, {"backbone": "tiny-vit"})
    saved = torch.load(path, weights_only=True)
    assert sorted(saved["weights"]) == [f"layer_{i}" for i in range(4)]  # 2 text blocks, then 2 vision blocks
    assert sorted(saved["weights"]["layer_0"]) == ["k_proj", "q_proj", "v_proj"]
    assert {k: saved["metadata"][k] for k in ("r", "alpha", "encoder", "params", "position")} == {
        "r": 2, "alpha": 1.0, "encoder": "both", "params": ["q", "k", "v"], "position": "all"}
    fresh = tiny_clip()
    fresh_weights = apply_lora(fresh, lora_specs("both", r=2, alpha=1.0, params="qkv", position="all"))
    load_lora(path, fresh_weights)
    for (name, a), (_, b) in zip(weights.state_dict().items(), fresh_weights.state_dict().items()):
        assert torch.equal(a, b), name
    model.eval()
    fresh.eval()
    images, tokens = inputs()
    for a, b in zip(encode(model, images, tokens), encode(fresh, images, tokens)):
        assert torch.equal(a, b)
    rebuilt = tiny_clip()
    load_lora_into(rebuilt, path)
    assert torch.equal(encode(rebuilt.eval(), images, tokens)[0], encode(model, images, tokens)[0])
    other = apply_lora(tiny_clip(), lora_specs("both", r=4, alpha=1.0, params="qkv"))
    with pytest.raises(LoRAError, match="r=2"):
        load_lora(path, other)


POSITION_TABLE_12 = {  # CLIP-LoRA's table (ViT-B/16 and the text tower)
    "bottom": [0, 1, 2, 3], "mid": [4, 5, 6, 7], "up": [8, 9, 10, 11], "half-bottom": [0, 1, 2, 3, 4, 5],
    "half-up": [6, 7, 8, 9, 10, 11], "all": list(range(12)), "top3": [9, 10, 11],
}


@pytest.mark.parametrize("position", sorted(POSITION_TABLE_12))
def test_position_names_select_reference_blocks(position):
    assert block_indices(position, 12) == POSITION_TABLE_12[position]


def test_position_names_for_24_blocks_and_apply():
    """CLIP-LoRA's ViT-L/14 rows and the blocks apply_lora actually replaces in a 12-block text tower."""
    assert block_indices("half-bottom", 24) == list(range(12))
    assert block_indices("half-up", 24) == list(range(12, 24))
    assert block_indices("all", 24) == list(range(24))
    model = CLIP(embed_dim=32, image_resolution=32, vision_layers=3, vision_width=64, vision_patch_size=16,
                 context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=12)
    apply_lora(model, lora_specs("both", position="mid"))
    text = [i for i, b in enumerate(model.transformer.resblocks) if isinstance(b.attn, LoRAMultiheadAttention)]
    vision = [i for i, b in enumerate(model.visual.transformer.resblocks) if isinstance(b.attn, LoRAMultiheadAttention)]
    assert text == [4, 5, 6, 7] and vision == [1]
    with pytest.raises(LoRAError, match="selects no block"):
        apply_lora(tiny_clip(), lora_specs("text", position="mid"))  # 2 blocks: the middle third is empty
    with pytest.raises(LoRAError, match="position"):
        block_indices("middle", 12)


@pytest.mark.parametrize("batch_first", [False, True])
def test_attention_matches_multihead_attention(batch_first):
    """At init the replacement equals nn.MultiheadAttention with a bool mask, a 3-D float mask and padding."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    lora = LoRAMultiheadAttention(mha, "qkvo", r=2, alpha=1.0).eval()
    x = torch.randn(2, 5, 32) if batch_first else torch.randn(5, 2, 32)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    float_mask = torch.randn(2 * 4, 5, 5)
    padding = torch.tensor([[False] * 4 + [True], [False] * 5])
    for kwargs in ({"attn_mask": causal}, {"attn_mask": float_mask}, {"key_padding_mask": padding}, {}):
        ref = mha(x, x, x, need_weights=False, **kwargs)[0]
        ours, weights = lora(x, x, x, need_weights=False, **kwargs)
        assert weights is None
        assert torch.allclose(ours, ref, atol=1e-6), (kwargs.keys(), (ours - ref).abs().max())


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, out_proj: nn.Linear) -> torch.Tensor:
    """Softmax attention of (L, N, E) projections, heads split and merged by hand, then the output projection."""
    length, batch, width = q.shape
    split = [t.reshape(length, batch, heads, width // heads).permute(1, 2, 0, 3) for t in (q, k, v)]  # (N, H, L, D)
    scores = split[0] @ split[1].transpose(-2, -1) / math.sqrt(width // heads)
    out = (scores.softmax(dim=-1) @ split[2]).permute(2, 0, 1, 3).reshape(length, batch, width)
    return out_proj(out)


def _merged_linear_reference(x, mha, lora_a, lora_b, scaling, p):
    """loralib's MergedLinear(E, 3E, enable_lora=[True, False, True]) over CLIP's packed in-projection, written
    after loralib: ONE dropout of x, A (2r, E), B as a grouped 1x1 convolution, zero rows for k."""
    width = mha.embed_dim
    result = nn.functional.linear(x, mha.in_proj_weight, mha.in_proj_bias)  # (L, N, 3E)
    after_a = nn.functional.linear(nn.functional.dropout(x, p, training=True), lora_a)  # (L, N, 2r)
    after_b = nn.functional.conv1d(after_a.transpose(-2, -1), lora_b.unsqueeze(-1), groups=2).transpose(-2, -1)
    padded = torch.zeros_like(result)
    padded[..., :width], padded[..., 2 * width:] = after_b[..., :width], after_b[..., width:]  # q and v rows
    q, k, v = (result + padded * scaling).split(width, dim=-1)
    return _attention(q, k, v, mha.num_heads, mha.out_proj)


def test_shared_dropout_equals_loralib_merged_linear():
    """DISEF's MergedLinear draws one dropout mask for q and v: with the same seed, shared_dropout gives the same
    training-mode output (dropout 0.5); per-projection masks (CLIP-LoRA) give another one."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4).eval()
    x = torch.randn(5, 3, 32)
    shared = LoRAMultiheadAttention(mha, "qv", r=2, alpha=4.0, dropout=0.5, scaling="linear", shared_dropout=True)
    per_projection = LoRAMultiheadAttention(mha, "qv", r=2, alpha=4.0, dropout=0.5, scaling="linear")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in (shared, per_projection):
            for letter in ("q_proj", "v_proj"):
                layer = getattr(module, letter)
                layer.w_lora_A.copy_(torch.randn(layer.w_lora_A.shape, generator=generator))
                layer.w_lora_B.copy_(torch.randn(layer.w_lora_B.shape, generator=generator))
        per_projection.load_state_dict(shared.state_dict())
    lora_a = torch.cat([shared.q_proj.w_lora_A, shared.v_proj.w_lora_A])  # (2r, E)
    lora_b = torch.cat([shared.q_proj.w_lora_B, shared.v_proj.w_lora_B])  # (2E, r)
    torch.manual_seed(7)
    reference = _merged_linear_reference(x, mha, lora_a, lora_b, 4.0 / 2, 0.5)
    torch.manual_seed(7)
    ours = shared.train()(x, x, x, need_weights=False)[0]
    assert torch.allclose(ours, reference, atol=1e-5), (ours - reference).abs().max()
    torch.manual_seed(7)
    other = per_projection.train()(x, x, x, need_weights=False)[0]
    assert not torch.allclose(other, reference, atol=1e-2)  # two masks: a different draw
    assert not torch.allclose(ours, shared.eval()(x, x, x)[0], atol=1e-2)  # dropout was active


def test_per_projection_dropout_equals_clip_lora_layers():
    """CLIP-LoRA's LinearLoRA: every adapted projection drops its own input, in q, k, v order."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4).eval()
    x = torch.randn(5, 3, 32)
    lora = LoRAMultiheadAttention(mha, "qkv", r=2, alpha=1.0, dropout=0.25)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "w_lora_" in name:
                param.normal_(0, 0.5)
    torch.manual_seed(3)
    ours = lora.train()(x, x, x, need_weights=False)[0]
    torch.manual_seed(3)
    projections = []
    for letter, rows in zip(("q_proj", "k_proj", "v_proj"), mha.in_proj_weight.split(32)):
        layer = getattr(lora, letter)
        bias = mha.in_proj_bias[len(projections) * 32:(len(projections) + 1) * 32]
        dropped = nn.functional.dropout(x, 0.25, training=True)
        delta = (layer.w_lora_B @ layer.w_lora_A) * (1.0 / math.sqrt(2))
        projections.append(nn.functional.linear(x, rows, bias) + dropped @ delta.t())
    reference = _attention(*projections, mha.num_heads, mha.out_proj)
    assert torch.allclose(ours, reference, atol=1e-5), (ours - reference).abs().max()


def test_dropout_settings_do_not_block_loading(tmp_path):
    """A file trained with the shared mask loads into a per-projection model (dropout does not shape A/B); files
    written before the key existed rebuild with per-projection dropout; a different rank still refuses."""
    model = tiny_clip()
    weights = apply_lora(model, lora_specs("both", r=2, params="qv", scaling="linear", shared_dropout=True))
    randomise_lora(weights)
    path = str(tmp_path / "lora_weights.pt")
    save_lora(path, weights)
    other = apply_lora(tiny_clip(), lora_specs("both", r=2, params="qv", scaling="linear", dropout=0.1))
    load_lora(path, other)
    assert all(torch.equal(a, b) for a, b in zip(weights.state_dict().values(), other.state_dict().values()))
    rebuilt = load_lora_into(tiny_clip(), path)
    assert all(spec.shared_dropout for spec in rebuilt.specs)
    from vlprompt.clip.lora import specs_from_metadata

    old = weights.metadata()
    old["adapters"] = [{k: v for k, v in a.items() if k != "shared_dropout"} for a in old["adapters"]]
    assert [spec.shared_dropout for spec in specs_from_metadata(old)] == [False, False]
    with pytest.raises(LoRAError, match="adapters"):
        load_lora(path, apply_lora(tiny_clip(), lora_specs("both", r=2, vision_r=3, params="qv", scaling="linear")))

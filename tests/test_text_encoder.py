"""trainers.common.text_encoder.TextEncoder: EOT-truncated pass equals the full 77-token pass (fp32).

Causal attention means positions after a row's EOT cannot change its EOT features, so cropping the batch to
(last EOT + 1) tokens is exact up to float rounding; positions before the EOT must still matter.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest
import torch

from vlprompt import clip
from vlprompt.clip.model import build_model
from vlprompt.clip.tiny import tiny_state_dict
from vlprompt.trainers.common.text_encoder import TextEncoder

# EOT positions 5, 2, 9 and 6 (SOT + BPE tokens): the batch maximum is 9, so the crop keeps 10 tokens.
PROMPTS = ["a photo of cat", "x", "a photo of a large red origami dog", "an image of a bird"]


@pytest.fixture(scope="module")
def clip_model():
    return build_model(tiny_state_dict("vit")).float()


@pytest.fixture(scope="module")
def batch(clip_model) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedded prompts (N, 77, D) without positions, token ids (N, 77))."""
    tokens = clip.tokenize(PROMPTS)
    with torch.no_grad():
        embeddings = clip_model.token_embedding(tokens)
    return embeddings, tokens


@contextlib.contextmanager
def _recorded_lengths(encoder: TextEncoder) -> Iterator[list[int]]:
    """Sequence lengths the (shared, sequence-first) CLIP transformer receives while the block runs."""
    lengths: list[int] = []
    hook = encoder.transformer.register_forward_hook(lambda m, args, out: lengths.append(args[0].shape[0]))
    try:
        yield lengths
    finally:
        hook.remove()


def test_eot_positions_differ(batch):
    """The batch really has different EOT positions (otherwise the crop tests prove little)."""
    assert batch[1].argmax(dim=-1).tolist() == [5, 2, 9, 6]


def test_truncated_equals_full_and_encode_text(clip_model, batch):
    """Cropped pass == full 77-token pass == CLIP.encode_text within 1e-5; the crop really shortens to 10."""
    embeddings, tokens = batch
    truncated, full = TextEncoder(clip_model), TextEncoder(clip_model, truncate_at_eot=False)
    with torch.no_grad():
        with _recorded_lengths(truncated) as lengths:
            out_truncated = truncated(embeddings, tokens)
        with _recorded_lengths(full) as full_lengths:
            out_full = full(embeddings, tokens)
        reference = clip_model.encode_text(tokens)
    assert lengths == [10] and full_lengths == [77]
    assert out_truncated.shape == (len(PROMPTS), 64) and out_truncated.abs().max() > 0.1
    torch.testing.assert_close(out_truncated, out_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_full, reference, rtol=0, atol=1e-6)


def test_tokens_after_last_eot_do_not_matter(clip_model, batch):
    """Replacing every embedding after each row's own EOT with noise changes nothing, in both modes
    (rows with an early EOT keep noisy positions inside the cropped sequence)."""
    embeddings, tokens = batch
    after_eot = torch.arange(tokens.shape[1]) > tokens.argmax(dim=-1, keepdim=True)  # (N, 77)
    noise = torch.randn(embeddings.shape, generator=torch.Generator().manual_seed(0))
    noisy = torch.where(after_eot[..., None], noise, embeddings)
    assert after_eot[1, 3:10].all()
    for encoder in (TextEncoder(clip_model), TextEncoder(clip_model, truncate_at_eot=False)):
        with torch.no_grad():
            clean, perturbed = encoder(embeddings, tokens), encoder(noisy, tokens)
        torch.testing.assert_close(perturbed, clean, rtol=0, atol=1e-6)


def test_token_before_eot_changes_only_its_row(clip_model, batch):
    """Changing position 3 of row 0 (before its EOT at 5) changes row 0's features and no other row."""
    embeddings, tokens = batch
    changed = embeddings.clone()
    changed[0, 3] = clip_model.token_embedding.weight[1929].detach()  # "of" -> "dog"
    encoder = TextEncoder(clip_model)
    with torch.no_grad():
        before, after = encoder(embeddings, tokens), encoder(changed, tokens)
    assert (after[0] - before[0]).abs().max() > 1e-3
    torch.testing.assert_close(after[1:], before[1:], rtol=0, atol=1e-6)


def test_gradients_reach_only_positions_up_to_eot(clip_model, batch):
    """Learnable prompt embeddings get gradients at positions <= their row's EOT and exactly zero after it."""
    embeddings, tokens = batch
    prompts = embeddings.clone().requires_grad_(True)
    TextEncoder(clip_model)(prompts, tokens).sum().backward()
    grad_norm = prompts.grad.norm(dim=-1)  # (N, 77)
    eot = tokens.argmax(dim=-1)
    for row, last in enumerate(eot.tolist()):
        assert (grad_norm[row, : last + 1] > 0).all()
        assert (grad_norm[row, last + 1:] == 0).all()


def test_dtype_follows_the_clip_model():
    """Under the fp16 recipe the encoder computes in fp16 (CLIP's dtype) and matches the fp32 pass roughly."""
    half_model = build_model(tiny_state_dict("vit"))
    tokens = clip.tokenize(PROMPTS)
    encoder = TextEncoder(half_model)
    assert encoder.dtype == torch.float16
    with torch.no_grad():
        embeddings = half_model.token_embedding(tokens).half()
        out = encoder(embeddings, tokens)
        reference = TextEncoder(build_model(tiny_state_dict("vit")).float())(embeddings.float(), tokens)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), reference, rtol=0, atol=2e-2)

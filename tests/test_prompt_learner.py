"""trainers.common.prompt_learner / prompt_clip: CoOp's prompt and logits, recomputed from CoOp's formulas.

As in KaiyangZhou/CoOp@ff61507 ``trainers/coop.py``, prompts are ``[prefix, ctx, suffix]`` ("end"),
``[prefix, ctx[:M//2], name, ctx[M//2:], rest]`` ("middle") or ``[prefix, name, ctx, rest]`` ("front"), built
per class from the embedded template "X X ... X name."; logits are ``exp(logit_scale) * norm(image) @
norm(text)^T`` with the text read at the EOT.  The references below are written the reference's way (a per-class Python loop, all 77 positions).
"""
from __future__ import annotations

import pytest
import torch

from vlprompt import clip
from helpers import tiny_clip_fp32
from vlprompt.trainers.common.prompt_clip import PromptCLIP
from vlprompt.trainers.common.prompt_learner import PromptLearnerBase, layout_index
from vlprompt.trainers.common.text_encoder import TextEncoder

# Names of 2, 1, 4 and 1 BPE tokens ("_" reads as a space), so the layouts move tokens by different amounts.
CLASSNAMES = ["red circle", "dog", "a_very_long_name", "x"]
N_CTX = 4


def _learner(csc: bool, position: str, ctx_init: str = "", n_ctx: int = N_CTX) -> PromptLearnerBase:
    torch.manual_seed(0)
    return PromptLearnerBase(CLASSNAMES, tiny_clip_fp32(), n_ctx=n_ctx, ctx_init=ctx_init, csc=csc,
                             class_token_position=position)


def _reference_prompts(learner: PromptLearnerBase, position: str) -> torch.Tensor:
    """The reference construction: embed "X X X X name." per class, then a per-class concat loop."""
    model = tiny_clip_fp32()
    names = [name.replace("_", " ") for name in CLASSNAMES]
    tokens = clip.tokenize([" ".join(["X"] * N_CTX) + " " + name + "." for name in names])
    with torch.no_grad():
        embedding = model.token_embedding(tokens)  # (n_cls, 77, D)
    prefix, suffix = embedding[:, :1], embedding[:, 1 + N_CTX:]
    ctx = learner.ctx.detach()
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(len(names), -1, -1)
    half = N_CTX // 2
    prompts = []
    for i, name in enumerate(names):
        name_len = len(clip.encode(name))
        if position == "end":
            parts = [prefix[i], ctx[i], suffix[i]]
        elif position == "middle":
            parts = [prefix[i], ctx[i, :half], suffix[i, :name_len], ctx[i, half:], suffix[i, name_len:]]
        else:
            parts = [prefix[i], suffix[i, :name_len], ctx[i], suffix[i, name_len:]]
        prompts.append(torch.cat(parts, dim=0))
    return torch.stack(prompts)


def _reference_text_features(prompts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CoOp's ``TextEncoder`` on all 77 positions: + positions, transformer, ln_final, EOT row @ projection."""
    model = tiny_clip_fp32()
    x = prompts + model.positional_embedding
    x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_prompts_equal_reference_construction(csc, position):
    """Every layout x generic/CSC gives exactly the reference's per-class concatenation."""
    learner = _learner(csc, position)
    assert learner.ctx.shape == ((len(CLASSNAMES), N_CTX, 128) if csc else (N_CTX, 128))
    with torch.no_grad():
        prompts = learner()
    assert prompts.shape == (len(CLASSNAMES), 77, 128)
    assert torch.equal(prompts, _reference_prompts(learner, position))


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_logits_equal_reference_formula(csc, position):
    """PromptCLIP logits == exp(scale) * norm(img) @ norm(reference 77-token text features)^T within 1e-5."""
    model = tiny_clip_fp32()
    learner = _learner(csc, position)
    custom = PromptCLIP(learner, TextEncoder(model), model)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = custom(images)
        text = _reference_text_features(_reference_prompts(learner, position), learner.tokenized_prompts)
        image = model.encode_image(images)
    text = text / text.norm(dim=-1, keepdim=True)
    image = image / image.norm(dim=-1, keepdim=True)
    expected = model.logit_scale.exp() * image @ text.t()
    assert logits.shape == (3, len(CLASSNAMES))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert expected.std() > 0.1  # the classes really differ


@pytest.mark.parametrize("position", ["middle", "front"])
def test_class_tokens_sit_where_the_layout_says(position):
    """The name embeddings occupy 1 + M//2 ... (middle) or 1 ... (front); the context fills the rest before EOT."""
    learner = _learner(False, position)
    model = tiny_clip_fp32()
    with torch.no_grad():
        prompts = learner()
        for i, name in enumerate(CLASSNAMES):
            ids = torch.tensor(clip.encode(name.replace("_", " ")))
            start = 1 + N_CTX // 2 if position == "middle" else 1
            assert torch.equal(prompts[i, start:start + len(ids)], model.token_embedding(ids))
            ctx_positions = ([1, 2, 3 + len(ids), 4 + len(ids)] if position == "middle"
                             else list(range(1 + len(ids), 1 + len(ids) + N_CTX)))
            assert torch.equal(prompts[i, ctx_positions], learner.ctx)


def test_layout_index_is_a_permutation_and_end_is_identity():
    """Each layout row is a permutation of the 77 positions; "end" moves nothing; unknown layouts fail."""
    index = layout_index([2, 1, 4], n_ctx=4, seq_len=77, position="middle")
    assert all(sorted(row.tolist()) == list(range(77)) for row in index)
    assert torch.equal(layout_index([2, 1], 4, 77, "end"), torch.arange(77).expand(2, -1))
    with pytest.raises(ValueError, match="left"):
        layout_index([2], 4, 77, "left")


def test_context_from_words_and_eot_unchanged():
    """CTX_INIT "a_photo_of_a": n_ctx = 4 rows 1..4 of its embedding; tokens/EOT positions follow the phrase."""
    learner = _learner(csc=True, position="end", ctx_init="a_photo_of_a", n_ctx=16)
    model = tiny_clip_fp32()
    with torch.no_grad():
        expected = model.token_embedding(clip.tokenize("a photo of a"))[0, 1:5]
    assert learner.n_ctx == 4 and learner.ctx.shape == (4, 128)  # CSC ignored with words, as in CoOp
    assert torch.equal(learner.ctx.detach(), expected)
    assert learner.prompt_prefix == "a photo of a"
    eot = learner.tokenized_prompts.argmax(dim=-1).tolist()
    assert eot == [1 + 4 + len(clip.encode(n.replace("_", " "))) + 1 for n in CLASSNAMES]  # SOT ctx name . EOT


def test_random_context_std_and_state_dict():
    """Random init has the configured std; only ``ctx`` is persistent (class-name buffers are rebuilt per run)."""
    torch.manual_seed(0)
    learner = PromptLearnerBase(CLASSNAMES, tiny_clip_fp32(), n_ctx=16, init_std=0.5)
    assert abs(learner.ctx.std().item() - 0.5) < 0.05 and abs(learner.ctx.mean().item()) < 0.05
    assert list(learner.state_dict()) == ["ctx"]
    assert learner.token_prefix.shape == (4, 1, 128) and learner.token_suffix.shape == (4, 77 - 1 - 16, 128)


def test_cropped_prompts_equal_full_prompts_prefix():
    """construct_prompts(seq_len) returns exactly the first seq_len positions, for every layout."""
    for position in ("end", "middle", "front"):
        learner = _learner(True, position)
        with torch.no_grad():
            full = learner()
            cropped = learner.construct_prompts(learner.expand_ctx(), seq_len=learner.eot_seq_len)
        assert torch.equal(cropped, full[:, :learner.eot_seq_len])
    with pytest.raises(ValueError, match="EOT"):
        learner.construct_prompts(learner.expand_ctx(), seq_len=learner.eot_seq_len - 1)

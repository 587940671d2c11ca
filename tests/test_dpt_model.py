"""DPT's model on the tiny ViT CLIP: prompt layout, shared visual prompt, eval cache and config errors.

- SHARED_VISUAL off: image features equal plain CLIP's bit for bit.
- SHARED_VISUAL on: the ViT sequence entering ln_pre is the plain one plus exactly n_ctx tokens, equal to
  proj(E[ids]) computed in the test.
- Text prompts: SOT, E[ids], then the rest of "a photo of a {name}." (partial template, as the reference); the logged
  template re-tokenizes to exactly the ids the model used, and CLIP's own encode_text of it gives the
  model's logits.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from vlprompt import clip
from dpt_helpers import dpt_args
from helpers import run_train
from vlprompt.trainers.dpt.discrete_prompt import DiscretePrompt
from vlprompt.trainers.common.prompt_clip import l2_normalize
from vlprompt.trainers.common.text_encoder import TextEncoder
from vlprompt.trainers.dpt.model import DPTCLIP, DPTPromptLearner

CLASSNAMES = ["red circle", "green square", "blue_triangle"]
V = clip.get_tokenizer().vocab_size


@pytest.fixture(scope="module")
def tiny_clip():
    model, _ = clip.load("tiny-vit", device="cpu")
    return model


def build(clip_model, shared_visual: bool = True, n_ctx: int = 2, template: str = "partial", seed: int = 0) -> DPTCLIP:
    torch.manual_seed(seed)
    toggler = DiscretePrompt(n_ctx, V, init_std=0.004)
    learner = DPTPromptLearner(CLASSNAMES, clip_model, toggler, ctx_init="a photo of a", template=template,
                               visual_width=clip_model.visual.conv1.out_channels)
    return DPTCLIP(learner, TextEncoder(clip_model), clip_model, shared_visual=shared_visual).eval()


def images(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(9))


def test_shared_visual_off_equals_plain_clip(tiny_clip):
    model = build(tiny_clip, shared_visual=False)
    x = images()
    with torch.no_grad():
        _, ctx, _ = model.prompt_learner()
        assert torch.equal(model.encode_image(x, ctx), l2_normalize(tiny_clip.encode_image(x)))


def test_shared_visual_on_appends_projected_tokens(tiny_clip):
    """ln_pre sees the plain sequence (B, 17, W) plus n_ctx tokens equal to proj(E[ids]), no positions added."""
    seen = []
    hook = tiny_clip.visual.ln_pre.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        model = build(tiny_clip, shared_visual=True, n_ctx=3)
        x = images()
        with torch.no_grad():
            tiny_clip.encode_image(x)
            model(x)
    finally:
        hook.remove()
    plain, prompted = seen[0], seen[-1]
    assert plain.shape == (3, 17, 128) and prompted.shape == (3, 17 + 3, 128)
    assert torch.equal(prompted[:, :17], plain)
    learner = model.prompt_learner
    ids = torch.tensor(model.last_ids)
    expected = F.linear(tiny_clip.token_embedding.weight[ids], learner.proj.weight, learner.proj.bias)  # (3, W)
    assert torch.allclose(prompted[:, 17:], expected.expand(3, -1, -1), atol=1e-6)
    assert not torch.equal(model.encode_image(x, learner()[1]),
                           l2_normalize(tiny_clip.encode_image(x)))  # the prompt does change the features


@pytest.mark.parametrize("n_ctx", [1, 2, 4])
def test_partial_template_layout_and_retokenization(tiny_clip, n_ctx):
    model = build(tiny_clip, shared_visual=False, n_ctx=n_ctx, seed=n_ctx)
    learner = model.prompt_learner
    with torch.no_grad():
        prompts, ctx, ids = learner()
    record = learner.describe()
    assert record["ids"] == ids.tolist()
    tail = ["photo", "of", "a"][n_ctx - 1:]  # what is left of "a photo of a"
    assert record["template"] == " ".join([record["prompt"], *tail, "{}."])
    for c, name in enumerate(CLASSNAMES):
        name = name.replace("_", " ")
        tokens = clip.tokenize(f"a photo of a {name}.")[0].long()
        tokens[1:1 + n_ctx] = ids  # the learned tokens replace the first n_ctx template tokens
        expected = tiny_clip.token_embedding(tokens)
        assert torch.equal(prompts[c], expected.to(prompts.dtype))
        assert torch.equal(clip.tokenize(record["template"].format(name))[0].long(), tokens)


def test_pure_template_and_long_context_use_placeholders(tiny_clip):
    for template, n_ctx in (("pure", 2), ("partial", 5)):
        learner = build(tiny_clip, n_ctx=n_ctx, template=template).prompt_learner
        assert learner.prompt_prefix == " ".join(["X"] * n_ctx) and learner.tail_ids == []
        record = learner.describe()
        assert record["template"] == clip.decode(record["ids"]) + "{}."
        tokens = clip.tokenize(record["template"].format("red circle"))[0].long()
        expected = learner.tokenized_prompts[0].clone()  # "X X ... red circle." with the Xs replaced
        expected[1:1 + n_ctx] = torch.tensor(record["ids"])
        assert torch.equal(tokens, expected)


def test_logits_equal_clip_encode_text_of_the_decoded_prompt(tiny_clip):
    """Independent path: CLIP's own encode_text on the re-tokenized template, plain image features."""
    model = build(tiny_clip, shared_visual=False, n_ctx=2, seed=5)
    x = images()
    with torch.no_grad():
        logits = model(x)
        template = model.prompt_learner.describe()["template"]
        text = clip.tokenize([template.format(n.replace("_", " ")) for n in CLASSNAMES])
        text_features = l2_normalize(tiny_clip.encode_text(text))
        expected = tiny_clip.logit_scale.exp() * l2_normalize(tiny_clip.encode_image(x)) @ text_features.t()
    assert torch.allclose(logits, expected, atol=1e-4), (logits - expected).abs().max()


def test_eval_reuses_text_features_until_the_tokens_change(tiny_clip):
    model = build(tiny_clip, shared_visual=True, n_ctx=2, seed=3)
    calls = []
    hook = model.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    x = images()
    try:
        with torch.no_grad():
            first = model(x)
            assert torch.equal(model(x), first) and len(calls) == 1
            with torch.no_grad():
                model.prompt_learner.emb_toggler.scores[0, clip.encode("sketch")[0]] = 1.0  # new top token
            changed = model(x)
            assert len(calls) == 2 and not torch.equal(changed, first)
        fresh = build(tiny_clip, shared_visual=True, n_ctx=2, seed=3)
        fresh.prompt_learner.emb_toggler.scores.data.copy_(model.prompt_learner.emb_toggler.scores.data)
        fresh.prompt_learner.proj.load_state_dict(model.prompt_learner.proj.state_dict())
        with torch.no_grad():
            assert torch.equal(fresh(x), changed)
        model(x)  # with grad: always recomputed
        assert len(calls) == 3
    finally:
        hook.remove()


@pytest.mark.parametrize("opts, message", [
    (["MODEL.BACKBONE.NAME", "tiny-rn", "INPUT.SIZE", "(64, 64)"], "SHARED_VISUAL needs a ViT"),
    (["TRAINER.DPT.SELECT_MODE", "greedy"], "TRAINER.DPT.SELECT_MODE='greedy'"),
    (["TRAINER.DPT.INIT", "spike", "TRAINER.DPT.INIT_WORDS", "a photo of"], "spike needs 2 tokens"),
    (["DATALOADER.K_TRANSFORMS", "2"], "DATALOADER.K_TRANSFORMS=2"),
])
def test_config_errors_are_one_line(data_root, tmp_path, capsys, opts, message):
    assert run_train(dpt_args(data_root, str(tmp_path / "run"), opts=opts)) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_fp16_recipe_keeps_scores_fp32(tiny_clip):
    """Under PREC fp16 (OpenAI's half recipe + CoOp's learnable cast) the scores stay fp32 and get an fp32
    gradient while proj is half (FP32_SCORES); the visual prompt follows the activation dtype."""
    from vlprompt.trainers.common.clip_loading import cast_clip, cast_learnable

    half_clip = cast_clip(copy.deepcopy(tiny_clip), "fp16")
    torch.manual_seed(0)
    toggler = DiscretePrompt(2, V, init_std=0.004)
    initial = toggler.scores.detach().clone()
    learner = DPTPromptLearner(CLASSNAMES, half_clip, toggler, visual_width=128)
    cast_learnable(learner, half_clip, fp32_master=False)
    assert toggler.scores.dtype == torch.float32 and torch.equal(toggler.scores.detach(), initial)
    assert learner.proj.weight.dtype == torch.float16
    logits = DPTCLIP(learner, TextEncoder(half_clip), half_clip)(images(2))
    assert logits.dtype == torch.float16
    logits.float().logsumexp(dim=1).sum().backward()
    assert toggler.scores.grad.dtype == torch.float32 and toggler.scores.grad.abs().max() > 0

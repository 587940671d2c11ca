"""CoCoOp (trainers/cocoop.py): the batched forward equals the reference's per-image loop; training lowers the loss.

The reference (KaiyangZhou/CoOp@ff61507 ``trainers/cocoop.py``) runs the text encoder once per image on
``n_cls`` full 77-token prompts ``[prefix, ctx + meta_net(f_b), suffix]``; that loop is kept below as
``_per_image_logits`` and compared with our single batched call (EOT-cropped or not, chunked or not) on an
uneven batch.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import build, build_cfg, tiny_clip_fp32
from vlprompt.trainers.cocoop import CoCoOpCLIP, CoCoOpPromptLearner
from vlprompt.trainers.common import prompt_trainer
from vlprompt.trainers.common.text_encoder import TextEncoder

CLASSNAMES = ["red circle", "dog", "a_very_long_name", "x", "green square"]
TINY_COCOOP = "configs/trainers/CoCoOp/tiny_vit_c4_ep10_batch4_ctxv1.yaml"


def _model(truncate: bool = True, text_chunk_size: int = 0, ctx_init: str = "") -> CoCoOpCLIP:
    clip_model = tiny_clip_fp32()
    torch.manual_seed(0)
    learner = CoCoOpPromptLearner(CLASSNAMES, clip_model, n_ctx=4, ctx_init=ctx_init, meta_reduction=16)
    with torch.no_grad():  # a meta-net bias as large as the context, so a broken per-image path shows
        learner.meta_net.linear2.weight.mul_(20)
    return CoCoOpCLIP(learner, TextEncoder(clip_model, truncate_at_eot=truncate), clip_model, text_chunk_size)


def _per_image_logits(model: CoCoOpCLIP, images: torch.Tensor, bias_shift: int = 0) -> torch.Tensor:
    """CoCoOp's reference forward: a Python loop over images, each through the text encoder on 77 tokens.

    ``bias_shift`` != 0 gives image b the meta-net bias of image b + shift (a deliberately wrong pairing).
    """
    learner = model.prompt_learner
    clip_model = tiny_clip_fp32()
    image_features = F.normalize(clip_model.encode_image(images), dim=-1)  # (B, E)
    bias = learner.meta_net(image_features).roll(-bias_shift, dims=0)  # (B, D)
    rows = []
    for b in range(images.shape[0]):
        ctx = (learner.ctx + bias[b]).unsqueeze(0).expand(learner.n_cls, -1, -1)  # (n_cls, n_ctx, D)
        prompts = torch.cat([learner.token_prefix, ctx, learner.token_suffix], dim=1)  # (n_cls, 77, D)
        x = prompts + clip_model.positional_embedding
        x = clip_model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = clip_model.ln_final(x)
        eot = learner.tokenized_prompts.argmax(dim=-1)
        text = F.normalize(x[torch.arange(learner.n_cls), eot] @ clip_model.text_projection, dim=-1)
        rows.append(clip_model.logit_scale.exp() * image_features[b] @ text.t())
    return torch.stack(rows)  # (B, n_cls)


@pytest.mark.parametrize("truncate", [True, False])
@pytest.mark.parametrize("text_chunk_size", [0, 7])  # 7 < n_cls * B: one image per text-encoder call
def test_batched_logits_equal_per_image_loop(truncate, text_chunk_size):
    model = _model(truncate, text_chunk_size)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched, reference = model(images), _per_image_logits(model, images)
    assert batched.shape == (3, len(CLASSNAMES))
    torch.testing.assert_close(batched, reference, rtol=1e-5, atol=1e-5)
    # The pairing matters: giving each image another image's bias changes the logits clearly.
    with torch.no_grad():
        mispaired = _per_image_logits(model, images, bias_shift=1)
    assert (mispaired - batched).abs().max() > 1e-2


def test_one_text_encoder_call_for_the_whole_batch():
    """With no chunk limit the text transformer runs once on B x n_cls cropped sequences (no per-image loop)."""
    model = _model()
    calls = []
    model.text_encoder.transformer.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    assert calls == [(model.prompt_learner.eot_seq_len, 4 * len(CLASSNAMES), 128)]


def test_parameters_and_checkpoint_layout_match_cocoop():
    """Same names and shapes as CoCoOp: ctx (M, D) and a vis_dim -> vis_dim//16 -> ctx_dim meta-net."""
    state = _model(ctx_init="a photo of a").prompt_learner.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "ctx": (4, 128),
        "meta_net.linear1.weight": (4, 64), "meta_net.linear1.bias": (4,),
        "meta_net.linear2.weight": (128, 4), "meta_net.linear2.bias": (128,),
    }


def test_trainer_steps_lower_the_loss(data_root, tmp_path):
    """Five CoCoOp steps on one synthetic batch lower the cross-entropy; only prompt_learner params change."""
    cfg = build_cfg("CoCoOp", TINY_COCOOP, str(tmp_path / "run"), data_root, backbone="tiny-vit",
                    opts=["DATASET.NUM_SHOTS", "16", "OPTIM.WARMUP_EPOCH", "0", "OPTIM.LR", "0.5"])
    trainer = build(cfg)
    assert trainer.get_model_names() == ["prompt_learner"]
    frozen_before = trainer.model.image_encoder.conv1.weight.clone()
    batch = next(iter(trainer.train_loader_x))
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 100  # not the last batch: no scheduler step
    losses = [trainer.forward_backward(batch)["loss"] for _ in range(5)]
    assert losses[-1] < losses[0] - 0.05, losses
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert torch.equal(trainer.model.image_encoder.conv1.weight, frozen_before)


@pytest.mark.parametrize("fp32_master, dtype", [(True, torch.float32), (False, torch.float16)])
def test_fp32_master_weights_switch(data_root, tmp_path, monkeypatch, fp32_master, dtype):
    """Under PREC fp16 ctx and meta-net are fp32 master weights; FP32_MASTER_WEIGHTS False gives CoCoOp's fp16."""
    monkeypatch.setattr(prompt_trainer, "resolve_precision", lambda precision, device: precision)  # fp16 on a CPU
    cfg = build_cfg("CoCoOp", TINY_COCOOP, str(tmp_path / "run"), data_root, backbone="tiny-vit",
                    opts=["TRAINER.COCOOP.PREC", "fp16", "TRAINER.COCOOP.FP32_MASTER_WEIGHTS", str(fp32_master)])
    trainer = build(cfg)
    assert trainer.precision == "fp16" and trainer.model.text_encoder.dtype == torch.float16  # CLIP: fp16 recipe
    assert {p.dtype for p in trainer.model.prompt_learner.parameters()} == {dtype}

"""Cached evaluation of the CLIP prompt trainers (``ClipPromptTrainer.test`` with ``EVAL_FROM_IMAGE_FEATURES``).

Checked on the synthetic dataset with the tiny random CLIP, for ZeroshotCLIP, CoOp and CoCoOp: the per-sample predictions
and the accuracy of a cached evaluation equal Dassl's image-by-image loop bit for bit; a second evaluation is a
cache hit that runs the image encoder zero times; changed encoder weights or ``TEST.FEATURE_CACHE.ENABLED False``
never read a stale entry.
"""
from __future__ import annotations

import os

import pytest
import torch

from helpers import build, build_cfg
from dassl.engine import TrainerX

CONFIGS = {
    "ZeroshotCLIP": "configs/trainers/ZeroshotCLIP/tiny_vit.yaml",
    "CoOp": "configs/trainers/CoOp/tiny_vit_ep50_ctxv1.yaml",
    "CoCoOp": "configs/trainers/CoCoOp/tiny_vit_c4_ep10_batch4_ctxv1.yaml",
}
SPLIT_OPTS = ["DATASET.NUM_SHOTS", "4", "DATALOADER.TEST.BATCH_SIZE", "7"]  # uneven last batch


def _trainer(name: str, root: str, out: str, cache_dir: str, enabled: bool = True):
    opts = SPLIT_OPTS + ["TEST.FEATURE_CACHE.DIR", cache_dir, "TEST.FEATURE_CACHE.ENABLED", str(enabled)]
    return build(build_cfg(name, CONFIGS[name], out, root, backbone="tiny-vit", opts=opts))


def _count_encoder_calls(trainer) -> list:
    """A one-item list counting forward calls of the trainer's image encoder."""
    calls = [0]
    trainer.model.image_encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _evaluate(trainer, uncached: bool = False) -> tuple[float, list, int]:
    """(accuracy, per-sample predictions, number of correct) of one test pass; ``uncached`` forces Dassl's loop."""
    acc = TrainerX.test(trainer) if uncached else trainer.test()
    return acc, list(trainer.evaluator._y_pred), trainer.evaluator._correct


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_evaluation_equals_the_image_loop_and_hits_the_cache(name, data_root, tmp_path, caplog):
    """Same predictions as ENABLED False; the second run (a new trainer) loads features and never encodes."""
    cache_dir = str(tmp_path / "cache")
    plain = _trainer(name, data_root, str(tmp_path / "plain"), cache_dir, enabled=False)
    plain_calls = _count_encoder_calls(plain)
    acc_ref, pred_ref, correct_ref = _evaluate(plain)
    n_batches = len(plain.test_loader)
    assert plain_calls[0] == n_batches > 1
    assert not os.path.exists(cache_dir), "ENABLED False must not write the cache"

    first = _trainer(name, data_root, str(tmp_path / "first"), cache_dir)
    first_calls = _count_encoder_calls(first)
    with caplog.at_level("INFO"):
        acc1, pred1, correct1 = _evaluate(first)
    assert first_calls[0] == n_batches
    assert "Feature cache miss" in caplog.text
    assert len(os.listdir(cache_dir)) == 1
    assert (pred1, correct1, acc1) == (pred_ref, correct_ref, acc_ref)
    assert len(pred1) == len(first.dm.dataset.test)

    caplog.clear()
    second = _trainer(name, data_root, str(tmp_path / "second"), cache_dir)
    second_calls = _count_encoder_calls(second)
    with caplog.at_level("INFO"):
        acc2, pred2, correct2 = _evaluate(second)
    assert second_calls[0] == 0, "a cache hit must not run the image encoder"
    assert "Feature cache hit" in caplog.text
    assert (pred2, correct2, acc2) == (pred_ref, correct_ref, acc_ref)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_changed_encoder_weights_miss_the_cache(name, data_root, tmp_path):
    """New image-encoder weights make a new entry whose predictions equal the image loop with those weights."""
    cache_dir = str(tmp_path / "cache")
    trainer = _trainer(name, data_root, str(tmp_path / "out"), cache_dir)
    _, pred_before, _ = _evaluate(trainer)
    with torch.no_grad():
        trainer.model.image_encoder.proj.mul_(-1.0)  # flips every image feature: predictions must change
    calls = _count_encoder_calls(trainer)
    _, pred_after, correct_after = _evaluate(trainer)
    assert calls[0] == len(trainer.test_loader), "changed weights must re-encode, not reuse the old entry"
    assert len(os.listdir(cache_dir)) == 2
    assert pred_after != pred_before
    _, pred_loop, correct_loop = _evaluate(trainer, uncached=True)
    assert (pred_after, correct_after) == (pred_loop, correct_loop)


def test_methods_with_learned_image_features_do_not_opt_in():
    """DPT (shared visual prompt) and the LoRA trainers (vision LoRA) keep Dassl's image loop."""
    from vlprompt import trainers  # noqa: F401  (registers every method)
    from dassl.engine import TRAINER_REGISTRY

    opted = {name for name in TRAINER_REGISTRY.registered_names()
             if getattr(TRAINER_REGISTRY.get(name), "EVAL_FROM_IMAGE_FEATURES", False)}
    assert {"ZeroshotCLIP", "ZeroshotCLIP2", "CoOp", "CoCoOp"} <= opted
    assert not opted & {"DPT", "CLIP_LoRA", "DISEF"}

"""LangevinCoOp pieces without a model: hard / soft votes and their tie-break, group accuracies, the logit-adjustment
prior, the explicit lr-per-epoch table, the on-disk FIFO sample bank, the reference's augmentation and the
reference's fp16 rounding of the text tower."""
from __future__ import annotations

import math
import os

import pytest
import torch

from vlprompt.trainers.config import get_cfg
from vlprompt.trainers.langevin_coop import (SampleBank, VoteAccumulator, group_accuracies, hard_vote, last_batch_size,
                                             log_prior, lr_at_epoch, reference_transforms, round_text_tower_to_fp16,
                                             soft_vote)

REFERENCE_PHASE1 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs", "trainers", "LangevinCoOp", "rn50_ctx15_csc_nonoise_ep200_batch512.yaml")


def _mode_lowest(column):
    """Reference vote for one item: count per class, first maximum (lowest index) wins."""
    counts = [0] * 10
    for v in column:
        counts[v] += 1
    return counts.index(max(counts))


def test_hard_vote_hand_made():
    """Majority per column; ties (2-2, 1-1-1) go to the lowest class index whatever the sample order."""
    votes = torch.tensor([
        [0, 3, 2, 1, 4, 2],
        [1, 3, 1, 2, 3, 0],
        [1, 0, 2, 1, 2, 1],
        [2, 0, 1, 2, 4, 2],
    ])  # (K=4 samples, N=6 items)
    expected = torch.tensor([1, 0, 1, 1, 4, 2])
    assert torch.equal(hard_vote(votes, num_classes=5), expected)
    assert torch.equal(hard_vote(votes.flip(0), num_classes=5), expected)  # order-free
    assert torch.equal(hard_vote(votes[:3, 5:], num_classes=5), torch.tensor([0]))  # 2/0/1 three-way tie -> 0


def test_hard_vote_matches_reference_counting_on_random_votes():
    g = torch.Generator().manual_seed(0)
    votes = torch.randint(0, 10, (7, 500), generator=g)
    expected = torch.tensor([_mode_lowest(votes[:, i].tolist()) for i in range(votes.shape[1])])
    assert torch.equal(hard_vote(votes, 10), expected)


def test_single_sample_vote_is_its_argmax_and_soft_vote_is_mean_probability():
    logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 1.0, 1.0]])
    acc = VoteAccumulator(2, 3)
    acc.add_logits(logits)
    assert torch.equal(acc.hard(), torch.tensor([1, 0]))
    # Two samples disagree on item 0; the soft vote follows the confident one, the hard vote ties -> class 0.
    probs = torch.tensor([[[0.50, 0.30, 0.20]], [[0.05, 0.90, 0.05]]])  # (K=2, N=1, C=3)
    assert torch.equal(soft_vote(probs), torch.tensor([1]))
    acc = VoteAccumulator(1, 3)
    for p in probs:
        acc.add_logits(p.log())
    assert torch.equal(acc.hard(), torch.tensor([0]))
    assert torch.equal(acc.soft(), torch.tensor([1]))
    torch.testing.assert_close(acc.prob_sum / 2, probs.mean(0).double())


def test_group_accuracies_mean_of_per_class_accuracy():
    """many/medium/few = mean over the group's classes of per-class accuracy; an empty group is NaN."""
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 0, 2, 0, 0, 0])  # per class: 3/4, 1/2, 1/4
    groups = {"many": [0, 1], "medium": [2], "few": []}
    accs = group_accuracies(pred, labels, groups, num_classes=3)
    assert accs["many"] == pytest.approx(100 * (0.75 + 0.5) / 2)
    assert accs["medium"] == pytest.approx(25.0)
    assert math.isnan(accs["few"])


def test_log_prior_formula():
    counts = [40, 18, 8, 4]
    pi = torch.tensor(counts, dtype=torch.float64) / 70
    torch.testing.assert_close(log_prior(counts, 1.0), torch.log(pi + 1e-12).float())
    torch.testing.assert_close(log_prior(counts, 0.5), torch.log(pi ** 0.5 + 1e-12).float())
    assert torch.allclose(log_prior(counts, 0.0), torch.zeros(4), atol=1e-6)  # tau 0: plain cross-entropy


def test_lr_per_epoch_reproduces_the_reference_phases():
    """Phase 2 (milestone 200, gamma 0.1, lr 0.05): 0.05 for epochs 160-199, 0.005 from 200, the reference's
    effective schedule; phase 1 (milestone 250 never reached): constant 0.05."""
    phase2 = [lr_at_epoch(e, 0.05, "multi_step", (200,), 0.1) for e in range(160, 400)]
    assert phase2[:40] == [0.05] * 40 and all(lr == pytest.approx(0.005) for lr in phase2[40:])
    assert {lr_at_epoch(e, 0.05, "multi_step", (250,), 0.1) for e in range(200)} == {0.05}
    assert lr_at_epoch(25, 1.0, "single_step", 10, 0.5) == 0.25
    assert lr_at_epoch(25, 1.0, "single_step", (-1,), 0.5) == 1.0


def _state(value: float):
    return {"ctx": torch.full((2, 3), value)}


def test_bank_is_a_fifo_of_files(tmp_path):
    """K newest samples in order; each one is a file; evicted files stay until prune()."""
    bank = SampleBank(str(tmp_path / "bank"), capacity=3)
    for epoch in range(5, 10):
        bank.add(epoch, _state(epoch))
    assert bank.epochs == [7, 8, 9] and bank.is_full
    assert [float(s["ctx"][0, 0]) for _, s in bank.items()] == [7.0, 8.0, 9.0]
    assert sorted(os.listdir(tmp_path / "bank")) == [f"sample_epoch_{e:05d}.pth" for e in range(5, 10)]
    bank.prune()
    assert sorted(os.listdir(tmp_path / "bank")) == [f"sample_epoch_{e:05d}.pth" for e in (7, 8, 9)]
    with pytest.raises(ValueError, match="restore"):
        bank.add(8, _state(0))


def test_bank_restore_before_a_resume_epoch(tmp_path):
    """After a crash, restore(before_epoch=s) rebuilds the window a run resumed at epoch s must have had."""
    bank = SampleBank(str(tmp_path), capacity=3)
    for epoch in range(0, 6):
        bank.add(epoch, _state(epoch))
    restored = SampleBank(str(tmp_path), capacity=3)
    restored.restore(before_epoch=4)
    assert restored.epochs == [1, 2, 3]
    assert all(torch.equal(s["ctx"], _state(e)["ctx"]) for e, s in restored.items())
    restored.add(4, _state(40.0))  # the re-run of epoch 4 replaces the stale file
    again = SampleBank(str(tmp_path), capacity=3)
    again.restore()
    assert again.epochs == [3, 4, 5] and float(again.items()[1][1]["ctx"][0, 0]) == 40.0


def test_reference_transforms_follow_the_reference():
    """The reference's CIFAR pipeline: crop 32 pad 4, flip, RandAugment(5 ops, magnitude 9) at 32 px, then resize
    to 224 and CIFAR statistics; NATIVE_SIZE sets the crop."""
    cfg = get_cfg()
    cfg.merge_from_file(REFERENCE_PHASE1)
    train, test = reference_transforms(cfg)
    names = [type(t).__name__ for t in train.transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "RandAugment", "Resize", "ToTensor", "Normalize"]
    crop, _, randaug, resize, _, norm = train.transforms
    assert (crop.size, crop.padding) == ((32, 32), 4)
    assert (randaug.num_ops, randaug.magnitude, randaug.num_magnitude_bins) == (5, 9, 31)
    assert tuple(resize.size) == (224, 224)
    assert list(norm.mean) == [0.4914, 0.4822, 0.4465] and list(norm.std) == [0.2023, 0.1994, 0.2010]
    assert [type(t).__name__ for t in test.transforms] == ["Resize", "ToTensor", "Normalize"]
    cfg.TRAINER.LANGEVINCOOP.NATIVE_SIZE = 64
    assert reference_transforms(cfg)[0].transforms[0].size == (64, 64)


def test_last_batch_size():
    """The reference's one-model figure covers the last test batch: 784 of CIFAR's 10,000 images at batch 1024."""
    assert last_batch_size(10000, 1024) == 784
    assert last_batch_size(40, 16) == 8
    assert last_batch_size(32, 16) == 16
    assert last_batch_size(5, 16) == 5


def _reference_text_features(clip, prompts, tokens):
    """The reference's TextEncoder.forward with its recorded fp16 dtype on an fp32 CLIP, written out."""
    x = prompts + clip.positional_embedding.half()  # fp32 + fp16 -> fp32
    x = clip.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = clip.ln_final(x).half()
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)].float() @ clip.text_projection


def test_fp16_rounding_of_the_text_tower_matches_the_reference():
    """REFERENCE_NUMERICS: positional embedding and final LayerNorm output pass through fp16, as the reference's
    text encoder does; without it the features differ (fp32 throughout)."""
    from helpers import tiny_clip_fp32
    from vlprompt.trainers.common.text_encoder import TextEncoder

    clip = tiny_clip_fp32("vit")
    g = torch.Generator().manual_seed(0)
    n, length, width = 3, clip.positional_embedding.shape[0], clip.ln_final.weight.shape[0]
    prompts = torch.randn(n, length, width, generator=g) * 0.02
    tokens = torch.zeros(n, length, dtype=torch.long)
    tokens[:, 0] = 1
    tokens[torch.arange(n), torch.tensor([5, 9, 7])] = 1000  # EOT = the largest id
    embedding = clip.positional_embedding.detach().clone()
    with torch.no_grad():
        plain = TextEncoder(clip, truncate_at_eot=False)(prompts, tokens)
        rounded = round_text_tower_to_fp16(TextEncoder(clip, truncate_at_eot=False))(prompts, tokens)
        expected = _reference_text_features(clip, prompts, tokens)
    torch.testing.assert_close(rounded, expected, rtol=0, atol=1e-6)
    assert (plain - expected).abs().max() > 1e-5
    # The shared CLIP is untouched: only the text encoder's own attributes were replaced.
    assert torch.equal(clip.positional_embedding.detach(), embedding)
    assert type(clip.ln_final).__name__ == "LayerNorm"

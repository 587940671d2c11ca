"""DPT's torchrun safeguards, the parts the registry-wide test (tests/test_registry_ddp.py, seeded runs) cannot see.

Rank 1 of a 2-process job is simulated in this process (the collectives replaced by what rank 0 would send):
``share_initial_parameters`` must replace the rank's own draw by rank 0's (a run without ``--seed`` draws the
scores per rank), and the end-of-epoch check must raise when the ranks' selected ids differ and stay silent when
they agree.  A real 2-process run without ``--seed`` was checked by hand with tests/helpers.run_torchrun.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vlprompt.trainers.dpt import trainer as dpt_trainer
from vlprompt.trainers.dpt.discrete_prompt import DiscretePrompt

VOCAB = 500  # the selection is not exercised here, only the parameters


def _learner(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.ModuleDict({"emb_toggler": DiscretePrompt(2, VOCAB, init_std=0.004), "proj": nn.Linear(8, 4)})


def test_initial_parameters_come_from_rank0(monkeypatch):
    rank0 = {name: p.detach().clone() for name, p in _learner(seed=100).named_parameters()}
    sent = []

    def broadcast_from_rank0(obj):
        sent.append({name: value.clone() for name, value in obj.items()})  # pickled at send time in a real run
        return {name: value.clone() for name, value in rank0.items()}

    monkeypatch.setattr(dpt_trainer, "is_distributed", lambda: True)
    monkeypatch.setattr(dpt_trainer, "broadcast_object", broadcast_from_rank0)
    module = _learner(seed=101)
    own = {name: p.detach().clone() for name, p in module.named_parameters()}
    dpt_trainer.share_initial_parameters(module)
    assert sorted(sent[0]) == sorted(rank0) == ["emb_toggler.scores", "proj.bias", "proj.weight"]
    for name, param in module.named_parameters():
        assert not torch.equal(own[name], rank0[name]), name  # the ranks did draw apart
        assert torch.equal(sent[0][name], own[name]) and torch.equal(param.detach(), rank0[name]), name
        assert param.requires_grad  # still a trainable parameter, changed in place


def test_single_process_parameters_untouched():
    module = _learner(seed=3)
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    dpt_trainer.share_initial_parameters(module)  # not distributed: no collective, nothing changes
    assert all(torch.equal(p.detach(), before[name]) for name, p in module.named_parameters())


@pytest.mark.parametrize("other, fails", [([5, 7], False), ([5, 8], True)])
def test_rank_divergence_is_detected(monkeypatch, other, fails):
    monkeypatch.setattr(dpt_trainer, "is_distributed", lambda: True)
    monkeypatch.setattr(dpt_trainer, "all_gather_object", lambda ids: [[5, 7], other])
    check = dpt_trainer.DPT.check_same_prompt_on_all_ranks
    if fails:
        with pytest.raises(RuntimeError, match=r"DPT ranks selected different prompts after epoch 3: \[\[5, 7\], "
                                               r"\[5, 8\]\]"):
            check(SimpleNamespace(epoch=2), [5, 7])
    else:
        check(SimpleNamespace(epoch=2), [5, 7])

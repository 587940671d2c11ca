"""LangevinCoOp end to end on a synthetic CIFAR-10-LT copy with the tiny ViT CLIP (shared/specs/langevin_coop.md):
phase 2 starts from phase 1's prompt exactly, the bank holds the last K samples, a run killed in phase 2 resumes
with the same bank, the ensemble encodes every test image once for any K and scores every test image, the
loss is the logit-adjusted cross-entropy, and bad configs fail in check_cfg."""
from __future__ import annotations

import os
import os.path as osp
import re

import pytest
import torch
import torch.nn.functional as F

from langevin_helpers import build_trainer_in_process, run_train, train_args, write_shape_cifar10
from vlprompt.trainers.common.sgld import SampleBank
from vlprompt.trainers.langevin_coop import LangevinCoOp

N_TEST = 40  # 4 classes x 10 test images
PHASE1_EPOCHS, PHASE2_EPOCHS, START, K = 6, 12, 4, 3  # from the tiny configs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on 2 shared cores run far faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lt_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("cifar_lt"))
    write_shape_cifar10(root)
    return root


@pytest.fixture(scope="module")
def phase1(lt_root, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("phase1"))
    assert run_train(train_args(lt_root, out, phase=1)) == 0
    return out


def _init_file(phase1: str) -> str:
    return osp.join(phase1, "saved_prompts", f"prompt_epoch_{START}.pth")


@pytest.fixture(scope="module")
def phase2(lt_root, phase1, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("phase2"))
    assert run_train(train_args(lt_root, out, phase=2, init_from=_init_file(phase1))) == 0
    return out


def _ctx(path: str) -> torch.Tensor:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]["ctx"]


def _log_text(out: str) -> str:
    """Every log of a run folder, oldest first (a resumed run writes ``log.txt-<time>`` beside ``log.txt``)."""
    paths = sorted((osp.join(out, f) for f in os.listdir(out) if f.startswith("log.txt")), key=osp.getmtime)
    return "".join(open(p).read() for p in paths)


def _log_values(out: str, key: str):
    return [float(v) for v in re.findall(rf"\* {key}: ([\d.]+)%", _log_text(out))]


def test_phase1_saves_reference_prompts(phase1):
    """Prompts after epoch indices 0, 2, 4 and the last (5); the last equals the final Dassl checkpoint."""
    assert sorted(os.listdir(osp.join(phase1, "saved_prompts"))) == [f"prompt_epoch_{e}.pth" for e in (0, 2, 4, 5)]
    final = _ctx(osp.join(phase1, "prompt_learner", f"model.pth.tar-{PHASE1_EPOCHS}"))
    assert torch.equal(_ctx(osp.join(phase1, "saved_prompts", "prompt_epoch_5.pth")), final)
    assert not torch.equal(_ctx(_init_file(phase1)), final)
    assert not osp.exists(osp.join(phase1, "sample_bank"))  # BURN_IN > MAX_EPOCH: no sampling in phase 1


def test_phase2_starts_from_phase1_prompt(lt_root, phase1, tmp_path):
    """Phase 2 loads the phase-1 prompt bit for bit, starts at its epoch index, and takes lr / weight decay from
    OPTIM (spec §10 #2) unless the literal INIT_LOAD_OPTIM switch is on; noise starts at BURN_IN + 1."""
    trainer = build_trainer_in_process(train_args(lt_root, str(tmp_path / "a"), 2, init_from=_init_file(phase1)))
    trainer.before_train()
    trainer.close_writer()
    assert trainer.start_epoch == START
    # Noise only on the prompt: the optimizer holds ctx and nothing else is trainable.
    assert [n for n, p in trainer.model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]
    assert [p for g in trainer.optim.param_groups for p in g["params"]] == [trainer.prompt_learner.ctx]
    assert torch.equal(trainer.prompt_learner.ctx.detach(), _ctx(_init_file(phase1)))
    schedule = {}
    for trainer.epoch in (START, 6, 7, 8, 11):
        trainer.before_epoch()
        group = trainer.optim.param_groups[0]
        schedule[trainer.epoch] = (group["lr"], group["noise_mode"], group["weight_decay"])
    assert schedule == {4: (0.05, "none", 1e-9), 6: (0.05, "none", 1e-9), 7: (pytest.approx(0.005), "none", 1e-9),
                        8: (pytest.approx(0.005), "sgld_temp", 1e-9), 11: (pytest.approx(0.005), "sgld_temp", 1e-9)}
    # The literal switch: the checkpoint's optimizer hyper-parameters override OPTIM.LR / WEIGHT_DECAY.
    ckpt = torch.load(_init_file(phase1), weights_only=False)
    ckpt["optim_hparams"] = {"initial_lr": 0.3, "lr": 0.3, "weight_decay": 0.01}
    torch.save(ckpt, tmp_path / "ckpt.pth")
    literal = build_trainer_in_process(train_args(lt_root, str(tmp_path / "b"), 2, init_from=str(tmp_path / "ckpt.pth"),
                                                  opts=["TRAINER.LANGEVINCOOP.INIT_LOAD_OPTIM", "True"]))
    literal.before_train()
    literal.close_writer()
    literal.epoch = START
    literal.before_epoch()
    assert (literal.optim.param_groups[0]["lr"], literal.optim.param_groups[0]["weight_decay"]) == (0.3, 0.01)


def test_bank_holds_the_last_k_samples(phase2):
    """Epoch indices 9, 10, 11 on disk (older files pruned after the last checkpoint), the newest equal to the
    final weights, all distinct; training resumed at epoch index 4 (retrained, spec §10 #6)."""
    bank_dir = osp.join(phase2, "sample_bank")
    assert sorted(os.listdir(bank_dir)) == [f"sample_epoch_{e:05d}.pth" for e in range(PHASE2_EPOCHS - K, PHASE2_EPOCHS)]
    samples = [torch.load(osp.join(bank_dir, f), weights_only=True) for f in sorted(os.listdir(bank_dir))]
    assert [s["epoch"] for s in samples] == [9, 10, 11]
    final = _ctx(osp.join(phase2, "prompt_learner", f"model.pth.tar-{PHASE2_EPOCHS}"))
    assert torch.equal(samples[-1]["state_dict"]["ctx"], final)
    assert not torch.equal(samples[0]["state_dict"]["ctx"], samples[1]["state_dict"]["ctx"])
    log = _log_text(phase2)
    assert re.search(r"^epoch \[(\d+)/12\]", log, re.M).group(1) == str(START + 1)
    assert "=> ensemble result (3 samples, epoch indices 9-11)" in log
    assert len(_log_values(phase2, "hard_vote_accuracy")) == 1


class Killed(RuntimeError):
    pass


def test_killed_phase2_resumes_with_the_same_bank(lt_root, phase1, phase2, tmp_path, monkeypatch):
    """Kill during epoch index 11 (last checkpoint after 8, sample 7 already evicted from the window), resume:
    the bank and the final prompt equal the uninterrupted run's, bit for bit."""
    out = str(tmp_path / "killed")
    original = LangevinCoOp.run_epoch

    def run_epoch_or_die(self):
        if self.epoch == 11:
            raise Killed
        original(self)

    monkeypatch.setattr(LangevinCoOp, "run_epoch", run_epoch_or_die)
    with pytest.raises(Killed):
        run_train(train_args(lt_root, out, phase=2, init_from=_init_file(phase1)))
    monkeypatch.undo()
    bank_dir = osp.join(out, "sample_bank")
    assert sorted(os.listdir(bank_dir)) == [f"sample_epoch_{e:05d}.pth" for e in (7, 8, 9, 10)]
    assert run_train(train_args(lt_root, out, phase=2, init_from=_init_file(phase1))) == 0
    assert "Previous epoch: 9" in _log_text(out)
    assert sorted(os.listdir(bank_dir)) == sorted(os.listdir(osp.join(phase2, "sample_bank")))
    for name in os.listdir(bank_dir):
        assert torch.equal(_ctx(osp.join(bank_dir, name)), _ctx(osp.join(phase2, "sample_bank", name))), name
    assert _log_values(out, "hard_vote_accuracy") == _log_values(phase2, "hard_vote_accuracy")


def _reference_vote_accuracy(trainer, states) -> float:
    """The reference's ensemble: per sample, load it and run the whole test set through the full model."""
    votes = []
    for state in states:
        trainer.prompt_learner.load_state_dict(state)
        with torch.no_grad():
            votes.append(torch.cat([trainer.model(b["img"]).argmax(1) for b in trainer.test_loader]))
    labels = torch.cat([b["label"] for b in trainer.test_loader])
    votes = torch.stack(votes)  # (K, N)
    final = []
    for column in votes.t().tolist():
        counts = [column.count(c) for c in range(trainer.num_classes)]
        final.append(counts.index(max(counts)))  # first maximum: lowest class index
    return 100.0 * (torch.tensor(final) == labels).double().mean().item()


@pytest.mark.parametrize("k", [1, 6])
def test_ensemble_encodes_each_test_image_once(lt_root, phase2, tmp_path, k):
    """With a bank of k samples the image encoder sees each of the N test images exactly once and the text
    encoder runs k + 1 times; every test image is scored; the vote equals the reference's K-pass vote."""
    trainer = build_trainer_in_process(train_args(lt_root, str(tmp_path), 2, opts=[
        "TRAINER.LANGEVINCOOP.MAX_SAMPLES", str(k), "TRAINER.LANGEVINCOOP.BURN_IN", "0",
        "TRAINER.LANGEVINCOOP.ONE_MODEL_LAST_BATCH", "True"]))
    trainer.load_model(phase2, epoch=PHASE2_EPOCHS)
    trainer.bank = SampleBank(str(tmp_path / "bank"), k)  # k samples around the final prompt
    base = trainer.prompt_learner.ctx.detach().clone()
    g = torch.Generator().manual_seed(k)
    for epoch in range(k):
        trainer.bank.add(epoch, {"ctx": base + 0.05 * torch.randn(base.shape, generator=g)})
    images, text_calls = [], []
    hooks = [trainer.model.image_encoder.register_forward_hook(lambda m, i, o: images.append(i[0].shape[0])),
             trainer.model.text_encoder.register_forward_hook(lambda m, i, o: text_calls.append(1))]
    trainer.test()
    assert sum(images) == N_TEST == len(trainer.dm.dataset.test)
    assert len(text_calls) == k + 1
    results = trainer.last_results
    assert results["one_model"]["total"] == N_TEST and results["ensemble"]["total"] == N_TEST
    assert results["ensemble"]["num_samples"] == k and len(results["ensemble"]["curve"]) == k
    assert torch.equal(trainer.prompt_learner.ctx.detach(), base)  # the current prompt is restored
    trainer.test()  # a later evaluation in the same run reuses the features
    assert sum(images) == N_TEST
    for hook in hooks:
        hook.remove()
    states = [s for _, s in trainer.bank.items()]
    assert results["ensemble"]["hard_vote_accuracy"] == pytest.approx(_reference_vote_accuracy(trainer, states))


def test_eval_only_reproduces_the_final_results(lt_root, phase2, tmp_path):
    """--eval-only --model-dir --load-epoch re-reads the bank from disk: same one-model and vote accuracies."""
    out = str(tmp_path / "eval")
    extra = ["--eval-only", "--model-dir", phase2, "--load-epoch", str(PHASE2_EPOCHS)]
    assert run_train(train_args(lt_root, out, 2, extra=extra)) == 0
    assert "* total: 40" in _log_text(out)
    assert _log_values(out, "accuracy")[-1:] == _log_values(phase2, "accuracy")[-1:]
    assert _log_values(out, "hard_vote_accuracy") == _log_values(phase2, "hard_vote_accuracy")


def test_loss_is_logit_adjusted_and_learns(lt_root, tmp_path):
    """compute_loss = CE(logits + log(pi + 1e-12)) with pi the long-tailed training frequencies, and 60
    noise-free steps on one batch cut it by more than half."""
    trainer = build_trainer_in_process(train_args(lt_root, str(tmp_path), 1, opts=["OPTIM.LR", "0.01"]))
    assert trainer.dm.dataset.cls_num_list == [40, 18, 8, 4]
    batch = next(iter(trainer.train_loader_x))
    image, label = batch["img"], batch["label"]
    trainer.set_model_mode("train")
    logits = trainer.model(image)
    prior = torch.log(torch.tensor([40, 18, 8, 4], dtype=torch.float64) / 70 + 1e-12).float()
    first = trainer.compute_loss(logits, label)
    torch.testing.assert_close(first, F.cross_entropy(logits + prior, label))
    for _ in range(60):
        loss = trainer.compute_loss(trainer.model(image), label)
        trainer.model_backward_and_update(loss)
    assert loss.item() < 0.5 * first.item(), (first.item(), loss.item())


@pytest.mark.parametrize("opts,match", [
    (["TRAINER.LANGEVINCOOP.NOISE_MODE", "langevin"], "TRAINER.LANGEVINCOOP.NOISE_MODE"),
    (["OPTIM.NAME", "adam"], "OPTIM.NAME"),
    (["TRAINER.LANGEVINCOOP.BURN_IN", "10"], "MAX_SAMPLES"),
    (["TRAINER.LANGEVINCOOP.INIT_FROM", "/nonexistent/prompt.pth"], "INIT_FROM"),
])
def test_bad_config_fails_in_one_line(lt_root, tmp_path, capsys, opts, match):
    assert run_train(train_args(lt_root, str(tmp_path), 2, opts=opts)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err

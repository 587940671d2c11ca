"""PromptSRC (trainers/promptsrc.py): its losses and Gaussian weights against their formulas, zero weights against
IVLP, the aggregated prompts, training on Synthetic, the reference's checkpoints, configs and scripts.

- The three self-regulating terms and the Gaussian epoch weights equal their formulas, recomputed here in float64
  with explicit sums; the frozen features and zero-shot logits equal the tiny CLIP's own ``encode_text`` /
  ``encode_image`` (all 77 positions, another code path than the trainer's text encoder).
- With every loss weight 0 one optimisation step is bit for bit IVLP's; with the weights on it is not.
- After training, the prompts are ``sum_e w_e theta_e`` of the per-epoch prompts of a run without aggregation.
- On the Synthetic base classes with the pre-trained tiny CLIP, PromptSRC beats zero-shot CLIP and ``--eval-only``
  reloads the same accuracy.
Reference facts: muzairkhattak/PromptSRC@bb95c77 (``trainers/promptsrc.py``, ``train.py``, ``configs/``).
"""
from __future__ import annotations

import math
import os
import os.path as osp
import shlex
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers import (REPO_ROOT, build, build_cfg, eval_only, last_accuracy, run_train, tiny_clip_fp32,
                     train_argv)
from vlprompt import clip
from vlprompt.trainers.common.custom_clip import l2_normalize
from vlprompt.trainers.common.templates import IMAGENET_TEMPLATES
from vlprompt.trainers.promptsrc import (PROMPTSRC_TEMPLATES, GaussianPromptAggregate, gaussian_epoch_weights,
                                         image_consistency_loss, logit_consistency_loss, text_consistency_loss)

TINY = "configs/trainers/PromptSRC/tiny_vit_c2_ep20_batch8_4+4ctx.yaml"
TINY_IVLP = "configs/trainers/IVLP/tiny_vit_c2_ep20_batch8_2+2ctx.yaml"
RANDOM_TINY = ["MODEL.BACKBONE.NAME", "tiny-vit", "DATASET.NUM_SHOTS", "2"]
BASE = ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base"]
ZERO_WEIGHTS = ["TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT", "0.0", "TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT", "0.0",
                "TRAINER.PROMPTSRC.LOGIT_LOSS_WEIGHT", "0.0"]


def _trainer(tmp_path, data_root, opts=(), name="PromptSRC", config=TINY):
    return build(build_cfg(name, config, str(tmp_path / name), data_root, opts=RANDOM_TINY + list(opts)))


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- formulas, recomputed in float64
def _mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten().tolist(), b.double().flatten().tolist()
    return sum(abs(x - y) for x, y in zip(a, b)) / len(a)


def _kl_frozen_to_prompted(logits: torch.Tensor, frozen: torch.Tensor) -> float:
    """(1 / (B C)) sum_b sum_c q_bc (log q_bc - log p_bc), softmaxes written out."""
    total = 0.0
    for row_p, row_q in zip(logits.double().tolist(), frozen.double().tolist()):
        log_zp = math.log(sum(math.exp(v) for v in row_p))
        log_zq = math.log(sum(math.exp(v) for v in row_q))
        for zp, zq in zip(row_p, row_q):
            log_q = zq - log_zq
            total += math.exp(log_q) * (log_q - (zp - log_zp))
    return total / logits.numel()


def _reference_gauss(n: int, mean: float, std: float) -> list[float]:
    """The normalised density at 1..n, written as a Gaussian pdf (the normalising constant included)."""
    pdf = [math.exp(-0.5 * ((a - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for a in range(1, n + 1)]
    return [p / sum(pdf) for p in pdf]


def test_losses_equal_their_formulas():
    """L1 text / image = mean |difference|; the logit term = KL(frozen || prompted) summed, divided by B*C."""
    g = torch.Generator().manual_seed(0)
    text, frozen_text = torch.randn(7, 16, generator=g), torch.randn(7, 16, generator=g)
    image, frozen_image = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    logits, frozen_logits = 3 * torch.randn(5, 7, generator=g), 3 * torch.randn(5, 7, generator=g)
    assert text_consistency_loss(text, frozen_text).item() == pytest.approx(_mean_abs(text, frozen_text), rel=1e-6)
    assert image_consistency_loss(image, frozen_image).item() == pytest.approx(_mean_abs(image, frozen_image),
                                                                               rel=1e-6)
    kl = logit_consistency_loss(logits, frozen_logits).item()
    assert kl == pytest.approx(_kl_frozen_to_prompted(logits, frozen_logits), rel=1e-5)
    reverse = _kl_frozen_to_prompted(frozen_logits, logits)  # the other direction is another number
    assert abs(kl - reverse) > 1e-3
    assert logit_consistency_loss(logits, logits).abs().item() < 1e-6
    half = logit_consistency_loss(logits.half(), frozen_logits.half())  # computed in fp32 whatever comes in
    assert half.dtype == torch.float32


@pytest.mark.parametrize("n, mean, std", [(20, 15, 1), (20, 6, 10), (50, 30, 30), (50, 45, 5), (5, 2.5, 0.7)])
def test_gaussian_weights_equal_the_normalised_density(n, mean, std):
    """The reference's configs (base-to-new, cross-dataset, the two few-shot settings) and an off-grid mean."""
    weights = gaussian_epoch_weights(n, mean, std)
    expected = _reference_gauss(n, mean, std)
    assert len(weights) == n and sum(weights) == pytest.approx(1.0, abs=1e-12)
    for w, e in zip(weights, expected):
        assert w == pytest.approx(e, rel=1e-9, abs=1e-300)
    assert weights.index(max(weights)) == min(max(round(mean), 1), n) - 1


def test_gaussian_weights_survive_a_far_mean():
    """Mean 45 over 2 epochs: the plain densities underflow (0 / 0); the weights are 1 / (1 + e^43.5) and the rest."""
    assert sum(math.exp(-0.5 * (a - 45) ** 2) for a in (1, 2)) == 0.0
    w1, w2 = gaussian_epoch_weights(2, 45, 1)
    assert w1 == pytest.approx(1 / (1 + math.exp(43.5)), rel=1e-12) and w2 == pytest.approx(1.0, abs=1e-15)


def test_aggregate_is_the_weighted_sum_with_the_parameter_names():
    """add(epoch) sums w_e * theta_e per parameter (names and dtypes kept); an epoch added twice counts once; a gap
    is an error; copy_to writes the sum into the module."""
    module = torch.nn.Module()
    module.ctx = torch.nn.Parameter(torch.zeros(2, 3))
    module.deep = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(2, 3)),
                                          torch.nn.Parameter(torch.zeros(1, 4, dtype=torch.float16))])
    weights = [0.2, 0.3, 0.5]
    aggregate = GaussianPromptAggregate(module, weights)
    assert set(aggregate.state_dict()) == {"ctx", "deep.0", "deep.1", "epochs_added"}
    thetas = []
    for epoch in range(3):
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(epoch)).to(p.dtype))
        thetas.append({n: p.detach().clone() for n, p in module.named_parameters()})
        aggregate.add(module, epoch)
        aggregate.add(module, epoch)  # the same epoch again: no change
    assert int(aggregate.epochs_added) == 3
    for name, total in aggregate.weighted_sum().items():
        expected = sum(w * t[name].double() for w, t in zip(weights, thetas))
        assert total.dtype == thetas[0][name].dtype
        tol = 2e-3 if total.dtype == torch.float16 else 1e-6
        torch.testing.assert_close(total.double(), expected, rtol=0, atol=tol)
    aggregate.copy_to(module)
    assert all(torch.equal(p, aggregate.get_buffer(n)) for n, p in module.named_parameters())
    fresh = GaussianPromptAggregate(module, weights)
    with pytest.raises(RuntimeError, match="epochs 1..0 but epoch 2"):
        fresh.add(module, 1)


def test_templates_are_the_references_sixty():
    """The reference's list: "a photo of a {}." first, then OpenAI's templates 1..60 in order (without it)."""
    assert len(PROMPTSRC_TEMPLATES) == len(set(PROMPTSRC_TEMPLATES)) == 60
    assert PROMPTSRC_TEMPLATES[:3] == ("a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.")
    assert PROMPTSRC_TEMPLATES[-1] == "itap of the {}." and "a good photo of a {}." not in PROMPTSRC_TEMPLATES
    assert set(PROMPTSRC_TEMPLATES) == set(IMAGENET_TEMPLATES[:60])


# ---------------------------------------------------------------- the model and the loss
def test_frozen_features_and_logits_equal_clips_own(tmp_path, data_root):
    """Frozen text = normalised mean over the 60 templates of CLIP.encode_text; frozen image = CLIP.encode_image;
    frozen logits = exp(logit_scale) <f, g>; the prompted logits are IVLP's forward."""
    trainer = _trainer(tmp_path, data_root)
    model, names = trainer.model, trainer.dm.dataset.classnames
    clip_model = tiny_clip_fp32("vit")
    images = _images(3)
    with torch.no_grad():
        per_template = [clip_model.encode_text(clip.tokenize([t.format(n.replace("_", " ")) for n in names]).long())
                        for t in PROMPTSRC_TEMPLATES]
        text = l2_normalize(torch.stack(per_template).mean(dim=0))
        image = l2_normalize(clip_model.encode_image(images))
        output = trainer.forward_train(images, torch.zeros(3, dtype=torch.long))
        logits = model(images)
    torch.testing.assert_close(output.frozen_text_features, text, rtol=0, atol=2e-5)
    torch.testing.assert_close(output.frozen_image_features, image, rtol=0, atol=2e-5)
    torch.testing.assert_close(output.frozen_logits, clip_model.logit_scale.exp() * image @ text.t(), rtol=0,
                               atol=1e-3)
    assert torch.equal(output.logits, logits)
    assert (output.image_features - image).abs().max() > 1e-3  # the image prompts change the prompted features


def test_training_loss_is_ce_plus_the_weighted_terms(tmp_path, data_root):
    """compute_loss = CE + TEXT_LOSS_WEIGHT * L1_text + IMAGE_LOSS_WEIGHT * L1_image + LOGIT_LOSS_WEIGHT * KL."""
    trainer = _trainer(tmp_path, data_root, ["TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT", "25.0",
                                             "TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT", "10.0",
                                             "TRAINER.PROMPTSRC.LOGIT_LOSS_WEIGHT", "3.0"])
    labels = torch.tensor([0, 3, 1, 4])
    with torch.no_grad():
        output = trainer.forward_train(_images(4), labels)
        loss = trainer.compute_loss(output, labels).item()
    ce = F.cross_entropy(output.logits.double(), labels).item()
    expected = (ce + 25 * _mean_abs(output.text_features, output.frozen_text_features)
                + 10 * _mean_abs(output.image_features, output.frozen_image_features)
                + 3 * _kl_frozen_to_prompted(output.logits, output.frozen_logits))
    assert loss == pytest.approx(expected, rel=1e-5)
    assert loss - ce > 0.05  # the terms are not negligible here


def _one_step(trainer, state=None) -> dict[str, torch.Tensor]:
    learner = trainer.model.prompt_learner
    if state is not None:
        learner.load_state_dict(state)
    batch = {"img": _images(4, seed=5), "label": torch.tensor([0, 1, 2, 3])}
    trainer.set_model_mode("train")
    trainer.forward_backward(batch)
    return {n: p.detach().clone() for n, p in learner.named_parameters()}


def test_zero_weights_step_is_ivlps(tmp_path, data_root):
    """Weights 0: one SGD step from the same prompts gives IVLP's prompts bit for bit; the reference's weights do
    not.  (IVLP at 4 + 4 tokens, depth 2, the same optimiser; no warm-up so the step is lr 0.1.)"""
    common = ["OPTIM.WARMUP_EPOCH", "0"]
    ivlp = _trainer(tmp_path, data_root, common + ["TRAINER.IVLP.N_CTX_TEXT", "4", "TRAINER.IVLP.N_CTX_VISION", "4"],
                    name="IVLP", config=TINY_IVLP)
    start = {n: p.detach().clone() for n, p in ivlp.model.prompt_learner.state_dict().items()}
    srcs = {w: _trainer(tmp_path / w, data_root, common + (ZERO_WEIGHTS if w == "zero" else []))
            for w in ("zero", "on")}
    expected = _one_step(ivlp)
    zero = _one_step(srcs["zero"], start)
    regulated = _one_step(srcs["on"], start)
    assert expected.keys() == zero.keys() == {"ctx", "visual_ctx", "deep_text_prompts.0", "deep_visual_prompts.0"}
    for name in expected:
        assert not torch.equal(expected[name], start[name]), name  # the step moved every prompt
        assert torch.equal(zero[name], expected[name]), name
    assert any((regulated[n] - expected[n]).abs().max() > 1e-6 for n in expected)


# ---------------------------------------------------------------- Gaussian prompt aggregation in a run
def _prompts(run: str, epoch: int, model: str = "prompt_learner") -> dict[str, torch.Tensor]:
    path = osp.join(run, model, f"model.pth.tar-{epoch}")
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_trained_prompts_are_the_gaussian_average_of_the_epochs(tmp_path, data_root):
    """3 epochs with N(2, 1^2): the last checkpoint (tested and saved) = sum_e w_e theta_e of the per-epoch prompts of
    the same run without aggregation; the gpa/ checkpoint of epoch 2 holds w_1 theta_1 + w_2 theta_2."""
    opts = RANDOM_TINY + ["OPTIM.MAX_EPOCH", "3", "TRAIN.CHECKPOINT_FREQ", "1", "OPTIM.WARMUP_EPOCH", "0",
                          "TRAINER.PROMPTSRC.GPA_MEAN", "2.0", "TRAINER.PROMPTSRC.GPA_STD", "1.0"]
    runs = {gpa: str(tmp_path / gpa) for gpa in ("True", "False")}
    for gpa, run in runs.items():
        assert run_train(train_argv("PromptSRC", TINY, data_root, run,
                                    opts=opts + ["TRAINER.PROMPTSRC.GPA", gpa])) == 0
    weights = _reference_gauss(3, 2.0, 1.0)
    thetas = [_prompts(runs["False"], e) for e in (1, 2, 3)]
    assert not os.path.isdir(osp.join(runs["False"], "gpa"))
    final = _prompts(runs["True"], 3)
    partial = _prompts(runs["True"], 2, "gpa")
    assert int(partial["epochs_added"]) == 2
    for name in thetas[0]:
        expected = sum(w * t[name].double() for w, t in zip(weights, thetas))
        torch.testing.assert_close(final[name].double(), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(partial[name].double(), weights[0] * thetas[0][name].double()
                                   + weights[1] * thetas[1][name].double(), rtol=0, atol=1e-6)
        assert (final[name] - thetas[2][name]).abs().max() > 1e-4  # the average is not the last epoch
        assert torch.equal(_prompts(runs["True"], 2)[name], thetas[1][name])  # same trajectory until the end


# ---------------------------------------------------------------- training on Synthetic
def test_beats_zero_shot_and_eval_only_reloads(data_root, pretrained_tiny_dir, tmp_path, monkeypatch):
    """16 shots of the 5 base classes, the tiny config (20 epochs): above zero-shot CLIP by more than 5 points (3 of
    60 test images); --eval-only on the last checkpoint gives the same accuracy."""
    monkeypatch.setenv("VLPROMPT_PRETRAINED_DIR", pretrained_tiny_dir)
    _, zero_shot = eval_only(build_cfg("ZeroshotCLIP", "configs/trainers/ZeroshotCLIP/tiny_vit.yaml",
                                       str(tmp_path / "zs"), data_root, opts=BASE))
    run = str(tmp_path / "run")
    assert run_train(train_argv("PromptSRC", TINY, data_root, run, opts=BASE)) == 0
    trained = last_accuracy(osp.join(run, "log.txt"))
    assert trained > zero_shot + 5, f"PromptSRC {trained:.1f}% vs zero-shot {zero_shot:.1f}%"
    out = str(tmp_path / "eval")
    argv = train_argv("PromptSRC", TINY, data_root, out, opts=BASE,
                      extra=["--eval-only", "--model-dir", run, "--load-epoch", "20"])
    assert run_train(argv) == 0
    assert last_accuracy(osp.join(out, "log.txt")) == trained


# ---------------------------------------------------------------- errors, dtypes, the reference's checkpoints
@pytest.mark.parametrize("opts, match", [
    (["TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "3"], "PROMPT_DEPTH_TEXT=3 .* 2 layers"),
    (["TRAINER.PROMPTSRC.N_CTX_VISION", "0"], "set both to 0"),
    (["TRAINER.PROMPTSRC.GPA_STD", "0.0"], "GPA_STD=0.0"),
    (["TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT", "-1.0"], "TEXT_LOSS_WEIGHT=-1.0"),
    (["MODEL.BACKBONE.NAME", "tiny-rn", "INPUT.SIZE", "(64, 64)"], "ViT"),
])
def test_config_errors_name_the_key(opts, match, tmp_path, data_root):
    with pytest.raises(ValueError, match=match):
        _trainer(tmp_path, data_root, opts)


def test_reference_half_context_is_aggregated_in_fp16(tmp_path, data_root, monkeypatch):
    """FP32_MASTER_WEIGHTS False under PREC fp16: ctx is an fp16 parameter (the reference's) and its running sum is
    fp16 too; the deeper prompts stay fp32.  fp16 forced on the CPU for the build."""
    from vlprompt.trainers.common import prompt_trainer

    monkeypatch.setattr(prompt_trainer, "resolve_precision", lambda precision, device: precision)
    trainer = _trainer(tmp_path, data_root, ["TRAINER.PROMPTSRC.PREC", "fp16",
                                             "TRAINER.PROMPTSRC.FP32_MASTER_WEIGHTS", "False"])
    trainer.before_train()
    dtypes = {n: b.dtype for n, b in trainer.aggregate.weighted_sum().items()}
    assert dtypes == {n: p.dtype for n, p in trainer.model.prompt_learner.named_parameters()}
    assert {n for n, d in dtypes.items() if d == torch.float16} == {"ctx"}
    assert trainer.get_model_names() == ["prompt_learner", "gpa"]
    trainer.close_writer()


def test_reference_checkpoint_loads(tmp_path, data_root):
    """A reference run folder (VLPromptLearner/, the whole model: frozen CLIP, the frozen image tower kept inside the
    prompt learner, class-name buffers of another class count, fp16 ctx) loads into ours with every prompt kept."""
    trainer = _trainer(tmp_path, data_root)
    g = torch.Generator().manual_seed(1)
    prompts = {"prompt_learner.ctx": torch.randn(4, 128, generator=g).half(),
               "prompt_learner.token_prefix": torch.randn(7, 1, 128, generator=g),
               "prompt_learner.token_suffix": torch.randn(7, 72, 128, generator=g),
               "image_encoder.VPT": torch.randn(4, 128, generator=g),
               "image_encoder.transformer.resblocks.1.VPT_shallow": torch.randn(4, 128, generator=g),
               "text_encoder.transformer.resblocks.1.VPT_shallow": torch.randn(4, 128, generator=g)}
    state = {f"image_encoder.{k}": v for k, v in trainer.model.image_encoder.state_dict().items()}
    frozen_tower = trainer.model.image_encoder.state_dict()  # the reference's ZS_image_encoder is a copy of it
    state.update({f"prompt_learner.ZS_image_encoder.{k}": v for k, v in frozen_tower.items()})
    state.update({f"text_encoder.{k}": v for k, v in trainer.model.text_encoder.state_dict().items()})
    state["logit_scale"] = trainer.model.logit_scale.detach().clone()
    state.update(prompts)
    folder = tmp_path / "reference_run" / "VLPromptLearner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 20}, folder / "model.pth.tar-20")
    trainer.load_model(str(folder.parent), epoch=20)
    loaded = trainer.model.prompt_learner.state_dict()
    expected = {"ctx": prompts["prompt_learner.ctx"].float(), "visual_ctx": prompts["image_encoder.VPT"],
                "deep_visual_prompts.0": prompts["image_encoder.transformer.resblocks.1.VPT_shallow"],
                "deep_text_prompts.0": prompts["text_encoder.transformer.resblocks.1.VPT_shallow"]}
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())


# ---------------------------------------------------------------- configs
# The reference's published values (configs/trainers/PromptSRC/<file>.yaml at bb95c77).
REFERENCE_CONFIGS = {
    "vit_b16_c2_ep20_batch4_4+4ctx": (20, 9, 15, 1),
    "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets": (20, 3, 6, 10),
    "vit_b16_c2_ep50_batch4_4+4ctx_few_shot": (50, 9, 30, 30),
}


@pytest.mark.parametrize("stem", sorted(REFERENCE_CONFIGS))
def test_shipped_configs_equal_the_reference(stem, tmp_path):
    epochs, depth, gpa_mean, gpa_std = REFERENCE_CONFIGS[stem]
    cfg = build_cfg("PromptSRC", f"configs/trainers/PromptSRC/{stem}.yaml", str(tmp_path), str(tmp_path))
    loader = cfg.DATALOADER
    assert (loader.TRAIN_X.BATCH_SIZE, loader.TEST.BATCH_SIZE, loader.NUM_WORKERS) == (4, 100, 8)
    assert (cfg.INPUT.SIZE, cfg.INPUT.INTERPOLATION, list(cfg.INPUT.TRANSFORMS)) == (
        (224, 224), "bicubic", ["random_resized_crop", "random_flip", "normalize"])
    assert (cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.OPTIM.LR_SCHEDULER) == ("sgd", 0.0025, epochs,
                                                                                           "cosine")
    assert (cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_TYPE, cfg.OPTIM.WARMUP_CONS_LR) == (1, "constant", 1e-5)
    assert (cfg.TRAIN.PRINT_FREQ, cfg.MODEL.BACKBONE.NAME) == (20, "ViT-B/16")
    node = cfg.TRAINER.PROMPTSRC
    assert (node.N_CTX_VISION, node.N_CTX_TEXT, node.CTX_INIT, node.PREC) == (4, 4, "a photo of a", "fp16")
    assert (node.PROMPT_DEPTH_VISION, node.PROMPT_DEPTH_TEXT) == (depth, depth)
    assert (node.TEXT_LOSS_WEIGHT, node.IMAGE_LOSS_WEIGHT, node.GPA_MEAN, node.GPA_STD) == (25, 10, gpa_mean, gpa_std)
    assert (node.LOGIT_LOSS_WEIGHT, node.GPA) == (1.0, True)


def test_defaults_equal_the_reference_extend_cfg(tmp_path):
    node = build_cfg("IVLP", TINY_IVLP, str(tmp_path), str(tmp_path)).TRAINER.PROMPTSRC  # the YAML sets only IVLP
    assert (node.N_CTX_VISION, node.N_CTX_TEXT, node.CTX_INIT, node.PREC, node.PROMPT_DEPTH_VISION,
            node.PROMPT_DEPTH_TEXT) == (4, 4, "a photo of a", "fp16", 9, 9)
    assert (node.TEXT_LOSS_WEIGHT, node.IMAGE_LOSS_WEIGHT, node.GPA_MEAN, node.GPA_STD) == (25, 10, 15, 1)


# ---------------------------------------------------------------- scripts
RECORDER = """#!/bin/bash
echo "$*" >> "{record}"
if [ "$1" = train.py ]; then
    while [ $# -gt 0 ]; do
        if [ "$1" = --output-dir ]; then
            mkdir -p "$2"; printf 'Finish training\\n* accuracy: 50.0%%\\n' > "$2/log.txt"
        fi
        shift
    done
fi
"""


def _recorder(tmp_path) -> tuple[str, str]:
    record, python = tmp_path / "calls.txt", tmp_path / "python"
    python.write_text(RECORDER.format(record=record))
    python.chmod(0o755)
    return str(python), str(record)


def _calls(record: str) -> list[list[str]]:
    if not osp.exists(record):
        return []
    return [shlex.split(line) for line in open(record).read().splitlines() if line.startswith("train.py")]


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_base2new_scripts_use_the_reference_config_and_layout(tmp_path):
    """Train then test: the reference's config, its folders, base then new classes, the last saved epoch."""
    python, record = _recorder(tmp_path)
    env = dict(os.environ, PYTHON=python, OUTPUT=str(tmp_path / "out"))
    for script in ("base2new_train.sh", "base2new_test.sh"):
        subprocess.run(["bash", osp.join(REPO_ROOT, "scripts", "promptsrc", script), "dtd", "2"], env=env, check=True,
                       capture_output=True, cwd=str(tmp_path))
    train, test = _calls(record)
    common = "dtd/shots_16/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx/seed2"
    for argv, folder, sub in ((train, "train_base", "base"), (test, "test_new", "new")):
        assert _value(argv, "--config-file") == "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml"
        assert _value(argv, "--output-dir") == str(tmp_path / "out" / "base2new" / folder / common)
        assert (_value(argv, "--trainer"), _value(argv, "--seed")) == ("PromptSRC", "2")
        assert (_value(argv, "DATASET.NUM_SHOTS"), _value(argv, "DATASET.SUBSAMPLE_CLASSES")) == ("16", sub)
    assert _value(test, "--model-dir") == str(tmp_path / "out" / "base2new" / "train_base" / common)
    assert "--eval-only" in test and "--load-epoch" not in test  # no checkpoint pointer: model-best, as CoCoOp's
    usage = subprocess.run(["bash", osp.join(REPO_ROOT, "scripts", "promptsrc", "base2new_test.sh")], env=env,
                           capture_output=True, text=True, cwd=str(tmp_path))
    assert usage.returncode == 1 and "bash scripts/promptsrc/base2new_test.sh DATASET SEED" in usage.stdout


REPRODUCE = osp.join(REPO_ROOT, "scripts", "reproduce", "base2new_prompts.sh")
DATASETS = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
            "sun397", "dtd", "eurosat", "ucf101"]


def test_reproduce_script_runs_six_methods_on_eleven_datasets(tmp_path):
    """Every (method, dataset, seed) once on base and once on new with the method's published config, into one tree
    and one parse_test_res.py --table; a second call trains nothing."""
    python, record = _recorder(tmp_path)
    env = dict(os.environ, PYTHON=python, OUTPUT=str(tmp_path / "out"))
    subprocess.run(["bash", REPRODUCE, str(tmp_path / "data")], env=env, check=True, capture_output=True)
    calls = _calls(record)
    runs = {(_value(a, "--trainer"), _value(a, "--dataset-config-file").split("/")[-1][:-5], _value(a, "--seed"),
             _value(a, "DATASET.SUBSAMPLE_CLASSES")): a for a in calls}
    methods = ["CoOp", "CoCoOp", "MaPLe", "KgCoOp", "PromptSRC", "DPT"]
    assert len(calls) == len(runs) == 6 * 11 * 3 * 2
    assert {k[0] for k in runs} == set(methods) and {k[1] for k in runs} == set(DATASETS)
    configs = {"CoCoOp": "vit_b16_c4_ep10_batch1_ctxv1", "MaPLe": "vit_b16_c2_ep5_batch4_2ctx",
               "KgCoOp": "vit_b16_ep100_ctxv1", "PromptSRC": "vit_b16_c2_ep20_batch4_4+4ctx"}
    for dataset in DATASETS:
        expected = dict(configs, CoOp="vit_b16_ep50_ctxv1" if dataset == "imagenet" else "vit_b16_ctxv1",
                        DPT=f"vit_b16_best_{dataset}")
        for method in methods:
            train, test = runs[method, dataset, "3", "base"], runs[method, dataset, "3", "new"]
            for argv in (train, test):
                assert _value(argv, "--config-file") == f"configs/trainers/{method}/{expected[method]}.yaml"
                assert _value(argv, "DATASET.NUM_SHOTS") == "16"
                assert _value(argv, "--output-dir").startswith(str(tmp_path / "out" / "base2new") + "/")
            assert "--eval-only" in test and _value(test, "--model-dir") == _value(train, "--output-dir")
    last = open(record).read().splitlines()[-1]
    assert last == f"parse_test_res.py {tmp_path / 'out' / 'base2new'} --table"

    os.remove(record)
    subprocess.run(["bash", REPRODUCE, str(tmp_path / "data")], env=dict(env, DATASETS="dtd"), check=True,
                   capture_output=True)
    assert _calls(record) == []


def test_reproduce_script_smoke_trains_promptsrc_on_synthetic(tmp_path, pretrained_tiny_dir):
    """SMOKE=1 with the real python (PromptSRC only, to stay fast): trains on the base classes of Synthetic, tests
    on the new ones and prints the base / new / H row."""
    env = dict(os.environ, SMOKE="1", TRAINERS="PromptSRC", OUTPUT=str(tmp_path / "out"), PYTHON=sys.executable,
               VLPROMPT_PRETRAINED_DIR=pretrained_tiny_dir)
    proc = subprocess.run(["bash", REPRODUCE, str(tmp_path / "data")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in proc.stdout.splitlines()
            if line.startswith("| Synthetic")]
    assert [row[5] for row in rows[:2]] == ["base", "new"], proc.stdout[-2000:]  # the per-run table
    hm = [row for row in rows if row[5] not in ("base", "new")]  # dataset backbone trainer config shots base new H
    assert len(hm) == 1 and hm[0][2] == "PromptSRC" and hm[0][4] == "4" and hm[0][8] == "1/1", hm
    base, new, h = (float(v) for v in hm[0][5:8])
    assert h == pytest.approx(2 * base * new / (base + new), abs=0.01) and min(base, new) > 0

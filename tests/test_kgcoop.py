"""KgCoOp (trainers/kgcoop.py): the loss against its formula, W = 0 against CoOp, training, reloading, files.

- The training loss equals ``CE + W * (1 - mean_c <w_c, w_clip_c>)`` recomputed here from the tiny CLIP's own
  towers (all 77 positions, OpenAI's ``encode_text`` for the hand-written prompts), with a random context so the
  knowledge-guided term is far from 0.
- With ``W = 0`` the context gradient is bit-for-bit CoOp's; with ``W = 8`` it moves by exactly 8 times the
  gradient of the term.
- On the Synthetic base classes with the pre-trained tiny CLIP, KgCoOp beats zero-shot CLIP, keeps its class
  features much nearer the hand-written ones than W = 0 does, and ``--eval-only`` reloads the same accuracy.
- The shipped configs hold the reference's values; the base-to-new scripts write the reference's folder layout.
"""
from __future__ import annotations

import os
import os.path as osp
import subprocess

import pytest
import torch

from helpers import REPO_ROOT, build, build_cfg, eval_only, tiny_clip_fp32, train_and_test
from dassl.engine import TrainerX
from dassl.utils import load_checkpoint
from vlprompt import clip
from vlprompt.trainers.common.prompt_trainer import CheckpointMismatchError
from vlprompt.trainers.kgcoop import hand_crafted_template

TINY_KGCOOP = "configs/trainers/KgCoOp/tiny_vit_ep50_ctxv1.yaml"
TINY_COOP = "configs/trainers/CoOp/tiny_vit_ep50_ctxv1.yaml"
BASE = ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base"]
RANDOM_CTX = ["CTX_INIT", "", "N_CTX", "4"]  # under TRAINER.<NODE>.


def _cfg(trainer: str, config: str, root: str, out: str, *opts: str, backbone: str = "tiny-vit"):
    return build_cfg(trainer, config, out, root, backbone=backbone, opts=BASE + ["OPTIM.MAX_EPOCH", "1", *opts])


def _node_opts(node: str, pairs: list[str]) -> list[str]:
    return [f"TRAINER.{node}.{item}" if i % 2 == 0 else item for i, item in enumerate(pairs)]


def _text_features_from_embeddings(model, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's text tower on already-embedded prompts, all 77 positions, normalised: ``(N, E)``."""
    x = embeddings + model.positional_embedding  # (N, 77, D)
    x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # sequence-first transformer
    x = model.ln_final(x)[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection  # (N, E)
    return x / x.norm(dim=-1, keepdim=True)


def test_loss_equals_its_formula(data_root, tmp_path):
    """Trainer loss = CE(s * z @ w.T, y) + 8 * (1 - mean_c <w_c, w_clip_c>), recomputed from the tiny CLIP."""
    trainer = build(_cfg("KgCoOp", TINY_KGCOOP, data_root, str(tmp_path), *_node_opts("KGCOOP", RANDOM_CTX)))
    batch = next(iter(trainer.train_loader_x))
    image, label = trainer.parse_batch_train(batch)
    loss = trainer.compute_loss(trainer.forward_train(image, label), label)

    reference = tiny_clip_fp32()  # the same seeded weights that "tiny-vit" loads
    ctx = trainer.model.prompt_learner.ctx.detach()  # (4, D)
    names = [name.replace("_", " ") for name in trainer.dm.dataset.classnames]
    with torch.no_grad():
        tokens = clip.tokenize([f"X X X X {name}." for name in names]).long()  # (C, 77)
        embeddings = reference.token_embedding(tokens)
        embeddings[:, 1:5] = ctx  # the learned context replaces the four X tokens after SOT
        w = _text_features_from_embeddings(reference, embeddings, tokens)  # (C, E)
        w_clip = reference.encode_text(clip.tokenize([f"a photo of a {name}." for name in names]).long())
        w_clip = w_clip / w_clip.norm(dim=-1, keepdim=True)  # (C, E)
        z = reference.encode_image(image)
        z = z / z.norm(dim=-1, keepdim=True)  # (B, E)
        logits = reference.logit_scale.exp() * z @ w.t()  # (B, C)
        ce = -logits.log_softmax(dim=-1)[torch.arange(len(label)), label].mean()
        kg = 1.0 - (w * w_clip).sum(dim=-1).mean()
    assert kg > 0.05, f"random context should be far from the hand-written prompt (kg={kg:.4f})"
    torch.testing.assert_close(trainer.model.clip_text_features, w_clip, rtol=0, atol=1e-5)
    torch.testing.assert_close(loss.detach(), ce + 8.0 * kg, rtol=1e-5, atol=1e-5)


def _ctx_grad(trainer, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    ctx = trainer.model.prompt_learner.ctx
    ctx.grad = None
    trainer.compute_loss(trainer.forward_train(image, label), label).backward()
    return ctx.grad.clone()


def test_zero_weight_gives_coops_gradient(data_root, tmp_path):
    """W = 0: the ctx gradient equals CoOp's bit for bit; W = 8 adds exactly 8 x the gradient of L_kg."""
    coop = build(_cfg("CoOp", TINY_COOP, data_root, str(tmp_path / "coop"), *_node_opts("COOP", RANDOM_CTX)))
    kg_runs = {w: build(_cfg("KgCoOp", TINY_KGCOOP, data_root, str(tmp_path / w),
                             *_node_opts("KGCOOP", RANDOM_CTX + ["W", w]))) for w in ("0.0", "8.0")}
    image, label = coop.parse_batch_train(next(iter(coop.train_loader_x)))
    for trainer in kg_runs.values():
        with torch.no_grad():
            trainer.model.prompt_learner.ctx.copy_(coop.model.prompt_learner.ctx)
    grad_coop = _ctx_grad(coop, image, label)
    grad_w0 = _ctx_grad(kg_runs["0.0"], image, label)
    grad_w8 = _ctx_grad(kg_runs["8.0"], image, label)
    assert torch.equal(grad_w0, grad_coop)

    model = kg_runs["8.0"].model
    model.prompt_learner.ctx.grad = None
    w = model.encode_text()  # (C, E), normalised
    (1.0 - (w * model.clip_text_features).sum(dim=-1).mean()).backward()
    grad_kg = model.prompt_learner.ctx.grad
    assert grad_kg.abs().max() > 1e-3 * grad_coop.abs().max()  # the term does pull on the context
    # Float rounding (~2e-6 of the largest CE gradient here, 28) is all that separates the two sides.
    scale = grad_coop.abs().max().item()
    torch.testing.assert_close(grad_w8 - grad_coop, 8.0 * grad_kg, rtol=0, atol=1e-5 * scale)


def _kg_distance(trainer) -> float:
    with torch.no_grad():
        w = trainer.model.encode_text()
        return (1.0 - (w * trainer.model.clip_text_features).sum(dim=-1).mean()).item()


def test_trains_above_zero_shot_stays_near_clip_and_reloads(data_root, pretrained_tiny_dir, tmp_path, monkeypatch):
    """Pre-trained tiny CLIP, 16 shots of the base classes, 10 epochs: KgCoOp > zero-shot, nearer CLIP than W=0,
    and --eval-only from the epoch-10 checkpoint (ctx only) gives the same accuracy."""
    monkeypatch.setenv("VLPROMPT_PRETRAINED_DIR", pretrained_tiny_dir)
    epochs = ["OPTIM.MAX_EPOCH", "10"]
    _, zero_shot = eval_only(build_cfg("ZeroshotCLIP", "configs/trainers/ZeroshotCLIP/tiny_vit.yaml",
                                       str(tmp_path / "zs"), data_root, opts=BASE))
    run = str(tmp_path / "kgcoop")
    trainer, accuracy = train_and_test(build_cfg("KgCoOp", TINY_KGCOOP, run, data_root, opts=BASE + epochs))
    coop_like, _ = train_and_test(build_cfg("KgCoOp", TINY_KGCOOP, str(tmp_path / "w0"), data_root,
                                            opts=BASE + epochs + ["TRAINER.KGCOOP.W", "0.0"]))
    assert zero_shot >= 30.0, f"zero-shot {zero_shot:.1f}% is not clearly above chance (20%)"
    assert accuracy > zero_shot, f"KgCoOp {accuracy:.1f}% <= zero-shot {zero_shot:.1f}%"
    distance, distance_w0 = _kg_distance(trainer), _kg_distance(coop_like)
    assert distance < distance_w0 / 5, f"L_kg {distance:.4f} with W=8 vs {distance_w0:.4f} with W=0"

    checkpoint = load_checkpoint(osp.join(run, "prompt_learner", "model.pth.tar-10"))
    assert list(checkpoint["state_dict"]) == ["ctx"]
    reloaded, again = eval_only(build_cfg("KgCoOp", TINY_KGCOOP, str(tmp_path / "eval"), data_root,
                                          opts=BASE + epochs), run, 10)
    assert torch.equal(reloaded.model.prompt_learner.ctx, trainer.model.prompt_learner.ctx)
    assert again == accuracy


def test_cached_evaluation_equals_the_image_loop(data_root, tmp_path):
    """EVAL_FROM_IMAGE_FEATURES: predictions from cached image features equal Dassl's image-by-image loop."""
    cache_dir = str(tmp_path / "cache")
    trainer = build(_cfg("KgCoOp", TINY_KGCOOP, data_root, str(tmp_path / "run"), *_node_opts("KGCOOP", RANDOM_CTX),
                         "DATALOADER.TEST.BATCH_SIZE", "7", "TEST.FEATURE_CACHE.DIR", cache_dir))
    cached = trainer.test()
    cached_pred = list(trainer.evaluator._y_pred)
    loop = TrainerX.test(trainer)
    assert len(os.listdir(cache_dir)) == 1 and len(cached_pred) == len(trainer.dm.dataset.test)
    assert (cached, cached_pred) == (loop, list(trainer.evaluator._y_pred))


def test_reference_checkpoint_keys_load_and_others_fail(data_root, tmp_path):
    """The reference's prompt-learner state (ctx, class-name buffers, unused bias_vectors and meta_net.linear1)
    loads into ctx; CoCoOp's (meta_net.linear2 as well) is still refused."""
    trainer = build(_cfg("KgCoOp", TINY_KGCOOP, data_root, str(tmp_path / "run")))
    ctx = torch.randn_like(trainer.model.prompt_learner.ctx)
    folder = tmp_path / "ckpt" / "prompt_learner"
    folder.mkdir(parents=True)
    reference_style = {"ctx": ctx.half(), "bias_vectors": torch.zeros(1, 512), "token_prefix": torch.zeros(5, 1, 128),
                       "token_suffix": torch.zeros(5, 72, 128), "meta_net.linear1.weight": torch.zeros(512, 512),
                       "meta_net.linear1.bias": torch.zeros(512)}
    torch.save({"state_dict": reference_style, "epoch": 100}, folder / "model.pth.tar-100")
    trainer.load_model(str(tmp_path / "ckpt"), epoch=100)
    assert torch.equal(trainer.model.prompt_learner.ctx, ctx.half().float())
    cocoop_style = dict(reference_style, **{"meta_net.linear2.weight": torch.zeros(512, 32)})
    torch.save({"state_dict": cocoop_style, "epoch": 101}, folder / "model.pth.tar-101")
    with pytest.raises(CheckpointMismatchError, match=r"unexpected \['meta_net.linear2.weight'\]"):
        trainer.load_model(str(tmp_path / "ckpt"), epoch=101)


def test_hand_crafted_template_and_its_switch(data_root, tmp_path):
    """KgCoOp's DTD prompt differs from CoOp's; others are the dataset's; TRAINER.KGCOOP.TEMPLATE overrides."""
    assert hand_crafted_template("DescribableTextures") == "a photo of a {}, a type of texture."
    assert hand_crafted_template("OxfordFlowers") == "a photo of a {}, a type of flower."
    assert hand_crafted_template("EuroSAT") == "a centered satellite photo of {}."
    assert hand_crafted_template("UCF101") == "a photo of a person doing {}."
    trainer = build(_cfg("KgCoOp", TINY_KGCOOP, data_root, str(tmp_path),
                         "TRAINER.KGCOOP.TEMPLATE", "a drawing of {}."))
    names = [name.replace("_", " ") for name in trainer.dm.dataset.classnames]
    with torch.no_grad():
        expected = tiny_clip_fp32().encode_text(clip.tokenize([f"a drawing of {n}." for n in names]).long())
    torch.testing.assert_close(trainer.model.clip_text_features, expected / expected.norm(dim=-1, keepdim=True),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("opts, match", [
    (["TRAINER.KGCOOP.W", "-1.0"], "TRAINER.KGCOOP.W=-1.0"),
    (["TRAINER.KGCOOP.TEMPLATE", "a photo"], "TRAINER.KGCOOP.TEMPLATE='a photo'"),
    (["TRAINER.KGCOOP.PREC", "bf32"], "TRAINER.KGCOOP.PREC='bf32'"),
    (["TRAINER.KGCOOP.CLASS_TOKEN_POSITION", "left"], "TRAINER.KGCOOP.CLASS_TOKEN_POSITION='left'"),
    (["TRAINER.KGCOOP.CTX_INIT", "", "TRAINER.KGCOOP.N_CTX", "0"], "TRAINER.KGCOOP.N_CTX=0"),
])
def test_check_cfg_errors_name_the_key(data_root, tmp_path, opts, match):
    """Bad keys fail in check_cfg, before CLIP loads, with one line naming the key."""
    with pytest.raises(ValueError, match=match):
        build(_cfg("KgCoOp", TINY_KGCOOP, data_root, str(tmp_path), *opts))


@pytest.mark.parametrize("name, backbone", [("vit_b16_ep100_ctxv1", "ViT-B/16"), ("rn50_ep100", "RN50")])
def test_shipped_configs_hold_the_references_values(tmp_path, name, backbone):
    """htyao89/KgCoOp's two YAMLs: batch 128 (test 100), SGD 0.002, 100 epochs, cosine after one constant
    warm-up epoch at 1e-5, 224 px, "a photo of a" (its CTX_INIT True), and lambda 8.0 (its scripts')."""
    cfg = build_cfg("KgCoOp", f"configs/trainers/KgCoOp/{name}.yaml", str(tmp_path), str(tmp_path))
    assert cfg.MODEL.BACKBONE.NAME == backbone
    loader = cfg.DATALOADER
    assert (loader.TRAIN_X.BATCH_SIZE, loader.TEST.BATCH_SIZE, loader.NUM_WORKERS) == (128, 100, 8)
    assert (cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.OPTIM.LR_SCHEDULER) == ("sgd", 0.002, 100, "cosine")
    assert (cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_TYPE, cfg.OPTIM.WARMUP_CONS_LR) == (1, "constant", 1e-5)
    assert cfg.INPUT.SIZE == (224, 224) and cfg.INPUT.INTERPOLATION == "bicubic" and cfg.TRAIN.PRINT_FREQ == 5
    assert list(cfg.INPUT.TRANSFORMS) == ["random_resized_crop", "random_flip", "normalize"]
    node = cfg.TRAINER.KGCOOP
    assert (node.CTX_INIT, node.W, node.PREC, node.CSC, node.CLASS_TOKEN_POSITION) == ("a photo of a", 8.0, "fp16",
                                                                                      False, "end")


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python: records train.py's arguments and leaves what a finished run leaves in --output-dir.
printf '%s\\n' "$@" > "$HOME/argv-$#-$RANDOM"
while [ $# -gt 0 ]; do if [ "$1" = --output-dir ]; then out=$2; fi; shift; done
mkdir -p "$out/prompt_learner"
echo model.pth.tar-7 > "$out/prompt_learner/checkpoint"
echo '* accuracy: 50.0%' > "$out/log.txt"
"""


def _run_script(script: str, *args: str, env: dict) -> list[str]:
    """Run scripts/kgcoop/<script> from $HOME; the arguments it gave train.py (none when it skipped)."""
    home = env["HOME"]
    before = set(os.listdir(home))
    result = subprocess.run(["bash", osp.join(REPO_ROOT, "scripts", "kgcoop", script), *args], capture_output=True,
                            text=True, env=env, cwd=home, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    calls = [name for name in set(os.listdir(home)) - before if name.startswith("argv-")]
    assert len(calls) <= 1, calls
    return open(osp.join(home, calls[0])).read().splitlines() if calls else []


def _value(argv: list[str], key: str) -> str:
    return argv[argv.index(key) + 1]


def test_base2new_scripts_pass_the_references_settings_and_layout(tmp_path):
    """train on base / test on new (run from another folder, python stubbed): the reference's shots_<S>_<W>
    folders, W and the base/new halves reach train.py, the test loads the last saved epoch, a re-run skips."""
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = dict(os.environ, HOME=str(tmp_path), DATA="data", OUTPUT="out", PYTHON=str(fake), W="4.0", SHOTS="2")
    exp = osp.join("synthetic", "shots_2_4.0", "KgCoOp", "vit_b16_ep100_ctxv1", "seed3")
    train_dir = osp.join(str(tmp_path), "out", "base2new", "train_base", exp)

    train = _run_script("base2new_train.sh", "synthetic", "3", "OPTIM.MAX_EPOCH", "7", env=env)
    assert _value(train, "--output-dir") == train_dir and _value(train, "--seed") == "3"
    assert _value(train, "--root") == osp.join(str(tmp_path), "data")
    assert _value(train, "--config-file") == "configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml"
    assert _value(train, "--trainer") == "KgCoOp" and "--eval-only" not in train
    assert _value(train, "TRAINER.KGCOOP.W") == "4.0" and _value(train, "DATASET.SUBSAMPLE_CLASSES") == "base"
    assert _value(train, "DATASET.NUM_SHOTS") == "2" and train[-2:] == ["OPTIM.MAX_EPOCH", "7"]

    test = _run_script("base2new_test.sh", "synthetic", "3", env=env)
    assert _value(test, "--model-dir") == train_dir and _value(test, "--load-epoch") == "7" and "--eval-only" in test
    assert _value(test, "--output-dir") == osp.join(str(tmp_path), "out", "base2new", "test_new", exp)
    assert _value(test, "DATASET.SUBSAMPLE_CLASSES") == "new"
    assert _run_script("base2new_test.sh", "synthetic", "3", env=env) == []  # results exist: skipped
    assert _run_script("base2new_train.sh", "synthetic", "3", env=env) == []

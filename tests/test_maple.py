"""MaPLe, IVLP and VPT (trainers/maple/): the coupling formula, the prompts each learner gives the towers, the
reference's checkpoint layout, the shipped configs and scripts, and training on Synthetic.

The model's logits are recomputed through CLIP's own prompt interface ("of a {name}." with the context inserted
after SOT, the image prompts appended), i.e. another code path than the class-prompt template.  Reference facts:
muzairkhattak/multimodal-prompt-learning@69bce21 (``trainers/maple.py``, ``independentVL.py``, ``vpt.py``,
``configs/trainers/*``, ``train.py``'s ``extend_cfg``).
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import subprocess

import pytest
import torch

from helpers import REPO_ROOT, build, build_cfg, eval_only, last_accuracy, run_train, tiny_clip_fp32, train_argv
from dassl.engine.checkpoints import CheckpointMismatchError
from vlprompt import clip
from vlprompt.clip.model import CLIP
from vlprompt.clip.tiny import TINY_CONFIGS
from vlprompt.trainers.common.custom_clip import l2_normalize
from vlprompt.trainers.common.text_encoder import TextEncoder
from vlprompt.trainers.maple import (DeepPromptCLIP, IVLPPromptLearner, MaPLePromptLearner, PromptSet,
                                     from_reference_layout)

CLASSNAMES = ["red circle", "green square", "blue_triangle"]
TINY = {"MaPLe": "configs/trainers/MaPLe/tiny_vit_c2_ep20_batch8_2ctx.yaml",
        "IVLP": "configs/trainers/IVLP/tiny_vit_c2_ep20_batch8_2+2ctx.yaml",
        "VPT": "configs/trainers/VPT/tiny_vit_ep20_batch8_4ctx.yaml"}
RANDOM_TINY = ["MODEL.BACKBONE.NAME", "tiny-vit", "DATASET.NUM_SHOTS", "2"]
BASE = ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base"]


@pytest.fixture(scope="module")
def deep_clip() -> CLIP:
    """A random 4-layer tiny CLIP (depth up to 4 in both towers), fp32, eval mode."""
    torch.manual_seed(0)
    return CLIP(**dict(TINY_CONFIGS["vit"], vision_layers=4, transformer_layers=4)).float().eval()


def _images(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- MaPLe's coupling and prompts
def test_coupling_function_equals_its_formula(deep_clip):
    """V_0 = ctx W_0^T + b_0 and V_k = P_k W_k^T + b_k; the text prompts are ctx and P_k; init as the reference."""
    torch.manual_seed(1)
    learner = MaPLePromptLearner(CLASSNAMES, deep_clip, n_ctx=2, depth=4)
    with torch.no_grad():
        for p in learner.compound_prompt_projections.parameters():  # break the equal init to test each map
            p.add_(torch.randn_like(p) * 0.1)
        prompts = learner()
    w, b = learner.proj.weight, learner.proj.bias
    torch.testing.assert_close(prompts.visual, learner.ctx @ w.t() + b, rtol=0, atol=1e-6)
    assert len(prompts.deep_visual) == len(prompts.deep_text) == 3
    for k, (text, visual) in enumerate(zip(prompts.deep_text, prompts.deep_visual)):
        layer = learner.compound_prompt_projections[k]
        assert text is learner.compound_prompts_text[k]
        torch.testing.assert_close(visual, text @ layer.weight.t() + layer.bias, rtol=0, atol=1e-6)
        assert visual.shape == (2, deep_clip.visual.conv1.out_channels)


def test_maple_init_follows_the_reference(deep_clip):
    """ctx = embedding of "a photo" (of "a photo of a"), the prompts read "[SOT] ctx of a {name}.", deep text prompts
    ~ N(0, 0.02^2), and every deeper projection starts from the same weights (deep copies of one layer)."""
    torch.manual_seed(2)
    learner = MaPLePromptLearner(CLASSNAMES, deep_clip, n_ctx=2, depth=4)
    phrase = deep_clip.token_embedding(clip.tokenize("a photo of a"))[0]
    assert torch.equal(learner.ctx.detach(), phrase[1:3])
    text = learner.class_prompts()
    expected = deep_clip.token_embedding(clip.tokenize([f"a photo of a {n.replace('_', ' ')}." for n in CLASSNAMES]))
    assert torch.equal(text[:, 1:3], learner.ctx.detach().expand(3, -1, -1))
    assert torch.equal(text[:, :1], expected[:, :1]) and torch.equal(text[:, 3:], expected[:, 3:])
    first = learner.compound_prompt_projections[0]
    for layer in learner.compound_prompt_projections[1:]:
        assert torch.equal(layer.weight, first.weight) and torch.equal(layer.bias, first.bias)
    stds = [float(p.detach().std()) for p in learner.compound_prompts_text]
    assert all(0.01 < s < 0.04 for s in stds), stds


@pytest.mark.parametrize("learner_kind", ["maple", "ivlp"])
def test_model_equals_clip_prompt_interface(deep_clip, learner_kind):
    """DeepPromptCLIP's logits = 100 * <image, text> with CLIP.encode_image/encode_text given the same prompts,
    the text as "of a {name}." with the context inserted after SOT (another path than the class template)."""
    torch.manual_seed(3)
    if learner_kind == "maple":
        learner = MaPLePromptLearner(CLASSNAMES, deep_clip, n_ctx=2, depth=3)
    else:
        learner = IVLPPromptLearner(CLASSNAMES, deep_clip, n_ctx_text=2, text_depth=4, n_ctx_vision=3,
                                    vision_depth=2)
    model = DeepPromptCLIP(learner, TextEncoder(deep_clip), deep_clip).eval()
    images = _images(4)
    with torch.no_grad():
        prompts = learner()
        logits = model(images)
        rest = clip.tokenize([f"of a {n.replace('_', ' ')}." for n in CLASSNAMES]).long()
        text = deep_clip.encode_text(rest, prompt_tokens=learner.ctx, deep_prompts=prompts.deep_text)
        image = deep_clip.encode_image(images, prompt_tokens=prompts.visual, deep_prompts=prompts.deep_visual)
        expected = deep_clip.logit_scale.exp() * l2_normalize(image) @ l2_normalize(text).t()
        with model.reuse_prompts():
            reused = model(images)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(reused, logits)


def test_reuse_prompts_calls_the_learner_once(deep_clip):
    """Inside reuse_prompts() the learner runs once for any number of batches; outside, once per forward."""
    learner = MaPLePromptLearner(CLASSNAMES, deep_clip, n_ctx=2, depth=2)
    model = DeepPromptCLIP(learner, TextEncoder(deep_clip), deep_clip).eval()
    calls = []
    learner.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        with model.reuse_prompts():
            for _ in range(3):
                model(_images(2))
        assert len(calls) == 1
        model(_images(2))
    assert len(calls) == 2


def test_rounded_prompts_keep_the_text_context():
    """ROUND_PROMPTS_TO_FP16: every prompt but the text one is rounded to fp16 values, dtypes kept."""
    values = torch.tensor([[1.0 + 2 ** -20, 0.1]])
    prompts = PromptSet(text=values.clone(), deep_text=(values,), visual=values, deep_visual=(values, values))
    rounded = prompts.rounded_to_fp16()
    assert torch.equal(rounded.text, values)
    for tensor in (rounded.visual, *rounded.deep_text, *rounded.deep_visual):
        assert tensor.dtype == torch.float32 and torch.equal(tensor, values.half().float())
    assert not torch.equal(values.half().float(), values)  # the rounding is visible


# ---------------------------------------------------------------- trainers: parameters, towers, errors
def _trainer(name: str, tmp_path, data_root, opts=()):
    return build(build_cfg(name, TINY[name], str(tmp_path / name), data_root, opts=RANDOM_TINY + list(opts)))


@pytest.mark.parametrize("name", ["MaPLe", "IVLP", "VPT"])
def test_only_the_prompts_are_trained(name, tmp_path, data_root):
    """Trainable = exactly the prompt parameters (tiny widths D = W = 128, depth 2), all in prompt_learner."""
    trainer = _trainer(name, tmp_path, data_root)
    width = 128
    expected = {"MaPLe": 2 * width + 2 * (width * width + width) + 2 * width,  # ctx, proj + 1 projection, 1 prompt
                "IVLP": 2 * width * 2 + 2 * width * 2,  # text and image: 2 tokens x depth 2
                "VPT": 4 * width * 2}[name]
    trainable = {n: p.numel() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == expected, trainable
    assert all(n.startswith("prompt_learner.") for n in trainable)
    assert trainer.get_model_names() == ["prompt_learner"]


def test_ivlp_language_only_leaves_the_image_tower_plain(tmp_path, data_root):
    """The reference's language-only config (N_CTX_VISION 0, depth 0): image features equal plain CLIP's exactly."""
    trainer = _trainer("IVLP", tmp_path, data_root, ["TRAINER.IVLP.N_CTX_VISION", "0",
                                                     "TRAINER.IVLP.PROMPT_DEPTH_VISION", "0"])
    model, images = trainer.model, _images(3)
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), l2_normalize(model.image_encoder(images)))
    assert model.prompt_learner.visual_ctx is None and len(model.prompt_learner.deep_visual_prompts) == 0


def test_vpt_text_is_the_hand_written_prompt(tmp_path, data_root):
    """VPT's class features are CLIP's, fixed, for "a photo of a {name}."; the image prompts change the logits."""
    trainer = _trainer("VPT", tmp_path, data_root)
    model = trainer.model
    names = trainer.dm.dataset.classnames
    clip_model = tiny_clip_fp32("vit")
    with torch.no_grad():
        expected = l2_normalize(clip_model.encode_text(clip.tokenize([f"a photo of a {n}." for n in names]).long()))
        features = model.current_prompts()[1]
        prompted = model.encode_image(_images(2))
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    assert (prompted - l2_normalize(clip_model.encode_image(_images(2)))).abs().max() > 1e-4


@pytest.mark.parametrize("name, opts, match", [
    ("MaPLe", ["MODEL.BACKBONE.NAME", "tiny-rn", "INPUT.SIZE", "(64, 64)"], "ViT"),
    ("VPT", ["MODEL.BACKBONE.NAME", "tiny-rn", "INPUT.SIZE", "(64, 64)"], "ViT"),
    ("MaPLe", ["TRAINER.MAPLE.PROMPT_DEPTH", "3"], "PROMPT_DEPTH=3 .* 2 layers"),
    ("IVLP", ["TRAINER.IVLP.PROMPT_DEPTH_TEXT", "3"], "PROMPT_DEPTH_TEXT=3 .* 2 layers"),
    ("IVLP", ["TRAINER.IVLP.N_CTX_VISION", "0"], "set both to 0"),
    ("VPT", ["TRAINER.VPT.PROMPT_DEPTH_VISION", "0"], "PROMPT_DEPTH_VISION=0"),
])
def test_config_errors_name_the_key(name, opts, match, tmp_path, data_root):
    with pytest.raises(ValueError, match=match):
        _trainer(name, tmp_path, data_root, opts)


def test_ivlp_language_only_runs_on_a_resnet(tmp_path, data_root):
    """Without image prompts IVLP needs no ViT (as in the reference)."""
    trainer = _trainer("IVLP", tmp_path, data_root, ["MODEL.BACKBONE.NAME", "tiny-rn", "INPUT.SIZE", "(64, 64)",
                                                     "TRAINER.IVLP.N_CTX_VISION", "0",
                                                     "TRAINER.IVLP.PROMPT_DEPTH_VISION", "0"])
    with torch.no_grad():
        assert trainer.model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_reference_half_parameters_under_fp16(tmp_path, data_root, monkeypatch):
    """FP32_MASTER_WEIGHTS False under PREC fp16: MaPLe's ctx and layer-0 projection are fp16 parameters, the deeper
    prompts stay fp32 (the reference's dtypes); True keeps them all fp32.  fp16 forced on the CPU for the build."""
    from vlprompt.trainers.common import prompt_trainer

    monkeypatch.setattr(prompt_trainer, "resolve_precision", lambda precision, device: precision)
    dtypes = {}
    for master in ("False", "True"):
        trainer = _trainer("MaPLe", tmp_path / master, data_root, ["TRAINER.MAPLE.PREC", "fp16",
                                                                   "TRAINER.MAPLE.FP32_MASTER_WEIGHTS", master])
        dtypes[master] = {n: p.dtype for n, p in trainer.model.prompt_learner.named_parameters()}
    half = {"ctx", "proj.weight", "proj.bias"}
    assert {n for n, d in dtypes["False"].items() if d == torch.float16} == half
    assert set(dtypes["True"].values()) == {torch.float32}


# ---------------------------------------------------------------- the reference's checkpoints
def _reference_state_dict(trainer, prompts: dict) -> dict:
    """A reference-style checkpoint state dict: the whole CustomCLIP (frozen CLIP included) plus ``prompts``."""
    state = {f"image_encoder.{k}": v for k, v in trainer.model.image_encoder.state_dict().items()}
    state.update({f"text_encoder.{k}": v for k, v in trainer.model.text_encoder.state_dict().items()})
    state["logit_scale"] = trainer.model.logit_scale.detach().clone()
    state.update(prompts)
    return state


def _save(folder, state_dict, epoch: int = 5) -> None:
    os.makedirs(folder, exist_ok=True)
    torch.save({"state_dict": state_dict, "epoch": epoch}, osp.join(folder, f"model.pth.tar-{epoch}"))


def _randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_reference_maple_checkpoint_loads(tmp_path, data_root):
    """A reference MaPLe run folder (MultiModalPromptLearner/, whole-model state dict, fp16 ctx and proj as under its
    PREC fp16, class-name buffers of another class count) loads into ours with every prompt value kept."""
    trainer = _trainer("MaPLe", tmp_path, data_root)
    prompts = {"prompt_learner.ctx": _randn(2, 128, dtype=torch.float16, seed=1),
               "prompt_learner.proj.weight": _randn(128, 128, dtype=torch.float16, seed=2),
               "prompt_learner.proj.bias": _randn(128, dtype=torch.float16, seed=3),
               "prompt_learner.compound_prompts_text.0": _randn(2, 128, seed=4),
               "prompt_learner.compound_prompt_projections.0.weight": _randn(128, 128, seed=5),
               "prompt_learner.compound_prompt_projections.0.bias": _randn(128, seed=6),
               "prompt_learner.token_prefix": _randn(7, 1, 128), "prompt_learner.token_suffix": _randn(7, 74, 128)}
    run = tmp_path / "reference_run"
    _save(run / "MultiModalPromptLearner", _reference_state_dict(trainer, prompts))
    trainer.load_model(str(run), epoch=5)
    loaded = trainer.model.prompt_learner.state_dict()
    assert set(loaded) == {k[len("prompt_learner."):] for k in prompts} - {"token_prefix", "token_suffix"}
    for key, value in prompts.items():
        if "token_" not in key:
            assert torch.equal(loaded[key[len("prompt_learner."):]], value.float()), key

    deeper = dict(prompts, **{"prompt_learner.compound_prompts_text.1": _randn(2, 128)})  # depth 3 into depth 2
    _save(tmp_path / "deeper" / "prompt_learner", _reference_state_dict(trainer, deeper))
    with pytest.raises(CheckpointMismatchError, match="compound_prompts_text.1"):
        trainer.load_model(str(tmp_path / "deeper"), epoch=5)


@pytest.mark.parametrize("name, folder", [("IVLP", "VLPromptLearner"), ("VPT", "prompt_learner")])
def test_reference_ivlp_and_vpt_checkpoints_load(name, folder, tmp_path, data_root):
    """IVLP / VPT keep their prompts in CLIP's blocks (``VPT``, ``resblocks.<i>.VPT_shallow``): mapped to ours."""
    trainer = _trainer(name, tmp_path, data_root)
    n_vision = 2 if name == "IVLP" else 4
    prompts = {"image_encoder.VPT": _randn(n_vision, 128, seed=1),
               "image_encoder.transformer.resblocks.1.VPT_shallow": _randn(n_vision, 128, seed=2)}
    expected = {"visual_ctx": prompts["image_encoder.VPT"],
                "deep_visual_prompts.0": prompts["image_encoder.transformer.resblocks.1.VPT_shallow"]}
    if name == "IVLP":
        prompts.update({"prompt_learner.ctx": _randn(2, 128, dtype=torch.float16, seed=3),
                        "text_encoder.transformer.resblocks.1.VPT_shallow": _randn(2, 128, seed=4),
                        "prompt_learner.token_prefix": _randn(4, 1, 128)})
        expected.update({"ctx": prompts["prompt_learner.ctx"].float(),
                         "deep_text_prompts.0": prompts["text_encoder.transformer.resblocks.1.VPT_shallow"]})
    state = _reference_state_dict(trainer, prompts)
    assert from_reference_layout(state).keys() == expected.keys() | ({"token_prefix"} if name == "IVLP" else set())
    _save(tmp_path / "run" / folder, state)
    trainer.load_model(str(tmp_path / "run"), epoch=5)
    loaded = trainer.model.prompt_learner.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


# ---------------------------------------------------------------- configs and scripts
COMMON_CONFIG = {"DATALOADER.TRAIN_X.BATCH_SIZE": 4, "DATALOADER.TEST.BATCH_SIZE": 100, "DATALOADER.NUM_WORKERS": 8,
                 "INPUT.SIZE": (224, 224), "INPUT.INTERPOLATION": "bicubic",
                 "INPUT.TRANSFORMS": ["random_resized_crop", "random_flip", "normalize"], "OPTIM.NAME": "sgd",
                 "OPTIM.LR_SCHEDULER": "cosine", "OPTIM.WARMUP_EPOCH": 1, "OPTIM.WARMUP_TYPE": "constant",
                 "OPTIM.WARMUP_CONS_LR": 1e-5, "TRAIN.PRINT_FREQ": 20, "MODEL.BACKBONE.NAME": "ViT-B/16"}
# The reference's published values (configs/trainers/<trainer>/<file>.yaml at 69bce21).
REFERENCE_CONFIGS = {
    ("MaPLe", "vit_b16_c2_ep5_batch4_2ctx"): (0.0035, 5, dict(N_CTX=2, PROMPT_DEPTH=9)),
    ("MaPLe", "vit_b16_c2_ep5_batch4_2ctx_cross_datasets"): (0.0026, 2, dict(N_CTX=2, PROMPT_DEPTH=3)),
    ("IVLP", "vit_b16_c2_ep5_batch4_2+2ctx"): (0.0035, 5, dict(N_CTX_VISION=2, N_CTX_TEXT=2, PROMPT_DEPTH_VISION=12,
                                                               PROMPT_DEPTH_TEXT=12)),
    ("IVLP", "vit_b16_c2_ep5_batch4_4ctx_language_only"): (0.0025, 5, dict(N_CTX_VISION=0, N_CTX_TEXT=4,
                                                                           PROMPT_DEPTH_VISION=0, PROMPT_DEPTH_TEXT=12)),
    ("VPT", "vit_b16_c2_ep5_batch4_4"): (0.0025, 5, dict(N_CTX_VISION=8, PROMPT_DEPTH_VISION=12)),
}


@pytest.mark.parametrize("trainer, stem", sorted(REFERENCE_CONFIGS))
def test_shipped_configs_equal_the_reference(trainer, stem, tmp_path):
    lr, epochs, keys = REFERENCE_CONFIGS[(trainer, stem)]
    cfg = build_cfg(trainer, f"configs/trainers/{trainer}/{stem}.yaml", str(tmp_path), str(tmp_path))
    for key, value in COMMON_CONFIG.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert (list(node) if isinstance(value, list) else node) == value, key
    assert (cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH) == (lr, epochs)
    node = cfg.TRAINER[trainer.upper()]
    assert {k: node[k] for k in keys} == keys
    assert (node.CTX_INIT, node.PREC) == ("a photo of a", "fp16")


def test_defaults_equal_the_reference_extend_cfg(tmp_path):
    """train.py's extend_cfg of the reference: MAPLE 2/9, IVLP 2+2 at depth 9/9, VPT 2 at depth 1, all fp16."""
    node = build_cfg("MaPLe", TINY["MaPLe"], str(tmp_path), str(tmp_path)).TRAINER  # tiny YAML sets only MAPLE
    assert (node.IVLP.N_CTX_VISION, node.IVLP.N_CTX_TEXT, node.IVLP.PROMPT_DEPTH_VISION,
            node.IVLP.PROMPT_DEPTH_TEXT, node.IVLP.PREC, node.IVLP.CTX_INIT) == (2, 2, 9, 9, "fp16", "a photo of a")
    assert (node.VPT.N_CTX_VISION, node.VPT.PROMPT_DEPTH_VISION, node.VPT.PREC, node.VPT.CTX_INIT) == (
        2, 1, "fp16", "a photo of a")
    maple = build_cfg("IVLP", TINY["IVLP"], str(tmp_path), str(tmp_path)).TRAINER.MAPLE
    assert (maple.N_CTX, maple.PROMPT_DEPTH, maple.PREC, maple.CTX_INIT) == (2, 9, "fp16", "a photo of a")


@pytest.mark.parametrize("script", sorted(glob.glob(osp.join(REPO_ROOT, "scripts", "maple", "*.sh"))),
                         ids=osp.basename)
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0


@pytest.mark.parametrize("trainer", ["MaPLe", "IVLP", "VPT"])
def test_scripts_default_to_the_reference_configs(trainer, tmp_path):
    """With a recording PYTHON, base2new_train.sh and xd_train.sh run train.py on the reference's config and folder."""
    record = tmp_path / "argv.txt"
    recorder = tmp_path / "python"
    recorder.write_text(f'#!/bin/bash\necho "$@" >> {record}\n')
    recorder.chmod(0o755)
    env = dict(os.environ, TRAINER=trainer, PYTHON=str(recorder), OUTPUT=str(tmp_path / "out"))
    for script, args in (("base2new_train.sh", ["dtd", "1"]), ("xd_train.sh", ["1"])):
        subprocess.run(["bash", osp.join(REPO_ROOT, "scripts", "maple", script), *args], env=env, check=True,
                       capture_output=True)
    lines = record.read_text().splitlines()
    base2new = {"MaPLe": "vit_b16_c2_ep5_batch4_2ctx", "IVLP": "vit_b16_c2_ep5_batch4_2+2ctx",
                "VPT": "vit_b16_c2_ep5_batch4_4"}[trainer]
    xd = "vit_b16_c2_ep5_batch4_2ctx_cross_datasets" if trainer == "MaPLe" else base2new
    assert f"configs/trainers/{trainer}/{base2new}.yaml" in lines[0]
    assert f"base2new/train_base/dtd/shots_16/{trainer}/{base2new}/seed1" in lines[0]
    assert "DATASET.SUBSAMPLE_CLASSES base" in lines[0]
    assert f"configs/trainers/{trainer}/{xd}.yaml" in lines[1] and f"imagenet/{trainer}/{xd}_16shots/seed1" in lines[1]


# ---------------------------------------------------------------- training on Synthetic
@pytest.fixture(scope="module")
def zero_shot(data_root, pretrained_tiny_dir, tmp_path_factory) -> float:
    """Zero-shot accuracy of the pre-trained tiny CLIP on the base classes (ZeroshotCLIP's tiny config)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLPROMPT_PRETRAINED_DIR", pretrained_tiny_dir)
        _, accuracy = eval_only(build_cfg("ZeroshotCLIP", "configs/trainers/ZeroshotCLIP/tiny_vit.yaml",
                                          str(tmp_path_factory.mktemp("zs")), data_root, opts=BASE))
    return accuracy


@pytest.mark.parametrize("name", ["MaPLe", "IVLP", "VPT"])
def test_beats_zero_shot_and_eval_only_reloads(name, zero_shot, data_root, pretrained_tiny_dir, tmp_path,
                                               monkeypatch):
    """16 shots of the 5 base classes, 20 epochs: above zero-shot CLIP by more than 5 points (3 of 60 test images);
    --eval-only on the last checkpoint gives the same accuracy."""
    monkeypatch.setenv("VLPROMPT_PRETRAINED_DIR", pretrained_tiny_dir)
    run = str(tmp_path / "run")
    assert run_train(train_argv(name, TINY[name], data_root, run, opts=BASE)) == 0
    trained = last_accuracy(osp.join(run, "log.txt"))
    assert trained > zero_shot + 5, f"{name} {trained:.1f}% vs zero-shot {zero_shot:.1f}%"
    out = str(tmp_path / "eval")
    argv = train_argv(name, TINY[name], data_root, out, opts=BASE,
                      extra=["--eval-only", "--model-dir", run, "--load-epoch", "20"])
    assert run_train(argv) == 0
    assert last_accuracy(osp.join(out, "log.txt")) == trained

"""open_clip models as backbones (clip/open_clip_loader.py), checked against open_clip's own forward.

Tiny architectures are written as open_clip model configs (JSON), built by open_clip's factory with random
weights, saved to a local file and loaded through ``clip.load("open_clip:<model>:<file>")``: image and text
features must equal open_clip's within 1e-5, for ViT and ModifiedResNet towers, GELU and QuickGELU, and the
CustomTextCLIP key layout.  Nothing is downloaded: names with pretrained tags are only resolved against open_clip's
tables (tower, resolution, activation, normalisation) or refused for an architecture we cannot represent.
"""
from __future__ import annotations

import json
import os.path as osp

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dassl.utils import load_checkpoint

from helpers import last_accuracy, run_train, train_argv
from results_helpers import latex_tables, markdown_tables, run_cli, write_seeds
from vlprompt import clip
from vlprompt.clip.backbones import OpenClipNameError, backbone_label
from vlprompt.clip.model import CLIP, QuickGELU
from vlprompt.clip.open_clip_loader import (KEY_TABLE, OpenClipBackboneError, OpenClipWeightsNotFound,
                                            UnsupportedOpenClipModel, rename_key, to_openai_layout)
from vlprompt.trainers.common.clip_loading import check_input_size, check_pixel_stats, resolve_backbone
from vlprompt.trainers.common.feature_cache import FeatureCache

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}
# Tiny open_clip model configs (open_clip's JSON format); widths keep 64-wide heads unless head_width says not.
TINY_CONFIGS = {
    "VlpTinyViT": {"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8},
                   "text_cfg": TEXT_CFG},
    "VlpTinyViT-quickgelu": {"embed_dim": 64, "quick_gelu": True, "text_cfg": TEXT_CFG,
                             "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8}},
    "VlpTinyRN": {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": [1, 2, 1, 1], "width": 16},
                  "text_cfg": TEXT_CFG},
    "VlpTinyRN-quickgelu": {"embed_dim": 64, "quick_gelu": True, "text_cfg": TEXT_CFG,
                            "vision_cfg": {"image_size": 64, "layers": [1, 2, 1, 1], "width": 16}},
    # CustomTextCLIP layout (text tower under "text.") and 80-wide vision heads, as open_clip's ViT-H-14
    "VlpTinyViT-H80-custom": {"embed_dim": 64, "custom_text": True, "text_cfg": TEXT_CFG,
                              "vision_cfg": {"image_size": 32, "layers": 2, "width": 160, "head_width": 80,
                                             "patch_size": 8}},
}
TEXTS = ["a photo of a cat.", "a diagram", "x"]


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> str:
    """The tiny configs as JSON files, registered with open_clip by name (open_clip.add_model_config)."""
    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, cfg in TINY_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(folder))
    return str(folder)


@pytest.fixture(autouse=True)
def no_mha_fastpath():
    """open_clip's batch-first attention may take PyTorch's fused fast path in eval (differs by ~1e-6)."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(previous)


def random_open_clip(name: str, seed: int = 0) -> nn.Module:
    """open_clip's model ``name`` built by its factory, every tensor informative: LayerNorm/BatchNorm scales
    near 1, non-zero BatchNorm statistics (open_clip's init zeroes bn3 and keeps mean 0 / var 1)."""
    model = open_clip.create_model(name).eval()
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, tensor in model.state_dict().items():
        randn = torch.randn(tensor.shape, generator=generator)
        if not tensor.is_floating_point():
            state_dict[key] = tensor
        elif key.endswith("running_var"):
            state_dict[key] = 0.5 + torch.rand(tensor.shape, generator=generator)
        elif key.endswith("running_mean") or (tensor.dim() == 1 and key.endswith("bias")):
            state_dict[key] = 0.1 * randn
        elif tensor.dim() == 1 and key.endswith("weight"):
            state_dict[key] = 1.0 + 0.1 * randn
        elif key == "logit_scale":
            state_dict[key] = torch.tensor(4.6)
        else:
            state_dict[key] = 0.05 * randn
    model.load_state_dict(state_dict)
    return model


def save_weights(model: nn.Module, path: str) -> str:
    state_dict = model.state_dict()
    if path.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    else:  # open_clip's training checkpoints: {"epoch", "name", "state_dict": {"module." + key}}
        torch.save({"epoch": 3, "name": "tiny", "state_dict": {f"module.{k}": v for k, v in state_dict.items()}}, path)
    return path


def features(model, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.encode_image(image), model.encode_text(text)


@pytest.mark.parametrize("name, suffix", [
    ("VlpTinyViT", ".safetensors"),
    ("VlpTinyViT-quickgelu", ".bin"),
    ("VlpTinyRN", ".bin"),
    ("VlpTinyRN-quickgelu", ".safetensors"),
    ("VlpTinyViT-H80-custom", ".safetensors"),
])
def test_features_equal_open_clip_forward(config_dir, tmp_path, name, suffix):
    """Our CLIP loaded from a local file gives open_clip's image and text features (and logits) within 1e-5."""
    reference = random_open_clip(name)
    path = save_weights(reference, str(tmp_path / f"weights{suffix}"))
    ours, preprocess = clip.load(f"open_clip:{name}:{path}", device="cpu")
    quick = TINY_CONFIGS[name].get("quick_gelu", False)
    activations = {type(block.mlp.gelu) for block in ours.modules() if hasattr(block, "mlp")}
    assert activations == {QuickGELU if quick else nn.GELU}
    resolution = TINY_CONFIGS[name]["vision_cfg"]["image_size"]
    assert ours.visual.input_resolution == resolution and preprocess.transforms[1].size == (resolution, resolution)
    image = torch.randn(3, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))
    text = clip.tokenize(TEXTS).long()
    (ours_image, ours_text), (ref_image, ref_text) = features(ours, image, text), features(reference, image, text)
    assert ref_image.abs().max() > 0.1 and ref_text.abs().max() > 0.1  # informative scale
    torch.testing.assert_close(ours_image, ref_image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_text, ref_text, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(ours(image, text)[0], reference.get_logits(image, text)[0], rtol=1e-5, atol=1e-4)


def test_the_activation_is_what_makes_them_equal(config_dir, tmp_path):
    """Negative control: the same GELU weights in a QuickGELU CLIP give clearly different text features."""
    reference = random_open_clip("VlpTinyViT")
    path = save_weights(reference, str(tmp_path / "weights.safetensors"))
    ours, _ = clip.load(f"open_clip:VlpTinyViT:{path}", device="cpu")
    wrong = CLIP(64, 32, 2, 128, 8, 77, 49408, 128, 2, 2, quick_gelu=True)
    wrong.load_state_dict(ours.state_dict())
    text = clip.tokenize(TEXTS).long()
    with torch.no_grad():
        assert (wrong.eval().encode_text(text) - reference.encode_text(text)).abs().max() > 1e-3


def test_key_table_maps_custom_text_layout_to_openai_names(config_dir):
    """CustomTextCLIP keys under ``text.`` become OpenAI's names; open_clip's CLIP keys stay as they are."""
    assert rename_key("text.transformer.resblocks.1.mlp.c_fc.weight") == "transformer.resblocks.1.mlp.c_fc.weight"
    assert rename_key("text.positional_embedding") == "positional_embedding"
    assert rename_key("text.text_projection") == "text_projection"
    assert rename_key("visual.transformer.resblocks.0.ln_1.bias") == "visual.transformer.resblocks.0.ln_1.bias"
    assert all(target.startswith(("token_embedding", "positional", "transformer", "ln_final", "text_projection"))
               for _, target in KEY_TABLE)
    custom = random_open_clip("VlpTinyViT-H80-custom").state_dict()
    assert any(k.startswith("text.") for k in custom)
    ours = CLIP(64, 32, 2, 160, 8, 77, 49408, 128, 2, 2, vision_head_width=80, quick_gelu=False).state_dict()
    converted = to_openai_layout(custom)
    assert set(converted) == set(ours)
    assert all(converted[k].shape == ours[k].shape for k in ours)


def test_open_clip_defaults_are_the_openai_architecture():
    """The loader accepts a config field at open_clip's default; those defaults must be OpenAI's architecture."""
    vision, text = open_clip.CLIPVisionCfg(), open_clip.CLIPTextCfg()
    assert (vision.pool_type, vision.pos_embed_type, vision.ls_init_value, vision.attentional_pool) == \
        ("tok", "learnable", None, False)
    assert (vision.no_ln_pre, vision.final_ln_after_pool, vision.norm_kwargs, vision.act_kwargs) == \
        (False, False, None, None)
    assert (text.pool_type, text.proj_type, text.proj_bias, text.no_causal_mask, text.embed_cls) == \
        ("argmax", "linear", False, False, False)
    assert (text.norm_kwargs, text.act_kwargs, text.ls_init_value, text.hf_tokenizer_name) == (None, None, None, None)
    assert not any(getattr(cfg, flag) for cfg in (vision, text) for flag in
                   ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc"))


@pytest.mark.parametrize("name, tower, resolution, activation, mean", [
    ("open_clip:ViT-B-16:laion2b_s34b_b88k", "vit", 224, "gelu", OPENAI_MEAN),
    ("open_clip:ViT-B-16:openai", "vit", 224, "quick_gelu", OPENAI_MEAN),  # the tag's QuickGELU wins
    ("open_clip:ViT-B/32:laion2b_s34b_b79k", "vit", 224, "gelu", OPENAI_MEAN),  # OpenAI spelling of the name
    ("open_clip:RN50-quickgelu:yfcc15m", "resnet", 224, "quick_gelu", OPENAI_MEAN),
    ("open_clip:ViT-H-14-378-quickgelu:dfn5b", "vit", 378, "quick_gelu", OPENAI_MEAN),
    ("open_clip:ViT-L-14:laion2b_s32b_b82k", "vit", 224, "gelu", [0.5, 0.5, 0.5]),
])
def test_names_resolve_from_open_clip_tables_without_download(name, tower, resolution, activation, mean):
    """The backbone table resolves open_clip names: tower, resolution, activation and mean of the tag."""
    info = clip.backbone_info(name)
    assert (info.tower, info.resolution, info.activation) == (tower, resolution, activation)
    assert list(info.pixel_mean) == pytest.approx(mean) and info.is_open_clip
    assert resolve_backbone(name) == name and clip.backbone_info(name) is info  # added to the table once


@pytest.mark.parametrize("name, feature", [
    ("open_clip:ViT-B-16-SigLIP:webli", "init_logit_bias"),
    ("open_clip:coca_ViT-B-32:laion2b_s13b_b90k", "multimodal_cfg"),
    ("open_clip:xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k", "text_cfg.hf_model_name"),
    ("open_clip:EVA02-B-16:merged2b_s8b_b131k", "vision_cfg.timm_model_name"),
    ("open_clip:ViT-bigG-14:laion2b_s39b_b160k", "vision_cfg.mlp_ratio"),
    ("open_clip:ViT-M-16-alt:any", "vision_cfg.ls_init_value"),
    ("open_clip:ViT-L-14-CLIPA:datacomp1b", "vision_cfg.pool_type"),
])
def test_unsupported_architectures_are_refused_in_one_line(name, feature):
    """Before any download, with the feature named, as a ValueError train.py prints as one line."""
    with pytest.raises(UnsupportedOpenClipModel, match=feature.replace(".", r"\.")) as info:
        clip.backbone_info(name)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value) and name in str(info.value)


def test_unsupported_tiny_config_file_is_refused(tmp_path):
    """A config given by its JSON path: another norm layer (LayerNorm eps) and GELU variant are named."""
    cfg = {"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8},
           "text_cfg": {**TEXT_CFG, "norm_kwargs": {"eps": 1e-6}, "act_kwargs": {"approximate": "tanh"}}}
    path = tmp_path / "Odd.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedOpenClipModel, match=r"text_cfg\.norm_kwargs.*norm layer.*text_cfg\.act_kwargs"):
        clip.backbone_info(f"open_clip:{path}:{tmp_path / 'w.safetensors'}")


@pytest.mark.parametrize("name, error, match", [
    ("open_clip:ViT-B-61:laion2b_s34b_b88k", OpenClipBackboneError, "did you mean ViT-B-16"),
    ("open_clip:ViT-B-16:laion9b", OpenClipBackboneError, "tags: openai, laion400m_e31"),
    ("open_clip:ViT-B-16:/no/such/file.safetensors", OpenClipWeightsNotFound, "/no/such/file.safetensors"),
    ("open_clip:ViT-B-16", OpenClipNameError, "open_clip:<model>:<pretrained"),
    ("open_clip:hf-hub:timm/ViT-B-16-SigLIP", OpenClipBackboneError, "open_clip_config.json"),
])
def test_bad_names_fail_in_check_cfg_with_one_line(name, error, match):
    with pytest.raises(error, match=match) as info:
        resolve_backbone(name)
    assert "\n" not in str(info.value)


def test_input_size_and_normalisation_are_checked(config_dir, tmp_path):
    """INPUT.SIZE and INPUT.PIXEL_MEAN/STD must match the open_clip model; the error names the expected values."""
    path = save_weights(random_open_clip("VlpTinyViT"), str(tmp_path / "w.safetensors"))
    name = f"open_clip:VlpTinyViT:{path}"
    check_input_size(name, (32, 32))
    check_pixel_stats(name, OPENAI_MEAN, OPENAI_STD)
    with pytest.raises(ValueError, match=r"INPUT\.SIZE \(32, 32\)"):
        check_input_size(name, (224, 224))
    with pytest.raises(ValueError, match=r"set INPUT\.PIXEL_MEAN \[0\.48145466, 0\.4578275, 0\.40821073\]"):
        check_pixel_stats(name, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with pytest.raises(ValueError, match=r"INPUT\.PIXEL_MEAN \[0\.5, 0\.5, 0\.5\] and INPUT\.PIXEL_STD \[0\.5"):
        check_pixel_stats("open_clip:ViT-L-14:laion2b_s32b_b82k", OPENAI_MEAN, OPENAI_STD)
    check_pixel_stats("ViT-B/16", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # OpenAI names: not checked


def test_feature_cache_key_carries_the_backbone_name():
    """Same encoder digest and data, different backbone names -> different keys, each label in the file name."""
    parts = ("digest", "Caltech101", "test", "images", "Compose()")
    keys = {name: FeatureCache.make_key(*parts, backbone=name) for name in
            ("ViT-B/16", "open_clip:ViT-B-16:laion2b_s34b_b88k", "open_clip:ViT-B-16:/ckpt/a/epoch_32.pt",
             "open_clip:ViT-B-16:/ckpt/b/epoch_32.pt")}
    assert len(set(keys.values())) == 4  # two files with one basename still differ (full name hashed)
    label = "Caltech101-test-open_clip-ViT-B-16-laion2b_s34b_b88k-"
    assert keys["open_clip:ViT-B-16:laion2b_s34b_b88k"].startswith(label)
    assert keys["ViT-B/16"].startswith("Caltech101-test-ViT-B-16-")
    assert backbone_label("open_clip:ViT-B-16:/ckpt/a/epoch_32.pt") == "open_clip-ViT-B-16-epoch_32.pt"
    assert FeatureCache.make_key(*parts, backbone="RN50") == FeatureCache.make_key(*parts, backbone="RN50")


def test_parse_test_res_shows_open_clip_names(tmp_path, capsys):
    """The backbone column keeps the full name in markdown, LaTeX (escaped) and CSV."""
    name = "open_clip:ViT-B-16:laion2b_s34b_b88k"
    write_seeds(tmp_path / "oc" / "CoOp", "OxfordPets", "CoOp", "vit_b16", 4, [80.0, 82.0], backbone=name)
    write_seeds(tmp_path / "rn" / "CoOp", "OxfordPets", "CoOp", "vit_b16", 4, [70.0, 72.0], backbone="RN50")
    _, markdown, _ = run_cli([tmp_path, "--table"], capsys)
    rows = {r["backbone"]: r for r in markdown_tables(markdown)[0]}
    assert set(rows) == {name, "RN50"} and rows[name]["accuracy"].startswith("81.00")
    _, latex, _ = run_cli([tmp_path, "--table", "--format", "latex"], capsys)
    assert {r["backbone"] for r in latex_tables(latex)[0]} == {r"open\_clip:ViT-B-16:laion2b\_s34b\_b88k", "RN50"}
    _, csv_out, _ = run_cli([tmp_path, "--format", "csv"], capsys)
    assert sum(f",{name}," in line for line in csv_out.splitlines()) == 1


def test_coop_trains_one_epoch_on_an_open_clip_backbone(data_root, tmp_path, capsys):
    """train.py, CoOp, one epoch on a tiny GELU open_clip ViT given by its JSON config and a weights file."""
    config = tmp_path / "VlpTrainViT.json"
    config.write_text(json.dumps(TINY_CONFIGS["VlpTinyViT"]))
    open_clip.add_model_config(str(config))  # only to build the weights with open_clip's factory
    weights = save_weights(random_open_clip("VlpTrainViT", seed=3), str(tmp_path / "tiny.safetensors"))
    name = f"open_clip:{config}:{weights}"
    output = tmp_path / "runs" / "CoOp" / "seed1"
    opts = ["OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "4", "DATALOADER.TRAIN_X.BATCH_SIZE", "8",
            "TEST.FEATURE_CACHE.ENABLED", "False"]
    argv = train_argv("CoOp", "configs/trainers/CoOp/tiny_vit_ep50_ctxv1.yaml", data_root, str(output),
                      backbone=name, opts=opts)
    assert run_train(argv) == 0
    log = (output / "log.txt").read_text()
    assert f"Loaded {name} from {weights} (GELU, 32px" in log and 0.0 <= last_accuracy(str(output / "log.txt"))
    ctx = load_checkpoint(str(output / "prompt_learner" / "model.pth.tar-1"))["state_dict"]["ctx"]
    ours, _ = clip.load(name, device="cpu")
    init = ours.token_embedding(clip.tokenize("a photo of a")[0, 1:5].long()).detach()  # CTX_INIT's 4 tokens
    assert ctx.shape == init.shape == (4, 128) and not torch.allclose(ctx, init)  # trained from this backbone
    _, markdown, _ = run_cli([tmp_path / "runs", "--table"], capsys)
    assert markdown_tables(markdown)[0][0]["backbone"] == name
    # The wrong normalisation is refused by check_cfg with the expected values, before anything loads.
    bad = train_argv("CoOp", "configs/trainers/CoOp/tiny_vit_ep50_ctxv1.yaml", data_root, str(tmp_path / "bad"),
                     backbone=name, opts=opts + ["INPUT.PIXEL_MEAN", "[0.5, 0.5, 0.5]"])
    assert run_train(bad) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert any("INPUT.PIXEL_MEAN [0.48145466, 0.4578275, 0.40821073]" in line for line in err)
    assert not osp.exists(tmp_path / "bad" / "prompt_learner")

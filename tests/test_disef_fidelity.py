"""DISEF / CLIP-LoRA recipe pieces against the references' own computations, on the CPU.

Checked: the training and test transforms of the DISEF-paper and the notebook configs equal torchvision's
reference compositions on a non-square image (same seed, max difference < 1e-6); Mixup/CutMix images, targets and
loss equal timm's ``Mixup`` + ``SoftTargetCrossEntropy`` on the same seeded batch, and DISEF's two-part loss with soft
targets equals the reference's weighted sum; the template-averaged class features equal a hand computation with
CLIP's own ``encode_text``; the datasets carry the reference's template lists; the generation presets hold the
documented settings and explicit flags win over them; Hugging Face loads never trust remote code.
"""
from __future__ import annotations

import copy
import glob
import os.path as osp
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from helpers import REPO_ROOT, build_cfg, tiny_clip_fp32
from vlprompt import clip
from vlprompt.clip.lora import apply_lora, lora_specs
from vlprompt.trainers.common.lora_trainer import LoRACLIP
from vlprompt.trainers.common.templates import dataset_templates
from vlprompt.trainers.disef import models
from vlprompt.trainers.disef.cli import build_parser, generation_config
from vlprompt.trainers.disef.config import GenerationConfig
from vlprompt.trainers.disef.mixing import BatchMixer
from vlprompt.trainers.disef.trainer import DISEF, disef_loss

PAPER = "configs/trainers/DISEF/vit_b16_qv_r64-16_a32_lam0.8_ep50.yaml"
NOTEBOOK = "configs/trainers/DISEF/vit_b16_qv_r64-16_a32_lam0.8_ep50_notebook.yaml"
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
BICUBIC = T.InterpolationMode.BICUBIC


def _hooks(config: str, tmp_path, trainer=DISEF, name="DISEF", opts=()):
    """A trainer object with only ``cfg`` set: enough for the transform and template hooks (no model, no data)."""
    obj = trainer.__new__(trainer)
    obj.cfg = build_cfg(name, config, str(tmp_path / "out"), str(tmp_path / "data"), opts=list(opts))
    return obj


def _image() -> Image.Image:
    generator = np.random.default_rng(0)
    return Image.fromarray(generator.integers(0, 256, (180, 300, 3), dtype=np.uint8))  # 300 x 180: not square


def _max_diff(ours, reference, seed: int = 0) -> float:
    torch.manual_seed(seed)
    a = ours(_image())
    torch.manual_seed(seed)
    b = reference(_image())
    assert a.shape == b.shape == (3, 224, 224)
    return (a - b).abs().max().item()


def test_disef_paper_transforms_equal_torchvision(tmp_path):
    """RandAugment(2, 9) -> RandomResizedCrop(224, bicubic) -> normalise; Resize(256) -> CenterCrop(224) at test."""
    hooks = _hooks(PAPER, tmp_path)
    train = T.Compose([T.RandAugment(2, 9), T.RandomResizedCrop(224, interpolation=BICUBIC), T.ToTensor(),
                       T.Normalize(CLIP_MEAN, CLIP_STD)])
    test = T.Compose([T.Resize(256, interpolation=BICUBIC), T.CenterCrop(224), T.ToTensor(),
                      T.Normalize(CLIP_MEAN, CLIP_STD)])
    for seed in range(4):
        assert _max_diff(hooks.build_train_transform(), train, seed) < 1e-6
    assert _max_diff(hooks.build_test_transform(), test) < 1e-6
    torch.manual_seed(0)
    assert not torch.equal(hooks.build_train_transform()(_image()), hooks.build_train_transform()(_image()))


@pytest.mark.parametrize("config, trainer, name", [
    (NOTEBOOK, DISEF, "DISEF"),
    ("configs/trainers/DISEF/vit_b16_qv_r64-16_a32_lam0.95_lr2e-5_ep50_f1.yaml", DISEF, "DISEF"),
    ("configs/trainers/CLIP_LoRA/vit_b16_qv_r64-16_a32_ep15_notebook.yaml", None, "CLIP_LoRA"),
])
def test_notebook_configs_use_clip_preprocess_for_train_and_test(config, trainer, name, tmp_path):
    """CLIP's own transform (shorter side 224, bicubic, centre crop, CLIP's mean/std) on training AND test images."""
    from vlprompt.trainers.clip_lora import CLIP_LoRA

    hooks = _hooks(config, tmp_path, trainer or CLIP_LoRA, name)
    reference = T.Compose([T.Resize(224, interpolation=BICUBIC), T.CenterCrop(224), T.ToTensor(),
                           T.Normalize(CLIP_MEAN, CLIP_STD)])
    _, clip_preprocess = clip.load("tiny-vit", device="cpu")  # CLIP's own preprocessing, at the tiny model's 32 px
    assert _max_diff(hooks.build_train_transform(), reference) < 1e-6
    assert _max_diff(hooks.build_test_transform(), reference) < 1e-6
    ours_32 = _hooks(config, tmp_path, trainer or CLIP_LoRA, name, opts=["INPUT.SIZE", "(32, 32)"])
    assert torch.equal(ours_32.build_train_transform()(_image()), clip_preprocess(_image()))


def test_mixing_equals_timm(tmp_path):
    """Same NumPy seed: the same mixed images, targets and soft-target loss as timm's batch-mode Mixup (both the
    Mixup and the CutMix branch occur over the seeds)."""
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 12, 16, generator=generator)
    labels = torch.tensor([0, 3, 1, 4, 2, 2])
    head = torch.randn(3 * 12 * 16, 5, generator=generator)
    branches = set()
    for seed in range(12):
        np.random.seed(seed)
        ours_x, ours_t = BatchMixer(0.8, 1.0, 5, label_smoothing=0.1)(images.clone(), labels)
        np.random.seed(seed)
        ref_x, ref_t = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="batch",
                             label_smoothing=0.1, num_classes=5)(images.clone(), labels)
        assert torch.equal(ours_x, ref_x), seed
        assert torch.allclose(ours_t, ref_t, atol=1e-7), seed
        logits = ours_x.flatten(1) @ head
        synthetic = torch.zeros(6, dtype=torch.bool)
        ours_loss = disef_loss(logits, ours_t, synthetic, 1.0)
        assert ours_loss.item() == pytest.approx(SoftTargetCrossEntropy()(ref_x.flatten(1) @ head, ref_t).item(),
                                                 rel=1e-6)
        cut = (ours_x == images).all(dim=1).any().item() and not torch.equal(ours_x, images)
        branches.add("cutmix" if cut else "mixup")
    assert branches == {"cutmix", "mixup"}


def test_disef_loss_with_mixed_halves_equals_reference():
    """Paired batch: real and synthetic halves mixed separately (real first), loss = 0.8 CE(real) + 0.2 CE(syn)."""
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    generator = torch.Generator().manual_seed(1)
    real, syn = torch.randn(4, 3, 8, 8, generator=generator), torch.randn(4, 3, 8, 8, generator=generator)
    y_real, y_syn = torch.tensor([0, 1, 2, 1]), torch.tensor([2, 2, 0, 1])
    head = torch.randn(3 * 8 * 8, 3, generator=generator)
    np.random.seed(5)
    mixer = BatchMixer(0.1, 0.1, 3, label_smoothing=0.1)
    (xr, tr), (xs, ts) = mixer(real, y_real), mixer(syn, y_syn)
    ours = disef_loss(torch.cat([xr, xs]).flatten(1) @ head, torch.cat([tr, ts]),
                      torch.tensor([False] * 4 + [True] * 4), 0.8)
    np.random.seed(5)
    timm_mix = Mixup(mixup_alpha=0.1, cutmix_alpha=0.1, label_smoothing=0.1, num_classes=3)
    (rr, rt), (sr, st) = timm_mix(real.clone(), y_real), timm_mix(syn.clone(), y_syn)
    loss = SoftTargetCrossEntropy()
    reference = 0.8 * loss(rr.flatten(1) @ head, rt) + 0.2 * loss(sr.flatten(1) @ head, st)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)


def test_template_average_equals_hand_computation():
    """Mean of the L2-normalised per-template features, renormalised, with CLIP's own encode_text (B = 0)."""
    classes, templates = ["red circle", "green square"], ["a photo of a {}.", "a drawing of the {}.", "itap of a {}."]
    model = tiny_clip_fp32()
    with torch.no_grad():
        per_template = []
        for template in templates:
            features = model.encode_text(clip.tokenize([template.format(c) for c in classes]))
            per_template.append(features / features.norm(dim=-1, keepdim=True))
        mean = torch.stack(per_template).mean(dim=0)
        expected = mean / mean.norm(dim=-1, keepdim=True)
    adapted = copy.deepcopy(model)
    lora = apply_lora(adapted, lora_specs("both", r=2, params="qv"))
    prompts = [t.format(c) for c in classes for t in templates]  # class-major
    ours = LoRACLIP(lora, adapted, clip.tokenize(prompts).long(), n_templates=3).eval()
    with torch.no_grad():
        assert torch.allclose(ours.encode_text(), expected, atol=1e-5), (ours.encode_text() - expected).abs().max()
        single = LoRACLIP(lora, adapted, clip.tokenize(prompts[:1]).long(), n_templates=1).eval().encode_text()
        assert torch.allclose(single[0], per_template[0][0], atol=1e-5)


def test_dataset_template_lists_and_switch(tmp_path):
    """The reference's lists: ImageNet 7, SUN397 2, StanfordCars 8, CIFAR-100 18; others one template.  With
    AVERAGE_TEMPLATES (DISEF-paper config) the trainer uses the list, without it the single TEMPLATE."""
    assert dataset_templates("ImageNet")[0] == "itap of a {}." and len(dataset_templates("ImageNet")) == 7
    assert dataset_templates("SUN397") == ("a photo of a {}.", "a photo of the {}.")
    assert len(dataset_templates("StanfordCars")) == 8 and "i love my {}!" in dataset_templates("StanfordCars")
    assert len(dataset_templates("CIFAR100LT")) == 18
    assert dataset_templates("OxfordFlowers") == ("a photo of a {}, a type of flower.",)
    paper = _hooks(PAPER, tmp_path, opts=["DATASET.NAME", "ImageNet"])
    assert paper.templates() == list(dataset_templates("ImageNet"))
    single = _hooks(PAPER, tmp_path, opts=["DATASET.NAME", "ImageNet", "TRAINER.DISEF.AVERAGE_TEMPLATES", "False"])
    assert single.templates() == ["a photo of a {}."]


def test_generation_presets(tmp_path):
    """disef_paper: the released pipeline's models and budget; notebook: the seed's; explicit flags win."""
    paper, notebook = GenerationConfig.preset("disef_paper"), GenerationConfig.preset("notebook")
    assert paper == GenerationConfig()
    assert paper.filter_backbone == "open_clip:ViT-H-14:laion2b_s32b_b79k"
    assert paper.sd_model == "SG161222/Realistic_Vision_V2.0"
    assert (paper.images_per_class, paper.budget_unit, paper.cycle_budget, paper.prompt_template) == (
        64, "cycles", 100, "{caption}")
    assert (paper.num_inference_steps, paper.strength, paper.guidance_scale) == (20, 0.75, 8.0)
    assert notebook.sd_model == "stabilityai/stable-diffusion-2-1-base" and notebook.filter_backbone == "ViT-B/16"
    assert (notebook.images_per_class, notebook.budget_unit, notebook.caption_temperature) == (32, "discards", 0.7)
    assert notebook.prompt_template.startswith("A realistic photo of a {classname}, a type of flower.")
    args = build_parser().parse_args(["--output-dir", str(tmp_path), "--preset", "notebook", "--images-per-class",
                                      "5", "--no-pad"])
    cfg = generation_config(args)
    assert (cfg.images_per_class, cfg.pad_to_square, cfg.sd_model) == (5, False, notebook.sd_model)
    with pytest.raises(ValueError, match="preset"):
        GenerationConfig.preset("paper")


def test_hub_loads_never_trust_remote_code(monkeypatch):
    """Every from_pretrained call gets trust_remote_code=False, and no source file of the pipeline says True."""
    calls = []

    def record(cls, model_id, **kwargs):
        calls.append(kwargs)
        return torch.nn.Linear(1, 1)

    import diffusers
    import transformers

    for owner in (transformers.LlavaForConditionalGeneration, transformers.AutoProcessor,
                  diffusers.StableDiffusionImg2ImgPipeline):
        monkeypatch.setattr(owner, "from_pretrained", classmethod(record))
    models.load_llava("some/llava", "cpu")
    models.load_sd_img2img("some/sd", "cpu")
    assert len(calls) == 3 and all(kwargs.get("trust_remote_code") is False for kwargs in calls)
    for path in glob.glob(osp.join(REPO_ROOT, "trainers", "**", "*.py"), recursive=True) + glob.glob(
            osp.join(REPO_ROOT, "scripts", "disef", "*.py")):
        text = open(path).read()
        assert not re.search(r"trust_remote_code\W{1,4}True", text), path


def test_check_cfg_refuses_inconsistent_transforms_and_mixing(tmp_path):
    from helpers import build

    for opts, match in ((["TRAINER.DISEF.CLIP_PREPROCESS", "True", "TRAINER.DISEF.TEST_RESIZE", "256"],
                         "CLIP_PREPROCESS"),
                        (["TRAINER.DISEF.TEST_RESIZE", "16"], "TEST_RESIZE"),
                        (["TRAINER.DISEF.MIXUP_ALPHA", "-1.0"], "MIXUP_ALPHA")):
        cfg = build_cfg("DISEF", "configs/trainers/DISEF/tiny_vit_qv_r8-4_a8_lam0.8_ep10_batch8.yaml",
                        str(tmp_path / "bad"), str(tmp_path / "data"), opts=opts, backbone="tiny-vit")
        with pytest.raises(ValueError, match=match):
            build(cfg)

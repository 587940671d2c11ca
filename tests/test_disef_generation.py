"""DISEF's generation pipeline (trainers/disef/) end to end, offline.

Tiny randomly initialised Stable Diffusion img2img and LLaVA models built from config objects (trainers/disef/fakes.py,
no download).  Checked: 15 UNet calls per image at 20 steps x strength 0.75; the captioning prompt is the hf chat
format with the class name (and the notebook's literal modes); the filter keeps correctly classified images and
discards the others, and the budget policy; a killed run resumes without regenerating kept images and ends with
the same files as an uninterrupted run; the manifest matches the files on disk; the zero-shot filter is CLIP's argmax.
"""
from __future__ import annotations

import hashlib
import json
import os
import os.path as osp

import pytest
import torch

from disef_helpers import CLASSNAMES, ConstantFilter, CountingUNet, ScriptedFilter, SolidGenerator, files_on_disk, \
    tiny_models, write_real_images
from vlprompt.trainers.disef.config import GenerationConfig
from vlprompt.trainers.disef.manifest import CaptionCache, Manifest, read_manifest
from vlprompt.trainers.disef.models import Img2ImgGenerator, LlavaCaptioner, TemplateCaptioner, ZeroShotFilter
from vlprompt.trainers.disef.pipeline import kept_images, prepare_init_image, run_generation

SMALL = dict(images_per_class=2, batch_size=2, init_size=32, seed=3, caption_max_new_tokens=6)


@pytest.fixture()
def real(tmp_path):
    return write_real_images(str(tmp_path / "real"))


def _tiny_setup(cfg: GenerationConfig):
    pipe, model, processor = tiny_models()
    return Img2ImgGenerator(pipe, cfg), LlavaCaptioner(model, processor, cfg)


def _digest(root: str) -> dict[str, str]:
    return {f: hashlib.sha256(open(osp.join(root, f), "rb").read()).hexdigest() for f in files_on_disk(root)}


def test_unet_calls_per_image_and_dpm_solver(real, tmp_path):
    """20 steps at strength 0.75 = 15 UNet calls per image (one CFG-doubled batch per step), DPM-Solver++."""
    cfg = GenerationConfig(images_per_class=3, batch_size=1, init_size=32, seed=1, classes=[0],
                           caption_max_new_tokens=6)
    generator, captioner = _tiny_setup(cfg)
    assert type(generator.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert generator.pipe.scheduler.config.algorithm_type == "dpmsolver++"
    counter = CountingUNet(generator.pipe)
    try:
        kept = run_generation(cfg, str(tmp_path / "gen"), real, CLASSNAMES, captioner, generator, None)
        assert kept == {0: 3}
        assert len(counter.batches) == 3 * int(20 * 0.75) == 45
        assert set(counter.batches) == {2}  # guidance 8 > 1: unconditional + conditional rows
        counter.batches.clear()
        images = generator([prepare_init_image(Image_open(real[1][0]), 32)] * 2, ["a red circle", "a"], [1, 2])
        assert len(counter.batches) == 15 and set(counter.batches) == {4}
        assert [im.size for im in images] == [(32, 32), (32, 32)]
    finally:
        counter.restore()


class SpyProcessor:
    """Records the ``text`` given to the LLaVA processor, then delegates."""

    def __init__(self, inner) -> None:
        self.inner, self.texts = inner, []

    def __call__(self, **kwargs):
        self.texts += list(kwargs["text"])
        return self.inner(**kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def Image_open(path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def test_caption_prompt_contains_class_name(real):
    """The LLaVA prompt is the hf chat format and names the class; the notebook's literal modes differ as documented."""
    _, model, processor = tiny_models()
    captioner = LlavaCaptioner(model, processor, GenerationConfig())
    expected = ("USER: <image>\nProvide a detailed caption for the image focusing on the object, knowing it's a "
                "blue triangle. ASSISTANT:")
    assert captioner.build_prompt("blue triangle", 2) == expected
    spy = SpyProcessor(processor)
    captioner.processor = spy
    captions = captioner([Image_open(real[2][0]), Image_open(real[0][0])], ["blue triangle", "red circle"], [2, 0])
    assert spy.texts == [expected, expected.replace("blue triangle", "red circle")]
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    literal = LlavaCaptioner(model, processor, GenerationConfig(caption_label="index", chat_format="notebook"))
    assert "knowing it's a 2." in literal.build_prompt("blue triangle", 2)  # the notebook's integer label
    assert "object.###Assistant:" in literal.build_prompt("red circle", 0)  # label 0 is falsy: "." instead
    assert literal.build_prompt("red circle", 1).endswith("###Assistant:")


def test_filter_keeps_correct_and_discards_misclassified(real, tmp_path):
    """Within the budget an image is kept iff the filter predicts its class; every decision is in the manifest."""
    root = str(tmp_path / "gen")
    cfg = GenerationConfig(**SMALL, classes=[1])
    image_filter = ScriptedFilter([0, 1, 2, 1])  # wrong, right, wrong, right
    run_generation(cfg, root, real, CLASSNAMES, TemplateCaptioner(), SolidGenerator(), image_filter)
    records = read_manifest(root)
    assert [(r["predicted"], r["kept"], r["reason"]) for r in records] == [
        (0, False, "filter_fail"), (1, True, "filter_pass"), (2, False, "filter_fail"), (1, True, "filter_pass")]
    assert [r["file"] for r in records if not r["kept"]] == [None, None]
    assert files_on_disk(root) == {r["file"] for r in records if r["kept"]}
    assert kept_images(root) == {"green square": [osp.join(root, r["file"]) for r in records if r["kept"]]}


@pytest.mark.parametrize("unit, policy, expected_kept, expected_reasons", [
    ("cycles", "accept", 2, ["filter_fail", "filter_fail", "budget", "budget"]),
    ("cycles", "stop", 0, ["filter_fail", "filter_fail"]),
    ("discards", "accept", 2, ["filter_fail", "budget", "budget"]),
])
def test_budget_policy(real, tmp_path, unit, policy, expected_kept, expected_reasons):
    """Budget 1: DISEF keeps unfiltered images after one cycle; "stop" never keeps a misclassified one."""
    root = str(tmp_path / "gen")
    cfg = GenerationConfig(**SMALL, classes=[0], cycle_budget=1, budget_unit=unit, budget_policy=policy)
    kept = run_generation(cfg, root, real, CLASSNAMES, TemplateCaptioner(), SolidGenerator(), ConstantFilter(2))
    assert kept == {0: expected_kept}
    assert [r["reason"] for r in read_manifest(root)] == expected_reasons
    assert len(files_on_disk(root)) == expected_kept


def test_killed_run_resumes_without_regenerating(real, tmp_path, monkeypatch):
    """Kill after the first class (and once between a cycle's images and its records): the re-run generates only
    what is missing, leaves kept files untouched and ends with the files of an uninterrupted run."""
    cfg = dict(images_per_class=3, batch_size=2, init_size=32, seed=5, classes=[0, 2], caption_max_new_tokens=6)
    generator, captioner = _tiny_setup(GenerationConfig(**cfg))
    reference = str(tmp_path / "uninterrupted")
    run_generation(GenerationConfig(**cfg), reference, real, CLASSNAMES, captioner, generator, None)
    assert len(files_on_disk(reference)) == 6

    root = str(tmp_path / "killed")
    counter = CountingUNet(generator.pipe)
    original_append = Manifest.append
    appended = []

    def append_then_die(self, records):
        if len(appended) == 2:  # class 2, first cycle: images are on disk, records are not
            raise KeyboardInterrupt("simulated kill")
        appended.append(records)
        original_append(self, records)

    monkeypatch.setattr(Manifest, "append", append_then_die)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_generation(GenerationConfig(**cfg), root, real, CLASSNAMES, captioner, generator, None)
        first_calls = len(counter.batches)
        survivors = {f: os.stat(osp.join(root, f)).st_mtime_ns for f in files_on_disk(root)}
        assert len(survivors) == 5  # 3 kept for class 0 + 2 orphans of the killed cycle
        monkeypatch.setattr(Manifest, "append", original_append)
        counter.batches.clear()
        kept = run_generation(GenerationConfig(**cfg), root, real, CLASSNAMES, captioner, generator, None)
    finally:
        counter.restore()
    assert first_calls == 3 * 15 and kept == {0: 3, 2: 3}
    assert len(counter.batches) == 2 * 15  # only class 2's two cycles; class 0 is not touched again
    for name, mtime in survivors.items():
        if name.startswith("red_circle"):
            assert os.stat(osp.join(root, name)).st_mtime_ns == mtime  # kept images never rewritten
    assert _digest(root) == _digest(reference)  # same seeds -> same images as without the kill
    records = read_manifest(root)
    assert files_on_disk(root) == {r["file"] for r in records if r["kept"]}
    assert [(r["class"], r["cycle"], r["slot"]) for r in records] == [
        (0, 0, 0), (0, 0, 1), (0, 1, 0), (2, 0, 0), (2, 0, 1), (2, 1, 0)]


def test_manifest_matches_files(real, tmp_path):
    """Every kept record names an existing file under its class folder, and every generated file has a record."""
    root = str(tmp_path / "gen")
    cfg = GenerationConfig(**SMALL, save_discarded=True)
    image_filter = ScriptedFilter([0, 1, 0, 0, 1, 1, 2, 2])
    run_generation(cfg, root, real, CLASSNAMES, TemplateCaptioner(), SolidGenerator(), image_filter)
    records = read_manifest(root)
    assert files_on_disk(root) == {r["file"] for r in records if r["file"]}
    for r in records:
        folder = r["classname"].replace(" ", "_")
        assert r["file"].startswith(folder if r["kept"] else osp.join("_discarded", folder))
        assert r["prompt"] == r["caption"] == f"a photo of a {r['classname']}."
        assert r["caption_source"] in real[r["class"]] and r["init_image"] in real[r["class"]]
        assert isinstance(r["seed"], int)
    assert [sum(r["kept"] for r in records if r["class"] == c) for c in range(3)] == [2, 2, 2]
    with open(osp.join(root, "generation_config.json")) as f:
        assert json.load(f)["images_per_class"] == 2


def test_caption_cache_captions_each_real_image_once(real, tmp_path):
    calls = []

    class Recording(TemplateCaptioner):
        def __call__(self, images, classnames, labels):
            calls.append(len(images))
            return super().__call__(images, classnames, labels)

    cache = CaptionCache(str(tmp_path))
    paths = [real[0][0], real[0][1], real[0][0]]
    assert cache.get(paths, 0, "red circle", Recording(), Image_open) == ["a photo of a red circle."] * 3
    assert cache.get(paths, 0, "red circle", Recording(), Image_open) == ["a photo of a red circle."] * 3
    assert calls == [2]
    assert json.load(open(tmp_path / "captions.json")) == {p: "a photo of a red circle." for p in paths}


def test_prepare_init_image_pads_to_square():
    from PIL import Image

    image = Image.new("RGB", (20, 10), (255, 255, 255))
    padded = prepare_init_image(image, 0)
    assert padded.size == (20, 20)
    assert padded.getpixel((10, 0)) == (0, 0, 0) and padded.getpixel((10, 10)) == (255, 255, 255)
    assert prepare_init_image(image, 32).size == (32, 32)
    assert prepare_init_image(image, 0, pad_to_square=False).size == (20, 10)  # the notebook, literally


def test_zero_shot_filter_is_clip_argmax():
    """ZeroShotFilter.predict = argmax of cosine(image, template(class)) computed here with the tiny CLIP."""
    from vlprompt import clip

    model, preprocess = clip.load("tiny-vit", device="cpu")
    from PIL import Image

    images = [Image.new("RGB", (40, 30), c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90))]
    image_filter = ZeroShotFilter(model.encode_image, lambda t: model.encode_text(clip.tokenize(t)), preprocess,
                                  CLASSNAMES, "a photo of a {}.")
    with torch.no_grad():
        text = model.encode_text(clip.tokenize([f"a photo of a {c}." for c in CLASSNAMES]))
        feats = model.encode_image(torch.stack([preprocess(im) for im in images]))
        expected = (torch.nn.functional.normalize(feats, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).t())
    assert image_filter.predict(images) == expected.argmax(dim=-1).tolist()


def test_caption_seed_does_not_depend_on_where_the_data_root_lives(tmp_path):
    """The same images under two data roots get the same (seeded) captions."""
    def random_captioner(images, classnames, labels):
        return [f"{name} {torch.rand(1).item():.6f}" for name in classnames]  # draws from the seeded stream

    captions = []
    for root in ("first_root", "elsewhere/second_root"):
        paths = [f"/{root}/flowers/rose/image_{i}.jpg" for i in range(3)]
        folder = tmp_path / root.replace("/", "_")
        folder.mkdir()
        cache = CaptionCache(str(folder))
        captions.append(cache.get(paths, 0, "rose", random_captioner, read=lambda p: None))
    assert captions[0] == captions[1]

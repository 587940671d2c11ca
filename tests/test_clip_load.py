"""clip.load: TorchScript archives, plain state dicts, verified downloads, tiny models, preprocessing.

No network: the download path is exercised by serving local bytes through a patched ``urllib.request.urlopen``.
The fake OpenAI archive is a traced tiny model in OpenAI's archive layout, also read by open_clip 3.3.0's
``load_openai_model`` as an oracle.  A local archive is opened as TorchScript only when trusted or when its
SHA256 is a released checkpoint's (tests/test_untrusted_files.py checks the refusals).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os

import open_clip
import pytest
import torch
from PIL import Image

from vlprompt import clip
from vlprompt.clip import clip as clip_module
from vlprompt.clip.model import CLIP, build_model
from vlprompt.clip.tiny import tiny_state_dict

# torch.jit.trace/load are deprecated upstream, yet they are how the official archives are made and read.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:FutureWarning")
TEXTS = ["a photo of a cat.", "a diagram", "a dog"]


@pytest.fixture
def mha_fastpath_off():
    """open_clip's batch-first MHA may take the fused fast path (~1e-6 drift); compare against the plain path."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(previous)


def _images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _features(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.encode_image(_images()), model.encode_text(clip.tokenize(TEXTS))


def _trace_archive(model: CLIP, path: str, openai_like: bool = True) -> None:
    """Save ``model`` as a traced TorchScript archive with OpenAI's three extra int buffers."""
    del model.context_length, model.vocab_size
    model.register_buffer("input_resolution", torch.tensor(model.visual.input_resolution))
    model.register_buffer("context_length", torch.tensor(77))
    model.register_buffer("vocab_size", torch.tensor(49408))
    if openai_like:  # OpenAI keeps the mask as a plain attribute, so the archive has no mask entries
        for block in model.transformer.resblocks:
            mask = block.attn_mask
            del block.attn_mask
            block.attn_mask = mask
    image, text = _images(), clip.tokenize(TEXTS[:2])
    inputs = {"forward": (image.half(), text), "encode_image": (image.half(),), "encode_text": (text,)}
    torch.jit.trace_module(model, inputs, check_trace=False).save(path)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("archive") / "ViT-tiny.pt")
    _trace_archive(build_model(tiny_state_dict("vit")), path)
    return path


@pytest.fixture(scope="module")
def reference_features() -> tuple[torch.Tensor, torch.Tensor]:
    return _features(build_model(tiny_state_dict("vit")).float())


def test_load_torchscript_archive_matches_open_clip(archive, reference_features, mha_fastpath_off):
    """The fake OpenAI archive (trusted explicitly: its hash is no released checkpoint's) loads as fp32 on CPU,
    equal to build_model and to open_clip's loader."""
    model, preprocess = clip.load(archive, device="cpu", trust_local_archive=True)
    assert model.dtype == torch.float32 and not model.training
    ours = _features(model)
    oracle = _features(open_clip.load_openai_model(archive, precision="fp32", device="cpu"))
    for got, want, ref in zip(ours, reference_features, oracle):
        assert torch.equal(got, want)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert preprocess(Image.new("RGB", (50, 40))).shape == (3, 32, 32)


def test_load_archive_traced_with_mask_buffer(tmp_path, reference_features):
    """Tracing loses the non-persistent flag of our mask buffer; load() ignores those entries."""
    path = str(tmp_path / "traced.pt")
    _trace_archive(build_model(tiny_state_dict("vit")), path, openai_like=False)
    assert any(k.endswith("attn_mask") for k in torch.jit.load(path).state_dict())
    model, _ = clip.load(path, device="cpu", trust_local_archive=True)
    assert all(torch.equal(a, b) for a, b in zip(_features(model), reference_features))


@pytest.mark.parametrize("wrap", ["plain", "wrapped"])
def test_load_plain_state_dict_file(tmp_path, reference_features, wrap):
    """torch.save'd state dicts load (the reference hits EOFError), also as {'state_dict': {'module.' + key}}."""
    state_dict = tiny_state_dict("vit")
    if wrap == "wrapped":
        state_dict = {"state_dict": {f"module.{k}": v for k, v in state_dict.items()}, "epoch": 3}
    path = tmp_path / "tiny.pth"
    torch.save(state_dict, path)
    model, _ = clip.load(str(path), device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(_features(model), reference_features))


def test_load_rejects_non_clip_file(tmp_path):
    """A file without CLIP keys fails with one line naming the file."""
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(RuntimeError, match="other.pth: not a CLIP state dict"):
        clip.load(str(path), device="cpu")


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}
        self._fail_after = fail_after

    def read(self, size: int = -1) -> bytes:
        if self._fail_after is not None and self.tell() >= self._fail_after:
            raise ConnectionResetError("connection dropped")
        return super().read(min(size, 1024) if size > 0 else size)  # small chunks: several reads


def _serve(monkeypatch, data: bytes, fail_after: int | None = None) -> list[str]:
    requested: list[str] = []

    def fake_urlopen(url, *args, **kwargs):
        requested.append(url)
        return _FakeResponse(data, fail_after)

    monkeypatch.setattr(clip_module.urllib.request, "urlopen", fake_urlopen)
    return requested


def _register(monkeypatch, data: bytes, sha: str | None = None) -> str:
    sha = sha or hashlib.sha256(data).hexdigest()
    monkeypatch.setitem(clip_module._MODELS, "Fake/1", f"https://example.invalid/clip/models/{sha}/Fake-1.pt")
    return sha


def test_download_verifies_and_caches(tmp_path, monkeypatch, archive, reference_features):
    """A download whose SHA256 matches the URL is renamed into place, loaded, and reused without refetching."""
    data = open(archive, "rb").read()
    _register(monkeypatch, data)
    requested = _serve(monkeypatch, data)
    model, _ = clip.load("Fake/1", device="cpu", download_root=str(tmp_path))
    assert os.listdir(tmp_path) == ["Fake-1.pt"] and len(requested) == 1
    assert all(torch.equal(a, b) for a, b in zip(_features(model), reference_features))
    clip.load("Fake/1", device="cpu", download_root=str(tmp_path))
    assert len(requested) == 1


def test_download_checksum_mismatch_leaves_no_file(tmp_path, monkeypatch):
    """Wrong bytes: RuntimeError naming the file and the expected hash; no file or .part remains."""
    expected = _register(monkeypatch, b"the real bytes")
    _serve(monkeypatch, b"corrupted bytes" * 1000)
    with pytest.raises(RuntimeError, match=f"Fake-1.pt: SHA256 checksum mismatch .*expected {expected}"):
        clip.load("Fake/1", device="cpu", download_root=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_interrupted_download_leaves_no_file(tmp_path, monkeypatch):
    """A connection error mid-stream propagates and removes the partial file."""
    data = b"x" * 10_000
    _register(monkeypatch, data)
    _serve(monkeypatch, data, fail_after=3000)
    with pytest.raises(ConnectionResetError):
        clip_module._download(clip_module._MODELS["Fake/1"], str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_corrupt_cached_file_is_downloaded_again(tmp_path, monkeypatch, caplog):
    """A cached file with the wrong hash is replaced by a verified download, with a warning."""
    data = b"model bytes" * 100
    _register(monkeypatch, data)
    requested = _serve(monkeypatch, data)
    (tmp_path / "Fake-1.pt").write_bytes(b"stale")
    with caplog.at_level(logging.WARNING, logger="vlprompt.clip.clip"):
        path = clip_module._download(clip_module._MODELS["Fake/1"], str(tmp_path))
    assert open(path, "rb").read() == data and len(requested) == 1
    assert "downloading it again" in caplog.text


def test_available_models_and_unknown_name():
    """The nine OpenAI names in release order, each URL carrying a 64-hex SHA256; unknown names list them."""
    assert clip.available_models() == ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16",
                                       "ViT-L/14", "ViT-L/14@336px"]
    open_clip_names = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14",
                       "ViT-L-14-336"]
    for name, oc_name in zip(clip.available_models(), open_clip_names):
        url = clip_module._MODELS[name]
        assert url == open_clip.get_pretrained_url(oc_name, "openai") and len(url.split("/")[-2]) == 64
    with pytest.raises(RuntimeError, match=r"Model ViT-X/99 not found; available models = \['RN50'"):
        clip.load("ViT-X/99", device="cpu")


@pytest.mark.parametrize("name, size", [("tiny-vit", 32), ("tiny-rn", 64)])
def test_tiny_models_load_offline(name, size, caplog):
    """Tiny models: fp32 on CPU, ln(100) logit scale, preprocess to their resolution; jit=True warns."""
    with caplog.at_level(logging.WARNING, logger="vlprompt.clip.clip"):
        model, preprocess = clip.load(name, device="cpu", jit=True)
    assert "clip.load(jit=True) is not supported" in caplog.text
    assert model.dtype == torch.float32 and model.visual.input_resolution == size
    assert model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-6)
    images = torch.stack([preprocess(Image.new("RGB", (size + 13, size + 7), color=(i * 40, 90, 200)))
                          for i in range(3)])
    with torch.no_grad():
        logits, _ = model(images, clip.tokenize(TEXTS))
    assert logits.shape == (3, 3) and logits.std() > 0


def test_transform_matches_open_clip():
    """_transform equals open_clip's eval transform on odd-sized images of several PIL modes."""
    generator = torch.Generator().manual_seed(0)
    ours = clip_module._transform(32)
    reference = open_clip.image_transform(32, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                          std=open_clip.OPENAI_DATASET_STD)
    for mode, size in [("RGB", (57, 41)), ("RGBA", (33, 70)), ("L", (45, 45)), ("P", (61, 38)), ("CMYK", (40, 91))]:
        pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8).numpy()
        image = Image.fromarray(pixels, "RGB").convert(mode)
        out = ours(image)
        assert out.shape == (3, 32, 32)
        assert torch.equal(out, reference(image)), mode


def test_reference_compatible_surface():
    """`from clip import clip` exposes what CoOp-era code reads, and `clip` is this repo's package."""
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert os.path.dirname(os.path.abspath(clip.__file__)) == os.path.join(repo_root, "clip")
    assert clip_module._download.__defaults__ == (os.path.expanduser("~/.cache/clip"),)
    assert clip_module.build_model is build_model and clip_module.BICUBIC is not None
    assert clip_module._tokenizer.encoder["<|startoftext|>"] == 49406

"""CLIP-LoRA evaluation: unmerged LoRA branch vs merged weights, ours vs the reference's in-place merge.

Same random CLIP (ViT-B/16 architecture by default, no download), same LoRA tensors (q, k, v of every block of
both towers, r 2, alpha 1, B random), same inputs.  One evaluation = encode a batch of images + the class prompts.

- ``reference``: CLIP-LoRA's LoRA Linear written after the reference algorithm (MaxZanella/CLIP-LoRA@358f0d7
  ``loralib/layers.py``): ``eval()`` adds ``s B A`` into the weight in place, ``train()`` subtracts it.
- ``ours-unmerged``: ``clip/lora.py`` with the additive branch at evaluation (``unmerge()``).
- ``ours-merged``: ``clip/lora.py`` in eval mode (cached ``W0 + s B A``, ``W0`` untouched).

Printed per case: sizes, seconds (median), ratio to the reference, max |output - reference output|, peak memory.
Also printed: the drift of ``W0`` after 100 train/eval toggles (reference: in-place add/subtract; ours: none).

    python benchmarks/bench_lora_merge.py [--device cpu] [--repeats 5] [--batch 8] [--arch vit-b16|tiny] [--json F]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlprompt import clip  # noqa: E402
from vlprompt.clip.lora import LoRALinear, apply_lora, lora_specs  # noqa: E402
from vlprompt.clip.model import CLIP  # noqa: E402
from vlprompt.clip.tiny import TINY_CONFIGS  # noqa: E402

ARCHS = {
    "vit-b16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
                    context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                    transformer_layers=12),
    "tiny": TINY_CONFIGS["vit"],
}


class ReferenceLoRALinear(nn.Linear):
    """The reference's LoRA Linear: a fresh Linear, merged into ``weight`` in place by ``eval()``."""

    def __init__(self, layer: LoRALinear) -> None:
        super().__init__(layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            self.weight.copy_(layer.weight)
            if layer.bias is not None:
                self.bias.copy_(layer.bias)
        self.w_lora_A = nn.Parameter(layer.w_lora_A.detach().clone())
        self.w_lora_B = nn.Parameter(layer.w_lora_B.detach().clone())
        self.scaling = layer.alpha / math.sqrt(layer.r)
        self.merged = False

    def train(self, mode: bool = True) -> "ReferenceLoRALinear":
        super().train(mode)
        delta = self.scaling * (self.w_lora_B @ self.w_lora_A)
        if mode and self.merged:
            self.weight.data -= delta
            self.merged = False
        elif not mode and not self.merged:
            self.weight.data += delta
            self.merged = True
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if not self.merged:
            out = out + self.scaling * (x @ self.w_lora_A.t()) @ self.w_lora_B.t()
        return out


def build(arch: str, device: str) -> tuple[CLIP, CLIP]:
    """(ours, reference): the same random CLIP and LoRA tensors, LoRA layers of two kinds."""
    torch.manual_seed(0)
    ours = CLIP(**ARCHS[arch]).float().eval()
    weights = apply_lora(ours, lora_specs("both", r=2, alpha=1.0, dropout=0.0, params="qkv"))
    with torch.no_grad():
        for name, param in weights.named_parameters():
            if name.endswith("w_lora_B"):
                param.normal_(0, 0.02)
    reference = copy.deepcopy(ours)
    for module in list(reference.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, ReferenceLoRALinear(child))
    return ours.to(device).eval(), reference.to(device).eval()


def peak_memory(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB (cuda)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (RSS)"


def timed(fn, repeats: int, device: str) -> tuple[float, tuple]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="images per evaluation batch")
    parser.add_argument("--classes", type=int, default=100, help="class prompts encoded per evaluation")
    parser.add_argument("--arch", default="vit-b16", choices=sorted(ARCHS))
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args()
    ours, reference = build(args.arch, args.device)
    resolution = ARCHS[args.arch]["image_resolution"]
    images = torch.randn(args.batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))
    images = images.to(args.device)
    tokens = clip.tokenize([f"a photo of a class number {i}." for i in range(args.classes)]).to(args.device)

    def evaluate(model):
        def run():
            with torch.no_grad():
                return model.encode_image(images), model.encode_text(tokens)
        return run

    ref_time, ref_out = timed(evaluate(reference), args.repeats, args.device)
    results = [{"case": "reference", "seconds": ref_time, "max_abs_diff": 0.0}]
    for case, merged in (("ours-unmerged", False), ("ours-merged", True)):
        for layer in ours.modules():
            if isinstance(layer, LoRALinear):
                layer.merge() if merged else layer.unmerge()
        seconds, out = timed(evaluate(ours), args.repeats, args.device)
        diff = max((a - b).abs().max().item() for a, b in zip(out, ref_out))
        results.append({"case": case, "seconds": seconds, "max_abs_diff": diff})
    drift = {}
    for name, model in (("reference", reference), ("ours", ours)):
        layers = [m for m in model.modules() if isinstance(m, (LoRALinear, ReferenceLoRALinear))]
        model.train()  # unmerged: the weight is W0
        before = [layer.weight.detach().clone() for layer in layers]
        for _ in range(100):
            model.eval()
            model.train()
        drift[name] = max((layer.weight - w).abs().max().item() for layer, w in zip(layers, before))
    env = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(), "arch": args.arch,
           "batch": args.batch, "classes": args.classes, "repeats": args.repeats,
           "peak_memory": peak_memory(args.device)}
    print(f"# {env}")
    for r in results:
        print(f"{r['case']:14s} images {args.batch}x{resolution}px + {args.classes} prompts  {r['seconds']:.4f} s  "
              f"ratio {ref_time / r['seconds']:.2f}x  max|diff| {r['max_abs_diff']:.2e}  peak {env['peak_memory']}")
    print(f"W0 drift after 100 train/eval toggles: reference {drift['reference']:.2e}, ours {drift['ours']:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": results, "w0_drift_after_100_toggles": drift}, f, indent=1)


if __name__ == "__main__":
    main()

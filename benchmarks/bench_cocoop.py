"""CoCoOp training step with ViT-B/16-sized random weights and 100 classes: the reference's per-image
loop (all 77 positions, one text-encoder pass per image) vs our batched forward (one pass for all
image × class prompts, cropped at the last EOT). Reports time per image, peak memory, and the max
difference of logits and of the context gradient.

    python benchmarks/bench_cocoop.py [--device cuda] [--batch 2] [--big-batch 8] [--small]

CPU peak memory is the process's peak RSS growth; ours runs first, so the reference's figure is the
further growth it causes (on CUDA, ``max_memory_allocated`` is reset between cases).
"""
from __future__ import annotations

import gc

import torch
import torch.nn.functional as F

from common import Report, max_abs_diff, parser, peak_rss_gb, time_fn

VIT_B16 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
               context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)
SMALL = dict(embed_dim=64, image_resolution=32, vision_layers=2, vision_width=128, vision_patch_size=8,
             context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2, transformer_layers=2)


def build(config, n_cls: int, device: str):
    from vlprompt.clip.model import CLIP
    from vlprompt.trainers.cocoop import CoCoOpCLIP, CoCoOpPromptLearner
    from vlprompt.trainers.common.text_encoder import TextEncoder

    torch.manual_seed(0)
    clip_model = CLIP(**config).float().eval()
    for p in clip_model.parameters():
        p.requires_grad_(False)
    classnames = [f"class number {i}" for i in range(n_cls)]
    learner = CoCoOpPromptLearner(classnames, clip_model, n_ctx=4, ctx_init="a photo of a")
    ours = CoCoOpCLIP(learner, TextEncoder(clip_model, truncate_at_eot=True), clip_model).to(device)
    full_text = TextEncoder(clip_model, truncate_at_eot=False).to(device)
    return ours, full_text


def reference_logits(model, full_text, image):
    """CoCoOp's reference forward: one full 77-position text-encoder pass per image."""
    learner = model.prompt_learner
    image_features = model.image_encoder(image)
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    logits = []
    for feat in image_features:  # the per-image Python loop
        prompts = learner(feat.unsqueeze(0))[0]  # (n_cls, 77, D)
        text = full_text(prompts, learner.tokenized_prompts)
        text = text / text.norm(dim=-1, keepdim=True)
        logits.append(model.logit_scale.exp() * feat @ text.t())
    return torch.stack(logits)


def step(forward, model, image, label):
    model.prompt_learner.zero_grad(set_to_none=True)
    logits = forward(image)
    F.cross_entropy(logits, label).backward()
    return logits.detach(), model.prompt_learner.ctx.grad.detach().clone()


def peak_memory(device: str, fn) -> float:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        fn()
        return torch.cuda.max_memory_allocated() / 1024 ** 3
    before = peak_rss_gb()
    fn()
    return max(0.0, peak_rss_gb() - before)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--big-batch", type=int, default=8, help="ours only: show this batch fits")
    p.add_argument("--classes", type=int, default=100)
    args = p.parse_args()
    config, device = (SMALL if args.small else VIT_B16), args.device
    report = Report(f"CoCoOp training step ({'tiny' if args.small else 'ViT-B/16'} sizes, {args.classes} classes)",
                    device)
    model, full_text = build(config, args.classes, device)
    res = config["image_resolution"]
    torch.manual_seed(1)
    image = torch.randn(args.batch, 3, res, res, device=device)
    label = torch.randint(0, args.classes, (args.batch,), device=device)

    ours_fn = lambda: step(model, model, image, label)  # noqa: E731
    ref_fn = lambda: step(lambda x: reference_logits(model, full_text, x), model, image, label)  # noqa: E731
    ours_mem = peak_memory(device, ours_fn)
    ref_mem = peak_memory(device, ref_fn)
    our_t = time_fn(ours_fn, device, args.repeats, args.warmup)
    ref_t = time_fn(ref_fn, device, args.repeats, args.warmup)
    (l_ours, g_ours), (l_ref, g_ref) = ours_fn(), ref_fn()
    report.add(f"batch {args.batch}: time per image", ref_t / args.batch, our_t / args.batch,
               max_abs_diff(l_ref, l_ours), grad_max_abs_diff=max_abs_diff(g_ref, g_ours),
               ref_peak_gb=ref_mem, ours_peak_gb=ours_mem,
               memory_ratio=ref_mem / ours_mem if ours_mem > 0 else float("nan"))
    if args.big_batch:
        big = torch.randn(args.big_batch, 3, res, res, device=device)
        big_label = torch.randint(0, args.classes, (args.big_batch,), device=device)
        fn = lambda: step(model, model, big, big_label)  # noqa: E731
        mem = peak_memory(device, fn)
        t = time_fn(fn, device, max(1, args.repeats // 2), 0)
        print(f"batch {args.big_batch} (ours only): {t / args.big_batch:.4f}s per image, peak growth {mem:.2f} GB",
              flush=True)
    report.save(args.json)


if __name__ == "__main__":
    main()

"""LangevinCoOp K-sample hard vote: the reference's K full test passes vs encode-once.

Reference-style path (the ensemble evaluation of Walter-pixel/COOP_Langevin_Public@7fe769c, written here from
its description): for each of the K bank samples, load it into the prompt learner and run the whole test set
through the full CLIP (image tower + all-class prompts per batch), take the argmax, then count votes per class
and take the first maximum.  Ours (``LangevinCoOp.test_ensemble``): encode the
test images once, then one text pass per sample, votes accumulated by ``VoteAccumulator``.  Same random CLIP,
prompt samples and images; the labels must agree exactly.

    python benchmarks/bench_langevin_vote.py [--k 80] [--n-test 1000] [--arch tiny-vit|rn50] [--device cuda]
"""
from __future__ import annotations

from typing import Dict, List

import torch

from common import Report, max_abs_diff, parser, peak_rss_gb, time_fn

ARCHS = {
    "tiny-vit": dict(embed_dim=64, image_resolution=32, vision_layers=2, vision_width=128, vision_patch_size=8,
                     context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2,
                     transformer_layers=2),
    "rn50": dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64,
                 vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=512,
                 transformer_heads=8, transformer_layers=12),
}


def build(arch: str, n_cls: int, n_ctx: int, k: int, device: str):
    """Random CLIP + CSC prompt learner (PromptCLIP) and k prompt samples around its context."""
    from vlprompt.clip.model import CLIP
    from vlprompt.trainers.common.prompt_clip import PromptCLIP
    from vlprompt.trainers.common.prompt_learner import PromptLearnerBase
    from vlprompt.trainers.common.text_encoder import TextEncoder

    torch.manual_seed(0)
    clip_model = CLIP(**ARCHS[arch]).float().eval()
    learner = PromptLearnerBase([f"class {i}" for i in range(n_cls)], clip_model, n_ctx=n_ctx, csc=True)
    model = PromptCLIP(learner, TextEncoder(clip_model), clip_model).to(device).eval()
    g = torch.Generator().manual_seed(1)
    base = learner.ctx.detach().cpu()
    states = [{"ctx": (base + 0.01 * torch.randn(base.shape, generator=g)).to(device)} for _ in range(k)]
    return model, states


def reference_vote(model, states: List[Dict[str, torch.Tensor]], images: torch.Tensor, batch: int):
    """K full passes (image + text per batch), then per-class counts and the first maximum."""
    votes = []
    for state in states:
        model.prompt_learner.load_state_dict(state)
        votes.append(torch.cat([model(images[i:i + batch]).argmax(1) for i in range(0, len(images), batch)]))
    votes = torch.stack(votes)  # (K, N)
    n_cls = model.prompt_learner.n_cls
    counts = torch.stack([(votes == c).sum(0) for c in range(n_cls)], dim=1)  # (N, C)
    return counts.argmax(1), model(images[:batch])  # argmax returns the first maximum


def our_vote(model, states: List[Dict[str, torch.Tensor]], images: torch.Tensor, batch: int):
    """Image features once, one text pass per sample (LangevinCoOp.test_ensemble)."""
    from vlprompt.trainers.langevin_coop import VoteAccumulator

    features = torch.cat([model.encode_image(images[i:i + batch]) for i in range(0, len(images), batch)])
    votes = VoteAccumulator(len(images), model.prompt_learner.n_cls, images.device)
    scale = model.logit_scale.exp()
    for state in states:
        model.prompt_learner.load_state_dict(state)
        logits = scale * features @ model.encode_text().t()  # (N, C)
        votes.add_labels(logits.argmax(1))
    return votes.hard(), logits[:batch]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--arch", default="tiny-vit", choices=sorted(ARCHS))
    p.add_argument("--k", type=int, default=80, help="bank size K (reference: 80)")
    p.add_argument("--n-test", type=int, default=1000, help="test images (CIFAR: 10000)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--n-ctx", type=int, default=15)
    p.add_argument("--batch", type=int, default=256, help="test batch size (reference: 1024)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.small:
        args.k, args.n_test, args.classes, args.n_ctx = 4, 64, 4, 4
    device = args.device
    report = Report(f"LangevinCoOp {args.k}-sample hard vote ({args.arch})", device)
    model, states = build(args.arch, args.classes, args.n_ctx, args.k, device)
    res = ARCHS[args.arch]["image_resolution"]
    images = torch.randn(args.n_test, 3, res, res, generator=torch.Generator().manual_seed(2)).to(device)
    with torch.no_grad():
        ref_labels, ref_logits = reference_vote(model, states, images, args.batch)
        our_labels, our_logits = our_vote(model, states, images, args.batch)
        mismatches = int((ref_labels != our_labels).sum())
        diff = max_abs_diff(ref_logits, our_logits)  # last sample's logits on the first batch
        ref_t = time_fn(lambda: reference_vote(model, states, images, args.batch), device, args.repeats, args.warmup)
        our_t = time_fn(lambda: our_vote(model, states, images, args.batch), device, args.repeats, args.warmup)
    report.add(f"K={args.k} N={args.n_test} C={args.classes} n_ctx={args.n_ctx}", ref_t, our_t, diff,
               label_mismatches=mismatches, peak_rss_gb=peak_rss_gb())
    report.save(args.json)


if __name__ == "__main__":
    main()

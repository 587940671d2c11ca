"""Grid evaluation: 3 seeds of one method on one dataset's test split, with and without the feature cache.

The reference path is Dassl's ``test`` loop in every run (each seed decodes, transforms and encodes every test
image again); ours is ``ClipPromptTrainer.test`` with ``EVAL_FROM_IMAGE_FEATURES`` (the first seed encodes the
split once and writes ``TEST.FEATURE_CACHE``, the others load it).  Each timed repeat starts from an empty cache.
Data: the Synthetic dataset with 20 classes x 50 test images; model: the tiny random CLIP, or with ``--full``
ViT-B/16-sized random weights at 224 px (use a GPU for that).  Reports the ratio and the max logit difference.

    python benchmarks/bench_grid_eval.py [--trainer CoOp|ZeroshotCLIP] [--seeds 3] [--full] [--device cuda]
"""
from __future__ import annotations

import logging
import os.path as osp
import shutil
import tempfile
from typing import Callable, List

import torch

from common import REPO_ROOT, Report, max_abs_diff, parser, peak_rss_gb, time_fn

CONFIGS = {
    "CoOp": ("configs/trainers/CoOp/tiny_vit_ep50_ctxv1.yaml", "TRAINER.COOP.PREC"),
    "ZeroshotCLIP": ("configs/trainers/ZeroshotCLIP/tiny_vit.yaml", "TRAINER.ZEROSHOTCLIP.PREC"),
}
VIT_B16 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
               context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)


def save_full_clip(folder: str) -> str:
    """A ViT-B/16-sized random CLIP state dict (OpenAI layout) written to ``folder``; returns its path."""
    from vlprompt.clip.model import CLIP

    torch.manual_seed(0)
    path = osp.join(folder, "random-vit-b16.pt")
    torch.save(CLIP(**VIT_B16).state_dict(), path)
    return path


def build_trainers(args, work: str, backbone: str, resolution: int) -> list:
    """One trainer per seed (same data, own prompt init), evaluating the 20 x 50 synthetic test split."""
    from helpers import build, build_cfg

    config, prec_key = CONFIGS[args.trainer]
    opts = ["DATASET.SYNTHETIC.NUM_CLASSES", "20", "DATASET.SYNTHETIC.NUM_TEST", "50", "DATASET.NUM_SHOTS", "4",
            "DATALOADER.TEST.BATCH_SIZE", str(args.batch), "INPUT.SIZE", f"({resolution}, {resolution})",
            "TEST.FEATURE_CACHE.DIR", osp.join(work, "cache"), prec_key, args.prec,
            "USE_CUDA", str(args.device.startswith("cuda"))]
    return [build(build_cfg(args.trainer, config, osp.join(work, f"seed{seed}"), osp.join(work, "data"), seed=seed,
                            opts=opts, backbone=backbone))
            for seed in range(1, args.seeds + 1)]


def record_logits(trainer) -> List[torch.Tensor]:
    """Make ``trainer.evaluator.process`` also keep each batch's logits; returns the (cleared-per-run) list."""
    kept: List[torch.Tensor] = []
    process = trainer.evaluator.process

    def wrapped(output, label):
        kept.append(output.detach().float().cpu())
        return process(output, label)

    trainer.evaluator.process = wrapped
    return kept


def grid(trainers: list, kept: list, test: Callable, before: Callable[[], None] = lambda: None) -> List[torch.Tensor]:
    """Evaluate every seed's trainer with ``test(trainer)``; returns each seed's logits ``(N, n_cls)``."""
    before()
    for trainer, logits in zip(trainers, kept):
        logits.clear()
        test(trainer)
    return [torch.cat(logits) for logits in kept]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trainer", default="CoOp", choices=sorted(CONFIGS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch", type=int, default=100, help="DATALOADER.TEST.BATCH_SIZE")
    p.add_argument("--prec", default="fp32", choices=("fp16", "fp32", "amp"))
    p.add_argument("--full", action="store_true", help="ViT-B/16-sized random CLIP at 224 px instead of tiny-vit")
    args = p.parse_args()
    logging.getLogger().setLevel(logging.WARNING)  # trainer INFO lines would drown the result line
    import sys
    sys.path.insert(0, osp.join(REPO_ROOT, "tests"))
    from dassl.engine import TrainerX

    work = tempfile.mkdtemp(prefix="bench_grid_eval_")
    try:
        backbone, resolution = (save_full_clip(work), 224) if args.full else ("tiny-vit", 32)
        trainers = build_trainers(args, work, backbone, resolution)
        kept = [record_logits(t) for t in trainers]
        cache_dir = trainers[0].cfg.TEST.FEATURE_CACHE.DIR
        clear = lambda: shutil.rmtree(cache_dir, ignore_errors=True)  # noqa: E731  every repeat starts cold

        report = Report(f"grid evaluation, {args.seeds} seeds x {len(trainers[0].dm.dataset.test)} test images "
                        f"({args.trainer}, {'ViT-B/16-sized' if args.full else 'tiny-vit'})", args.device)
        ref = grid(trainers, kept, TrainerX.test)
        ours = grid(trainers, kept, lambda t: t.test(), clear)
        diff = max(max_abs_diff(a, b) for a, b in zip(ref, ours))
        ref_s = time_fn(lambda: grid(trainers, kept, TrainerX.test), args.device, args.repeats, args.warmup)
        ours_s = time_fn(lambda: grid(trainers, kept, lambda t: t.test(), clear), args.device, args.repeats,
                         args.warmup)
        report.add(f"{args.seeds} seeds x {len(ref[0])} images, {args.prec}", ref_s, ours_s, diff,
                   peak_rss_gb=peak_rss_gb())
        report.save(args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Frozen-feature few-shot baselines: a 16-shot grid (4 methods x 3 seeds) with and without the feature cache, and
Tip-Adapter's test pass and alpha/beta search against reference-style computations.

Cases (each: reference-style seconds, ours, ratio, max abs difference):
- ``grid``: LinearProbeCLIP, TipAdapter, TipAdapter_F and CLIP_Adapter, seeds 1-3, trained and tested in one
  process.  Reference style: ``TEST.FEATURE_CACHE.ENABLED False`` (every run encodes its splits, its augmented
  views and its test images, as the reference scripts do); ours: one cache folder for the grid, starting empty.
  The difference is over the test logits of all 12 runs.  One line per method as well; each run is timed
  without and then with the cache, back to back, after an untimed run that draws the dataset; the CPU seconds
  of the process are reported beside the wall time (less sensitive to other processes on a shared machine).
- ``tip test``: a fitted Tip-Adapter evaluated by Dassl's loop (images -> tower -> cache logits, per batch, every
  run) against ``ClipPromptTrainer.test`` on the cached test features (the entry already on disk).
- ``tip search``: the reference's double loop over the (beta, alpha) grid, recomputing ``f K^T`` and the zero-shot
  logits for every pair, against ``search_alpha_beta`` (once per split, each beta's cache logits once, alphas
  batched); the difference is |beta| + |alpha| of the two choices.

Data: the Synthetic dataset, 20 classes x 16 shots (320 training, 80 val, 1,000 test images); model: the tiny
random CLIP (32 px), or with ``--full`` ViT-B/16-sized random weights at 224 px (use a GPU for that).

    python benchmarks/bench_frozen_baselines.py [--epochs 5] [--views 10] [--full] [--device cuda] [--json out.json]
"""
from __future__ import annotations

import logging
import os.path as osp
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from typing import Dict, List, Tuple

import torch

from common import REPO_ROOT, Report, max_abs_diff, parser, peak_rss_gb, time_fn

sys.path.insert(0, osp.join(REPO_ROOT, "tests"))
from bench_grid_eval import record_logits, save_full_clip  # noqa: E402

METHODS = {  # name: (tiny config, whether its epochs are set by --epochs)
    "LinearProbeCLIP": ("configs/trainers/LinearProbeCLIP/tiny_vit.yaml", False),
    "TipAdapter": ("configs/trainers/TipAdapter/tiny_vit_aug2.yaml", False),
    "TipAdapter_F": ("configs/trainers/TipAdapter_F/tiny_vit_aug2_ep10.yaml", True),
    "CLIP_Adapter": ("configs/trainers/CLIP_Adapter/tiny_vit_ep50.yaml", True),
    "ZeroshotCLIP": ("configs/trainers/ZeroshotCLIP/tiny_vit.yaml", False),  # only draws the dataset first
}
SEEDS = (1, 2, 3)


def method_opts(args, name: str, resolution: int) -> List[str]:
    opts = ["DATASET.SYNTHETIC.NUM_CLASSES", "20", "DATASET.SYNTHETIC.NUM_TEST", "50", "DATASET.NUM_SHOTS", "16",
            "DATALOADER.TEST.BATCH_SIZE", str(args.batch), "INPUT.SIZE", f"({resolution}, {resolution})",
            "USE_CUDA", str(args.device.startswith("cuda")), "TRAIN.PRINT_FREQ", "1000"]
    if METHODS[name][1]:
        opts += ["OPTIM.MAX_EPOCH", str(args.epochs)]
    if name.startswith("TipAdapter"):
        opts += [f"TRAINER.{name.upper()}.AUGMENT_EPOCH", str(args.views)]
    return opts


def one_run(args, work: str, backbone: str, resolution: int, name: str, seed: int, cache_opts: List[str]
            ) -> Tuple[Tuple[float, float], torch.Tensor]:
    """Build, train and test one (method, seed) into a fresh folder; ((wall, CPU) seconds, test logits)."""
    from helpers import build, build_cfg

    config = METHODS[name][0]
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer = build(build_cfg(name, config, osp.join(work, "runs", name, f"seed{seed}"), osp.join(work, "data"),
                              seed=seed, opts=method_opts(args, name, resolution) + cache_opts, backbone=backbone))
    kept = record_logits(trainer)
    trainer.train()  # ends with the test
    seconds = (time.perf_counter() - start, time.process_time() - cpu_start)
    shutil.rmtree(osp.join(work, "runs"), ignore_errors=True)
    return seconds, torch.cat(kept)


def grid_cases(args, work: str, backbone: str, resolution: int, report: Report) -> None:
    """Each (seed, method) without the cache, then with it, back to back (a shared machine drifts less between
    the two); the cache folder starts empty and is shared by the grid."""
    cache_dir = osp.join(work, "cache")
    no_cache = ["TEST.FEATURE_CACHE.ENABLED", "False"]
    with_cache = ["TEST.FEATURE_CACHE.ENABLED", "True", "TEST.FEATURE_CACHE.DIR", cache_dir]
    one_run(args, work, backbone, resolution, "ZeroshotCLIP", 1, no_cache)  # draws the dataset, untimed
    ref_s: Dict[str, List[float]] = defaultdict(lambda: [0.0, 0.0])  # wall, CPU seconds
    ours_s: Dict[str, List[float]] = defaultdict(lambda: [0.0, 0.0])
    diffs: Dict[str, float] = defaultdict(float)
    for seed in SEEDS:
        for name in METHODS:
            if name == "ZeroshotCLIP":
                continue
            seconds, ref = one_run(args, work, backbone, resolution, name, seed, no_cache)
            ref_s[name] = [a + b for a, b in zip(ref_s[name], seconds)]
            seconds, ours = one_run(args, work, backbone, resolution, name, seed, with_cache)
            ours_s[name] = [a + b for a, b in zip(ours_s[name], seconds)]
            diffs[name] = max(diffs[name], max_abs_diff(ref, ours))
    for name in ref_s:
        report.add(f"grid {name}, {len(SEEDS)} seeds", ref_s[name][0], ours_s[name][0], diffs[name],
                   cpu_reference_s=ref_s[name][1], cpu_ours_s=ours_s[name][1])
    ref_wall, ref_cpu = (sum(s[i] for s in ref_s.values()) for i in (0, 1))
    ours_wall, ours_cpu = (sum(s[i] for s in ours_s.values()) for i in (0, 1))
    report.add(f"grid total, {len(ref_s)} methods x {len(SEEDS)} seeds", ref_wall, ours_wall, max(diffs.values()),
               cpu_reference_s=ref_cpu, cpu_ours_s=ours_cpu, peak_rss_gb=peak_rss_gb())


def reference_search(features, labels, keys, values, text, clip_scale, betas, alphas) -> Tuple[float, float]:
    """Tip-Adapter's utils.py search_hp: every pair recomputes the affinity and the zero-shot logits."""
    best_acc, best_beta, best_alpha = 0.0, 0.0, 0.0
    for beta in betas:
        for alpha in alphas:
            affinity = features @ keys.t()
            cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
            clip_logits = clip_scale * features @ text.t()
            tip_logits = clip_logits + cache_logits * alpha
            acc = 100 * float((tip_logits.argmax(1) == labels).sum()) / len(labels)
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    return best_beta, best_alpha


def tip_cases(args, work: str, backbone: str, resolution: int, report: Report) -> None:
    from dassl.engine import TrainerX
    from helpers import build, build_cfg
    from vlprompt.trainers.tip_adapter.cache_model import search_alpha_beta, search_grid

    opts = method_opts(args, "TipAdapter", resolution) + ["TEST.FEATURE_CACHE.DIR", osp.join(work, "tip-cache")]
    trainer = build(build_cfg("TipAdapter", METHODS["TipAdapter"][0], osp.join(work, "tip"), osp.join(work, "data"),
                              opts=opts, backbone=backbone))
    kept = record_logits(trainer)
    trainer.train()  # fits, tests once: the test features are now on disk

    def evaluate(test):
        kept.clear()
        test(trainer)
        return torch.cat(kept)

    ref, ours = evaluate(TrainerX.test), evaluate(lambda t: t.test())
    ref_s = time_fn(lambda: evaluate(TrainerX.test), args.device, args.repeats, args.warmup)
    ours_s = time_fn(lambda: evaluate(lambda t: t.test()), args.device, args.repeats, args.warmup)
    report.add(f"tip test, {len(ref)} images (cached features vs images per batch)", ref_s, ours_s,
               max_abs_diff(ref, ours))

    node, model = trainer.cfg.TRAINER.TIPADAPTER, trainer.model
    features, labels = trainer.split_features("val")
    features, labels = features.to(trainer.device), labels.to(trainer.device)
    keys, values = model.cache.keys.detach(), model.cache.values
    betas, alphas = search_grid(node.SEARCH_SCALE[0], args.beta_steps), search_grid(node.SEARCH_SCALE[1], 20)
    text, scale = model.text_features, model.clip_scale
    args_ref = (features, labels, keys, values, text, scale, betas, alphas)
    with torch.no_grad():
        ref_pair = reference_search(*args_ref)
        ours_pair = search_alpha_beta(features, labels, model.clip_logits(features), keys, values, betas, alphas)[:2]
        ref_s = time_fn(lambda: reference_search(*args_ref), args.device, 1, 0)
        ours_s = time_fn(lambda: search_alpha_beta(features, labels, model.clip_logits(features), keys, values, betas,
                                                   alphas), args.device, args.repeats, args.warmup)
    diff = abs(ref_pair[0] - ours_pair[0]) + abs(ref_pair[1] - ours_pair[1])
    report.add(f"tip search, {len(betas)} x {len(alphas)} pairs, {len(labels)} val images x {len(keys)} keys", ref_s,
               ours_s, diff)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5, help="epochs of TipAdapter_F and CLIP_Adapter in the grid")
    p.add_argument("--views", type=int, default=10, help="Tip-Adapter's augmented views (AUGMENT_EPOCH)")
    p.add_argument("--batch", type=int, default=100, help="DATALOADER.TEST.BATCH_SIZE")
    p.add_argument("--beta-steps", type=int, default=200, help="beta grid size of the search case (alpha: 20)")
    p.add_argument("--full", action="store_true", help="ViT-B/16-sized random CLIP at 224 px instead of tiny-vit")
    p.add_argument("--skip-grid", action="store_true", help="only the Tip-Adapter cases")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.small:
        args.epochs, args.views, args.beta_steps = 1, 2, 20
    logging.getLogger().setLevel(logging.WARNING)  # trainer INFO lines would drown the result lines
    logging.disable(logging.INFO)
    work = tempfile.mkdtemp(prefix="bench_frozen_baselines_")
    try:
        backbone, resolution = (save_full_clip(work), 224) if args.full else ("tiny-vit", 32)
        model = "ViT-B/16-sized" if args.full else "tiny-vit"
        report = Report(f"frozen-feature baselines, 16 shots x 20 classes ({model}, {args.views} views, "
                        f"{args.epochs} training epochs)", args.device)
        if not args.skip_grid:
            grid_cases(args, work, backbone, resolution, report)
        tip_cases(args, work, backbone, resolution, report)
        report.save(args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

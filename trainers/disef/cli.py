"""Command line of DISEF's generation (``scripts/disef/generate.py`` = ``python -m vlprompt.trainers.disef.cli``).

Builds the few-shot train split of a vlprompt dataset, picks the settings of ``--preset`` (``config.PRESETS``) with
any flag given on top, loads the models (or the offline stand-ins of ``--tiny-models``) and runs the resumable,
optionally sharded pipeline of ``pipeline.py``.  Bad input is one line on stderr and exit status 1.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import defaultdict
from typing import Any, Optional, Sequence

import torch

from dassl.utils import progress
from vlprompt.extras import MissingExtraError

from .config import BUDGET_POLICIES, BUDGET_UNITS, CAPTION_LABELS, CHAT_FORMATS, PRESETS, GenerationConfig
from .fakes import tiny_img2img_pipeline, tiny_llava
from .manifest import read_manifest
from .models import Img2ImgGenerator, LlavaCaptioner, TemplateCaptioner, load_clip_filter, load_llava, \
    load_sd_img2img, read_rgb
from .pipeline import low_f1_classes, run_generation
from .sharding import Shard, finish_shard, merge_shard_manifests, reconcile_manifests, resolve_shard, shard_device, \
    shard_from_env

logger = logging.getLogger(__name__)

USER_ERRORS = (FileNotFoundError, KeyError, ValueError, MissingExtraError)  # bad input: one line, exit 1
# command-line destination -> GenerationConfig field, for the flags whose default comes from --preset
PRESET_FLAGS = {
    "images_per_class": "images_per_class", "batch_size": "batch_size", "steps": "num_inference_steps",
    "strength": "strength", "cfg_strength": "guidance_scale", "init_size": "init_size", "pad": "pad_to_square",
    "prompt_template": "prompt_template", "sd_model": "sd_model", "llava_model": "llava_model",
    "quantize_4bit": "quantize_4bit", "caption_query": "caption_query", "caption_hint": "caption_hint",
    "caption_label": "caption_label", "chat_format": "chat_format", "caption_temperature": "caption_temperature",
    "caption_max_new_tokens": "caption_max_new_tokens", "filter_backbone": "filter_backbone",
    "filter_template": "filter_template", "cycle_budget": "cycle_budget", "budget_unit": "budget_unit",
    "budget_policy": "budget_policy",
}

SHARDING_HELP = """\
presets (--preset; any flag given explicitly wins):
  disef_paper  the released DISEF pipeline: Realistic Vision V2.0, LLaVA-1.5-7B captions as prompts, open_clip
               ViT-H-14 (LAION-2B) filter with a budget of 100 cycles, 64 images per class
  notebook     the seed notebook's Flowers102 choices: SD 2.1-base, "A realistic photo of a {class}, a type of
               flower. {caption}", 4-bit LLaVA, ViT-B/16 filter with a budget of 100 discards, 32 per class

sharded generation (several GPUs, nodes or array tasks, one output folder):
  Shard I of N generates exactly the classes c with c % N == I (a class is never split: same images as one
  process). Without --shard-index/--num-shards, I and N come from torchrun (RANK, WORLD_SIZE; each process uses
  GPU LOCAL_RANK), srun (SLURM_PROCID, SLURM_NTASKS) or a Slurm array (SLURM_ARRAY_TASK_ID,
  SLURM_ARRAY_TASK_COUNT; ids counted from SLURM_ARRAY_TASK_MIN). Each shard writes
  manifest.shard-I-of-N.jsonl, resumes from it when re-run, and marks itself finished; the last shard to
  finish merges all of them into manifest.jsonl (class order, as a single-process run would write it).

  torchrun --nproc-per-node 8 scripts/disef/generate.py --dataset-config-file D.yaml --output-dir OUT ...
  sbatch --array=0-15 --gpus=1 --wrap "python scripts/disef/generate.py --dataset-config-file D.yaml \\
      --output-dir OUT ..."            # re-submit failed array tasks with the same command
  python scripts/disef/generate.py --output-dir OUT --merge    # merge by hand; refuses while a shard is
                                                              # missing or unfinished, naming it
"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each option (preset-controlled ones name both presets' values), the epilog as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.dest in PRESET_FLAGS:
            field = PRESET_FLAGS[action.dest]
            values = "; ".join(f"{name}: {preset_value(name, field)!r}" for name in PRESETS)
            return f"{action.help or ''} (default from --preset: {values})".replace("%", "%%")
        return super()._get_help_string(action)


def preset_value(preset: str, field: str) -> Any:
    return getattr(GenerationConfig.preset(preset), field)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="DISEF synthetic augmentation pipeline (scripts/disef/generate.py)",
                                     epilog=SHARDING_HELP, formatter_class=HelpFormatter)
    data = parser.add_argument_group("real images (a vlprompt dataset: its few-shot train split)")
    data.add_argument("--root", default="", help="datasets root (DATASET.ROOT)")
    data.add_argument("--dataset-config-file", default="",
                      help="e.g. configs/datasets/flowers102.yaml (required unless --merge)")
    data.add_argument("--seed", type=int, default=1, help="few-shot sampling seed and generation seed")
    data.add_argument("--num-shots", type=int, default=16, help="real shots per class (< 1: all)")
    data.add_argument("--subsample-classes", default="base", choices=("all", "base", "new"))
    data.add_argument("--output-dir", required=True, help="where class folders and manifest.jsonl go")
    parser.add_argument("--preset", default="disef_paper", choices=tuple(PRESETS),
                        help="the settings of every flag below that is not given (see the end of this help)")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--images-per-class", type=int, help="kept images per class")
    gen.add_argument("--batch-size", type=int, help="images per cycle")
    gen.add_argument("--steps", type=int, help="diffusion steps")
    gen.add_argument("--strength", type=float, help="img2img strength (denoising steps = steps x strength)")
    gen.add_argument("--cfg-strength", type=float, help="classifier-free guidance")
    gen.add_argument("--init-size", type=int, help="side of the init images; 0: native size (the notebook)")
    gen.add_argument("--pad", action=argparse.BooleanOptionalAction, help="pad init images to a square first")
    gen.add_argument("--prompt-template", help="Stable Diffusion prompt with {caption} and optionally {classname}")
    gen.add_argument("--sd-model", help="Stable Diffusion img2img pipeline (Hugging Face id or folder)")
    gen.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    gen.add_argument("--save-discarded", action="store_true", help="also write rejected images under _discarded/")
    cap = parser.add_argument_group("captions")
    cap.add_argument("--captioner", default="llava", choices=("llava", "template"),
                     help="template: 'a photo of a {class}.' without a captioning model")
    cap.add_argument("--llava-model", help="LLaVA-1.5 checkpoint in the transformers format")
    cap.add_argument("--quantize-4bit", action=argparse.BooleanOptionalAction,
                     help="load LLaVA in 4-bit NF4 (CUDA + bitsandbytes)")
    cap.add_argument("--caption-query", help="LLaVA request, before the hint")
    cap.add_argument("--caption-hint", help="appended to the query; {} = class name")
    cap.add_argument("--caption-label", choices=CAPTION_LABELS,
                     help="index: the integer label in the hint, label 0 none (the notebook, literally)")
    cap.add_argument("--chat-format", choices=CHAT_FORMATS,
                     help="notebook: its '###Human: ... ###Assistant:' prompt instead of the checkpoint's template")
    cap.add_argument("--caption-temperature", type=float, help="LLaVA sampling temperature")
    cap.add_argument("--caption-max-new-tokens", type=int, help="caption length limit")
    flt = parser.add_argument_group("filter and class selection")
    flt.add_argument("--filter-backbone",
                     help="CLIP name/path/tiny name, 'open_clip:<arch>:<pretrained>', or 'none' (keep everything)")
    flt.add_argument("--filter-lora", default="", help="lora_weights.pt of a trained CLIP_LoRA run (improved DISEF)")
    flt.add_argument("--filter-template", help="zero-shot prompt with {}; '' = the dataset's template")
    flt.add_argument("--trust-local-archive", action="store_true",
                     help="allow a local TorchScript CLIP archive as filter (MODEL.BACKBONE.TRUST_LOCAL_ARCHIVE)")
    flt.add_argument("--cycle-budget", type=int, help="cycles (or discards) before the budget policy applies")
    flt.add_argument("--budget-unit", choices=BUDGET_UNITS, help="what the budget counts")
    flt.add_argument("--budget-policy", choices=BUDGET_POLICIES,
                     help="accept: keep unfiltered images after the budget (DISEF); stop: give up on the class")
    flt.add_argument("--f1-threshold", type=float, default=-1.0,
                     help="> 0: only classes whose zero-shot val F1 is below it (improved DISEF: 0.70)")
    flt.add_argument("--f1-backbone", default="", help="zero-shot CLIP for the F1 selection ('' = filter backbone)")
    shards = parser.add_argument_group("sharding (see the end of this help)")
    shards.add_argument("--shard-index", type=int, default=None,
                        help="this process generates the classes c with c %% N == I; None: from RANK, SLURM_PROCID "
                             "or SLURM_ARRAY_TASK_ID, else 0")
    shards.add_argument("--num-shards", type=int, default=None,
                        help="N; None: from WORLD_SIZE, SLURM_NTASKS or SLURM_ARRAY_TASK_COUNT, else 1")
    shards.add_argument("--merge", action="store_true",
                        help="only merge the finished shard manifests of --output-dir into manifest.jsonl")
    parser.add_argument("--tiny-models", action="store_true",
                        help="offline smoke run: random tiny LLaVA and Stable Diffusion (meaningless images)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="dataset config overrides: KEY VALUE ...")
    return parser


def generation_config(args) -> GenerationConfig:
    """``--preset``'s settings with the flags given on the command line on top."""
    given = {field: getattr(args, dest) for dest, field in PRESET_FLAGS.items() if getattr(args, dest) is not None}
    cfg = GenerationConfig.preset(args.preset, seed=args.seed, save_discarded=args.save_discarded, **given)
    cfg.check()
    return cfg


def load_dataset(args):
    from dassl.data.datasets import build_dataset
    from vlprompt.trainers.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(args.dataset_config_file)
    cfg.DATASET.ROOT, cfg.SEED = args.root, args.seed
    cfg.DATASET.NUM_SHOTS, cfg.DATASET.SUBSAMPLE_CLASSES = args.num_shots, args.subsample_classes
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    return cfg, build_dataset(cfg)


def zero_shot_f1_classes(args, gen_cfg: GenerationConfig, dataset, template: str) -> list[int]:
    """Classes whose zero-shot val F1 is below ``--f1-threshold`` (improved DISEF)."""
    backbone = args.f1_backbone or gen_cfg.filter_backbone
    if not dataset.val:
        raise ValueError(f"--f1-threshold needs a val split; {type(dataset).__name__} has none")
    classifier = load_clip_filter(backbone, dataset.classnames, template, args.device,
                                  trust_local_archive=args.trust_local_archive)
    labels = [d.label for d in dataset.val]
    predictions = []
    for start in progress(range(0, len(dataset.val), 64), "zero-shot F1 (val)"):
        predictions += classifier.predict([read_rgb(d.impath) for d in dataset.val[start:start + 64]])
    classes = low_f1_classes(labels, predictions, dataset.num_classes, args.f1_threshold)
    logger.info(f"{len(classes)}/{dataset.num_classes} classes have zero-shot val F1 < {args.f1_threshold}: "
                f"{[dataset.classnames[c] for c in classes]}")
    return classes


def complete(root: str, cfg: GenerationConfig, classes: Sequence[int], manifest_file: str) -> bool:
    """True when the manifest already holds ``images_per_class`` kept images for every class of ``classes``."""
    kept: dict[int, int] = defaultdict(int)
    for record in read_manifest(root, manifest_file):
        kept[record["class"]] += record["kept"]
    return all(kept[c] >= cfg.images_per_class for c in classes)


def merge_only(args) -> int:
    count = args.num_shards
    if count is None:
        env_shard = shard_from_env()
        count = env_shard.count if env_shard.sharded else None
    merge_shard_manifests(args.output_dir, count)
    return 0


def build_models(args, gen_cfg: GenerationConfig, classnames: Sequence[str], device: str):
    """(img2img pipeline, captioner): the preset's models, or the offline stand-ins with ``--tiny-models``."""
    words = [w for name in classnames for w in name.split()]
    if args.tiny_models:
        logger.warning("--tiny-models: random tiny LLaVA and Stable Diffusion; the images are noise (smoke run)")
        model, processor = tiny_llava(words + gen_cfg.caption_query.split())
        return tiny_img2img_pipeline(words).to(device), LlavaCaptioner(model.to(device), processor, gen_cfg)
    pipe = load_sd_img2img(gen_cfg.sd_model, device)
    if args.captioner == "template":
        return pipe, TemplateCaptioner()
    model, processor = load_llava(gen_cfg.llava_model, device, gen_cfg.quantize_4bit)
    return pipe, LlavaCaptioner(model, processor, gen_cfg)


def generate(args, shard: Shard) -> int:
    from ..common.templates import dataset_template

    gen_cfg = generation_config(args)
    cfg, dataset = load_dataset(args)
    template = gen_cfg.filter_template or dataset_template(cfg.DATASET.NAME)
    real: dict[int, list[str]] = defaultdict(list)
    for datum in dataset.train_x:
        real[datum.label].append(datum.impath)
    args.device = device = shard_device(args.device)  # also for the F1 pass
    logger.info(f"Generation preset {args.preset}: {gen_cfg}")
    if shard.sharded:
        logger.info(f"{shard} of {args.output_dir} on {device}")
    if args.f1_threshold > 0:
        gen_cfg.classes = zero_shot_f1_classes(args, gen_cfg, dataset, template)
    classes = gen_cfg.classes or sorted(real)
    reconcile_manifests(args.output_dir, shard, classes, dict(real))
    if complete(args.output_dir, gen_cfg, shard.select(classes), shard.manifest_file):
        logger.info(f"{args.output_dir}: every class{f' of {shard}' if shard.sharded else ''} already has "
                    f"{gen_cfg.images_per_class} images; nothing to do")
        if shard.sharded:
            finish_shard(args.output_dir, shard, shard.select(classes))
        return 0
    pipe, captioner = build_models(args, gen_cfg, dataset.classnames, device)
    image_filter = None
    if gen_cfg.filter_backbone != "none":
        image_filter = load_clip_filter(gen_cfg.filter_backbone, dataset.classnames, template, device,
                                        args.filter_lora, trust_local_archive=args.trust_local_archive)
    run_generation(gen_cfg, args.output_dir, dict(real), dataset.classnames, captioner,
                   Img2ImgGenerator(pipe, gen_cfg), image_filter, shard=shard)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command; bad input (a missing shard, file or key, a bad value) is one line on stderr and exit status 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.merge and not args.dataset_config_file:
        parser.error("--dataset-config-file is required (unless --merge)")
    try:
        return merge_only(args) if args.merge else generate(args, resolve_shard(args.shard_index, args.num_shards))
    except USER_ERRORS as err:
        if os.environ.get("VLPROMPT_DEBUG") == "1":
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        logger.error(f"error: {message}  (set VLPROMPT_DEBUG=1 for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Offline demo: every registered trainer on synthetic data with the pre-trained tiny CLIP, one table, one figure.

    python scripts/demo.py [--output output/demo] [--data data] [--seeds 1 2] [--figure FILE.png]
    bash scripts/demo.sh                         # the same, with OUTPUT / DATA / SEEDS / FIGURE / PYTHON from the env

One Python process; each run is ``vlprompt.train.cli(argv)`` (= ``train.py argv``), into its own folder:

1. pre-train the tiny CLIP ``tiny-vit-synthetic`` (``clip/pretrain_tiny.py``; kept when its file exists);
2. ZeroshotCLIP, CoOp, CoCoOp base-to-new per seed: train and test on the base half of the Synthetic classes,
   then test on the new half (as ``scripts/cocoop/base2new_*.sh``);
3. every other registered trainer once: its first ``configs/trainers/<Name>/tiny_*.yaml`` on Synthetic, base
   classes, 16 shots, ``MODEL.BACKBONE.NAME tiny-vit-synthetic``, unless ``DEMO_RUNS`` says otherwise (another
   dataset, settings, or data to write first: a CIFAR-10-LT copy of the synthetic shapes in CIFAR's own pickle
   format, DISEF's images from ``scripts/disef/generate.py --tiny-models``, its offline mode with random tiny
   Stable Diffusion and LLaVA: noise images, but every step of the pipeline).  A trainer that cannot run says so
   in one line and the demo goes on;
4. one table (``vlprompt.results_tables``, as ``parse_test_res.py --table``; accuracy, mAP for the multi-label
   runs) and one figure (``vlprompt.results_plots`` panels, as ``--plot``) of every run below ``--output``.

Finished runs are not run again (delete ``--output`` to start over).  What the runs print goes to
``<output>/demo.log``; the console gets one line per run.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import logging
import os
import os.path as osp
import shutil
import sys
import time
import traceback
from typing import Dict, List, Optional, Sequence, Tuple

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# `vlprompt` and `dassl` of this checkout from any working directory; last on the path, as train.py does, so that
# `import datasets` / `import clip` inside transformers and diffusers never reach the top-level folders here
sys.path.append(REPO_ROOT)

from vlprompt.results_plots import (Bars, Panel, PlotDependencyError, base_new_panel, draw_bars,  # noqa: E402
                                    groups_panel, require_matplotlib)
from vlprompt.results_runs import collect_rows, harmonic_mean_rows, read_run  # noqa: E402
from vlprompt.results_tables import (harmonic_table, needs_folder, render_markdown, results_table,  # noqa: E402
                                     skipped_notes)

TINY_CLIP = "tiny-vit-synthetic"
BASE2NEW = ("ZeroshotCLIP", "CoOp", "CoCoOp")  # trained on the base classes, tested on base and new


@dataclasses.dataclass(frozen=True)
class DemoRun:
    """How the demo runs one trainer; the defaults are the common case."""

    config: str = ""  # trainer YAML relative to the repository; "" = the first configs/trainers/<Name>/tiny_*.yaml
    dataset: str = "synthetic"  # configs/datasets/<dataset>.yaml
    shots: int = 16  # DATASET.NUM_SHOTS
    classes: str = "base"  # DATASET.SUBSAMPLE_CLASSES
    opts: Tuple[str, ...] = ()  # KEY VALUE pairs after the common ones
    keyword: str = "accuracy"  # its result line: `* <keyword>: x%`
    clip: bool = True  # False: not a CLIP method, MODEL.BACKBONE.NAME stays the config's
    data: str = ""  # written before the run: "cifar10_lt" (write_shape_cifar10) or "disef" (generate.py)


MULTILABEL = dict(dataset="synthetic_multilabel", shots=-1, classes="all", keyword="mAP")
DEMO_RUNS: Dict[str, DemoRun] = {
    "ZeroshotCLIP2": DemoRun("configs/trainers/ZeroshotCLIP/tiny_vit.yaml"),  # the ImageNet template ensemble
    "Vanilla": DemoRun("configs/trainers/Vanilla/cnn_small_ep10.yaml", clip=False),  # a small CNN from scratch
    "LMPT": DemoRun(**MULTILABEL),
    "ZeroshotCLIPMultiLabel": DemoRun("configs/trainers/LMPT/tiny_vit_ep10.yaml", **MULTILABEL),
    # The long tail it was made for: 10 shape classes, 100 training images for the first down to 1 (ratio 0.01)
    "LangevinCoOp": DemoRun(dataset="cifar10_lt", shots=-1, classes="all", data="cifar10_lt"),
    # Noisy labels: 4 of each class's 16 shots carry another class's label.  10 epochs (2 of warm-up) instead of
    # the tiny config's 40 (8): the same accuracy on this data, in a quarter of the time
    "MLPT": DemoRun(opts=("DATASET.NUM_FP", "4", "OPTIM.MAX_EPOCH", "10", "TRAINER.MLPT.WARMUP_EPOCH", "2")),
    "DISEF": DemoRun(data="disef"),  # the real shots + 8 generated images per class
}
COMMON_OPTS = ("DATALOADER.NUM_WORKERS", "0")  # worker processes cost more than the tiny runs gain
CIFAR_CLASSES, CIFAR_TRAIN, CIFAR_TEST = 10, 100, 20  # CIFAR-10-LT copy: images per class before the cut, test
# DISEF generation: 8 kept images per base class (the tiny config's MAX_SYN_PER_CLASS), 2 diffusion steps, no filter
DISEF_GENERATION = ("--images-per-class", "8", "--batch-size", "4", "--steps", "2", "--strength", "1.0",
                    "--init-size", "32", "--caption-max-new-tokens", "4", "--filter-backbone", "none",
                    "--no-quantize-4bit", "--tiny-models", "--device", "cpu")


class DemoError(ValueError):
    """A trainer the demo cannot run; the message is one line."""


# ----------------------------------------------------------------------------- which runs


def demo_run(trainer: str) -> DemoRun:
    """The trainer's entry in ``DEMO_RUNS``, else the defaults with its first tiny config."""
    run = DEMO_RUNS.get(trainer, DemoRun())
    if run.config:
        return run
    tiny = sorted(glob.glob(osp.join(REPO_ROOT, "configs", "trainers", trainer, "tiny_*.yaml")))
    if not tiny:
        raise DemoError(f"no configs/trainers/{trainer}/tiny_*.yaml and no entry in scripts/demo.py DEMO_RUNS")
    return dataclasses.replace(run, config=osp.relpath(tiny[0], REPO_ROOT))


def registered_trainers() -> List[str]:
    """Every registered trainer: the base-to-new ones first, then in registration order."""
    from dassl.engine import TRAINER_REGISTRY
    from vlprompt import trainers  # noqa: F401  (registers every trainer)

    names = list(TRAINER_REGISTRY.registered_names())
    return [n for n in BASE2NEW if n in names] + [n for n in names if n not in BASE2NEW]


@dataclasses.dataclass
class Step:
    """One train.py invocation."""

    trainer: str
    run: DemoRun
    seed: int
    output_dir: str
    classes: str  # the classes tested: run.classes, or "new" for the new-class test of a base-trained model
    model_dir: str = ""  # --eval-only of this training run

    def argv(self, data: str) -> List[str]:
        flags = []
        if self.model_dir:
            epoch = last_epoch(self.model_dir)  # None for zero-shot: nothing was saved
            flags = ["--eval-only", "--model-dir", self.model_dir]
            flags += ["--load-epoch", str(epoch)] if epoch is not None else []
        opts = [*COMMON_OPTS, "DATASET.NUM_SHOTS", str(self.run.shots), "DATASET.SUBSAMPLE_CLASSES", self.classes]
        opts += ["MODEL.BACKBONE.NAME", TINY_CLIP] if self.run.clip else []
        return ["--root", data, "--seed", str(self.seed), "--trainer", self.trainer,
                "--dataset-config-file", osp.join(REPO_ROOT, "configs", "datasets", f"{self.run.dataset}.yaml"),
                "--config-file", osp.join(REPO_ROOT, self.run.config), "--output-dir", self.output_dir,
                *flags, *opts, *self.run.opts]


def last_epoch(run_dir: str) -> Optional[int]:
    """Epoch of the newest checkpoint set of a training run (``<model>/checkpoint`` names its file), or None."""
    for pointer in sorted(glob.glob(osp.join(run_dir, "*", "checkpoint"))):
        with open(pointer) as f:
            name = f.read().strip()
        if name.startswith("model.pth.tar-"):
            return int(name.rsplit("-", 1)[1])
    return None


def steps_for(trainer: str, run: DemoRun, output: str, seeds: Sequence[int]) -> List[Step]:
    """Base-to-new trainers: per seed, train + test on base, then test on new; any other trainer: one run."""
    experiment = osp.join(run.dataset, f"shots_{run.shots}", trainer, osp.splitext(osp.basename(run.config))[0])
    if trainer not in BASE2NEW:
        return [Step(trainer, run, 1, osp.join(output, "runs", experiment, "seed1"), run.classes)]
    steps = []
    for seed in seeds:
        train_dir = osp.join(output, "base2new", "train_base", experiment, f"seed{seed}")
        steps.append(Step(trainer, run, seed, train_dir, "base"))
        steps.append(Step(trainer, run, seed, osp.join(output, "base2new", "test_new", experiment, f"seed{seed}"),
                          "new", model_dir=train_dir))
    return steps


# ----------------------------------------------------------------------------- data the special runs need


def write_shape_cifar10(root: str) -> str:
    """A CIFAR-10-LT copy of the synthetic shapes under ``root``, where ``CIFAR10LT`` looks (kept once complete)."""
    from vlprompt.datasets.cifar_lt import CIFAR10LT
    from vlprompt.datasets.synthetic import write_cifar10_shapes

    folder = osp.join(root, CIFAR10LT.dataset_dir, CIFAR10LT.base_folder)
    if not osp.isfile(osp.join(folder, CIFAR10LT.meta_file)):
        tmp = f"{folder}.tmp{os.getpid()}"
        write_cifar10_shapes(tmp, CIFAR_CLASSES, CIFAR_TRAIN, CIFAR_TEST)
        try:
            os.replace(tmp, folder)  # the whole copy appears at once
        except OSError:  # another demo finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def generate_disef_images(data: str, output: str, seed: int = 1) -> str:
    """DISEF's synthetic images for the Synthetic base classes (its 16 shots as init images); returns the folder."""
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        raise DemoError(f'its image generation needs diffusers and transformers: pip install "vlprompt[generation]" '
                        f'({err})')
    from vlprompt.trainers.disef.cli import main as generate

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny models are built from config objects, never downloaded
    folder = osp.join(output, "disef_images", "synthetic", f"seed{seed}")
    argv = ["--root", data, "--dataset-config-file", osp.join(REPO_ROOT, "configs", "datasets", "synthetic.yaml"),
            "--seed", str(seed), "--num-shots", "16", "--subsample-classes", "base", "--output-dir", folder,
            *DISEF_GENERATION]
    if generate(argv) != 0:
        raise DemoError("scripts/disef/generate.py --tiny-models failed (its error is in demo.log)")
    return folder


def prepare_data(run: DemoRun, data: str, output: str) -> Tuple[DemoRun, str]:
    """Write the data ``run`` needs: (the run with the options that point at it, where the data are)."""
    if run.data == "cifar10_lt":
        return run, f"CIFAR-10-LT copy in {write_shape_cifar10(data)}"
    if run.data == "disef":
        folder = generate_disef_images(data, output)
        return dataclasses.replace(run, opts=run.opts + ("TRAINER.DISEF.SYN_DIR", folder)), f"images in {folder}"
    return run, ""


# ----------------------------------------------------------------------------- running


@contextlib.contextmanager
def into_log(log):
    """What is printed or logged inside goes to the demo log, so the console keeps one line per run."""
    handler, root = logging.StreamHandler(log), logging.getLogger()
    root.addHandler(handler)  # this also makes a library's logging.basicConfig() a no-op
    level, root.level = root.level, logging.INFO
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        log.flush()


def failure(log, offset: int, err: Optional[BaseException] = None) -> str:
    """One line on why a step failed: the exception (its traceback goes to the log), else the log's last error."""
    if err is not None:
        log.write(traceback.format_exc())
        text = str(err) if isinstance(err, DemoError) else f"{type(err).__name__}: {err}"
        return (text.splitlines() or [""])[0][:200]
    with open(log.name, errors="replace") as f:
        f.seek(offset)
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line]
    return (errors or lines or ["no output"])[-1][:200]


def run_step(step: Step, data: str, log) -> Tuple[Optional[float], str]:
    """(value, note): the run's ``* <keyword>:`` value, or None and one line on why not."""
    from vlprompt.train import cli

    if osp.isdir(step.output_dir) and read_run(step.output_dir, step.run.keyword).done:
        return read_run(step.output_dir, step.run.keyword).value, "done before"
    offset = log.tell()
    try:
        with into_log(log):
            code = cli(step.argv(data))
    except (Exception, SystemExit) as err:  # a trainer's bug (or a flag clash) must not stop the demo
        return None, failure(log, offset, err)
    if code != 0:
        return None, failure(log, offset)
    result = read_run(step.output_dir, step.run.keyword)
    return (result.value, "") if result.done else (None, result.reason)


def run_trainer(trainer: str, data: str, output: str, seeds: Sequence[int], log) -> bool:
    """All steps of one trainer, one console line each; False when it could not run."""
    offset, start = log.tell(), time.time()
    try:
        with into_log(log):
            run, written = prepare_data(demo_run(trainer), data, output)
    except Exception as err:  # missing config, missing extra, failed generation: one line, the demo goes on
        print(f"  {trainer:<24} cannot run in the demo: {failure(log, offset, err)}", flush=True)
        return False
    if written:
        print(f"  {trainer:<24} {written} ({time.time() - start:.0f} s)", flush=True)
    for step in steps_for(trainer, run, output, seeds):
        start = time.time()
        value, note = run_step(step, data, log)
        where = f"{run.dataset}, {step.classes} classes, seed {step.seed}"
        if value is None:
            print(f"  {trainer:<24} {where:<42} FAILED: {note}", flush=True)
            return False
        print(f"  {trainer:<24} {where:<42} {run.keyword} {value:6.2f}%  ({note or f'{time.time() - start:.0f} s'})",
              flush=True)
    return True


def pretrain_clip(log) -> str:
    """The pre-trained tiny CLIP's file, trained now unless it exists; one line on what happened."""
    from vlprompt.clip.pretrain_tiny import PretrainConfig, pretrain_tiny_clip, save_state_dict
    from vlprompt.trainers.common.clip_loading import PRETRAINED_TINY, pretrained_tiny_path

    path, start = pretrained_tiny_path(TINY_CLIP), time.time()
    if osp.isfile(path):
        return f"{path} exists (kept)"
    with into_log(log):
        state_dict, _ = pretrain_tiny_clip(PretrainConfig(arch=PRETRAINED_TINY[TINY_CLIP][1]))
        save_state_dict(state_dict, path)
    return f"{path} ({time.time() - start:.0f} s)"


# ----------------------------------------------------------------------------- table and figure


def result_rows(output: str) -> List[dict]:
    """One row per experiment folder: its accuracy, or its mAP when it has no accuracy (the multi-label runs)."""
    by_map = {r["folder"]: r for r in collect_rows(output, "mAP") if r["mean"] is not None}
    return [by_map.get(r["folder"], r) if r["mean"] is None else r for r in collect_rows(output, "accuracy")]


def demo_table(rows: List[dict]) -> str:
    """``parse_test_res.py --table``'s markdown tables (the folder column only where rows look alike)."""
    finished = [r for r in rows if r["mean"] is not None]
    hm_rows = harmonic_mean_rows(finished)
    parts = [render_markdown(results_table(rows, "accuracy (mAP)", with_folder=needs_folder(rows)))]
    parts += [render_markdown(harmonic_table(hm_rows))] if hm_rows else []
    notes = skipped_notes(rows)
    return "\n\n".join(parts + (["\n".join(notes)] if notes else []))


def figure_rows(rows: List[dict]) -> List[dict]:
    """Finished rows labelled by trainer; a single seed gets no error bar (its std of 0 says nothing)."""
    def one(r: dict, single: bool) -> dict:
        groups = {g: (m, None if single else s) for g, (m, s) in r["groups"].items()}
        return {**r, "method": r["trainer"], "std": None if single else r["std"], "groups": groups}

    return [one(r, r["n"] < 2) for r in rows if r["mean"] is not None]


def draw_panel(ax, panel: Panel, colors: Dict[str, str], legend: bool = True) -> None:
    draw_bars(ax, panel.bars, colors)
    top = max((m for values in panel.bars.series.values() for m, _ in values if m is not None), default=100.0)
    ax.set_ylim(0, 1.3 * top)  # room for the legend above the bars
    ax.set_title(panel.title)
    ax.set_ylabel(panel.ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    if legend:
        ax.legend(fontsize="small", loc="upper left")


def demo_figure(rows: List[dict], path: str) -> None:
    """Top: every single-label Synthetic run on the base classes, best first; below: base-to-new, and the
    CIFAR-10-LT and multi-label class groups (``results_plots`` panels and bars)."""
    from matplotlib.container import BarContainer

    Figure, FigureCanvasAgg = require_matplotlib()
    rows = figure_rows(rows)
    synthetic = sorted((r for r in rows if r["dataset"] == "Synthetic" and r["classes"] == "base"),
                       key=lambda r: -r["mean"])
    top = Panel("overall", f"Synthetic: {len(synthetic)} trainers on the base classes", "accuracy (%)",
                bars=Bars([r["trainer"] for r in synthetic], {"accuracy": [(r["mean"], r["std"]) for r in synthetic]}))
    below = [base_new_panel(harmonic_mean_rows(rows), "accuracy (%)")]
    for dataset, keyword in (("CIFAR10LT", "accuracy"), ("SyntheticMultiLabel", "mAP")):
        panel, _ = groups_panel([r for r in rows if r["dataset"] == dataset], keyword)
        if panel is not None:
            panel.title, panel.ylabel = f"{dataset}: class groups", f"{keyword} (%)"
        below.append(panel)
    below = [p for p in below if p is not None]
    labels = sorted({label for p in below for label in p.bars.series})
    colors = {"accuracy": "C0", **{label: f"C{(i + 1) % 10}" for i, label in enumerate(labels)}}
    fig = Figure(figsize=(5.0 * max(len(below), 3), 9.0), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, max(len(below), 1))
    ax = fig.add_subplot(grid[0, :])
    draw_panel(ax, top, colors, legend=False)
    zero_shot = [r["mean"] for r in synthetic if r["trainer"] == "ZeroshotCLIP"]
    if zero_shot:  # which methods beat the zero-shot CLIP they start from
        ax.axhline(zero_shot[0], linestyle="--", color="gray", label="ZeroshotCLIP")
        ax.legend(fontsize="small", loc="upper right")
    ax.bar_label(next(c for c in ax.containers if isinstance(c, BarContainer)), fmt="%.1f", fontsize="small")
    ax.tick_params(axis="x", labelrotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    for k, panel in enumerate(below):
        draw_panel(fig.add_subplot(grid[1, k]), panel, colors)
    fig.suptitle(f"vlprompt offline demo: {len({r['trainer'] for r in rows})} trainers, tiny CLIP {TINY_CLIP}")
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=osp.join(REPO_ROOT, "output", "demo"), help="where the runs go")
    parser.add_argument("--data", default=osp.join(REPO_ROOT, "data"), help="dataset root (the data are drawn there)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="seeds of the base-to-new runs")
    parser.add_argument("--figure", default="", help="the figure (.png or .pdf); default <output>/demo.png")
    parser.add_argument("--trainers", nargs="+", default=None, help="only these trainers (default: every one)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    output, data = osp.abspath(args.output), osp.abspath(args.data)
    figure = osp.abspath(args.figure or osp.join(output, "demo.png"))
    os.environ.setdefault("VLPROMPT_SKIP_ENV_INFO", "1")  # no environment dump in every log
    os.makedirs(output, exist_ok=True)
    start = time.time()
    with open(osp.join(output, "demo.log"), "a") as log:
        print(f"== 1/3 Pre-training the tiny CLIP {TINY_CLIP} on synthetic image/caption pairs", flush=True)
        print(f"  {pretrain_clip(log)}", flush=True)
        trainers = args.trainers or registered_trainers()
        seeds = f"seed{'s' if len(args.seeds) > 1 else ''} {' '.join(map(str, args.seeds))}"
        print(f"== 2/3 {len(trainers)} trainers (ZeroshotCLIP, CoOp, CoCoOp: base-to-new, {seeds}); runs under "
              f"{output}", flush=True)
        failed = [t for t in trainers if not run_trainer(t, data, output, args.seeds, log)]
    rows = result_rows(output)
    if not any(r["mean"] is not None for r in rows):
        print(f"error: no run has a result; see {osp.join(output, 'demo.log')}", file=sys.stderr)
        return 1
    print(f"== 3/3 Results ({time.time() - start:.0f} s): accuracy, mAP for the multi-label SyntheticMultiLabel")
    print(demo_table(rows))
    try:
        demo_figure(rows, figure)
    except PlotDependencyError as err:  # matplotlib is an extra
        figure = f"no figure: {err}"
    done = len({r["trainer"] for r in rows if r["mean"] is not None})
    print(f"\n{'wrote ' if osp.isfile(figure) else ''}{figure}\n{done} trainers have results"
          + (f"; could not run: {', '.join(failed)} (see {osp.join(output, 'demo.log')})" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

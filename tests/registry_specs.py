"""How to run every registered trainer tiny: the settings of the registry-wide tests.

``spec_for(name)`` gives a trainer's ``RunSpec``; a trainer without an entry in ``SPECS`` gets the default:
the first ``configs/trainers/<Name>/tiny_*.yaml`` on the Synthetic dataset, so a newly registered method is
picked up by ``tests/test_registry_*.py`` the day it is registered.  Runs are 2 epochs of a random tiny CLIP
(``tiny-vit``, 32 px) on 4 shots of 10 synthetic classes, batch 8, a checkpoint after every epoch.

``reference_run(name, root)`` trains a trainer once per test session (shared by the xdist workers through a
file lock) and returns its output folder: the uninterrupted run that the smoke, torchrun and fault tests
compare against.
"""
from __future__ import annotations

import fcntl
import glob
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from helpers import REPO_ROOT, run_train, train_argv

SYNTHETIC = "configs/datasets/synthetic.yaml"
SYNTHETIC_MULTILABEL = "configs/datasets/synthetic_multilabel.yaml"
EPOCHS = 2
# Settings every tiny run shares (a trainer's own opts come after and win).
COMMON_OPTS = ("OPTIM.MAX_EPOCH", str(EPOCHS), "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "DATALOADER.TEST.BATCH_SIZE",
               "32", "DATALOADER.NUM_WORKERS", "0", "TEST.FEATURE_CACHE.ENABLED", "False", "TRAIN.CHECKPOINT_FREQ",
               "1", "TRAIN.PRINT_FREQ", "100")
TINY_CLIP = ("MODEL.BACKBONE.NAME", "tiny-vit", "INPUT.SIZE", "(32, 32)")
FEW_SHOTS = ("DATASET.NUM_SHOTS", "4")


@dataclass(frozen=True)
class RunSpec:
    """One trainer's tiny run."""

    config: str  # trainer YAML, relative to the repository root
    dataset: str = SYNTHETIC
    opts: Sequence[str] = field(default_factory=tuple)  # KEY VALUE pairs after COMMON_OPTS
    learns: bool = True  # False: nothing is trained or checkpointed (zero-shot)
    metric: str = "accuracy"  # the `* <metric>: x%` line compared between runs


SPECS: dict[str, RunSpec] = {
    "Vanilla": RunSpec("configs/trainers/Vanilla/cnn_small_ep10.yaml", opts=FEW_SHOTS),
    "ZeroshotCLIP": RunSpec("configs/trainers/ZeroshotCLIP/tiny_vit.yaml", opts=TINY_CLIP, learns=False),
    "ZeroshotCLIP2": RunSpec("configs/trainers/ZeroshotCLIP/tiny_vit.yaml", opts=TINY_CLIP, learns=False),
    # CoOp's own LR 0.002, not the tiny YAML's 0.5 (which makes the random tiny CLIP's contexts grow to ~40, where
    # the float rounding of two half-batch gradient sums exceeds the 1e-6 torchrun tolerance).
    "CoOp": RunSpec("configs/trainers/CoOp/tiny_vit_ep50_ctxv1.yaml", opts=TINY_CLIP + FEW_SHOTS + ("OPTIM.LR", "0.002")),
    # KgCoOp: LR 5e-4, for the same reason as CoOp: at the tiny YAML's 0.5 the two-rank context ends ~3e-4 from
    # the single-process one, and even at 0.002 its worst element uses 87% of the 1e-6/1e-5 tolerance (the
    # knowledge-guided term adds to CoOp's large random-CLIP gradients); at 5e-4 it uses ~22%.
    "KgCoOp": RunSpec("configs/trainers/KgCoOp/tiny_vit_ep50_ctxv1.yaml",
                      opts=TINY_CLIP + FEW_SHOTS + ("OPTIM.LR", "5e-4")),
    "CoCoOp": RunSpec("configs/trainers/CoCoOp/tiny_vit_c4_ep10_batch4_ctxv1.yaml", opts=TINY_CLIP + FEW_SHOTS),
    # LangevinCoOp: lr 1e-4 (not the tiny config's 0.05): on the random tiny CLIP its context gradients reach
    # ~140 per element, so at 0.05 the float rounding of two half-batch gradient sums (~1e-4) moves the
    # context by ~7e-6 per step, beyond the 1e-6 tolerance; at 1e-4 the runs agree to ~3e-8.  The samples
    # after epochs 0 and 1 vote, with Langevin noise (T = 1/N) in epoch 1.
    "LangevinCoOp": RunSpec(
        "configs/trainers/LangevinCoOp/tiny_vit_ctx4_csc_nonoise_ep6_batch32.yaml",
        opts=TINY_CLIP + FEW_SHOTS + ("TRAINER.LANGEVINCOOP.AUGMENT", "dassl", "TRAINER.LANGEVINCOOP.BURN_IN", "0",
                                      "TRAINER.LANGEVINCOOP.MAX_SAMPLES", "2", "TRAINER.LANGEVINCOOP.NOISE_MODE",
                                      "sgld_temp", "TRAINER.LANGEVINCOOP.PROMPT_SAVE_FREQ", "1", "OPTIM.LR", "1e-4")),
    # One warm-up epoch, then one co-divide epoch (pool losses gathered, GMM split shared, split loaders sharded).
    # LR 0.002 (CoOp's and the reference's) instead of the tiny YAML's 0.05: with a random tiny CLIP the co-divide
    # gradients are ~25, and at 0.05 the ~1e-6 rounding difference of two half-batch sums grows past 1e-6.
    "MLPT": RunSpec("configs/trainers/MLPT/tiny_vit_ctx4_csc_ep40.yaml",
                    opts=TINY_CLIP + FEW_SHOTS + ("DATASET.NUM_FP", "1", "TRAINER.MLPT.WARMUP_EPOCH", "1",
                                                  "OPTIM.LR", "0.002")),
    # DPT: lr 0.002 (not the tiny config's 0.02): its dense score gradient makes large steps, whose float
    # rounding over two half batches would exceed the 1e-6 tolerance; the tokens still change every epoch.
    "DPT": RunSpec("configs/trainers/DPT/tiny_vit_c2_ep5_batch4.yaml",
                   opts=TINY_CLIP + FEW_SHOTS + ("OPTIM.LR", "0.002")),
    # SGD at a small step instead of the tiny config's Adam at 1e-2: Adam's normalised steps turn the float
    # rounding of two half batches (~1e-7 relative) into context differences of a few 1e-6 over 54 steps.
    "LMPT": RunSpec("configs/trainers/LMPT/tiny_vit_ep10.yaml", dataset=SYNTHETIC_MULTILABEL,
                    opts=TINY_CLIP + ("OPTIM.NAME", "sgd", "OPTIM.LR", "0.002"), metric="mAP"),
    "ZeroshotCLIPMultiLabel": RunSpec("configs/trainers/LMPT/tiny_vit_ep10.yaml", dataset=SYNTHETIC_MULTILABEL,
                                      opts=TINY_CLIP + ("TRAINER.ZEROSHOTCLIPMULTILABEL.PREC", "fp32"),
                                      learns=False, metric="mAP"),
    # LoRA dropout and random flips draw per rank under torchrun (another random draw than one process): off here
    "CLIP_LoRA": RunSpec("configs/trainers/CLIP_LoRA/tiny_vit_qkv_r2_a1_iters10_batch8.yaml",
                         opts=TINY_CLIP + FEW_SHOTS + ("TRAINER.CLIP_LORA.ITERS_PER_SHOT", "0",
                                                       "TRAINER.CLIP_LORA.DROPOUT", "0.0",
                                                       "INPUT.TRANSFORMS", "['normalize']")),
    "DISEF": RunSpec("configs/trainers/DISEF/tiny_vit_qv_r8-4_a8_lam0.8_ep10_batch8.yaml",
                     opts=TINY_CLIP + FEW_SHOTS + ("TRAINER.DISEF.DROPOUT", "0.0", "INPUT.TRANSFORMS", "['normalize']")),
    # MaPLe, IVLP, VPT: lr 2e-4 instead of the tiny configs' 0.1: the deep prompts get large gradients on the random
    # tiny CLIP (MaPLe's context through both towers), and at 0.002 the float rounding of two half-batch sums
    # already moves MaPLe's context by 2.8e-6 (IVLP's deep text prompts by 7.5e-7, close to the 1e-6 tolerance) in 2
    # epochs; at 2e-4 every prompt agrees within 2e-7 and still moves by ~0.01.
    "MaPLe": RunSpec("configs/trainers/MaPLe/tiny_vit_c2_ep20_batch8_2ctx.yaml",
                     opts=TINY_CLIP + FEW_SHOTS + ("OPTIM.LR", "2e-4")),
    "IVLP": RunSpec("configs/trainers/IVLP/tiny_vit_c2_ep20_batch8_2+2ctx.yaml",
                    opts=TINY_CLIP + FEW_SHOTS + ("OPTIM.LR", "2e-4")),
    "VPT": RunSpec("configs/trainers/VPT/tiny_vit_ep20_batch8_4ctx.yaml",
                   opts=TINY_CLIP + FEW_SHOTS + ("OPTIM.LR", "2e-4")),
    # PromptSRC: lr 2e-4 as IVLP's, whose prompts it learns: at 0.002 the float rounding of two half-batch sums
    # already moves its text context by 1.4e-6 in 2 epochs; at 2e-4 every prompt (and the Gaussian aggregate, which
    # puts almost all of its weight on epoch 2) agrees within 1.5e-7.
    "PromptSRC": RunSpec("configs/trainers/PromptSRC/tiny_vit_c2_ep20_batch8_4+4ctx.yaml",
                         opts=TINY_CLIP + FEW_SHOTS + ("OPTIM.LR", "2e-4")),
}


def registered_trainers() -> List[str]:
    from dassl.engine import TRAINER_REGISTRY
    from vlprompt import trainers  # noqa: F401  (registers every trainer)

    return sorted(TRAINER_REGISTRY.registered_names())


def spec_for(name: str) -> RunSpec:
    """The trainer's entry in ``SPECS``, or its first ``tiny_*.yaml`` on Synthetic with the common settings."""
    if name in SPECS:
        return SPECS[name]
    tiny = sorted(glob.glob(osp.join(REPO_ROOT, "configs", "trainers", name, "tiny_*.yaml")))
    if not tiny:
        raise LookupError(f"trainer {name} has no configs/trainers/{name}/tiny_*.yaml and no entry in "
                          "tests/registry_specs.py SPECS: add one so the registry tests can run it")
    return RunSpec(osp.relpath(tiny[0], REPO_ROOT), opts=TINY_CLIP + FEW_SHOTS)


def argv_for(name: str, data_root: str, output_dir: str, extra_flags: Sequence[str] = (),
             extra_opts: Sequence[str] = (), seed: int = 1) -> List[str]:
    """train.py's arguments for the trainer's tiny run (flags such as --eval-only go in ``extra_flags``)."""
    spec = spec_for(name)
    return train_argv(name, spec.config, data_root, output_dir, seed=seed, dataset_config=spec.dataset,
                      extra=extra_flags, opts=list(COMMON_OPTS) + list(spec.opts) + list(extra_opts))


def shared_data_root(shared_dir: str) -> str:
    """The data root of the reference runs (drawn by the first one); other runs may read it."""
    return osp.join(shared_dir, "data")


def checkpoint_files(output_dir: str) -> List[str]:
    """Checkpoint files of a run, relative to its folder, sorted."""
    found = glob.glob(osp.join(output_dir, "*", "model.pth.tar-*")) + glob.glob(
        osp.join(output_dir, "*", "model-best.pth.tar"))
    return sorted(osp.relpath(p, output_dir) for p in found)


def reference_run(name: str, shared_dir: str, data_root: Optional[str] = None) -> str:
    """Output folder of the trainer's uninterrupted single-process run (trained once per session)."""
    folder = osp.join(shared_dir, "reference", name)
    data_root = data_root or shared_data_root(shared_dir)
    os.makedirs(osp.dirname(folder), exist_ok=True)
    with open(osp.join(shared_dir, "reference.lock"), "w") as lock:
        # One reference run at a time across the xdist workers: the first one to need a trainer trains it
        # (and draws the shared data root), the others wait and reuse the folder.
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = osp.join(folder, "DONE")
        if not osp.isfile(done):
            code = run_train(argv_for(name, data_root, folder))
            assert code == 0, f"reference run of {name} failed (exit {code}); see {folder}/log.txt"
            open(done, "w").close()
    return folder

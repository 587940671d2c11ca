"""Trainer hierarchy: ``TrainerBase`` -> ``SimpleTrainer`` -> ``TrainerX`` / ``TrainerXU``.

Behaviour and log formats follow Dassl 0.6.3 (KaiyangZhou/Dassl.pytorch): the progress line, the
``=> result`` block, ``<output>/<model name>/model.pth.tar-<epoch>`` checkpoints and the ``checkpoint`` pointer.
A method subclasses ``TrainerX`` and overrides hooks only; the loop itself is never copied.  Call order:

    __init__      check_cfg(cfg) -> build_data_loader() [-> build_data_manager() -> build_train_transform(),
                  build_test_transform()] -> build_model() -> the evaluator
    train()       before_train() [resume] -> per epoch: before_epoch() -> run_epoch() -> after_epoch()
                  -> after_train() [final test]
    run_epoch()   for each TrainingPass yielded by training_passes(): run_loader(pass) [-> pass.step(batch),
                  by default forward_backward(batch) -> backward_and_update(loss)]; the loop steps the LR
                  schedulers as lr_step_policy() says ("epoch": after the last batch, "iter", "manual")
    after_epoch() end_of_epoch() -> test("val") + after_validation(result) when validates_after_epoch()
                  -> save_model() every TRAIN.CHECKPOINT_FREQ epochs, at the last epoch and on a stop
    test(split)   eval_split(split) -> model_inference(input) per batch -> evaluator (gathered under torchrun)

``request_stop(reason)`` ends training after the current epoch (early stopping).  ``write_scalar`` /
``write_text`` write tensorboard entries (rank 0 only).  Class attribute ``CLI_FLAGS`` lets a trainer declare
command-line flags of its own, each an alias of one config key.

Fixed on purpose, against upstream Dassl: ``load_model`` prints ``val_result=None`` instead of crashing
(Dassl issue 56); every checkpoint also stores the RNG states, so a resumed CPU run is bit-identical to an
uninterrupted one; no automatic ``DataParallel``.
"""
from __future__ import annotations

import datetime
import logging
import os.path as osp
import time
from collections import OrderedDict
from typing import Any, ClassVar, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from dassl.data import DataManager
from dassl.evaluation import build_evaluator
from dassl.modeling.cross_rank_bn import convert_to_cross_rank_batchnorm
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import (
    all_gather_object,
    average_gradients,
    barrier,
    count_num_param,
    get_world_size,
    is_distributed,
    is_main_process,
    load_checkpoint,
    load_pretrained_weights,
    mkdir_if_missing,
    progress,
    tolist_if_not,
)

from .checkpoints import (CheckpointError, check_state_dict_fits, common_epochs, epoch_file, read_checkpoint_set,
                          recover_checkpoint_sets, write_checkpoint_set)
from .loop import LR_STEP_POLICIES, EpochProgress, PairedBatches, TrainingPass, cycle, rank_share
from .rng import get_rng_state, set_rng_state
from .run_guard import set_position
from .simple_net import SimpleNet

__all__ = ["TrainerBase", "SimpleTrainer", "TrainerX", "TrainerXU", "SimpleNet", "TrainingPass", "EpochProgress",
           "cycle", "get_rng_state", "set_rng_state"]

logger = logging.getLogger(__name__)


def is_metric_scheduler(sched: Any) -> bool:
    """Schedulers stepped with a validation result (ReduceLROnPlateau) rather than once per epoch/iteration."""
    return isinstance(sched, ReduceLROnPlateau)


class TrainerBase:
    """Models, optimizers and schedulers by name; the generic epoch loop and its hooks."""

    # Every registered trainer runs under torchrun (sharded batches, averaged gradients, gathered evaluation;
    # checked by tests/test_registry_ddp.py). A trainer that cannot may set False: it then refuses torchrun.
    SUPPORTS_DISTRIBUTED = True
    # Command-line flags this trainer adds to train.py: flag -> (config key it sets, help text).
    CLI_FLAGS: ClassVar[Dict[str, Tuple[str, str]]] = {}

    def __init__(self):
        self._models = OrderedDict()
        self._optims = OrderedDict()
        self._scheds = OrderedDict()
        self._writer = None
        self._stop_reason: Optional[str] = None
        self.scaler: Optional[torch.amp.GradScaler] = None  # set by trainers that train under amp
        # Under torchrun: this rank's share of the current global batch, times the number of ranks (1 when the
        # batch splits evenly); scaling the rank's mean loss by it makes the averaged gradient the global mean.
        self.rank_loss_weight = 1.0

    # ------------------------------------------------------------------ models
    def register_model(self, name="model", model=None, optim=None, sched=None):
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot assign model before super().__init__() call")
        if self.__dict__.get("_optims") is None:
            raise AttributeError("Cannot assign optim before super().__init__() call")
        if self.__dict__.get("_scheds") is None:
            raise AttributeError("Cannot assign sched before super().__init__() call")
        if name in self._models:
            raise KeyError(f"Found duplicate model names: {name!r}")
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names=None):
        names_real = list(self._models.keys())
        if names is None:
            return names_real
        names = tolist_if_not(names)
        for name in names:
            if name not in names_real:
                raise KeyError(f"model {name!r} is not registered (registered: {names_real})")
        return names

    def set_model_mode(self, mode="train", names=None):
        for name in self.get_model_names(names):
            if mode == "train":
                self._models[name].train()
            elif mode in ("test", "eval"):
                self._models[name].eval()
            else:
                raise KeyError(f"model mode {mode!r}; choose one of train, test, eval")

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self, name: str, epoch: int, val_result=None, rng_state=None) -> Dict[str, Any]:
        """What one model's checkpoint holds (tensors and primitives only, loadable with ``weights_only``)."""
        model_dict = self._models[name].state_dict()
        model_dict = OrderedDict((k[7:] if k.startswith("module.") else k, v) for k, v in model_dict.items())
        return {
            "state_dict": model_dict,
            "epoch": epoch + 1,
            "optimizer": self._optims[name].state_dict() if self._optims[name] is not None else None,
            "scheduler": self._scheds[name].state_dict() if self._scheds[name] is not None else None,
            "val_result": val_result,
            "rng_state": get_rng_state() if rng_state is None else rng_state,
        }

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        """Save every model after ``epoch`` (0-based) as one checkpoint set (see ``checkpoints.py``).

        ``model_name`` "" writes ``model.pth.tar-<epoch + 1>`` and moves the ``checkpoint`` pointers; a name such
        as ``model-best.pth.tar`` writes that file only.  ``is_best`` also writes ``model-best.pth.tar``.
        """
        if not is_main_process():  # one writer under torchrun; every rank holds the same weights
            return
        rng_state = get_rng_state()
        states = {name: self.checkpoint_state(name, epoch, val_result, rng_state) for name in self.get_model_names()}
        write_checkpoint_set(directory, states, model_name or epoch_file(epoch + 1), update_pointer=not model_name)
        if is_best and not model_name:
            write_checkpoint_set(directory, states, "model-best.pth.tar", update_pointer=False)

    def resume_model_if_exist(self, directory):
        """Load the newest epoch that every model saved and whose files all read; return the epoch to start at.

        An interrupted save is completed or discarded first; models saved up to different epochs resume from
        the newest common one, and an unreadable newest epoch falls back to the one before (both logged).
        """
        names = self.get_model_names()
        if not names:
            return 0
        if is_main_process():
            recover_checkpoint_sets(directory, names)
        barrier()
        epochs = common_epochs(directory, names)
        if not epochs:
            logger.info("No checkpoint found, train from scratch")
            return 0
        logger.info(f"Found checkpoint at {directory} (will resume training)")
        epoch, checkpoints = read_checkpoint_set(directory, names, epochs)
        for name in names:
            self.load_checkpoint_into(name, checkpoints[name], osp.join(directory, name, epoch_file(epoch)))
        rng_state = checkpoints[names[0]].get("rng_state")
        if rng_state is not None:
            set_rng_state(rng_state)
        logger.info(f"Previous epoch: {epoch}")
        return epoch

    def load_checkpoint_into(self, name: str, checkpoint: Dict[str, Any], path: str) -> None:
        """Model, optimizer and scheduler state of a resumed checkpoint; a mismatch is one line naming ``path``."""
        check_state_dict_fits(self._models[name], checkpoint["state_dict"], path)
        self._models[name].load_state_dict(checkpoint["state_dict"])
        logger.info(f'Loaded model weights of {name} from "{path}"')
        for part, target in (("optimizer", self._optims[name]), ("scheduler", self._scheds[name])):
            if target is None or checkpoint.get(part) is None:
                continue
            try:
                target.load_state_dict(checkpoint[part])
            except (ValueError, KeyError, TypeError, RuntimeError) as err:
                raise CheckpointError(f"{path}: its {part} state does not fit this run ({err}); it comes from "
                                      "another config; use another --output-dir") from err
            logger.info(f"Loaded {part}")

    def load_model(self, directory, epoch=None):
        if not directory:
            logger.info("Note that load_model() is skipped as no pretrained model is given")
            return
        names = self.get_model_names()
        model_file = "model-best.pth.tar" if epoch is None else epoch_file(epoch)
        for name in names:
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                hint = "pass --load-epoch" if epoch is None else "check --model-dir and --load-epoch"
                raise FileNotFoundError(f'Model not found at "{model_path}"; {hint}')
            checkpoint = load_checkpoint(model_path)
            val_result = checkpoint.get("val_result")
            val_text = "None" if val_result is None else f"{val_result:.1f}"
            logger.info(f"Load {model_path} to {name} (epoch={checkpoint['epoch']}, val_result={val_text})")
            check_state_dict_fits(self._models[name], checkpoint["state_dict"], model_path)
            self._models[name].load_state_dict(checkpoint["state_dict"])

    # ------------------------------------------------------------------ learning rates
    def lr_step_policy(self) -> str:
        """Hook: when the loop steps the schedulers (``LR_STEP_POLICIES``); Dassl steps once per epoch."""
        return "epoch"

    def update_lr(self, names=None):
        """Step each model's scheduler; metric-driven ones (ReduceLROnPlateau) wait for a validation result."""
        for name in self.get_model_names(names):
            sched = self._scheds[name]
            if sched is not None and not is_metric_scheduler(sched):
                sched.step()

    def step_metric_schedulers(self, result: float, names=None) -> None:
        """Step the metric-driven schedulers (ReduceLROnPlateau) with a validation result."""
        for name in self.get_model_names(names):
            if is_metric_scheduler(self._scheds[name]):
                self._scheds[name].step(result)

    def has_metric_scheduler(self) -> bool:
        return any(is_metric_scheduler(s) for s in self._scheds.values())

    # ------------------------------------------------------------------ tensorboard
    def init_writer(self, log_dir):
        if self.__dict__.get("_writer") is None and is_main_process():
            from torch.utils.tensorboard import SummaryWriter

            logger.info(f"Initialize tensorboard (log_dir={log_dir})")
            self._writer = SummaryWriter(log_dir=log_dir)

    def close_writer(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write_scalar(self, tag, scalar_value, global_step=None):
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)

    def write_text(self, tag: str, text: str, global_step=None) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, text, global_step)

    # ------------------------------------------------------------------ the loop
    def request_stop(self, reason: str) -> None:
        """End training after the current epoch (its checkpoint is still written); ``after_train`` runs."""
        self._stop_reason = reason

    @property
    def stop_requested(self) -> bool:
        return self._stop_reason is not None

    def train(self, start_epoch, max_epoch):
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        for self.epoch in range(self.start_epoch, self.max_epoch):
            if self.stop_requested:
                break
            set_position(self.epoch + 1, None)
            self.before_epoch()
            self.run_epoch()
            set_position(self.epoch + 1, None)
            self.after_epoch()
        if self.stop_requested:
            logger.info(f"Stopping early: {self._stop_reason}")
        self.after_train()

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def run_epoch(self):
        raise NotImplementedError

    def test(self):
        raise NotImplementedError

    def parse_batch_train(self, batch):
        raise NotImplementedError

    def parse_batch_test(self, batch):
        raise NotImplementedError

    def forward_backward(self, batch):
        raise NotImplementedError

    def model_inference(self, input):
        raise NotImplementedError

    # ------------------------------------------------------------------ one optimisation step
    def detect_anomaly(self, loss):
        if not torch.isfinite(loss).all():
            raise FloatingPointError("Loss is infinite or NaN!")

    def model_zero_grad(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss):
        self.detect_anomaly(loss)
        loss.backward()
        self.sync_gradients()

    def sync_gradients(self, names=None):
        """Average gradients over ranks under torchrun (no-op in a single process)."""
        if get_world_size() > 1:
            for name in self.get_model_names(names):
                average_gradients([p for p in self._models[name].parameters() if p.requires_grad])

    def model_update(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss, names=None):
        """Dassl's name for ``backward_and_update``."""
        self.backward_and_update(loss, names)

    def backward_and_update(self, loss, names=None) -> None:
        """Zero the grads of ``names`` (default: all models), backward, average over ranks, step.

        A non-finite loss raises.  Under amp (``self.scaler`` set) the loss is scaled and the optimizers are
        stepped through the scaler.
        """
        self.model_zero_grad(names)
        self.detect_anomaly(loss)
        if self.rank_loss_weight != 1.0:  # an uneven last batch under torchrun
            loss = loss * self.rank_loss_weight
        if self.scaler is None:
            loss.backward()
            self.sync_gradients(names)
            self.model_update(names)
            return
        self.scaler.scale(loss).backward()
        self.sync_gradients(names)  # torchrun: average the (scaled) gradients before the step
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self.scaler.step(self._optims[name])
        self.scaler.update()


class SimpleTrainer(TrainerBase):
    """Device, data, model, evaluator; evaluation and checkpointing after each epoch."""

    def __init__(self, cfg):
        super().__init__()
        if get_world_size() > 1 and not type(self).SUPPORTS_DISTRIBUTED:
            raise ValueError(f"{type(self).__name__} has not been verified under torchrun; run it in a single "
                             "process")
        self.check_cfg(cfg)
        if torch.cuda.is_available() and cfg.USE_CUDA:
            self.device = torch.device("cuda", torch.cuda.current_device()) if is_distributed() else torch.device("cuda")
        else:
            self.device = torch.device("cpu")
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.cfg = cfg
        self.build_data_loader()
        self.build_model()
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname, dataset=self.dm.dataset)
        self.best_result = -np.inf

    def check_cfg(self, cfg):
        """Hook: check that the config fits this trainer; raise one clear error otherwise."""
        pass

    # ------------------------------------------------------------------ data
    def build_train_transform(self):
        """Hook: the training transform; None = Dassl's from ``INPUT.TRANSFORMS``."""
        return None

    def build_test_transform(self):
        """Hook: the evaluation transform; None = Dassl's."""
        return None

    def build_data_manager(self) -> DataManager:
        """Hook: the run's ``DataManager`` (a trainer may change its splits with ``DataManager.set_split``)."""
        return DataManager(self.cfg, custom_tfm_train=self.build_train_transform(),
                           custom_tfm_test=self.build_test_transform())

    def build_data_loader(self):
        dm = self.build_data_manager()
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm

    # ------------------------------------------------------------------ model
    def build_model(self):
        cfg = self.cfg
        logger.info("Building model")
        self.model = SimpleNet(cfg, cfg.MODEL, self.num_classes)
        if cfg.MODEL.INIT_WEIGHTS:
            load_pretrained_weights(self.model, cfg.MODEL.INIT_WEIGHTS)
        if get_world_size() > 1:  # normalise with the global batch's statistics, as one process would
            convert_to_cross_rank_batchnorm(self.model)
        self.model.to(self.device)
        logger.info(f"# params: {count_num_param(self.model):,}")
        self.optim = build_optimizer(self.model, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("model", self.model, self.optim, self.sched)

    # ------------------------------------------------------------------ the loop
    def train(self):
        super().train(self.start_epoch, self.max_epoch)

    def before_train(self):
        directory = self.cfg.OUTPUT_DIR
        if self.cfg.RESUME:
            directory = self.cfg.RESUME
        self.start_epoch = self.resume_model_if_exist(directory)
        if self.start_epoch > 0:
            self.best_result = self.saved_best_result(directory)
        writer_dir = osp.join(self.output_dir, "tensorboard")
        mkdir_if_missing(writer_dir)
        self.init_writer(writer_dir)
        self.time_start = time.time()

    def saved_best_result(self, directory):
        """The val result of ``model-best.pth.tar`` (so a resumed best_val run keeps its best), else -inf."""
        names = self.get_model_names()
        path = osp.join(directory, names[0], "model-best.pth.tar") if names else ""
        if path and osp.exists(path):
            val_result = load_checkpoint(path).get("val_result")
            if val_result is not None:
                logger.info(f"Best val result so far: {val_result:.4f}")
                return val_result
        return -np.inf

    def after_train(self):
        logger.info("Finish training")
        do_test = not self.cfg.TEST.NO_TEST
        if do_test:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                logger.info("Deploy the model with the best val performance")
                barrier()  # torchrun: rank 0 may still be writing model-best.pth.tar, which every rank reads
                self.load_model(self.output_dir)
            else:
                logger.info("Deploy the last-epoch model")
            self.test()
        elapsed = round(time.time() - self.time_start)
        logger.info(f"Elapsed: {datetime.timedelta(seconds=elapsed)}")
        self.close_writer()

    def end_of_epoch(self) -> None:
        """Hook: a method's own end-of-epoch work (logging, sample banks), before validation and checkpoints."""
        pass

    def selects_best_model(self) -> bool:
        """Whether the best-val model is kept (``TEST.FINAL_MODEL best_val`` and testing on)."""
        return not self.cfg.TEST.NO_TEST and self.cfg.TEST.FINAL_MODEL == "best_val"

    def validates_after_epoch(self) -> bool:
        """Hook: whether ``after_epoch`` evaluates on val (best-model selection or a metric-driven scheduler)."""
        return self.selects_best_model() or self.has_metric_scheduler()

    def after_validation(self, result: float) -> None:
        """Hook: use the epoch's val result: step ReduceLROnPlateau schedulers, keep the best model."""
        self.step_metric_schedulers(result)
        if self.selects_best_model() and result > self.best_result:
            self.best_result = result
            self.save_model(self.epoch, self.output_dir, val_result=result, model_name="model-best.pth.tar")

    def after_epoch(self):
        self.end_of_epoch()
        last_epoch = (self.epoch + 1) == self.max_epoch
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        meet_checkpoint_freq = (self.epoch + 1) % freq == 0 if freq > 0 else False
        if self.validates_after_epoch():
            self.after_validation(self.test(split="val"))
        if meet_checkpoint_freq or last_epoch or self.stop_requested:
            self.save_model(self.epoch, self.output_dir)

    # ------------------------------------------------------------------ evaluation
    def eval_split(self, split: Optional[str] = None) -> Tuple[str, Any, Sequence]:
        """(split name, loader, data source) to evaluate: ``split`` or TEST.SPLIT; val falls back to test."""
        split = self.cfg.TEST.SPLIT if split is None else split
        if split == "val" and self.val_loader is not None:
            return "val", self.val_loader, self.dm.split_items["val"]
        return "test", self.test_loader, self.dm.split_items["test"]

    def write_results(self, split: str, results: Dict[str, float]) -> None:
        for k, v in results.items():
            self.write_scalar(f"{split}/{k}", v, self.epoch)

    @torch.no_grad()
    def test(self, split=None):
        """Evaluate on ``split`` (default TEST.SPLIT; val falls back to test) and return the first metric."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        split, data_loader, _ = self.eval_split(split)
        logger.info(f"Evaluate on the *{split}* set")
        outputs = []
        for batch in progress(data_loader, f"eval {split}", enabled=is_main_process()):
            input, label = self.parse_batch_test(batch)
            output = self.model_inference(input)
            if is_distributed():
                outputs.append((output.cpu(), label.cpu()))
            else:
                self.evaluator.process(output, label)
        if is_distributed():
            # Each rank evaluated a contiguous block; rank order restores the dataset order.
            for rank_outputs in all_gather_object(outputs):
                for output, label in rank_outputs:
                    self.evaluator.process(output, label)
        results = self.evaluator.evaluate()
        self.write_results(split, results)
        return list(results.values())[0]

    def model_inference(self, input):
        return self.model(input)

    def parse_batch_test(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def get_current_lr(self, names=None):
        names = self.get_model_names(names)
        return self._optims[names[0]].param_groups[0]["lr"]


class TrainerX(SimpleTrainer):
    """Trainer over labeled data only (base of CoOp, CoCoOp and every vlprompt method)."""

    def training_passes(self) -> Iterator[TrainingPass]:
        """Hook: the passes of one epoch, run in order (a generator may build each pass after the previous one
        ran).  Default: one pass of ``forward_backward`` over ``train_loader_x``, stepping every scheduler."""
        yield TrainingPass(self.train_loader_x, self.forward_backward)

    def run_epoch(self):
        for training_pass in self.training_passes():
            self.run_loader(training_pass)

    def run_loader(self, training_pass: TrainingPass) -> None:
        """One pass: train mode, ``step`` per batch, the LR policy, Dassl's progress line and scalars."""
        policy = self.lr_step_policy()
        if policy not in LR_STEP_POLICIES:
            raise ValueError(f"{type(self).__name__}.lr_step_policy() = {policy!r}; choose one of {LR_STEP_POLICIES}")
        self.set_model_mode("train")
        meters = EpochProgress(self)
        loader = training_pass.loader
        self.num_batches = len(loader)
        end = time.time()
        for self.batch_idx, batch in enumerate(loader):
            set_position(self.epoch + 1, self.batch_idx + 1)
            self.rank_loss_weight = rank_share(batch)
            data_time = time.time() - end
            loss_summary = training_pass.step(batch)
            last_batch = (self.batch_idx + 1) == self.num_batches
            if policy == "iter" or (policy == "epoch" and last_batch):
                self.update_lr(training_pass.names)
            meters.update(loss_summary, data_time, time.time() - end)
            meters.log(self.batch_idx, self.num_batches)
            end = time.time()

    def parse_batch_train(self, batch):
        input = batch["img"].to(self.device)
        label = batch["label"].to(self.device)
        domain = batch["domain"].to(self.device)
        return input, label, domain


class TrainerXU(TrainerX):
    """Trainer over labeled (x) and unlabeled (u) data."""

    def training_passes(self) -> Iterator[TrainingPass]:
        len_x, len_u = len(self.train_loader_x), len(self.train_loader_u)
        count_iter = self.cfg.TRAIN.COUNT_ITER
        counts = {"train_x": len_x, "train_u": len_u, "smaller_one": min(len_x, len_u)}
        if count_iter not in counts:
            raise ValueError(f"TRAIN.COUNT_ITER={count_iter!r}; choose one of {', '.join(counts)}")
        pairs = PairedBatches(self.train_loader_x, self.train_loader_u, counts[count_iter])
        yield TrainingPass(pairs, lambda pair: self.forward_backward(*pair))

    def parse_batch_train(self, batch_x, batch_u):
        input_x = batch_x["img"].to(self.device)
        label_x = batch_x["label"].to(self.device)
        input_u = batch_u["img"].to(self.device)
        return input_x, label_x, input_u

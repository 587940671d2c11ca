"""Trainer hierarchy: ``TrainerBase`` → ``SimpleTrainer`` → ``TrainerX`` / ``TrainerXU``.

Behaviour and log formats follow Dassl 0.6.3 (../shared/specs/dassl_engine.md §3). Fixed on
purpose: ``load_model`` prints ``val_result=None`` instead of crashing (Dassl #56); every
checkpoint also stores the RNG states so a resumed CPU run is bit-identical to an
uninterrupted one; no automatic ``DataParallel``.
"""
from __future__ import annotations

import datetime
import logging
import os.path as osp
import random
import time
from collections import OrderedDict
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from dassl.data import DataManager
from dassl.evaluation import build_evaluator
from dassl.modeling import build_backbone, build_head
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import (
    AverageMeter,
    all_gather_object,
    average_gradients,
    get_world_size,
    is_distributed,
    is_main_process,
    MetricMeter,
    count_num_param,
    load_checkpoint,
    load_pretrained_weights,
    mkdir_if_missing,
    save_checkpoint,
    tolist_if_not,
)

logger = logging.getLogger(__name__)


def get_rng_state() -> Dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors/primitives (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class SimpleNet(nn.Module):
    """Backbone (+ optional head) + linear classifier."""

    def __init__(self, cfg, model_cfg, num_classes, **kwargs):
        super().__init__()
        self.backbone = build_backbone(model_cfg.BACKBONE.NAME, verbose=cfg.VERBOSE,
                                       pretrained=model_cfg.BACKBONE.PRETRAINED, **kwargs)
        fdim = self.backbone.out_features
        self.head = None
        if model_cfg.HEAD.NAME and model_cfg.HEAD.HIDDEN_LAYERS:
            self.head = build_head(model_cfg.HEAD.NAME, verbose=cfg.VERBOSE, in_features=fdim,
                                   hidden_layers=model_cfg.HEAD.HIDDEN_LAYERS, activation=model_cfg.HEAD.ACTIVATION,
                                   bn=model_cfg.HEAD.BN, dropout=model_cfg.HEAD.DROPOUT, **kwargs)
            fdim = self.head.out_features
        self.classifier = nn.Linear(fdim, num_classes) if num_classes > 0 else None
        self._fdim = fdim

    @property
    def fdim(self):
        return self._fdim

    def forward(self, x, return_feature=False):
        f = self.backbone(x)
        if self.head is not None:
            f = self.head(f)
        if self.classifier is None:
            return f
        y = self.classifier(f)
        if return_feature:
            return y, f
        return y


class TrainerBase:
    """Models, optimizers and schedulers by name; the generic epoch loop and its hooks."""

    # True once a trainer has been checked under torchrun (sharded batches, averaged gradients,
    # gathered evaluation). Trainers with their own loaders or passes over the training set (e.g. a
    # per-sample loss pass) must verify those before setting it.
    SUPPORTS_DISTRIBUTED = False

    def __init__(self):
        self._models = OrderedDict()
        self._optims = OrderedDict()
        self._scheds = OrderedDict()
        self._writer = None

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

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        if not is_main_process():  # one writer under torchrun; every rank holds the same weights
            return
        rng_state = get_rng_state()
        for name in self.get_model_names():
            model_dict = self._models[name].state_dict()
            optim_dict = self._optims[name].state_dict() if self._optims[name] is not None else None
            sched_dict = self._scheds[name].state_dict() if self._scheds[name] is not None else None
            save_checkpoint(
                {
                    "state_dict": model_dict,
                    "epoch": epoch + 1,
                    "optimizer": optim_dict,
                    "scheduler": sched_dict,
                    "val_result": val_result,
                    "rng_state": rng_state,
                },
                osp.join(directory, name),
                is_best=is_best,
                model_name=model_name,
            )

    def resume_model_if_exist(self, directory):
        names = self.get_model_names()
        file_missing = any(not osp.exists(osp.join(directory, name, "checkpoint")) for name in names)
        if file_missing or not names:
            logger.info("No checkpoint found, train from scratch")
            return 0
        logger.info(f"Found checkpoint at {directory} (will resume training)")
        start_epoch, rng_state = 0, None
        for name in names:
            path = osp.join(directory, name)
            with open(osp.join(path, "checkpoint")) as f:
                fpath = osp.join(path, f.readline().strip())
            logger.info(f'Loading checkpoint from "{fpath}"')
            checkpoint = load_checkpoint(fpath)
            self._models[name].load_state_dict(checkpoint["state_dict"])
            logger.info("Loaded model weights")
            if self._optims[name] is not None and checkpoint.get("optimizer") is not None:
                self._optims[name].load_state_dict(checkpoint["optimizer"])
                logger.info("Loaded optimizer")
            if self._scheds[name] is not None and checkpoint.get("scheduler") is not None:
                self._scheds[name].load_state_dict(checkpoint["scheduler"])
                logger.info("Loaded scheduler")
            start_epoch = checkpoint["epoch"]
            rng_state = checkpoint.get("rng_state", rng_state)
            logger.info(f"Previous epoch: {start_epoch}")
        if rng_state is not None:
            set_rng_state(rng_state)
        return start_epoch

    def load_model(self, directory, epoch=None):
        if not directory:
            logger.info("Note that load_model() is skipped as no pretrained model is given")
            return
        names = self.get_model_names()
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in names:
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                raise FileNotFoundError(f"No model at {model_path}")
            checkpoint = load_checkpoint(model_path)
            val_result = checkpoint.get("val_result")
            val_text = "None" if val_result is None else f"{val_result:.1f}"
            logger.info(f"Load {model_path} to {name} (epoch={checkpoint['epoch']}, val_result={val_text})")
            self._models[name].load_state_dict(checkpoint["state_dict"])

    def set_model_mode(self, mode="train", names=None):
        for name in self.get_model_names(names):
            if mode == "train":
                self._models[name].train()
            elif mode in ("test", "eval"):
                self._models[name].eval()
            else:
                raise KeyError(f"model mode {mode!r}; choose one of train, test, eval")

    def update_lr(self, names=None):
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def detect_anomaly(self, loss):
        if not torch.isfinite(loss).all():
            raise FloatingPointError("Loss is infinite or NaN!")

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

    def train(self, start_epoch, max_epoch):
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
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
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)


class SimpleTrainer(TrainerBase):
    """Device, data, model, evaluator; evaluation and checkpointing after each epoch."""

    def __init__(self, cfg):
        super().__init__()
        if get_world_size() > 1 and not type(self).SUPPORTS_DISTRIBUTED:
            raise ValueError(f"{type(self).__name__} has not been verified under torchrun; run it in a single "
                             "process (supported: trainers with SUPPORTS_DISTRIBUTED = True, e.g. CoOp, CoCoOp)")
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
        """Check that the config fits this trainer; raise one clear error otherwise."""
        pass

    def build_data_loader(self):
        dm = DataManager(self.cfg)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm

    def build_model(self):
        cfg = self.cfg
        logger.info("Building model")
        self.model = SimpleNet(cfg, cfg.MODEL, self.num_classes)
        if cfg.MODEL.INIT_WEIGHTS:
            load_pretrained_weights(self.model, cfg.MODEL.INIT_WEIGHTS)
        self.model.to(self.device)
        logger.info(f"# params: {count_num_param(self.model):,}")
        self.optim = build_optimizer(self.model, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("model", self.model, self.optim, self.sched)

    def train(self):
        super().train(self.start_epoch, self.max_epoch)

    def before_train(self):
        directory = self.cfg.OUTPUT_DIR
        if self.cfg.RESUME:
            directory = self.cfg.RESUME
        self.start_epoch = self.resume_model_if_exist(directory)
        if self.start_epoch > 0:
            self.best_result = self._saved_best_result(directory)
        writer_dir = osp.join(self.output_dir, "tensorboard")
        mkdir_if_missing(writer_dir)
        self.init_writer(writer_dir)
        self.time_start = time.time()

    def _saved_best_result(self, directory):
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
                self.load_model(self.output_dir)
            else:
                logger.info("Deploy the last-epoch model")
            self.test()
        elapsed = round(time.time() - self.time_start)
        logger.info(f"Elapsed: {datetime.timedelta(seconds=elapsed)}")
        self.close_writer()

    def after_epoch(self):
        last_epoch = (self.epoch + 1) == self.max_epoch
        do_test = not self.cfg.TEST.NO_TEST
        meet_checkpoint_freq = (
            (self.epoch + 1) % self.cfg.TRAIN.CHECKPOINT_FREQ == 0 if self.cfg.TRAIN.CHECKPOINT_FREQ > 0 else False
        )
        if do_test and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr_result = self.test(split="val")
            if curr_result > self.best_result:
                self.best_result = curr_result
                self.save_model(self.epoch, self.output_dir, val_result=curr_result, model_name="model-best.pth.tar")
        if meet_checkpoint_freq or last_epoch:
            self.save_model(self.epoch, self.output_dir)

    @torch.no_grad()
    def test(self, split=None):
        """Evaluate on ``split`` (default TEST.SPLIT; val falls back to test) and return the first metric."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        if split is None:
            split = self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is not None:
            data_loader = self.val_loader
        else:
            split = "test"
            data_loader = self.test_loader
        logger.info(f"Evaluate on the *{split}* set")
        outputs = []
        for batch in tqdm(data_loader, desc=f"eval {split}", leave=False, disable=not is_main_process()):
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
        for k, v in results.items():
            self.write_scalar(f"{split}/{k}", v, self.epoch)
        return list(results.values())[0]

    def model_inference(self, input):
        return self.model(input)

    def parse_batch_test(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def get_current_lr(self, names=None):
        names = self.get_model_names(names)
        return self._optims[names[0]].param_groups[0]["lr"]


class _EpochLogger:
    """Dassl's progress line and tensorboard scalars, shared by TrainerX and TrainerXU."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.losses = MetricMeter()
        self.batch_time = AverageMeter()
        self.data_time = AverageMeter()

    def log(self, batch_idx: int, num_batches: int) -> None:
        t = self.trainer
        meet_freq = (batch_idx + 1) % t.cfg.TRAIN.PRINT_FREQ == 0
        only_few_batches = num_batches < t.cfg.TRAIN.PRINT_FREQ
        if meet_freq or only_few_batches:
            nb_remain = (num_batches - batch_idx - 1) + (t.max_epoch - t.epoch - 1) * num_batches
            eta = str(datetime.timedelta(seconds=int(self.batch_time.avg * nb_remain)))
            logger.info(
                f"epoch [{t.epoch + 1}/{t.max_epoch}] batch [{batch_idx + 1}/{num_batches}] "
                f"time {self.batch_time.val:.3f} ({self.batch_time.avg:.3f}) "
                f"data {self.data_time.val:.3f} ({self.data_time.avg:.3f}) "
                f"{self.losses} lr {t.get_current_lr():.4e} eta {eta}"
            )
        n_iter = t.epoch * num_batches + batch_idx
        for name, meter in self.losses.meters.items():
            t.write_scalar("train/" + name, meter.avg, n_iter)
        t.write_scalar("train/lr", t.get_current_lr(), n_iter)


class TrainerX(SimpleTrainer):
    """Trainer over labeled data only (base of CoOp, CoCoOp and every vlprompt method)."""

    def run_epoch(self):
        self.set_model_mode("train")
        meters = _EpochLogger(self)
        self.num_batches = len(self.train_loader_x)
        end = time.time()
        for self.batch_idx, batch in enumerate(self.train_loader_x):
            meters.data_time.update(time.time() - end)
            loss_summary = self.forward_backward(batch)
            meters.batch_time.update(time.time() - end)
            meters.losses.update(loss_summary)
            meters.log(self.batch_idx, self.num_batches)
            end = time.time()

    def parse_batch_train(self, batch):
        input = batch["img"].to(self.device)
        label = batch["label"].to(self.device)
        domain = batch["domain"].to(self.device)
        return input, label, domain


class TrainerXU(SimpleTrainer):
    """Trainer over labeled (x) and unlabeled (u) data."""

    def run_epoch(self):
        self.set_model_mode("train")
        meters = _EpochLogger(self)
        len_train_loader_x = len(self.train_loader_x)
        len_train_loader_u = len(self.train_loader_u)
        count_iter = self.cfg.TRAIN.COUNT_ITER
        if count_iter == "train_x":
            self.num_batches = len_train_loader_x
        elif count_iter == "train_u":
            self.num_batches = len_train_loader_u
        elif count_iter == "smaller_one":
            self.num_batches = min(len_train_loader_x, len_train_loader_u)
        else:
            raise ValueError(f"TRAIN.COUNT_ITER={count_iter!r}; choose one of train_x, train_u, smaller_one")
        train_loader_x_iter = iter(self.train_loader_x)
        train_loader_u_iter = iter(self.train_loader_u)
        end = time.time()
        for self.batch_idx in range(self.num_batches):
            try:
                batch_x = next(train_loader_x_iter)
            except StopIteration:
                train_loader_x_iter = iter(self.train_loader_x)
                batch_x = next(train_loader_x_iter)
            try:
                batch_u = next(train_loader_u_iter)
            except StopIteration:
                train_loader_u_iter = iter(self.train_loader_u)
                batch_u = next(train_loader_u_iter)
            meters.data_time.update(time.time() - end)
            loss_summary = self.forward_backward(batch_x, batch_u)
            meters.batch_time.update(time.time() - end)
            meters.losses.update(loss_summary)
            meters.log(self.batch_idx, self.num_batches)
            end = time.time()

    def parse_batch_train(self, batch_x, batch_u):
        input_x = batch_x["img"].to(self.device)
        label_x = batch_x["label"].to(self.device)
        input_u = batch_u["img"].to(self.device)
        return input_x, label_x, input_u

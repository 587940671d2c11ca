"""LMPT trainer (``trainers/lmpt/``) and its zero-shot baseline (``trainers/zsclip_multilabel.py``), on the tiny
random CLIP: config errors before CLIP loads, the trainable context and prompt shapes, the hold-out split and the
caption <-> image alignment of the CSE term, the DB-loss constants the COCO-LT / VOC-LT dataset classes declare
(on the real lists), the global-batch loss under two (simulated) ranks, the plateau schedule, a bit-identical
resume, the zero-shot baseline's literal switches, and training above the zero-shot baseline on the synthetic
multi-label dataset.
"""
from __future__ import annotations

import os.path as osp
import random

import pytest
import torch

from vlprompt import clip
from vlprompt import parse_test_res
from dassl.engine import build_trainer
from dassl.utils import set_random_seed
from helpers import REPO_ROOT, run_train
from lmpt_helpers import link_lmpt_images
from vlprompt.trainers.common import prompt_trainer
from vlprompt.trainers.lmpt.losses import ClassSpecificEmbeddingLoss, asymmetric_loss, bce_loss, focal_loss
from vlprompt.trainers.config import get_cfg
from vlprompt.trainers.lmpt import trainer as lmpt_trainer
from vlprompt.trainers.lmpt.trainer import holdout_split
from vlprompt.trainers.zsclip_multilabel import class_text_names, lmpt_concat_text

TINY_CFG = osp.join(REPO_ROOT, "configs/trainers/LMPT/tiny_vit_ep10.yaml")
SYNTHETIC_ML = osp.join(REPO_ROOT, "configs/datasets/synthetic_multilabel.yaml")


def _cfg(root: str, output_dir: str = "", dataset_cfg: str = SYNTHETIC_ML, opts=()):
    cfg = get_cfg()
    cfg.merge_from_file(dataset_cfg)
    cfg.merge_from_file(TINY_CFG)
    cfg.DATASET.ROOT, cfg.OUTPUT_DIR, cfg.TRAINER.NAME, cfg.SEED = root, output_dir, "LMPT", 1
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    set_random_seed(1)
    return cfg


def _train_argv(data_root: str, out: str, trainer: str = "LMPT", extra=(), opts=()):
    return ["--root", data_root, "--seed", "1", "--trainer", trainer, "--dataset-config-file", SYNTHETIC_ML,
            "--config-file", TINY_CFG, "--output-dir", out, *extra, *opts]


@pytest.mark.parametrize("key,value,match", [
    ("TRAINER.LMPT.CLS_LOSS", "ce", "TRAINER.LMPT.CLS_LOSS='ce'; choose one of dbl, bce, focal, asl"),
    ("TRAINER.LMPT.LAM", 1.5, r"TRAINER.LMPT.LAM=1.5; it must be in \[0, 1\]"),
    ("TRAINER.LMPT.CSE.FORM", "softmargin", "TRAINER.LMPT.CSE.FORM='softmargin'"),
    ("TRAINER.LMPT.CSE.FREQ", "softmax", "TRAINER.LMPT.CSE.FREQ='softmax'"),
    ("TRAINER.LMPT.DBL.FOCAL", "sample", "TRAINER.LMPT.DBL.FOCAL='sample'"),
    ("TRAINER.LMPT.VAL_SOURCE", "test", "TRAINER.LMPT.VAL_SOURCE='test'; choose one of train_holdout, dataset"),
    ("TRAINER.LMPT.M_CTX", 77, "TRAINER.LMPT.M_CTX=77; choose 0..76"),
    ("TRAINER.LMPT.PREC", "bf16", "TRAINER.LMPT.PREC='bf16'"),
    ("TEST.EVALUATOR", "Classification", "TEST.EVALUATOR='Classification'; LMPT needs MultiLabelClassification"),
    ("OPTIM.WARMUP_EPOCH", 1, "OPTIM.WARMUP_EPOCH=1 has no effect with TRAINER.LMPT.PLATEAU.ENABLED"),
])
def test_config_errors_before_clip_loads(data_root, monkeypatch, key, value, match):
    def _no_load(*args, **kwargs):
        raise AssertionError("CLIP was loaded before the config was checked")

    monkeypatch.setattr(prompt_trainer, "load_clip_to_cpu", _no_load)
    with pytest.raises(ValueError, match=match):
        build_trainer(_cfg(data_root, opts=[key, value, "TRAINER.LMPT.PLATEAU.ENABLED", True]))


def test_zero_shot_baseline_config_and_lmpt_text():
    """The repository's class text: 80 templates with the FULL name, joined, first 76 characters; its first-word
    class names only with FIRST_WORD_NAMES."""
    text = lmpt_concat_text("traffic light")
    assert len(text) == 76
    assert text == ("a bad photo of a traffic light. a photo of many traffic light. a sculpture of a traffic "
                    "light.")[:76]
    names = ["traffic light", "hot_dog", "person"]
    assert class_text_names(names, first_word=False) == ["traffic light", "hot dog", "person"]
    assert class_text_names(names, first_word=True) == ["traffic", "hot", "person"]
    cfg = get_cfg()
    cfg.TRAINER.NAME = "ZeroshotCLIPMultiLabel"
    cfg.TRAINER.ZEROSHOTCLIPMULTILABEL.TEXT = "concat"
    with pytest.raises(ValueError, match="TRAINER.ZEROSHOTCLIPMULTILABEL.TEXT='concat'"):
        build_trainer(cfg)


@pytest.fixture(scope="module")
def synthetic_trainer(data_root):
    return build_trainer(_cfg(data_root))


def test_trainable_context_prompts_and_holdout_split(synthetic_trainer):
    """Only the CSC context (n_cls x n_ctx x D) is trainable; prompts are (n_cls, 77, D); 10% of the training
    images are held out for model selection, disjoint from the training loader's images."""
    t = synthetic_trainer
    trainable = {n: p.numel() for n, p in t.model.named_parameters() if p.requires_grad}
    assert trainable == {"prompt_learner.ctx": 6 * 8 * 128}
    assert t.model.prompt_learner().shape == (6, 77, 128)
    train_items = t.train_loader_x.dataset.data_source
    val_items = t.val_loader.dataset.data_source
    full = t.dm.dataset.train_x
    assert len(val_items) == 24 and len(train_items) == 216
    assert {d.impath for d in train_items} | {d.impath for d in val_items} == {d.impath for d in full}
    assert not {d.impath for d in train_items} & {d.impath for d in val_items}
    assert t.test_loader.dataset.data_source is t.dm.dataset.test
    assert t.caption_tokens.shape == (216, 77)


def test_one_step_combines_losses_and_aligns_captions(synthetic_trainer):
    """loss = LAM * L_cls + (1 - LAM) * L_cse; L_cse is recomputed here from each batch image's own caption
    (75-character cut, CLIP tokenizer, frozen token embedding); only ``ctx`` changes in the step."""
    t = synthetic_trainer
    t.set_model_mode("train")
    t.batch_idx, t.num_batches = 0, len(t.train_loader_x)
    batch = next(iter(t.train_loader_x))
    items = [t.train_loader_x.dataset.data_source[i] for i in batch["index"].tolist()]
    tokens = clip.tokenize([d.caption[:75] for d in items]).long()
    captions = t.model.token_embedding(tokens).float().detach()  # (B, 77, D)
    with torch.no_grad():
        prompts = t.model.prompt_learner().clone()
    freq = t.dm.dataset.class_freq
    expected_cse = ClassSpecificEmbeddingLoss(freq, margin=0.2, gamma=2.0, m_ctx=2)(captions, prompts, batch["label"])
    frozen = {n: p.clone() for n, p in t.model.named_parameters() if not p.requires_grad}
    ctx = t.model.prompt_learner.ctx.detach().clone()
    summary = t.forward_backward(batch)
    assert summary["loss_cse"] == pytest.approx(expected_cse.item(), rel=1e-5)
    assert summary["loss"] == pytest.approx(0.5 * summary["loss_cls"] + 0.5 * summary["loss_cse"], rel=1e-5)
    assert not torch.equal(ctx, t.model.prompt_learner.ctx)
    assert all(torch.equal(p, frozen[n]) for n, p in t.model.named_parameters() if not p.requires_grad)


@pytest.mark.parametrize("cls_loss", ["bce", "focal", "asl"])
def test_cls_loss_switch_without_cse(data_root, cls_loss):
    """USE_CSE False trains with L_cls alone (the "CoOp + L_cls" baseline), whichever CLS_LOSS is chosen."""
    t = build_trainer(_cfg(data_root, opts=["TRAINER.LMPT.USE_CSE", False, "TRAINER.LMPT.CLS_LOSS", cls_loss]))
    t.set_model_mode("train")
    t.batch_idx, t.num_batches = 0, len(t.train_loader_x)
    batch = next(iter(t.train_loader_x))
    with torch.no_grad():
        logits, _ = t.model.forward_with_prompts(batch["img"])
    expected = {"bce": lambda z, y: bce_loss(z, y), "focal": lambda z, y: focal_loss(z, y, gamma=2.0),
                "asl": lambda z, y: asymmetric_loss(z, y, gamma_neg=4, gamma_pos=0, clip=0.05)}[cls_loss]
    summary = t.forward_backward(batch)
    assert set(summary) == {"loss", "loss_cls"} and t.cse_loss is None
    assert summary["loss"] == pytest.approx(expected(logits, batch["label"]).item(), rel=1e-5)


def test_dbl_constants_default_and_config_override(synthetic_trainer, data_root):
    """A dataset that declares no DB-loss constants gets the loss's defaults (2.0 / 0.2); TRAINER.LMPT.DBL wins."""
    assert not hasattr(synthetic_trainer.dm.dataset, "DBL_NEG_SCALE")
    assert (synthetic_trainer.cls_loss.neg_scale, synthetic_trainer.cls_loss.map_mu) == (2.0, 0.2)
    t = build_trainer(_cfg(data_root, opts=["TRAINER.LMPT.DBL.NEG_SCALE", 3.0, "TRAINER.LMPT.DBL.MAP_MU", 0.5,
                                            "TRAINER.LMPT.USE_CSE", False]))
    assert (t.cls_loss.neg_scale, t.cls_loss.map_mu) == (3.0, 0.5)


def test_drop_last_switch_keeps_the_last_batch(synthetic_trainer, data_root, monkeypatch):
    """216 training images in batches of 32: Dassl drops the last 24 each epoch, DROP_LAST False (LMPT's loader)
    trains on them; a last batch that would leave a torchrun process without images is refused."""
    assert len(synthetic_trainer.train_loader_x) == 6
    t = build_trainer(_cfg(data_root, opts=["TRAINER.LMPT.DROP_LAST", False, "TRAINER.LMPT.USE_CSE", False]))
    assert len(t.train_loader_x) == 7
    assert sum(len(b["index"]) for b in t.train_loader_x) == 216
    monkeypatch.setattr(lmpt_trainer, "get_world_size", lambda: 4)
    with pytest.raises(ValueError, match="the last batch of 2 training images leaves a process of 4 without images"):
        build_trainer(_cfg(data_root, opts=["TRAINER.LMPT.DROP_LAST", False, "TRAINER.LMPT.USE_CSE", False,
                                            "DATALOADER.TRAIN_X.BATCH_SIZE", 214]))


def test_holdout_split_does_not_depend_on_the_global_rng():
    """Every rank (and every run seed) draws the same hold-out split: only VAL_SEED decides it."""
    items = list(range(50))
    random.seed(1)
    first = holdout_split(items, 0.1, seed=0)
    random.seed(2)
    torch.manual_seed(3)
    assert holdout_split(items, 0.1, seed=0) == first
    assert len(first[1]) == 5 and sorted(first[0] + first[1]) == items
    assert holdout_split(items, 0.1, seed=1) != first


def _context_gradient(t, batch) -> torch.Tensor:
    """The gradient ``forward_backward`` leaves on the context (no optimizer step, no engine averaging)."""
    ctx = t.model.prompt_learner.ctx
    ctx.grad = None
    t.backward_and_update = lambda loss, names=None: loss.backward()
    t.forward_backward(batch)
    return ctx.grad.clone()


def _loss_rows(t, batch) -> list:
    """What one rank contributes to the global batch: fp32 logits, labels and CSE terms of its images."""
    with torch.no_grad():
        image, label = t.parse_batch_train(batch)
        logits, prompts = t.model.forward_with_prompts(image)
        captions = t.model.embed_captions(t.caption_tokens[batch["index"]])
        return [logits.float(), label, t.cse_loss.entries(captions, prompts, label)]


@pytest.mark.parametrize("opts", [[], ["TRAINER.LMPT.CLS_LOSS", "asl", "TRAINER.LMPT.ASL.REDUCTION", "sum"]])
def test_two_ranks_give_the_single_process_gradient(data_root, monkeypatch, opts):
    """Two ranks, simulated in one process: each takes half of the global batch, gets the other half's rows
    through the (patched) all-gather, and the engine averages their gradients.  That average equals the
    single-process gradient, also for losses that are not a mean of per-rank terms (the DB loss's batch-level
    focal factor, ASL summed); per-rank losses on each half alone would not (the sum is off by a factor 2)."""
    t = build_trainer(_cfg(data_root, opts=opts))
    t.set_model_mode("train")
    batch = next(iter(t.train_loader_x))
    half = len(batch["index"]) // 2
    halves = [{k: v[r * half:(r + 1) * half] for k, v in batch.items()} for r in range(2)]
    single = _context_gradient(t, batch)
    per_rank_alone = (_context_gradient(t, halves[0]) + _context_gradient(t, halves[1])) / 2
    rows = [_loss_rows(t, h) for h in halves]
    grads = []
    for rank in range(2):
        monkeypatch.setattr(lmpt_trainer, "is_distributed", lambda: True)
        monkeypatch.setattr(lmpt_trainer, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(lmpt_trainer, "get_world_size", lambda: 2)
        monkeypatch.setattr(lmpt_trainer, "all_gather_object", lambda obj: rows)
        grads.append(_context_gradient(t, halves[rank]))
        monkeypatch.undo()
    averaged = (grads[0] + grads[1]) / 2

    def rel_err(a, b):
        return ((a - b).norm() / b.norm()).item()

    assert rel_err(averaged, single) < 1e-5, rel_err(averaged, single)
    if opts:  # summed ASL: each rank's own loss is half the global one
        assert rel_err(per_rank_alone, single) > 0.4


def test_plateau_schedule_steps_on_val_map(data_root, monkeypatch, tmp_path):
    """ReduceLROnPlateau (max mode, patience 5, factor 0.1; the paper configs' schedule) steps once per epoch on
    the val mAP, in after_epoch; the epoch-end update_lr leaves it alone."""
    t = build_trainer(_cfg(data_root, str(tmp_path), opts=["TRAINER.LMPT.PLATEAU.ENABLED", True]))
    monkeypatch.setattr(t, "test", lambda split=None: 40.0)  # a flat validation curve
    monkeypatch.setattr(t, "save_model", lambda *a, **k: None)
    t.max_epoch = 100
    lrs = []
    for t.epoch in range(7):
        t.update_lr()
        t.after_epoch()
        lrs.append(t.get_current_lr())
    assert lrs[:6] == [0.01] * 6  # epoch 1 sets the best, epochs 2-6 are 5 bad epochs = patience
    assert lrs[6] == pytest.approx(0.001)


@pytest.mark.parametrize("name,neg_scale,map_mu,n_train", [("COCOLT", 2.0, 0.2, 1909), ("VOCLT", 5.0, 0.3, 1142)])
def test_real_lists_dbl_constants_and_captions(tmp_path, name, neg_scale, map_mu, n_train):
    """On the shipped COCO-LT / VOC-LT lists: the DB-loss constants LMPT uses per dataset (COCO-LT 2.0 / 0.2,
    VOC-LT 5.0 / 0.3), declared by the dataset class; N and n_c from the full training list, captions cut at 75
    characters, and a finite training step."""
    link_lmpt_images(tmp_path, name)
    dataset_cfg = osp.join(REPO_ROOT, f"configs/datasets/{name[:-2].lower()}_lt.yaml")
    t = build_trainer(_cfg(str(tmp_path), dataset_cfg=dataset_cfg, opts=["TEST.EVALUATOR", "MultiLabelClassification"]))
    assert (type(t.dm.dataset).DBL_NEG_SCALE, type(t.dm.dataset).DBL_MAP_MU) == (neg_scale, map_mu)
    loss = t.cls_loss
    assert (loss.neg_scale, loss.map_mu, loss.focal) == (neg_scale, map_mu, "batch")
    freq = torch.tensor(t.dm.dataset.class_freq, dtype=torch.float64)
    expected_bias = -0.05 * torch.log(n_train / freq - 1) / neg_scale
    assert torch.allclose(loss.init_bias.double(), expected_bias, atol=1e-6)
    items = t.train_loader_x.dataset.data_source
    assert len(items) == n_train - round(0.1 * n_train)
    k = max(range(len(items)), key=lambda i: len(items[i].caption))
    assert (len(items[k].caption) > 75) == (name == "COCOLT")  # COCO lines are 5 captions, VOC ones <= 70 chars
    assert torch.equal(t.caption_tokens[k], clip.tokenize(items[k].caption[:75])[0].long())
    t.set_model_mode("train")
    t.batch_idx, t.num_batches = 0, 99
    summary = t.forward_backward(next(iter(t.train_loader_x)))
    assert all(torch.isfinite(torch.tensor(v)) for v in summary.values())


def test_zero_shot_skip_unlabeled_on_coco_lt(tmp_path):
    """SKIP_UNLABELED drops the 48 COCO-LT test images without a label (LMPT's zero-shot script) from the
    evaluated split and from the data source the feature-cache key is computed from; by default all 5,000 stay."""
    link_lmpt_images(tmp_path, "COCOLT")
    dataset_cfg = osp.join(REPO_ROOT, "configs/datasets/coco_lt.yaml")
    sizes = {}
    for skip in (False, True):
        t = build_trainer(_cfg(str(tmp_path), dataset_cfg=dataset_cfg, opts=[
            "TRAINER.NAME", "ZeroshotCLIPMultiLabel", "TEST.EVALUATOR", "MultiLabelClassification",
            "TRAINER.ZEROSHOTCLIPMULTILABEL.SKIP_UNLABELED", skip]))
        split, loader, data_source = t.eval_split("test")
        assert split == "test" and loader.dataset.data_source is data_source
        assert all(item.label for item in data_source) == skip
        sizes[skip] = len(data_source)
    assert sizes == {False: 5000, True: 4952}


def _final_map(run_dir: str, keyword: str = "mAP", end_markers=parse_test_res.END_MARKERS_TRAIN) -> float:
    value = parse_test_res.parse_log(osp.join(run_dir, "log.txt"), keyword, end_markers)
    assert value is not None, f"no '* {keyword}:' line after the end marker in {run_dir}/log.txt"
    return value


def test_lmpt_beats_zero_shot_and_eval_only_reloads(data_root, tmp_path):
    """10 epochs of LMPT on the synthetic multi-label set with the tiny CLIP raise the test mAP well above zero-shot
    CLIP's; evaluating the saved best model again gives the same mAP."""
    lmpt_dir, zs_dir, eval_dir = (str(tmp_path / n) for n in ("lmpt", "zs", "eval"))
    assert run_train(_train_argv(data_root, lmpt_dir)) == 0
    assert run_train(_train_argv(data_root, zs_dir, trainer="ZeroshotCLIPMultiLabel")) == 0
    lmpt_map, zs_map = _final_map(lmpt_dir), _final_map(zs_dir)
    assert lmpt_map > zs_map + 5.0, (lmpt_map, zs_map)
    log = open(osp.join(lmpt_dir, "log.txt")).read()
    assert "loss_cse" in log and "Deploy the model with the best val performance" in log
    assert _final_map(lmpt_dir, "mAP_tail") >= 0 and _final_map(lmpt_dir, "mAP_head") > _final_map(lmpt_dir, "mAP_tail")
    assert run_train(_train_argv(data_root, eval_dir, extra=["--eval-only", "--model-dir", lmpt_dir])) == 0
    assert _final_map(eval_dir, end_markers=parse_test_res.END_MARKERS_TEST) == lmpt_map


def test_resume_is_bit_identical(data_root, tmp_path):
    """Stopped after epoch 2 and resumed to 3 = 3 epochs in one go: same context, same plateau state, same lr."""
    plateau = ["TRAINER.LMPT.PLATEAU.ENABLED", "True", "TRAIN.CHECKPOINT_FREQ", "1"]
    opts = ["OPTIM.MAX_EPOCH", "3", *plateau]
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    assert run_train(_train_argv(data_root, straight, opts=opts)) == 0
    assert run_train(_train_argv(data_root, resumed, opts=["OPTIM.MAX_EPOCH", "2", *plateau])) == 0
    # MAX_EPOCH differs from the interrupted run's config: resuming it is deliberate here
    assert run_train(_train_argv(data_root, resumed, extra=["--resume-anyway"], opts=opts)) == 0
    a = torch.load(osp.join(straight, "prompt_learner", "model.pth.tar-3"), weights_only=True)
    b = torch.load(osp.join(resumed, "prompt_learner", "model.pth.tar-3"), weights_only=True)
    assert torch.equal(a["state_dict"]["ctx"], b["state_dict"]["ctx"])
    for key in ("best", "num_bad_epochs", "_last_lr"):
        assert a["scheduler"][key] == b["scheduler"][key], key

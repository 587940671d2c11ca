"""Warmup + cosine LR tables (dassl_engine.md §7.3), scheduler checkpoints, accuracy, meters, registry."""
import io
import math

import pytest
import torch

from dassl.config import get_cfg_default
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import MetricMeter, Registry

# Spec §7.3: SGD base 0.002, T=10, cosine.
TABLE_CONSTANT_W1 = [1e-05, 0.002, 0.00195106, 0.00180902, 0.00158779, 0.00130902, 0.001, 0.000690983, 0.000412215,
                     0.000190983]
TABLE_LINEAR_W3 = [1e-05, 0.000666667, 0.00133333, 0.002, 0.00195106, 0.00180902, 0.00158779, 0.00130902, 0.001,
                   0.000690983]
TABLE_CONSTANT_NORECOUNT = [1e-05, 0.002, 0.0018544, 0.00162762, 0.00134185, 0.00102509, 0.000708317, 0.000422555,
                            0.000195774, 5.01713e-05]


def _optim_cfg(warmup_type="constant", warmup_epoch=1, recount=True, max_epoch=10):
    cfg = get_cfg_default()
    o = cfg.OPTIM
    o.NAME, o.LR, o.MAX_EPOCH, o.LR_SCHEDULER = "sgd", 0.002, max_epoch, "cosine"
    o.WARMUP_EPOCH, o.WARMUP_TYPE, o.WARMUP_RECOUNT = warmup_epoch, warmup_type, recount
    return o


def _lrs(optim_cfg, epochs=10):
    param = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([param], optim_cfg)
    sched = build_lr_scheduler(opt, optim_cfg)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("cfg_kwargs,table", [
    (dict(warmup_type="constant", warmup_epoch=1), TABLE_CONSTANT_W1),
    (dict(warmup_type="linear", warmup_epoch=3), TABLE_LINEAR_W3),
    (dict(warmup_type="constant", warmup_epoch=1, recount=False), TABLE_CONSTANT_NORECOUNT),
])
def test_warmup_tables(cfg_kwargs, table):
    got = _lrs(_optim_cfg(**cfg_kwargs))
    for epoch, (g, t) in enumerate(zip(got, table)):
        assert math.isclose(g, t, rel_tol=1e-5), f"epoch {epoch}: {g} != {t}"


def test_cosine_without_warmup():
    got = _lrs(_optim_cfg(warmup_epoch=-1, max_epoch=6), epochs=6)
    expected = [0.002, 0.00186603, 0.0015, 0.001, 0.0005, 0.000133975]
    assert all(math.isclose(g, e, rel_tol=1e-5) for g, e in zip(got, expected)), got


def test_warmup_state_dict_loads_weights_only_and_resumes_the_curve():
    optim_cfg = _optim_cfg(warmup_type="linear", warmup_epoch=3)
    param = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([param], optim_cfg)
    sched = build_lr_scheduler(opt, optim_cfg)
    for _ in range(4):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # upstream fails here (pickled successor object)

    param2 = torch.nn.Parameter(torch.zeros(2))
    opt2 = build_optimizer([param2], optim_cfg)
    sched2 = build_lr_scheduler(opt2, optim_cfg)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    resumed = []
    for _ in range(6):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    uninterrupted = _lrs(optim_cfg)
    assert resumed == pytest.approx(uninterrupted[4:], rel=1e-12, abs=0)


def test_compute_accuracy_topk():
    output = torch.tensor([[0.1, 0.5, 0.4], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    target = torch.tensor([2, 0, 1, 2])
    top1, top2 = compute_accuracy(output, target, topk=(1, 2))
    assert top1.shape == (1,) and top1.item() == pytest.approx(25.0)
    assert top2.item() == pytest.approx(75.0)


def test_metric_meter_format():
    meter = MetricMeter()
    meter.update({"loss": torch.tensor(1.0), "acc": 50.0})
    meter.update({"loss": 3.0, "acc": 100.0})
    assert str(meter) == "loss 3.0000 (2.0000) acc 100.0000 (75.0000)"
    with pytest.raises(TypeError):
        meter.update([1.0])


def test_registry_duplicate_and_lookup_errors():
    reg = Registry("THING")

    @reg.register()
    class Alpha:
        pass

    with pytest.raises(KeyError, match='already registered in "THING"'):
        reg.register(Alpha)
    with pytest.raises(KeyError, match="Alpha"):
        reg.get("Alpah")
    assert reg.registered_names() == ["Alpha"]

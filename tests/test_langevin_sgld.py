"""SGLD optimizer (trainers/langevin_coop/sgld.py): each noise mode's update recomputed here, noise statistics,
reproducibility and resume of the noise stream."""
from __future__ import annotations

import math

import pytest
import torch

from dassl.utils import set_random_seed
from vlprompt.trainers.langevin_coop.sgld import NOISE_MODES, SGLD


def _quadratic_grad(param: torch.Tensor, target: torch.Tensor) -> None:
    """Set ``param.grad`` to the gradient of 0.5 * ||param - target||^2 (a real, non-zero gradient)."""
    param.grad = (param.detach() - target).clone()


def _params(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(n, 5, generator=g)), torch.randn(n, 5, generator=g)


@pytest.mark.parametrize("mode", NOISE_MODES)
def test_zero_lr_moves_nothing(mode):
    """lr = 0: no gradient step and no noise, in every mode, with weight decay and a non-zero gradient."""
    param, target = _params()
    before = param.detach().clone()
    opt = SGLD([param], lr=0.0, weight_decay=0.1, noise_mode=mode, temperature=3.0, noise_scale=1.0, seed=1)
    for _ in range(5):
        _quadratic_grad(param, target)
        opt.step()
    assert torch.equal(param.detach(), before)


@pytest.mark.parametrize("mode,temperature", [("sgld_temp", 0.0), ("none", 5.0)])
def test_zero_temperature_is_sgd_with_weight_decay(mode, temperature):
    """T = 0 (or mode none) equals torch.optim.SGD(lr, weight_decay, no momentum), bit for bit."""
    p1, target = _params()
    p2 = torch.nn.Parameter(p1.detach().clone())
    ours = SGLD([p1], lr=0.1, weight_decay=0.01, noise_mode=mode, temperature=temperature, seed=3)
    sgd = torch.optim.SGD([p2], lr=0.1, weight_decay=0.01, momentum=0.0)
    for _ in range(7):
        _quadratic_grad(p1, target)
        _quadratic_grad(p2, target)
        ours.step()
        sgd.step()
    assert torch.equal(p1.detach(), p2.detach())
    assert not torch.equal(p1.detach(), _params()[0].detach())  # it did move


def _increments(mode: str, lr: float, temperature: float = 1.0, noise_scale: float = 1e-5, steps: int = 40,
                size: int = 25000) -> torch.Tensor:
    """Per-step changes of a parameter with zero gradient and no weight decay: only the injected noise."""
    param = torch.nn.Parameter(torch.zeros(size, dtype=torch.float64))
    opt = SGLD([param], lr=lr, noise_mode=mode, temperature=temperature, noise_scale=noise_scale, seed=11)
    out = []
    for _ in range(steps):
        before = param.detach().clone()
        param.grad = torch.zeros_like(param)
        opt.step()
        out.append(param.detach() - before)
    return torch.stack(out)  # (steps, size)


@pytest.mark.parametrize("lr,temperature", [(0.005, 8e-5), (0.05, 1.0), (1e-3, 2.5)])
def test_langevin_noise_std(lr, temperature):
    """sgld_temp: the empirical std of the injected noise is sqrt(2 * lr * T) within 5%; mean ~ 0."""
    inc = _increments("sgld_temp", lr, temperature)
    expected = math.sqrt(2 * lr * temperature)
    assert abs(inc.std().item() / expected - 1) < 0.05, (inc.std().item(), expected)
    assert abs(inc.mean().item()) < 0.01 * expected


def test_reference_small_noise_is_scale_times_lr():
    """ref_small (the reference's var_my_noise): std = noise_scale * lr, and the increments are exactly
    noise_scale * lr * xi for the optimizer's seeded generator."""
    lr, scale = 0.005, 1e-5
    inc = _increments("ref_small", lr, noise_scale=scale, steps=20, size=20000)
    assert abs(inc.std().item() / (scale * lr) - 1) < 0.05
    g = torch.Generator().manual_seed(11)
    xi = torch.stack([torch.randn(20000, generator=g, dtype=torch.float64) for _ in range(20)])
    torch.testing.assert_close(inc, scale * lr * xi, rtol=1e-6, atol=1e-18)


def test_reference_var_mode_update():
    """sgld (the reference's var): p - (lr / 2) * (grad + wd * p) + sqrt(lr) * xi, recomputed."""
    param, target = _params(seed=5)
    lr, wd = 0.01, 0.1
    expected = param.detach().clone()
    opt = SGLD([param], lr=lr, weight_decay=wd, noise_mode="sgld", seed=42)
    g = torch.Generator().manual_seed(42)
    for _ in range(3):
        _quadratic_grad(param, target)
        grad = param.grad.clone()
        opt.step()
        xi = torch.randn(expected.shape, generator=g)
        expected = expected - (lr / 2) * (grad + wd * expected) + math.sqrt(lr) * xi
        torch.testing.assert_close(param.detach(), expected, rtol=1e-6, atol=1e-7)


def test_noise_only_where_asked_and_only_with_grad():
    """A group with noise=False gets plain SGD; a parameter without a gradient does not move at all."""
    noisy, target = _params(seed=1)
    quiet = torch.nn.Parameter(noisy.detach().clone())
    frozen = torch.nn.Parameter(torch.ones(3))
    reference = torch.nn.Parameter(noisy.detach().clone())
    opt = SGLD([{"params": [noisy, frozen]}, {"params": [quiet], "noise": False}], lr=0.1, noise_mode="sgld_temp",
               temperature=1.0, seed=0)
    sgd = torch.optim.SGD([reference], lr=0.1)
    for _ in range(3):
        for p in (noisy, quiet, reference):
            _quadratic_grad(p, target)
        opt.step()
        sgd.step()
    assert torch.equal(quiet.detach(), reference.detach())
    assert (noisy.detach() - reference.detach()).abs().max() > 0.1  # std sqrt(0.2) per step
    assert torch.equal(frozen.detach(), torch.ones(3))


def _trajectory(opt_seed=None, global_seed=None, steps=4):
    if global_seed is not None:
        set_random_seed(global_seed)
    param, target = _params(seed=9)
    opt = SGLD([param], lr=0.05, noise_mode="sgld_temp", temperature=0.5, seed=opt_seed)
    for _ in range(steps):
        _quadratic_grad(param, target)
        opt.step()
    return param.detach().clone()


def test_reproducible_from_the_global_seed():
    """Without an explicit seed the noise seed comes from the global torch RNG: same --seed, same run."""
    assert torch.equal(_trajectory(global_seed=3), _trajectory(global_seed=3))
    assert not torch.equal(_trajectory(global_seed=3), _trajectory(global_seed=4))
    assert torch.equal(_trajectory(opt_seed=7), _trajectory(opt_seed=7))


def test_state_dict_resumes_the_noise_stream():
    """Saving after 3 steps and loading into a new optimizer continues exactly the uninterrupted run."""
    param, target = _params(seed=2)
    opt = SGLD([param], lr=0.05, weight_decay=1e-3, noise_mode="sgld_temp", temperature=0.3, seed=5)
    for _ in range(3):
        _quadratic_grad(param, target)
        opt.step()
    saved_param, saved_state = param.detach().clone(), opt.state_dict()
    for _ in range(3):
        _quadratic_grad(param, target)
        opt.step()
    resumed = torch.nn.Parameter(saved_param)
    opt2 = SGLD([resumed], lr=0.05, weight_decay=1e-3, noise_mode="sgld_temp", temperature=0.3, seed=999)
    opt2.load_state_dict(saved_state)
    for _ in range(3):
        _quadratic_grad(resumed, target)
        opt2.step()
    assert torch.equal(resumed.detach(), param.detach())


def test_bad_arguments_fail():
    param = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="noise_mode"):
        SGLD([param], lr=0.1, noise_mode="langevin")
    with pytest.raises(ValueError, match="temperature"):
        SGLD([param], lr=0.1, temperature=-1.0)
    with pytest.raises(ValueError, match="lr"):
        SGLD([param], lr=-0.1)

"""Stochastic rounding of float32 to bfloat16 (hamopt.core.rounding) and its use in the shell.

The two bf16 neighbours of each value and the probability of rounding up are computed here
from the definition (bf16 keeps 8 significant bits: the spacing at ``x`` is
``2^(floor(log2|x|) - 7)``), in float64 with Python's math, not with bit tricks.
"""

from __future__ import annotations

import math

import pytest
import torch

import hamopt
from hamopt.core.rounding import stochastic_round_to_bf16


def _neighbours(x: float) -> tuple[float, float, float]:
    """``(a, b, p)``: the bf16 values around ``x`` toward and away from zero, and P(b)."""
    if x == 0:
        return 0.0, 0.0, 0.0
    e = math.floor(math.log2(abs(x)))
    spacing = 2.0 ** (max(e, -126) - 7)  # subnormals: the spacing of the smallest normal binade
    mag = math.floor(abs(x) / spacing) * spacing
    frac = (abs(x) - mag) / spacing
    return math.copysign(mag, x), math.copysign(mag + spacing, x), frac


def _values() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(150, generator=g) * torch.logspace(-6, 6, 150)
    return torch.cat([v, torch.tensor([1.0 + 2**-9, -(1.0 + 2**-9), 3e-39, 255.99, 1.0 + 3 * 2**-10])])


def test_expected_value_equals_the_float32_value() -> None:
    xs = _values()
    n = 4000
    draws = stochastic_round_to_bf16(xs.repeat(n, 1), generator=torch.Generator().manual_seed(1)).double()
    for j, x in enumerate(xs.tolist()):
        a, b, p = _neighbours(x)
        col = draws[:, j]
        up = (col == b).double().mean().item()
        assert bool(((col == a) | (col == b)).all()), f"{x!r}: a draw is neither neighbour {a!r} nor {b!r}"
        # binomial: 5 standard deviations (+1 draw) around p
        bound = 5 * math.sqrt(p * (1 - p) / n) + 1.0 / n
        assert abs(up - p) <= bound, f"{x!r}: rounded up {up:.4f} of the time, expected {p:.4f}"
        mean_err = abs(col.mean().item() - x)
        assert mean_err <= bound * abs(b - a) + 1e-300, f"{x!r}: E[round(x)] - x = {mean_err}"


def test_exact_values_and_specials_are_kept() -> None:
    exact = torch.tensor([0.0, -0.0, 1.0, -2.5, 0.75, 2.0**-120, 3.3895313892515355e38])
    for seed in range(5):
        out = stochastic_round_to_bf16(exact, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(out.float(), exact) and torch.equal(out.float().signbit(), exact.signbit())
    special = torch.tensor([float("inf"), float("-inf"), float("nan")])
    out = stochastic_round_to_bf16(special).float()
    assert out[0] == float("inf") and out[1] == float("-inf") and out[2].isnan()
    with pytest.raises(ValueError, match=r"expects a float32 tensor, got torch\.float64"):
        stochastic_round_to_bf16(torch.zeros(2, dtype=torch.float64))


def test_deterministic_under_a_generator_and_a_seed() -> None:
    x = torch.randn(1000) * 3
    a = stochastic_round_to_bf16(x, generator=torch.Generator().manual_seed(7))
    b = stochastic_round_to_bf16(x, generator=torch.Generator().manual_seed(7))
    c = stochastic_round_to_bf16(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d = stochastic_round_to_bf16(x)
    torch.manual_seed(3)
    assert torch.equal(d, stochastic_round_to_bf16(x))


def test_compiles() -> None:
    torch._dynamo.reset()
    fn = torch.compile(stochastic_round_to_bf16, backend="aot_eager", fullgraph=True)
    x = torch.full((20000,), 1.0 + 2**-9)  # a quarter of the way from 1 to the next bf16, 1 + 2^-7
    out = fn(x).float()
    assert bool(((out == 1.0) | (out == 1.0 + 2**-7)).all())
    assert abs((out == 1.0 + 2**-7).float().mean().item() - 0.25) < 0.02


def _lion_run(sr: bool, steps: int = 100, seed: int = 0, compiled: bool = False) -> torch.Tensor:
    torch.manual_seed(seed)
    p = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    opt = hamopt.create("lion", [p], lr=1e-4, weight_decay=0.0, stochastic_rounding=sr)
    if compiled:
        torch._dynamo.reset()
        opt = hamopt.compile_step(opt, backend="aot_eager")
    for _ in range(steps):
        p.grad = torch.ones_like(p)  # Lion's update is sign(.) = 1 exactly: p <- p - lr each step
        opt.step()
    return p.detach().float()


def test_small_updates_survive_on_average_in_an_optimizer() -> None:
    # 100 steps of 1e-4 from 1.0: float32 would reach 0.99; bf16's spacing just below 1 is 2^-8.
    nearest = _lion_run(sr=False)
    assert torch.equal(nearest, torch.ones(4096))  # round to nearest: every step is lost
    sr = _lion_run(sr=True)
    target = 1.0 - 100 * 1e-4
    # per element: a random walk of 100 unbiased roundings, each error of variance <= (2^-8)^2 / 4,
    # so a standard deviation <= 10 * 2^-8 / 2; the mean over 4096 elements: 5 standard errors
    assert abs(sr.mean().item() - target) < 5 * (10 * 2**-8 / 2) / math.sqrt(4096)
    # the rounding traces inside a compiled step too (randint there instead of random_)
    assert abs(_lion_run(sr=True, compiled=True).mean().item() - target) < 5 * (10 * 2**-8 / 2) / math.sqrt(4096)
    assert torch.equal(sr, _lion_run(sr=True))  # same seed, same run
    assert not torch.equal(sr, _lion_run(sr=True, seed=1))


def test_opt_in_settings_and_errors() -> None:
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    opt = hamopt.create("hfac", [p], stochastic_rounding=True)
    assert [g["stochastic_rounding"] for g in opt.param_groups] == [True]
    assert opt.state_dict()["param_groups"][0]["stochastic_rounding"] is True
    hamopt.enable_stochastic_rounding(opt, False)
    assert opt.param_groups[0]["stochastic_rounding"] is False
    with pytest.raises(ValueError, match="stochastic_rounding=True needs one of hamopt's own optimizers; AdamW"):
        hamopt.create("adamw", [p], stochastic_rounding=True)
    # a group of a partition: only that rule's parameters
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2)).bfloat16()
    comp = hamopt.partition(model, {"matrices": "hfac", "rest": "lion"})
    hamopt.enable_stochastic_rounding(comp)
    assert all(g["stochastic_rounding"] for g in comp.param_groups)

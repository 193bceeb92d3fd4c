"""hamopt.compile_step: the compiled step equals the eager one, LR schedules do not recompile."""

from __future__ import annotations

import pytest
import torch

import hamopt


def _params(seed: int, dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in [(6, 5), (5,), (3, 2, 2)]]


def _grads(step: int, ps: list[torch.Tensor]) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


@pytest.mark.parametrize("name", ["lion", "grams", "hfac", "adafactor_m", "adamw", "sgd"])
def test_compiled_step_follows_an_lr_schedule_like_eager(name: str) -> None:
    torch._dynamo.reset()
    ps, qs = _params(0), _params(0)
    eager = hamopt.create(name, ps, lr=0.01)
    comp = hamopt.compile_step(hamopt.create(name, qs, lr=0.01), backend="aot_eager")
    # hamopt's own optimizers get a tensor lr; torch's keep theirs (torch decides what it accepts)
    assert isinstance(comp.param_groups[0]["lr"], torch.Tensor) == isinstance(comp, hamopt.ChainedOptimizer)
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in (eager, comp)]
    for s in range(6):
        _grads(s, ps)
        _grads(s, qs)
        eager.step()
        comp.step()
        for sch in scheds:
            sch.step()
    assert float(comp.param_groups[0]["lr"]) == pytest.approx(eager.param_groups[0]["lr"])
    for a, b in zip(ps, qs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.equal(a, _params(0)[0]) or a.shape != (6, 5)


def test_compile_step_keeps_float64_learning_rates_exact() -> None:
    ps = _params(1, torch.float64)
    opt = hamopt.compile_step(hamopt.Lion(ps, lr=0.1 + 1e-12), backend="aot_eager")
    lr = opt.param_groups[0]["lr"]
    assert lr.dtype == torch.float64 and float(lr) == 0.1 + 1e-12
    f32 = hamopt.compile_step(hamopt.Lion(_params(1), lr=0.1), backend="aot_eager")
    assert f32.param_groups[0]["lr"].dtype == torch.float32


def test_lr_schedule_does_not_recompile() -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    ps = _params(2)
    opt = hamopt.compile_step(hamopt.Lion(ps, lr=0.01), backend="aot_eager")
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    seen = []
    for s in range(6):
        _grads(s, ps)
        opt.step()
        sched.step()
        seen.append(counters["stats"]["unique_graphs"])
    assert seen[1] > 0
    assert seen[-1] == seen[2], f"graphs compiled per step: {seen}"  # lr fell 32x meanwhile


def test_compile_step_accepts_torch_foreach_optimizers() -> None:
    ps, qs = _params(3), _params(3)
    eager = torch.optim.AdamW(ps, lr=0.01, foreach=True)
    comp = hamopt.compile_step(torch.optim.AdamW(qs, lr=0.01, foreach=True), backend="aot_eager")
    for s in range(3):
        _grads(s, ps)
        _grads(s, qs)
        eager.step()
        comp.step()
    for a, b in zip(ps, qs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

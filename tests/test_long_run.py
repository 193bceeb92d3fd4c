"""A long run: thousands of steps, an LR schedule, layers frozen and unfrozen, and a
checkpoint written to disk in the middle; the resumed run ends bit-identical to the
uninterrupted one.

Two layers in two parameter groups (the second with its own lr) train on a noisy quadratic
for ``STEPS`` steps under a warm-up + cosine ``LambdaLR``. The first layer's bias is frozen
(no gradient) for steps 200-399 and the whole second layer for steps 600-1299, across the
checkpoint at step 1000: model, optimizer and scheduler go through ``torch.save`` to a file
and come back with ``torch.load(weights_only=True)`` into fresh objects. Everything the
optimizer keeps (moments, factored statistics, SVD bases refreshed every 50 steps, step
counts that differ between parameters after the freezes) must survive, and the last
parameters and state must equal the uninterrupted run's exactly.

Every registered optimizer runs (about 30 s for all of them on 2 cores).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import hamopt
from conftest import ALL_NAMES

STEPS, SAVE_AT = 2000, 1000
NAMES = ALL_NAMES
SHAPES = [(4, 3), (4,), (2, 4)]
#: step ranges in which a parameter has no gradient (index -> [start, stop))
FROZEN = {1: (200, 400), 2: (600, 1300)}


def _params() -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


_G = torch.Generator().manual_seed(1)
_CURV = [0.5 + torch.rand(s, generator=_G) for s in SHAPES]
_TARGET = [torch.randn(s, generator=_G) for s in SHAPES]


def _noise(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(10_000 + step)  # the data of step `step`, whoever runs it
    return [0.1 * torch.randn(s, generator=g) for s in SHAPES]


def _frozen(i: int, step: int) -> bool:
    lo, hi = FROZEN.get(i, (0, 0))
    return lo <= step < hi


def _loss(ps: list[torch.Tensor], step: int) -> torch.Tensor:
    """``sum 0.5 a (p - t)^2 + noise * p`` over the parameters not frozen at ``step``."""
    terms = [(0.5 * a * (p - t) ** 2 + n * p).sum()
             for i, (p, a, t, n) in enumerate(zip(ps, _CURV, _TARGET, _noise(step))) if not _frozen(i, step)]
    return torch.stack(terms).sum()


def _build(name: str, ps: list[torch.nn.Parameter]) -> tuple[torch.optim.Optimizer, Any]:
    info = hamopt.get(name)
    kw = dict(info.test_kwargs)
    if "svd_interval" in info.defaults:
        kw["svd_interval"] = 50
    lr = info.test_lr if info.test_lr is not None else info.defaults["lr"]
    lr = 0.1 * lr
    opt = info.create([{"params": ps[:2]}, {"params": ps[2:], "lr": lr / 2}], lr=lr, **kw)

    def warmup_cosine(step: int) -> float:
        if step < 100:
            return (step + 1) / 100
        return 0.5 * (1 + math.cos(math.pi * (step - 100) / (STEPS - 100)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine)


def _train(name: str, opt: torch.optim.Optimizer, sched: Any, ps: list[torch.nn.Parameter], start: int,
           stop: int) -> None:
    graph = hamopt.get(name).step_needs == "graph"
    for step in range(start, stop):
        opt.zero_grad(set_to_none=True)
        if graph:  # the Hessian estimate differentiates the gradient: autograd with a graph
            _loss(ps, step).backward(create_graph=True)
        else:  # the same gradient written directly (a frozen layer: None), 3x cheaper than autograd here
            for i, (p, a, t, n) in enumerate(zip(ps, _CURV, _TARGET, _noise(step))):
                p.grad = None if _frozen(i, step) else a * (p.detach() - t) + n
        opt.step()
        sched.step()


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for k in sorted(x, key=str) for t in _tensors(x[k])]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    return []


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_long_run_resumed_from_disk_is_bit_identical(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ps = _params()
    start = [p.detach().clone() for p in ps]
    opt, sched = _build(name, ps)
    _train(name, opt, sched, ps, 0, SAVE_AT)
    path = tmp_path / "checkpoint.pt"
    torch.save({"params": [p.detach() for p in ps], "opt": opt.state_dict(), "sched": sched.state_dict()}, path)
    _train(name, opt, sched, ps, SAVE_AT, STEPS)

    ckpt = torch.load(path, weights_only=True)
    ps2 = [torch.nn.Parameter(t.clone()) for t in ckpt["params"]]
    opt2, sched2 = _build(name, ps2)
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    _train(name, opt2, sched2, ps2, SAVE_AT, STEPS)

    for i, (a, b) in enumerate(zip(ps, ps2)):
        assert torch.equal(a, b), f"{name}: parameter {i} differs by {(a - b).abs().max():.3g} after {STEPS} steps"
    sa, sb = opt.state_dict(), opt2.state_dict()
    for i, (a, b) in enumerate(zip(_tensors(sa["state"]), _tensors(sb["state"]))):
        assert torch.equal(a, b), f"{name}: state tensor {i} differs"
    assert [g["lr"] for g in sa["param_groups"]] == [g["lr"] for g in sb["param_groups"]]
    # it trained: every parameter moved towards its target, the twice-frozen ones too
    for i, (p, s, t) in enumerate(zip(ps, start, _TARGET)):
        assert torch.isfinite(p).all()
        assert (p.detach() - t).norm() < (s - t).norm(), f"{name}: parameter {i} did not approach its target"
    if isinstance(opt, hamopt.ChainedOptimizer):  # per-parameter counts: the frozen steps are not counted
        counts = [float(opt.state[p]["step"]) for p in ps]
        assert counts == [STEPS, STEPS - 200, STEPS - 700], counts

"""Shared test helpers: the registry-driven optimizer factory and small deterministic problems."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

import hamopt  # noqa: E402
from hamopt.registry import OptimizerInfo  # noqa: E402


def make_opt(info: OptimizerInfo, params: Any, **overrides: Any) -> torch.optim.Optimizer:
    """Build ``info``'s optimizer with its battery settings (test_lr, test_kwargs) and overrides."""
    kw: dict[str, Any] = dict(info.test_kwargs)
    if info.test_lr is not None and "lr" in info.defaults:
        kw["lr"] = info.test_lr
    kw.update(overrides)
    return info.create(params, **kw)


def backward(info: OptimizerInfo, loss: torch.Tensor) -> None:
    """``loss.backward()``, with the graph kept when the optimizer needs it (e.g. Sophia)."""
    loss.backward(create_graph=info.step_needs == "graph")


class Quadratic:
    """``f = sum_i 0.5 * sum(a_i * (p_i - t_i)^2)`` with fixed curvatures ``a`` and targets ``t``."""

    def __init__(self, shapes: Sequence[Sequence[int]], seed: int = 0, dtype: torch.dtype = torch.float32,
                 scale: float = 1.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.a = [(0.5 + 1.5 * torch.rand(tuple(s), generator=g, dtype=torch.float64)).to(dtype) for s in shapes]
        self.t = [(scale * torch.randn(tuple(s), generator=g, dtype=torch.float64)).to(dtype) for s in shapes]
        self.shapes = [tuple(s) for s in shapes]
        self.dtype = dtype

    def params(self, seed: int = 1) -> list[torch.nn.Parameter]:
        g = torch.Generator().manual_seed(seed)
        return [torch.nn.Parameter((0.1 * torch.randn(s, generator=g, dtype=torch.float64)).to(self.dtype))
                for s in self.shapes]

    def loss(self, ps: Sequence[torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for p, a, t in zip(ps, self.a, self.t):
            total = total + (0.5 * a * (p - t) ** 2).sum().to(torch.float64)
        return total


def run_steps(info: OptimizerInfo, opt: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor],
              n: int) -> list[float]:
    losses = []
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        backward(info, loss)
        opt.step()
        losses.append(float(loss.detach()))
    opt.zero_grad(set_to_none=True)
    return losses


ALL_NAMES = hamopt.list_optimizers()


@pytest.fixture(params=ALL_NAMES)
def info(request: pytest.FixtureRequest) -> OptimizerInfo:
    return hamopt.get(request.param)

"""Theory-side math of Lion-K's kernels: a subgradient of ``K*`` and the constraint norm.

The kernels themselves (``grad``, ``K``, ``K_star``) are :mod:`hamopt.transforms.kernels`'s;
this module adds what only the theory needs (Lion-K paper, seed 004, Table 2 and
Theorem 4.1; THEORY.md sections 7-9):

- :func:`conjugate_subgradient` ``(kernel, y)``: a subgradient of ``K*`` at ``y`` inside its
  domain (the smallest one: 0 for the indicator kernels, ``e sign(y)`` for threshold,
  ``e y`` for Huber; 0 is in the normal cone of the domain, so these stay subgradients on
  its boundary);
- :func:`constraint_norm` ``(kernel, x)``: the gauge ``N`` whose unit ball is ``dom K*``
  (THEORY.md section 9): ``||x||_inf`` (l1, threshold, Huber), ``||x||_q`` (lp), and
  ``max(||x||_inf, ||x||_1 / k)`` (top-k). With ``wd > 0`` the iterates satisfy
  ``N(x) <= 1/wd``; since ``N(gradK(.)) <= 1`` for every kernel, one explicit step gives
  ``N(x+) - 1/wd <= (1 - lr wd) (N(x) - 1/wd)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..transforms.kernels import HuberKernel, Kernel, L1Kernel, LpKernel, ThresholdKernel, TopKKernel, make_kernel

__all__ = ["KERNEL_SPECS", "constraint_norm", "conjugate_subgradient", "gauge_points", "kernel_label", "penalty_points",
           "theory_kernels"]

#: The five kernels of Table 2 with the parameters the checks use.
KERNEL_SPECS: dict[str, dict[str, float | int]] = {
    "l1": {},
    "lp": {"p": 2.0},
    "threshold": {"e": 0.1},
    "topk": {"k": 1},
    "huber": {"e": 0.5},
}


def theory_kernels(names: list[str] | None = None) -> dict[str, Kernel]:
    """The kernels of :data:`KERNEL_SPECS` (all, or ``names``) built by ``make_kernel``."""
    out = {}
    for n in names or list(KERNEL_SPECS):
        out[n] = make_kernel(n, **KERNEL_SPECS[n])  # type: ignore[arg-type]
    return out


def kernel_label(kernel: Kernel) -> str:
    """A short label: ``l1``, ``lp (p=2)``, ``threshold (e=0.1)``, ``topk (k=1)``, ``huber (e=0.5)``."""
    if isinstance(kernel, LpKernel):
        return f"lp (p={kernel.p:g})"
    if isinstance(kernel, (ThresholdKernel, HuberKernel)):
        return f"{kernel.name} (e={kernel.e:g})"
    if isinstance(kernel, TopKKernel):
        return f"topk (k={kernel.k})"
    return kernel.name


def conjugate_subgradient(kernel: Kernel, y: Tensor) -> Tensor:
    """A subgradient of ``K*`` at ``y`` (``y`` in ``dom K*``); autograd of ``K_star`` for
    other kernels."""
    if isinstance(kernel, (L1Kernel, LpKernel, TopKKernel)):
        return torch.zeros_like(y)
    if isinstance(kernel, ThresholdKernel):
        return kernel.e * torch.sign(y)
    if isinstance(kernel, HuberKernel):
        return kernel.e * y
    with torch.enable_grad():
        yr = y.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(kernel.K_star(yr), yr)
    return g


def constraint_norm(kernel: Kernel, x: Tensor) -> Tensor:
    """The gauge of ``dom K*`` at ``x`` (THEORY.md section 9): ``N(x) <= 1`` iff ``x`` is in
    the domain, so Lion-K with ``wd`` keeps ``N(x) <= 1/wd``."""
    flat = x.reshape(-1)
    if flat.numel() == 0:
        return flat.new_zeros(())
    if isinstance(kernel, LpKernel):
        q = kernel.q
        return torch.linalg.vector_norm(flat, math.inf if math.isinf(q) else q)
    inf = flat.abs().amax()
    if isinstance(kernel, TopKKernel):
        k = min(kernel.k, flat.numel())
        return torch.maximum(inf, flat.abs().sum() / k)
    if isinstance(kernel, (L1Kernel, ThresholdKernel, HuberKernel)):
        return inf
    raise ValueError(f"no constraint norm is known for {kernel!r} (built-in kernels: {', '.join(KERNEL_SPECS)})")


def gauge_points(kernel: Kernel, pts: Tensor) -> Tensor:
    """:func:`constraint_norm` of each row of ``pts`` (``... x d``), vectorized (built-in kernels)."""
    a = pts.abs()
    if isinstance(kernel, LpKernel):
        q = kernel.q
        return torch.linalg.vector_norm(pts, math.inf if math.isinf(q) else q, dim=-1)
    inf = a.amax(dim=-1)
    if isinstance(kernel, TopKKernel):
        return torch.maximum(inf, a.sum(dim=-1) / min(kernel.k, pts.shape[-1]))
    if isinstance(kernel, (L1Kernel, ThresholdKernel, HuberKernel)):
        return inf
    raise ValueError(f"no constraint norm is known for {kernel!r} (built-in kernels: {', '.join(KERNEL_SPECS)})")


def penalty_points(kernel: Kernel, pts: Tensor, wd: float) -> Tensor:
    """``K*(wd x) / wd`` of each row of ``pts`` inside the domain (``+inf`` outside): the
    term Lion-K adds to ``f`` (seed 004, Table 2): 0 for l1, lp, top-k; ``e ||x||_1`` for
    threshold; ``(e wd / 2) ||x||^2`` for Huber."""
    inside = gauge_points(kernel, pts) * wd <= 1.0 + 1e-12
    if isinstance(kernel, ThresholdKernel):
        val = kernel.e * pts.abs().sum(dim=-1)
    elif isinstance(kernel, HuberKernel):
        val = 0.5 * kernel.e * wd * (pts * pts).sum(dim=-1)
    else:
        val = torch.zeros(pts.shape[:-1], dtype=pts.dtype)
    return torch.where(inside, val, torch.full_like(val, math.inf))

"""Toy objectives for the theory checks and the trajectory figures (float64, deterministic).

Matrix objectives (what ``hamopt theory`` runs every claim on; ``X`` is ``m x n`` so the
factored families have rows and columns):

- ``quadratic``: ``f(X) = 1/2 (x - x*)^T A (x - x*)``, ``x = vec(X)``, ``A`` symmetric
  positive definite with eigenvalues log-spaced in ``[0.2, 5]`` (convex, ``L = 5``);
- ``rosenbrock``: the chained Rosenbrock function of ``vec(X)``,
  ``sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2`` (nonconvex valley);
- ``mlp``: a two-layer tanh network on six points in the plane, mean squared error
  (``X[:, :2]`` the hidden weights, ``X[:, 2]`` the output weights; nonconvex).

Two-dimensional surfaces (``x`` a vector of length 2) for ``hamopt trajectories``:
``rosenbrock2d``, ``beale``, ``saddle`` (``x^2 - y^2``), ``grams_quadratic`` (the Grams
paper's Figure 1, ``(0.5 w1)^2 + (0.1 w2)^2``) and ``lionk_box`` (the Lion-K paper's
Figure 1, ``(x1 - 1.5)^2 + x2^2``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Objective", "MATRIX_OBJECTIVES", "SURFACES", "Surface", "get_objective", "value_and_grad"]

DTYPE = torch.float64


def value_and_grad(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """``(f(x), grad f(x))`` by autograd, both detached."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        v = fn(xr)
        (g,) = torch.autograd.grad(v, xr)
    return v.detach(), g


@dataclass(frozen=True)
class Objective:
    """A matrix objective: ``fn(X) -> scalar`` on ``shape``, a start ``x0()`` and, when
    known, a global smoothness constant ``L`` (``None``: estimated along the path)."""

    name: str
    title: str
    fn: Callable[[Tensor], Tensor]
    x0: Callable[[], Tensor]
    shape: tuple[int, int]
    L: float | None = None

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _quadratic() -> Objective:
    shape = (3, 4)
    d = shape[0] * shape[1]
    g = _gen(0)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DTYPE))
    lam = torch.logspace(math.log10(0.2), math.log10(5.0), d, dtype=DTYPE)
    a = (q * lam) @ q.T
    a = (a + a.T) / 2
    xstar = torch.randn(d, generator=g, dtype=DTYPE) * 0.5
    start = torch.randn(d, generator=g, dtype=DTYPE) + 1.0

    def fn(x: Tensor) -> Tensor:
        z = x.reshape(-1) - xstar
        return 0.5 * z @ (a @ z)

    return Objective("quadratic", "convex quadratic (12 variables, L = 5)", fn,
                     lambda: start.reshape(shape).clone(), shape, L=5.0)


def _rosenbrock() -> Objective:
    shape = (3, 4)
    g = _gen(1)
    base = torch.tensor([-1.2, 1.0] * 6, dtype=DTYPE)
    start = base + 0.1 * torch.randn(12, generator=g, dtype=DTYPE)

    def fn(x: Tensor) -> Tensor:
        z = x.reshape(-1)
        return (100.0 * (z[1:] - z[:-1] ** 2) ** 2 + (1.0 - z[:-1]) ** 2).sum() / 10.0

    return Objective("rosenbrock", "chained Rosenbrock / 10 (12 variables)", fn,
                     lambda: start.reshape(shape).clone(), shape)


def _mlp() -> Objective:
    shape = (4, 3)
    g = _gen(2)
    pts = torch.randn(6, 2, generator=g, dtype=DTYPE)
    y = torch.sin(2.0 * pts[:, 0]) * torch.cos(pts[:, 1])
    start = 0.8 * torch.randn(shape, generator=g, dtype=DTYPE)

    def fn(x: Tensor) -> Tensor:
        w1, w2 = x[:, :2], x[:, 2]
        out = torch.tanh(pts @ w1.T) @ w2
        return ((out - y) ** 2).mean()

    return Objective("mlp", "two-layer tanh network, 6 points (12 weights)", fn,
                     lambda: start.clone(), shape)


MATRIX_OBJECTIVES: dict[str, Callable[[], Objective]] = {
    "quadratic": _quadratic,
    "rosenbrock": _rosenbrock,
    "mlp": _mlp,
}

_CACHE: dict[str, Objective] = {}


def get_objective(name: str) -> Objective:
    """The matrix objective ``name`` (``quadratic``, ``rosenbrock``, ``mlp``); a ``ValueError``
    naming the choices otherwise."""
    if name not in MATRIX_OBJECTIVES:
        raise ValueError(f"unknown objective {name!r} (choose from {', '.join(MATRIX_OBJECTIVES)})")
    if name not in _CACHE:
        _CACHE[name] = MATRIX_OBJECTIVES[name]()
    return _CACHE[name]


@dataclass(frozen=True)
class Surface:
    """A 2-D surface: ``fn(x)`` for ``x`` of shape ``(..., 2)``, a start, the plot box
    ``(xmin, xmax, ymin, ymax)``, the minimizer (``None`` if unbounded) and contour levels."""

    name: str
    title: str
    fn: Callable[[Tensor], Tensor]
    start: tuple[float, float]
    box: tuple[float, float, float, float]
    minimum: tuple[float, float] | None
    log_levels: bool = True


def _rosen2(x: Tensor) -> Tensor:
    return (1 - x[..., 0]) ** 2 + 100 * (x[..., 1] - x[..., 0] ** 2) ** 2


def _beale(x: Tensor) -> Tensor:
    a, b = x[..., 0], x[..., 1]
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b ** 2) ** 2 + (2.625 - a + a * b ** 3) ** 2


def _saddle(x: Tensor) -> Tensor:
    return x[..., 0] ** 2 - x[..., 1] ** 2


def _grams_quad(x: Tensor) -> Tensor:
    return (0.5 * x[..., 0]) ** 2 + (0.1 * x[..., 1]) ** 2


def _lionk_box(x: Tensor) -> Tensor:
    return (x[..., 0] - 1.5) ** 2 + x[..., 1] ** 2


SURFACES: dict[str, Surface] = {
    "rosenbrock": Surface("rosenbrock", "Rosenbrock (1 - x)^2 + 100 (y - x^2)^2", _rosen2,
                          (-1.5, 2.0), (-2.0, 2.0, -1.0, 3.0), (1.0, 1.0)),
    "beale": Surface("beale", "Beale function", _beale, (1.0, 1.5), (-1.0, 4.5, -1.5, 2.0), (3.0, 0.5)),
    "saddle": Surface("saddle", "saddle x^2 - y^2", _saddle, (-1.0, 1e-3), (-1.2, 1.2, -1.2, 1.2), None,
                      log_levels=False),
    "grams_quadratic": Surface("grams_quadratic", "(0.5 w1)^2 + (0.1 w2)^2 (Grams paper, Figure 1)",
                               _grams_quad, (-4.0, 3.0), (-5.0, 3.0, -4.0, 4.0), (0.0, 0.0)),
    "lionk_box": Surface("lionk_box", "(x1 - 1.5)^2 + x2^2 (Lion-K paper, Figure 1)", _lionk_box,
                         (-2.5, 2.5), (-3.0, 3.0, -3.0, 3.0), (1.5, 0.0)),
}

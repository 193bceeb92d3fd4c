"""Search for states where an energy increases: random states, then gradient ascent on ``dH/dt``.

The ODE claims hold for every objective, so at one point the gradient ``G`` is a free
matrix: :func:`probe` treats ``G`` and the system's moments as variables, starts from
random states (some with a small ``G``, where the kinetic terms dominate) and runs a few
hundred steps of Adam ascent on ``dH/dt / N`` (``N = ||G||^2 + sum ||moment||^2`` keeps
the search bounded; the sign is what matters). Positive variables (``r``, ``s``, ``V``)
are parameterized by their logarithm, and :meth:`System.project` maps every candidate onto
the states the claim is about (H-Fac: ``1^T s = 1^T r``; Lion-K: ``lambda x`` in
``dom K*``). It returns the largest ``dH/dt / N`` found where the state condition held and
where it did not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .systems import State, System

__all__ = ["ProbeResult", "probe"]


@dataclass
class ProbeResult:
    """Largest normalized ``dH/dt`` where the state condition held / failed (``-inf`` if
    no such state was seen), the number of states evaluated and the worst state."""

    max_where_condition_holds: float
    max_where_condition_fails: float
    states: int
    worst: State | None = None
    worst_G: Tensor | None = None


def _norm(z: State, G: Tensor, system: System) -> Tensor:
    total = (G * G).sum()
    for k, v in z.items():
        if k != "X" and k not in system.positive:
            total = total + (v * v).sum()
    return total + 1e-12


def probe(system: System, X: Tensor, starts: int = 8, iters: int = 150, seed: int = 0) -> ProbeResult:
    """Random and adversarial states of ``system`` around parameters ``X`` (see module)."""
    gen = torch.Generator().manual_seed(seed)
    best_ok, best_bad = -math.inf, -math.inf
    worst: State | None = None
    worst_g: Tensor | None = None
    count = 0
    for i in range(starts):
        z0 = system.random_state(X, gen)
        for k in system.positive:  # positive moments over several orders of magnitude
            z0[k] = z0[k] * 10.0 ** float(-2.0 + 5.0 * torch.rand((), generator=gen, dtype=torch.float64))
        z0 = system.project(z0)
        scale = 10.0 ** (-2.0 + 3.0 * i / max(starts - 1, 1))  # small to large gradients
        g0 = scale * torch.randn(X.shape, generator=gen, dtype=X.dtype)
        free: dict[str, Tensor] = {}
        for k, v in z0.items():
            if k == "X" and not system.probe_x:
                continue
            free[k] = (v.log() if k in system.positive else v).clone().requires_grad_(True)
        free["__G"] = g0.clone().requires_grad_(True)
        opt = torch.optim.Adam(list(free.values()), lr=0.05)
        for _ in range(iters):
            with torch.enable_grad():
                z = {k: (free[k].exp() if k in system.positive else free[k]) if k in free else v
                     for k, v in z0.items()}
                z = system.project(z)
                G = free["__G"]
                d = system.dH_dt(z, G)
                n = _norm(z, G, system)
                val = d / n
            v = float(val.detach())
            if math.isfinite(v):
                count += 1
                ok = system.slack({k: t.detach() for k, t in z.items()}, G.detach()) >= 0
                if ok and v > best_ok:
                    best_ok = v
                    worst = {k: t.detach().clone() for k, t in z.items()}
                    worst_g = G.detach().clone()
                elif not ok and v > best_bad:
                    best_bad = v
            opt.zero_grad()
            if not val.requires_grad or not math.isfinite(v):
                break
            (-val).backward()
            opt.step()
    return ProbeResult(best_ok, best_bad, count, worst, worst_g)

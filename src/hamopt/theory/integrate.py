"""A float64 fixed-step RK4 integrator for the systems of :mod:`hamopt.theory.systems`.

:func:`integrate` takes ``steps`` classical Runge-Kutta steps of size ``h`` (stated in the
result) from a state and returns the trajectory, the energy ``H`` at every point, the
formula's ``dH/dt``, the state condition's slack and the loss. A state that becomes
non-finite stops the integration there (``diverged=True``); nothing raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .objectives import value_and_grad
from .systems import State, System

__all__ = ["Trajectory", "integrate", "rk4_step"]

Fn = Callable[[Tensor], Tensor]


@dataclass
class Trajectory:
    """What :func:`integrate` returns (lists indexed by the point, ``t[k] = k h``)."""

    system: System
    h: float
    t: list[float] = field(default_factory=list)
    states: list[State] = field(default_factory=list)
    energy: list[float] = field(default_factory=list)
    dH_dt: list[float] = field(default_factory=list)
    slack: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    refreshes: list[float] = field(default_factory=list)
    diverged: bool = False

    @property
    def condition(self) -> list[bool]:
        """Whether the state condition held at each point."""
        return [s >= 0 for s in self.slack]

    def max_relative_increase(self) -> tuple[float, int]:
        """``max_k (H[k+1] - H[k]) / |H[0]|`` and its index ``k`` (``(-inf, -1)`` if none)."""
        e = self.energy
        scale = max(abs(e[0]), 1e-300) if e else 1.0
        best, at = -math.inf, -1
        for k in range(len(e) - 1):
            d = (e[k + 1] - e[k]) / scale
            if d > best:
                best, at = d, k
        return best, at


def _axpy(z: State, h: float, d: State) -> State:
    return {k: z[k] + h * d[k] for k in z}


def rk4_step(system: System, z: State, f: Fn, h: float) -> State:
    """One classical RK4 step of size ``h`` (four evaluations of the field)."""

    def field_at(w: State) -> State:
        _, g = value_and_grad(f, w["X"])
        return system.rhs(w, g)

    k1 = field_at(z)
    k2 = field_at(_axpy(z, h / 2, k1))
    k3 = field_at(_axpy(z, h / 2, k2))
    k4 = field_at(_axpy(z, h, k3))
    return {k: z[k] + (h / 6) * (k1[k] + 2 * k2[k] + 2 * k3[k] + k4[k]) for k in z}


def _finite(z: State) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in z.values())


def integrate(system: System, z0: State, f: Fn, h: float, steps: int, keep_states: bool = True) -> Trajectory:
    """Integrate ``system`` from ``z0`` with ``steps`` RK4 steps of size ``h`` in float64.

    Records at every point (including the start): ``t``, the state (when ``keep_states``),
    ``H``, the formula's ``dH/dt``, the condition's slack (``>= 0`` where it holds) and the
    loss ``f(X)``. Before each step :meth:`System.refresh` may change the system (AdaDiag's
    basis); its times are in ``refreshes``.
    """
    if h <= 0 or not math.isfinite(h):
        raise ValueError(f"Invalid step size h: {h!r} (must be a positive number)")
    if steps < 1:
        raise ValueError(f"Invalid steps: {steps!r} (must be >= 1)")
    z = {k: v.detach().to(torch.float64).clone() for k, v in z0.items()}
    tr = Trajectory(system=system, h=float(h))
    t = 0.0
    for k in range(steps + 1):
        fx, g = value_and_grad(f, z["X"])
        if k < steps and system.refresh(z, g, t):
            tr.refreshes.append(t)
        energy = float(system.energy(z, f))
        if not (_finite(z) and math.isfinite(energy)):
            tr.diverged = True
            break
        tr.t.append(t)
        if keep_states:
            tr.states.append(z)
        tr.energy.append(energy)
        tr.dH_dt.append(float(system.dH_dt(z, g)))
        tr.slack.append(system.slack(z, g))
        tr.loss.append(float(fx))
        if k == steps:
            break
        z = rk4_step(system, z, f, h)
        t = (k + 1) * h
    return tr

"""Energies of live optimizers: :func:`energy` and the step hook :class:`EnergyMonitor`.

A discrete optimizer is read as an explicit step of size ``h = lr`` of its family's ODE in
the "EMA form", where a moment with decay ``b`` relaxes at the rate ``(1 - b) / lr``: this
is THEORY.md's mapping for Lion-K (``alpha = gamma = (1 - b2)/lr``) applied to every family
(for Adam, ``a = (1 - b1)/lr``, ``c = (1 - b2)/lr``). The EMA form is THEORY.md's system
after a rescaling of time and variables, under which ``H`` becomes ``f`` plus ``1/a`` times
the kinetic term. Per family, summed over parameters (``f`` is the loss you pass):

=============================  =============================================================
optimizer                      ``H``
=============================  =============================================================
``torch.optim.SGD``            ``f + (lr/2) ||buf||^2`` (heavy ball, THEORY.md 1: ``buf`` the
(momentum / nesterov / sgd)    momentum buffer; symplectic Euler with ``h = sqrt(lr)``)
Adam, AdamW, AdaDiag(++),      ``f + lr/(2(1 - b1)) <mhat^2 / (sqrt(vhat) + eps), 1>``
AMS, Grams, CAdamW             (THEORY.md 5 and 6; bias-corrected moments, as the step uses)
AdafactorM (``b1 > 0``)        ``f + lr/(2(1 - b1)) sum M^2 sqrt(1^T r) / sqrt(r s^T)``
                               (THEORY.md 2; ``V = v_full`` for 0-d/1-d tensors)
HFac                           ``f + lr/(1 - b1) [(n/4) sum u^2/sqrt(r/n) + (m/4) sum v^2/sqrt(s/m)]``
                               (THEORY.md 4's discrete form)
LionK, Lion                    THEORY.md 8: ``f + K*(wd x)/wd + c (K*(wd x) + K(m) + wd x^T m)``,
                               ``c = lr b1 / D``, ``D = lr wd (1 - b1) + (1 - b2)`` (hamopt's
                               ``m`` is the EMA of ``+g``, so the last sign flips); with
                               ``wd = 0``: ``f + lr b1/(1 - b2) K(m)`` (THEORY.md 7, ``lambda = 0``)
=============================  =============================================================

Only the ODEs carry a guarantee (``hamopt theory`` checks them); for a discrete optimizer
``H`` is a diagnostic to log beside the loss. Lion-K's discrete ``H`` obeys Theorem 4.1's
inequality with THEORY.md's constants.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["SUPPORTED", "EnergyMonitor", "energy"]

#: The optimizers :func:`energy` knows, by family.
SUPPORTED = {
    "heavy_ball": "torch.optim.SGD (registry: sgd, momentum, nesterov)",
    "adam": "torch.optim.Adam / AdamW without amsgrad (adam, adamw), hamopt.AdaDiag (adadiag, adadiag++)",
    "ams": "hamopt.AMS, hamopt.Grams, hamopt.CAdamW (ams, grams, cadamw)",
    "adafactor_m": "hamopt.AdafactorM with betas[0] > 0 (adafactor_m)",
    "hfac": "hamopt.HFac (hfac)",
    "lionk": "hamopt.LionK, hamopt.Lion (lionk, lion)",
}


def _supported_text() -> str:
    return "; ".join(f"{k}: {v}" for k, v in SUPPORTED.items())


def _f(x: Any) -> float:
    return float(x.item() if isinstance(x, Tensor) else x)


def _step(state: dict[str, Any]) -> float:
    return _f(state.get("step", 0))


def _params(group: dict[str, Any]) -> Iterable[Tensor]:
    return group["params"]


def _matrix(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def _heavy_ball(opt: torch.optim.Optimizer) -> float:
    total = 0.0
    for g in opt.param_groups:
        if _f(g.get("dampening", 0.0)) != 0.0:
            raise ValueError(f"hamopt.theory.energy: SGD with dampening = {g['dampening']} has no heavy-ball energy "
                             "(use dampening = 0)")
        lr = _f(g["lr"])
        for p in _params(g):
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                total += 0.5 * lr * float((buf.double() ** 2).sum())
    return total


def _adam(opt: torch.optim.Optimizer) -> float:
    total = 0.0
    for g in opt.param_groups:
        if g.get("amsgrad", False):
            raise ValueError("hamopt.theory.energy: Adam with amsgrad=True has no energy in THEORY.md "
                             f"(supported: {_supported_text()})")
        lr, eps = _f(g["lr"]), _f(g.get("eps", 1e-8))
        b1, b2 = (_f(b) for b in tuple(g["betas"])[:2])
        for p in _params(g):
            st = opt.state.get(p, {})
            if "exp_avg" not in st or "exp_avg_sq" not in st:
                continue
            t = _step(st)
            if t <= 0:
                continue
            m = st["exp_avg"].double() / (1 - b1 ** t)
            v = st["exp_avg_sq"].double() / (1 - b2 ** t)
            total += lr / (2 * (1 - b1)) * float((m * m / (v.sqrt() + eps)).sum())
    return total


def _adafactor_m(opt: torch.optim.Optimizer) -> float:
    total = 0.0
    for g in opt.param_groups:
        lr = _f(g["lr"])
        b1 = _f(g["betas"][0])
        if b1 <= 0:
            raise ValueError("hamopt.theory.energy: AdafactorM with betas[0] = 0 keeps no momentum, so it has no "
                             "energy beyond the loss (THEORY.md section 2 needs M)")
        for p in _params(g):
            st = opt.state.get(p, {})
            if "exp_avg" not in st:
                continue
            M = st["exp_avg"].double()
            if "v_row" in st:
                r, s = st["v_row"].double(), st["v_col"].double()
                w = torch.sqrt(r.sum()) / torch.sqrt(r[:, None] * s[None, :])
                kin = float((_matrix(M) ** 2 * w).sum())
            else:
                kin = float((M * M / st["v_full"].double().sqrt()).sum())
            total += lr / (2 * (1 - b1)) * kin
    return total


def _hfac(opt: torch.optim.Optimizer) -> float:
    total = 0.0
    for g in opt.param_groups:
        lr = _f(g["lr"])
        b1 = _f(g["betas"][0])
        scale = lr / (1 - b1)
        for p in _params(g):
            st = opt.state.get(p, {})
            if "mom_row" in st:
                u, v = st["mom_row"].double(), st["mom_col"].double()
                r, s = st["v_row"].double(), st["v_col"].double()
                m, n = r.numel(), s.numel()
                kin = n / 4 * float((u * u / (r / n).sqrt()).sum()) + m / 4 * float((v * v / (s / m).sqrt()).sum())
            elif "mom_full" in st:
                M, V = st["mom_full"].double(), st["v_full"].double()
                kin = 0.5 * float((M * M / V.sqrt()).sum())
            else:
                continue
            total += scale * kin
    return total


def _lionk(opt: torch.optim.Optimizer) -> float:
    from ..transforms.kernels import make_kernel

    total = 0.0
    for g in opt.param_groups:
        lr, wd = _f(g["lr"]), _f(g.get("weight_decay", 0.0))
        b1, b2 = (_f(b) for b in g["betas"])
        kern = make_kernel(g.get("kernel", "l1"), g.get("p"), g.get("e"), g.get("k"))
        for p in _params(g):
            st = opt.state.get(p, {})
            if "exp_avg" not in st:
                continue
            m = st["exp_avg"].double()
            x = p.detach().double()
            if wd == 0.0:
                total += lr * b1 / (1 - b2) * float(kern.K(m))
                continue
            D = lr * wd * (1 - b1) + (1 - b2)
            c = lr * b1 / D
            ks = float(kern.K_star(wd * x))
            total += ks / wd + c * (ks + float(kern.K(m)) + wd * float((x * m).sum()))
    return total


def _family(opt: torch.optim.Optimizer) -> tuple[str, Callable[[torch.optim.Optimizer], float]]:
    import hamopt

    checks: list[tuple[tuple[type, ...], str, Callable[[torch.optim.Optimizer], float]]] = [
        ((hamopt.LionK,), "lionk", _lionk),
        ((hamopt.HFac,), "hfac", _hfac),
        ((hamopt.AdafactorM,), "adafactor_m", _adafactor_m),
        ((hamopt.AMS,), "ams", _adam),
        ((hamopt.AdaDiag,), "adam", _adam),
        ((torch.optim.Adam, torch.optim.AdamW), "adam", _adam),
        ((torch.optim.SGD,), "heavy_ball", _heavy_ball),
    ]
    for classes, fam, fn in checks:
        if isinstance(opt, classes):
            return fam, fn
    raise TypeError(f"hamopt.theory.energy: no energy is known for {type(opt).__name__} "
                    f"(families with one: {_supported_text()})")


def energy(optimizer: torch.optim.Optimizer, loss: float | Tensor) -> float:
    """The discrete energy ``H`` of a live optimizer: ``loss`` plus the kinetic term read
    from ``optimizer.state`` (the table in :mod:`hamopt.theory.live`).

    Args:
        optimizer: a supported optimizer (:data:`SUPPORTED`); others raise ``TypeError``
            naming the families that have an energy.
        loss: ``f`` at the current parameters (a float or a 0-d tensor).

    Returns:
        ``H`` as a Python float (float64 arithmetic). Before the first step it is the loss.
    """
    _, fn = _family(optimizer)
    f = _f(loss)
    if not math.isfinite(f):
        return f
    return f + fn(optimizer)


class EnergyMonitor:
    """Record the energy after every ``every``-th optimizer step (a step post-hook).

    ``loss_fn()`` is called (under ``torch.no_grad()``) after the step to get ``f`` at the
    new parameters; ``history`` holds ``{"step", "loss", "energy"}`` records (also as the
    lists ``steps``, ``losses``, ``energies``). Use it as a context manager, or call
    :meth:`remove` to detach the hook. ``callback(record)``, if given, is called with each
    record (e.g. to log it)::

        monitor = EnergyMonitor(opt, lambda: loss_fn(model(x), y), every=10)
        for _ in range(100):
            ...; opt.step()
        monitor.energies
    """

    def __init__(self, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], Any], every: int = 1,
                 callback: Callable[[dict[str, float]], None] | None = None) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"Invalid every: {every!r} (must be an integer >= 1)")
        _family(optimizer)  # unsupported optimizers fail here, not at the first step
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.every = every
        self.callback = callback
        self.history: list[dict[str, float]] = []
        self._count = 0
        self._handle = optimizer.register_step_post_hook(self._hook)

    def _hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._count += 1
        if self._count % self.every:
            return
        with torch.no_grad():
            f = _f(self.loss_fn())
        rec = {"step": float(self._count), "loss": f, "energy": energy(self.optimizer, f)}
        self.history.append(rec)
        if self.callback is not None:
            self.callback(rec)

    @property
    def steps(self) -> list[int]:
        return [int(r["step"]) for r in self.history]

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.history]

    @property
    def energies(self) -> list[float]:
        return [r["energy"] for r in self.history]

    def remove(self) -> None:
        """Detach the hook (the history stays)."""
        self._handle.remove()

    def __enter__(self) -> EnergyMonitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

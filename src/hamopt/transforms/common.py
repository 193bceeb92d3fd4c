"""Transforms shared by every family: Adam's moments, sign, RMS clipping, weight decay, lr,
and the final update of the parameters.

Naming follows optax: ``scale_by_<idea>`` changes the direction, ``add_decayed_weights``
adds ``weight_decay * param``, ``scale_by_learning_rate`` multiplies by ``-lr``, and
``apply_*`` transforms come last and write the parameters. A whole AdamW is therefore::

    chain(scale_by_adam(), apply_decayed_update())

which computes ``p <- p (1 - lr * weight_decay) - lr * mhat / (sqrt(vhat) + eps)`` (Loshchilov
and Hutter, "Decoupled Weight Decay Regularization", ICLR 2019; Kingma and Ba, "Adam",
ICLR 2015), equal to ``torch.optim.AdamW`` (tested). The same rule written as
``chain(scale_by_adam(), add_decayed_weights(), scale_by_learning_rate())`` (the updates
then added to the parameters) gives the same values up to rounding, with two more passes
over memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from typing import Any

import torch
from torch import Tensor

from ..core import ops
from ..core import validation as V
from ..core.transform import ELEMENT, TENSOR, StepContext, Transform, bias_correction, state_like

__all__ = [
    "AddDecayedWeights",
    "ApplyUpdate",
    "ClipByRms",
    "ScaleByAdam",
    "ScaleByEma",
    "ScaleByLearningRate",
    "ScaleBySign",
    "add_decayed_weights",
    "apply_decayed_update",
    "apply_update",
    "clip_by_rms",
    "rms_clip_",
    "scale_by_adam",
    "scale_by_ema",
    "scale_by_learning_rate",
    "scale_by_sign",
]


class ScaleByAdam(Transform):
    """Adam's bias-corrected moment ratio (Kingma and Ba 2015, Algorithm 1).

    Reads ``betas[0]``, ``betas[1]`` and ``eps`` from the group. State ``exp_avg``,
    ``exp_avg_sq`` (and ``max_exp_avg_sq`` with ``amsgrad=True``, Reddi et al. 2018)::

        m = b1 m + (1 - b1) g
        v = b2 v + (1 - b2) g^2                   (amsgrad: vmax = max(vmax, v), use vmax)
        u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    computed in the algebraically equal form with fewer passes over memory,
    ``u = m / (sqrt(v) + eps sqrt(1-b2^t)) * (sqrt(1-b2^t) / (1-b1^t))`` (one temporary
    for the denominator, one for ``u``; the bias corrections are per-parameter scalars).

    Args:
        amsgrad: keep the running maximum of ``v`` and divide by it.

    Only ``betas[0]`` and ``betas[1]`` are read (AMS's subclass accepts a third).
    """

    hyperparams = ("betas", "eps")
    splits = ELEMENT

    def __init__(self, amsgrad: bool = False) -> None:
        self.amsgrad = amsgrad
        self.state_keys = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())

    def validate(self, group: Mapping[str, Any]) -> None:
        V.check_betas(group["betas"], 2)
        V.check_eps(group["eps"])

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        for k in self.state_keys:
            state[k] = state_like(param, group)

    def moments(self, ctx: StepContext, updates: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Any]]:
        """Update ``m`` and ``v`` (``vmax`` with amsgrad) in place; return ``m``, the ``v`` to
        divide by, and ``sqrt(1 - b2^t)`` per parameter."""
        b1, b2 = ctx.group["betas"][0], ctx.group["betas"][1]
        f = ctx.foreach
        m, v = ctx.state("exp_avg"), ctx.state("exp_avg_sq")
        ops.lerp_(m, updates, 1.0 - b1, f)
        ops.mul_(v, b2, f)
        ops.addcmul_(v, updates, updates, 1.0 - b2, f)
        if self.amsgrad:
            vmax = ctx.state("max_exp_avg_sq")
            ops.maximum_(vmax, v, f)
            v = vmax
        return m, v, [math.sqrt(b) if not isinstance(b, Tensor) else b.sqrt() for b in bias_correction(b2, ctx.steps)]

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        m, v, sbc2 = self.moments(ctx, updates)
        out = self.ratio(ctx, m, v, sbc2)
        return ctx.fresh(ops.mul_(out, self.final_scale(ctx, sbc2), ctx.foreach))

    @staticmethod
    def ratio(ctx: StepContext, m: list[Tensor], v: list[Tensor], sbc2: list[Any]) -> list[Tensor]:
        """Fresh ``m / (sqrt(v) + eps sqrt(1-b2^t))``: Adam's direction before its positive
        scalar :meth:`final_scale`."""
        f = ctx.foreach
        denom = ops.sqrt(v, f)
        # One Python scalar when every parameter has the same step count (the usual case):
        # a single-scalar kernel instead of a scalar-list one.
        ops.add_(denom, ops.uniform([ctx.group["eps"] * s for s in sbc2]), f)
        return list(torch._foreach_div(m, denom)) if f else [a / d for a, d in zip(m, denom)]

    def final_scale(self, ctx: StepContext, sbc2: list[Any]) -> Any:
        """``sqrt(1-b2^t) / (1-b1^t)`` per parameter (one number when all are equal)."""
        bc1 = bias_correction(ctx.group["betas"][0], ctx.steps)
        return ops.uniform([s / b for s, b in zip(sbc2, bc1)])

    def __repr__(self) -> str:
        return f"scale_by_adam(amsgrad={self.amsgrad})"


def corrected_decay(beta: float, t: Any) -> Any:
    """Bias-corrected decay ``beta_t = beta (1 - beta^(t-1)) / (1 - beta^t)`` (seed 000, 4.1).

    An EMA ``x_t = beta_t x + (1 - beta_t) y`` started at zero is then unbiased without a
    separate correction (``beta_1 = 0``, so ``x_1 = y_1``). ``beta = 0`` gives 0.
    """
    if beta == 0:
        return 0.0
    return beta * (1.0 - beta ** (t - 1)) / (1.0 - beta**t)


class ScaleByEma(Transform):
    """Momentum as an exponential moving average of the incoming updates.

    ``buf = b_t buf + (1 - b_t) u;  u <- buf`` with ``b = group[hp][index]`` (or
    ``group[hp]`` when ``index`` is None) and ``b_t`` the bias-corrected decay of seed 000
    (``corrected=True``) or the constant ``b`` (``corrected=False``). With ``b = 0`` it is
    the identity and keeps no buffer (e.g. Adafactor without momentum).

    Args:
        key: the state key of the buffer (``"exp_avg"`` by default).
        hp: the group key holding the decay (``"betas"`` by default).
        index: position of the decay inside ``group[hp]`` (``None`` for a scalar ``hp``).
        corrected: use the bias-corrected decay.
    """

    splits = ELEMENT

    def __init__(self, key: str = "exp_avg", hp: str = "betas", index: int | None = 0,
                 corrected: bool = True) -> None:
        self.key, self.hp, self.index, self.corrected = key, hp, index, corrected
        self.state_keys = (key,)
        self.hyperparams = (hp,)

    def _beta(self, group: Mapping[str, Any]) -> float:
        v = group[self.hp]
        return v if self.index is None else v[self.index]

    def validate(self, group: Mapping[str, Any]) -> None:
        if self.index is None:
            V.check_range(self.hp, group[self.hp], 0.0, 1.0, high_open=True)
        else:
            # torch's wording for a tuple of betas: "Invalid beta parameter at index 0: 1.0"
            V.check_betas(group[self.hp])
            if len(group[self.hp]) <= self.index:
                raise ValueError(f"Invalid {self.hp}: {tuple(group[self.hp])!r} "
                                 f"(expected at least {self.index + 1} values)")

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        if self._beta(group) != 0:
            state[self.key] = state_like(param, group)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        b = self._beta(ctx.group)
        if b == 0:
            return updates
        for s, p in zip(ctx.states, ctx.params):
            if self.key not in s:  # momentum switched on after the first step
                s[self.key] = state_like(p, ctx.group)
        bufs = ctx.state(self.key)
        if self.corrected:
            ops.lerp_(bufs, updates, [1.0 - corrected_decay(b, t) for t in ctx.steps], ctx.foreach)
        else:
            ops.lerp_(bufs, updates, 1.0 - b, ctx.foreach)
        return bufs  # borrowed: later transforms must copy before writing

    def __repr__(self) -> str:
        return f"scale_by_ema(key={self.key!r}, hp={self.hp!r}, index={self.index}, corrected={self.corrected})"


class ScaleBySign(Transform):
    """``u -> sign(u)`` (signSGD, Bernstein et al. 2018; the Lion reshaper)."""

    splits = ELEMENT

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        return ops.sign_(ctx.writable(updates), ctx.foreach)

    def __repr__(self) -> str:
        return "scale_by_sign()"


def rms_clip_(xs: list[Tensor], threshold: float, foreach: bool) -> list[Tensor]:
    """In place ``x <- x / max(1, RMS(x) / threshold)`` per tensor (Adafactor's update
    clipping, Shazeer and Stern 2018, section 6). Zero-size tensors are left alone."""
    if not xs:
        return xs
    # max(1, ||x|| / (sqrt(numel) d)) with scalar-list kernels: no host-to-device copy, so
    # no synchronisation with the GPU inside the step.
    norms = list(torch._foreach_norm(xs)) if foreach else [torch.linalg.vector_norm(x) for x in xs]
    scales = [1.0 / (math.sqrt(max(x.numel(), 1)) * threshold) for x in xs]
    if foreach:
        torch._foreach_mul_(norms, scales)
        torch._foreach_clamp_min_(norms, 1.0)
        torch._foreach_div_(xs, norms)
    else:
        for x, n, c in zip(xs, norms, scales):
            x.div_(n.mul_(c).clamp_min_(1.0))
    return xs


class ClipByRms(Transform):
    """Update clipping ``clip_d(U) = U / max(1, RMS(U) / d)`` with ``d = clip_threshold``.

    Reads ``clip_threshold`` from the group (``None`` disables clipping).
    """

    hyperparams = ("clip_threshold",)
    splits = TENSOR

    def validate(self, group: Mapping[str, Any]) -> None:
        d = group["clip_threshold"]
        if d is not None:
            V.check_positive("clip_threshold", d)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        d = ctx.group["clip_threshold"]
        if d is None:
            return updates
        return rms_clip_(ctx.writable(updates), d, ctx.foreach)

    def __repr__(self) -> str:
        return "clip_by_rms()"


class AddDecayedWeights(Transform):
    """``u -> u + weight_decay * param`` (decoupled weight decay when it precedes the lr).

    Uses the parameter *before* this step's update, as the seeds write their algorithms.
    Reads ``weight_decay``; with ``weight_decay == 0`` it does no work.
    """

    hyperparams = ("weight_decay",)
    splits = ELEMENT

    def validate(self, group: Mapping[str, Any]) -> None:
        V.check_weight_decay(group["weight_decay"])

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        wd = ctx.group["weight_decay"]
        if not isinstance(wd, Tensor) and wd == 0:
            return updates
        out = ctx.writable(updates)
        if isinstance(wd, Tensor):
            ops.add_(out, [p * wd for p in ctx.params], ctx.foreach)
        else:
            ops.add_(out, ctx.params, ctx.foreach, alpha=wd)
        return out

    def __repr__(self) -> str:
        return "add_decayed_weights()"


class ScaleByLearningRate(Transform):
    """``u -> -lr * u`` (reads ``lr``, a float or a 0-d tensor). Put it last in a chain."""

    hyperparams = ("lr",)
    splits = ELEMENT

    def validate(self, group: Mapping[str, Any]) -> None:
        V.check_lr(group["lr"])

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        return ops.mul_(ctx.writable(updates), -ctx.group["lr"], ctx.foreach)

    def __repr__(self) -> str:
        return "scale_by_learning_rate()"


class ApplyUpdate(Transform):
    """The last transform of a chain: write the update into the parameters.

    ``decay=True`` (:func:`apply_decayed_update`), decoupled weight decay in AdamW's form::

        p <- p (1 - lr * weight_decay) - lr * u

    the same as ``p <- p - lr (u + weight_decay p)`` (``add_decayed_weights()`` then
    ``scale_by_learning_rate()``) with two fewer passes over memory. ``decay=False``
    (:func:`apply_update`): ``p <- p - lr * u``. Reads ``lr`` (a float or a 0-d tensor) and,
    with ``decay``, ``weight_decay`` (no work when it is 0). Returns no updates.
    """

    splits = ELEMENT
    applies = True

    def __init__(self, decay: bool = True) -> None:
        self.decay = decay
        self.hyperparams = ("lr", "weight_decay") if decay else ("lr",)

    def validate(self, group: Mapping[str, Any]) -> None:
        V.check_lr(group["lr"])
        if self.decay:
            V.check_weight_decay(group["weight_decay"])

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        params, f, lr = ctx.params, ctx.foreach, ctx.group["lr"]
        if self.decay:
            wd = ctx.group["weight_decay"]
            if isinstance(wd, Tensor) or wd != 0:
                ops.mul_(params, 1.0 - lr * wd, f)
        if isinstance(lr, Tensor):
            ops.add_(params, ops.mul_(ctx.writable(updates), -lr, f), f)
        else:
            ops.add_(params, updates, f, alpha=-lr)
        return []

    def __repr__(self) -> str:
        return "apply_decayed_update()" if self.decay else "apply_update()"


def apply_decayed_update() -> ApplyUpdate:
    """``p <- p (1 - lr * weight_decay) - lr * u``, last in a chain; see :class:`ApplyUpdate`."""
    return ApplyUpdate(decay=True)


def apply_update() -> ApplyUpdate:
    """``p <- p - lr * u``, last in a chain; see :class:`ApplyUpdate`."""
    return ApplyUpdate(decay=False)


def scale_by_adam(amsgrad: bool = False) -> ScaleByAdam:
    """See :class:`ScaleByAdam`."""
    return ScaleByAdam(amsgrad=amsgrad)


def scale_by_ema(key: str = "exp_avg", hp: str = "betas", index: int | None = 0,
                 corrected: bool = True) -> ScaleByEma:
    """See :class:`ScaleByEma`."""
    return ScaleByEma(key=key, hp=hp, index=index, corrected=corrected)


def scale_by_sign() -> ScaleBySign:
    """See :class:`ScaleBySign`."""
    return ScaleBySign()


def clip_by_rms() -> ClipByRms:
    """See :class:`ClipByRms`."""
    return ClipByRms()


def add_decayed_weights() -> AddDecayedWeights:
    """See :class:`AddDecayedWeights`."""
    return AddDecayedWeights()


def scale_by_learning_rate() -> ScaleByLearningRate:
    """See :class:`ScaleByLearningRate`."""
    return ScaleByLearningRate()


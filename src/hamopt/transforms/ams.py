"""Adaptive Momentum Scaling: the AMS mask, the Grams sign swap and the cautious mask.

Paper: "Decoupling Sign and Magnitude in Optimization with Adaptive Momentum Scaling"
(seed 003_94ed72a9e58efdbf; the AMS/Grams paper, cf. Cao, Li and Song, "Grams: Gradient
Descent with Adaptive Momentum Scaling", arXiv:2412.17107): Algorithm 1 (AMS), Definition
3.2 (the cautious mechanism of Liang, Chen, Liu and Liu, "Cautious Optimizers",
arXiv:2411.16085), Definition 5.1 (Grams) and Corollaries B.1-B.3.

Algorithm 1, per parameter tensor of ``d`` elements::

    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  s = b3 s + (1-b3) g
    u = (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)          # scale_by_adam_moments
    phi = 1[u*s >= 0];  psi = lam * 1[u*s < 0]                # scale_by_ams
    lr^ = lr * d / (||phi||_1 + ||psi||_1);  u^ = (phi + psi) * u
    w <- w - lr^ u^;  w <- w - lr^ wd w                       # add_decayed_weights_after_step

The mask transforms read the raw gradient from ``ctx.grads``, so they apply to *any* base
update: ``chain(<any direction>, scale_by_cautious(), apply_decayed_update())`` is the
cautious version of that optimizer, and
``scale_by_grams()`` its "Grams" version (``sign(g) * |u|``).

The per-tensor factor ``d / (||phi||_1 + ||psi||_1)`` is folded into the update (so
``lr^ u^ = lr * (factor * u^)``) and left in ``ctx.scratch["lr_scale"]`` for
:class:`AddDecayedWeightsAfterStep`. It is guarded: where the denominator is 0 (cautious
mask empty, or a zero-size tensor) the factor is 1.

Reductions over a whole tensor (the mask count) go through :func:`tensor_sums` only, the one
place an all-reduce over shards will be needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..core import ops
from ..core import validation as V
from ..core.transform import ELEMENT, TENSOR, Chain, StepContext, Transform, state_like
from .common import AddDecayedWeights, ApplyUpdate, ScaleByAdam, ScaleByLearningRate

if TYPE_CHECKING:  # the masks change an optimizer's chain; they never run its step
    from ..core.optimizer import ChainedOptimizer

__all__ = [
    "AddDecayedWeightsAfterStep",
    "AmsDecayBeforeLr",
    "ScaleByAdamMoments",
    "ScaleByAms",
    "add_decayed_weights_after_step",
    "ams_decay_before_lr",
    "check_ams_betas",
    "make_cautious",
    "make_grams",
    "scale_by_adam_moments",
    "scale_by_ams",
    "scale_by_cautious",
    "scale_by_grams",
    "tensor_sums",
]

LR_SCALE = "lr_scale"
PENDING = "ams_pending"
SCALE = "ams_scale"


def tensor_sums(xs: Sequence[Tensor], foreach: bool) -> list[Tensor]:
    """``||x||_1`` of each tensor as a 0-d tensor (the sum of a non-negative one; the count
    of a 0/-1 mask); 0 for zero-size tensors.

    The only whole-tensor reduction of this module (under sharding it needs an all-reduce).
    """
    if foreach and len(xs) > 0:
        return list(torch._foreach_norm(list(xs), 1))
    return [torch.linalg.vector_norm(x, 1) for x in xs]


def check_ams_betas(betas: Any) -> None:
    """``(b1, b2)`` or ``(b1, b2, b3)``, each in ``[0, 1)``; messages as torch's."""
    V.check_betas(betas)
    if len(betas) not in (2, 3):
        raise ValueError(f"Invalid betas: {tuple(betas)!r} (expected (b1, b2) or (b1, b2, b3))")


def _affine(xs: list[Tensor], mul: float, add: Sequence[float], foreach: bool) -> list[Tensor]:
    """Fresh ``mul * x + add_i`` for 0-d tensors ``xs`` (two small kernels, Python scalars only)."""
    if foreach:
        out = list(torch._foreach_mul(xs, mul))
        torch._foreach_add_(out, list(add))
        return out
    return [x.mul(mul).add_(c) for x, c in zip(xs, add)]


def _mask_factors(misaligned: list[Tensor], sizes: Sequence[int], a: float, foreach: bool) -> list[Tensor]:
    """``d / (n + a (d - n))`` per tensor, ``d`` its size and ``n = d - misaligned`` the
    aligned count; 1 where the denominator is 0 (``a = 0`` with nothing aligned, or ``d = 0``).

    ``misaligned`` are integer-valued 0-d counts ``m`` on the device. Everything is device
    arithmetic with Python scalars (no host-to-device copy, so no synchronisation with the
    GPU) on lists of 0-d tensors (one small kernel per operation with ``foreach``). The
    guard is exact: for ``a = 0``, ``z = min(n, 1)`` is 1 where ``n >= 1`` and 0 where
    ``n = 0``, and the factor is ``d / (d - z m)`` (``d / n``, or ``d / d``); for ``a > 0``
    the denominator is at least ``min(a, 1) d > 0``. A zero-size tensor counts as ``d = 1``
    (factor 1).
    """
    if not misaligned:
        return []
    f = foreach
    m = misaligned
    n = _affine(m, -1.0, [float(k) if k > 0 else 1.0 for k in sizes], f)  # aligned count d - m (exact)
    if f:
        d = list(torch._foreach_add(n, m))  # d on the device (exact)
        if a == 0.0:
            z = list(torch._foreach_clamp_max(n, 1.0))  # 1[n >= 1]
            den = list(torch._foreach_addcmul(d, z, m, value=-1.0))  # n if n >= 1 else d
        else:
            den = list(torch._foreach_mul(m, a))
            torch._foreach_add_(den, n)
        torch._foreach_div_(d, den)
        return d
    out = []
    for mi, ni in zip(m, n):
        d = ni + mi
        den = torch.addcmul(d, ni.clamp_max(1.0), mi, value=-1.0) if a == 0.0 else mi.mul(a).add_(ni)
        out.append(d.div_(den))
    return out


class ScaleByAdamMoments(ScaleByAdam):
    """Adam's direction ``u = mhat / (sqrt(vhat) + eps)`` (AMS Algorithm 1, lines 5, 7-10).

    :class:`hamopt.transforms.ScaleByAdam` itself (the same code), accepting AMS's
    ``betas = (b1, b2)`` or ``(b1, b2, b3)`` (only ``b1``, ``b2`` are read here; ``b3``
    belongs to :func:`scale_by_ams`). State ``exp_avg``, ``exp_avg_sq``.

    Args:
        defer_scale: leave the final positive scalar ``sqrt(1-b2^t) / (1-b1^t)`` in
            ``ctx.scratch["ams_scale"]`` for a later :class:`AmsDecayBeforeLr` to merge into
            its multiply (one pass over memory fewer; signs and masks do not change).
            Only for chains that end with ``ams_decay_before_lr(), scale_by_learning_rate()``.
    """

    def __init__(self, defer_scale: bool = False) -> None:
        super().__init__(amsgrad=False)
        self.defer_scale = defer_scale

    def validate(self, group: Mapping[str, Any]) -> None:
        check_ams_betas(group["betas"])
        V.check_eps(group["eps"])

    def _scale(self, ctx: StepContext, out: list[Tensor], k: Any) -> list[Tensor]:
        if self.defer_scale:
            ctx.scratch[SCALE] = k
            return out
        return super()._scale(ctx, out, k)

    def __repr__(self) -> str:
        return "scale_by_adam_moments()"


class ScaleByAms(Transform):
    """AMS mask and scale on any base update ``u`` (Algorithm 1, lines 6 and 11-14).

    ``s = b3 s + (1-b3) g`` (``s = g`` and no buffer when ``b3 = 0``), then::

        h = 1[u*s >= 0];  factor = d / (sum(h) + |lam| (d - sum(h)))     (1 if that is 0)
        u <- factor * (h + lam (1 - h)) * u        and  ctx.scratch["lr_scale"] = factor

    Special cases (Python branches on hyperparameters, no tensor-dependent control flow):
    ``lam = 1``: ``u`` unchanged (Adam, Corollary B.1); ``lam = 0``: the cautious mask
    (Definition 3.2); ``lam = -1, b3 = 0``: Grams, ``u <- sign(g) * |u|`` with factor 1
    (Corollary B.3; at coordinates where ``g == 0`` exactly this gives 0, where the
    literal ``(phi + psi) u`` would keep ``u``; the authors' code does the same).

    Args:
        misaligned_scale: ``lam``; ``None`` reads ``group["misaligned_scale"]``.
        sign_decay_index: where ``b3`` sits in ``group["betas"]`` (a missing entry means 0);
            ``None`` fixes ``b3 = 0``.
        key: state key of the ``s`` buffer.
        apply_factor: multiply ``u`` by ``factor`` here (default). ``False`` leaves that
            multiply to a following :class:`AmsDecayBeforeLr`, which merges it with the
            weight decay's (one pass fewer); the factor is then in
            ``ctx.scratch["ams_pending"]``.
    """

    def __init__(self, misaligned_scale: float | None = None, sign_decay_index: int | None = 2,
                 key: str = "sign_avg", apply_factor: bool = True) -> None:
        self.fixed_scale = misaligned_scale
        self.apply_factor = apply_factor
        self.index = sign_decay_index
        self.key = key
        self.state_keys = (key,) if sign_decay_index is not None else ()
        hp: tuple[str, ...] = ()
        if misaligned_scale is None:
            hp += ("misaligned_scale",)
        if sign_decay_index is not None:
            hp += ("betas",)
        self.hyperparams = hp

    def _lam(self, group: Mapping[str, Any]) -> float:
        return float(group["misaligned_scale"]) if self.fixed_scale is None else self.fixed_scale

    def _b3(self, group: Mapping[str, Any]) -> float:
        if self.index is None:
            return 0.0
        betas = group["betas"]
        return float(betas[self.index]) if len(betas) > self.index else 0.0

    def validate(self, group: Mapping[str, Any]) -> None:
        if self.fixed_scale is None:
            lam = group["misaligned_scale"]
            if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
                raise ValueError(f"Invalid misaligned_scale: {lam!r} (must be a finite real number)")
        if self.index is not None:
            V.check_betas(group["betas"])

    def granularity(self, group: Mapping[str, Any]) -> str:
        # Adam (lam = 1) and Grams (lam = -1, b3 = 0) have factor 1: element by element.
        lam = self._lam(group)
        return ELEMENT if lam == 1.0 or (lam == -1.0 and self._b3(group) == 0.0) else TENSOR

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        if self._b3(group) != 0.0:
            state[self.key] = state_like(param, group)

    def _signal(self, ctx: StepContext) -> list[Tensor]:
        b3 = self._b3(ctx.group)
        if b3 == 0.0:
            return ctx.grads
        for s, p in zip(ctx.states, ctx.params):
            if self.key not in s:  # b3 switched on after the first step
                s[self.key] = state_like(p, ctx.group)
        buf = ctx.state(self.key)
        ops.lerp_(buf, ctx.grads, 1.0 - b3, ctx.foreach)
        return buf

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        return self.masked(ctx, updates)

    def masked(self, ctx: StepContext, updates: list[Tensor],
               products: Callable[[list[Tensor], list[Tensor]], list[Tensor]] | None = None) -> list[Tensor]:
        """The rule, with ``products(u, s)`` giving fresh tensors ``u * s`` (a fast path may
        put them in pooled buffers)."""
        lam = self._lam(ctx.group)
        s = self._signal(ctx)
        f = ctx.foreach
        ctx.scratch[LR_SCALE] = None
        if lam == 1.0:
            return updates
        out = ctx.writable(updates)
        if lam == -1.0 and self._b3(ctx.group) == 0.0:
            # Grams: sign(g) * |u|, factor d / d = 1.
            if f:
                torch._foreach_abs_(out)
                torch._foreach_mul_(out, torch._foreach_sign(s))
            else:
                for u, g in zip(out, s):
                    u.abs_().mul_(g.sign())
            return out
        # x = -1[u*s < 0] as clamp_max(sign(u*s), 0): one temporary, two in-place passes.
        if products is not None:
            x = products(out, s)
        else:
            x = list(torch._foreach_mul(out, s)) if f else [u * g for u, g in zip(out, s)]
        ops.sign_(x, f)
        if f:
            torch._foreach_clamp_max_(x, 0.0)
        else:
            for t in x:
                t.clamp_max_(0.0)
        factors = _mask_factors(tensor_sums(x, f), [u.numel() for u in out], abs(lam), f)
        # u <- u + (1 - lam) u x = (h + lam (1 - h)) u, h = 1 + x; for lam = 0 exactly u h.
        ops.addcmul_(out, out, x, 1.0 - lam, f)
        if self.apply_factor:
            ops.mul_(out, factors, f)
        else:
            prev = ctx.scratch.get(PENDING)
            ctx.scratch[PENDING] = factors if prev is None else ops.mul_(prev, factors, f)
        ctx.scratch[LR_SCALE] = factors
        return out

    def __repr__(self) -> str:
        return f"scale_by_ams(misaligned_scale={self.fixed_scale}, sign_decay_index={self.index})"


class _AmsWeightDecay(Transform):
    """What AMS's two weight-decay placements share: they read ``lr`` and ``weight_decay``
    and work element by element (the per-tensor mask factor comes from the same piece)."""

    hyperparams = ("lr", "weight_decay")
    splits = ELEMENT

    def validate(self, group: Mapping[str, Any]) -> None:
        V.check_weight_decay(group["weight_decay"])


class AddDecayedWeightsAfterStep(_AmsWeightDecay):
    """AMS's weight decay (Algorithm 1, line 16): decay the *stepped* weights with ``lr^``.

    Put it after :func:`hamopt.transforms.scale_by_learning_rate`. With ``delta = -lr^ u^``
    the incoming update, ``w' = w + delta`` and then ``w'' = w' - lr^ wd w'``, so the
    update becomes ``delta - lr^ wd (w + delta)``, ``lr^ = lr * ctx.scratch["lr_scale"]``
    (``lr`` alone when no mask left a factor). Reads ``lr`` and ``weight_decay``.
    Differs from :class:`hamopt.transforms.AddDecayedWeights` (``lr wd w`` on the weights
    before the step) by ``lr^2 wd u^``.
    """

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        wd = ctx.group["weight_decay"]
        if not isinstance(wd, Tensor) and wd == 0:
            return updates
        lr = ctx.group["lr"]
        out = ctx.writable(updates)
        factors = ctx.scratch.get(LR_SCALE)
        f = ctx.foreach
        c = lr * wd
        if factors is None and not isinstance(c, Tensor):
            ops.mul_(out, 1.0 - c, f)  # delta (1 - c) - c w
            ops.add_(out, ctx.params, f, alpha=-c)
            return out
        if factors is None:  # a tensor lr or weight decay
            ops.mul_(out, 1.0 - c, f)
            ops.addcmul_(out, ctx.params, [c] * len(out), -1.0, f)
            return out
        cs = ops.mul(factors, c, f)  # c k per parameter, 0-d tensors
        ops.mul_(out, _affine(cs, -1.0, [1.0] * len(cs), f), f)
        # out += params * (-c k), a 0-d tensor per parameter (broadcast, no temporaries)
        ops.addcmul_(out, ctx.params, cs, -1.0, f)
        return out

    def __repr__(self) -> str:
        return "add_decayed_weights_after_step()"


class AmsDecayBeforeLr(_AmsWeightDecay):
    """AMS's weight decay (Algorithm 1, line 16) placed *before* ``scale_by_learning_rate``.

    The same step as ``scale_by_learning_rate(), add_decayed_weights_after_step()``, written
    so that the optimizer shell can fuse the trailing ``-lr`` into the parameter update
    (two passes over memory fewer) and so that a mask's factor ``k`` deferred by
    ``ScaleByAms(apply_factor=False)`` is merged with the decay's multiply. With ``k`` the
    factor (1 without a mask), ``c = lr wd k`` and ``u`` the incoming update::

        u <- k (1 - c) u + wd k w        (then p <- p - lr u)

    so ``p <- (1 - c) (p - lr k u) = (1 - lr^ wd)(w - lr^ u^)`` with ``lr^ = lr k``, as
    Algorithm 1. Without weight decay it only applies a deferred factor. Reads ``lr``,
    ``weight_decay`` and ``ctx.scratch["lr_scale"]`` / ``["ams_pending"]``.
    """

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        wd = ctx.group["weight_decay"]
        factors = ctx.scratch.get(LR_SCALE)
        pending = ctx.scratch.pop(PENDING, None)
        k0 = ctx.scratch.pop(SCALE, None)  # a deferred positive scalar (or one per parameter)
        f = ctx.foreach
        no_decay = not isinstance(wd, Tensor) and wd == 0
        if no_decay and pending is None and k0 is None:
            return updates
        out = ctx.writable(updates)
        if factors is None:
            if no_decay:
                return ops.mul_(out, k0, f)
            lr = ctx.group["lr"]
            c = lr * wd
            if k0 is None:
                ops.mul_(out, 1.0 - c, f)
            elif isinstance(k0, (list, tuple)):
                ops.mul_(out, [(1.0 - c) * k for k in k0], f)
            else:
                ops.mul_(out, (1.0 - c) * k0, f)
            if isinstance(wd, Tensor):
                ops.addcmul_(out, ctx.params, [wd] * len(out), 1.0, f)
            else:
                ops.add_(out, ctx.params, f, alpha=wd)
            return out
        # one multiply of the update by a 0-d tensor per parameter: k0 * pending * (1 - c k)
        scale: list[Tensor] | None = pending
        if not no_decay:
            c = ctx.group["lr"] * wd
            scale = _affine(ops.mul(factors, c, f), -1.0, [1.0] * len(factors), f)  # 1 - c k
            if pending is not None:
                ops.mul_(scale, pending, f)
        if scale is None:
            if k0 is not None:
                ops.mul_(out, k0, f)
        else:
            if k0 is not None:
                scale = ops.mul(scale, k0, f) if scale is pending else ops.mul_(scale, k0, f)
            ops.mul_(out, scale, f)
        if not no_decay:
            ops.addcmul_(out, ctx.params, ops.mul(factors, wd, f), 1.0, f)  # + wd k w
        return out

    def __repr__(self) -> str:
        return "ams_decay_before_lr()"


def ams_decay_before_lr() -> AmsDecayBeforeLr:
    """See :class:`AmsDecayBeforeLr`."""
    return AmsDecayBeforeLr()


def scale_by_adam_moments() -> ScaleByAdamMoments:
    """See :class:`ScaleByAdamMoments`."""
    return ScaleByAdamMoments()


def scale_by_ams(key: str = "sign_avg", apply_factor: bool = True) -> ScaleByAms:
    """The full AMS mask: ``lam = group["misaligned_scale"]``, ``b3 = group["betas"][2]``.

    ``apply_factor=False`` defers the factor to a following :func:`ams_decay_before_lr`.
    """
    return ScaleByAms(misaligned_scale=None, sign_decay_index=2, key=key, apply_factor=apply_factor)


def scale_by_cautious() -> ScaleByAms:
    """The cautious mask (Definition 3.2): ``u <- u * 1[u*g >= 0] * d / ||1[u*g >= 0]||_1``."""
    return ScaleByAms(misaligned_scale=0.0, sign_decay_index=None)


def scale_by_grams() -> ScaleByAms:
    """The Grams sign swap (Corollary B.3): ``u <- sign(g) * |u|``."""
    return ScaleByAms(misaligned_scale=-1.0, sign_decay_index=None)


def add_decayed_weights_after_step() -> AddDecayedWeightsAfterStep:
    """See :class:`AddDecayedWeightsAfterStep`."""
    return AddDecayedWeightsAfterStep()


def _insert_mask(optimizer: ChainedOptimizer, mask: Transform) -> ChainedOptimizer:
    if any(len(s) for s in optimizer.state.values()):
        raise RuntimeError("insert the mask before the first step (the optimizer already has state)")
    ts = list(optimizer.transform.children()) if isinstance(optimizer.transform, Chain) else [optimizer.transform]
    tail = (AddDecayedWeights, ScaleByLearningRate, AddDecayedWeightsAfterStep, AmsDecayBeforeLr, ApplyUpdate)
    at = next((i for i, t in enumerate(ts) if isinstance(t, tail)), None)
    if at is None:
        raise ValueError(f"{type(optimizer).__name__}'s chain has no weight decay, learning rate or final apply "
                         "to put the mask in front of")
    optimizer.transform = Chain(*ts[:at], mask, *ts[at:])
    for group in optimizer.param_groups:
        optimizer.transform.validate(group)
    return optimizer


def make_cautious(optimizer: ChainedOptimizer) -> ChainedOptimizer:
    """Make any chained optimizer cautious, in place (before its first step).

    Inserts :func:`scale_by_cautious` in front of the chain's weight decay / learning rate,
    so the base direction ``u`` becomes ``u * 1[u*g >= 0] * d / ||1[u*g >= 0]||_1``::

        opt = make_cautious(hamopt.HFac(model.parameters(), lr=1e-3))
    """
    return _insert_mask(optimizer, scale_by_cautious())


def make_grams(optimizer: ChainedOptimizer) -> ChainedOptimizer:
    """Give any chained optimizer the Grams sign swap ``u -> sign(g) |u|``, in place."""
    return _insert_mask(optimizer, scale_by_grams())

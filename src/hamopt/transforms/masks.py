"""Adaptive Momentum Scaling: the AMS step, and the cautious and Grams masks for any chain.

Paper: "Decoupling Sign and Magnitude in Optimization with Adaptive Momentum Scaling"
(seed 003_94ed72a9e58efdbf; the AMS/Grams paper, cf. Cao, Li and Song, "Grams: Gradient
Descent with Adaptive Momentum Scaling", arXiv:2412.17107): Algorithm 1 (AMS), Definition
3.2 (the cautious mechanism of Liang, Chen, Liu and Liu, "Cautious Optimizers",
arXiv:2411.16085), Definition 5.1 (Grams) and Corollaries B.1-B.3.

* :class:`ApplyAmsUpdate` (``apply_ams_update()``) is the whole of Algorithm 1, moments to
  weight decay, in one readable ``update``: it is the chain of ``AMS``, ``Grams`` and
  ``CAdamW``. Its fused version (the same rule with multi-tensor kernels and merged
  multiplies) is :mod:`hamopt.fast.masks`, picked automatically.
* :class:`ScaleByAms` (``scale_by_ams()``, ``scale_by_cautious()``, ``scale_by_grams()``) is
  the mask alone on *any* base update, reading the raw gradient from ``ctx.grads``:
  ``chain(<any direction>, scale_by_cautious(), apply_decayed_update())`` is the cautious
  version of that optimizer (C-Lion), ``scale_by_grams()`` its "Grams" version
  (``sign(g) * |u|``). The per-tensor factor ``d / (||phi||_1 + ||psi||_1)`` is multiplied
  into the update (``lr^ u^ = lr * (factor * u^)``); the weight decay is then the chain's
  own (``apply_decayed_update()`` decays with ``lr``, before the step).

Reductions over a whole tensor (the mask count) go through :func:`tensor_sums` only.
"""

from __future__ import annotations

import math
import warnings
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
    "ApplyAmsUpdate",
    "ScaleByAdamMoments",
    "ScaleByAms",
    "add_decayed_weights_after_step",
    "ams_decay_before_lr",
    "apply_ams_update",
    "check_ams_betas",
    "make_cautious",
    "make_grams",
    "scale_by_adam_moments",
    "scale_by_ams",
    "scale_by_cautious",
    "scale_by_grams",
    "tensor_sums",
]


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


def check_misaligned_scale(lam: Any) -> None:
    """``lam`` (``misaligned_scale``) is a finite real number."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise ValueError(f"Invalid misaligned_scale: {lam!r} (must be a finite real number)")


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


def sign_swap_(us: list[Tensor], signs: Sequence[Tensor], foreach: bool) -> list[Tensor]:
    """Grams' update in place: ``u <- sign(s) * |u|`` (Corollary B.3)."""
    if foreach:
        torch._foreach_abs_(us)
        torch._foreach_mul_(us, torch._foreach_sign(list(signs)))
    else:
        for u, s in zip(us, signs):
            u.abs_().mul_(s.sign())
    return us


def misalign_(us: list[Tensor], products: list[Tensor], lam: float, foreach: bool) -> list[Tensor]:
    """The AMS mask in place: ``u <- (phi + psi) * u`` with ``phi = 1[u*s >= 0]``,
    ``psi = lam * 1[u*s < 0]``; returns ``d / (||phi||_1 + ||psi||_1)`` per tensor (0-d, 1
    where that is 0, see :func:`_mask_factors`).

    ``products`` are ``u * s`` in tensors the caller owns (overwritten). With
    ``x = min(sign(u*s), 0)``, which is -1 exactly where ``u*s < 0``: ``phi + psi = 1 + (1 - lam) x``
    and ``||phi||_1 + ||psi||_1 = (d - n) + |lam| n`` with ``n = ||x||_1``.
    """
    f = foreach
    x = ops.sign_(products, f)
    if f:
        torch._foreach_clamp_max_(x, 0.0)
    else:
        for t in x:
            t.clamp_max_(0.0)
    factors = _mask_factors(tensor_sums(x, f), [u.numel() for u in us], abs(lam), f)
    ops.addcmul_(us, us, x, 1.0 - lam, f)  # u + (1 - lam) u x; for lam = 0 exactly u phi
    return factors


def ema_signal(ctx: StepContext, key: str, b3: float, grads: list[Tensor]) -> list[Tensor]:
    """AMS's sign signal on lists of tensors: ``grads`` when ``b3 = 0``, else the buffer
    ``state[key]`` after ``s = b3 s + (1-b3) g`` (created at zero where ``b3`` was switched on
    after the first step)."""
    if b3 == 0.0:
        return grads
    for st, p in zip(ctx.states, ctx.params):
        if key not in st:  # b3 switched on after the first step
            st[key] = state_like(p, ctx.group)
    return ops.lerp_(ctx.state(key), grads, 1.0 - b3, ctx.foreach)


def _ams_granularity(lam: float, b3: float) -> str:
    # Adam (lam = 1) and Grams (lam = -1, b3 = 0) have factor 1: element by element.
    return ELEMENT if lam == 1.0 or (lam == -1.0 and b3 == 0.0) else TENSOR


class ApplyAmsUpdate(Transform):
    """Adaptive Momentum Scaling, the whole step (seed 003, Algorithm 1; ALGORITHMS.md section 3).

    Per parameter tensor ``w`` of ``d`` elements, gradient ``g``, step count ``t``::

        m = b1 m + (1-b1) g;   s = b3 s + (1-b3) g;   v = b2 v + (1-b2) g^2    (lines 5-7)
        u = (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)                        (lines 8-10)
        phi = 1[u*s >= 0];     psi = lam * 1[u*s < 0]                           (lines 11-12)
        lr^ = lr * d / (||phi||_1 + ||psi||_1)        (lr where that is 0)     (line 13)
        w <- w - lr^ (phi + psi) * u                                            (lines 14-15)
        w <- w - lr^ * wd * w                                                   (line 16)

    ``betas = (b1, b2, b3)`` (``(b1, b2)`` means ``b3 = 0``: then ``s = g`` and no buffer is
    kept; a ``b3`` switched on later creates it), ``lam = misaligned_scale``,
    ``wd = weight_decay``. Special cases (Corollaries B.1-B.3): ``b3 = b1`` or ``lam = 1`` is
    Adam; ``b3 = 0, lam = 0`` Cautious Adam; ``b3 = 0, lam = -1`` Grams, written
    ``u^ = sign(g) |u|`` with ``lr^ = lr`` (Corollary B.3 and the authors' code; it differs
    from the literal ``(phi + psi) u`` only where ``g == 0``, which it does not move).

    Why one transform: line 16 decays the weights *after* line 15's step, with the ``lr^``
    that only the mask knows. Split into a mask and a weight decay, the mask would have to
    hand ``lr^`` on beside the update (a side channel between transforms). So this transform
    owns the moments, the mask and the step, and applies it (:attr:`applies`: it comes last
    in a chain and returns no updates), as :func:`~hamopt.transforms.apply_decayed_update`
    does for AdamW. State ``exp_avg``, ``exp_avg_sq`` (and ``sign_avg`` when ``b3 > 0``).
    Reads ``lr``, ``betas``, ``eps``, ``weight_decay``, ``misaligned_scale``.

    ``update`` is the reference, one tensor at a time. :mod:`hamopt.fast.masks` computes the
    same rule on lists of tensors with multi-tensor kernels, Adam's bias-correction scalar and
    the mask's factor merged into one multiply with the weight decay, and the mask's
    temporaries in the step's pooled buffers on CPU pieces; it is picked automatically
    (``hamopt.fast.reference_only()`` runs this one) and agrees with it to rounding (tested).
    """

    hyperparams = ("betas", "eps", "misaligned_scale", "lr", "weight_decay")
    applies = True

    def __init__(self, key: str = "sign_avg") -> None:
        self.key = key
        self.state_keys = ("exp_avg", "exp_avg_sq", key)

    @staticmethod
    def betas(group: Mapping[str, Any]) -> tuple[float, float, float]:
        """``(b1, b2, b3)`` from ``group["betas"]`` (``b3 = 0`` when it has two entries)."""
        b = group["betas"]
        return b[0], b[1], (float(b[2]) if len(b) > 2 else 0.0)

    def validate(self, group: Mapping[str, Any]) -> None:
        check_ams_betas(group["betas"])
        V.check_eps(group["eps"])
        check_misaligned_scale(group["misaligned_scale"])
        V.check_weight_decay(group["weight_decay"])
        V.check_lr(group["lr"])

    def granularity(self, group: Mapping[str, Any]) -> str:
        return _ams_granularity(float(group["misaligned_scale"]), self.betas(group)[2])

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        state["exp_avg"] = state_like(param, group)
        state["exp_avg_sq"] = state_like(param, group)
        if self.betas(group)[2] != 0.0:
            state[self.key] = state_like(param, group)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        lr, wd, eps = ctx.group["lr"], ctx.group["weight_decay"], ctx.group["eps"]
        lam = float(ctx.group["misaligned_scale"])
        b1, b2, b3 = self.betas(ctx.group)
        for w, g, st, t in zip(ctx.params, updates, ctx.states, ctx.steps):
            m, v = st["exp_avg"], st["exp_avg_sq"]
            m.lerp_(g, 1 - b1)                                      # m = b1 m + (1-b1) g
            v.mul_(b2).addcmul_(g, g, value=1 - b2)                 # v = b2 v + (1-b2) g^2
            s = g                                                   # s = g when b3 = 0
            if b3 != 0:                                             # s = b3 s + (1-b3) g
                if self.key not in st:  # b3 switched on after the first step
                    st[self.key] = state_like(w, ctx.group)
                s = st[self.key].lerp_(g, 1 - b3)
            u = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
            if lam == -1 and b3 == 0:                               # Grams (Corollary B.3)
                u_hat, lr_hat = g.sign() * u.abs(), lr
            else:
                aligned = u * s >= 0
                phi = aligned.to(u.dtype)                           # 1[u*s >= 0]
                psi = lam * (~aligned).to(u.dtype)                  # lam * 1[u*s < 0]
                norm = phi.sum() + psi.abs().sum()                  # ||phi||_1 + ||psi||_1
                lr_hat = torch.where(norm > 0, lr * w.numel() / norm, lr)
                u_hat = (phi + psi) * u
            w.sub_(lr_hat * u_hat)                                  # w <- w - lr^ u^
            w.sub_(lr_hat * wd * w)                                 # w <- w - lr^ wd w
        return []

    def __repr__(self) -> str:
        return "apply_ams_update()" if self.key == "sign_avg" else f"apply_ams_update(key={self.key!r})"


def apply_ams_update(key: str = "sign_avg") -> ApplyAmsUpdate:
    """AMS's whole step (Algorithm 1), last in a chain; see :class:`ApplyAmsUpdate`.

    ``key`` names the state entry of the sign buffer ``s``.
    """
    return ApplyAmsUpdate(key)


class ScaleByAdamMoments(ScaleByAdam):
    """Adam's direction ``u = mhat / (sqrt(vhat) + eps)`` (AMS Algorithm 1, lines 5, 7-10).

    :class:`hamopt.transforms.ScaleByAdam` itself (the same code), accepting AMS's
    ``betas = (b1, b2)`` or ``(b1, b2, b3)`` (only ``b1``, ``b2`` are read). State
    ``exp_avg``, ``exp_avg_sq``. To mask it, follow it with :func:`scale_by_ams`; AMS's whole
    step, weight decay with ``lr^`` included, is :func:`apply_ams_update`.

    Args:
        defer_scale: deprecated and ignored (the scale is always applied here): it left the
            bias-correction scalar to a later transform through a side channel, a merge that
            :mod:`hamopt.fast.masks` now does inside AMS's own fast path.
    """

    def __init__(self, defer_scale: bool = False) -> None:
        super().__init__(amsgrad=False)
        if defer_scale:
            warnings.warn("ScaleByAdamMoments(defer_scale=True) is deprecated and ignored: the scale is applied "
                          "here; AMS's merged multiply lives in hamopt.fast.masks", DeprecationWarning, stacklevel=2)
        self.defer_scale = False

    def validate(self, group: Mapping[str, Any]) -> None:
        check_ams_betas(group["betas"])
        V.check_eps(group["eps"])

    def __repr__(self) -> str:
        return "scale_by_adam_moments()"


class ScaleByAms(Transform):
    """AMS mask and scale on any base update ``u`` (Algorithm 1, lines 6 and 11-14).

    ``s = b3 s + (1-b3) g`` (``s = g`` and no buffer when ``b3 = 0``), then::

        phi = 1[u*s >= 0];  psi = lam * 1[u*s < 0]
        u <- d / (||phi||_1 + ||psi||_1) * (phi + psi) * u        (factor 1 if that is 0)

    so a following ``apply_decayed_update()`` steps by ``lr^ u^`` with
    ``lr^ = lr * factor`` (its weight decay uses ``lr``; AMS's decay with ``lr^`` after the
    step is :class:`ApplyAmsUpdate`). Special cases (Python branches on hyperparameters, no
    tensor-dependent control flow): ``lam = 1``: ``u`` unchanged (Adam, Corollary B.1);
    ``lam = 0``: the cautious mask (Definition 3.2); ``lam = -1, b3 = 0``: Grams,
    ``u <- sign(g) * |u|`` with factor 1 (Corollary B.3; where ``g == 0`` exactly this gives
    0, where the literal ``(phi + psi) u`` would keep ``u``; the authors' code does the same).

    Args:
        misaligned_scale: ``lam``; ``None`` reads ``group["misaligned_scale"]``.
        sign_decay_index: where ``b3`` sits in ``group["betas"]`` (a missing entry means 0);
            ``None`` fixes ``b3 = 0``.
        key: state key of the ``s`` buffer.
        apply_factor: deprecated and ignored (the factor is always applied here).

    :mod:`hamopt.fast.masks` puts the product ``u*s`` into the step's pooled buffers on CPU pieces.
    """

    def __init__(self, misaligned_scale: float | None = None, sign_decay_index: int | None = 2,
                 key: str = "sign_avg", apply_factor: bool = True) -> None:
        if not apply_factor:
            warnings.warn("ScaleByAms(apply_factor=False) is deprecated and ignored: the factor is applied here "
                          "(AMS's merged multiply lives in hamopt.fast.masks)", DeprecationWarning, stacklevel=2)
        self.fixed_scale = misaligned_scale
        self.apply_factor = True
        self.index = sign_decay_index
        self.key = key
        self.state_keys = (key,) if sign_decay_index is not None else ()
        hp: tuple[str, ...] = ()
        if misaligned_scale is None:
            hp += ("misaligned_scale",)
        if sign_decay_index is not None:
            hp += ("betas",)
        self.hyperparams = hp

    def lam(self, group: Mapping[str, Any]) -> float:
        """``lam``: the fixed ``misaligned_scale``, or the group's."""
        return float(group["misaligned_scale"]) if self.fixed_scale is None else self.fixed_scale

    def b3(self, group: Mapping[str, Any]) -> float:
        """The sign buffer's decay (0: no buffer, ``s = g``)."""
        if self.index is None:
            return 0.0
        betas = group["betas"]
        return float(betas[self.index]) if len(betas) > self.index else 0.0

    def validate(self, group: Mapping[str, Any]) -> None:
        if self.fixed_scale is None:
            check_misaligned_scale(group["misaligned_scale"])
        if self.index is not None:
            V.check_betas(group["betas"])

    def granularity(self, group: Mapping[str, Any]) -> str:
        return _ams_granularity(self.lam(group), self.b3(group))

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        if self.b3(group) != 0.0:
            state[self.key] = state_like(param, group)

    def signal(self, ctx: StepContext) -> list[Tensor]:
        """``s``: the gradients (``b3 = 0``), or the sign buffer after this step's EMA."""
        return ema_signal(ctx, self.key, self.b3(ctx.group), ctx.grads)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        return self.masked(ctx, updates, lambda u, s: ops.mul(u, s, ctx.foreach))

    def masked(self, ctx: StepContext, updates: list[Tensor],
               product: Callable[[list[Tensor], list[Tensor]], list[Tensor]]) -> list[Tensor]:
        """The rule, with the products ``u * s`` from ``product`` (new tensors; the fast path
        :data:`hamopt.fast.masks.POOLED_MASK` puts them into the step's pooled buffers)."""
        lam, f = self.lam(ctx.group), ctx.foreach
        s = self.signal(ctx)
        if lam == 1.0:
            return updates
        out = ctx.writable(updates)
        if lam == -1.0 and self.b3(ctx.group) == 0.0:  # Grams: factor d / d = 1
            return sign_swap_(out, s, f)
        return ops.mul_(out, misalign_(out, product(out, s), lam, f), f)

    def __repr__(self) -> str:
        return f"scale_by_ams(misaligned_scale={self.fixed_scale}, sign_decay_index={self.index})"


class _AmsWeightDecay(Transform):
    """What the two deprecated weight-decay placements share: they read ``lr`` and
    ``weight_decay`` and work element by element."""

    hyperparams = ("lr", "weight_decay")
    splits = ELEMENT

    def __init__(self) -> None:
        warnings.warn(f"{type(self).__name__} is deprecated: it decays with lr, since no transform hands it a "
                      "mask's lr^ any more; AMS's decay with lr^ after the step is part of apply_ams_update()",
                      DeprecationWarning, stacklevel=3)

    def validate(self, group: Mapping[str, Any]) -> None:
        V.check_weight_decay(group["weight_decay"])

    @staticmethod
    def combine(ctx: StepContext, updates: list[Tensor], coef: Any, sign: float) -> list[Tensor]:
        """``(1 - lr wd) u + sign coef w``: the update kept, plus a multiple of the weights."""
        wd = ctx.group["weight_decay"]
        if not isinstance(wd, Tensor) and wd == 0:
            return updates
        out = ctx.writable(updates)
        f = ctx.foreach
        ops.mul_(out, 1.0 - ctx.group["lr"] * wd, f)
        if isinstance(coef, Tensor):
            ops.addcmul_(out, ctx.params, [coef] * len(out), sign, f)
        else:
            ops.add_(out, ctx.params, f, alpha=sign * coef)
        return out


class AddDecayedWeightsAfterStep(_AmsWeightDecay):
    """Deprecated: decay the *stepped* weights, ``w'' = w' - lr wd w'`` with ``w' = w + delta``.

    Put it after :func:`hamopt.transforms.scale_by_learning_rate`: with ``delta`` the incoming
    update the update becomes ``delta - lr wd (w + delta)``. It used to read a mask's factor
    from a side channel to decay with ``lr^``; AMS's step with that decay is
    :class:`ApplyAmsUpdate`.
    """

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        return self.combine(ctx, updates, ctx.group["lr"] * ctx.group["weight_decay"], -1.0)  # delta (1 - c) - c w

    def __repr__(self) -> str:
        return "add_decayed_weights_after_step()"


class AmsDecayBeforeLr(_AmsWeightDecay):
    """Deprecated: the decay of the stepped weights placed *before* ``scale_by_learning_rate``
    (or ``apply_update()``): ``u <- (1 - lr wd) u + wd w``, so ``p - lr u = (1 - lr wd)(p - lr u)``.
    AMS's step with its decay (``lr^``) is :class:`ApplyAmsUpdate`.
    """

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        return self.combine(ctx, updates, ctx.group["weight_decay"], 1.0)  # (1 - lr wd) u + wd w

    def __repr__(self) -> str:
        return "ams_decay_before_lr()"


def ams_decay_before_lr() -> AmsDecayBeforeLr:
    """Deprecated; see :class:`AmsDecayBeforeLr` (AMS's step is :func:`apply_ams_update`)."""
    return AmsDecayBeforeLr()


def scale_by_adam_moments() -> ScaleByAdamMoments:
    """See :class:`ScaleByAdamMoments`."""
    return ScaleByAdamMoments()


def scale_by_ams(key: str = "sign_avg", apply_factor: bool = True) -> ScaleByAms:
    """The full AMS mask on any base update: ``lam = group["misaligned_scale"]``,
    ``b3 = group["betas"][2]`` (``apply_factor`` is deprecated and ignored).

    AMS's whole step, with its decay after the step with ``lr^``, is :func:`apply_ams_update`.
    """
    return ScaleByAms(misaligned_scale=None, sign_decay_index=2, key=key, apply_factor=apply_factor)


def scale_by_cautious() -> ScaleByAms:
    """The cautious mask (Definition 3.2): ``u <- u * 1[u*g >= 0] * d / ||1[u*g >= 0]||_1``."""
    return ScaleByAms(misaligned_scale=0.0, sign_decay_index=None)


def scale_by_grams() -> ScaleByAms:
    """The Grams sign swap (Corollary B.3): ``u <- sign(g) * |u|``."""
    return ScaleByAms(misaligned_scale=-1.0, sign_decay_index=None)


def add_decayed_weights_after_step() -> AddDecayedWeightsAfterStep:
    """Deprecated; see :class:`AddDecayedWeightsAfterStep` (AMS's step is :func:`apply_ams_update`)."""
    return AddDecayedWeightsAfterStep()


def _insert_mask(optimizer: ChainedOptimizer, mask: Transform) -> ChainedOptimizer:
    if any(len(s) for s in optimizer.state.values()):
        raise RuntimeError("insert the mask before the first step (the optimizer already has state)")
    ts = list(optimizer.transform.children()) if isinstance(optimizer.transform, Chain) else [optimizer.transform]
    if any(isinstance(t, ApplyAmsUpdate) for t in ts):
        raise ValueError(f"{type(optimizer).__name__}'s step is apply_ams_update(), which masks its update itself "
                         "(misaligned_scale: 0 is cautious, -1 is Grams); there is no separate step to put "
                         "another mask in front of")
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

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
update: ``chain(<any direction>, scale_by_cautious(), add_decayed_weights(),
scale_by_learning_rate())`` is the cautious version of that optimizer, and
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
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..core import ops
from ..core import validation as V
from ..core.optimizer import ChainedOptimizer
from ..core.transform import Chain, StepContext, Transform, bias_correction, state_like

__all__ = [
    "AddDecayedWeightsAfterStep",
    "ScaleByAdamMoments",
    "ScaleByAms",
    "add_decayed_weights_after_step",
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


def tensor_sums(xs: Sequence[Tensor], foreach: bool) -> list[Tensor]:
    """``sum(x)`` of each (non-negative) tensor as a 0-d tensor; 0 for zero-size tensors.

    The only whole-tensor reduction of this module (under sharding it needs an all-reduce).
    """
    if foreach and len(xs) > 0:
        return list(torch._foreach_norm(list(xs), 1))
    return [x.sum() for x in xs]


def check_ams_betas(betas: Any) -> None:
    """``(b1, b2)`` or ``(b1, b2, b3)``, each in ``[0, 1)``; messages as torch's."""
    V.check_betas(betas)
    if len(betas) not in (2, 3):
        raise ValueError(f"Invalid betas: {tuple(betas)!r} (expected (b1, b2) or (b1, b2, b3))")


def _sqrt(x: Any) -> Any:
    return x.sqrt() if isinstance(x, Tensor) else math.sqrt(x)


def _mask_factors(h: list[Tensor], a: float, foreach: bool) -> list[Tensor]:
    """``d / (sum(h) + a (d - sum(h)))`` per tensor (``d`` its size), 1 where that is 0/0 or x/0."""
    if not h:
        return []
    n = torch.stack(tensor_sums(h, foreach))
    d = torch.tensor([float(x.numel()) for x in h], dtype=n.dtype, device=n.device)
    den = n + a * (d - n) if a != 0.0 else n
    fac = torch.where(den > 0, d / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))
    return list(fac.unbind(0))


class ScaleByAdamMoments(Transform):
    """Adam's direction ``u = mhat / (sqrt(vhat) + eps)`` (AMS Algorithm 1, lines 5, 7-10).

    Like :class:`hamopt.transforms.ScaleByAdam`, but reads only ``betas[0]`` and
    ``betas[1]`` (AMS's ``betas`` has a third entry) and uses two fewer passes over memory:
    ``u = m / (sqrt(v) + eps sqrt(1-b2^t)) * (sqrt(1-b2^t) / (1-b1^t))``, algebraically
    the same as Adam's ``(m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)``. State ``exp_avg``,
    ``exp_avg_sq``.
    """

    state_keys = ("exp_avg", "exp_avg_sq")
    hyperparams = ("betas", "eps")

    def validate(self, group: Mapping[str, Any]) -> None:
        check_ams_betas(group["betas"])
        V.check_eps(group["eps"])

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        state["exp_avg"] = state_like(param, group)
        state["exp_avg_sq"] = state_like(param, group)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        betas = ctx.group["betas"]
        b1, b2 = betas[0], betas[1]
        eps = ctx.group["eps"]
        m, v = ctx.state("exp_avg"), ctx.state("exp_avg_sq")
        f = ctx.foreach
        ops.lerp_(m, updates, 1.0 - b1, f)
        ops.mul_(v, b2, f)
        ops.addcmul_(v, updates, updates, 1.0 - b2, f)
        bc1 = bias_correction(b1, ctx.steps)
        sbc2 = [_sqrt(b) for b in bias_correction(b2, ctx.steps)]
        denom = ops.sqrt(v, f)
        ops.add_(denom, [eps * s for s in sbc2], f)
        out = list(torch._foreach_div(m, denom)) if f else [a / b for a, b in zip(m, denom)]
        ops.mul_(out, [s / b for s, b in zip(sbc2, bc1)], f)
        return ctx.fresh(out)

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
    """

    def __init__(self, misaligned_scale: float | None = None, sign_decay_index: int | None = 2,
                 key: str = "sign_avg") -> None:
        self.fixed_scale = misaligned_scale
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
        # h = 1[u*s >= 0] as clamp_max(sign(u*s) + 1, 1): three in-place passes, no bool tensors.
        h = list(torch._foreach_mul(out, s)) if f else [u * g for u, g in zip(out, s)]
        ops.sign_(h, f)
        ops.add_(h, 1.0, f)
        if f:
            torch._foreach_clamp_max_(h, 1.0)
        else:
            for x in h:
                x.clamp_max_(1.0)
        factors = _mask_factors(h, abs(lam), f)
        if lam == 0.0:
            ops.mul_(out, h, f)  # u * h
        else:
            ops.mul_(h, out, f)  # h <- u * h;  u <- u + (1 - lam)(u h - u) = (h + lam (1-h)) u
            ops.lerp_(out, h, 1.0 - lam, f)
        ops.mul_(out, factors, f)
        ctx.scratch[LR_SCALE] = factors
        return out

    def __repr__(self) -> str:
        return f"scale_by_ams(misaligned_scale={self.fixed_scale}, sign_decay_index={self.index})"


class AddDecayedWeightsAfterStep(Transform):
    """AMS's weight decay (Algorithm 1, line 16): decay the *stepped* weights with ``lr^``.

    Put it after :func:`hamopt.transforms.scale_by_learning_rate`. With ``delta = -lr^ u^``
    the incoming update, ``w' = w + delta`` and then ``w'' = w' - lr^ wd w'``, so the
    update becomes ``delta - lr^ wd (w + delta)``, ``lr^ = lr * ctx.scratch["lr_scale"]``
    (``lr`` alone when no mask left a factor). Reads ``lr`` and ``weight_decay``.
    Differs from :class:`hamopt.transforms.AddDecayedWeights` (``lr wd w`` on the weights
    before the step) by ``lr^2 wd u^``.
    """

    hyperparams = ("lr", "weight_decay")

    def validate(self, group: Mapping[str, Any]) -> None:
        V.check_weight_decay(group["weight_decay"])

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
        cs = [c] * len(out) if factors is None else [c * k for k in factors]
        ops.mul_(out, [1.0 - c for c in cs], f)
        # out += params * (-c), c a 0-d tensor per parameter (broadcast, no temporaries)
        ops.addcmul_(out, ctx.params, [-c for c in cs], 1.0, f)
        return out

    def __repr__(self) -> str:
        return "add_decayed_weights_after_step()"


def scale_by_adam_moments() -> ScaleByAdamMoments:
    """See :class:`ScaleByAdamMoments`."""
    return ScaleByAdamMoments()


def scale_by_ams(key: str = "sign_avg") -> ScaleByAms:
    """The full AMS mask: ``lam = group["misaligned_scale"]``, ``b3 = group["betas"][2]``."""
    return ScaleByAms(misaligned_scale=None, sign_decay_index=2, key=key)


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
    from .common import AddDecayedWeights, ScaleByLearningRate

    if any(len(s) for s in optimizer.state.values()):
        raise RuntimeError("insert the mask before the first step (the optimizer already has state)")
    ts = list(optimizer.transform.children()) if isinstance(optimizer.transform, Chain) else [optimizer.transform]
    tail = (AddDecayedWeights, ScaleByLearningRate, AddDecayedWeightsAfterStep)
    at = next((i for i, t in enumerate(ts) if isinstance(t, tail)), None)
    if at is None:
        raise ValueError(f"{type(optimizer).__name__}'s chain has no add_decayed_weights/scale_by_learning_rate "
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

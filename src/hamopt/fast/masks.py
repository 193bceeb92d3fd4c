"""AMS's step fused, and the AMS / cautious mask with a pooled temporary.

``AMS_FUSED`` implements :class:`hamopt.transforms.ApplyAmsUpdate` (Algorithm 1, the chain of
``AMS``, ``Grams`` and ``CAdamW``), everywhere: the same rule as its reference ``update``,
computed on lists of tensors with multi-tensor kernels and fewer passes over memory:

* Adam's ratio is ``m / (sqrt(v) + eps sqrt(1-b2^t))`` (:class:`~hamopt.transforms.ScaleByAdam`'s
  own code); its positive scalar ``k0 = sqrt(1-b2^t) / (1-b1^t)`` changes no sign, so the
  mask is computed before it is applied;
* the mask's factor ``k = d / (||phi||_1 + ||psi||_1)``, ``k0`` and the weight decay are one
  multiply: with ``c = lr wd k``, ``u <- k0 k (1 - c) u + wd k w`` and then
  ``w <- w - lr u``, which is ``(1 - lr^ wd)(w - lr^ u^)`` with ``lr^ = lr k``;
* on CPU pieces (a pooling workspace) Adam's denominator and the mask's product ``u*s``
  are written into buffers from the step's pool, which later pieces reuse.

This is, operation for operation, what the named optimizers computed before the rule became one transform, so
their results are unchanged bit for bit (``benchmarks/ab_step.py --check``).

``POOLED_MASK`` implements :class:`hamopt.transforms.ScaleByAms` (``scale_by_ams``,
``scale_by_cautious``, ``scale_by_grams``; C-Lion): the same rule, with the product ``u * s``
whose signs make the mask written into a buffer from the step's pool (CPU pieces).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import ops
from ..core.transform import FastPath, StepContext, Transform, always, pooled, register_fast_path
from ..transforms.common import ScaleByAdam
from ..transforms.masks import ApplyAmsUpdate, ScaleByAms, _affine, ema_signal, misalign_, sign_swap_
from .adam import pooled_ratio

__all__ = ["AMS_FUSED", "POOLED_MASK"]

_ADAM = ScaleByAdam()  # its moments and final scale, shared with the Adam reference


def _products(ctx: StepContext, us: list[Tensor], ss: list[Tensor]) -> list[Tensor]:
    """Fresh ``u * s``: in pooled buffers on CPU pieces."""
    if ctx.workspace.pooled:
        take = ctx.workspace.take
        return [torch.mul(u, s, out=take(u)) for u, s in zip(us, ss)]
    return ops.mul(us, ss, ctx.foreach)


def _ams_update(t: Transform, ctx: StepContext, grads: list[Tensor]) -> list[Tensor]:
    assert isinstance(t, ApplyAmsUpdate)
    group, params, f = ctx.group, ctx.params, ctx.foreach
    lam = float(group["misaligned_scale"])
    b3 = t.betas(group)[2]
    # Adam's ratio without its final scalar k0 (ScaleByAdam's arithmetic).
    m, v, sbc2 = _ADAM.moments(ctx, grads)
    u = pooled_ratio(ctx, m, v, sbc2) if ctx.workspace.pooled else _ADAM.ratio(ctx, m, v, sbc2)
    k0 = _ADAM.final_scale(ctx, sbc2)
    # The sign signal s and the mask (its factor k left for the merged multiply).
    s = ema_signal(ctx, t.key, b3, grads)
    k: list[Tensor] | None = None
    if lam == -1.0 and b3 == 0.0:
        sign_swap_(u, s, f)
    elif lam != 1.0:
        k = misalign_(u, _products(ctx, u, s), lam, f)
    # One multiply for k0, k and the decay: u <- k0 k (1 - c) u + wd k w, c = lr wd k.
    lr, wd = group["lr"], group["weight_decay"]
    decay = isinstance(wd, Tensor) or wd != 0
    if k is None:
        if not decay:
            ops.mul_(u, k0, f)
        else:
            c = lr * wd
            ops.mul_(u, [(1.0 - c) * x for x in k0] if isinstance(k0, (list, tuple)) else (1.0 - c) * k0, f)
            if isinstance(wd, Tensor):
                ops.addcmul_(u, params, [wd] * len(u), 1.0, f)
            else:
                ops.add_(u, params, f, alpha=wd)
    else:
        if decay:
            scale = _affine(ops.mul(k, lr * wd, f), -1.0, [1.0] * len(k), f)  # 1 - c
            ops.mul_(scale, k, f)
            ops.mul_(scale, k0, f)
        else:
            scale = ops.mul(k, k0, f)
        ops.mul_(u, scale, f)
        if decay:
            ops.addcmul_(u, params, ops.mul(k, wd, f), 1.0, f)  # + wd k w
    # w <- w - lr u
    if isinstance(lr, Tensor):
        ops.add_(params, ops.mul_(u, -lr, f), f)
    else:
        ops.add_(params, u, f, alpha=-lr)
    return []


def _mask_update(t: Transform, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
    assert isinstance(t, ScaleByAms)
    return t.masked(ctx, updates, lambda u, s: _products(ctx, u, s))


AMS_FUSED = register_fast_path(FastPath(ApplyAmsUpdate, "ams_fused", always, _ams_update))
POOLED_MASK = register_fast_path(FastPath(ScaleByAms, "ams_mask_pooled", pooled, _mask_update))

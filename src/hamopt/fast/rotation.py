"""The SVD rotation (preconditioner diagonalization paper, seed 001) in batches and pooled buffers.

``ROTATION_BATCHED`` implements :class:`hamopt.transforms.ScaleBySvdRotation` (AdaDiag,
AdaDiag++, AdafacDiag, AdafacDiag++) with ``foreach=True`` or on CPU pieces: the same bases
(:meth:`~hamopt.transforms.ScaleBySvdRotation.bases`), the same rotations and rounding floor,
the same inner transform, with

* **batches** (``foreach=True``): the rotations of matrices that share a shape and a basis
  layout and have at most :data:`BATCH_MAX_NUMEL` elements are done with one ``bmm`` per
  side on stacked tensors instead of one ``mm`` per matrix (a GPU launch each). The stacks
  cost two extra passes over those matrices, which pays for small matrices (launch bound)
  and not for large ones (an embedding), which keep one ``mm`` each. An inner transform that
  works in place on the rotated views hands the batch back: it is rotated back without a
  second stack. ``bmm`` and ``mm`` agree to rounding, not bit for bit;
* **pooled buffers**: the products are written into buffers from the step's workspace, which
  on CPU pieces later pieces of the step reuse (LLaMA-60M shapes, 2 threads: the plain step
  1157 -> 902 ms in the same rounds when introduced; the float32 products are about 700 ms
  of it), and the rotated updates are handed to the inner transform as tensors it owns.

Sharded (FSDP2 ``DTensor``) matrices are never stacked; they are rotated as the reference
rotates them (DTensor products, laid out like the gradient).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core.transform import FastPath, StepContext, Transform, register_fast_path
from ..transforms.rotation import LEFT, RIGHT, ScaleBySvdRotation, rounding_floor

__all__ = ["BATCH_MAX_NUMEL", "ROTATION_BATCHED"]

#: Matrices with at most this many elements are rotated in batches of equal shapes (with
#: ``foreach=True``): the stacking copies cost about as much as a launch for ~2M elements.
BATCH_MAX_NUMEL = 1 << 21


def _rotate_into(g: Tensor, left: Tensor | None, right: Tensor | None, take: Callable[[Tensor], Tensor]) -> Tensor:
    """``L^T G R`` (``mm``, or ``bmm`` on ``k x m x n`` stacks with stacked bases), written into
    buffers from ``take``: a tensor the caller owns."""
    mm = torch.bmm if g.dim() == 3 else torch.mm
    if left is not None:
        g = mm(left.mT, g, out=take(g))
    if right is not None:
        g = mm(g, right, out=take(g))
    return g


def _drop_rounding_(x: Tensor, left: Tensor | None, right: Tensor | None,
                    take: Callable[[Tensor], Tensor]) -> Tensor:
    """:func:`hamopt.transforms.rotation._drop_rounding_` with its two temporaries (``y`` and
    the mask) from ``take``; the same result."""
    if x.numel() == 0:
        return x
    y, floor = rounding_floor(x, left, right, take)
    like = torch.zeros((), dtype=torch.bool, device=x.device).expand(x.shape)
    return x.masked_fill_(torch.le(y, floor, out=take(like)), 0.0)  # type: ignore[misc]


def _rotate_back_into(u: Tensor, left: Tensor | None, right: Tensor | None,
                      take: Callable[[Tensor], Tensor]) -> Tensor:
    """``L U R^T``, like :func:`_rotate_into`."""
    return _rotate_into(u, None if left is None else left.mT, None if right is None else right.mT, take)


def _applies(t: Transform, ctx: StepContext) -> bool:
    return ctx.foreach or ctx.workspace.pooled


def _update(t: Transform, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
    assert isinstance(t, ScaleBySvdRotation)
    bases = t.bases(ctx, updates)
    same = updates is ctx.grads
    rot_u = t.views(ctx, updates)
    rot_g = rot_u if same else t.views(ctx, ctx.grads)
    mats = t.views(ctx, ctx.params)
    # The rotated parameters in batches of equal (shape, left?, right?); one bucket has one
    # dtype and one device. A key (i,) is a batch of one (plain mm).
    batches: dict[tuple[Any, ...], list[int]] = {}
    for i, b in enumerate(bases):
        if b is None:
            continue
        u = rot_u[i]
        if ctx.foreach and u.numel() <= BATCH_MAX_NUMEL:
            key: tuple[Any, ...] = (u.shape, b[0] is None, b[1] is None)
        else:
            key = (i,)
        batches.setdefault(key, []).append(i)

    states = ctx.states
    take = ctx.workspace.take
    rotated: list[tuple[list[int], Tensor | None, Tensor | None, Tensor | None]] = []
    for idx in batches.values():
        if len(idx) == 1:
            i = idx[0]
            left, right = states[i].get(LEFT), states[i].get(RIGHT)
            rot_u[i] = _drop_rounding_(_rotate_into(rot_u[i], left, right, take), left, right, take)
            if not same:
                rot_g[i] = _drop_rounding_(_rotate_into(rot_g[i], left, right, take), left, right, take)
            rotated.append((idx, left, right, None))
            continue
        s0 = states[idx[0]]
        lb = torch.stack([states[i][LEFT] for i in idx]) if LEFT in s0 else None
        rb = torch.stack([states[i][RIGHT] for i in idx]) if RIGHT in s0 else None
        ru = _drop_rounding_(_rotate_into(torch.stack([rot_u[i] for i in idx]), lb, rb, take), lb, rb, take)
        for i, r in zip(idx, ru.unbind(0)):
            rot_u[i] = r
        if not same:
            rg = _drop_rounding_(_rotate_into(torch.stack([rot_g[i] for i in idx]), lb, rb, take), lb, rb, take)
            for i, r in zip(idx, rg.unbind(0)):
                rot_g[i] = r
        rotated.append((idx, lb, rb, ru))
    if same:
        rot_g = list(rot_u)
    all_active = sum(len(idx) for idx in batches.values()) == len(updates)

    sub = ctx.seen_as(mats, rot_g)
    if all_active and not same:
        sub.fresh(rot_u)  # every tensor was allocated here and aliases nothing else
    inner_out = t.inner.run(sub, rot_u)
    inner_owned = sub.owns(inner_out)

    out = list(inner_out)
    for idx, lb, rb, ru in rotated:
        if ru is None:
            out[idx[0]] = _rotate_back_into(out[idx[0]], lb, rb, take)
            continue
        # An inner transform that worked in place on the rotated views hands back the
        # batch itself: no second stack.
        u = ru if all(out[i] is rot_u[i] for i in idx) else torch.stack([out[i] for i in idx])
        for i, d in zip(idx, _rotate_back_into(u, lb, rb, take).unbind(0)):
            out[i] = d
    params = ctx.params
    for i, d in enumerate(out):
        if d.dim() != params[i].dim():  # the matrix view of a tensor with 3+ dims
            out[i] = d.reshape(params[i].shape)
    if inner_owned or all_active:
        return ctx.fresh(out)
    return out


ROTATION_BATCHED = register_fast_path(FastPath(ScaleBySvdRotation, "svd_rotation_batched", _applies, _update))

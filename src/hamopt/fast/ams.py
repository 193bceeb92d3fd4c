"""The AMS / cautious mask with its temporary in a pooled buffer on CPU pieces.

Implements :class:`hamopt.transforms.ScaleByAms` (``scale_by_ams``, ``scale_by_cautious``,
``scale_by_grams``): the same rule, with the product ``u * s`` whose signs make the mask
written into a buffer taken from the step's pool, which a later CPU piece reuses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.transform import FastPath, StepContext, Transform, register_fast_path
from ..transforms.ams import ScaleByAms

__all__ = ["POOLED_MASK"]


def _pooled(t: Transform, ctx: StepContext) -> bool:
    return ctx.workspace.pooled


def _update(t: Transform, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
    assert isinstance(t, ScaleByAms)
    take = ctx.workspace.take
    return t.masked(ctx, updates, lambda us, ss: [torch.mul(u, g, out=take(u)) for u, g in zip(us, ss)])


POOLED_MASK = register_fast_path(FastPath(ScaleByAms, "ams_mask_pooled", _pooled, _update))

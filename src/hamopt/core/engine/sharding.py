"""The few places where the engine meets a sharded (FSDP2 ``DTensor``) parameter.

Under ``torch.distributed.fsdp.fully_shard`` parameters, gradients and optimizer state are
``DTensor`` shards (usually ``Shard(0)``: a block of rows per rank). Element-wise arithmetic
on them needs nothing from us: DTensor runs it on the local shards. What does need care is
any statistic of the *whole* matrix, such as an SVD basis: it must be computed from the full
matrix, the same on every rank, so a sharded run equals a single-process one (SPEC section
4). These helpers are the engine's whole vocabulary for that (:mod:`hamopt.core.engine`;
no transform imports them); each is the identity on plain tensors.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

try:  # torch.distributed.tensor is public since torch 2.4
    from torch.distributed.tensor import DTensor, Replicate
except ImportError:  # pragma: no cover - builds without distributed support
    DTensor = None  # type: ignore[assignment,misc]
    Replicate = None  # type: ignore[assignment,misc]

__all__ = ["all_agree", "full", "is_sharded", "keep_rows", "like", "local", "replicated", "shard_like"]


def is_sharded(x: Any) -> bool:
    """Whether ``x`` is a ``DTensor``."""
    return DTensor is not None and isinstance(x, DTensor)


def full(x: Tensor) -> Tensor:
    """The whole tensor on every rank (an all-gather of a ``DTensor``; ``x`` itself otherwise)."""
    return x.full_tensor() if is_sharded(x) else x  # type: ignore[union-attr]


def local(x: Tensor) -> Tensor:
    """This rank's shard as a plain tensor (``x`` itself when it is not a ``DTensor``)."""
    return x.to_local() if is_sharded(x) else x  # type: ignore[union-attr]


def replicated(x: Tensor, ref: Tensor) -> Tensor:
    """``x`` (the same whole tensor on every rank) as a replicated ``DTensor`` on ``ref``'s mesh,
    or ``x`` itself when ``ref`` is not a ``DTensor``."""
    if not is_sharded(ref):
        return x
    mesh = ref.device_mesh  # type: ignore[attr-defined]
    return DTensor.from_local(x, mesh, [Replicate()] * mesh.ndim, run_check=False)


def like(x: Tensor, ref: Tensor) -> Tensor:
    """``x`` (a ``DTensor`` of any placement, or a whole plain tensor on every rank) laid out
    like ``ref``: the same placements (slicing a replicated tensor costs no communication;
    a partial sum is reduce-scattered). ``x`` itself when ``ref`` is not a ``DTensor``."""
    if not is_sharded(ref):
        return x
    mesh = ref.device_mesh  # type: ignore[attr-defined]
    if not is_sharded(x):
        x = replicated(x, ref)
    return x.redistribute(mesh, ref.placements)  # type: ignore[union-attr]


def keep_rows(x: Tensor, ref: Tensor) -> None:
    """Copy this rank's part of ``x`` (whole, the same on every rank) into the ``DTensor``
    ``ref`` (no communication); nothing when ``ref`` is not a ``DTensor``."""
    if is_sharded(ref):
        local(ref).copy_(local(like(x, ref)))


def shard_like(x: Tensor, ref: Tensor) -> Tensor:
    """A new ``DTensor`` laid out like ``ref`` holding this rank's part of ``x`` (whole, the
    same on every rank), copied so that ``x`` can be freed."""
    part = local(like(x, ref)).clone()
    return DTensor.from_local(part, ref.device_mesh, ref.placements, shape=ref.shape,  # type: ignore[union-attr]
                              stride=ref.stride(), run_check=False)


def all_agree(ok: bool, ref: Tensor) -> bool:
    """``ok`` on every rank of ``ref``'s mesh (one tiny all-reduce); ``ok`` for plain tensors."""
    if not is_sharded(ref):
        return ok
    flag = torch.tensor([1.0 if ok else 0.0], device=local(ref).device)
    for group in _groups(ref):  # each mesh dimension in turn: the minimum over the whole mesh
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
    return bool(flag.item() == 1.0)


def _groups(ref: Tensor) -> list[Any]:
    mesh = ref.device_mesh  # type: ignore[attr-defined]
    return [mesh.get_group(d) for d in range(mesh.ndim)]

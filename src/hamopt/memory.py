"""Optimizer-state memory: measured from real tensors, and predicted from the registry.

``state_bytes(opt)`` adds up every tensor an optimizer keeps (moments, factors, bases,
slow weights, step counters), counting shared storage once and following wrappers such as
Lookahead to their inner optimizer. ``expected_state_bytes(name, params)`` evaluates the
registry's formula for the same parameters. A test checks that they agree for every
registered optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from .registry import OptimizerInfo, get

__all__ = ["expected_state_bytes", "fmt_bytes", "state_bytes"]


def _tensors(obj: Any) -> Iterable[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _local(t: Tensor) -> Tensor:
    # A DTensor's memory on this rank is its local shard.
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by ``optimizer``'s state tensors on this process.

    Counts every tensor reachable from ``optimizer.state`` (nested dicts and lists too),
    each storage once. Wrappers expose their inner optimizer as ``base_optimizer`` (or
    ``optimizer``), and :func:`hamopt.partition`'s composite its children as ``optimizers``;
    their state is added. For DTensor state only the local shard counts.
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    stack: list[torch.optim.Optimizer] = [optimizer]
    visited: set[int] = set()
    while stack:
        opt = stack.pop()
        if id(opt) in visited:
            continue
        visited.add(id(opt))
        for t in _tensors(list(opt.state.values())):
            t = _local(t)
            key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
            if key in seen:
                continue
            seen.add(key)
            total += t.numel() * t.element_size()
        for attr in ("base_optimizer", "optimizer", "optimizers"):  # optimizers: hamopt.partition's
            inner = getattr(opt, attr, None)
            for o in inner if isinstance(inner, (list, tuple)) else [inner]:
                if isinstance(o, torch.optim.Optimizer):
                    stack.append(o)
    return total


def expected_state_bytes(
    name: str | OptimizerInfo,
    params: Iterable[Tensor],
    state_itemsize: int | None = None,
) -> int:
    """The registry formula's prediction of ``state_bytes`` after one step on ``params``.

    Args:
        name: registry name or entry.
        params: the parameters that received a gradient.
        state_itemsize: bytes per state number (default: the parameter's element size,
            with float32 for bf16/fp16 parameters as hamopt's optimizers keep it).
    """
    info = name if isinstance(name, OptimizerInfo) else get(name)
    total = 0
    for p in params:
        size = state_itemsize
        if size is None:
            size = 4 if p.dtype in (torch.bfloat16, torch.float16) else p.element_size()
        total += info.state_bytes_for(tuple(p.shape), size)
    return total


def fmt_bytes(n: float | None) -> str:
    """``1536 -> '1.5 KiB'``."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    x = float(n)
    for u in units:
        if abs(x) < 1024 or u == units[-1]:
            return f"{x:.0f} {u}" if u == "B" else f"{x:.1f} {u}"
        x /= 1024
    return f"{x:.1f} TiB"  # pragma: no cover

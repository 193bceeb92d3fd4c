"""CPU pieces: run a bucket's step on cache-sized pieces, one after the other.

A multi-tensor op over a whole model streams every tensor through memory once per op; on a
CPU, running the whole chain (parameter update included) on pieces of about
``chunk_numel`` elements keeps each piece's parameters, gradients, state and temporaries
in cache. How finely a bucket may be cut is the chain's :meth:`~hamopt.core.transform.Transform.granularity`:
``ELEMENT`` chains cut large contiguous tensors into flat slices, ``TENSOR`` chains group
whole tensors, ``BUCKET`` chains run whole. The result is the same as a whole-bucket step
(tested bit for bit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..transform import BUCKET, ELEMENT, StepContext, Transform, Workspace

__all__ = ["SliceState", "StepPool", "plan_pieces", "run_pieces"]

_PLAIN = (Tensor, torch.nn.Parameter)

Piece = list[tuple[int, int, int]]  # (index, start, stop); stop = -1: the whole tensor


def _pool_key(t: Tensor) -> tuple[int, torch.dtype, torch.device]:
    """A buffer of the step pool fits any request of the same size, dtype and device."""
    return t.numel(), t.dtype, t.device


class StepPool(Workspace):
    """A workspace whose buffers go back to a pool when their piece is done, for a later
    piece of the same step: a fresh embedding-sized tensor costs its page faults on every
    allocation on a CPU, a reused one does not. The pool lives for one step only (nothing is
    kept between steps)."""

    pooled = True

    def __init__(self, spares: dict[Any, list[Tensor]]) -> None:
        self.spares = spares
        self.taken: list[Tensor] = []

    def take(self, like: Tensor) -> Tensor:
        pool = self.spares.get(_pool_key(like))
        buf = pool.pop().view(like.shape) if pool else torch.empty_like(like, memory_format=torch.contiguous_format)
        self.taken.append(buf)
        return buf

    def reuses(self, like: Tensor) -> bool:
        """Whether :meth:`take` would hand out a pooled buffer for ``like`` (for tests)."""
        return bool(self.spares.get(_pool_key(like)))

    def give_back(self) -> None:
        for buf in self.taken:
            self.spares.setdefault(_pool_key(buf), []).append(buf)
        self.taken = []


def _can_slice(p: Tensor, g: Tensor, state: Mapping[str, Any]) -> bool:
    """Whether ``p``'s step may run on flat slices: plain contiguous tensors, and every state
    tensor but ``step`` shaped like ``p`` (element-wise state)."""
    if type(p) not in _PLAIN or type(g) not in _PLAIN or not (p.is_contiguous() and g.is_contiguous()):
        return False
    return all(k == "step" or not isinstance(v, Tensor)
               or (type(v) in _PLAIN and v.shape == p.shape and v.is_contiguous())
               for k, v in state.items())


class SliceState(dict):  # type: ignore[type-arg]
    """A parameter's state restricted to the flat slice ``[lo, hi)``: views of its element-wise
    state tensors (``step`` and other entries as they are).

    In-place updates of the views reach the real state directly. :meth:`write_back` carries
    the rest over: an entry a transform created during the step (momentum switched on) is
    placed into a new full-size tensor, a replaced view is copied into the real tensor, and
    a deleted entry is deleted.
    """

    def __init__(self, real: dict[str, Any], param: Tensor, lo: int, hi: int) -> None:
        self.real, self.shape, self.lo, self.hi = real, param.shape, lo, hi
        views = {k: (v.view(-1)[lo:hi] if k != "step" and isinstance(v, Tensor) else v) for k, v in real.items()}
        super().__init__(views)
        self.views = dict(views)

    def write_back(self) -> None:
        if len(self) == len(self.views) and all(self.get(k) is v for k, v in self.views.items()):
            return
        for k in [k for k in self.views if k not in self]:
            self.real.pop(k, None)
        for k, v in self.items():
            if self.views.get(k) is v:
                continue
            if isinstance(v, Tensor) and v.numel() == self.hi - self.lo and v.dim() > 0:
                full = self.real.get(k)
                if not (isinstance(full, Tensor) and full.shape == self.shape):  # new (or first slice)
                    full = self.real[k] = v.new_zeros(self.shape)
                full.view(-1)[self.lo:self.hi].copy_(v.reshape(-1))
            else:
                self.real[k] = v


def plan_pieces(size: int, granularity: str, params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Any]]) -> list[Piece] | None:
    """The pieces of a CPU bucket, or ``None`` to run it at once (``BUCKET`` granularity, a
    single small tensor, or everything fits one piece)."""
    if granularity == BUCKET or (len(params) == 1 and params[0].numel() <= size):
        return None
    sliceable = granularity == ELEMENT
    chunks: list[Piece] = []
    cur: Piece = []
    filled = 0
    for i, (p, g) in enumerate(zip(params, grads)):
        n = p.numel()
        if sliceable and n > size and _can_slice(p, g, states[i]):
            parts = [(i, lo, min(lo + size, n)) for lo in range(0, n, size)]
        else:
            parts = [(i, 0, -1)]
        for part in parts:
            k = n if part[2] < 0 else part[2] - part[1]
            if cur and filled + k > size:
                chunks.append(cur)
                cur, filled = [], 0
            cur.append(part)
            filled += k
    chunks.append(cur)
    return chunks if len(chunks) > 1 else None


def run_pieces(pieces: list[Piece], transform: Transform, group: Mapping[str, Any], params: list[Tensor],
               grads: list[Tensor], states: list[dict[str, Any]], steps: list[Any], leaves: list[Tensor],
               foreach: bool, run: Callable[[Transform, StepContext], None]) -> None:
    """Run ``transform`` on each piece with ``run(transform, ctx)``, sharing one step pool."""
    spares: dict[Any, list[Tensor]] = {}  # buffers reused by later pieces of this step
    for chunk in pieces:
        ps, gs, ss, ts, ls = [], [], [], [], []
        sliced: list[SliceState] = []
        for i, lo, hi in chunk:
            if hi < 0:
                ps.append(params[i])
                gs.append(grads[i])
                ss.append(states[i])
            else:
                ps.append(params[i].view(-1)[lo:hi])
                gs.append(grads[i].view(-1)[lo:hi])
                st = SliceState(states[i], params[i], lo, hi)
                ss.append(st)
                sliced.append(st)
            ts.append(steps[i])
            ls.append(leaves[i])
        pool = StepPool(spares)
        ctx = StepContext(group=group, params=ps, grads=gs, states=ss, steps=ts, foreach=foreach,
                          leaves=None if sliced else ls, workspace=pool)
        run(transform, ctx)
        pool.give_back()
        for st in sliced:
            st.write_back()

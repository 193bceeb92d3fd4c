"""Factored moment transforms of the H-Fac paper (seed 000, ALGORITHMS.md section 1).

Son Nguyen, Lizhang Chen, Bo Liu and Qiang Liu, "H-Fac: Memory-Efficient Optimization with
Factorized Hamiltonian Descent" (arXiv:2406.09958). A matrix ``G`` of shape ``m x n`` (tensors
with more than two dims are viewed as ``dim0 x prod(rest)`` by
:func:`~hamopt.core.transform.as_matrix`) keeps rank-1 statistics instead of full ones:

* :func:`scale_by_factored_rms`: Adafactor's factored second moment (row sums ``r`` and
  column sums ``s`` of ``G^2 + eps``, reconstruction ``V = r s^T / 1^T r``), returning
  ``updates / sqrt(V)``;
* :func:`factored_momentum`: the factored first moment (row means ``u`` and column means
  ``v`` of ``G``) with the paper's "corrected terms" ``u - G 1_n / n``; it records the terms
  for a reshaper later in the same chain;
* the reshapers: :func:`scale_by_factored_phi_psi` (``grad phi(a 1^T + G) + grad psi(1 b^T + G)``,
  :func:`scale_by_factored_sign` for ``phi = psi = ||.||_1``, Algorithms 2 and 4) and
  :func:`add_normalized_factored_momentum` (H-Fac's ``0.5 (phi + psi)``, Algorithm 3);
* :func:`scale_by_rms`: an unfactored second moment, ``updates / (sqrt(V) + eps)``, for the
  AdamW variant of Appendix C (Algorithm 6).

Tensors with fewer than two dims, and every parameter of a group with ``factored=False``
(the paper's "fullhead"), use the *unfactored rule of the same family*: the rank-1
reconstructions ``u 1_n^T`` and ``1_m v^T`` are both replaced by one full momentum ``M``, and
``r 1_n^T / n``, ``1_m s^T / m`` and ``V`` by one full second moment ``v`` (Adam-style
moments). The exception is H-Fac (Algorithm 3), for which the paper defines no vector rule:
with ``vectors_as_rows=True`` (:func:`factored_momentum` and :func:`scale_by_factored_rms` /
:func:`scale_by_hfac`, both set by :class:`~hamopt.optim.hfac.HFac`) 0-d and 1-d tensors of a
factored group run the matrix rule on their ``1 x n`` view (ALGORITHMS.md section 1), which
keeps the factor 0.5 on the momentum term (the full-momentum fallback doubles it). Whether a
parameter is factored is decided once, when its state is created.

All statistics come from ``ctx.grads`` (not from the incoming ``updates``), so these
transforms can follow a momentum transform and a rotation wrapper can hand them rotated
gradients through a sub-context. Every reduction over the entries of a matrix goes through
:func:`row_col_sums` (and :func:`vector_sums` for the sum of a row statistic), the places
an FSDP2 version will all-reduce.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..core import ops
from ..core import validation as V
from ..core.transform import ELEMENT, TENSOR, StepContext, Transform, as_matrix, is_matrix_like, state_like
from .common import ClipByRms, corrected_decay, rms_clip_

__all__ = [
    "AddNormalizedFactoredMomentum",
    "FactoredMomentum",
    "ScaleByFactoredPhiPsi",
    "ScaleByClippedFactoredRms",
    "ScaleByFactoredRms",
    "ScaleByHFac",
    "ScaleByRms",
    "add_normalized_factored_momentum",
    "factored_momentum",
    "holds_squares",
    "is_factored",
    "row_col_sums",
    "scale_by_factored_phi_psi",
    "row_sums_of_squares",
    "scale_by_clipped_factored_rms",
    "scale_by_factored_rms",
    "scale_by_factored_sign",
    "scale_by_hfac",
    "scale_by_rms",
    "vector_sums",
    "scaled_row_sums_of_squares",
]

#: ``ctx.scratch`` key under which :class:`FactoredMomentum` leaves its terms for a reshaper.
MOMENTUM_TERMS = "factored_momentum_terms"
#: ``ctx.scratch`` key (with the batch's indices) of the ``k x m x n`` update of a batch that
#: :class:`ScaleByFactoredRms` returned as views, so a later transform can work on the batch.
STACKED_OUT = "factored_stacked_out"


# ---------------------------------------------------------------------------- helpers
def is_factored(param: Tensor, group: Mapping[str, Any]) -> bool:
    """Whether the factored rule applies: 2+ dims and the group does not say ``factored=False``."""
    return is_matrix_like(param) and bool(group.get("factored", True))


def _factored_here(param: Tensor, group: Mapping[str, Any], vectors_as_rows: bool) -> bool:
    """Whether a transform keeps row/column statistics for ``param``: :func:`is_factored`, or a
    0-d/1-d tensor of a factored group when the transform treats vectors as ``1 x n`` rows."""
    return is_factored(param, group) or (vectors_as_rows and bool(group.get("factored", True)))


def _as_matrix(x: Tensor) -> Tensor:
    """:func:`as_matrix`, with a 0-d or 1-d tensor viewed as one row (``1 x n``)."""
    return x.reshape(1, -1) if x.dim() < 2 else as_matrix(x)


def _check_factored(group: Mapping[str, Any]) -> None:
    f = group.get("factored", True)
    if not isinstance(f, bool):
        raise ValueError(f"Invalid factored: {f!r} (expected True or False)")


def _reduce_by_matmul(x: Tensor) -> bool:
    """Whether reductions along rows use a product with a vector: on the CPU, where it is
    several times faster than ``sum(dim=-2)``; elsewhere plain sums, exact whatever the
    TF32 matmul setting (tests switch this to cover both branches on the CPU)."""
    return x.device.type == "cpu" and x.dtype.is_floating_point


def row_col_sums(x: Tensor, square: bool = False, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Row sums ``X 1_n`` and column sums ``X^T 1_m`` of a matrix ``X`` (``m x n``) or of a
    stack of them (``k x m x n``, giving ``k x m`` and ``k x n``); of ``X^2`` with ``square=True``.

    The one place the factored transforms reduce over matrix entries (zero-size matrices
    give zero sums). On the CPU, column sums are a product with ``1_m`` (``sum(dim=-2)``
    and ``vector_norm(dim=-2)`` are several times slower there) and with ``square=True``
    the squares are first written to ``out`` (a tensor of ``x``'s shape that the caller
    owns; :func:`holds_squares` tells it whether ``out`` now holds ``X^2``). Elsewhere the
    sums are plain reductions (``vector_norm`` for squares: one read, no write), exact
    whatever the TF32 matmul setting on CUDA.
    """
    if square and not _reduce_by_matmul(x):
        return (torch.linalg.vector_norm(x, dim=-1).square_(),
                torch.linalg.vector_norm(x, dim=-2).square_())
    if square:
        x = torch.mul(x, x, out=out) if out is not None else x * x
    rows = x.sum(dim=-1)
    if _reduce_by_matmul(x):
        cols = torch.matmul(x.new_ones(x.shape[-2]), x)
    else:
        cols = x.sum(dim=-2)
    return rows, cols


def holds_squares(x: Tensor) -> bool:
    """Whether ``row_col_sums(x, square=True, out=buf)`` leaves ``X^2`` in ``buf``."""
    return _reduce_by_matmul(x)


#: On the CPU, :func:`scale_by_factored_phi_psi` works on matrices with more entries than
#: this in blocks of rows of about this many entries: both arguments of a block and their
#: images stay in cache and the result is written once, where whole-matrix passes would
#: stream an embedding-sized matrix and two temporaries through memory once per operation.
#: (The second-moment transforms gain nothing measurable from blocks: their cost there is
#: the fresh update buffer, which they need either way.)
CPU_BLOCK_NUMEL = 1 << 18


def _row_blocks(x: Tensor) -> list[slice] | None:
    """Row slices of a matrix (or a ``k x m x n`` stack) for blockwise CPU passes, or ``None``
    for whole-matrix passes (other devices, and matrices of at most :data:`CPU_BLOCK_NUMEL`)."""
    m, n = x.shape[-2], x.shape[-1]
    if m < 2 or m * n <= CPU_BLOCK_NUMEL or not _reduce_by_matmul(x):
        return None
    step = max(1, CPU_BLOCK_NUMEL // max(n, 1))
    return [slice(i, min(i + step, m)) for i in range(0, m, step)]


def row_sums_of_squares(x: Tensor) -> Tensor:
    """``X^2 1_n`` of a matrix ``X`` (``m x n``) or of a stack (``k x m x n``, giving ``k x m``),
    without a temporary (a reduction over matrix entries like :func:`row_col_sums`)."""
    return torch.linalg.vector_norm(x, dim=-1).square_()


def scaled_row_sums_of_squares(x: Tensor, w: Tensor, squares: Tensor | None = None,
                               out: Tensor | None = None) -> Tensor:
    """``sum_j (X_ij w_j)^2`` per row of a matrix ``X`` (``m x n``) and a vector ``w`` (``n``),
    or of stacks of them (``k x m x n`` and ``k x n``, giving ``k x m``).

    A reduction over matrix entries like :func:`row_col_sums`. Given ``squares = X^2`` (kept
    on the CPU, see :func:`holds_squares`) it is one product ``X^2 w^2``; otherwise ``X w^T``
    is written to ``out`` (which the caller owns) and its row norms are taken.
    """
    if squares is not None:
        return torch.matmul(squares, (w * w).unsqueeze(-1)).squeeze(-1)
    y = torch.mul(x, w.unsqueeze(-2), out=out) if out is not None else x * w.unsqueeze(-2)
    return row_sums_of_squares(y)


def vector_sums(v: Tensor) -> Tensor:
    """``1^T r`` of a vector ``r`` (or of each row of a stack ``k x m``, kept as ``k x 1``)."""
    return v.sum(dim=-1, keepdim=True)


def _stack(xs: Sequence[Tensor]) -> Tensor:
    """``k x ...`` stack (a view, not a copy, when ``k = 1``, so in-place updates reach ``xs[0]``)."""
    return xs[0].unsqueeze(0) if len(xs) == 1 else torch.stack(list(xs))


#: Matrices with more entries than this are never stacked (copied into a ``k x m x n``
#: batch): one pass over them already takes longer than a kernel launch on a GPU, so the
#: copy would cost more than the launches it saves (and a large fresh buffer is slow on CPU).
STACK_MAX_NUMEL = 1 << 22
#: The same bound on the CPU, where no launch is saved and a stack is only a copy: 0, so
#: every matrix is its own batch there (about 10% faster on LLaMA-60M shapes; the tests
#: raise it to exercise the batched path as a GPU runs it).
CPU_STACK_MAX_NUMEL = 0


def _groups(ctx: StepContext, fac: list[int]) -> list[tuple[int, ...]]:
    """Factored parameters batched by matrix shape and step count (``foreach``), or one by one.

    Matrices of one shape whose parameters have the same step count share their decays, so
    a batch's decays are one Python scalar (no tensor is built from Python numbers on the
    device). Large matrices (more than :data:`STACK_MAX_NUMEL` entries, or
    :data:`CPU_STACK_MAX_NUMEL` on the CPU) and the per-tensor path (``foreach=False``) use
    batches of one, which are views, not copies.
    """
    if not ctx.foreach:
        return [(i,) for i in fac]
    by: dict[Any, list[int]] = {}
    limit = STACK_MAX_NUMEL
    if fac and ctx.grads[fac[0]].device.type == "cpu":
        limit = CPU_STACK_MAX_NUMEL
    for i in fac:
        shape = tuple(_as_matrix(ctx.grads[i]).shape)
        t = ctx.steps[i]
        if shape[0] * shape[1] > limit:
            key: Any = ("single", i)
        else:
            key = (shape, None if isinstance(t, Tensor) else t)
        by.setdefault(key, []).append(i)
    return [tuple(v) for v in by.values()]


def _stacked_grads(ctx: StepContext, js: tuple[int, ...]) -> Tensor:
    """``k x m x n`` stack of the gradients at ``js``, made once per step and chain."""
    key = ("factored_stack", js)
    hit = ctx.scratch.get(key)
    if hit is not None and hit[0] is ctx.grads:
        return hit[1]
    st = _stack([_as_matrix(ctx.grads[i]) for i in js])
    ctx.scratch[key] = (ctx.grads, st)
    return st


def _stacked_out(ctx: StepContext, js: tuple[int, ...], updates: Sequence[Tensor]) -> Tensor | None:
    """The ``k x m x n`` tensor whose views are ``updates[js]``, if :class:`ScaleByFactoredRms`
    made them in this step and they are still those views (else ``None``)."""
    hit = ctx.scratch.get((STACKED_OUT, js))
    if hit is None or hit[0] is not ctx.grads or any(updates[i] is not x for i, x in zip(js, hit[1])):
        return None
    return hit[2]


def _unstacked(st: Tensor, js: tuple[int, ...], like: Sequence[Tensor]) -> list[tuple[int, Tensor]]:
    """``(index, view)`` pairs of a ``k x m x n`` stack in the shapes of ``like``."""
    return [(i, x if like[i].dim() == 2 else x.view(like[i].shape)) for i, x in zip(js, st.unbind(0))]


def _scaled_into(ctx: StepContext, updates: Sequence[Tensor], js: tuple[int, ...], scale: Tensor,
                 o: Tensor) -> None:
    """``o = stack(updates[js]) * scale`` (``k x m x n``), with no extra copy when the updates
    are the gradients (their stack is shared per step) or a single matrix."""
    if updates is ctx.grads:
        torch.mul(_stacked_grads(ctx, js), scale, out=o)
    elif len(js) == 1:
        torch.mul(_as_matrix(updates[js[0]]).unsqueeze(0), scale, out=o)
    else:
        torch.stack([_as_matrix(updates[i]) for i in js], out=o)
        o.mul_(scale)


def _publish(ctx: StepContext, js: tuple[int, ...], o: Tensor, updates: Sequence[Tensor], out: list[Tensor]) -> None:
    """Hand the batch ``o`` out as per-parameter views, and leave it in ``ctx.scratch`` so a
    later transform can work on the whole batch at once."""
    views = _unstacked(o, js, updates)
    for i, x in views:
        out[i] = x
    ctx.scratch[(STACKED_OUT, js)] = (ctx.grads, [x for _, x in views], o)


def _decays(beta: Any, steps: Sequence[Any], corrected: bool) -> list[Any]:
    """Per-parameter decay: the bias-corrected ``beta_t`` or the constant ``beta``."""
    if corrected:
        return [corrected_decay(beta, t) for t in steps]
    return [beta for _ in steps]


def _ema(bufs: list[Tensor], news: Sequence[Tensor], decays: Sequence[Any], foreach: bool) -> list[Tensor]:
    """Fresh ``d buf + (1 - d) new`` (the state is left alone), one decay ``d`` per tensor."""
    weights = [1.0 - d for d in decays]
    if foreach and bufs and not any(isinstance(w, Tensor) for w in weights):
        return list(torch._foreach_lerp(bufs, list(news), ops.uniform(weights)))
    return [torch.lerp(b, x, w.to(b.dtype) if isinstance(w, Tensor) else w) for b, x, w in zip(bufs, news, weights)]


def _binary(xs: Sequence[Tensor], ys: Sequence[Tensor], op: str, foreach: bool) -> list[Tensor]:
    """Fresh ``x <op> y`` per pair, with broadcasting (``op`` in add, mul, div)."""
    if not xs:
        return []
    if foreach:
        return list(getattr(torch, f"_foreach_{op}")(list(xs), list(ys)))
    return [getattr(torch, op)(x, y) for x, y in zip(xs, ys)]


def _split(ctx: StepContext, key: str) -> tuple[list[int], list[int]]:
    """Indices of the factored parameters (state has ``key``) and of the others."""
    fac = [i for i, s in enumerate(ctx.states) if key in s]
    full = [i for i, s in enumerate(ctx.states) if key not in s]
    return fac, full


def _beta(group: Mapping[str, Any], hp: str, index: int | None) -> Any:
    v = group[hp]
    return v if index is None else v[index]


def _check_beta(group: Mapping[str, Any], hp: str, index: int | None) -> None:
    if index is None:
        V.check_range(hp, group[hp], 0.0, 1.0, high_open=True)
    else:
        V.check_betas(group[hp])
        if len(group[hp]) <= index:
            raise ValueError(f"Invalid {hp}: {tuple(group[hp])!r} (expected at least {index + 1} values)")


# ---------------------------------------------------------------------------- second moment
class ScaleByFactoredRms(Transform):
    """Adafactor's factored second moment (seed 000, Algorithms 1 and 3; Shazeer and Stern 2018).

    Reads ``betas`` (``b2 = betas[index]``, index 1 by default) and ``eps``; statistics come
    from ``ctx.grads``; ``b2_t`` is the bias-corrected decay ``b2 (1 - b2^(t-1)) / (1 - b2^t)``::

        r = b2_t r + (1 - b2_t) (G^2 + eps) 1_n          # state v_row, shape (m,)
        s = b2_t s + (1 - b2_t) (G^2 + eps)^T 1_m        # state v_col, shape (n,)
        V = r s^T / (1_m^T r)
        return updates / sqrt(V)

    Fallback (0-d/1-d tensors, or a group with ``factored=False``): state ``v_full`` with
    ``v = b2_t v + (1 - b2_t)(G^2 + eps)`` and ``V = v``. With ``vectors_as_rows=True`` 0-d/1-d
    tensors of a factored group use the rule above on their ``1 x n`` view instead (H-Fac).
    State shapes are decided in :meth:`init` from the shape of the tensor it is given.
    """

    state_keys = ("v_row", "v_col", "v_full")
    splits = TENSOR  # row and column statistics of whole matrices

    def __init__(self, hp: str = "betas", index: int | None = 1, vectors_as_rows: bool = False) -> None:
        self.hp, self.index, self.vectors_as_rows = hp, index, vectors_as_rows
        self.hyperparams = (hp, "eps", "factored")

    def validate(self, group: Mapping[str, Any]) -> None:
        _check_beta(group, self.hp, self.index)
        V.check_eps(group["eps"])
        _check_factored(group)

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        if _factored_here(param, group, self.vectors_as_rows):
            m, n = _as_matrix(param).shape
            state["v_row"] = state_like(param, group, (m,))
            state["v_col"] = state_like(param, group, (n,))
        else:
            state["v_full"] = state_like(param, group)

    def _moments(self, ctx: StepContext) -> tuple[list[tuple[int, ...]], list[Tensor], list[int]]:
        """Update ``r, s`` (and ``v`` of unfactored tensors) for this step; return the batches,
        one fresh ``k x m x n`` buffer per batch (holding ``G^2`` when :func:`holds_squares`,
        free to overwrite) and the
        indices of the unfactored tensors."""
        eps = ctx.group["eps"]
        decays = _decays(_beta(ctx.group, self.hp, self.index), ctx.steps, True)
        fac, full = _split(ctx, "v_row")
        f = ctx.foreach
        batches = _groups(ctx, fac)
        # 1. the sums of G^2 per batch (on CPU via G^2 written into the batch's output buffer)
        bufs: list[Tensor] = []
        news: list[Tensor] = []
        adds: list[Any] = []
        ds: list[Any] = []
        outs: list[Tensor] = []
        for js in batches:
            g = _stacked_grads(ctx, js)  # k x m x n (a view when k = 1)
            m, n = g.shape[1], g.shape[2]
            o = ctx.take(g)  # (G^2 on CPU,) the update; reused by a later CPU piece
            rows, cols = row_col_sums(g, square=True, out=o)
            outs.append(o)
            for i, rk, ck in zip(js, rows.unbind(0), cols.unbind(0)):
                bufs += (ctx.states[i]["v_row"], ctx.states[i]["v_col"])
                news += (rk, ck)
                adds += (eps * n, eps * m)  # (G^2 + eps) 1_n, (G^2 + eps)^T 1_m
                ds += (decays[i], decays[i])
        if full:
            gs = [ctx.grads[i] for i in full]
            bufs += [ctx.states[i]["v_full"] for i in full]
            news += _binary(gs, gs, "mul", f)
            adds += [eps] * len(full)
            ds += [decays[i] for i in full]
        # 2. every moving average of the bucket at once: r, s (and v of unfactored tensors)
        if bufs:
            ops.add_(news, ops.uniform(adds), f)
            ops.lerp_(bufs, news, [1.0 - d for d in ds], f)
        return batches, outs, full

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        batches, outs, full = self._moments(ctx)
        f = ctx.foreach
        out: list[Tensor] = list(updates)
        # 3. updates / sqrt(V) per batch, into the same buffer
        for js, o in zip(batches, outs):
            r = _stack([ctx.states[i]["v_row"] for i in js])
            s = _stack([ctx.states[i]["v_col"] for i in js])
            # 1 / sqrt(V_ij) = sqrt(1^T r) / sqrt(r_i) / sqrt(s_j)
            rr = r.rsqrt().mul_(vector_sums(r).sqrt_())
            _scaled_into(ctx, updates, js, rr.unsqueeze(2), o)
            o.mul_(s.rsqrt().unsqueeze(1))
            _publish(ctx, js, o, updates, out)
        if full:
            v = [ctx.states[i]["v_full"] for i in full]
            o_full = _binary([updates[i] for i in full], ops.sqrt(v, f), "div", f)
            for i, x in zip(full, o_full):
                out[i] = x
        return ctx.fresh(out)

    def __repr__(self) -> str:
        return f"scale_by_factored_rms(hp={self.hp!r}, index={self.index}, vectors_as_rows={self.vectors_as_rows})"


class ScaleByClippedFactoredRms(ScaleByFactoredRms):
    """Adafactor's factored second moment followed by its update clipping, in few passes::

        return clip_d(updates / sqrt(V))      # clip_d(U) = U / max(1, RMS(U) / d), d = clip_threshold

    The same rule, step for step, as ``chain(scale_by_factored_rms(), clip_by_rms())`` (same
    state, so checkpoints of either load in the other; ``clip_threshold=None`` disables the
    clipping). With ``c_i = sqrt(1^T r / r_i)`` and ``d_j = 1 / sqrt(s_j)`` the update of an
    ``m x n`` matrix ``X`` (``updates``) is ``X_ij c_i d_j``; it is written as ``Y = X d^T``
    first, whose row norms give ``RMS^2 = sum_i c_i^2 ||Y_i||^2 / (mn)``, then ``Y *= kappa c``
    with ``kappa = 1 / max(1, RMS / d)``: the clipping costs one read instead of a read and a
    read-write. Unfactored tensors use ``updates / sqrt(v)`` and the ordinary clipping.
    """

    def __init__(self, hp: str = "betas", index: int | None = 1, vectors_as_rows: bool = False) -> None:
        super().__init__(hp=hp, index=index, vectors_as_rows=vectors_as_rows)
        self.hyperparams = (hp, "eps", "factored", "clip_threshold")
        self._clip = ClipByRms()

    def validate(self, group: Mapping[str, Any]) -> None:
        super().validate(group)
        self._clip.validate(group)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        batches, outs, full = self._moments(ctx)
        thr = ctx.group["clip_threshold"]
        f = ctx.foreach
        out: list[Tensor] = list(updates)
        for js, o in zip(batches, outs):
            m, n = o.shape[1], o.shape[2]
            r = _stack([ctx.states[i]["v_row"] for i in js])
            d = _stack([ctx.states[i]["v_col"] for i in js]).rsqrt().unsqueeze(1)  # 1 / sqrt(s_j)
            c2 = vector_sums(r) / r  # c_i^2 = 1^T r / r_i
            _scaled_into(ctx, updates, js, d, o)
            c = c2.sqrt()
            if thr is not None:
                nrm = vector_sums(row_sums_of_squares(o).mul_(c2)).sqrt_()  # ||X c d^T||, k x 1
                c.div_(nrm.mul_(1.0 / (math.sqrt(max(m * n, 1)) * thr)).clamp_min_(1.0))
            o.mul_(c.unsqueeze(2))
            _publish(ctx, js, o, updates, out)
        if full:
            v = [ctx.states[i]["v_full"] for i in full]
            u = _binary([updates[i] for i in full], ops.sqrt(v, f), "div", f)
            if thr is not None:
                rms_clip_(u, thr, f)
            for i, x in zip(full, u):
                out[i] = x
        return ctx.fresh(out)

    def __repr__(self) -> str:
        return f"scale_by_clipped_factored_rms(hp={self.hp!r}, index={self.index})"


class ScaleByRms(Transform):
    """Unfactored second moment with the bias-corrected decay (seed 000, Algorithm 6)::

        V = b2_t V + (1 - b2_t) G^2          # state exp_avg_sq; b2 = group[hp][index]
        return updates / (sqrt(V) + eps)

    Statistics come from ``ctx.grads``. Reads ``betas`` and ``eps``.
    """

    state_keys = ("exp_avg_sq",)
    splits = ELEMENT

    def __init__(self, hp: str = "betas", index: int | None = 1) -> None:
        self.hp, self.index = hp, index
        self.hyperparams = (hp, "eps")

    def validate(self, group: Mapping[str, Any]) -> None:
        _check_beta(group, self.hp, self.index)
        V.check_eps(group["eps"])

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        state["exp_avg_sq"] = state_like(param, group)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        f = ctx.foreach
        v = ctx.state("exp_avg_sq")
        sq = _binary(ctx.grads, ctx.grads, "mul", f)
        decays = _decays(_beta(ctx.group, self.hp, self.index), ctx.steps, True)
        ops.lerp_(v, sq, [1.0 - d for d in decays], f)
        den = ops.sqrt(v, f)
        ops.add_(den, ctx.group["eps"], f)
        return ctx.fresh(_binary(updates, den, "div", f))

    def __repr__(self) -> str:
        return f"scale_by_rms(hp={self.hp!r}, index={self.index})"


# ---------------------------------------------------------------------------- first moment
class FactoredMomentum(Transform):
    """The factored first moment of seed 000 (section 4.2; Algorithms 2, 3 and 4).

    With ``g_r = G 1_n / n`` (row means, length ``m``) and ``g_c = G^T 1_m / m`` (column
    means, length ``n``), ``b = group[hp][index]`` (``b_t`` = its bias-corrected decay when
    ``corrected_decay``, else ``b``)::

        single beta (state_index None):             double beta (Lion, state_index given):
          u = b_t u + (1 - b_t) g_r                   u~ = b u + (1 - b) g_r - g_r
          u~ = u - g_r   (u if not corrected)         u  = b' u + (1 - b') g_r,  b' = group[hp][state_index]
        a = b_t u~ if scale_by_beta else u~          (and the same for v, g_c, giving b)

    ``corrected`` (the paper's "corrected terms", default True; False is the ablation) is
    read from the group key ``corrected`` when present. The transform passes ``updates``
    through unchanged and leaves ``(a, b)`` per parameter in ``ctx.scratch`` for a reshaper
    (:func:`scale_by_factored_phi_psi`, :func:`add_normalized_factored_momentum`), which
    forms ``a 1_n^T`` and ``1_m b^T``.

    State: ``mom_row`` (m,) and ``mom_col`` (n,); fallback (0-d/1-d or ``factored=False``):
    ``mom_full`` ``M`` (the shape of the parameter) with the same rule on ``G`` itself, and
    ``a = b = M~``. With ``vectors_as_rows=True`` 0-d/1-d tensors of a factored group use the
    factored rule on their ``1 x n`` view instead (H-Fac, ALGORITHMS.md section 1).
    """

    state_keys = ("mom_row", "mom_col", "mom_full")
    splits = TENSOR  # row and column statistics of whole matrices

    def __init__(self, hp: str = "betas", index: int | None = 0, state_index: int | None = None,
                 corrected_decay: bool = True, scale_by_beta: bool = True, vectors_as_rows: bool = False) -> None:
        self.hp, self.index, self.state_index = hp, index, state_index
        self.corrected_decay, self.scale_by_beta = corrected_decay, scale_by_beta
        self.vectors_as_rows = vectors_as_rows
        self.hyperparams = (hp, "corrected", "factored")

    def validate(self, group: Mapping[str, Any]) -> None:
        _check_beta(group, self.hp, self.index)
        if self.state_index is not None:
            _check_beta(group, self.hp, self.state_index)
        c = group.get("corrected", True)
        if not isinstance(c, bool):
            raise ValueError(f"Invalid corrected: {c!r} (expected True or False)")
        _check_factored(group)

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        if _factored_here(param, group, self.vectors_as_rows):
            m, n = _as_matrix(param).shape
            state["mom_row"] = state_like(param, group, (m,))
            state["mom_col"] = state_like(param, group, (n,))
        else:
            state["mom_full"] = state_like(param, group)

    def _terms(self, bufs: list[Tensor], means: list[Tensor], decays: list[Any], b2: Any,
               corrected: bool, f: bool) -> list[Tensor]:
        if self.state_index is None:
            ops.lerp_(bufs, means, [1.0 - d for d in decays], f)
            if corrected:
                terms = _binary(bufs, means, "sub", f)
            elif self.scale_by_beta:
                return ops.mul(bufs, decays, f)
            else:
                terms = ops.clone(bufs)
        else:
            terms = _ema(bufs, means, decays, f)
            if corrected:
                ops.add_(terms, means, f, alpha=-1.0)
            ops.lerp_(bufs, means, 1.0 - b2, f)
        if self.scale_by_beta:
            ops.mul_(terms, ops.uniform(decays), f)
        return terms

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        f = ctx.foreach
        b = _beta(ctx.group, self.hp, self.index)
        b2 = None if self.state_index is None else _beta(ctx.group, self.hp, self.state_index)
        corrected = bool(ctx.group.get("corrected", True))
        decays = _decays(b, ctx.steps, self.corrected_decay)
        fac, full = _split(ctx, "mom_row")
        batches = _groups(ctx, fac)
        # The vectors of every batch go through the same multi-tensor ops at once: u and v
        # of each factored matrix, then M of each unfactored tensor (rows of the sums are views).
        bufs: list[Tensor] = []
        means: list[Tensor] = []
        ds: list[Any] = []
        for js in batches:
            g = _stacked_grads(ctx, js)
            m, n = g.shape[1], g.shape[2]
            rows, cols = row_col_sums(g)
            rows.div_(max(n, 1))  # G 1_n / n
            cols.div_(max(m, 1))  # G^T 1_m / m
            for i, rk, ck in zip(js, rows.unbind(0), cols.unbind(0)):
                bufs += (ctx.states[i]["mom_row"], ctx.states[i]["mom_col"])
                means += (rk, ck)
                ds += (decays[i], decays[i])
        nv = len(bufs)
        bufs += [ctx.states[i]["mom_full"] for i in full]
        means += [ctx.grads[i] for i in full]
        ds += [decays[i] for i in full]
        terms = self._terms(bufs, means, ds, b2, corrected, f) if bufs else []
        groups: list[tuple[tuple[int, ...], Tensor, Tensor]] = []
        pos = 0
        for js in batches:
            k = len(js)
            groups.append((js, _stack(terms[pos:pos + 2 * k:2]), _stack(terms[pos + 1:pos + 2 * k:2])))
            pos += 2 * k
        fulls = dict(zip(full, terms[nv:]))
        ctx.scratch[MOMENTUM_TERMS] = (ctx.grads, groups, fulls)
        return updates

    def __repr__(self) -> str:
        return (f"factored_momentum(hp={self.hp!r}, index={self.index}, state_index={self.state_index}, "
                f"corrected_decay={self.corrected_decay}, scale_by_beta={self.scale_by_beta}, "
                f"vectors_as_rows={self.vectors_as_rows})")


def _momentum_terms(ctx: StepContext, second_moment: bool = False
                    ) -> tuple[list[tuple[tuple[int, ...], Tensor, Tensor]], dict[int, Tensor]]:
    """What :class:`FactoredMomentum` left for this chain: stacked ``(a, b)`` per shape group
    (``k x m`` and ``k x n``) and the full ``M~`` of the unfactored parameters.
    ``second_moment``: check that the factored second moment treats the same parameters as
    factored (``vectors_as_rows`` set alike on both transforms)."""
    hit = ctx.scratch.get(MOMENTUM_TERMS)
    if hit is None or hit[0] is not ctx.grads:
        raise RuntimeError("a factored reshaper needs factored_momentum() earlier in the same chain")
    if second_moment and (any("v_row" not in ctx.states[i] for js, _, _ in hit[1] for i in js)
                          or any("v_full" not in ctx.states[i] for i in hit[2])):
        raise RuntimeError("factored_momentum() and the factored second moment disagree on which tensors "
                           "are factored: pass the same vectors_as_rows to both")
    return hit[1], hit[2]


# ---------------------------------------------------------------------------- reshapers
Reshaper = str | Callable[[Tensor], Tensor]


def _apply(fn: Reshaper, xs: list[Tensor], foreach: bool) -> list[Tensor]:
    if fn == "sign":
        return ops.sign_(xs, foreach)
    if fn == "identity":
        return xs
    return [fn(x) for x in xs]  # type: ignore[operator]


class ScaleByFactoredPhiPsi(Transform):
    """The factored first-order update of seed 000, section 4.2 (Algorithms 2 and 4)::

        return grad phi(a 1_n^T + G) + grad psi(1_m b^T + G)

    with ``(a, b)`` left by :func:`factored_momentum` earlier in the chain and ``G`` from
    ``ctx.grads``. ``phi``/``psi`` are ``"sign"`` (``phi = ||.||_1``, signFSGD and
    LionFactor), ``"identity"`` (``phi = ||.||^2 / 2``) or an element-wise callable
    ``Tensor -> Tensor`` (the gradient of a convex function). For the unfactored fallback
    ``a 1^T`` and ``1 b^T`` are both the full ``M~``, so the sign version gives
    ``2 sign(M~ + G)``.
    """

    splits = TENSOR

    def __init__(self, phi: Reshaper = "sign", psi: Reshaper = "sign") -> None:
        self.phi, self.psi = phi, psi

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        f = ctx.foreach
        groups, fulls = _momentum_terms(ctx)
        out: list[Tensor] = list(updates)
        # psi's argument goes to one scratch buffer shared by the batches (largest first); a
        # batch's stacked copy of G (k > 1, made for this step) becomes its result.
        tmp: Tensor | None = None
        for js, a, b in sorted(groups, key=lambda t: -_stacked_grads(ctx, t[0]).numel()):
            g = _stacked_grads(ctx, js)
            blocks = _row_blocks(g)
            if blocks is not None:  # CPU, large matrix: both arguments of a block of rows in cache
                x = ctx.take(g)
                for sl in blocks:
                    gb = g[:, sl]
                    yb = _apply(self.psi, [gb + b.unsqueeze(1)], f)[0]
                    xb = _apply(self.phi, [gb + a[:, sl].unsqueeze(2)], f)[0]
                    torch.add(xb, yb, out=x[:, sl])
            else:
                if tmp is None:
                    tmp = torch.empty(g.numel(), dtype=g.dtype, device=g.device)
                y = _apply(self.psi, [torch.add(g, b.unsqueeze(1), out=tmp[:g.numel()].view(g.shape))], f)[0]
                if len(js) > 1:  # our copy: phi's argument in place, and no one reads it as G again
                    ctx.scratch.pop(("factored_stack", js), None)
                    x = _apply(self.phi, [g.add_(a.unsqueeze(2))], f)[0]
                else:
                    x = _apply(self.phi, [g + a.unsqueeze(2)], f)[0]
                x.add_(y)
            for i, v in _unstacked(x, js, ctx.grads):
                out[i] = v
        if fulls:
            idx = list(fulls)
            x = _binary([ctx.grads[i] for i in idx], [fulls[i] for i in idx], "add", f)
            if self.phi == self.psi and isinstance(self.phi, str):
                ops.mul_(_apply(self.phi, x, f), 2.0, f)  # phi(x) + phi(x), exactly
            else:
                y = _apply(self.psi, ops.clone(x), f)
                x = _apply(self.phi, x, f)
                ops.add_(x, y, f)
            for i, v in zip(idx, x):
                out[i] = v
        return ctx.fresh(out)

    def __repr__(self) -> str:
        return f"scale_by_factored_phi_psi(phi={self.phi!r}, psi={self.psi!r})"


class AddNormalizedFactoredMomentum(Transform):
    """H-Fac's normalized factored momentum (seed 000, Algorithm 3)::

        phi = a 1_n^T / sqrt(r 1_n^T / n)         # a = b1_t (u - G 1_n / n) from factored_momentum
        psi = 1_m b^T / sqrt(1_m s^T / m)         # r, s: v_row, v_col of scale_by_factored_rms
        return updates + coef * (phi + psi)       # coef = 0.5

    Must follow :func:`factored_momentum` and :func:`scale_by_factored_rms` in the chain.
    Fallback (``v_full``, full ``M~``): ``updates + 2 coef M~ / sqrt(v)``.
    """

    splits = TENSOR

    def __init__(self, coef: float = 0.5) -> None:
        self.coef = coef

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        f = ctx.foreach
        groups, fulls = _momentum_terms(ctx, second_moment=True)
        out = ctx.writable(updates)
        for js, a, b in groups:
            r = _stack([ctx.states[i]["v_row"] for i in js])
            s = _stack([ctx.states[i]["v_col"] for i in js])
            m, n = r.shape[1], s.shape[1]
            pa = a / (r / max(n, 1)).sqrt_()  # a / sqrt(r / n)
            pb = b / (s / max(m, 1)).sqrt_()  # b / sqrt(s / m)
            pa.mul_(self.coef)
            pb.mul_(self.coef)
            st = _stacked_out(ctx, js, out)
            if st is not None:  # the batch's update is one k x m x n tensor: two launches
                st.add_(pa.unsqueeze(2))
                st.add_(pb.unsqueeze(1))
                continue
            for k, i in enumerate(js):
                x = _as_matrix(out[i])
                x.add_(pa[k].unsqueeze(1))
                x.add_(pb[k])
        if fulls:
            idx = list(fulls)
            p = _binary([fulls[i] for i in idx], ops.sqrt([ctx.states[i]["v_full"] for i in idx], f), "div", f)
            ops.mul_(p, 2.0 * self.coef, f)  # coef (phi + psi) with phi = psi = M~ / sqrt(v)
            ops.add_([out[i] for i in idx], p, f)
        return out

    def __repr__(self) -> str:
        return f"add_normalized_factored_momentum(coef={self.coef})"


class ScaleByHFac(ScaleByFactoredRms):
    """H-Fac's whole direction after the first moment (seed 000, Algorithm 3), in few passes::

        D = clip_d(G / sqrt(V)) + coef (phi + psi)       # coef = 0.5; no clipping when d is None

    The same rule, step for step, as ``chain(scale_by_factored_rms(), clip_by_rms(),
    add_normalized_factored_momentum(coef))`` (same state ``v_row``, ``v_col``, ``v_full``, so
    checkpoints of either load in the other), with ``(a, b)`` from :func:`factored_momentum`
    earlier in the chain. It reads ``betas``, ``eps``, ``factored`` and ``clip_threshold``.

    For an ``m x n`` matrix, with ``c_i = sqrt(1^T r / r_i)`` and ``d_j = 1 / sqrt(s_j)``,
    ``G / sqrt(V) = G_ij c_i d_j``, whose squared RMS is ``sum_i c_i^2 (G^2 d^2)_i / (mn)``:
    one scaled row sum of squares (:func:`scaled_row_sums_of_squares`: one product with the
    ``G^2`` buffer on the CPU, ``G d^T`` and its row norms elsewhere), so the clip factor ``kappa`` is known
    before the update is written. ``phi = c_i alpha_i`` with ``alpha_i = coef a_i sqrt(n / 1^T r)``
    and ``psi = beta_j = coef b_j sqrt(m / s_j)``, hence::

        D_ij = c_i (kappa d_j G_ij + alpha_i) + beta_j

    two element-wise passes (``addcmul``) into the batch's fresh buffer. Unfactored
    tensors, and calls whose ``updates`` are not the gradients, run the three transforms.
    """

    def __init__(self, coef: float = 0.5, hp: str = "betas", index: int | None = 1,
                 vectors_as_rows: bool = False) -> None:
        super().__init__(hp=hp, index=index, vectors_as_rows=vectors_as_rows)
        self.coef = coef
        self.hyperparams = (hp, "eps", "factored", "clip_threshold")
        self._clip = ClipByRms()
        self._add = AddNormalizedFactoredMomentum(coef)

    def validate(self, group: Mapping[str, Any]) -> None:
        super().validate(group)
        self._clip.validate(group)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        if updates is not ctx.grads:  # e.g. after a momentum transform: the composed rule
            out = self._clip.update(ctx, ScaleByFactoredRms.update(self, ctx, updates))
            return self._add.update(ctx, out)
        groups, fulls = _momentum_terms(ctx, second_moment=True)
        terms = {js: (a, b) for js, a, b in groups}
        batches, outs, full = self._moments(ctx)
        thr = ctx.group["clip_threshold"]
        f = ctx.foreach
        coef = self.coef
        out: list[Tensor] = list(updates)
        for js, o in zip(batches, outs):
            a, b = terms[js]
            g = _stacked_grads(ctx, js)
            m, n = g.shape[1], g.shape[2]
            r = _stack([ctx.states[i]["v_row"] for i in js])
            s = _stack([ctx.states[i]["v_col"] for i in js])
            tot = vector_sums(r)  # 1^T r, k x 1
            c2 = tot / r  # c_i^2 = 1^T r / r_i
            c = c2.sqrt()
            d = s.rsqrt()  # d_j = 1 / sqrt(s_j)
            beta = (b * d).mul_(coef * math.sqrt(m))  # coef b_j sqrt(m / s_j)
            alpha = a * tot.rsqrt().mul_(coef * math.sqrt(n))  # coef a_i sqrt(n / 1^T r)
            if thr is not None:
                # ||G c d^T|| before the update is written; kappa = 1 / max(1, RMS / d) folded into d
                sq = scaled_row_sums_of_squares(g, d, o if holds_squares(o) else None, out=o).mul_(c2)
                nrm = vector_sums(sq).sqrt_()
                d.div_(nrm.mul_(1.0 / (math.sqrt(max(m * n, 1)) * thr)).clamp_min_(1.0))
            torch.addcmul(alpha.unsqueeze(2), g, d.unsqueeze(1), out=o)
            torch.addcmul(beta.unsqueeze(1), o, c.unsqueeze(2), out=o)
            _publish(ctx, js, o, updates, out)
        if full:
            v = [ctx.states[i]["v_full"] for i in full]
            den = ops.sqrt(v, f)
            u = _binary([updates[i] for i in full], den, "div", f)
            if thr is not None:
                rms_clip_(u, thr, f)
            p = _binary([fulls[i] for i in full], den, "div", f)
            ops.mul_(p, 2.0 * coef, f)  # coef (phi + psi) with phi = psi = M~ / sqrt(v)
            ops.add_(u, p, f)
            for i, x in zip(full, u):
                out[i] = x
        return ctx.fresh(out)

    def __repr__(self) -> str:
        return (f"scale_by_hfac(coef={self.coef}, hp={self.hp!r}, index={self.index}, "
                f"vectors_as_rows={self.vectors_as_rows})")


# ---------------------------------------------------------------------------- factories
def scale_by_factored_rms(hp: str = "betas", index: int | None = 1, vectors_as_rows: bool = False
                          ) -> ScaleByFactoredRms:
    """See :class:`ScaleByFactoredRms`."""
    return ScaleByFactoredRms(hp=hp, index=index, vectors_as_rows=vectors_as_rows)


def scale_by_clipped_factored_rms(hp: str = "betas", index: int | None = 1) -> ScaleByClippedFactoredRms:
    """``chain(scale_by_factored_rms(), clip_by_rms())`` in fewer passes; see
    :class:`ScaleByClippedFactoredRms`."""
    return ScaleByClippedFactoredRms(hp=hp, index=index)


def scale_by_rms(hp: str = "betas", index: int | None = 1) -> ScaleByRms:
    """See :class:`ScaleByRms`."""
    return ScaleByRms(hp=hp, index=index)


def factored_momentum(hp: str = "betas", index: int | None = 0, state_index: int | None = None,
                      corrected_decay: bool = True, scale_by_beta: bool = True,
                      vectors_as_rows: bool = False) -> FactoredMomentum:
    """See :class:`FactoredMomentum`."""
    return FactoredMomentum(hp=hp, index=index, state_index=state_index, corrected_decay=corrected_decay,
                            scale_by_beta=scale_by_beta, vectors_as_rows=vectors_as_rows)


def scale_by_factored_phi_psi(phi: Reshaper = "sign", psi: Reshaper = "sign") -> ScaleByFactoredPhiPsi:
    """See :class:`ScaleByFactoredPhiPsi`."""
    return ScaleByFactoredPhiPsi(phi=phi, psi=psi)


def scale_by_factored_sign() -> ScaleByFactoredPhiPsi:
    """``sign(a 1^T + G) + sign(1 b^T + G)`` (signFSGD, LionFactor); see :class:`ScaleByFactoredPhiPsi`."""
    return ScaleByFactoredPhiPsi("sign", "sign")


def add_normalized_factored_momentum(coef: float = 0.5) -> AddNormalizedFactoredMomentum:
    """See :class:`AddNormalizedFactoredMomentum`."""
    return AddNormalizedFactoredMomentum(coef=coef)


def scale_by_hfac(coef: float = 0.5, hp: str = "betas", index: int | None = 1,
                  vectors_as_rows: bool = False) -> ScaleByHFac:
    """H-Fac's ``clip_d(G / sqrt(V)) + coef (phi + psi)`` in few passes; see :class:`ScaleByHFac`
    (``vectors_as_rows=True``, as :class:`~hamopt.optim.hfac.HFac` uses it: 0-d/1-d tensors on
    their ``1 x n`` view, with :func:`factored_momentum` set alike)."""
    return ScaleByHFac(coef=coef, hp=hp, index=index, vectors_as_rows=vectors_as_rows)

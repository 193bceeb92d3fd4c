"""Batched, blocked and fused versions of the factored family's rules (H-Fac paper, seed 000).

The rules are in :mod:`hamopt.transforms.factored`, one tensor at a time; the fast paths
here compute the same rules with the machinery that makes them fast, and
:meth:`~hamopt.core.transform.Transform.run` picks them automatically (``tests/test_fast_paths.py``
compares each with its reference in float64 over many steps, parameters and every state
tensor):

- ``factored_rms_batched``: :class:`~hamopt.transforms.ScaleByFactoredRms`.
- ``clipped_factored_rms_fused``: :class:`~hamopt.transforms.ScaleByClippedFactoredRms`, i.e.
  ``chain(scale_by_factored_rms(), clip_by_rms())``: the clip factor from the row norms of
  ``X d^T`` (one read instead of a read and a read-write).
- ``factored_phi_psi_blocked``: :class:`~hamopt.transforms.ScaleByFactoredPhiPsi` with the
  :class:`~hamopt.transforms.FactoredMomentum` it owns: CPU row blocks of large matrices
  (both arguments of a block in cache).
- ``normalized_momentum_batched``: :class:`~hamopt.transforms.AddNormalizedFactoredMomentum`
  with its momentum.
- ``hfac_closed_form``: :class:`~hamopt.transforms.ScaleByHFac` with its momentum, i.e.
  ``chain(scale_by_factored_rms(), clip_by_rms(), add_normalized_factored_momentum(momentum=...))``:
  H-Fac's direction in two element-wise passes (``addcmul``) into one buffer.

What they share:

* **batches**: with ``foreach``, matrices of one shape and step count are stacked into a
  ``k x m x n`` batch (one kernel per operation for the batch; :func:`_groups`), except on
  the CPU, where no launch is saved and every matrix is its own batch (a view, no copy);
* **reductions**: on the CPU, column sums are products with ``1_m`` (several times faster
  than ``sum(dim=-2)`` there; :func:`row_col_sums`), elsewhere plain sums (exact under TF32);
* **buffers**: the update of a batch is written into a buffer from the step's workspace
  (pooled on CPU pieces), which first holds ``G^2`` on the CPU;
* **one gradient stack**: a fast path that runs a first moment and a direction (the
  momentum a reshaper owns, H-Fac's two moments) stacks a batch's gradients once for all of
  them (:data:`Stacks`, local to the call).

Measured when introduced (LLaMA-60M shapes, one CPU thread, same rounds): not stacking on
the CPU about 10% faster; the sign reshaper's row blocks and the H-Fac closed form are what
keep signFSGD near and H-Fac within 1.5x of torch's fused AdamW.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..core import ops, reductions
from ..core.reductions import (
    holds_squares,
    row_col_sums,
    row_sums_of_squares,
    scaled_row_sums_of_squares,
    vector_sums,
)
from ..core.transform import FastPath, StepContext, Transform, always, register_fast_path
from ..transforms.common import rms_clip_
from ..transforms.factored import (
    AddNormalizedFactoredMomentum,
    FactoredMomentum,
    Reshaper,
    ScaleByClippedFactoredRms,
    ScaleByFactoredPhiPsi,
    ScaleByFactoredRms,
    ScaleByHFac,
    _as_matrix,
    _beta,
    _binary,
    _decays,
    check_layouts,
)

__all__ = ["CLIPPED_FACTORED_RMS", "FACTORED_PHI_PSI", "FACTORED_RMS", "HFAC",
           "NORMALIZED_MOMENTUM", "holds_squares", "row_col_sums", "row_sums_of_squares",
           "scaled_row_sums_of_squares", "vector_sums"]

#: The gradient stack of each batch (``k x m x n``, a view when ``k = 1``), made once per call
#: of a fast path and shared by its steps (the first moment, the second, the direction).
Stacks = dict[tuple[int, ...], Tensor]
#: The first moment's terms per batch (stacked ``a`` ``k x m``, ``b`` ``k x n``) and the full ``M~``.
Terms = tuple[list[tuple[tuple[int, ...], Tensor, Tensor]], dict[int, Tensor]]


#: On the CPU, the phi/psi reshaper works on matrices with more entries than this in blocks
#: of rows of about this many entries: both arguments of a block and their images stay in
#: cache and the result is written once, where whole-matrix passes would stream an
#: embedding-sized matrix and two temporaries through memory once per operation. (The
#: second-moment paths gain nothing measurable from blocks: their cost there is the fresh
#: update buffer, which they need either way.)
CPU_BLOCK_NUMEL = 1 << 18


def _row_blocks(x: Tensor) -> list[slice] | None:
    """Row slices of a matrix (or a ``k x m x n`` stack) for blockwise CPU passes, or ``None``
    for whole-matrix passes (other devices, and matrices of at most :data:`CPU_BLOCK_NUMEL`)."""
    m, n = x.shape[-2], x.shape[-1]
    if m < 2 or m * n <= CPU_BLOCK_NUMEL or not reductions.reduce_by_matmul(x):
        return None
    step = max(1, CPU_BLOCK_NUMEL // max(n, 1))
    return [slice(i, min(i + step, m)) for i in range(0, m, step)]


# ---------------------------------------------------------------------------- batches
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


def _stacked_grads(ctx: StepContext, js: tuple[int, ...], stacks: Stacks) -> Tensor:
    """``k x m x n`` stack of the gradients at ``js``, made once per fast call."""
    st = stacks.get(js)
    if st is None:
        st = stacks[js] = _stack([_as_matrix(ctx.grads[i]) for i in js])
    return st


def _unstacked(st: Tensor, js: tuple[int, ...], like: Sequence[Tensor]) -> list[tuple[int, Tensor]]:
    """``(index, view)`` pairs of a ``k x m x n`` stack in the shapes of ``like``."""
    return [(i, x if like[i].dim() == 2 else x.view(like[i].shape)) for i, x in zip(js, st.unbind(0))]


def _scaled_into(ctx: StepContext, updates: Sequence[Tensor], js: tuple[int, ...], scale: Tensor,
                 o: Tensor, stacks: Stacks) -> None:
    """``o = stack(updates[js]) * scale`` (``k x m x n``), with no extra copy when the updates
    are the gradients (their stack is shared per step) or a single matrix."""
    if updates is ctx.grads:
        torch.mul(_stacked_grads(ctx, js, stacks), scale, out=o)
    elif len(js) == 1:
        torch.mul(_as_matrix(updates[js[0]]).unsqueeze(0), scale, out=o)
    else:
        torch.stack([_as_matrix(updates[i]) for i in js], out=o)
        o.mul_(scale)


def _publish(js: tuple[int, ...], o: Tensor, like: Sequence[Tensor], out: list[Tensor]) -> None:
    """Hand the batch ``o`` out as per-parameter views (``out[i]``)."""
    for i, x in _unstacked(o, js, like):
        out[i] = x


# ---------------------------------------------------------------------------- list helpers
def _ema(bufs: list[Tensor], news: Sequence[Tensor], decays: Sequence[Any], foreach: bool) -> list[Tensor]:
    """Fresh ``d buf + (1 - d) new`` (the state is left alone), one decay ``d`` per tensor."""
    weights = [1.0 - d for d in decays]
    if foreach and bufs and not any(isinstance(w, Tensor) for w in weights):
        return list(torch._foreach_lerp(bufs, list(news), ops.uniform(weights)))
    return [torch.lerp(b, x, w.to(b.dtype) if isinstance(w, Tensor) else w) for b, x, w in zip(bufs, news, weights)]


def _split(ctx: StepContext, key: str) -> tuple[list[int], list[int]]:
    """Indices of the factored parameters (state has ``key``) and of the others."""
    fac = [i for i, s in enumerate(ctx.states) if key in s]
    full = [i for i, s in enumerate(ctx.states) if key not in s]
    return fac, full


# ---------------------------------------------------------------------------- second moment
def _moments(t: ScaleByFactoredRms, ctx: StepContext, stacks: Stacks
             ) -> tuple[list[tuple[int, ...]], list[Tensor], list[int]]:
    """Update ``r, s`` (and ``v`` of unfactored tensors) for this step; return the batches,
    one fresh ``k x m x n`` buffer per batch (holding ``G^2`` when :func:`holds_squares`,
    free to overwrite) and the indices of the unfactored tensors."""
    eps = ctx.group["eps"]
    decays = _decays(_beta(ctx.group, t.hp, t.index), ctx.steps, True)
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
        g = _stacked_grads(ctx, js, stacks)  # k x m x n (a view when k = 1)
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


def _factored_rms(t: Transform, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
    """:class:`ScaleByFactoredRms`: ``updates / sqrt(V)`` per batch into its buffer."""
    assert isinstance(t, ScaleByFactoredRms)
    stacks: Stacks = {}
    batches, outs, full = _moments(t, ctx, stacks)
    f = ctx.foreach
    out: list[Tensor] = list(updates)
    for js, o in zip(batches, outs):
        r = _stack([ctx.states[i]["v_row"] for i in js])
        s = _stack([ctx.states[i]["v_col"] for i in js])
        # 1 / sqrt(V_ij) = sqrt(1^T r) / sqrt(r_i) / sqrt(s_j)
        rr = r.rsqrt().mul_(vector_sums(r).sqrt_())
        _scaled_into(ctx, updates, js, rr.unsqueeze(2), o, stacks)
        o.mul_(s.rsqrt().unsqueeze(1))
        _publish(js, o, updates, out)
    if full:
        v = [ctx.states[i]["v_full"] for i in full]
        o_full = _binary([updates[i] for i in full], ops.sqrt(v, f), "div", f)
        for i, x in zip(full, o_full):
            out[i] = x
    return ctx.fresh(out)


def _clipped_factored_rms(t: Transform, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
    """``chain(scale_by_factored_rms(), clip_by_rms())``: with ``c_i = sqrt(1^T r / r_i)`` and
    ``d_j = 1 / sqrt(s_j)`` the update of a matrix ``X`` is ``X_ij c_i d_j``; ``Y = X d^T`` is
    written first, whose row norms give ``RMS^2 = sum_i c_i^2 ||Y_i||^2 / (mn)``, then
    ``Y *= kappa c`` with ``kappa = 1 / max(1, RMS / d)``."""
    assert isinstance(t, ScaleByClippedFactoredRms)
    stacks: Stacks = {}
    batches, outs, full = _moments(t, ctx, stacks)
    thr = ctx.group["clip_threshold"]
    f = ctx.foreach
    out: list[Tensor] = list(updates)
    for js, o in zip(batches, outs):
        m, n = o.shape[1], o.shape[2]
        r = _stack([ctx.states[i]["v_row"] for i in js])
        d = _stack([ctx.states[i]["v_col"] for i in js]).rsqrt().unsqueeze(1)  # 1 / sqrt(s_j)
        c2 = vector_sums(r) / r  # c_i^2 = 1^T r / r_i
        _scaled_into(ctx, updates, js, d, o, stacks)
        c = c2.sqrt()
        if thr is not None:
            nrm = vector_sums(row_sums_of_squares(o).mul_(c2)).sqrt_()  # ||X c d^T||, k x 1
            c.div_(nrm.mul_(1.0 / (math.sqrt(max(m * n, 1)) * thr)).clamp_min_(1.0))
        o.mul_(c.unsqueeze(2))
        _publish(js, o, updates, out)
    if full:
        v = [ctx.states[i]["v_full"] for i in full]
        u = _binary([updates[i] for i in full], ops.sqrt(v, f), "div", f)
        if thr is not None:
            rms_clip_(u, thr, f)
        for i, x in zip(full, u):
            out[i] = x
    return ctx.fresh(out)


# ---------------------------------------------------------------------------- first moment
def _terms(t: FactoredMomentum, bufs: list[Tensor], means: list[Tensor], decays: list[Any], b2: Any,
           corrected: bool, f: bool) -> list[Tensor]:
    """The moving averages of ``bufs`` and the terms ``a`` (or ``b``, ``M~``) of each, as lists."""
    if t.state_index is None:
        ops.lerp_(bufs, means, [1.0 - d for d in decays], f)
        if corrected:
            terms = _binary(bufs, means, "sub", f)
        elif t.scale_by_beta:
            return ops.mul(bufs, decays, f)
        else:
            terms = ops.clone(bufs)
    else:
        terms = _ema(bufs, means, decays, f)
        if corrected:
            ops.add_(terms, means, f, alpha=-1.0)
        ops.lerp_(bufs, means, 1.0 - b2, f)
    if t.scale_by_beta:
        ops.mul_(terms, ops.uniform(decays), f)
    return terms


def _batched_momentum(t: FactoredMomentum, ctx: StepContext, stacks: Stacks) -> Terms:
    """:meth:`FactoredMomentum.terms`, every vector of the bucket through the same multi-tensor
    ops; the terms stacked per batch."""
    f = ctx.foreach
    b = _beta(ctx.group, t.hp, t.index)
    b2 = None if t.state_index is None else _beta(ctx.group, t.hp, t.state_index)
    corrected = bool(ctx.group.get("corrected", True))
    decays = _decays(b, ctx.steps, t.corrected_decay)
    fac, full = _split(ctx, "mom_row")
    batches = _groups(ctx, fac)
    # u and v of each factored matrix, then M of each unfactored tensor (rows of the sums are views).
    bufs: list[Tensor] = []
    means: list[Tensor] = []
    ds: list[Any] = []
    for js in batches:
        g = _stacked_grads(ctx, js, stacks)
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
    terms = _terms(t, bufs, means, ds, b2, corrected, f) if bufs else []
    groups: list[tuple[tuple[int, ...], Tensor, Tensor]] = []
    pos = 0
    for js in batches:
        k = len(js)
        groups.append((js, _stack(terms[pos:pos + 2 * k:2]), _stack(terms[pos + 1:pos + 2 * k:2])))
        pos += 2 * k
    return groups, dict(zip(full, terms[nv:]))


def _momentum(t: Transform, ctx: StepContext, stacks: Stacks) -> Terms:
    """The terms of the first moment that ``t`` owns."""
    return _batched_momentum(t.owned(), ctx, stacks)  # type: ignore[attr-defined]


def _check_layouts(ctx: StepContext, terms: Terms) -> None:
    """:func:`~hamopt.transforms.factored.check_layouts` on stacked terms."""
    check_layouts(ctx, [i for js, _, _ in terms[0] for i in js], terms[1])


# ---------------------------------------------------------------------------- reshapers
def _apply(fn: Reshaper, xs: list[Tensor], foreach: bool) -> list[Tensor]:
    if fn == "sign":
        return ops.sign_(xs, foreach)
    if fn == "identity":
        return xs
    return [fn(x) for x in xs]  # type: ignore[operator]


def _phi_psi(t: Transform, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
    """:class:`ScaleByFactoredPhiPsi` per batch, in row blocks of large matrices on the CPU."""
    assert isinstance(t, ScaleByFactoredPhiPsi)
    f = ctx.foreach
    stacks: Stacks = {}
    groups, fulls = _momentum(t, ctx, stacks)
    out: list[Tensor] = list(updates)
    # psi's argument goes to one scratch buffer shared by the batches (largest first); a
    # batch's stacked copy of G (k > 1, made for this step) becomes its result.
    tmp: Tensor | None = None
    for js, a, b in sorted(groups, key=lambda x: -_stacked_grads(ctx, x[0], stacks).numel()):
        g = _stacked_grads(ctx, js, stacks)
        blocks = _row_blocks(g)
        if blocks is not None:  # CPU, large matrix: both arguments of a block of rows in cache
            x = ctx.take(g)
            for sl in blocks:
                gb = g[:, sl]
                yb = _apply(t.psi, [gb + b.unsqueeze(1)], f)[0]
                xb = _apply(t.phi, [gb + a[:, sl].unsqueeze(2)], f)[0]
                torch.add(xb, yb, out=x[:, sl])
        else:
            if tmp is None:
                tmp = torch.empty(g.numel(), dtype=g.dtype, device=g.device)
            y = _apply(t.psi, [torch.add(g, b.unsqueeze(1), out=tmp[:g.numel()].view(g.shape))], f)[0]
            if len(js) > 1:  # our copy: phi's argument in place, and no one reads it as G again
                stacks.pop(js)
                x = _apply(t.phi, [g.add_(a.unsqueeze(2))], f)[0]
            else:
                x = _apply(t.phi, [g + a.unsqueeze(2)], f)[0]
            x.add_(y)
        for i, v in _unstacked(x, js, ctx.grads):
            out[i] = v
    if fulls:
        idx = list(fulls)
        x = _binary([ctx.grads[i] for i in idx], [fulls[i] for i in idx], "add", f)
        if t.phi == t.psi and isinstance(t.phi, str):
            ops.mul_(_apply(t.phi, x, f), 2.0, f)  # phi(x) + phi(x), exactly
        else:
            y = _apply(t.psi, ops.clone(x), f)
            x = _apply(t.phi, x, f)
            ops.add_(x, y, f)
        for i, v in zip(idx, x):
            out[i] = v
    return ctx.fresh(out)


def _add_normalized(ctx: StepContext, updates: list[Tensor], terms: Terms, coef: float) -> list[Tensor]:
    """:func:`~hamopt.transforms.factored.add_normalized_momentum` per batch."""
    _check_layouts(ctx, terms)
    groups, fulls = terms
    f = ctx.foreach
    out = ctx.writable(updates)
    for js, a, b in groups:
        r = _stack([ctx.states[i]["v_row"] for i in js])
        s = _stack([ctx.states[i]["v_col"] for i in js])
        m, n = r.shape[1], s.shape[1]
        pa = a / (r / max(n, 1)).sqrt_()  # a / sqrt(r / n)
        pb = b / (s / max(m, 1)).sqrt_()  # b / sqrt(s / m)
        pa.mul_(coef)
        pb.mul_(coef)
        for k, i in enumerate(js):
            x = _as_matrix(out[i])
            x.add_(pa[k].unsqueeze(1))
            x.add_(pb[k])
    if fulls:
        idx = list(fulls)
        p = _binary([fulls[i] for i in idx], ops.sqrt([ctx.states[i]["v_full"] for i in idx], f), "div", f)
        ops.mul_(p, 2.0 * coef, f)  # coef (phi + psi) with phi = psi = M~ / sqrt(v)
        ops.add_([out[i] for i in idx], p, f)
    return out


def _normalized_momentum(t: Transform, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
    """:class:`AddNormalizedFactoredMomentum` per batch."""
    assert isinstance(t, AddNormalizedFactoredMomentum)
    return _add_normalized(ctx, updates, _momentum(t, ctx, {}), t.coef)


# ---------------------------------------------------------------------------- H-Fac
def _hfac(t: Transform, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
    """:class:`ScaleByHFac` in closed form. For an ``m x n`` matrix, with ``c_i = sqrt(1^T r / r_i)``
    and ``d_j = 1 / sqrt(s_j)``, ``G / sqrt(V) = G_ij c_i d_j``, whose squared RMS is
    ``sum_i c_i^2 (G^2 d^2)_i / (mn)``: one scaled row sum of squares (one product with the
    ``G^2`` buffer on the CPU, ``G d^T`` and its row norms elsewhere), so the clip factor
    ``kappa`` is known before the update is written. ``phi = c_i alpha_i`` with
    ``alpha_i = coef a_i sqrt(n / 1^T r)`` and ``psi = beta_j = coef b_j sqrt(m / s_j)``, hence::

        D_ij = c_i (kappa d_j G_ij + alpha_i) + beta_j

    two element-wise passes (``addcmul``) into the batch's buffer. Calls whose ``updates``
    are not the gradients run the three composed fast paths."""
    assert isinstance(t, ScaleByHFac)
    stacks: Stacks = {}
    mom = _momentum(t, ctx, stacks)
    if updates is not ctx.grads:  # e.g. after a momentum transform: the composed rule
        out = t._clip.update(ctx, _factored_rms(t, ctx, updates))
        return _add_normalized(ctx, out, mom, t.coef)
    _check_layouts(ctx, mom)
    groups, fulls = mom
    terms = {js: (a, b) for js, a, b in groups}
    batches, outs, full = _moments(t, ctx, stacks)
    thr = ctx.group["clip_threshold"]
    f = ctx.foreach
    coef = t.coef
    out: list[Tensor] = list(updates)
    for js, o in zip(batches, outs):
        a, b = terms[js]
        g = _stacked_grads(ctx, js, stacks)
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
        _publish(js, o, updates, out)
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


FACTORED_RMS = register_fast_path(FastPath(ScaleByFactoredRms, "factored_rms_batched", always, _factored_rms))
CLIPPED_FACTORED_RMS = register_fast_path(
    FastPath(ScaleByClippedFactoredRms, "clipped_factored_rms_fused", always, _clipped_factored_rms))
FACTORED_PHI_PSI = register_fast_path(FastPath(ScaleByFactoredPhiPsi, "factored_phi_psi_blocked", always, _phi_psi))
NORMALIZED_MOMENTUM = register_fast_path(
    FastPath(AddNormalizedFactoredMomentum, "normalized_momentum_batched", always, _normalized_momentum))
HFAC = register_fast_path(FastPath(ScaleByHFac, "hfac_closed_form", always, _hfac))

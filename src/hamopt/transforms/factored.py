"""Factored moment transforms of the H-Fac paper (seed 000, ALGORITHMS.md section 1).

Son Nguyen, Lizhang Chen, Bo Liu and Qiang Liu, "H-Fac: Memory-Efficient Optimization with
Factorized Hamiltonian Descent" (arXiv:2406.09958). A matrix ``G`` of shape ``m x n`` (tensors
with more than two dims are viewed as ``dim0 x prod(rest)`` by
:func:`~hamopt.core.transform.as_matrix`) keeps rank-1 statistics instead of full ones:

* :func:`scale_by_factored_rms`: Adafactor's factored second moment (row sums ``r`` and
  column sums ``s`` of ``G^2 + eps``, reconstruction ``V = r s^T / 1^T r``), returning
  ``updates / sqrt(V)``; :func:`scale_by_clipped_factored_rms` adds the update clipping;
* :func:`factored_momentum`: the factored first moment (row means ``u`` and column means
  ``v`` of ``G``) with the paper's "corrected terms" ``u - G 1_n / n``, owned by the
  reshaper that uses its terms (``momentum=``);
* the reshapers: :func:`scale_by_factored_phi_psi` (``grad phi(a 1^T + G) + grad psi(1 b^T + G)``,
  :func:`scale_by_factored_sign` for ``phi = psi = ||.||_1``, Algorithms 2 and 4) and
  :func:`add_normalized_factored_momentum` (H-Fac's ``0.5 (phi + psi)``, Algorithm 3);
  :func:`scale_by_hfac` is H-Fac's whole direction after the first moment;
* :func:`scale_by_rms`: an unfactored second moment, ``updates / (sqrt(V) + eps)``, for the
  AdamW variant of Appendix C (Algorithm 6).

Each ``update`` here is the rule, one tensor at a time, written to be read. The batched,
blocked and fused versions that run by default (same-shape matrices stacked, row sums as
products on the CPU, row blocks, H-Fac's closed form) are in :mod:`hamopt.fast.factored`,
each naming the transform here that it implements.

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
gradients through a sub-context.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core import ops
from ..core import validation as V

# the reductions this module exported in 0.1 (the fast paths use them; the rules here do not)
from ..core.reductions import (  # noqa: F401
    holds_squares,
    row_col_sums,
    row_sums_of_squares,
    scaled_row_sums_of_squares,
    vector_sums,
)
from ..core.transform import ELEMENT, TENSOR, StepContext, Transform, as_matrix, is_matrix_like, state_like
from .common import ClipByRms, corrected_decay

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
    "is_factored",
    "scale_by_factored_phi_psi",
    "scale_by_clipped_factored_rms",
    "scale_by_factored_rms",
    "scale_by_factored_sign",
    "scale_by_hfac",
    "scale_by_rms",
]



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


def _decays(beta: Any, steps: Sequence[Any], corrected: bool) -> list[Any]:
    """Per-parameter decay: the bias-corrected ``beta_t`` or the constant ``beta``."""
    if corrected:
        return [corrected_decay(beta, t) for t in steps]
    return [beta for _ in steps]


def _binary(xs: Sequence[Tensor], ys: Sequence[Tensor], op: str, foreach: bool) -> list[Tensor]:
    """Fresh ``x <op> y`` per pair, with broadcasting (``op`` in add, mul, div, sub)."""
    if not xs:
        return []
    if foreach:
        return list(getattr(torch, f"_foreach_{op}")(list(xs), list(ys)))
    return [getattr(torch, op)(x, y) for x, y in zip(xs, ys)]


def _ema_(x: Tensor, new: Tensor, decay: Any) -> Tensor:
    """In place ``x = decay x + (1 - decay) new`` (``decay`` a number or a 0-d tensor)."""
    w = 1.0 - decay
    return x.lerp_(new, w.to(x.dtype) if isinstance(w, Tensor) else w)


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

    def second_moment(self, ctx: StepContext, i: int) -> Tensor:
        """Update parameter ``i``'s ``r, s`` (or ``v``) with this step's gradient and return
        ``sqrt(V)``: ``m x n`` for a factored parameter, else of the parameter's shape."""
        state = ctx.states[i]
        b2 = corrected_decay(_beta(ctx.group, self.hp, self.index), ctx.steps[i])
        sq = ctx.grads[i] * ctx.grads[i] + ctx.group["eps"]  # G^2 + eps
        if "v_full" in state:
            return _ema_(state["v_full"], sq, b2).sqrt()
        r, s = state["v_row"], state["v_col"]
        _ema_(r, _as_matrix(sq).sum(dim=1), b2)  # (G^2 + eps) 1_n
        _ema_(s, _as_matrix(sq).sum(dim=0), b2)  # (G^2 + eps)^T 1_m
        return (torch.outer(r, s) / r.sum()).sqrt()  # V = r s^T / (1_m^T r)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        out = []
        for i, u in enumerate(updates):
            den = self.second_moment(ctx, i)
            out.append(u / den if "v_full" in ctx.states[i] else (_as_matrix(u) / den).reshape(u.shape))
        return ctx.fresh(out)

    def __repr__(self) -> str:
        return f"scale_by_factored_rms(hp={self.hp!r}, index={self.index}, vectors_as_rows={self.vectors_as_rows})"


class ScaleByClippedFactoredRms(ScaleByFactoredRms):
    """Adafactor's factored second moment followed by its update clipping, as one transform::

        return clip_d(updates / sqrt(V))      # clip_d(U) = U / max(1, RMS(U) / d), d = clip_threshold

    The rule is ``chain(scale_by_factored_rms(), clip_by_rms())`` (same state, so checkpoints
    of either load in the other; ``clip_threshold=None`` disables the clipping), and so is
    this reference; it runs as one transform so that its fast path
    (:mod:`hamopt.fast.factored`, ``clipped_factored_rms_fused``) can take the clip factor
    from the row norms of ``X d^T`` before the update is written (one read instead of a read
    and a read-write).
    """

    def __init__(self, hp: str = "betas", index: int | None = 1, vectors_as_rows: bool = False) -> None:
        super().__init__(hp=hp, index=index, vectors_as_rows=vectors_as_rows)
        self.hyperparams = (hp, "eps", "factored", "clip_threshold")
        self._clip = ClipByRms()

    def validate(self, group: Mapping[str, Any]) -> None:
        super().validate(group)
        self._clip.validate(group)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        return self._clip.update(ctx, ScaleByFactoredRms.update(self, ctx, updates))

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
@dataclass
class FactoredTerms:
    """This step's terms of a :class:`FactoredMomentum` (:meth:`FactoredMomentum.terms`)."""

    rows: dict[int, Tensor]  # a (length m) of each factored parameter, by its index in the bucket
    cols: dict[int, Tensor]  # b (length n)
    full: dict[int, Tensor]  # M~ of each unfactored parameter


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
    read from the group key ``corrected`` when present.

    The first moment cannot live apart from the reshaper that forms ``a 1_n^T`` and
    ``1_m b^T``, so a reshaper owns it: ``scale_by_factored_sign(momentum=factored_momentum(...))``,
    ``scale_by_factored_phi_psi(..., momentum=...)``, ``add_normalized_factored_momentum(...,
    momentum=...)`` and ``scale_by_hfac(..., momentum=...)`` call :meth:`terms` and keep its
    state as theirs. (The composition of 0.1 listed it as a transform of its own before a
    reshaper that owns no momentum: :func:`chain` then gives it to that reshaper, with a
    ``DeprecationWarning``; see :meth:`_OwnsMomentum.adopt`.)

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

    def term(self, u: Tensor, mean: Tensor, decay: Any, b2: Any, corrected: bool) -> Tensor:
        """Update the moving average ``u`` of ``mean`` (``g_r``, ``g_c`` or ``G``) in place and
        return its term (``a``, ``b`` or ``M~``)."""
        if self.state_index is None:  # u = b_t u + (1 - b_t) g_r;  u~ = u - g_r
            _ema_(u, mean, decay)
            term = u - mean if corrected else u.clone()
        else:  # Lion: u~ = b u + (1 - b) g_r - g_r, then u = b' u + (1 - b') g_r
            term = _ema_(u.clone(), mean, decay)
            if corrected:
                term = term - mean
            _ema_(u, mean, b2)
        return term * decay if self.scale_by_beta else term

    def terms(self, ctx: StepContext) -> FactoredTerms:
        """Update the moving averages with this step's gradients; return the terms."""
        b = _beta(ctx.group, self.hp, self.index)
        b2 = None if self.state_index is None else _beta(ctx.group, self.hp, self.state_index)
        corrected = bool(ctx.group.get("corrected", True))
        terms = FactoredTerms({}, {}, {})
        for i, (g, state, t) in enumerate(zip(ctx.grads, ctx.states, ctx.steps)):
            d = corrected_decay(b, t) if self.corrected_decay else b
            if "mom_full" in state:
                terms.full[i] = self.term(state["mom_full"], g, d, b2, corrected)
                continue
            G = _as_matrix(g)
            m, n = G.shape
            terms.rows[i] = self.term(state["mom_row"], G.sum(dim=1) / max(n, 1), d, b2, corrected)  # G 1_n / n
            terms.cols[i] = self.term(state["mom_col"], G.sum(dim=0) / max(m, 1), d, b2, corrected)  # G^T 1_m / m
        return terms

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        """On its own (no reshaper after it in the chain) the first moment is kept up to date
        and the updates pass through unchanged: nothing uses the terms (deprecated)."""
        if not getattr(self, "_warned", False):
            self._warned = True
            warnings.warn("factored_momentum() without a factored reshaper after it changes no update; "
                          "pass it to the reshaper, e.g. scale_by_factored_sign(momentum=factored_momentum(...))",
                          DeprecationWarning, stacklevel=2)
        self.terms(ctx)
        return updates

    def __repr__(self) -> str:
        return (f"factored_momentum(hp={self.hp!r}, index={self.index}, state_index={self.state_index}, "
                f"corrected_decay={self.corrected_decay}, scale_by_beta={self.scale_by_beta}, "
                f"vectors_as_rows={self.vectors_as_rows})")


def check_layouts(ctx: StepContext, factored: Iterable[int], full: Iterable[int]) -> None:
    """The factored first and second moments treat the same parameters (by index) as factored."""
    if any("v_row" not in ctx.states[i] for i in factored) or any("v_full" not in ctx.states[i] for i in full):
        raise RuntimeError("the factored first and second moments disagree on which tensors are factored: "
                           "pass the same vectors_as_rows to both")


class _OwnsMomentum(Transform):
    """A reshaper that owns its :class:`FactoredMomentum` (``momentum``): its state keys,
    hyperparameters, checks and state are the reshaper's too."""

    momentum: FactoredMomentum | None = None

    def _own(self, momentum: FactoredMomentum | None) -> None:
        self.momentum = momentum
        if momentum is not None:
            self.state_keys = momentum.state_keys + type(self).state_keys
            self.hyperparams = tuple(dict.fromkeys(momentum.hyperparams + self.hyperparams))

    def validate(self, group: Mapping[str, Any]) -> None:
        super().validate(group)
        if self.momentum is not None:
            self.momentum.validate(group)

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        if self.momentum is not None:
            self.momentum.init(param, state, group)
        super().init(param, state, group)

    def adopt(self, earlier: Sequence[Transform]) -> Transform | None:
        """0.1's ``chain(factored_momentum(...), ..., reshaper())`` (the reshaper owning no
        momentum): the nearest standalone :class:`FactoredMomentum` before it becomes its
        ``momentum``, with a ``DeprecationWarning``. The same rule and the same state keys, so
        results and checkpoints are unchanged."""
        if self.momentum is not None:
            return None
        found = next((t for t in reversed(earlier) if isinstance(t, FactoredMomentum)), None)
        if found is None:
            return None
        warnings.warn(f"chain(factored_momentum(...), ..., {type(self).__name__}) is deprecated: pass the "
                      "momentum to the reshaper, e.g. scale_by_factored_sign(momentum=factored_momentum(...))",
                      DeprecationWarning, stacklevel=4)
        self._own(found)
        return found

    def owned(self) -> FactoredMomentum:
        """The first moment this transform owns (a ``RuntimeError`` naming the fix if none)."""
        if self.momentum is None:
            raise RuntimeError(f"{type(self).__name__} needs its first moment: pass momentum=factored_momentum(...)")
        return self.momentum

    def momentum_terms(self, ctx: StepContext) -> FactoredTerms:
        """This step's terms of the first moment this transform owns."""
        return self.owned().terms(ctx)


# ---------------------------------------------------------------------------- reshapers
Reshaper = str | Callable[[Tensor], Tensor]


def _reshaper(fn: Reshaper) -> Callable[[Tensor], Tensor]:
    if fn == "sign":
        return torch.sign
    if fn == "identity":
        return lambda x: x
    return fn  # type: ignore[return-value]


class ScaleByFactoredPhiPsi(_OwnsMomentum):
    """The factored first-order update of seed 000, section 4.2 (Algorithms 2 and 4)::

        (a, b) = momentum terms                         # factored_momentum: u~, v~ (times b)
        return grad phi(a 1_n^T + G) + grad psi(1_m b^T + G)

    with ``G`` from ``ctx.grads``. ``phi``/``psi`` are ``"sign"`` (``phi = ||.||_1``, signFSGD
    and LionFactor), ``"identity"`` (``phi = ||.||^2 / 2``) or an element-wise callable
    ``Tensor -> Tensor`` (the gradient of a convex function). For the unfactored fallback
    ``a 1^T`` and ``1 b^T`` are both the full ``M~``, so the sign version gives
    ``2 sign(M~ + G)``. ``momentum`` is the :class:`FactoredMomentum` it owns (its state is
    this transform's).
    """

    splits = TENSOR

    def __init__(self, phi: Reshaper = "sign", psi: Reshaper = "sign", momentum: FactoredMomentum | None = None
                 ) -> None:
        self.phi, self.psi = phi, psi
        self._own(momentum)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        terms = self.momentum_terms(ctx)
        phi, psi = _reshaper(self.phi), _reshaper(self.psi)
        out = []
        for i, g in enumerate(ctx.grads):
            if i in terms.full:  # a 1^T and 1 b^T are both M~
                out.append(phi(g + terms.full[i]) + psi(g + terms.full[i]))
                continue
            G, a, b = _as_matrix(g), terms.rows[i], terms.cols[i]
            out.append((phi(G + a[:, None]) + psi(G + b[None, :])).reshape(g.shape))
        return ctx.fresh(out)

    def __repr__(self) -> str:
        return f"scale_by_factored_phi_psi(phi={self.phi!r}, psi={self.psi!r}, momentum={self.momentum!r})"


def add_normalized_momentum(ctx: StepContext, updates: list[Tensor], terms: FactoredTerms, coef: float
                            ) -> list[Tensor]:
    """``updates + coef (phi + psi)`` with the first moment's ``terms`` and the second
    moment's ``r, s`` (or ``v``) from the state (:class:`AddNormalizedFactoredMomentum`)."""
    check_layouts(ctx, terms.rows, terms.full)
    out = []
    for i, (u, state) in enumerate(zip(updates, ctx.states)):
        if i in terms.full:  # phi = psi = M~ / sqrt(v)
            out.append(u + 2 * coef * terms.full[i] / state["v_full"].sqrt())
            continue
        r, s = state["v_row"], state["v_col"]
        m, n = r.numel(), s.numel()
        phi = (terms.rows[i] / (r / max(n, 1)).sqrt())[:, None]  # a 1_n^T / sqrt(r 1_n^T / n)
        psi = (terms.cols[i] / (s / max(m, 1)).sqrt())[None, :]  # 1_m b^T / sqrt(1_m s^T / m)
        out.append((_as_matrix(u) + coef * (phi + psi)).reshape(u.shape))
    return ctx.fresh(out)


class AddNormalizedFactoredMomentum(_OwnsMomentum):
    """H-Fac's normalized factored momentum (seed 000, Algorithm 3)::

        (a, b) = momentum terms                   # a = b1_t (u - G 1_n / n), b = b1_t (v - G^T 1_m / m)
        phi = a 1_n^T / sqrt(r 1_n^T / n)         # r, s: v_row, v_col of scale_by_factored_rms
        psi = 1_m b^T / sqrt(1_m s^T / m)
        return updates + coef * (phi + psi)       # coef = 0.5

    Owns ``momentum`` (a :class:`FactoredMomentum`); must follow :func:`scale_by_factored_rms`
    in the chain, whose state ``r, s`` it reads. Fallback (``v_full``, full ``M~``):
    ``updates + 2 coef M~ / sqrt(v)``.
    """

    splits = TENSOR

    def __init__(self, coef: float = 0.5, momentum: FactoredMomentum | None = None) -> None:
        self.coef = coef
        self._own(momentum)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        return add_normalized_momentum(ctx, updates, self.momentum_terms(ctx), self.coef)

    def __repr__(self) -> str:
        return f"add_normalized_factored_momentum(coef={self.coef}, momentum={self.momentum!r})"


class ScaleByHFac(_OwnsMomentum, ScaleByFactoredRms):
    """H-Fac's whole direction (seed 000, Algorithm 3), with the first moment it owns::

        (a, b) = momentum terms                          # factored_momentum
        D = clip_d(G / sqrt(V)) + coef (phi + psi)       # coef = 0.5; no clipping when d is None

    The rule is ``chain(scale_by_factored_rms(), clip_by_rms(),
    add_normalized_factored_momentum(coef, momentum))`` (same state ``mom_*``, ``v_row``,
    ``v_col``, ``v_full``, so checkpoints of either load in the other), and so is this
    reference. It reads ``betas``, ``eps``, ``factored``, ``clip_threshold`` and the
    momentum's keys. It is one transform so that its fast path (:mod:`hamopt.fast.factored`,
    ``hfac_closed_form``) can write the whole direction in two element-wise passes into one
    buffer, the clip factor known before.
    """

    def __init__(self, coef: float = 0.5, hp: str = "betas", index: int | None = 1,
                 vectors_as_rows: bool = False, momentum: FactoredMomentum | None = None) -> None:
        super().__init__(hp=hp, index=index, vectors_as_rows=vectors_as_rows)
        self.coef = coef
        self.hyperparams = (hp, "eps", "factored", "clip_threshold")
        self._clip = ClipByRms()
        self._own(momentum)

    def validate(self, group: Mapping[str, Any]) -> None:
        super().validate(group)
        self._clip.validate(group)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        terms = self.momentum_terms(ctx)  # (a, b)
        out = ScaleByFactoredRms.update(self, ctx, updates)  # updates / sqrt(V)
        out = self._clip.update(ctx, out)  # clip_d
        return add_normalized_momentum(ctx, out, terms, self.coef)  # + coef (phi + psi)

    def __repr__(self) -> str:
        return (f"scale_by_hfac(coef={self.coef}, hp={self.hp!r}, index={self.index}, "
                f"vectors_as_rows={self.vectors_as_rows}, momentum={self.momentum!r})")


# ---------------------------------------------------------------------------- factories
def scale_by_factored_rms(hp: str = "betas", index: int | None = 1, vectors_as_rows: bool = False
                          ) -> ScaleByFactoredRms:
    """See :class:`ScaleByFactoredRms`."""
    return ScaleByFactoredRms(hp=hp, index=index, vectors_as_rows=vectors_as_rows)


def scale_by_clipped_factored_rms(hp: str = "betas", index: int | None = 1) -> ScaleByClippedFactoredRms:
    """``chain(scale_by_factored_rms(), clip_by_rms())`` as one transform; see
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


def scale_by_factored_phi_psi(phi: Reshaper = "sign", psi: Reshaper = "sign",
                              momentum: FactoredMomentum | None = None) -> ScaleByFactoredPhiPsi:
    """See :class:`ScaleByFactoredPhiPsi`."""
    return ScaleByFactoredPhiPsi(phi=phi, psi=psi, momentum=momentum)


def scale_by_factored_sign(momentum: FactoredMomentum | None = None) -> ScaleByFactoredPhiPsi:
    """``sign(a 1^T + G) + sign(1 b^T + G)`` (signFSGD, LionFactor) with ``(a, b)`` from
    ``momentum``; see :class:`ScaleByFactoredPhiPsi`."""
    return ScaleByFactoredPhiPsi("sign", "sign", momentum=momentum)


def add_normalized_factored_momentum(coef: float = 0.5, momentum: FactoredMomentum | None = None
                                     ) -> AddNormalizedFactoredMomentum:
    """See :class:`AddNormalizedFactoredMomentum`."""
    return AddNormalizedFactoredMomentum(coef=coef, momentum=momentum)


def scale_by_hfac(coef: float = 0.5, hp: str = "betas", index: int | None = 1,
                  vectors_as_rows: bool = False, momentum: FactoredMomentum | None = None) -> ScaleByHFac:
    """H-Fac's ``clip_d(G / sqrt(V)) + coef (phi + psi)`` as one transform; see :class:`ScaleByHFac`
    (``vectors_as_rows=True``, as :class:`~hamopt.optim.hfac.HFac` uses it: 0-d/1-d tensors on
    their ``1 x n`` view, with ``momentum=factored_momentum(vectors_as_rows=True)`` set alike)."""
    return ScaleByHFac(coef=coef, hp=hp, index=index, vectors_as_rows=vectors_as_rows, momentum=momentum)

"""The H-Fac family (seed 000_bfd3aa1d2a7f558b, ALGORITHMS.md section 1).

Son Nguyen, Lizhang Chen, Bo Liu and Qiang Liu, "H-Fac: Memory-Efficient Optimization with
Factorized Hamiltonian Descent", arXiv:2406.09958 (2024). Five optimizers, each a short chain of the
transforms in :mod:`hamopt.transforms.factored` and :mod:`hamopt.transforms.common`:

- :class:`AdafactorM` (Algorithm 1): Adafactor with a first moment; ``betas[0] = 0`` is
  Adafactor without momentum and keeps no first-moment buffer.
- :class:`SignFSGD` (Algorithm 2): factored first moment with the sign reshaper.
- :class:`LionFactor` (Appendix B, Algorithm 4): signFSGD with Lion's double-beta scheme.
- :class:`HFac` (Algorithm 3): first and second moments both factored, ``2(m+n)`` numbers.
- :class:`AdamWVariant` (Appendix C, Algorithm 6): momentum of normalized gradients.

Matrices are ``m x n``; a tensor with more than two dims is factored as
``dim0 x prod(rest)``. 0-d and 1-d tensors use the unfactored rule of the same family (the
rank-1 reconstructions replaced by full moments, see each class), except H-Fac, which runs
its matrix rule on their ``1 x n`` view (the paper defines no vector rule); every parameter
of a group with ``factored=False`` (the paper's "fullhead") uses the unfactored rule::

    opt = hamopt.HFac([{"params": body}, {"params": head.parameters(), "factored": False}])

Weight decay is decoupled and uses the parameter before the update:
``X <- X - lr (D + weight_decay X)``.

Registry names: ``adafactor_m``, ``adafactor_m0`` (Adafactor-m with ``b1 = 0``, the paper's
"Adafactor without momentum"), ``signfsgd``, ``lionfactor``, ``hfac``, ``adamw_variant``.
"""

from __future__ import annotations

import torch

from ..core.optimizer import ChainedOptimizer, ParamsT
from ..core.transform import chain
from ..transforms.common import apply_decayed_update, scale_by_ema
from ..transforms.factored import (
    factored_momentum,
    scale_by_clipped_factored_rms,
    scale_by_factored_sign,
    scale_by_hfac,
    scale_by_rms,
)

__all__ = ["AdafactorM", "AdamWVariant", "HFac", "LionFactor", "SignFSGD"]



PAPER = ("Son Nguyen, Lizhang Chen, Bo Liu and Qiang Liu, 'H-Fac: Memory-Efficient Optimization with "
         "Factorized Hamiltonian Descent', arXiv:2406.09958 (seed 000_bfd3aa1d2a7f558b)")


class AdafactorM(ChainedOptimizer):
    r"""Adafactor with momentum, Adafactor-m (seed 000, Algorithm 1).

    For an ``m x n`` gradient ``G`` (bias-corrected decays ``b_t = b (1 - b^(t-1)) / (1 - b^t)``)::

        M = b1_t M + (1 - b1_t) G                       # skipped (no buffer) when b1 = 0
        r = b2_t r + (1 - b2_t) (G^2 + eps) 1_n
        s = b2_t s + (1 - b2_t) (G^2 + eps)^T 1_m
        V = r s^T / (1_m^T r)
        X = X - lr (clip_d(M / sqrt(V)) + weight_decay X)    # clip_d(U) = U / max(1, RMS(U) / d)

    0-d/1-d tensors (and groups with ``factored=False``): ``V = b2_t V + (1 - b2_t)(G^2 + eps)``
    element-wise (Adam-style second moment), the rest unchanged.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default: 1e-3).
        betas: ``(b1, b2)`` (default: (0.9, 0.999)); ``b1 = 0`` is Adafactor without momentum.
        eps: added to ``G^2`` (default: 1e-30).
        weight_decay: decoupled weight decay (default: 0).
        clip_threshold: ``d`` of the update clipping, ``None`` to disable (default: 1.0).

    State per ``m x n`` matrix: ``mn + m + n`` numbers (``m + n`` with ``b1 = 0``).
    Deviation from Shazeer and Stern (2018): a fixed learning rate and the paper's
    bias-corrected ``b2_t`` instead of the relative step size and ``1 - t^(-0.8)``.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-30, weight_decay: float = 0.0, clip_threshold: float | None = 1.0, *,
                 maximize: bool = False, foreach: bool | None = None,
                 state_dtype: torch.dtype | None = None) -> None:
        super().__init__(
            params,
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, clip_threshold=clip_threshold),
            # scale_by_clipped_factored_rms() is chain(scale_by_factored_rms(), clip_by_rms()) as
            # one transform (its fast path clips in fewer passes over memory)
            chain(scale_by_ema(corrected=True), scale_by_clipped_factored_rms(),
                  apply_decayed_update()),
            maximize=maximize, foreach=foreach, state_dtype=state_dtype,
        )


class SignFSGD(ChainedOptimizer):
    r"""signFSGD: factored first moment with the sign reshaper (seed 000, Algorithm 2).

    For an ``m x n`` gradient ``G`` (constant ``beta``, as Algorithm 2 writes it)::

        u = beta u + (1 - beta) G 1_n / n             # row means, length m
        v = beta v + (1 - beta) G^T 1_m / m           # column means, length n
        u~ = u - G 1_n / n;  v~ = v - G^T 1_m / m     # corrected terms (u~ = u, v~ = v if not corrected)
        X = X - lr (sign(beta u~ 1_n^T + G) + sign(beta 1_m v~^T + G) + weight_decay X)

    0-d/1-d tensors (and groups with ``factored=False``, the paper's "fullhead"): one full
    momentum ``M = beta M + (1 - beta) G``, ``M~ = M - G`` replaces both ``u~ 1^T`` and
    ``1 v~^T``, so the update is ``2 sign(beta M~ + G)``.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default: 3e-4).
        beta: momentum coefficient (default: 0.9).
        weight_decay: decoupled weight decay (default: 0).
        corrected: use the corrected terms (default: True); False is the paper's ablation.

    State per ``m x n`` matrix: ``m + n`` numbers.
    """

    def __init__(self, params: ParamsT, lr: float = 3e-4, beta: float = 0.9, weight_decay: float = 0.0,
                 corrected: bool = True, *, maximize: bool = False, foreach: bool | None = None,
                 state_dtype: torch.dtype | None = None) -> None:
        super().__init__(
            params,
            dict(lr=lr, beta=beta, weight_decay=weight_decay, corrected=corrected),
            chain(scale_by_factored_sign(momentum=factored_momentum(hp="beta", index=None, corrected_decay=False,
                                                                    scale_by_beta=True)),
                  apply_decayed_update()),
            maximize=maximize, foreach=foreach, state_dtype=state_dtype,
        )


class LionFactor(ChainedOptimizer):
    r"""LionFactor: signFSGD with Lion's double-beta scheme (seed 000, Appendix B, Algorithm 4).

    For an ``m x n`` gradient ``G``::

        u~ = b1 u + (1 - b1) G 1_n / n - G 1_n / n
        v~ = b1 v + (1 - b1) G^T 1_m / m - G^T 1_m / m
        X = X - lr (sign(u~ 1_n^T + G) + sign(1_m v~^T + G) + weight_decay X)
        u = b2 u + (1 - b2) G 1_n / n
        v = b2 v + (1 - b2) G^T 1_m / m

    0-d/1-d tensors (and groups with ``factored=False``): one full momentum ``M`` with
    ``M~ = b1 M + (1 - b1) G - G`` in place of both terms, i.e. ``2 sign(b1 M + (1 - b1) G)``
    (twice Lion's update), then ``M = b2 M + (1 - b2) G``.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default: 3e-4).
        betas: ``(b1, b2)`` (default: (0.9, 0.99)).
        weight_decay: decoupled weight decay (default: 0).

    State per ``m x n`` matrix: ``m + n`` numbers.
    """

    def __init__(self, params: ParamsT, lr: float = 3e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, maximize: bool = False, foreach: bool | None = None,
                 state_dtype: torch.dtype | None = None) -> None:
        super().__init__(
            params,
            dict(lr=lr, betas=betas, weight_decay=weight_decay),
            chain(scale_by_factored_sign(momentum=factored_momentum(hp="betas", index=0, state_index=1,
                                                                    corrected_decay=False, scale_by_beta=False)),
                  apply_decayed_update()),
            maximize=maximize, foreach=foreach, state_dtype=state_dtype,
        )


class HFac(ChainedOptimizer):
    r"""H-Fac: first and second moments both factored (seed 000, Algorithm 3).

    For an ``m x n`` gradient ``G`` (bias-corrected decays ``b_t = b (1 - b^(t-1)) / (1 - b^t)``)::

        u = b1_t u + (1 - b1_t) G 1_n / n
        v = b1_t v + (1 - b1_t) G^T 1_m / m
        r = b2_t r + (1 - b2_t) (G^2 + eps) 1_n
        s = b2_t s + (1 - b2_t) (G^2 + eps)^T 1_m
        V = r s^T / (1_m^T r)
        phi = b1_t (u 1_n^T - G 1_n 1_n^T / n) / sqrt(r 1_n^T / n)
        psi = b1_t (1_m v^T - 1_m 1_m^T G / m) / sqrt(1_m s^T / m)
        X = X - lr (0.5 (phi + psi) + clip_d(G / sqrt(V)) + weight_decay X)

    ``corrected=False`` (the paper's ablation) drops ``- G 1_n 1_n^T / n`` and
    ``- 1_m 1_m^T G / m``. 0-d/1-d tensors (biases, norms, scalars; the paper defines no rule
    for them) run the rule above on their ``1 x n`` view (``m = 1``, ALGORITHMS.md section 1):
    ``u`` and ``r`` are scalars, ``v`` and ``s`` have the tensor's ``n`` entries, ``V = s``, and the
    factor 0.5 on the momentum term is kept. Groups with ``factored=False`` (the paper's
    "fullhead"): full moments ``M = b1_t M + (1 - b1_t) G`` and ``V = b2_t V + (1 - b2_t)(G^2 + eps)``
    replace ``u 1^T``, ``1 v^T`` and ``r 1^T / n``, ``1 s^T / m``, ``V``, so the update is
    ``b1_t (M - G) / sqrt(V) + clip_d(G / sqrt(V))`` (the momentum term counted twice).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default: 1e-3).
        betas: ``(b1, b2)`` (default: (0.9, 0.999)).
        eps: added to ``G^2`` (default: 1e-30).
        weight_decay: decoupled weight decay (default: 0).
        clip_threshold: ``d`` of the update clipping, ``None`` to disable (default: 1.0).
        corrected: use the corrected terms (default: True).

    State per ``m x n`` matrix: ``2(m + n)`` numbers (``u, v, r, s``), ``2(n + 1)`` for a vector of
    ``n`` entries and 4 for a scalar (their ``1 x n`` view); ``2 numel`` for ``factored=False``.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-30, weight_decay: float = 0.0, clip_threshold: float | None = 1.0,
                 corrected: bool = True, *, maximize: bool = False, foreach: bool | None = None,
                 state_dtype: torch.dtype | None = None) -> None:
        super().__init__(
            params,
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, clip_threshold=clip_threshold,
                 corrected=corrected),
            # scale_by_hfac(0.5, momentum=m) is chain(scale_by_factored_rms(), clip_by_rms(),
            # add_normalized_factored_momentum(0.5, momentum=m)) as one transform (its fast path
            # writes the direction in two passes over memory)
            chain(scale_by_hfac(0.5, vectors_as_rows=True,
                                momentum=factored_momentum(hp="betas", index=0, corrected_decay=True,
                                                           scale_by_beta=True, vectors_as_rows=True)),
                  apply_decayed_update()),
            maximize=maximize, foreach=foreach, state_dtype=state_dtype,
        )


class AdamWVariant(ChainedOptimizer):
    r"""The AdamW variant of seed 000, Appendix C, Algorithm 6 (momentum of normalized gradients).

    With bias-corrected decays ``b_t = b (1 - b^(t-1)) / (1 - b^t)``, for tensors of any shape::

        V = b2_t V + (1 - b2_t) G^2
        M = b1_t M + (1 - b1_t) G / (sqrt(V) + eps)
        X = X - lr (M + weight_decay X)

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default: 1e-3).
        betas: ``(b1, b2)`` (default: (0.9, 0.999)).
        eps: added to ``sqrt(V)`` (default: 1e-8).
        weight_decay: decoupled weight decay (default: 0).

    State: ``2 numel`` numbers (unfactored), like AdamW.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, maximize: bool = False,
                 foreach: bool | None = None, state_dtype: torch.dtype | None = None) -> None:
        super().__init__(
            params,
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
            chain(scale_by_rms(), scale_by_ema(corrected=True), apply_decayed_update()),
            maximize=maximize, foreach=foreach, state_dtype=state_dtype,
        )

"""AdaDiag, AdaDiag++, AdafacDiag and AdafacDiag++: preconditioner diagonalization (seed 001).

"Improving Adaptive Moment Optimization via Preconditioner Diagonalization" (anonymous,
under double-blind review; seed ``001_9c64c0df17d59d44``; ``ALGORITHMS.md`` section 2):
Adam (AdaDiag) or Adafactor (AdafacDiag, Appendix A, Algorithm 3) run in the basis of a
periodic SVD of the gradient, one-sided (``P^T G``) or two-sided (``P^T G Q``, the ``++``
variants). Both are chains around :func:`hamopt.transforms.scale_by_svd_rotation`, which
wraps any elementwise adaptive transform.

Registry names: ``adadiag``, ``adadiag++``, ``adafacdiag``, ``adafacdiag++``.
"""

from __future__ import annotations

import torch

from ..core.optimizer import ChainedOptimizer, ParamsT
from ..core.transform import chain
from ..transforms.common import apply_decayed_update, scale_by_adam, scale_by_ema
from ..transforms.factored import scale_by_clipped_factored_rms
from ..transforms.rotation import scale_by_svd_rotation

__all__ = ["AdaDiag", "AdafacDiag"]

PAPER = (
    "Improving Adaptive Moment Optimization via Preconditioner Diagonalization "
    "(anonymous, under double-blind review), seed 001_9c64c0df17d59d44"
)


class AdaDiag(ChainedOptimizer):
    r"""AdaDiag / AdaDiag++: Adam in the basis of a periodic SVD of the gradient (seed 001, Alg. 1).

    For a parameter with matrix view ``W`` (``m x n``; for ``m > n`` the rule is applied to
    ``W^T``, i.e. the one-sided basis is always the smaller side's)::

        if t == first_svd_step or (t > first_svd_step and t % svd_interval == 0):
            P, _, Q^T = svd(G_t)                                   # else keep P, Q
        G~ = P^T G           (two_sided: G~ = P^T G Q;  before first_svd_step: G~ = G)
        M  = b1 M + (1 - b1) G~
        V  = b2 V + (1 - b2) G~^2
        U  = (M / (1 - b1^t)) / (sqrt(V / (1 - b2^t)) + eps)
        D  = P U             (two_sided: D = P U Q^T;      before first_svd_step: D = U)
        W <- W - lr (D + weight_decay W)

    0-d, 1-d and zero-size parameters use plain AdamW. Moments are kept when the basis
    changes (the paper's choice); ``rotate_momentum=True`` re-rotates ``M`` into the new
    basis (SOAP's choice).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default: 1e-3).
        betas: ``(b1, b2)`` (default: (0.9, 0.999)).
        eps: added to ``sqrt(Vhat)`` (default: 1e-8).
        weight_decay: decoupled weight decay (default: 0.0).
        svd_interval: the SVD period ``T`` (default: 500; the paper uses 500 for vision
            and 200 for language models).
        two_sided: AdaDiag++ (default: False).
        first_svd_step: the step of the first SVD; ``None`` (default) means step 1
            one-sided and step ``svd_interval`` two-sided (the paper's advice for
            AdaDiag++). Before it the basis is the identity: exactly AdamW.
        max_precond_dim: the largest basis side kept (default: 10000). A two-sided
            rotation whose larger side exceeds it falls back to one-sided; a one-sided
            rotation whose smaller side exceeds it falls back to plain AdamW.
        rotate_momentum: re-rotate the first moment at each refresh (default: False).
        basis_method: how the SVD basis is computed: ``"eigh"`` (default), the float64
            eigenvectors of ``G G^T`` / ``G^T G``, or ``"svd"``, ``torch.linalg.svd`` in the
            state dtype. The same basis (to rounding; the module
            :mod:`hamopt.transforms.rotation` says why ``eigh`` is the default: several
            times faster, and more accurate than a float32 SVD).
        maximize, foreach, state_dtype: see :class:`hamopt.ChainedOptimizer`.

    State per matrix (Table 3): ``m^2 + 2mn`` one-sided, ``(m+n)^2`` two-sided.

    Deviations and conventions: the paper leaves the SVD's sign and null-space choices
    open; we fix them so the basis is a deterministic function of the gradient, and for a
    rank-deficient gradient the null space and the rotated entries below rounding are those
    of exact arithmetic (see :mod:`hamopt.transforms.rotation`). The rotation applies to the matrix view of
    tensors with more than two dims (a conv kernel as ``out x in*kh*kw``).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        svd_interval: int = 500,
        two_sided: bool = False,
        first_svd_step: int | None = None,
        *,
        max_precond_dim: int = 10000,
        rotate_momentum: bool = False,
        basis_method: str = "eigh",
        maximize: bool = False,
        foreach: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, svd_interval=svd_interval,
                 two_sided=two_sided, first_svd_step=first_svd_step, max_precond_dim=max_precond_dim,
                 rotate_momentum=rotate_momentum, basis_method=basis_method),
            chain(scale_by_svd_rotation(scale_by_adam()), apply_decayed_update()),
            maximize=maximize,
            foreach=foreach,
            state_dtype=state_dtype,
        )


class AdafacDiag(ChainedOptimizer):
    r"""AdafacDiag / AdafacDiag++: Adafactor in the basis of a periodic SVD (seed 001, App. A, Alg. 3).

    For a parameter with matrix view ``W`` (``m x n``; for ``m > n`` the rule is applied to
    ``W^T``), with the bias-corrected decays ``b_t = b (1 - b^(t-1)) / (1 - b^t)``::

        if t == first_svd_step or (t > first_svd_step and t % svd_interval == 0):
            P, _, Q^T = svd(G_t)                                   # else keep P, Q
        G~ = P^T G           (two_sided: G~ = P^T G Q;  before first_svd_step: G~ = G)
        r  = b2_t r + (1 - b2_t) (G~^2 + eps) 1_n
        s  = b2_t s + (1 - b2_t) (G~^2 + eps)^T 1_m
        V  = r s^T / (1_m^T r)
        M  = b1_t M + (1 - b1_t) clip_d(G~ / sqrt(V))       # b1 = 0: M = clip_d(...), no buffer
        D  = P M             (two_sided: D = P M Q^T;      before first_svd_step: D = M)
        W <- W - lr (D + weight_decay W)

    with ``clip_d(U) = U / max(1, RMS(U) / d)`` and ``d = clip_threshold``. 0-d, 1-d and
    zero-size parameters use the unfactored, unrotated rule (``V = EMA(G^2 + eps)``).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default: 1e-3).
        betas: ``(b1, b2)``; ``b1 > 0`` is "with momentum" (default: (0.0, 0.999)).
        eps: added to ``G~^2`` (default: 1e-30).
        weight_decay: decoupled weight decay (default: 0.0).
        clip_threshold: ``d`` of the update clipping, ``None`` to disable (default: 1.0).
        svd_interval, two_sided, first_svd_step, max_precond_dim, rotate_momentum,
            basis_method: as for :class:`AdaDiag` (defaults 500, False, None, 10000, False,
            ``"eigh"``).
        maximize, foreach, state_dtype: see :class:`hamopt.ChainedOptimizer`.

    State per matrix (Table 3, one-sided): ``m^2 + m + n`` without momentum,
    ``m^2 + mn + m + n`` with; two-sided adds ``n^2``.

    Conventions: as :class:`AdaDiag` (deterministic SVD signs and completion; matrix view
    for conv kernels). The paper's Algorithm 3 is stated one-sided; the two-sided variant
    rotates ``P^T G Q`` exactly as AdaDiag++.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.0, 0.999),
        eps: float = 1e-30,
        weight_decay: float = 0.0,
        clip_threshold: float | None = 1.0,
        svd_interval: int = 500,
        two_sided: bool = False,
        first_svd_step: int | None = None,
        *,
        max_precond_dim: int = 10000,
        rotate_momentum: bool = False,
        basis_method: str = "eigh",
        maximize: bool = False,
        foreach: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        inner = chain(scale_by_clipped_factored_rms(), scale_by_ema(corrected=True))
        super().__init__(
            params,
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, clip_threshold=clip_threshold,
                 svd_interval=svd_interval, two_sided=two_sided, first_svd_step=first_svd_step,
                 max_precond_dim=max_precond_dim, rotate_momentum=rotate_momentum,
                 basis_method=basis_method),
            chain(scale_by_svd_rotation(inner), apply_decayed_update()),
            maximize=maximize,
            foreach=foreach,
            state_dtype=state_dtype,
        )

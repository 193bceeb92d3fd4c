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

from collections.abc import Callable

import torch

from ..core.optimizer import ChainedOptimizer, ParamsT
from ..core.transform import chain
from ..registry import OptimizerInfo, matrix_dims, numel, register
from ..transforms.adadiag import rotation_mode, scale_by_svd_rotation
from ..transforms.common import add_decayed_weights, scale_by_adam, scale_by_learning_rate

__all__ = ["AdaDiag"]

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
        maximize, foreach, state_dtype: see :class:`hamopt.ChainedOptimizer`.

    State per matrix (Table 3): ``m^2 + 2mn`` one-sided, ``(m+n)^2`` two-sided.

    Deviations and conventions: the paper leaves the SVD's sign and null-space choices
    open; we fix them so the basis is a deterministic function of the gradient (see
    :mod:`hamopt.transforms.adadiag`). The rotation applies to the matrix view of
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
        maximize: bool = False,
        foreach: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, svd_interval=svd_interval,
                 two_sided=two_sided, first_svd_step=first_svd_step, max_precond_dim=max_precond_dim,
                 rotate_momentum=rotate_momentum),
            chain(scale_by_svd_rotation(scale_by_adam()), add_decayed_weights(), scale_by_learning_rate()),
            maximize=maximize,
            foreach=foreach,
            state_dtype=state_dtype,
        )


# ---------------------------------------------------------------------- registry
def basis_numel(shape: tuple[int, ...], two_sided: bool, max_precond_dim: int = 10000) -> int:
    """Elements of the rotation bases kept for a parameter of ``shape`` (fallbacks included)."""
    left, right = rotation_mode(shape, two_sided, max_precond_dim)
    dims = matrix_dims(shape)
    if dims is None:
        return 0
    m, n = dims
    return (m * m if left else 0) + (n * n if right else 0)


def _adadiag_numel(two_sided: bool) -> Callable[[tuple[int, ...]], int]:
    return lambda shape: basis_numel(shape, two_sided) + 2 * numel(shape)


_TEST_KWARGS = dict(svd_interval=3)

register(OptimizerInfo(
    name="adadiag",
    factory=AdaDiag,
    paper=PAPER + ", Algorithm 1 (one-sided)",
    family="adadiag",
    defaults=dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, svd_interval=500,
                  two_sided=False, first_svd_step=None),
    memory="m^2 + 2mn (m the smaller side; vectors: 2n)",
    state_numel=_adadiag_numel(False),
    summary="Adam in the one-sided basis of a periodic SVD of the gradient",
    needs_svd=True,
    test_lr=0.05,
    test_kwargs=_TEST_KWARGS,
))
register(OptimizerInfo(
    name="adadiag++",
    factory=AdaDiag,
    paper=PAPER + ", Algorithm 1 (two-sided)",
    family="adadiag",
    defaults=dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, svd_interval=500,
                  two_sided=True, first_svd_step=None),
    memory="(m+n)^2 (side > 10000: one-sided m^2 + 2mn; vectors: 2n)",
    state_numel=_adadiag_numel(True),
    summary="Adam in the two-sided basis P^T G Q of a periodic SVD of the gradient",
    needs_svd=True,
    test_lr=0.05,
    test_kwargs=_TEST_KWARGS,
))

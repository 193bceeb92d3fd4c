"""AMS, Grams, C-AdamW and C-Lion (seed 003_94ed72a9e58efdbf, ALGORITHMS.md section 3).

Paper: "Decoupling Sign and Magnitude in Optimization with Adaptive Momentum Scaling" (the
AMS/Grams paper; cf. Cao, Li and Song, arXiv:2412.17107), Algorithm 1, Definitions 3.2 and
5.1, Corollaries B.1-B.3; the cautious mechanism of Liang et al., arXiv:2411.16085.

Registry names: ``ams``, ``grams``, ``cadamw``, ``clion``. ``Grams`` and ``CAdamW`` are
``AMS`` with ``misaligned_scale`` fixed to -1 and 0 and no sign buffer (``b3 = 0``);
``CLion`` is Lion's update under the cautious mask. The whole of Algorithm 1 is one
transform, :func:`hamopt.transforms.apply_ams_update`. The masks are transforms
(:func:`hamopt.transforms.scale_by_cautious`, :func:`hamopt.transforms.scale_by_grams`)
that make a cautious or Grams version of any other chain.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.optimizer import ChainedOptimizer, ParamsT
from ..transforms.common import apply_decayed_update
from ..transforms.kernels import L1Kernel, ScaleByLionK
from ..transforms.masks import apply_ams_update, scale_by_cautious

__all__ = ["AMS", "CAdamW", "CLion", "Grams"]

PAPER = ("Decoupling Sign and Magnitude in Optimization with Adaptive Momentum Scaling "
         "(AMS/Grams; cf. Cao, Li and Song, arXiv:2412.17107), seed 003_94ed72a9e58efdbf")
CAUTIOUS = "Liang, Chen, Liu and Liu, Cautious Optimizers, arXiv:2411.16085"


class AMS(ChainedOptimizer):
    """Adaptive Momentum Scaling (seed 003, Algorithm 1).

    Per parameter tensor of ``d`` elements::

        m = b1 m + (1-b1) g;   v = b2 v + (1-b2) g^2;   s = b3 s + (1-b3) g
        u = (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
        phi = 1[u*s >= 0];     psi = lam * 1[u*s < 0]           (lam = misaligned_scale)
        lr^ = lr * d / (||phi||_1 + ||psi||_1)                 (lr if the denominator is 0)
        w <- w - lr^ (phi + psi) * u;   w <- w - lr^ * weight_decay * w

    ``b3 = b1`` or ``lam = 1``: Adam (Corollary B.1); ``b3 = 0, lam = 0``: Cautious Adam
    (B.2, :class:`CAdamW`); ``b3 = 0, lam = -1``: Grams (B.3, :class:`Grams`). With
    ``b3 = 0`` (default) ``s = g`` and no buffer is kept; ``betas`` may then be ``(b1, b2)``.

    Args:
        params: parameters or parameter groups.
        lr: step size ``eta`` (default: 1e-3).
        betas: ``(b1, b2, b3)`` (default: (0.9, 0.999, 0.0)).
        eps: added to ``sqrt(vhat)`` (default: 1e-8).
        weight_decay: ``gamma``, applied after the step with ``lr^`` as in Algorithm 1,
            line 16 (default: 0.0). This differs from AdamW's ``lr * wd * w`` on the weights
            before the step by ``lr^2 wd u^`` per step.
        misaligned_scale: ``lam``, the factor for coordinates where ``u`` and ``s``
            disagree in sign (default: -1.0, Grams).

    Deviation: with ``lam = -1, b3 = 0`` the update is ``sign(g) |u|`` (Corollary B.3, the
    authors' code), which differs from the literal ``(phi + psi) u`` only where ``g == 0``.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999, 0.0),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        misaligned_scale: float = -1.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, misaligned_scale=misaligned_scale),
            # Algorithm 1 is one transform (transforms/masks.py); its fused version is hamopt.fast.masks.
            [apply_ams_update()],
            maximize=maximize, foreach=foreach, state_dtype=state_dtype,
        )


class Grams(AMS):
    """Grams, Gradient Descent with Adaptive Momentum Scaling (seed 003, Definition 5.1).

    AMS with ``b3 = 0`` and ``misaligned_scale = -1`` (Corollary B.3)::

        m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
        u = (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
        w <- w - lr sign(g) * |u|;   w <- w - lr * weight_decay * w

    Defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0. Differences from the
    authors' ``grams-pytorch``: their eps is added to ``sqrt(v)`` before the bias
    correction (ours to ``sqrt(vhat)``, as the paper and ``pytorch_optimizer``), they decay
    the weights before the step (``w (1 - lr wd) - lr u^``; ours decays after, Algorithm 1
    line 16) and they overwrite ``p.grad`` (we do not).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(params, lr, tuple(betas)[:2], eps, weight_decay, -1.0,
                         maximize=maximize, foreach=foreach, state_dtype=state_dtype)


class CAdamW(AMS):
    """Cautious AdamW (seed 003, Definition 3.2 on Adam; Corollary B.2: AMS with b3 = 0, lam = 0).

    ::

        m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
        u = (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
        h = 1[u*g >= 0];      lr^ = lr * d / ||h||_1          (lr if h is all zero)
        w <- w - lr^ h * u;   w <- w - lr^ * weight_decay * w

    Defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0. The weight decay
    follows AMS (after the step, with ``lr^``); Liang et al.'s code decays with ``lr``
    before the step and masks with ``u*g > 0`` (equal except where ``u*g == 0``).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(params, lr, tuple(betas)[:2], eps, weight_decay, 0.0,
                         maximize=maximize, foreach=foreach, state_dtype=state_dtype)


class CLion(ChainedOptimizer):
    """Cautious Lion (seed 003, Definition 3.2 applied to Lion's update)::

        c = b1 m + (1-b1) g;   u = sign(c);   h = 1[u*g >= 0]
        w <- w - lr * ( (d / ||h||_1) h * u + weight_decay * w )        (factor 1 if h = 0)
        m = b2 m + (1-b2) g

    Defaults: lr 1e-4, betas (0.9, 0.99), weight_decay 0. The weight decay is Lion's
    (``lr * wd * w`` on the weights before the step, as ``lion-pytorch``'s cautious Lion);
    ``pytorch_optimizer``'s cautious option rescales by ``d / (||h||_1 + 1)`` instead.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-4,
        betas: Sequence[float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay),
            [ScaleByLionK(L1Kernel()), scale_by_cautious(), apply_decayed_update()],
            maximize=maximize, foreach=foreach, state_dtype=state_dtype,
        )

"""Lion-K and Lion (seed 004_1adee5772a6cb714, ALGORITHMS.md section 4).

Paper: Chen, Liu, Liang and Liu, "Lion Secretly Solves Constrained Optimization: As Lyapunov
Predicts", ICLR 2024, arXiv:2310.05898 (equation (2), Table 2, Theorem 4.1). Lion: Chen et
al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023, arXiv:2302.06675.

Registry names: ``lionk`` and ``lion`` (Lion-K with the ``l1`` kernel, i.e. ``sign``).
The kernels live in :mod:`hamopt.transforms.kernels`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..core.optimizer import ChainedOptimizer, ParamsT
from ..transforms.common import apply_decayed_update
from ..transforms.kernels import Kernel, ScaleByLionK

__all__ = ["Lion", "LionK"]

PAPER = ("Chen, Liu, Liang and Liu, Lion Secretly Solves Constrained Optimization: As Lyapunov "
         "Predicts, ICLR 2024, arXiv:2310.05898 (seed 004_1adee5772a6cb714)")
LION = "Chen et al., Symbolic Discovery of Optimization Algorithms, NeurIPS 2023, arXiv:2302.06675"


class LionK(ChainedOptimizer):
    """Lion-K (seed 004, equation (2), in the usual Lion form)::

        c = b1 m + (1-b1) g
        x <- x - lr (gradK(c) + weight_decay * x)
        m = b2 m + (1-b2) g

    ``kernel`` (Table 2; norms and rankings over one parameter tensor):

    - ``"l1"``: ``gradK = sign`` (Lion); solves ``min f s.t. ||x||_inf <= 1/wd``.
    - ``"lp"`` with ``p >= 1``: ``sign(x)|x|^(p-1)/||x||_p^(p-1)``; ``||x||_q <= 1/wd``.
    - ``"threshold"`` with ``e > 0``: ``sign(x) 1[|x| > e]``; adds an l1 penalty in the box.
    - ``"topk"`` with ``k >= 1``: ``sign`` on the ``k`` largest ``|c_i|``, 0 elsewhere; adds an
      l1 constraint ``||x||_1 <= k/wd``.
    - ``"huber"`` with ``e > 0``: ``clip(x, -e, e)/e``; adds an l2 penalty in the box.
    - a callable ``gradK(tensor) -> tensor`` or a :class:`hamopt.transforms.Kernel`.

    ``m`` is the EMA of ``+g`` (the paper's equation (2) tracks ``-g``); the two agree for
    odd ``gradK``, which all built-in kernels are. Defaults: lr 1e-4, betas (0.9, 0.99),
    weight_decay 0, kernel ``"l1"``. A missing, extra or invalid kernel argument is a
    ``ValueError``. ``kernel``, ``p``, ``e``, ``k`` are per-group settings.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-4,
        betas: Sequence[float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        kernel: str | Callable[[Tensor], Tensor] | Kernel = "l1",
        p: float | None = None,
        e: float | None = None,
        k: int | None = None,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, kernel=kernel, p=p, e=e, k=k),
            [ScaleByLionK(), apply_decayed_update()],
            maximize=maximize, foreach=foreach, state_dtype=state_dtype,
        )


class Lion(LionK):
    """Lion (Chen et al. 2023; seed 004: Lion-K with ``K = ||x||_1``)::

        c = b1 m + (1-b1) g;   x <- x - lr (sign(c) + weight_decay * x);   m = b2 m + (1-b2) g

    Defaults: lr 1e-4, betas (0.9, 0.99), weight_decay 0 (equal to ``lion-pytorch``'s and
    ``pytorch_optimizer``'s ``Lion``). With ``weight_decay > 0`` the iterates enter the box
    ``||x||_inf <= 1/weight_decay`` at a linear rate and stay there (Theorem 4.1).
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
        super().__init__(params, lr, betas, weight_decay, "l1",
                         maximize=maximize, foreach=foreach, state_dtype=state_dtype)

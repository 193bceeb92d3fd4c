"""The lecture's optimizers that ``torch.optim`` lacks (seed 002_499076b5b4a9af2b, ALGORITHMS.md 5).

* :class:`SignSGD` [signsgd] -- signSGD and Signum (Bernstein, Wang, Azizzadenesheli and
  Anandkumar, "signSGD: Compressed Optimisation for Non-Convex Problems", ICML 2018).
* :class:`AdaMod` [adamod] -- Ding, Ren, Luo and Sun, "An Adaptive and Momental Bound Method for
  Stochastic Learning", arXiv:1910.12249 (2019).
* :class:`DiffGrad` [diffgrad] -- Dubey, Chakraborty, Roy, Mukherjee, Singh and Chaudhuri,
  "diffGrad: An Optimization Method for Convolutional Neural Networks", IEEE TNNLS 2020.
* :class:`Lookahead` [lookahead] -- Zhang, Lucas, Hinton and Ba, "Lookahead Optimizer: k steps
  forward, 1 step back", NeurIPS 2019: a wrapper around *any* ``torch.optim.Optimizer``.
* :class:`Ranger` [ranger] -- RAdam (Liu et al., ICLR 2020) + Lookahead + gradient
  centralization (Yong et al., ECCV 2020), after Wright's Ranger (2019/2020).
* :class:`Sophia` [sophia] -- Liu, Li, Hall, Liang and Ma, "Sophia: A Scalable Stochastic
  Second-order Optimizer for Language Model Pre-training", ICLR 2024 (the lecture's Algorithm 3)
  with the Hutchinson and Gauss-Newton-Bartlett estimators.
* :func:`scale_lr` -- the lecture's learning rate vs batch size rule: linear (Goyal et al. 2017,
  "Accurate, Large Minibatch SGD") or square root (Hoffer, Hubara and Soudry, NeurIPS 2017).
* :func:`with_centralization` -- put gradient centralization in front of any hamopt optimizer.

Lion is not here: it is Lion-K with the ``sign`` kernel (:mod:`hamopt.optim.lionk`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core import ops
from ..core import validation as V
from ..core.optimizer import ChainedOptimizer, ParamsT, init_wrapper_hooks
from ..core.transform import Transform, chain
from ..transforms.adaptive import (
    ScaleBySophia,
    centralize,
    lookahead,
    lookahead_sync_,
    scale_by_adamod,
    scale_by_diffgrad,
    scale_by_radam,
    scale_by_sophia,
)
from ..transforms.common import (
    add_decayed_weights,
    apply_decayed_update,
    scale_by_ema,
    scale_by_learning_rate,
    scale_by_sign,
)

__all__ = [
    "AdaMod",
    "DiffGrad",
    "Lookahead",
    "Ranger",
    "SignSGD",
    "Sophia",
    "scale_lr",
    "with_centralization",
]

LECTURE = "Lecture on optimizers for deep learning (seed 002_499076b5b4a9af2b)"


# ---------------------------------------------------------------------------- signSGD


class SignSGD(ChainedOptimizer):
    r"""signSGD, and Signum with ``momentum > 0`` (Bernstein et al. 2018, Algorithm 1 and Signum).

    ::

        g <- g - mean over dims 1..                   (only with use_gc, tensors with 2+ dims)
        m = momentum * m + (1 - momentum) * g         (momentum = 0: m = g, no buffer)
        p <- p - lr * (sign(m) + weight_decay * p)

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default: 1e-3).
        momentum: EMA decay of the momentum; 0 is signSGD, > 0 is Signum (default: 0.0).
        weight_decay: decoupled weight decay (default: 0.0).
        use_gc: gradient centralization first (default: False).

    Deviation: the weight decay is decoupled (the paper has none).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        use_gc: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, momentum=momentum, weight_decay=weight_decay, use_gc=use_gc),
            chain(
                centralize("use_gc"),
                scale_by_ema("momentum_buffer", hp="momentum", index=None, corrected=False),
                scale_by_sign(),
                apply_decayed_update(),
            ),
            maximize=maximize,
            foreach=foreach,
            state_dtype=state_dtype,
        )


# ---------------------------------------------------------------------------- AdaMod


class AdaMod(ChainedOptimizer):
    r"""AdaMod: Adam with a momental bound on its per-coordinate step (Ding et al. 2019, Algorithm 1).

    ::

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        eta = lr / (sqrt(v / (1 - b2^t)) + eps)
        s = b3 s + (1 - b3) eta                       # s_0 = 0
        p <- p - min(eta, s) * m / (1 - b1^t) - lr * weight_decay * p

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default: 1e-3).
        betas: ``(b1, b2, b3)`` (default: (0.9, 0.999, 0.999), the authors' code).
        eps: added to ``sqrt(vhat)`` (default: 1e-8).
        weight_decay: decoupled weight decay (default: 0.0).
        use_gc: gradient centralization first (default: False).

    Deviations: decoupled weight decay (the authors' code adds L2 to the gradient). The paper's
    ``eta`` and bias corrections are kept; the authors' code (and ``pytorch_optimizer.AdaMod``)
    folds ``1 / (1 - b1^t)`` into ``eta`` before averaging and adds ``eps`` to ``sqrt(v)``.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        use_gc: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, use_gc=use_gc),
            chain(centralize("use_gc"), scale_by_adamod(), apply_decayed_update()),
            maximize=maximize,
            foreach=foreach,
            state_dtype=state_dtype,
        )


# ---------------------------------------------------------------------------- diffGrad


class DiffGrad(ChainedOptimizer):
    r"""diffGrad: Adam with a friction coefficient from the change of the gradient (Dubey et al. 2020).

    ::

        xi = sigmoid(|g_{t-1} - g_t|)                 # g_0 = 0
        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        p <- p - lr * (xi * mhat / (sqrt(vhat) + eps) + weight_decay * p)

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default: 1e-3).
        betas: ``(b1, b2)`` (default: (0.9, 0.999)).
        eps: added to ``sqrt(vhat)`` (default: 1e-8).
        weight_decay: decoupled weight decay (default: 0.0).
        use_gc: gradient centralization first (default: False).

    Deviation: decoupled weight decay (the paper has none). ``eps`` is added to ``sqrt(vhat)``
    as in the paper's Algorithm 1 (the authors' code and ``pytorch_optimizer`` add it to
    ``sqrt(v)``).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        use_gc: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, use_gc=use_gc),
            chain(centralize("use_gc"), scale_by_diffgrad(), apply_decayed_update()),
            maximize=maximize,
            foreach=foreach,
            state_dtype=state_dtype,
        )


# ---------------------------------------------------------------------------- Ranger


class Ranger(ChainedOptimizer):
    r"""Ranger: RAdam + Lookahead (+ gradient centralization), after Wright (2019, 2020).

    ::

        g <- g - mean over dims 1..          (use_gc, tensors with 2+ dims; Yong et al. 2020)
        u = RAdam ratio of g                 (hamopt.transforms.scale_by_radam == torch.optim.RAdam)
        fast = p - lr * (u + weight_decay * p)
        if t % k == 0:  phi = phi + alpha (fast - phi);  p <- phi      (Lookahead, phi_0 = p_0)
        else:           p <- fast

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default: 1e-3).
        betas: RAdam's ``(b1, b2)`` (default: (0.95, 0.999), Ranger's).
        eps: RAdam's epsilon, added to ``sqrt(v)`` (default: 1e-5, Ranger's).
        weight_decay: decoupled weight decay (default: 0.0).
        k: Lookahead's synchronisation period (default: 6, Ranger's).
        alpha: Lookahead's slow-weight step (default: 0.5).
        use_gc: gradient centralization first (default: True, Ranger 2020).

    Deviations: decoupled weight decay (Ranger adds L2 to the gradient); during RAdam's warm-up
    (``rho_t <= 5``) the step is ``lr * mhat`` as in ``torch.optim.RAdam``. The step count ``t``
    is per parameter.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.95, 0.999),
        eps: float = 1e-5,
        weight_decay: float = 0.0,
        k: int = 6,
        alpha: float = 0.5,
        use_gc: bool = True,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, k=k, alpha=alpha, use_gc=use_gc),
            chain(
                centralize("use_gc"),
                scale_by_radam(),
                add_decayed_weights(),
                scale_by_learning_rate(),
                lookahead(),
            ),
            maximize=maximize,
            foreach=foreach,
            state_dtype=state_dtype,
        )


# ---------------------------------------------------------------------------- Sophia


def _find(t: Transform, cls: type) -> Any:
    stack = [t]
    while stack:
        x = stack.pop()
        if isinstance(x, cls):
            return x
        stack.extend(x.children())
    return None


class Sophia(ChainedOptimizer):
    r"""Sophia: clipped momentum preconditioned by a diagonal Hessian estimate (lecture Algorithm 3).

    ::

        m = b1 m + (1 - b1) g
        if t mod k == 1:  h = b2 h + (1 - b2) hhat       # hhat = Estimator(p); h_{1-k} = 0
        p <- p - lr * weight_decay * p                   # decoupled weight decay
        p <- p - lr * clip(m / max(gamma * h, eps), 1)

    Estimators (see :class:`hamopt.transforms.ScaleBySophia`):

    * ``estimator="hutchinson"`` (default, Algorithm 1): ``hhat = u ⊙ (H u)``, ``u ~ N(0, I)``.
      Call ``loss.backward(create_graph=True); opt.step()``. At a refresh step where no
      gradient carries a graph (a loss linear in every parameter, or a backward without
      ``create_graph``) the estimate is zero and a ``UserWarning`` says how to get one.
    * ``estimator="gnb"`` (Gauss-Newton-Bartlett, Algorithm 2): ``hhat = B ghat ⊙ ghat`` with
      ``ghat`` the gradient of the mean of the losses on labels sampled from the model's own
      output. Call ``loss.backward(); opt.step(closure)`` where ``closure()`` returns those
      ``B`` losses (``reduction="none"``); it is called only at refresh steps, and ``step``
      returns their mean then (``None`` otherwise).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default: 1e-4).
        betas: ``(b1, b2)``: momentum and Hessian-EMA decays (default: (0.965, 0.99)).
        gamma: the clipping scale ``gamma`` (default: 0.01).
        eps: floor of the denominator (default: 1e-12).
        weight_decay: decoupled weight decay (default: 0.1).
        k: refresh period of the Hessian estimate (default: 10).
        estimator: ``"hutchinson"`` or ``"gnb"`` (default: ``"hutchinson"``).
        use_gc: gradient centralization of ``g`` first (default: False).

    Deviations: none from Algorithm 3. The authors' SophiaG code uses
    ``sign(m) min(|m| / (gamma B h + eps), 1)``, equal for ``h >= 0``; ours (the lecture's
    ``max``) also stays a descent step when a Hutchinson estimate is negative.
    ``step`` is overridden only to hand the GNB closure to the transform.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        gamma: float = 0.01,
        eps: float = 1e-12,
        weight_decay: float = 0.1,
        k: int = 10,
        estimator: str = "hutchinson",
        use_gc: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, betas=betas, gamma=gamma, eps=eps, weight_decay=weight_decay, k=k, use_gc=use_gc),
            chain(centralize("use_gc"), scale_by_sophia(estimator), apply_decayed_update()),
            maximize=maximize,
            foreach=foreach,
            state_dtype=state_dtype,
        )

    #: GradScaler's contract for optimizers that handle the loss scale themselves (as torch's
    #: fused Adam does): ``scaler.step(opt)`` sets ``opt.grad_scale`` (the scale the gradients
    #: still carry) and ``opt.found_inf`` and calls ``step`` without unscaling first.
    _step_supports_amp_scaling = True

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One step. Hutchinson: ``closure`` as for any optimizer (it must call
        ``backward(create_graph=True)``). GNB: ``closure`` returns the sampled-label losses and
        is called only when the Hessian estimate is refreshed; their mean is returned then.

        Under ``torch.amp.GradScaler`` (``scaler.step(opt)``) the step is skipped when the
        scaler found an inf or NaN, and otherwise runs on ``p.grad / scale`` as a graph node,
        so the momentum *and* the Hessian estimate (a derivative of that gradient) are those
        of the unscaled loss. ``p.grad`` itself is left as it was.
        """
        scale = self.__dict__.get("grad_scale")
        found_inf = self.__dict__.get("found_inf")
        if found_inf is not None and scale is None:
            raise RuntimeError(
                "Sophia under GradScaler: call scaler.step(opt) without scaler.unscale_(opt) before it. "
                "The Hessian estimate comes from the gradient's graph, which still carries the loss "
                "scale after unscale_, and Sophia can only divide it out while the scaler hands it over "
                "(Sophia clips its update per coordinate, so gradient clipping is rarely needed)"
            )
        if found_inf is not None and float(found_inf) > 0:
            return None  # GradScaler's rule: skip the step, parameters and state untouched
        sophia = _find(self.transform, ScaleBySophia)
        gnb = sophia is not None and sophia.estimator == "gnb"
        loss = None
        if closure is not None and not gnb:  # its backward must run before the gradients are looked at
            with torch.enable_grad():
                loss = closure()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        graph_seen = any(p.grad.requires_grad for p in params)  # type: ignore[union-attr]
        swapped = []
        if scale is not None:
            with torch.enable_grad():  # the division is part of the graph: H of the unscaled loss
                inv = 1.0 / scale
                for p in params:
                    swapped.append((p, p.grad))
                    p.grad = p.grad * inv.to(p.grad.device)  # type: ignore[operator]
        try:
            run = _unhooked(ChainedOptimizer.step)  # this step's hooks fire once, around Sophia.step
            if sophia is None:
                run(self, None)
                return loss
            with sophia.bind_closure(closure if gnb else None, graph_seen=graph_seen):
                run(self, None)
            return sophia.take_loss() if gnb else loss
        finally:
            for p, g in swapped:
                p.grad = g


# ---------------------------------------------------------------------------- Lookahead


_LOW = (torch.bfloat16, torch.float16)


#: The keys a Lookahead state dict adds to each saved parameter group (taken out again on load).
_LA_KEYS = ("lookahead_k", "lookahead_alpha", "lookahead_step")


def _unhooked(step: Callable[..., Any]) -> Callable[..., Any]:
    """A class's ``step`` without the hook wrapper torch puts around it (``profile_hook_step``)."""
    return step.__wrapped__ if getattr(step, "hooked", False) else step  # type: ignore[attr-defined]


class Lookahead(torch.optim.Optimizer):
    r"""Lookahead around any optimizer (Zhang et al. 2019, Algorithm 1).

    ::

        phi = p_0                                  (slow weights, at the parameter's first step)
        every step:      p <- base_optimizer.step(p)          (fast weights)
        every k steps:   phi <- phi + alpha * (p - phi);  p <- phi

    The base optimizer is ``self.base_optimizer`` (ours or torch's); ``param_groups`` are the
    base's own list, so LR schedulers, ``add_param_group`` and per-group hyperparameters work
    through the wrapper. The slow weights live in ``self.state[p]["slow_param"]`` (float32 for
    bf16/fp16 parameters unless ``state_dtype`` says otherwise), so ``hamopt.state_bytes``
    counts them. The synchronisation is the same rule as the chain transform
    :func:`hamopt.transforms.lookahead` (which Ranger uses, with per-parameter step counts):
    both call :func:`hamopt.transforms.adaptive.lookahead_sync_`.

    It behaves like any ``torch.optim.Optimizer``: its ``state_dict()`` has torch's layout
    (``state`` by parameter index, each entry the base's state plus ``slow_param``, and
    ``param_groups`` the base's groups plus ``lookahead_k``, ``lookahead_alpha`` and
    ``lookahead_step``), so ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``
    and ``set_optimizer_state_dict`` work; state dicts in the layout of hamopt 0.x
    (``{"base_optimizer", "state", "lookahead"}``) still load. Step, state_dict and
    load_state_dict hooks (its own, the global ones, and the base's own) fire once each; a
    resumed run continues bit-for-bit.

    Args:
        base_optimizer: the inner optimizer (any ``torch.optim.Optimizer``).
        k: synchronisation period (default: 5).
        alpha: slow-weight step size in ``[0, 1]`` (default: 0.5).
        state_dtype: dtype of the slow weights (default: the parameter's, float32 for bf16/fp16).

    The step count is one for the whole wrapper (the paper's ``k`` inner steps); a parameter
    without a gradient at some steps still synchronises at multiples of ``k``. ``step(closure)``
    passes the closure to the base optimizer.
    """

    def __init__(
        self,
        base_optimizer: torch.optim.Optimizer,
        k: int = 5,
        alpha: float = 0.5,
        *,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"Lookahead wraps a torch.optim.Optimizer, got {type(base_optimizer).__name__}: {base_optimizer!r}"
            )
        V.check_positive_int("k", k)
        V.check_range("alpha", alpha, 0.0, 1.0)
        if state_dtype is not None and not (isinstance(state_dtype, torch.dtype) and state_dtype.is_floating_point):
            raise ValueError(f"Invalid state_dtype: {state_dtype!r} (expected a floating torch.dtype or None)")
        self.base_optimizer = base_optimizer
        self.k, self.alpha, self.state_dtype = k, float(alpha), state_dtype
        self.lookahead_step = 0
        self.defaults = base_optimizer.defaults
        self.state: defaultdict[Tensor, Any] = defaultdict(dict)
        init_wrapper_hooks(self)

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.base_optimizer.param_groups

    def __getstate__(self) -> dict[str, Any]:
        return {
            "base_optimizer": self.base_optimizer,
            "k": self.k,
            "alpha": self.alpha,
            "state_dtype": self.state_dtype,
            "lookahead_step": self.lookahead_step,
            "defaults": self.defaults,
            "state": self.state,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        init_wrapper_hooks(self)

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, base_optimizer={self.base_optimizer!r})"

    def _slow_dtype(self, p: Tensor) -> torch.dtype:
        if self.state_dtype is not None:
            return self.state_dtype
        return torch.float32 if p.dtype in _LOW else p.dtype

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.base_optimizer.add_param_group(param_group)

    @torch.compiler.disable
    def _snapshot(self, closure_given: bool) -> dict[Tensor, Tensor]:
        """Slow weights for parameters that have a gradient and none yet; with a closure, also
        provisional copies of parameters whose gradient the closure may create."""
        pending: dict[Tensor, Tensor] = {}
        with torch.no_grad():
            for p in self._params():
                if "slow_param" in self.state.get(p, {}):
                    continue
                if p.grad is not None:
                    self.state[p]["slow_param"] = p.detach().to(self._slow_dtype(p), copy=True)
                elif closure_given and p.requires_grad:
                    pending[p] = p.detach().to(self._slow_dtype(p), copy=True)
        return pending

    @torch.compiler.disable
    def _after_step(self, pending: dict[Tensor, Tensor]) -> None:
        for p, slow in pending.items():
            if p.grad is not None:
                self.state[p]["slow_param"] = slow
        self.lookahead_step += 1
        if self.lookahead_step % self.k == 0:
            self.sync()

    @torch.no_grad()
    def sync(self) -> None:
        """``phi <- phi + alpha (p - phi);  p <- phi`` for every parameter with slow weights."""
        buckets: dict[tuple[Any, ...], tuple[list[Tensor], list[Tensor]]] = {}
        for p in self._params():
            st = self.state.get(p)
            if not st or "slow_param" not in st:
                continue
            slow = st["slow_param"]
            ps, ss = buckets.setdefault((p.device, p.dtype, slow.dtype), ([], []))
            ps.append(p)
            ss.append(slow)
        for ps, ss in buckets.values():
            fast = [p.detach() if p.dtype == s.dtype else p.detach().to(s.dtype) for p, s in zip(ps, ss)]
            lookahead_sync_(ss, fast, self.alpha, True)
            ops.copy_([p.detach() for p in ps], ss, True)

    def _base_step(self, closure: Callable[[], Any] | None) -> Any:
        """The base optimizer's step with its own step hooks, but not the global ones: those
        fire once, around this wrapper's step."""
        base = self.base_optimizer
        args: tuple[Any, ...] = (closure,) if closure is not None else ()
        kwargs: dict[str, Any] = {}
        for pre in list(base._optimizer_step_pre_hooks.values()):
            result = pre(base, args, kwargs)
            if result is not None:
                args, kwargs = result
        out = _unhooked(type(base).step)(base, *args, **kwargs)
        for post in list(base._optimizer_step_post_hooks.values()):
            post(base, args, kwargs)
        return out

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One base-optimizer step; every ``k``-th step also synchronises the slow weights."""
        pending = self._snapshot(closure is not None)
        loss = self._base_step(closure)
        self._after_step(pending)
        return loss

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """torch's layout: ``{"state": {index: {**base state, "slow_param": phi}}, "param_groups":
        [{**base group, "lookahead_k", "lookahead_alpha", "lookahead_step"}]}``, parameters
        numbered across groups in order. State dict hooks (this optimizer's) fire."""
        for pre in list(self._optimizer_state_dict_pre_hooks.values()):
            pre(self)
        base = self.base_optimizer.state_dict()
        index = {id(p): i for i, p in enumerate(self._params())}
        state: dict[Any, Any] = {k: dict(v) for k, v in base["state"].items()}
        for p, st in self.state.items():
            if id(p) in index and "slow_param" in st:
                state.setdefault(index[id(p)], {})["slow_param"] = st["slow_param"]
        extra = dict(lookahead_k=self.k, lookahead_alpha=self.alpha, lookahead_step=self.lookahead_step)
        sd: dict[str, Any] = {"state": state, "param_groups": [{**g, **extra} for g in base["param_groups"]]}
        for key, value in base.items():  # anything else the base keeps at the top level
            sd.setdefault(key, value)
        for post in list(self._optimizer_state_dict_post_hooks.values()):
            result = post(self, sd)
            if result is not None:
                sd = result
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load a state dict of :meth:`state_dict` (or of the old ``{"base_optimizer", "state",
        "lookahead"}`` layout). Load state dict hooks (this optimizer's) fire."""
        state_dict = dict(state_dict)
        for pre in list(self._optimizer_load_state_dict_pre_hooks.values()):
            result = pre(self, state_dict)
            if result is not None:
                state_dict = result
        if "base_optimizer" in state_dict or "lookahead" in state_dict:
            base_sd, slow, la = self._split_old(state_dict)
        else:
            base_sd, slow, la = self._split(state_dict)
        params = self._params()
        bad = [i for i in slow if not (isinstance(i, int) and 0 <= i < len(params))]
        if bad:
            raise ValueError(f"Lookahead state dict refers to parameters {bad} but the optimizer has {len(params)}")
        V.check_positive_int("k", la["k"])
        V.check_range("alpha", la["alpha"], 0.0, 1.0)
        for i, t in slow.items():
            if t.shape != params[i].shape:
                raise ValueError(f"Slow weights of parameter {i} have shape {tuple(t.shape)}, "
                                 f"the parameter {tuple(params[i].shape)}")
        self.base_optimizer.load_state_dict(base_sd)
        self.k, self.alpha, self.lookahead_step = int(la["k"]), float(la["alpha"]), int(la["step"])
        self.state = defaultdict(dict)
        for i, t in slow.items():
            p = params[i]
            self.state[p]["slow_param"] = t.to(device=p.device, copy=True)
        for post in list(self._optimizer_load_state_dict_post_hooks.values()):
            post(self)

    @staticmethod
    def _split(sd: dict[str, Any]) -> tuple[dict[str, Any], dict[Any, Tensor], dict[str, Any]]:
        for key in ("state", "param_groups"):
            if key not in sd:
                raise ValueError(f"Not a Lookahead state dict: missing {key!r} (keys: {sorted(sd)})")
        groups = sd["param_groups"]
        if not groups or any(k not in groups[0] for k in _LA_KEYS):
            raise ValueError("Not a Lookahead state dict: its param_groups lack "
                             f"{', '.join(_LA_KEYS)} (a state dict of the base optimizer?)")
        la = dict(k=groups[0]["lookahead_k"], alpha=groups[0]["lookahead_alpha"], step=groups[0]["lookahead_step"])
        # Parameters are keyed as the saved groups list them (indices, or the FQNs that
        # torch.distributed.checkpoint puts there); they map to positions in group order.
        pos = {pid: n for n, pid in enumerate(pid for g in groups for pid in g["params"])}
        base_state: dict[Any, Any] = {}
        slow: dict[Any, Tensor] = {}
        for i, st in sd["state"].items():
            rest = {k: v for k, v in st.items() if k != "slow_param"}
            if "slow_param" in st:
                slow[pos.get(i, i)] = st["slow_param"]
            if rest:
                base_state[i] = rest
        base_sd = {k: v for k, v in sd.items() if k not in ("state", "param_groups")}
        base_sd["state"] = base_state
        base_sd["param_groups"] = [{k: v for k, v in g.items() if k not in _LA_KEYS} for g in groups]
        return base_sd, slow, la

    @staticmethod
    def _split_old(sd: dict[str, Any]) -> tuple[dict[str, Any], dict[Any, Tensor], dict[str, Any]]:
        for key in ("base_optimizer", "state", "lookahead"):
            if key not in sd:
                raise ValueError(f"Not a Lookahead state dict: missing {key!r} (keys: {sorted(sd)})")
        slow = {i: st["slow_param"] for i, st in sd["state"].items()}
        return sd["base_optimizer"], slow, sd["lookahead"]


# ---------------------------------------------------------------------------- helpers


def scale_lr(lr: float, base_batch: int, new_batch: int, rule: str = "linear") -> float:
    """The lecture's learning rate for a new batch size.

    ``rule="linear"``: ``lr * new_batch / base_batch`` (keep the update per sample: Goyal et al.
    2017). ``rule="sqrt"``: ``lr * sqrt(new_batch / base_batch)`` (keep the variance of the
    update: Hoffer et al. 2017).

        >>> scale_lr(0.1, 256, 1024), scale_lr(0.1, 256, 1024, rule="sqrt")
        (0.4, 0.2)

    Raises:
        ValueError: a negative or non-finite ``lr``, a batch size that is not a positive
            integer, or an unknown ``rule``.
    """
    V.check_lr(lr)
    V.check_positive_int("base_batch", base_batch)
    V.check_positive_int("new_batch", new_batch)
    V.check_choice("rule", rule, ("linear", "sqrt"))
    ratio = new_batch / base_batch
    return float(lr) * (ratio if rule == "linear" else math.sqrt(ratio))


def with_centralization(optimizer: ChainedOptimizer) -> ChainedOptimizer:
    """Put gradient centralization in front of a hamopt optimizer's chain (in place; returns it).

    Works for every :class:`~hamopt.core.optimizer.ChainedOptimizer` (all of hamopt's own
    optimizers); centralization keeps no state, so this can be done at any time.
    """
    if not isinstance(optimizer, ChainedOptimizer):
        raise TypeError(
            f"with_centralization needs a hamopt ChainedOptimizer, got {type(optimizer).__name__}; "
            "for your own chain put hamopt.transforms.centralize() first"
        )
    optimizer.transform = chain(centralize(), optimizer.transform)
    return optimizer

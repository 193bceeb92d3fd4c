"""Transforms for the lecture's optimizers that ``torch.optim`` lacks (seed 002, ALGORITHMS.md 5).

Each idea is one transform, so it composes with every other hamopt transform:

* :func:`centralize` -- gradient centralization (Yong et al., "Gradient Centralization: A New
  Optimization Technique for Deep Neural Networks", ECCV 2020, arXiv:2004.01461): subtract the
  mean over all dims but the first, for tensors with more than one dim. Put it first in a chain.
* :func:`scale_by_adamod` -- AdaMod (Ding, Ren, Luo and Sun, "An Adaptive and Momental Bound
  Method for Stochastic Learning", arXiv:1910.12249, Algorithm 1).
* :func:`scale_by_diffgrad` -- diffGrad (Dubey et al., "diffGrad: An Optimization Method for
  Convolutional Neural Networks", IEEE TNNLS 2020, arXiv:1909.11015).
* :func:`scale_by_radam` -- RAdam's rectified Adam ratio (Liu et al., "On the Variance of the
  Adaptive Learning Rate and Beyond", ICLR 2020, arXiv:1908.03265, Algorithm 2), with the
  conventions of ``torch.optim.RAdam`` (rectify when ``rho_t > 5``, ``eps`` added to
  ``sqrt(v)``), which it equals.
* :func:`lookahead` -- Lookahead's slow weights as the last transform of a chain (Zhang, Lucas,
  Hinton and Ba, "Lookahead Optimizer: k steps forward, 1 step back", NeurIPS 2019,
  arXiv:1907.08610, Algorithm 1). ``hamopt.Lookahead`` wraps any optimizer instead.
* :func:`scale_by_sophia` -- Sophia's clipped, Hessian-preconditioned momentum with the
  Hutchinson and Gauss-Newton-Bartlett diagonal Hessian estimators (Liu, Li, Hall, Liang and Ma,
  "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model Pre-training",
  ICLR 2024, arXiv:2305.14342; the lecture's Algorithms 1-3).

signSGD / Signum are a chain of existing transforms (``scale_by_ema`` and ``scale_by_sign``),
see :class:`hamopt.SignSGD`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from ..core import ops
from ..core import validation as V
from ..core.transform import ELEMENT, TENSOR, StepContext, Transform, bias_correction, state_like
from .common import ScaleByAdam

__all__ = [
    "CentralizeGradients",
    "LookaheadSync",
    "ScaleByAdaMod",
    "ScaleByDiffGrad",
    "ScaleByRAdam",
    "ScaleBySophia",
    "centralize",
    "hutchinson_probe",
    "lookahead",
    "row_mean",
    "scale_by_adamod",
    "scale_by_diffgrad",
    "scale_by_radam",
    "scale_by_sophia",
]


# ---------------------------------------------------------------------------- small list helpers
# Element-wise list operations that hamopt.core.ops does not offer (yet), with the same
# foreach / per-tensor split. They allocate nothing the caller does not get back.


def _sub(xs: Sequence[Tensor], ys: Sequence[Tensor], foreach: bool) -> list[Tensor]:
    if foreach:
        return list(torch._foreach_sub(list(xs), list(ys)))
    return [x - y for x, y in zip(xs, ys)]


def _abs_sigmoid_(xs: list[Tensor], foreach: bool) -> list[Tensor]:
    if foreach:
        torch._foreach_abs_(xs)
        torch._foreach_sigmoid_(xs)
    else:
        for x in xs:
            x.abs_().sigmoid_()
    return xs


def _reciprocal_(xs: list[Tensor], foreach: bool) -> list[Tensor]:
    if foreach:
        torch._foreach_reciprocal_(xs)
    else:
        for x in xs:
            x.reciprocal_()
    return xs


def _minimum_(xs: list[Tensor], others: Sequence[Tensor], foreach: bool) -> list[Tensor]:
    if foreach:
        torch._foreach_minimum_(xs, list(others))
    else:
        for x, o in zip(xs, others):
            torch.minimum(x, o, out=x)
    return xs


def _clamp_(xs: list[Tensor], low: float | None, high: float | None, foreach: bool) -> list[Tensor]:
    if foreach:
        if low is not None:
            torch._foreach_clamp_min_(xs, low)
        if high is not None:
            torch._foreach_clamp_max_(xs, high)
    else:
        for x in xs:
            x.clamp_(min=low, max=high)
    return xs


def _sqrt_scalar(x: Any) -> Any:
    return x.sqrt() if isinstance(x, Tensor) else math.sqrt(x)


def _pick(xs: Sequence[Any], idx: Sequence[int]) -> list[Any]:
    return [xs[i] for i in idx]


# ---------------------------------------------------------------------------- the one reduction


def row_mean(x: Tensor) -> Tensor:
    """Mean over all dims but the first, kept for broadcasting (``as_matrix(x)`` row means).

    The only reduction in this module. Rows are whole under a ``Shard(0)`` placement, so it
    needs no all-reduce under FSDP2; other placements must gather the rows first.
    """
    return x.mean(dim=tuple(range(1, x.dim())), keepdim=True)


# ---------------------------------------------------------------------------- gradient centralization


class CentralizeGradients(Transform):
    """Gradient centralization: ``u <- u - mean over all dims but the first`` (tensors with 2+ dims).

    For a weight ``W`` (``out x in``, or a conv kernel ``out x in x kh x kw``) each output row of
    the gradient gets zero mean (Yong et al. 2020, eq. 3 ``Phi_GC(g) = g - mean(g)`` per output
    channel). 0-d and 1-d tensors (biases, norms) pass unchanged. It has no state.

    Args:
        hp: optional group key of a boolean switch (``"use_gc"`` in hamopt's lecture
            optimizers), so it can be turned off per parameter group. ``None``: always on.
    """

    splits = TENSOR  # row means

    def __init__(self, hp: str | None = None) -> None:
        self.hp = hp
        self.hyperparams = (hp,) if hp is not None else ()

    def validate(self, group: Mapping[str, Any]) -> None:
        if self.hp is not None and not isinstance(group[self.hp], bool):
            raise ValueError(f"Invalid {self.hp}: {group[self.hp]!r} (expected True or False)")

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        if self.hp is not None and not ctx.group[self.hp]:
            return updates
        idx = [i for i, u in enumerate(updates) if u.dim() > 1]
        if not idx:
            return updates
        out = ctx.writable(updates)
        for i in idx:
            out[i].sub_(row_mean(out[i]))
        return out

    def __repr__(self) -> str:
        return f"centralize(hp={self.hp!r})"


# ---------------------------------------------------------------------------- AdaMod


class ScaleByAdaMod(Transform):
    """AdaMod's momental bound on Adam's per-coordinate step (Ding et al. 2019, Algorithm 1).

    Reads ``betas = (b1, b2, b3)``, ``eps`` and ``lr``. State ``exp_avg``, ``exp_avg_sq``,
    ``exp_avg_lr``::

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        eta = lr / (sqrt(v / (1 - b2^t)) + eps)          # Adam's per-coordinate step size
        s = b3 s + (1 - b3) eta                          # its long-term average (s_0 = 0)
        u = min(eta, s) / lr * m / (1 - b1^t)            # scale_by_learning_rate makes it -min(eta, s) mhat

    The learning rate is part of ``eta`` (as in the paper), so ``s`` also smooths LR schedules.
    With ``lr == 0`` the update is zero.
    """

    state_keys = ("exp_avg", "exp_avg_sq", "exp_avg_lr")
    splits = ELEMENT
    hyperparams = ("betas", "eps", "lr")

    def validate(self, group: Mapping[str, Any]) -> None:
        V.check_betas(group["betas"], 3)
        V.check_eps(group["eps"])

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        for k in self.state_keys:
            state[k] = state_like(param, group)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        b1, b2, b3 = ctx.group["betas"]
        eps, lr = ctx.group["eps"], ctx.group["lr"]
        f = ctx.foreach
        m, v, s = ctx.state("exp_avg"), ctx.state("exp_avg_sq"), ctx.state("exp_avg_lr")
        ops.lerp_(m, updates, 1.0 - b1, f)
        ops.mul_(v, b2, f)
        ops.addcmul_(v, updates, updates, 1.0 - b2, f)
        bc1 = bias_correction(b1, ctx.steps)
        bc2_sqrt = [_sqrt_scalar(b) for b in bias_correction(b2, ctx.steps)]
        rate = ops.sqrt(v, f)  # becomes 1 / (sqrt(vhat) + eps) = eta / lr
        ops.div_(rate, bc2_sqrt, f)
        ops.add_(rate, eps, f)
        _reciprocal_(rate, f)
        ops.lerp_(s, ops.mul(rate, lr, f), 1.0 - b3, f)
        if isinstance(lr, Tensor) or lr > 0:
            _minimum_(rate, ops.mul(s, 1.0 / lr, f), f)
        ops.mul_(rate, m, f)
        ops.div_(rate, bc1, f)
        return ctx.fresh(rate)

    def __repr__(self) -> str:
        return "scale_by_adamod()"


# ---------------------------------------------------------------------------- diffGrad


class ScaleByDiffGrad(Transform):
    """diffGrad's friction coefficient on Adam's ratio (Dubey et al. 2020, Algorithm 1).

    Reads ``betas = (b1, b2)`` and ``eps``. State ``exp_avg``, ``exp_avg_sq``, ``previous_grad``
    (``g_0 = 0``, as the authors' code)::

        xi = sigmoid(|g_{t-1} - g_t|)                    # "AbsSig", in (0.5, 1)
        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        u = xi * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    state_keys = ("exp_avg", "exp_avg_sq", "previous_grad")
    splits = ELEMENT
    hyperparams = ("betas", "eps")

    def __init__(self) -> None:
        self._adam = ScaleByAdam()

    def validate(self, group: Mapping[str, Any]) -> None:
        self._adam.validate(group)

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        for k in self.state_keys:
            state[k] = state_like(param, group)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        prev = ctx.state("previous_grad")
        xi = _abs_sigmoid_(_sub(prev, updates, ctx.foreach), ctx.foreach)
        ops.copy_(prev, updates, ctx.foreach)
        out = self._adam.run(ctx, updates)  # fresh
        return ops.mul_(out, xi, ctx.foreach)

    def __repr__(self) -> str:
        return "scale_by_diffgrad()"


# ---------------------------------------------------------------------------- RAdam


def _radam_rect(b2: float, t: Any) -> tuple[Any, Any]:
    """``(on, r_t)``: whether the variance is tractable (``rho_t > 5``) and the rectification."""
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    b2t = b2**t
    rho_t = rho_inf - 2.0 * t * b2t / (1.0 - b2t)
    if isinstance(rho_t, Tensor):
        on = rho_t > 5.0
        safe = torch.where(on, rho_t, torch.full_like(rho_t, 6.0))
        r = ((safe - 4) * (safe - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * safe)).sqrt()
        return on, r
    if rho_t > 5.0:
        return True, math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
    return False, 0.0


class ScaleByRAdam(Transform):
    """RAdam's rectified Adam ratio (Liu et al. 2020, Algorithm 2), as ``torch.optim.RAdam``.

    Reads ``betas = (b1, b2)`` and ``eps``. State ``exp_avg``, ``exp_avg_sq``::

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2;   mhat = m / (1 - b1^t)
        rho_inf = 2 / (1 - b2) - 1;   rho_t = rho_inf - 2 t b2^t / (1 - b2^t)
        if rho_t > 5:  u = r_t * mhat * sqrt(1 - b2^t) / (sqrt(v) + eps),
                       r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        else:          u = mhat                       # momentum SGD during the warm-up

    Deviation from the paper: threshold 5 instead of 4 and ``eps`` (absent in the paper) added to
    ``sqrt(v)``, both as ``torch.optim.RAdam`` and the authors' code, so that ``radam`` in the
    registry (torch's class) and the RAdam inside ``ranger`` are the same rule (tested).
    """

    state_keys = ("exp_avg", "exp_avg_sq")
    hyperparams = ("betas", "eps")
    splits = ELEMENT

    def validate(self, group: Mapping[str, Any]) -> None:
        V.check_betas(group["betas"], 2)
        V.check_eps(group["eps"])

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        for k in self.state_keys:
            state[k] = state_like(param, group)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        b1, b2 = ctx.group["betas"]
        eps, f = ctx.group["eps"], ctx.foreach
        m, v = ctx.state("exp_avg"), ctx.state("exp_avg_sq")
        ops.lerp_(m, updates, 1.0 - b1, f)
        ops.mul_(v, b2, f)
        ops.addcmul_(v, updates, updates, 1.0 - b2, f)
        out = ops.clone(m)
        ops.div_(out, bias_correction(b1, ctx.steps), f)
        rects = [_radam_rect(b2, t) for t in ctx.steps]
        bc2 = bias_correction(b2, ctx.steps)
        if any(isinstance(on, Tensor) for on, _ in rects):  # compiled: no branching on values
            for i, ((on, r), b) in enumerate(zip(rects, bc2)):
                denom = v[i].sqrt().add_(eps)
                out[i] = torch.where(on, out[i] * (r * _sqrt_scalar(b)) / denom, out[i])
            return ctx.fresh(out)
        idx = [i for i, (on, _) in enumerate(rects) if on]
        if idx:
            sub = _pick(out, idx)
            ops.mul_(sub, [rects[i][1] * math.sqrt(bc2[i]) for i in idx], f)
            denom = ops.sqrt(_pick(v, idx), f)
            ops.add_(denom, eps, f)
            ops.div_(sub, denom, f)
        return ctx.fresh(out)

    def __repr__(self) -> str:
        return "scale_by_radam()"


# ---------------------------------------------------------------------------- Lookahead


def lookahead_sync_(slow: list[Tensor], fast: Sequence[Tensor], alpha: float, foreach: bool) -> list[Tensor]:
    """Lookahead's synchronisation ``phi <- phi + alpha (fast - phi)`` in place (Zhang et al.
    2019, Algorithm 1, line 7): the one place of the rule, for the chain transform
    :class:`LookaheadSync` and the wrapper :class:`hamopt.Lookahead`."""
    return ops.lerp_(slow, fast, alpha, foreach)


class LookaheadSync(Transform):
    """Lookahead's slow weights, applied to the final update (Zhang et al. 2019, Algorithm 1).

    Put it *last* in a chain (after ``scale_by_learning_rate``): it sees the update ``u`` that
    the shell adds to the parameter. Reads ``k`` and ``alpha`` (group keys named by ``k_key``,
    ``alpha_key``). State ``slow_param`` (``phi``, a copy of the parameter at its first step)::

        fast = p + u                                    # the inner optimizer's step
        if t % k == 0:  phi = phi + alpha (fast - phi);  u = phi - p   # so p becomes phi
        else:           u unchanged

    ``t`` is the parameter's own step count (a parameter frozen for a while synchronises on its
    own schedule). The wrapper :class:`hamopt.Lookahead` does the same around any optimizer with
    one step count for the whole optimizer.
    """

    state_keys = ("slow_param",)
    splits = ELEMENT

    def __init__(self, k_key: str = "k", alpha_key: str = "alpha") -> None:
        self.k_key, self.alpha_key = k_key, alpha_key
        self.hyperparams = (k_key, alpha_key)

    def validate(self, group: Mapping[str, Any]) -> None:
        V.check_positive_int(self.k_key, group[self.k_key])
        V.check_range(self.alpha_key, group[self.alpha_key], 0.0, 1.0)

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        state["slow_param"] = param.clone(memory_format=torch.preserve_format)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        k, alpha = ctx.group[self.k_key], ctx.group[self.alpha_key]
        slow = ctx.state("slow_param")
        if any(isinstance(t, Tensor) for t in ctx.steps):  # compiled: masks instead of branches
            out = ctx.writable(updates)
            for i, t in enumerate(ctx.steps):
                on = torch.remainder(t, k) == 0
                new_slow = torch.lerp(slow[i], ctx.params[i] + out[i], alpha)
                slow[i].copy_(torch.where(on, new_slow, slow[i]))
                out[i] = torch.where(on, slow[i] - ctx.params[i], out[i])
            return ctx.fresh(out)
        idx = [i for i, t in enumerate(ctx.steps) if int(t) % k == 0]
        if not idx:
            return updates
        out = ctx.writable(updates)
        sub, ss, ps = _pick(out, idx), _pick(slow, idx), _pick(ctx.params, idx)
        ops.add_(sub, ps, ctx.foreach)  # the fast weights
        lookahead_sync_(ss, sub, alpha, ctx.foreach)
        ops.copy_(sub, ss, ctx.foreach)
        ops.add_(sub, ps, ctx.foreach, alpha=-1.0)
        return out

    def __repr__(self) -> str:
        return f"lookahead(k_key={self.k_key!r}, alpha_key={self.alpha_key!r})"


# ---------------------------------------------------------------------------- Sophia

_GRAPH_MSG = (
    "Sophia's Hutchinson estimator refreshes the diagonal Hessian estimate every k steps from the "
    "gradient graph, and no gradient of this step carries one, so the estimate of this refresh is "
    "zero: right for a loss linear in every parameter (or a zero gradient), not what you want "
    "otherwise. Call `loss.backward(create_graph=True)` before `opt.step()` (or in the closure), or "
    "build the optimizer with estimator='gnb' and pass a closure."
)
_CLOSURE_MSG = (
    "Sophia(estimator='gnb') refreshes its Hessian estimate every k steps from a closure: call "
    "`opt.step(closure)` where `closure()` returns the losses on labels sampled from the model's own "
    "output, e.g. `logits = model(x); y = torch.distributions.Categorical(logits=logits).sample(); "
    "return F.cross_entropy(logits, y, reduction='none')`."
)
_SECOND_ORDER_MSG = (
    "Sophia's Hutchinson estimator differentiates the gradient a second time, and this model uses an "
    "operation torch cannot differentiate twice ({detail}). On the CPU this is usually "
    "torch.nn.functional.scaled_dot_product_attention (e.g. nn.TransformerEncoderLayer), whose fused CPU "
    "kernel has no second derivative. Either build the optimizer with estimator='gnb' (Gauss-Newton-Bartlett: "
    "first derivatives only) and pass a closure, or run the forward pass under "
    "`with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):`."
)
_MASK63 = (1 << 63) - 1


def _mix(a: int, b: int) -> int:
    """A splitmix64-style hash of two integers into a 63-bit generator seed."""
    z = (a * 0x9E3779B97F4A7C15 + b + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & _MASK63


def hutchinson_probe(param: Tensor, seed: int, step: int) -> Tensor:
    """The Gaussian probe ``u ~ N(0, I)`` (lecture Algorithm 1) for ``param`` at ``step``.

    Drawn from a generator seeded by ``(seed, step)``, so a run is reproducible and a resumed
    run continues bit-for-bit without saving a generator.
    """
    gen = torch.Generator(device=param.device)
    gen.manual_seed(_mix(seed, step))
    return torch.randn(param.shape, generator=gen, device=param.device, dtype=param.dtype)


def _bucket_leaves(ctx: StepContext) -> list[Tensor | None]:
    """The original parameters (autograd leaves) behind ``ctx.params``, which are detached or
    cast copies; the Hessian estimators differentiate with respect to the real parameters."""
    if ctx.leaves is None:
        raise RuntimeError("Sophia needs the shell to provide ctx.leaves (run it in a ChainedOptimizer)")
    return list(ctx.leaves)


class ScaleBySophia(Transform):
    """Sophia's clipped, diagonal-Hessian preconditioned momentum (lecture Algorithm 3).

    Reads ``betas = (b1, b2)``, ``gamma``, ``eps``, ``k`` and ``maximize``. State ``exp_avg``
    (``m``), ``hessian`` (``h``) and, for the Hutchinson estimator, the integer ``probe_seed``::

        m = b1 m + (1 - b1) g
        if (t - 1) % k == 0:  h = b2 h + (1 - b2) hhat       # refresh at t = 1, k + 1, 2k + 1, ...
        u = clip(m / max(gamma h, eps), 1)                  # clip(z, 1) = min(max(z, -1), 1)

    Estimators (``hhat``):

    * ``"hutchinson"`` (Algorithm 1): ``u ⊙ (H u)`` with ``u ~ N(0, I)``; ``H u`` is the
      gradient of ``<g, u>``, so the step needs ``loss.backward(create_graph=True)``. The probe
      spans all parameters of one bucket (same group, device and dtype), so cross terms inside
      the bucket are included; the estimate of ``diag(H)`` stays unbiased. Probes are seeded per
      parameter (from ``torch.initial_seed()`` and its position in the group) and per step.
      Under ``maximize`` the estimate is negated (the curvature of the minimized ``-f``).
    * ``"gnb"`` (Gauss-Newton-Bartlett, Algorithm 2): ``B * ghat ⊙ ghat`` where ``ghat`` is the
      gradient of the mean of the ``B`` losses that the closure returns (losses on labels
      sampled from the model's own output; ``B`` = their number, 1 for a scalar). The closure is
      bound by :class:`hamopt.Sophia`'s ``step`` and called once per refresh step.

    The refresh (autograd and random probes) runs eagerly even inside ``torch.compile``.
    """

    state_keys = ("exp_avg", "hessian")
    hyperparams = ("betas", "gamma", "eps", "k", "maximize")

    def __init__(self, estimator: str = "hutchinson") -> None:
        V.check_choice("estimator", estimator, ("hutchinson", "gnb"))
        self.estimator = estimator
        self.needs_grad_graph = estimator == "hutchinson"
        self._closure: Callable[[], Any] | None = None
        self._loss: Tensor | None = None
        self._graph_seen = False

    def validate(self, group: Mapping[str, Any]) -> None:
        V.check_betas(group["betas"], 2)
        V.check_positive("gamma", group["gamma"])
        V.check_eps(group["eps"])
        V.check_positive_int("k", group["k"])

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        state["exp_avg"] = state_like(param, group)
        state["hessian"] = state_like(param, group)

    # ------------------------------------------------------------------ the closure (gnb)
    @contextmanager
    def bind_closure(self, closure: Callable[[], Any] | None, graph_seen: bool = False) -> Iterator[None]:
        """Make ``closure`` available to the GNB estimator during one optimizer step.

        ``graph_seen``: some gradient of the optimizer (any group) carries a graph, so the
        user did call ``backward(create_graph=True)``: a gradient without one is constant in
        its parameter (a loss linear in it), and its Hutchinson estimate is zero."""
        self._closure, self._loss, self._graph_seen = closure, None, graph_seen
        try:
            yield
        finally:
            self._closure, self._graph_seen = None, False

    def take_loss(self) -> Tensor | None:
        """The closure's mean loss of the last step (``None`` if it was not called), detached."""
        loss, self._loss = self._loss, None
        return None if loss is None else loss.detach().mean()

    def _sampled_loss(self) -> Tensor:
        if self._loss is None:
            if self._closure is None:
                raise RuntimeError(_CLOSURE_MSG)
            with torch.enable_grad():
                loss = self._closure()
            if not isinstance(loss, Tensor) or not loss.requires_grad:
                raise RuntimeError("The GNB closure must return the sampled-label losses as a tensor "
                                   "attached to the model's graph. " + _CLOSURE_MSG)
            self._loss = loss
        return self._loss

    # ------------------------------------------------------------------ estimators
    def _hutchinson(self, ctx: StepContext, due: list[int], leaves: list[Tensor | None]) -> list[Tensor | None]:
        index = {id(p): n for n, p in enumerate(ctx.group["params"])}
        outs, ins, probes, pos = [], [], [], []
        for j, i in enumerate(due):
            p = leaves[i]
            if p is None or p.numel() == 0:
                continue
            st = ctx.states[i]
            if "probe_seed" not in st:
                st["probe_seed"] = _mix(torch.initial_seed(), index.get(id(p), 0))
            g = p.grad
            if g is not None and g.requires_grad:
                outs.append(g)
                ins.append(p)
                probes.append(hutchinson_probe(p, st["probe_seed"], int(ctx.steps[i])))
                pos.append(j)
        if not outs:
            # Gradients constant in their parameters: a zero Hessian. Without a graph anywhere
            # this cannot be told apart from a backward without create_graph (a loss linear in
            # every parameter has no graph either), so it is not an error, as a zero-gradient
            # step is not for any torch optimizer; the warning says how to get the estimate.
            if not self._graph_seen and any(leaves[i] is not None and leaves[i].numel() > 0 for i in due):  # type: ignore[union-attr]
                warnings.warn(_GRAPH_MSG, UserWarning, stacklevel=2)
            return [None] * len(due)
        try:
            with torch.enable_grad():
                hvs = torch.autograd.grad(outs, ins, grad_outputs=probes, retain_graph=True, allow_unused=True)
        except RuntimeError as e:
            text = str(e)
            if "derivative for" in text and "not implemented" in text:
                raise RuntimeError(_SECOND_ORDER_MSG.format(detail=text.strip().splitlines()[0])) from e
            raise
        est: list[Tensor | None] = [None] * len(due)
        sign = -1.0 if ctx.group.get("maximize", False) else 1.0
        for j, u, hv in zip(pos, probes, hvs):
            if hv is not None:
                est[j] = (u * hv).mul_(sign)
        return est

    def _gnb(self, ctx: StepContext, due: list[int], leaves: list[Tensor | None]) -> list[Tensor | None]:
        loss = self._sampled_loss()
        batch = max(loss.numel(), 1)
        pos = [j for j, i in enumerate(due) if leaves[i] is not None and leaves[i].requires_grad]  # type: ignore[union-attr]
        est: list[Tensor | None] = [None] * len(due)
        if not pos:
            return est
        ins = [leaves[due[j]] for j in pos]
        with torch.enable_grad():
            grads = torch.autograd.grad(loss.mean(), ins, retain_graph=True, allow_unused=True)
        for j, g in zip(pos, grads):
            if g is not None:
                est[j] = (g * g).mul_(batch)
        return est

    @torch.compiler.disable
    def _refresh(self, ctx: StepContext) -> None:
        k = ctx.group["k"]
        due = [i for i, t in enumerate(ctx.steps) if (int(t) - 1) % k == 0]
        if not due:
            return
        leaves = _bucket_leaves(ctx)
        est = self._hutchinson(ctx, due, leaves) if self.estimator == "hutchinson" else self._gnb(ctx, due, leaves)
        b2 = ctx.group["betas"][1]
        for i, e in zip(due, est):
            h = ctx.states[i]["hessian"]
            if e is None:
                h.mul_(b2)  # no curvature through this parameter: hhat = 0
            else:
                h.lerp_(e.to(h.dtype), 1.0 - b2)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        b1 = ctx.group["betas"][0]
        f = ctx.foreach
        m = ctx.state("exp_avg")
        ops.lerp_(m, updates, 1.0 - b1, f)
        self._refresh(ctx)
        denom = ops.mul(ctx.state("hessian"), ctx.group["gamma"], f)
        _clamp_(denom, ctx.group["eps"], None, f)
        out = ops.clone(m)
        ops.div_(out, denom, f)
        _clamp_(out, -1.0, 1.0, f)
        return ctx.fresh(out)

    def __repr__(self) -> str:
        return f"scale_by_sophia(estimator={self.estimator!r})"


# ---------------------------------------------------------------------------- constructors


def centralize(hp: str | None = None) -> CentralizeGradients:
    """See :class:`CentralizeGradients`."""
    return CentralizeGradients(hp)


def scale_by_adamod() -> ScaleByAdaMod:
    """See :class:`ScaleByAdaMod`."""
    return ScaleByAdaMod()


def scale_by_diffgrad() -> ScaleByDiffGrad:
    """See :class:`ScaleByDiffGrad`."""
    return ScaleByDiffGrad()


def scale_by_radam() -> ScaleByRAdam:
    """See :class:`ScaleByRAdam`."""
    return ScaleByRAdam()


def lookahead(k_key: str = "k", alpha_key: str = "alpha") -> LookaheadSync:
    """See :class:`LookaheadSync`."""
    return LookaheadSync(k_key, alpha_key)


def scale_by_sophia(estimator: str = "hutchinson") -> ScaleBySophia:
    """See :class:`ScaleBySophia`."""
    return ScaleBySophia(estimator)

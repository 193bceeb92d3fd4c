"""Lion-K: Lion with the sign replaced by the (sub)gradient of a convex kernel K.

Paper: Chen, Liu, Liang and Liu, "Lion Secretly Solves Constrained Optimization: As Lyapunov
Predicts" (ICLR 2024; seed 004_1adee5772a6cb714, equation (2), Table 2, Theorem 4.1). Lion
itself: Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023.

Equation (2) in the usual Lion form (``m`` the EMA of ``+g``; the same thing for odd
``gradK``, which all five kernels of Table 2 are)::

    c = b1 m + (1-b1) g;   x <- x - lr (gradK(c) + wd x);   m = b2 m + (1-b2) g

Each kernel is a small :class:`Kernel` object with ``grad`` (``gradK``), ``K`` and its
convex conjugate ``K_star`` (``+inf`` outside its domain), so the Lyapunov function
``H(x, m)`` of equation (6) can be evaluated from them. With ``wd > 0``, Lion-K minimizes
``f(x) + K*(wd x) / wd``: Lion (``K = ||x||_1``) keeps ``||x||_inf <= 1/wd``.

| kernel      | K(x)                      | gradK(x)                              | K*(y) finite on                  |
|-------------|---------------------------|---------------------------------------|----------------------------------|
| l1          | ``||x||_1``               | ``sign(x)``                           | ``||y||_inf <= 1`` (value 0)     |
| lp (p)      | ``||x||_p``               | ``sign(x)|x|^(p-1)/||x||_p^(p-1)``    | ``||y||_q <= 1``, 1/p+1/q=1 (0)  |
| threshold e | ``sum max(|x_i|-e, 0)``   | ``sign(x) 1[|x| > e]``                | ``||y||_inf <= 1`` (``e||y||_1``)|
| topk k      | sum of the k largest |x_i|| ``sign(x)`` on the k largest, else 0 | ``||y||_inf<=1, ||y||_1<=k`` (0) |
| huber e     | ``sum huber_e(x_i)``      | ``clip(x, -e, e) / e``                | ``||y||_inf <= 1`` (e/2 ||y||^2) |

Norms and the top-k ranking are taken over one parameter tensor (all its elements).
Whole-tensor reductions go through :func:`tensor_norms` (the lp norm) and ``torch.topk``
(top-k); both would need the whole tensor under sharding.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..core import ops
from ..core import validation as V
from ..core.transform import ELEMENT, TENSOR, StepContext, Transform, state_like

__all__ = [
    "HuberKernel",
    "Kernel",
    "L1Kernel",
    "LpKernel",
    "ScaleByLionK",
    "ThresholdKernel",
    "TopKKernel",
    "UserKernel",
    "KERNELS",
    "make_kernel",
    "scale_by_lionk",
    "tensor_norms",
]

_INF = float("inf")


def tensor_norms(xs: Sequence[Tensor], ord: float, foreach: bool) -> list[Tensor]:
    """``||x||_ord`` over all elements of each tensor (0-d tensors; 0 for zero-size ones).

    The one whole-tensor norm of this module (under sharding it needs an all-reduce).
    """
    if foreach and len(xs) > 0:
        return list(torch._foreach_norm(list(xs), ord))
    return [torch.linalg.vector_norm(x, ord) for x in xs]


def _flat(x: Tensor) -> Tensor:
    return x.reshape(-1)


def _one(y: Tensor) -> float:
    """1 plus 1000 ulps of ``y``'s dtype: domain checks forgive rounding on the boundary."""
    return 1.0 + 1e3 * torch.finfo(y.dtype).eps


def _in_box(y: Tensor) -> Tensor:
    """``||y||_inf <= 1`` as a 0-d bool tensor (True for a zero-size tensor)."""
    if y.numel() == 0:
        return y.new_ones((), dtype=torch.bool)
    return _flat(y).abs().amax() <= _one(y)


def _inside(ok: Tensor, value: Tensor) -> Tensor:
    """``value`` where ``ok`` else ``+inf`` (an indicator-type conjugate)."""
    return torch.where(ok, value, torch.full_like(value, _INF))


class Kernel:
    """A convex kernel ``K`` of Lion-K: ``grad`` (a subgradient), ``K`` and ``K_star``.

    ``grad_(xs, foreach)`` applies ``gradK`` to a list of tensors the caller owns (it may
    overwrite them) and returns the results; ``grad(x)`` is the single-tensor form.
    ``K(x)`` and ``K_star(y)`` return 0-d tensors over all elements of the tensor;
    ``K_star`` is ``+inf`` outside its domain (domain checks allow 1000 ulps of rounding,
    so points on the boundary, where Lion-K's iterates end, count as inside).
    """

    name = "kernel"
    #: :meth:`hamopt.core.transform.Transform.granularity` of ``grad_``: ``"element"`` for
    #: kernels applied coordinate by coordinate, ``"tensor"`` for per-tensor norms/rankings.
    splits = TENSOR

    def grad_(self, xs: list[Tensor], foreach: bool) -> list[Tensor]:
        return [self.grad(x) for x in xs]

    def grad(self, x: Tensor) -> Tensor:
        return self.grad_([x.clone()], False)[0]

    def K(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{self!r} does not define K")

    def K_star(self, y: Tensor) -> Tensor:
        raise NotImplementedError(f"{self!r} does not define K*")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class L1Kernel(Kernel):
    """``K = ||x||_1``, ``gradK = sign`` (Lion). ``K*(y) = 0`` if ``||y||_inf <= 1``."""

    name = "l1"
    splits = ELEMENT

    def grad_(self, xs: list[Tensor], foreach: bool) -> list[Tensor]:
        return ops.sign_(xs, foreach)

    def K(self, x: Tensor) -> Tensor:
        return x.abs().sum()

    def K_star(self, y: Tensor) -> Tensor:
        return _inside(_in_box(y), y.new_zeros(()))


class LpKernel(Kernel):
    """``K = ||x||_p`` (``p >= 1``), ``gradK = sign(x) (|x| / ||x||_p)^(p-1)`` (0 at x = 0).

    ``K*(y) = 0`` if ``||y||_q <= 1`` with ``1/p + 1/q = 1`` (``q = inf`` for ``p = 1``).
    """

    name = "lp"

    def __init__(self, p: float) -> None:
        self.p = float(p)
        self.q = _INF if self.p == 1.0 else self.p / (self.p - 1.0)

    def grad_(self, xs: list[Tensor], foreach: bool) -> list[Tensor]:
        norms = tensor_norms(xs, self.p, foreach)
        safe = [torch.where(n > 0, n, torch.ones_like(n)) for n in norms]
        if foreach and xs:
            out = list(torch._foreach_abs(xs))
            torch._foreach_div_(out, safe)
            torch._foreach_pow_(out, self.p - 1.0)
            torch._foreach_mul_(out, torch._foreach_sign(xs))
            return out
        return [x.abs().div_(n).pow_(self.p - 1.0).mul_(x.sign()) for x, n in zip(xs, safe)]

    def K(self, x: Tensor) -> Tensor:
        return torch.linalg.vector_norm(x, self.p)

    def K_star(self, y: Tensor) -> Tensor:
        return _inside(torch.linalg.vector_norm(y, self.q) <= _one(y), y.new_zeros(()))

    def __repr__(self) -> str:
        return f"LpKernel(p={self.p})"


class ThresholdKernel(Kernel):
    """``K = sum max(|x_i| - e, 0)``, ``gradK = sign(x) 1[|x| > e]``.

    ``K*(y) = e ||y||_1`` if ``||y||_inf <= 1`` (an l1 penalty inside the box).
    """

    name = "threshold"
    splits = ELEMENT

    def __init__(self, e: float) -> None:
        self.e = float(e)

    def grad_(self, xs: list[Tensor], foreach: bool) -> list[Tensor]:
        return [torch.where(x.abs() > self.e, x.sign(), torch.zeros_like(x)) for x in xs]

    def K(self, x: Tensor) -> Tensor:
        return (x.abs() - self.e).clamp_min(0).sum()

    def K_star(self, y: Tensor) -> Tensor:
        ok = _in_box(y)
        return _inside(ok, self.e * y.abs().sum())

    def __repr__(self) -> str:
        return f"ThresholdKernel(e={self.e})"


class TopKKernel(Kernel):
    """``K = sum of the k largest |x_i|``, ``gradK = sign(x)`` on those k coordinates, 0 elsewhere.

    (Table 2 writes ``1[|x| > |x_(k)|]``, which would keep only ``k - 1``; ties are broken by
    ``torch.topk``.) ``k`` counts coordinates per tensor (all of them if the tensor is
    smaller). ``K*(y) = 0`` if ``||y||_inf <= 1`` and ``||y||_1 <= k``.
    """

    name = "topk"

    def __init__(self, k: int) -> None:
        self.k = int(k)

    def grad_(self, xs: list[Tensor], foreach: bool) -> list[Tensor]:
        out = []
        for x in xs:
            flat = _flat(x)
            k = min(self.k, flat.numel())
            idx = torch.topk(flat.abs(), k, sorted=False).indices
            g = torch.zeros_like(flat)
            g.scatter_(0, idx, flat.gather(0, idx).sign())
            out.append(g.view_as(x))
        return out

    def K(self, x: Tensor) -> Tensor:
        flat = _flat(x).abs()
        return torch.topk(flat, min(self.k, flat.numel()), sorted=False).values.sum()

    def K_star(self, y: Tensor) -> Tensor:
        ok = _in_box(y) & (y.abs().sum() <= self.k * _one(y))
        return _inside(ok, y.new_zeros(()))

    def __repr__(self) -> str:
        return f"TopKKernel(k={self.k})"


class HuberKernel(Kernel):
    """``K = sum huber_e(x_i)``, ``gradK = clip(x, -e, e) / e``.

    ``huber_e(x) = x^2/(2e)`` for ``|x| < e``, ``|x| - e/2`` otherwise;
    ``K*(y) = (e/2) ||y||_2^2`` if ``||y||_inf <= 1``.
    """

    name = "huber"
    splits = ELEMENT

    def __init__(self, e: float) -> None:
        self.e = float(e)

    def grad_(self, xs: list[Tensor], foreach: bool) -> list[Tensor]:
        if foreach and xs:
            torch._foreach_clamp_min_(xs, -self.e)
            torch._foreach_clamp_max_(xs, self.e)
            torch._foreach_div_(xs, self.e)
            return xs
        return [x.clamp_(-self.e, self.e).div_(self.e) for x in xs]

    def K(self, x: Tensor) -> Tensor:
        a = x.abs()
        return torch.where(a < self.e, a * a / (2 * self.e), a - self.e / 2).sum()

    def K_star(self, y: Tensor) -> Tensor:
        ok = _in_box(y)
        return _inside(ok, 0.5 * self.e * (y * y).sum())

    def __repr__(self) -> str:
        return f"HuberKernel(e={self.e})"


class UserKernel(Kernel):
    """A user's ``gradK(tensor) -> tensor`` (applied per parameter tensor).

    Lion-K uses ``c = b1 m + (1-b1) g`` with ``m`` the EMA of ``+g`` and steps along
    ``-gradK(c)``; the paper's equation (2) uses ``m`` the EMA of ``-g`` and steps along
    ``+gradK(-c)``. They agree when ``gradK`` is odd (``gradK(-x) = -gradK(x)``); for a
    kernel that is not odd, pass ``lambda x: -paper_gradK(-x)``. Optionally give ``K`` and
    ``K_star`` (needed only by the theory tools).
    """

    name = "callable"

    def __init__(self, grad: Callable[[Tensor], Tensor], K: Callable[[Tensor], Tensor] | None = None,
                 K_star: Callable[[Tensor], Tensor] | None = None) -> None:
        self.fn = grad
        self._K = K
        self._K_star = K_star

    def grad_(self, xs: list[Tensor], foreach: bool) -> list[Tensor]:
        return [self.fn(x) for x in xs]

    def K(self, x: Tensor) -> Tensor:
        if self._K is None:
            raise NotImplementedError("this user kernel has no K; pass UserKernel(grad, K=..., K_star=...)")
        return self._K(x)

    def K_star(self, y: Tensor) -> Tensor:
        if self._K_star is None:
            raise NotImplementedError("this user kernel has no K*; pass UserKernel(grad, K=..., K_star=...)")
        return self._K_star(y)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UserKernel) and other.fn is self.fn

    def __hash__(self) -> int:
        return hash(self.fn)

    def __repr__(self) -> str:
        return f"UserKernel({getattr(self.fn, '__name__', self.fn)!r})"


KERNELS: dict[str, tuple[str | None, type[Kernel]]] = {
    "l1": (None, L1Kernel),
    "lp": ("p", LpKernel),
    "threshold": ("e", ThresholdKernel),
    "topk": ("k", TopKKernel),
    "huber": ("e", HuberKernel),
}


def _check_arg(kernel: str, name: str, value: Any) -> None:
    what = {"p": "the norm order, a finite number >= 1", "e": "a threshold > 0",
            "k": "the number of coordinates per tensor, an integer >= 1"}[name]
    if value is None:
        raise ValueError(f"LionK kernel {kernel!r} needs {name} ({what})")
    if name == "k":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Invalid k for kernel 'topk': {value!r} (must be an integer >= 1)")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Invalid {name} for kernel {kernel!r}: {value!r} ({what})")
    v = float(value)
    bad = not math.isfinite(v) or (v < 1.0 if name == "p" else v <= 0.0)
    if bad:
        raise ValueError(f"Invalid {name} for kernel {kernel!r}: {value!r} ({what})")


def make_kernel(kernel: str | Callable[[Tensor], Tensor] | Kernel, p: float | None = None,
                e: float | None = None, k: int | None = None) -> Kernel:
    """Build a :class:`Kernel` from LionK's arguments; a missing, extra or invalid one is a ``ValueError``.

    ``kernel`` is a name (``l1``, ``lp`` with ``p``, ``threshold`` with ``e``, ``topk`` with
    ``k``, ``huber`` with ``e``), a :class:`Kernel`, or a callable ``gradK(tensor) -> tensor``.
    """
    given = {"p": p, "e": e, "k": k}
    if isinstance(kernel, Kernel) or (callable(kernel) and not isinstance(kernel, str)):
        extra = [n for n, v in given.items() if v is not None]
        if extra:
            raise ValueError(f"LionK with a custom kernel takes no {', '.join(extra)} (put them in the kernel)")
        return kernel if isinstance(kernel, Kernel) else UserKernel(kernel)
    key = kernel.strip().lower() if isinstance(kernel, str) else kernel
    if key not in KERNELS:
        names = ", ".join(repr(n) for n in KERNELS)
        raise ValueError(f"Invalid kernel: {kernel!r} (choose one of {names}, "
                         "or pass a callable gradK(tensor) -> tensor)")
    needs, cls = KERNELS[key]
    extra = [n for n, v in given.items() if v is not None and n != needs]
    if extra:
        raise ValueError(f"LionK kernel {key!r} takes no {', '.join(extra)}"
                         + (f" (it uses {needs})" if needs else ""))
    if needs is None:
        return cls()
    _check_arg(key, needs, given[needs])
    return cls(given[needs])  # type: ignore[call-arg]


class ScaleByLionK(Transform):
    """Lion-K's direction ``gradK(b1 m + (1-b1) g)`` and momentum ``m = b2 m + (1-b2) g``.

    Reads ``betas = (b1, b2)``; the kernel is fixed by the constructor or, when ``kernel``
    is ``None``, built from the group's ``kernel``, ``p``, ``e``, ``k`` (so parameter groups
    may use different kernels). State ``exp_avg`` (``m``). Follow it with
    ``add_decayed_weights()`` and ``scale_by_learning_rate()``.
    """

    state_keys = ("exp_avg",)

    def __init__(self, kernel: Kernel | None = None) -> None:
        self.kernel = kernel
        self.hyperparams = ("betas",) if kernel is not None else ("betas", "kernel", "p", "e", "k")
        self._cache: dict[Any, Kernel] = {}

    def _kernel(self, group: Mapping[str, Any]) -> Kernel:
        if self.kernel is not None:
            return self.kernel
        spec = (group["kernel"], group.get("p"), group.get("e"), group.get("k"))
        try:
            return self._cache[spec]
        except (KeyError, TypeError):
            kern = make_kernel(*spec)
            with contextlib.suppress(TypeError):  # an unhashable user object is not cached
                self._cache[spec] = kern
            return kern

    def validate(self, group: Mapping[str, Any]) -> None:
        V.check_betas(group["betas"], 2)
        self._kernel(group)

    def granularity(self, group: Mapping[str, Any]) -> str:
        return self._kernel(group).splits

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        state["exp_avg"] = state_like(param, group)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        b1, b2 = ctx.group["betas"]
        m = ctx.state("exp_avg")
        f = ctx.foreach
        if f:
            c = list(torch._foreach_lerp(m, updates, 1.0 - b1))
        else:
            c = [torch.lerp(a, g, 1.0 - b1) for a, g in zip(m, updates)]
        # the kernel first, while the tail of c is still in cache; then the momentum
        out = self._kernel(ctx.group).grad_(c, f)
        ops.lerp_(m, updates, 1.0 - b2, f)
        return ctx.fresh(out)

    def __repr__(self) -> str:
        return f"scale_by_lionk({self.kernel!r})"


def scale_by_lionk(kernel: str | Callable[[Tensor], Tensor] | Kernel | None = None, p: float | None = None,
                   e: float | None = None, k: int | None = None) -> ScaleByLionK:
    """See :class:`ScaleByLionK`; ``kernel=None`` reads the kernel from the parameter group."""
    return ScaleByLionK(None if kernel is None else make_kernel(kernel, p, e, k))

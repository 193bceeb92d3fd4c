"""List-of-tensor primitives with one multi-tensor and one per-tensor path.

Every transform in hamopt is written once against these helpers. With ``foreach=True`` they
call the fused ``torch._foreach_*`` kernels (one launch for a whole list of tensors); with
``foreach=False`` they loop over the tensors with the ordinary in-place methods. The two
paths are tested to agree exactly in float64 (``tests/test_core.py``).

Scalars may be Python numbers, a list of Python numbers (one per tensor) or 0-d tensors,
so hyperparameters can be kept as tensors under ``torch.compile``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Scalar = float | int | Tensor
ScalarOrList = Scalar | Sequence[Scalar]

__all__ = [
    "add_",
    "addcdiv_",
    "addcmul_",
    "clone",
    "copy_",
    "div_",
    "lerp_",
    "maximum_",
    "mul",
    "mul_",
    "neg",
    "sign_",
    "sqrt",
    "uniform",
    "zeros_like",
]


def _per(x: ScalarOrList, i: int) -> Scalar:
    if isinstance(x, (list, tuple)):
        return x[i]
    return x  # type: ignore[return-value]


def clone(xs: Sequence[Tensor]) -> list[Tensor]:
    """Fresh copies (never aliases of the inputs)."""
    return [x.clone(memory_format=torch.preserve_format) for x in xs]


_PLAIN = (Tensor, torch.nn.Parameter)


def copy_(xs: list[Tensor], ys: Sequence[Tensor], foreach: bool) -> list[Tensor]:
    """``x <- y``. Tensor subclasses (e.g. FSDP2's DTensor shards) are copied one by one:
    ``_foreach_copy_`` has no rule for them."""
    if foreach and all(type(x) in _PLAIN for x in xs):
        torch._foreach_copy_(xs, list(ys))
    else:
        for x, y in zip(xs, ys):
            x.copy_(y)
    return xs


def zeros_like(xs: Sequence[Tensor], dtype: torch.dtype | None = None) -> list[Tensor]:
    return [torch.zeros_like(x, dtype=dtype, memory_format=torch.preserve_format) for x in xs]


def neg(xs: Sequence[Tensor], foreach: bool) -> list[Tensor]:
    if foreach:
        return list(torch._foreach_neg(list(xs)))
    return [torch.neg(x) for x in xs]


def sqrt(xs: Sequence[Tensor], foreach: bool) -> list[Tensor]:
    if foreach:
        return list(torch._foreach_sqrt(list(xs)))
    return [torch.sqrt(x) for x in xs]


def sign_(xs: list[Tensor], foreach: bool) -> list[Tensor]:
    if foreach:
        torch._foreach_sign_(xs)
    else:
        for x in xs:
            x.sign_()
    return xs


def mul_(xs: list[Tensor], other: ScalarOrList | Sequence[Tensor], foreach: bool) -> list[Tensor]:
    """``x *= other`` where ``other`` is a scalar, a list of scalars or a list of tensors."""
    if foreach:
        torch._foreach_mul_(xs, other if not isinstance(other, tuple) else list(other))
    else:
        for i, x in enumerate(xs):
            x.mul_(_per(other, i))
    return xs


def mul(xs: Sequence[Tensor], other: ScalarOrList, foreach: bool) -> list[Tensor]:
    """Fresh ``x * other``; ``other`` a scalar (a Python number or a 0-d tensor) or a list
    of them, one per tensor. The multi-tensor kernel takes a scalar, a list of numbers, or a
    list of tensors shaped like ``xs`` (0-d scales of 0-d tensors); other lists of tensors
    broadcast one tensor at a time."""
    xs = list(xs)
    if isinstance(other, (list, tuple)):
        other = uniform(list(other))
    if foreach and xs:
        if not isinstance(other, list) or not any(isinstance(v, Tensor) for v in other):
            return list(torch._foreach_mul(xs, other))
        if all(isinstance(v, Tensor) and v.shape == x.shape for v, x in zip(other, xs)):
            return list(torch._foreach_mul(xs, other))
    return [x * _per(other, i) for i, x in enumerate(xs)]


def div_(xs: list[Tensor], other: ScalarOrList | Sequence[Tensor], foreach: bool) -> list[Tensor]:
    if foreach:
        torch._foreach_div_(xs, other if not isinstance(other, tuple) else list(other))
    else:
        for i, x in enumerate(xs):
            x.div_(_per(other, i))
    return xs


def add_(
    xs: list[Tensor],
    other: ScalarOrList | Sequence[Tensor],
    foreach: bool,
    alpha: float = 1.0,
) -> list[Tensor]:
    """``x += alpha * other`` (tensor list) or ``x += other`` (scalar or scalar list)."""
    tensors = isinstance(other, (list, tuple)) and len(other) > 0 and isinstance(other[0], Tensor)
    if foreach:
        if tensors:
            torch._foreach_add_(xs, list(other), alpha=alpha)  # type: ignore[arg-type]
        else:
            torch._foreach_add_(xs, other if not isinstance(other, tuple) else list(other))
    else:
        for i, x in enumerate(xs):
            if tensors:
                x.add_(other[i], alpha=alpha)  # type: ignore[index]
            else:
                x.add_(_per(other, i))
    return xs


def lerp_(xs: list[Tensor], ends: Sequence[Tensor], weight: ScalarOrList, foreach: bool) -> list[Tensor]:
    """``x += weight * (end - x)``, i.e. an exponential moving average with ``1 - weight``.

    ``weight`` is one scalar or one per tensor (e.g. a bias-corrected decay per parameter
    step count). Equal Python weights collapse to one scalar, so the common case is a single
    multi-tensor kernel; differing Python weights take the scalar-list kernel, and tensor
    weights (while compiling) loop over the tensors.
    """
    w = uniform(weight)
    if isinstance(w, (list, tuple)) and foreach and xs and not any(isinstance(v, Tensor) for v in w):
        torch._foreach_lerp_(xs, list(ends), list(w))
    elif isinstance(w, (list, tuple)):
        for i, (x, e) in enumerate(zip(xs, ends)):
            wi = w[i]
            x.lerp_(e, wi.to(x.dtype) if isinstance(wi, Tensor) else wi)
    elif foreach and xs:
        torch._foreach_lerp_(xs, list(ends), w)
    else:
        for x, e in zip(xs, ends):
            x.lerp_(e, w)
    return xs


def uniform(values: ScalarOrList) -> ScalarOrList:
    """One Python scalar when ``values`` is a list of equal Python numbers, else unchanged."""
    if (isinstance(values, (list, tuple)) and values and not any(isinstance(v, Tensor) for v in values)
            and all(v == values[0] for v in values)):
        return values[0]
    return values


def addcmul_(
    xs: list[Tensor], t1: Sequence[Tensor], t2: Sequence[Tensor], value: float, foreach: bool
) -> list[Tensor]:
    """``x += value * t1 * t2``."""
    if foreach:
        torch._foreach_addcmul_(xs, list(t1), list(t2), value=value)
    else:
        for x, a, b in zip(xs, t1, t2):
            x.addcmul_(a, b, value=value)
    return xs


def addcdiv_(
    xs: list[Tensor],
    t1: Sequence[Tensor],
    t2: Sequence[Tensor],
    value: ScalarOrList,
    foreach: bool,
) -> list[Tensor]:
    """``x += value * t1 / t2`` (``value`` a scalar or one scalar per tensor)."""
    if foreach:
        if isinstance(value, (list, tuple)):
            torch._foreach_addcdiv_(xs, list(t1), list(t2), list(value))
        else:
            torch._foreach_addcdiv_(xs, list(t1), list(t2), value=value)
    else:
        for i, (x, a, b) in enumerate(zip(xs, t1, t2)):
            x.addcdiv_(a, b, value=_per(value, i))
    return xs


def maximum_(xs: list[Tensor], others: Sequence[Tensor], foreach: bool) -> list[Tensor]:
    if foreach:
        torch._foreach_maximum_(xs, list(others))
    else:
        for x, o in zip(xs, others):
            torch.maximum(x, o, out=x)
    return xs

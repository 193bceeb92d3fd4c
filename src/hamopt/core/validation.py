"""Hyperparameter checks with exact, torch-compatible messages.

Every optimizer validates through these helpers, so the messages are the same everywhere and
one table of bad inputs tests them all (``tests/test_battery.py``). The wording follows
``torch.optim`` (``Invalid learning rate: -1.0``, ``Invalid beta parameter at index 0: 1.0``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor

__all__ = [
    "check_betas",
    "check_choice",
    "check_eps",
    "check_lr",
    "check_nonneg",
    "check_positive",
    "check_positive_int",
    "check_range",
    "check_weight_decay",
]


def _value(x: Any) -> float:
    if isinstance(x, Tensor):
        if x.numel() != 1:
            raise ValueError(f"Tensor hyperparameters must have one element, got shape {tuple(x.shape)}")
        return float(x.item())
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"Expected a number, got {type(x).__name__}: {x!r}")
    return float(x)


def check_lr(lr: Any) -> None:
    v = _value(lr)
    if not (v >= 0.0) or math.isinf(v):
        raise ValueError(f"Invalid learning rate: {lr}")


def check_eps(eps: Any, name: str = "epsilon value") -> None:
    v = _value(eps)
    if not (v >= 0.0) or math.isinf(v):
        raise ValueError(f"Invalid {name}: {eps}")


def check_weight_decay(weight_decay: Any) -> None:
    v = _value(weight_decay)
    if not (v >= 0.0) or math.isinf(v):
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


def check_betas(betas: Any, n: int | None = None, allow_one: bool = False) -> None:
    """Each beta in ``[0, 1)`` (``[0, 1]`` with ``allow_one``); ``n`` fixes the tuple length."""
    if not isinstance(betas, Sequence) or isinstance(betas, str):
        raise ValueError(f"Invalid betas: {betas!r} (expected a tuple of floats)")
    if n is not None and len(betas) != n:
        raise ValueError(f"Invalid betas: {tuple(betas)!r} (expected {n} values, got {len(betas)})")
    for i, b in enumerate(betas):
        v = _value(b)
        ok = 0.0 <= v <= 1.0 if allow_one else 0.0 <= v < 1.0
        if not ok:
            raise ValueError(f"Invalid beta parameter at index {i}: {b}")


def check_range(name: str, value: Any, low: float, high: float, *, high_open: bool = False) -> None:
    v = _value(value)
    ok = low <= v < high if high_open else low <= v <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"Invalid {name}: {value} (must be in [{low}, {high}{bracket})")


def check_nonneg(name: str, value: Any) -> None:
    v = _value(value)
    if not (v >= 0.0) or math.isinf(v):
        raise ValueError(f"Invalid {name}: {value} (must be >= 0)")


def check_positive(name: str, value: Any) -> None:
    v = _value(value)
    if not (v > 0.0) or math.isinf(v):
        raise ValueError(f"Invalid {name}: {value} (must be > 0)")


def check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r} (must be a positive integer)")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"Invalid {name}: {value!r} (choose one of {', '.join(map(repr, choices))})")

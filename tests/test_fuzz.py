"""Property-based fuzzing of every registered optimizer (hypothesis).

Drawn per example: a parameter shape (0-d, zero-size, 1 x n, n x 1, a matrix, 5-D), a dtype
(float32, float64, bfloat16), hyperparameters across their valid ranges (betas also within
Adam's own condition ``b1^2 / sqrt(b2) < 1``, without which ``|m| / sqrt(v)`` is unbounded
where a gradient component falls to ~0, e.g. AdaDiag++'s null-space directions: lr 1,
betas (0.5, 0.0), eps 1e-30 overflowed there), and a gradient scale from 1e-30 to 1e30.
Three steps must not raise, must keep shape and dtype, and must leave the parameter finite
when the inputs are finite by this rule:

    **finite inputs**: the parameter and the gradients are finite, and every gradient
    element satisfies ``|g| <= 1e15`` when the state dtype is float32 (float32 and bfloat16
    parameters), which keeps ``g**2`` and its sums over a few steps and a matrix side far
    below float32's largest value (3.4e38). For float64 state every drawn scale is within.

Outside that rule (a float32 ``g**2`` overflows to inf) the step still must not raise, but
the result may be non-finite, exactly as in ``torch.optim.Adam``. Invalid hyperparameters
must be refused in the constructor with hamopt's own messages: a ``ValueError`` starting
with ``Invalid`` or a ``TypeError`` naming the expected type, never another exception.

The number of examples per optimizer is ``HAMOPT_FUZZ_EXAMPLES`` (default 6, derandomized,
so CI is repeatable); set it higher for a real search (random seeds then).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")  # the dev extra installs it
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import hamopt  # noqa: E402
from conftest import ALL_NAMES, backward  # noqa: E402

EXAMPLES = int(os.environ.get("HAMOPT_FUZZ_EXAMPLES", "6"))
_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES <= 6,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
#: the largest gradient element with which a float32 state must stay finite (see the module doc)
FLOAT32_FINITE_GRAD = 1e15
STEPS = 3


@st.composite
def _shapes(draw: st.DrawFn) -> tuple[int, ...]:
    n = draw(st.integers(1, 6))
    m = draw(st.integers(1, 6))
    return draw(st.sampled_from([(), (0,), (3, 0), (1, n), (n, 1), (m, n), (n,), (2, 1, m, 1, 2)]))


@st.composite
def _hyper(draw: st.DrawFn, defaults: dict[str, Any]) -> dict[str, Any]:
    """Valid values for the hyperparameters every family shares (others keep their defaults)."""
    kw: dict[str, Any] = {}
    if "lr" in defaults:
        kw["lr"] = 10.0 ** draw(st.floats(-6, 0))
    if "weight_decay" in defaults:
        kw["weight_decay"] = draw(st.sampled_from([0.0, 1e-4, 0.01, 0.5]))
    if isinstance(defaults.get("betas"), tuple):
        values = [0.0, 0.5, 0.9, 0.99, 0.999]
        betas = [draw(st.sampled_from(values)) for _ in defaults["betas"]]
        if len(betas) >= 2 and betas[0] > 0:  # Adam's condition b1^2 / sqrt(b2) < 1 (Kingma and Ba 2015,
            # Theorem 4.1): otherwise |m| / sqrt(v) is unbounded where a gradient falls to ~0
            betas[1] = draw(st.sampled_from([b for b in values if betas[0] ** 2 < math.sqrt(b)]))
        kw["betas"] = tuple(betas)
    if isinstance(defaults.get("eps"), float):
        kw["eps"] = draw(st.sampled_from([1e-30, 1e-16, 1e-8, 1e-3]))
    return kw


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


@pytest.mark.parametrize("name", ALL_NAMES)
def test_fuzz_valid_inputs_never_crash_and_stay_finite(name: str) -> None:
    info = hamopt.get(name)

    @_SETTINGS
    @given(shape=_shapes(), dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
           exponent=st.integers(-30, 30), seed=st.integers(0, 2**16), hyper=_hyper(dict(info.defaults)))
    def check(shape: tuple[int, ...], dtype: torch.dtype, exponent: int, seed: int, hyper: dict[str, Any]) -> None:
        scale = 10.0**exponent
        g = torch.Generator().manual_seed(seed)
        p = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64).to(dtype))
        other = torch.nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64).to(dtype))
        kw = {**info.test_kwargs, **hyper}
        opt = info.create([p, other], **kw)
        biggest = 0.0
        for _ in range(STEPS):
            opt.zero_grad(set_to_none=True)
            gs = [(torch.randn(q.shape, generator=g, dtype=torch.float64) * scale).to(dtype) for q in (p, other)]
            # grad = G + q: a curvature of 1 for the optimizers that estimate the Hessian
            loss = sum((q * gq).sum() + 0.5 * (q * q).sum() for q, gq in zip((p, other), gs))
            backward(info, loss)
            biggest = max([biggest, *(float(q.grad.detach().abs().max()) if q.numel() else 0.0 for q in (p, other))])
            opt.step()
        assert p.shape == torch.Size(shape) and p.dtype == dtype
        if _state_dtype(dtype) == torch.float64 or biggest <= FLOAT32_FINITE_GRAD:
            assert torch.isfinite(p).all() and torch.isfinite(other).all(), (
                f"{name}: non-finite parameter with finite inputs: shape {shape}, {dtype}, gradient scale "
                f"1e{exponent}, {hyper}")

    check()


_INVALID: list[tuple[str, Any]] = [
    ("lr", -1e-3), ("lr", float("inf")), ("lr", float("nan")), ("lr", "0.1"),
    ("weight_decay", -0.1), ("weight_decay", float("nan")), ("weight_decay", float("inf")),
    ("eps", -1e-8), ("eps", float("nan")),
    ("betas", 1.0), ("betas", -0.1), ("betas", float("nan")), ("betas", 1.5),
]
_MESSAGE = re.compile(r"^(Invalid |Expected a number|Tensor hyperparameters must have one element)")


@pytest.mark.parametrize("name", ALL_NAMES)
def test_fuzz_invalid_hyperparameters_are_refused_with_hamopts_messages(name: str) -> None:
    info = hamopt.get(name)
    rows = [(k, v) for k, v in _INVALID if k in info.defaults and not (k == "eps" and not
                                                                        isinstance(info.defaults[k], float))]
    if not rows:
        pytest.skip(f"{name} has none of lr, weight_decay, eps, betas")  # explicit, not silent

    @_SETTINGS
    @given(row=st.sampled_from(rows), index=st.integers(0, 2), shape=_shapes())
    def check(row: tuple[str, Any], index: int, shape: tuple[int, ...]) -> None:
        key, bad = row
        value: Any = bad
        if key == "betas":
            betas = list(info.defaults["betas"])
            assume(index < len(betas))
            betas[index] = bad
            value = tuple(betas)
        p = torch.nn.Parameter(torch.zeros(shape))
        with pytest.raises((ValueError, TypeError)) as err:
            info.create([p], **{**info.test_kwargs, key: value})
        assert _MESSAGE.match(str(err.value)), f"{name}: {key}={value!r} gave {err.type.__name__}: {err.value}"

    check()

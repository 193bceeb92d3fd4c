"""Stochastic rounding of float32 values to bfloat16, for writing bf16 parameters back.

A bf16 parameter is updated in float32 (its compute copy) and written back. Rounding to
nearest loses every update smaller than half a bf16 spacing (``2^-9`` to ``2^-8`` of the
weight): late in training, when ``lr * update`` is small against the weight, the weight
stops moving.
Stochastic rounding rounds up with probability equal to the distance from the lower
neighbour, so the expected stored value is the float32 value and small updates survive on
average (Gupta et al., "Deep Learning with Limited Numerical Precision", ICML 2015; Zamirai
et al., "Revisiting BFloat16 Training", arXiv:2010.06192, 2020; as torchao's
``bf16_stochastic_round``).

How: bf16 is the upper 16 bits of a float32. Adding a uniform random integer in
``[0, 2^16)`` to the float32's bit pattern and clearing the lower 16 bits carries into the
upper half with probability ``(low bits) / 2^16``, which is the fractional distance from the
lower bf16 neighbour (the spacing is constant between the two neighbours, and a carry into
the exponent is the next binade's first value, also exact). Infinities and NaNs are kept as
they are. Plain integer tensor ops: ``torch.compile`` fuses them.

Opt in per parameter group with ``stochastic_rounding=True`` (``hamopt.create(...,
stochastic_rounding=True)`` or :func:`enable_stochastic_rounding`); the optimizer shell then
calls :func:`write_back` instead of ``p.copy_(float32_value)``. The random bits come from
torch's default generator of the parameter's device, so ``torch.manual_seed`` makes a run
repeatable (and the bits taken change what later draws from that generator return).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["stochastic_round_to_bf16", "write_back"]

_LOW_MASK = -65536  # 0xFFFF0000 as a signed int32: keeps the upper 16 bits


def stochastic_round_to_bf16(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Round float32 ``x`` to bfloat16 stochastically: ``E[result] = x`` for finite ``x``.

    Each element ``x`` between the bf16 neighbours ``a <= x < b`` becomes ``b`` with
    probability ``(x - a) / (b - a)`` and ``a`` otherwise; values already representable are
    kept exactly; inf and NaN are kept.

    Args:
        x: a float32 tensor.
        generator: the random source (default: torch's default generator of ``x``'s device).
    """
    if x.dtype != torch.float32:
        raise ValueError(f"stochastic_round_to_bf16 expects a float32 tensor, got {x.dtype}")
    if torch.compiler.is_compiling():  # the compiler lowers randint to its own generator
        noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    else:
        # random_() fills [0, 2^31) without a modulo (about twice as fast as randint(0, 2^16)
        # on a CPU); its lower 16 bits are uniform on [0, 2^16). Dynamo does not trace it.
        noise = torch.empty(x.shape, dtype=torch.int32, device=x.device).random_(generator=generator) & 0xFFFF
    bits = (x.view(torch.int32) + noise) & _LOW_MASK
    rounded = bits.view(torch.float32)
    rounded = torch.where(torch.isfinite(x), rounded, x)
    return rounded.to(torch.bfloat16)  # exact: the lower 16 bits are zero


def write_back(params: Sequence[Tensor], computed: Sequence[Tensor], group: Mapping[str, Any]) -> None:
    """Copy the optimizer's compute copies into the parameters: stochastic rounding for
    bfloat16 parameters of a group with ``stochastic_rounding=True`` and float32 compute
    copies, ``p.copy_(cp)`` (round to nearest) otherwise."""
    sr = bool(group.get("stochastic_rounding", False))
    for p, cp in zip(params, computed):
        if sr and p.dtype == torch.bfloat16 and cp.dtype == torch.float32:
            p.copy_(stochastic_round_to_bf16(cp))
        else:
            p.copy_(cp)

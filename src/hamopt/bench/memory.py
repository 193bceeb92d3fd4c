"""Optimizer-state memory of a model's parameter shapes (``hamopt memory``).

The registry's per-shape formulas (:meth:`hamopt.OptimizerInfo.state_bytes_for`) give the
bytes each optimizer keeps for a model, without any weights. Where the model fits in memory
the prediction is checked against :func:`hamopt.state_bytes` on a real instantiation
(float32 parameters with random gradients, one step).
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

import torch

from ..memory import state_bytes
from ..registry import OptimizerInfo, get
from .common import fill_grads, make_params
from .shapes import ModelShapes, total_params

__all__ = ["AUTO_CHECK_MAX_PARAMS", "measure_state_bytes", "memory_table"]

#: models with at most this many parameters are checked on a real instantiation by default
AUTO_CHECK_MAX_PARAMS = 2_000_000


def measure_state_bytes(info: OptimizerInfo, shapes: ModelShapes, device: str = "cpu") -> int:
    """``state_bytes`` of ``info``'s optimizer after one step on float32 ``shapes``."""
    params = make_params([s for _, s in shapes], device=device)
    graph = info.step_needs == "graph"
    fill_grads(params, graph)
    opt = info.create(params)
    opt.step()
    n = state_bytes(opt)
    del opt, params
    gc.collect()
    return n


def memory_table(shapes: ModelShapes, optimizers: Sequence[OptimizerInfo], check: bool | None = None,
                 device: str = "cpu", itemsize: int = 4) -> dict[str, Any]:
    """Predicted (and, with ``check``, measured) optimizer-state bytes per optimizer.

    Args:
        shapes: ``(name, shape)`` pairs (see :mod:`hamopt.bench.shapes`).
        optimizers: registry entries.
        check: instantiate each optimizer and compare with :func:`hamopt.state_bytes`;
            ``None`` means "if the model has at most ``AUTO_CHECK_MAX_PARAMS`` parameters".
        itemsize: bytes per state number (4: float32 state).
    """
    n_params = total_params(shapes)
    if check is None:
        check = n_params <= AUTO_CHECK_MAX_PARAMS
    adamw = get("adamw")
    ref = sum(adamw.state_bytes_for(s, itemsize) for _, s in shapes)
    rows = []
    for info in optimizers:
        predicted = sum(info.state_bytes_for(s, itemsize) for _, s in shapes)
        row: dict[str, Any] = dict(
            name=info.name, family=info.family, memory_per_mxn=info.memory, state_bytes=predicted,
            vs_adamw=predicted / ref if ref else None,
            bytes_per_param=predicted / n_params if n_params else None,
            measured_bytes=None, match=None, error=None,
        )
        if check:
            try:
                m = measure_state_bytes(info, shapes, device)
                row.update(measured_bytes=m, match=(m == predicted))
            except Exception as e:  # a broken optimizer is a row, not a crash of the table
                row.update(error=f"{type(e).__name__}: {e}".splitlines()[0][:200])
        rows.append(row)
    return dict(params=n_params, param_bytes=n_params * 4, itemsize=itemsize, checked=bool(check),
                torch=torch.__version__, rows=rows)

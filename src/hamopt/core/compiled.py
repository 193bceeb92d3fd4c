"""Compile an optimizer's whole step into fused kernels with ``torch.compile``.

Every hamopt optimizer's step traces under ``torch.compile`` (the generic test battery checks
that the compiled step equals the eager one for every registry entry). Compiled, a chain of
transforms becomes a few fused loops (Triton kernels on a GPU, vectorized C++ on a CPU), so
the update touches memory a few times instead of once per transform. The first call
compiles (tens of seconds for a model's worth of parameters); later calls reuse the code.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["compile_step"]

O = TypeVar("O", bound=torch.optim.Optimizer)


def compile_step(optimizer: O, **compile_kwargs: Any) -> O:
    """Replace ``optimizer.step`` by ``torch.compile(optimizer.step, **compile_kwargs)``.

    For hamopt's optimizers (:class:`~hamopt.ChainedOptimizer`), each group's learning rate
    first becomes a 0-d tensor on its parameters' device (float64 for groups with float64
    parameters, else float32): a Python float is baked into the compiled code, so every
    change by an LR scheduler would compile the step again, while torch's schedulers update
    tensor learning rates in place. Other hyperparameters stay as they are (changing them
    recompiles). Other optimizers (``torch.optim`` classes, which accept a tensor learning
    rate only in some modes) are compiled as they are. Returns the optimizer. A copy made
    with ``copy.deepcopy`` or a pickle round trip has the eager step.

    Example::

        opt = hamopt.compile_step(hamopt.Lion(model.parameters(), lr=1e-4))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)
    """
    from .optimizer import ChainedOptimizer

    # hamopt.partition's composite: its children's groups (each its own optimizer's).
    children = getattr(optimizer, "optimizers", None) or [optimizer]
    groups = [g for o in children if isinstance(o, ChainedOptimizer) for g in o.param_groups]
    for group in groups:
        lr = group["lr"]
        if isinstance(lr, Tensor):
            continue
        params = group["params"]
        device = params[0].device if params else torch.device("cpu")
        dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
        group["lr"] = torch.tensor(float(lr), dtype=dtype, device=device)
    compiled = torch.compile(optimizer.step, **compile_kwargs)

    def step(self: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> Any:
        return compiled() if closure is None else compiled(closure)

    # A bound method, not the compiled callable itself: LR schedulers re-bind ``step.__func__``.
    optimizer.step = types.MethodType(step, optimizer)  # type: ignore[method-assign]
    return optimizer

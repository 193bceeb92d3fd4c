"""The one Optimizer shell that runs a chain of transforms over each parameter group.

:class:`ChainedOptimizer` is a ``torch.optim.Optimizer``. It owns everything that must behave
the same in every optimizer (parameter groups, lazy state, ``state_dict``, closures, None
and sparse gradients, ``maximize``, low-precision parameters, validation), so a named
optimizer is only its defaults and its chain::

    class MyAdamW(ChainedOptimizer):
        def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
            super().__init__(
                params,
                dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
                chain(scale_by_adam(), apply_decayed_update()),
            )

How a step runs (buckets, CPU pieces, FSDP2 shards, step counters) is the engine's
(:mod:`hamopt.core.engine`), not this file's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .engine import Engine
from .transform import Chain, Transform

__all__ = ["ChainedOptimizer", "ParamsT"]

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


class ChainedOptimizer(torch.optim.Optimizer):
    """Run a :class:`~hamopt.core.transform.Transform` chain as a ``torch.optim.Optimizer``.

    Args:
        params: parameters or parameter groups, as for any torch optimizer.
        defaults: the hyperparameters the chain reads (``lr``, ``betas``, ...).
        transform: a transform or a sequence of transforms (chained in order).
        maximize: ascend instead of descend (the gradient is negated, ``p.grad`` is not).
        foreach: use multi-tensor kernels (default ``True``); ``False`` loops per tensor.
            Both give identical results.
        state_dtype: dtype of the optimizer state and of the update arithmetic. ``None``
            (default) means float32 for bfloat16/float16 parameters and the parameter's
            dtype otherwise.

    ``maximize``, ``foreach`` and ``state_dtype`` are per-group settings like the others.
    """

    def __init__(
        self,
        params: ParamsT,
        defaults: Mapping[str, Any],
        transform: Transform | Sequence[Transform],
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(transform, Transform):
            transform = Chain(*transform)
        self.transform: Transform = transform
        self._engine = Engine(type(self).__name__)  # how steps run; rebuilt after a copy or a pickle
        full = dict(defaults)
        full.update(maximize=maximize, foreach=foreach, state_dtype=state_dtype)
        self._validate_group(full)
        super().__init__(params, full)

    # ------------------------------------------------------------------ groups and checks
    def _validate_group(self, group: Mapping[str, Any]) -> None:
        sd = group.get("state_dtype")
        if sd is not None and not (isinstance(sd, torch.dtype) and sd.is_floating_point):
            raise ValueError(f"Invalid state_dtype: {sd!r} (expected a floating torch.dtype or None)")
        self.transform.validate(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**getattr(self, "defaults", {}), **param_group}
        merged.pop("params", None)
        self._validate_group(merged)
        super().add_param_group(param_group)

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Perform one optimization step.

        Args:
            closure: re-evaluates the model and returns the loss (optional).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        if not self.transform.supports_sparse and any(p.grad.is_sparse for p in params):  # type: ignore[union-attr]
            p = next(p for p in params if p.grad.is_sparse)  # type: ignore[union-attr]
            raise RuntimeError(
                f"{type(self).__name__} does not support sparse gradients "
                f"(parameter of shape {tuple(p.shape)}); use a dense gradient"
            )
        self._engine.step_group(self.transform, group, params, self.state, self.cpu_chunk_numel)

    #: On the CPU, run the step on pieces of about this many elements, one after the other,
    #: so each piece's parameters, gradients, state and temporaries stay in cache (a
    #: multi-tensor op over a whole model streams every tensor through memory once per op).
    #: Whole tensors are grouped up to this size; chains whose every transform works element
    #: by element (:meth:`Transform.granularity` ``"element"``: Adam, Lion, Grams, ...) also
    #: cut larger tensors into flat slices of this size. The result is the same; 0 turns it
    #: off. Not used on other devices, nor while compiling (the compiler fuses the step).
    #: See :mod:`hamopt.core.engine.pieces`.
    cpu_chunk_numel: int = 1 << 18

    # ------------------------------------------------------------------ checkpoints
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint; state tensors keep their saved dtype (float32 state of a bf16
        parameter stays float32) and move to the parameter's device."""
        saved = state_dict["state"]
        saved_groups = state_dict["param_groups"]
        super().load_state_dict(state_dict)
        ids = [pid for g in saved_groups for pid in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(ids, params):
            if pid not in saved:
                continue
            st = self.state[p]
            for k, v in saved[pid].items():
                if isinstance(v, Tensor) and k != "step" and v.dtype != st[k].dtype:
                    st[k] = v.to(device=p.device, copy=True)

    def __getstate__(self) -> dict[str, Any]:
        # torch.optim.Optimizer pickles only defaults, state and param_groups; the chain is
        # part of what this optimizer is (copy.deepcopy and pickle need it).
        extra = {k: self.__dict__[k] for k in ("transform", "cpu_chunk_numel") if k in self.__dict__}
        return {**super().__getstate__(), **extra}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._engine = Engine(type(self).__name__)
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("state_dtype", None)

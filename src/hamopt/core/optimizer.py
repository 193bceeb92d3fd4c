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

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from . import validation as V
from .engine import Engine
from .engine.nonfinite import find_nonfinite
from .transform import Chain, Transform

__all__ = ["ChainedOptimizer", "ParamsT", "enable_stochastic_rounding", "init_wrapper_hooks", "set_nonfinite"]

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]

#: The hook registries ``torch.optim.Optimizer.__init__`` gives every optimizer.
_HOOK_DICTS = ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
               "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
               "_optimizer_load_state_dict_post_hooks")


def init_wrapper_hooks(optimizer: torch.optim.Optimizer) -> None:
    """Give an optimizer that wraps others, and so skips ``torch.optim.Optimizer.__init__``
    (Lookahead, :func:`hamopt.partition`'s composite), torch's hook registries and its hooked
    ``step``. Registries it already has are kept, so it is safe to call again after unpickling."""
    for name in _HOOK_DICTS:
        if name not in optimizer.__dict__:
            setattr(optimizer, name, OrderedDict())
    optimizer._patch_step_function()


#: The values of the per-group ``nonfinite`` setting (see :class:`ChainedOptimizer`).
NONFINITE = ("propagate", "skip", "raise")


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
        nonfinite: what a step does with a NaN or infinite gradient. ``"propagate"``
            (default, torch's behaviour): nothing special, the values flow into the state
            and the parameters, at no extra cost. ``"skip"``: a group whose gradients hold
            one skips its step whole (parameters and every state entry, step counts
            included, stay as they were) and adds 1 to ``group["nonfinite_skipped"]``.
            ``"raise"``: a ``RuntimeError`` naming the parameter, before anything moves.

    ``maximize``, ``foreach``, ``state_dtype`` and ``nonfinite`` are per-group settings like the
    others (``{"params": ..., "nonfinite": "skip"}``, or set ``group["nonfinite"]`` later).

    The non-finite check is per group and runs for every checked group before any group
    steps, all of them read back with one device synchronisation per step: ``"raise"`` thus
    leaves the whole optimizer untouched, and ``"skip"`` skips only the groups whose own
    gradients are not finite. ``group["nonfinite_skipped"]`` (the count of skipped steps) is
    part of ``param_groups``, so ``state_dict`` round trips and distributed checkpoints keep it.
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
        nonfinite: str = "propagate",
    ) -> None:
        if not isinstance(transform, Transform):
            transform = Chain(*transform)
        self.transform: Transform = transform
        self._engine = Engine(type(self).__name__)  # how steps run; rebuilt after a copy or a pickle
        full = dict(defaults)
        full.update(maximize=maximize, foreach=foreach, state_dtype=state_dtype, nonfinite=nonfinite,
                    nonfinite_skipped=0)
        self._validate_group(full)
        super().__init__(params, full)

    # ------------------------------------------------------------------ groups and checks
    def _validate_group(self, group: Mapping[str, Any]) -> None:
        sd = group.get("state_dtype")
        if sd is not None and not (isinstance(sd, torch.dtype) and sd.is_floating_point):
            raise ValueError(f"Invalid state_dtype: {sd!r} (expected a floating torch.dtype or None)")
        V.check_choice("nonfinite", group.get("nonfinite", "propagate"), NONFINITE)
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
        skipped = self._nonfinite_groups()
        for i, group in enumerate(self.param_groups):
            if i in skipped:
                group["nonfinite_skipped"] = group.get("nonfinite_skipped", 0) + 1
            else:
                self._step_group(group)
        return loss

    def _nonfinite_groups(self) -> set[int]:
        """Indices of the groups set to ``nonfinite="skip"`` whose gradients are not all finite;
        a ``RuntimeError`` naming the parameter for a ``"raise"`` group. Nothing to do (no
        synchronisation) when every group propagates, the default."""
        checked = [i for i, g in enumerate(self.param_groups) if g.get("nonfinite", "propagate") != "propagate"]
        if not checked:
            return set()
        groups = self.param_groups
        for i in checked:
            V.check_choice("nonfinite", groups[i]["nonfinite"], NONFINITE)
        bad, skipped = find_nonfinite(groups, checked)
        for i in checked:
            if i not in skipped or groups[i]["nonfinite"] != "raise":
                continue
            j = next((j for gi, j in bad if gi == i), None)
            if j is None:
                raise RuntimeError(f"Non-finite gradient on another rank in parameter group {i} "
                                   "(nonfinite='raise'); the step was not taken")
            index = sum(len(g["params"]) for g in groups[:i]) + j  # the state_dict numbering
            names = groups[i].get("param_names")
            named = f" {names[j]!r}" if names else ""
            raise RuntimeError(f"Non-finite gradient (NaN or inf) in parameter {index}{named} of shape "
                               f"{tuple(groups[i]['params'][j].shape)} (group {i}, nonfinite='raise'); "
                               "the step was not taken")
        return skipped

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
            if "step" in st:  # a float, an int or a 0-d tensor of any dtype and device, as torch accepts
                st["step"] = torch.as_tensor(st["step"]).detach().to("cpu", torch.float32, copy=True).reshape(())

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
            group.setdefault("nonfinite", "propagate")
            group.setdefault("nonfinite_skipped", 0)


def _shells(optimizer: torch.optim.Optimizer, setting: str) -> list[ChainedOptimizer]:
    """The hamopt shells inside ``optimizer`` (itself, a wrapper's base, or each child of a
    :func:`hamopt.partition`); a ``ValueError`` naming ``setting`` for any other optimizer."""
    children = getattr(optimizer, "optimizers", None) or [getattr(optimizer, "base_optimizer", optimizer)]
    shells = []
    for o in children:
        inner = getattr(o, "base_optimizer", o)
        if not isinstance(inner, ChainedOptimizer):
            raise ValueError(f"{setting} needs one of hamopt's own optimizers; {type(inner).__name__} "
                             "runs its step itself")
        shells.append(inner)
    return shells


def enable_stochastic_rounding(optimizer: torch.optim.Optimizer, enabled: bool = True) -> torch.optim.Optimizer:
    """Set ``stochastic_rounding`` on every parameter group of a hamopt optimizer (one
    built on :class:`~hamopt.ChainedOptimizer`, or a :func:`hamopt.partition` of them).

    Raises:
        ValueError: an optimizer whose step does not read the setting (``torch.optim``'s
            classes), rather than silently rounding to nearest.
    """
    if not enabled:
        for o in (getattr(optimizer, "optimizers", None) or [optimizer]):
            for g in getattr(o, "base_optimizer", o).param_groups:
                g["stochastic_rounding"] = False
        return optimizer
    for inner in _shells(optimizer, "stochastic_rounding=True"):
        for g in inner.param_groups:
            g["stochastic_rounding"] = True
    return optimizer


def set_nonfinite(optimizer: torch.optim.Optimizer, mode: str) -> torch.optim.Optimizer:
    """Set the ``nonfinite`` policy (``"propagate"``, ``"skip"`` or ``"raise"``, see
    :class:`ChainedOptimizer`) of every parameter group of a hamopt optimizer, and its default
    for groups added later. ``hamopt.create(name, params, nonfinite=...)`` calls it.

    Raises:
        ValueError: an unknown mode, or an optimizer that is not one of hamopt's own.
    """
    V.check_choice("nonfinite", mode, NONFINITE)
    for inner in _shells(optimizer, f"nonfinite={mode!r}"):
        inner.defaults["nonfinite"] = mode
        for g in inner.param_groups:
            g["nonfinite"] = mode
    return optimizer

"""The lecture's classic optimizers that ``torch.optim`` already ships (seed 002, ALGORITHMS.md 5).

We do not rewrite what torch does well: these registry entries return configured
``torch.optim`` classes (fused kernels where torch has them for the parameters' device and
dtype). hamopt validates the common hyperparameters first so every optimizer in the library
rejects bad values with the same messages (``Invalid learning rate: -1.0``). The transform
``scale_by_adam`` that the Adam-based families build on is proved equal to
``torch.optim.Adam``/``AdamW`` in ``tests/test_classic.py``.

Registry names: ``sgd``, ``momentum``, ``nesterov``, ``adagrad``, ``adadelta``,
``rmsprop``, ``adam``, ``adamw``, ``adamax``, ``nadam``, ``radam``, ``amsgrad``,
``adafactor``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..core import validation as V

__all__ = ["torch_optimizer"]

LECTURE = "Lecture on optimizers for deep learning (seed 002_499076b5b4a9af2b)"

# torch's fused SGD with momentum fails when a parameter gets its first gradient after the
# others (a None momentum buffer in the list; seen with torch 2.13), so only Adam/AdamW go fused.
_FUSED_CAPABLE = {"Adam", "AdamW"}
_FUSED_DEVICES = {"cuda", "cpu"}


def _tensor(item: Any) -> Any:
    """The tensor of a parameter given as a tensor or, as ``named_parameters()`` yields it,
    a ``(name, tensor)`` pair."""
    return item[1] if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) else item


def _all_params(items: list[Any]) -> list[Any]:
    flat = []
    for it in items:
        if isinstance(it, dict):
            ps = it["params"]
            flat.extend([ps] if isinstance(ps, torch.Tensor) else [_tensor(x) for x in ps])
        else:
            flat.append(_tensor(it))
    return flat


def _make_adafactor_cls() -> type[torch.optim.Optimizer] | None:
    base = getattr(torch.optim, "Adafactor", None)
    if base is None:
        return None

    class Adafactor(base):  # type: ignore[misc, valid-type]
        """``torch.optim.Adafactor`` that leaves zero-size parameters alone.

        torch's Adafactor divides by the number of elements and raises ``ZeroDivisionError``
        on a zero-size parameter (torch 2.13). Such a tensor has nothing to update, so its
        gradient is hidden for the duration of ``step()`` and restored afterwards.
        """

        def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            hidden = []
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None and p.numel() == 0:
                        hidden.append((p, p.grad))
                        p.grad = None
            try:
                super().step()
            finally:
                for p, g in hidden:
                    p.grad = g
            return loss

    return Adafactor


_CLASSES: dict[str, Any] = {"Adafactor": _make_adafactor_cls()}
# A module-level name, so pickle (and torch.save of the optimizer object) can find the class.
Adafactor = _CLASSES["Adafactor"]
if Adafactor is not None:
    Adafactor.__qualname__ = "Adafactor"


def _unhooked(step: Callable[..., Any]) -> Callable[..., Any]:
    """A class's ``step`` without the hook wrapper torch puts around it (``profile_hook_step``),
    for a subclass's ``step`` that calls its parent's: the subclass's own wrapper already ran
    the step hooks once."""
    return step.__wrapped__ if getattr(step, "hooked", False) else step  # type: ignore[attr-defined]


def fused_is_safe(p: torch.Tensor) -> bool:
    """Whether torch's fused Adam/AdamW kernel may update ``p``: a dense, contiguous tensor
    with a dense, contiguous gradient (or none). torch 2.13's fused CPU kernel writes past a
    strided view (``base[..., 0]`` also changes ``base[..., 1]``)."""
    g = p.grad
    return (not p.is_sparse and p.is_contiguous()
            and (g is None or (not g.is_sparse and g.is_contiguous())))


def _make_guarded_fused_cls(base: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    class Guarded(base):  # type: ignore[misc, valid-type]
        __doc__ = f"""``torch.optim.{base.__name__}`` that takes its fused kernel only where it is safe.

        hamopt chooses ``fused=True`` for speed; at each step a group with a parameter for which
        :func:`fused_is_safe` is false (a strided view, a non-contiguous gradient) runs that step
        with torch's multi-tensor (``foreach``) implementation instead, which handles any strides.
        Both compute the same update; the state is the same either way.
        """

        def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            switched = [g for g in self.param_groups
                        if g.get("fused") and not all(fused_is_safe(p) for p in g["params"])]
            for g in switched:
                g["fused"], g["foreach"] = False, True
            try:
                _unhooked(base.step)(self)
            finally:
                for g in switched:
                    g["fused"], g["foreach"] = True, None
            return loss

    Guarded.__name__ = Guarded.__qualname__ = base.__name__
    return Guarded


_GUARDED = {name: _make_guarded_fused_cls(getattr(torch.optim, name)) for name in ("Adam", "AdamW")}
# Module-level names, so pickle (and torch.save of the optimizer object) can find the classes.
Adam, AdamW = _GUARDED["Adam"], _GUARDED["AdamW"]


def torch_optimizer(cls_name: str, **fixed: Any) -> Callable[..., torch.optim.Optimizer]:
    """A factory that validates like hamopt, then builds ``torch.optim.<cls_name>``.

    Prefers ``fused=True`` when torch has a fused kernel for every parameter's device and
    dtype and the caller did not choose ``fused``/``foreach`` itself; the class is then a thin
    subclass that falls back to ``foreach`` for a step whose tensors the fused kernel would get
    wrong (:func:`fused_is_safe`).
    """

    def factory(params: Any, **kwargs: Any) -> torch.optim.Optimizer:
        cls = _CLASSES.get(cls_name) or getattr(torch.optim, cls_name, None)
        if cls is None:
            raise RuntimeError(f"torch {torch.__version__} has no torch.optim.{cls_name}; upgrade torch")
        if "lr" in kwargs:
            V.check_lr(kwargs["lr"])
        if "betas" in kwargs:
            V.check_betas(kwargs["betas"], 2)
        if "eps" in kwargs and not isinstance(kwargs["eps"], tuple):
            V.check_eps(kwargs["eps"])
        if "weight_decay" in kwargs:
            V.check_weight_decay(kwargs["weight_decay"])
        kwargs = {**fixed, **kwargs}
        if isinstance(params, torch.Tensor):  # torch's own message and type
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            f"but got {torch.typename(params)}")
        items = list(params)
        if cls_name in _FUSED_CAPABLE and "fused" not in kwargs and "foreach" not in kwargs:
            flat = _all_params(items)
            if flat and all(
                isinstance(p, torch.Tensor)
                and p.device.type in _FUSED_DEVICES
                and p.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
                and not p.is_sparse
                for p in flat
            ):
                kwargs["fused"] = True
                cls = _GUARDED[cls_name]
        return cls(items, **kwargs)

    factory.__name__ = f"torch_{cls_name}"
    factory.__qualname__ = factory.__name__
    factory.__doc__ = f"Build ``torch.optim.{cls_name}`` with hamopt's validation."
    return factory

"""The registry: one table of every optimizer, the single source of truth.

Each entry is an :class:`OptimizerInfo`: how to build it, its paper, its defaults, the
optimizer-state memory formula for a parameter shape, and flags. The CLI (``hamopt list``,
``hamopt memory``, ``hamopt bench``) and the generic test battery read only this table, so
registering an optimizer is enough to list it, benchmark it and test it.

    >>> import torch, hamopt
    >>> w = torch.nn.Parameter(torch.zeros(3, 4))
    >>> opt = hamopt.create("adamw", [w], lr=3e-4)
    >>> "hfac" in hamopt.list_optimizers()
    True
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "OptimizerInfo",
    "create",
    "get",
    "list_optimizers",
    "register",
    "registered",
]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class OptimizerInfo:
    """One registry entry.

    Attributes:
        name: registry name (``hamopt.create(name, ...)``).
        factory: the class, or a callable ``factory(params, **kwargs) -> Optimizer``.
        paper: the reference (authors, title, venue/arXiv, and the seed/algorithm number).
        family: grouping used in listings and benchmarks (``classic``, ``hfac``, ...).
        defaults: keyword arguments passed to ``factory`` unless overridden.
        memory: the optimizer-state size of an ``m x n`` matrix, as text (e.g. ``"2(m+n)"``),
            in numbers of the state dtype, not counting per-parameter scalar counters.
        state_numel: the same as a function of any parameter shape (vectors, 0-d and 4-D
            tensors included, fallbacks included), used by ``hamopt.expected_state_bytes``.
        scalar_bytes: bytes of per-parameter scalar state (a float32 ``step`` is 4), or a
            function of the shape when it depends on it.
        summary: one line saying what it is.
        factored, sign_based, needs_svd, needs_hessian: properties for listings and filters.
        supports_compile: whether ``torch.compile(opt.step)`` is expected to equal eager.
        test_lr: learning rate the generic battery uses on its toy problems.
        test_kwargs: extra keyword arguments for the battery (e.g. a small ``svd_interval``).
        bad_inputs: extra ``(overrides, message regex)`` rows for the battery's error table.
        step_needs: ``"grad"`` (plain ``loss.backward()``) or ``"graph"`` (the step needs
            ``loss.backward(create_graph=True)``, e.g. Sophia's Hutchinson estimate).
    """

    name: str
    factory: Callable[..., torch.optim.Optimizer]
    paper: str
    family: str
    defaults: Mapping[str, Any]
    memory: str
    state_numel: Callable[[Shape], int]
    summary: str = ""
    scalar_bytes: int | Callable[[Shape], int] = 4
    factored: bool = False
    sign_based: bool = False
    needs_svd: bool = False
    needs_hessian: bool = False
    supports_compile: bool = True
    test_lr: float | None = None
    test_kwargs: Mapping[str, Any] = field(default_factory=dict)
    bad_inputs: Sequence[tuple[Mapping[str, Any], str]] = ()
    step_needs: str = "grad"

    def create(self, params: Any, **overrides: Any) -> torch.optim.Optimizer:
        kwargs = {**self.defaults, **overrides}
        return self.factory(params, **kwargs)

    def state_bytes_for(self, shape: Sequence[int], itemsize: int = 4) -> int:
        """Predicted state bytes for one parameter of ``shape`` (state dtype ``itemsize``)."""
        shape = tuple(shape)
        scalars = self.scalar_bytes(shape) if callable(self.scalar_bytes) else self.scalar_bytes
        return int(self.state_numel(shape)) * itemsize + int(scalars)

    @property
    def flags(self) -> list[str]:
        names = ("factored", "sign_based", "needs_svd", "needs_hessian")
        return [n for n in names if getattr(self, n)]


_REGISTRY: dict[str, OptimizerInfo] = {}


def register(info: OptimizerInfo) -> OptimizerInfo:
    """Add an entry. Names are unique; registering a name twice is an error."""
    if info.name in _REGISTRY:
        raise ValueError(f"Optimizer {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    return info


def _ensure_loaded() -> None:
    # The optimizer modules register themselves on import.
    from . import optim  # noqa: F401


def registered() -> Mapping[str, OptimizerInfo]:
    """All entries, by name, in registration order."""
    _ensure_loaded()
    return dict(_REGISTRY)


def list_optimizers(family: str | None = None) -> list[str]:
    """Registry names, in registration order (optionally one family only)."""
    _ensure_loaded()
    return [n for n, i in _REGISTRY.items() if family is None or i.family == family]


def get(name: str) -> OptimizerInfo:
    """The entry for ``name``; an unknown name is a ``ValueError`` listing the closest names."""
    _ensure_loaded()
    key = name.strip().lower() if isinstance(name, str) else name
    if key in _REGISTRY:
        return _REGISTRY[key]
    names = list(_REGISTRY)
    close = difflib.get_close_matches(str(key), names, n=4, cutoff=0.5)
    close += [n for n in names if str(key) and str(key) in n and n not in close][:4]
    hint = f"; did you mean {', '.join(repr(c) for c in close[:4])}?" if close else ""
    raise ValueError(f"Unknown optimizer {name!r}{hint} (hamopt list shows all {len(names)})")


def create(name: str, params: Iterable[Any] | torch.nn.Module, *, filter_bias_and_norm: bool = True,
           **overrides: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name`` with its defaults updated by ``overrides``.

    ``params`` is what any torch optimizer takes (parameters or parameter groups) or a model
    (``torch.nn.Module``). A model's trainable parameters are split as
    :func:`hamopt.param_groups` does: weight decay on matrices and convolution kernels, none
    on biases, normalization layers (torch's and any module whose own parameters are all
    1-D) and the model's ``no_weight_decay()`` names; each group carries ``param_names``.
    ``filter_bias_and_norm=False`` puts every parameter in one group instead.

    ``stochastic_rounding=True`` (hamopt's own optimizers) writes bfloat16 parameters back
    from the float32 update with stochastic rounding (:mod:`hamopt.core.rounding`).

    Raises:
        ValueError: unknown name (the message lists the closest names) or a bad
            hyperparameter value (the message names the argument and value).
    """
    info = get(name)
    sr = overrides.pop("stochastic_rounding", None)
    if isinstance(params, torch.nn.Module):
        from .groups import _module_groups

        params = _module_groups(params, filter_bias_and_norm, None)
    opt = info.create(params, **overrides)
    if sr is not None:
        from .core.rounding import enable_stochastic_rounding

        enable_stochastic_rounding(opt, bool(sr))
    opt.hamopt_name = info.name  # type: ignore[attr-defined]  # read by hamopt.describe
    return opt


# ---------------------------------------------------------------------- shape helpers
def numel(shape: Shape) -> int:
    """Number of elements of ``shape`` (1 for a 0-d tensor)."""
    return math.prod(shape)


def matrix_dims(shape: Shape) -> tuple[int, int] | None:
    """``(m, n)`` of the ``dim0 x prod(rest)`` matrix view, or ``None`` for 0-d/1-d shapes."""
    if len(shape) < 2:
        return None
    return shape[0], math.prod(shape[1:])

"""Gradient transforms: the unit every hamopt optimizer is built from.

A transform is one idea of a paper (Adam's moments, a factored second moment, an SVD
rotation, a cautious mask, decoupled weight decay, the learning rate). It maps a list of
*updates* (initially the gradients) to a new list of updates, and may keep per-parameter
state. Transforms are composed with :func:`chain` and run by
:class:`hamopt.core.optimizer.ChainedOptimizer`, which adds the final updates to the
parameters. The design follows optax's ``GradientTransformation`` (``init``/``update``),
adapted to PyTorch's mutable per-parameter state dicts and multi-tensor kernels.

Conventions
-----------
* **The chain applies the update.** A named optimizer's chain ends with a transform that
  writes the parameters (:attr:`Transform.applies`), e.g.
  :func:`hamopt.transforms.apply_decayed_update` (``p <- p (1 - lr wd) - lr u``), so the chain
  you read is the step that runs. A chain that ends otherwise (say with
  :func:`hamopt.transforms.scale_by_learning_rate`, which multiplies by ``-lr``) has its
  final updates added to the parameters: ``p += update``.
* **Hyperparameters live in the parameter group.** A transform reads ``ctx.group["betas"]``
  and so on at every step, so per-group values and LR schedulers work. It names the keys it
  reads in :attr:`Transform.hyperparams` and checks them in :meth:`Transform.validate`.
* **State lives in ``optimizer.state[p]``** under the keys named in
  :attr:`Transform.state_keys` (checked for clashes by :func:`chain`), created lazily by
  :meth:`Transform.init` the first time ``p`` has a gradient. All state tensors of a
  parameter share one dtype (float32 for low-precision parameters by default).
* **Ownership.** ``updates`` may alias the raw gradients or the state; call
  ``ctx.writable(updates)`` before modifying them in place, and ``ctx.fresh(new)`` when
  returning tensors you allocated yourself, so later transforms may reuse them.
* **How a step runs is not a transform's business.** The engine
  (:mod:`hamopt.core.engine`) decides whether a bucket runs whole, in CPU pieces or on
  gathered FSDP2 shards; a transform only declares what it needs (:meth:`Transform.granularity`,
  :meth:`Transform.on_shards`). Faster versions of a rule (batched, blocked, pooled
  buffers) live in :mod:`hamopt.fast`, each naming the transform it implements; the engine
  picks them automatically.
* **Lists, not tensors.** ``ctx.foreach`` selects the multi-tensor path; write the
  arithmetic once with :mod:`hamopt.core.ops`, which dispatches to ``torch._foreach_*``
  or to a per-tensor loop (the two agree exactly; a test checks it).
* **Granularity.** A transform declares how finely a bucket may be cut before it runs
  (``splits``: ``ELEMENT``, ``TENSOR`` or the default ``BUCKET``); on the CPU the shell
  runs the chain on cache-sized pieces accordingly. A piece may be a flat slice of a
  tensor, so an ``ELEMENT`` transform must not look at shapes or whole-tensor statistics.
* **Shapes.** Transforms receive parameters of any shape, including 0-d and zero-size
  tensors. Shape-dependent transforms (factored statistics, rotations) pick their rule per
  tensor and document the fallback for tensors that are not matrices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import ops

__all__ = ["BUCKET", "Chain", "ELEMENT", "FastPath", "StepContext", "TENSOR", "Transform", "Workspace", "chain",
           "fast_paths", "reference_only", "register_fast_path"]

#: Granularities (:meth:`Transform.granularity`), finest first.
ELEMENT = "element"
TENSOR = "tensor"
BUCKET = "bucket"
_ORDER = {ELEMENT: 0, TENSOR: 1, BUCKET: 2}


def coarsest(*granularities: str) -> str:
    """The coarsest of some granularities (``ELEMENT`` for none)."""
    return max(granularities, key=_ORDER.__getitem__, default=ELEMENT)


class Workspace:
    """Where an implementation takes temporary buffers: ``torch.empty_like`` here.

    The engine hands CPU pieces a pooled workspace (:class:`hamopt.core.engine.pieces.StepPool`)
    whose buffers a later piece of the same step reuses. Only fast implementations
    (:mod:`hamopt.fast`) take buffers; a reference transform allocates as it likes.
    """

    pooled = False

    def take(self, like: Tensor) -> Tensor:
        """An uninitialized contiguous tensor with ``like``'s shape, dtype and device. Never
        keep it (or a view of it) beyond the current step, e.g. in the state."""
        return torch.empty_like(like, memory_format=torch.contiguous_format)

    def give_back(self) -> None:
        """The piece that took buffers is done with them."""


#: The workspace of a step that is not cut into pieces (nothing is pooled).
PLAIN = Workspace()


@dataclass
class StepContext:
    """What a transform sees during one step, for one bucket of same-device, same-dtype params.

    Attributes:
        group: the parameter group (hyperparameters, read-only by convention).
        params: the parameters, in the compute dtype (float32 copies of low-precision params;
            the engine writes them back). Only a transform that :attr:`~Transform.applies`
            writes to them.
        grads: the gradients in the compute dtype (negated when ``maximize``). Read-only.
        states: one state dict per parameter (``optimizer.state[p]``).
        steps: the step count of each parameter after this step's increment, as Python
            floats (or 0-d tensors while compiling). A parameter that was frozen for a while
            has a smaller count than its neighbours.
        foreach: whether to use the multi-tensor kernels.
        leaves: the real parameters behind ``params`` (autograd leaves, original dtype), for
            transforms that differentiate with respect to them (Sophia's Hessian estimate).
            Never write to them: the engine writes the update back.
        workspace: where fast implementations take temporary buffers (:class:`Workspace`).
    """

    group: Mapping[str, Any]
    params: list[Tensor]
    grads: list[Tensor]
    states: list[MutableMapping[str, Any]]
    steps: list[Any]
    foreach: bool
    leaves: list[Tensor] | None = None
    workspace: Workspace = field(default=PLAIN, repr=False)
    _owned: list[Tensor] | None = field(default=None, repr=False)

    def state(self, key: str) -> list[Any]:
        """``[state[key] for each parameter]``."""
        return [s[key] for s in self.states]

    def fresh(self, updates: list[Tensor]) -> list[Tensor]:
        """Mark ``updates`` as tensors the chain owns (may be modified in place later)."""
        self._owned = updates
        return updates

    def owns(self, updates: list[Tensor]) -> bool:
        """Whether ``updates`` are tensors the chain owns (returned through :meth:`fresh`)."""
        return updates is self._owned

    def take(self, like: Tensor) -> Tensor:
        """``self.workspace.take(like)`` (for fast implementations; see :class:`Workspace`)."""
        return self.workspace.take(like)

    def writable(self, updates: list[Tensor]) -> list[Tensor]:
        """``updates`` if the chain owns them, else fresh copies that it owns."""
        if updates is self._owned:
            return updates
        return self.fresh(ops.clone(updates))

    # The derived contexts below are copies of this one (dataclasses.replace), so they share
    # the group and the workspace without listing them.
    def sub(self, indices: Sequence[int]) -> StepContext:
        """A context restricted to the parameters at ``indices`` (for per-shape sub-chains)."""
        return dataclasses.replace(
            self,
            params=[self.params[i] for i in indices],
            grads=[self.grads[i] for i in indices],
            states=[self.states[i] for i in indices],
            steps=[self.steps[i] for i in indices],
            leaves=None if self.leaves is None else [self.leaves[i] for i in indices],
            _owned=None,
        )

    def seen_as(self, params: list[Tensor], grads: list[Tensor]) -> StepContext:
        """The same parameters and states seen through other tensors (e.g. a rotation's
        rotated gradients and matrix views), sharing the workspace.
        ``leaves`` are dropped (they no longer match ``params``)."""
        return dataclasses.replace(self, params=params, grads=grads, leaves=None, _owned=None)


@dataclass(frozen=True)
class FastPath:
    """A faster implementation of a transform's rule (:mod:`hamopt.fast` holds them).

    The transform's own :meth:`~Transform.update` is the reference, written to be read; a
    fast path computes the same rule with batched, blocked or pooled work where ``applies``
    says it may (e.g. only on CPU pieces, whose workspace pools buffers). It must leave the
    same parameters and state as the reference (a generated test compares every fast path
    with its reference in float64).

    Attributes:
        reference: the transform class whose rule it implements (subclasses that do not
            override ``update`` are covered too).
        name: a short name for listings and test ids.
        applies: ``applies(transform, ctx)``: whether it may run for this call.
        update: ``update(transform, ctx, updates) -> updates``, the rule.
    """

    reference: type[Transform]
    name: str
    applies: Callable[[Transform, StepContext], bool]
    update: Callable[[Transform, StepContext, list[Tensor]], list[Tensor]]


def always(t: Transform, ctx: StepContext) -> bool:
    """A :attr:`FastPath.applies` for a fast path that may run wherever its reference runs."""
    return True


def pooled(t: Transform, ctx: StepContext) -> bool:
    """A :attr:`FastPath.applies` for a fast path that runs on CPU pieces only (the step's
    workspace pools buffers there)."""
    return ctx.workspace.pooled


_FAST: dict[type, list[FastPath]] = {}
_FAST_ON = [True]


def register_fast_path(path: FastPath) -> FastPath:
    """Make :meth:`Transform.run` use ``path`` for its reference transform where it applies."""
    _FAST.setdefault(path.reference, []).append(path)
    return path


def fast_paths() -> list[FastPath]:
    """Every registered fast path."""
    return [fp for paths in _FAST.values() for fp in paths]


@contextlib.contextmanager
def reference_only() -> Iterator[None]:
    """Within this block every transform runs its reference ``update`` (no fast paths)."""
    _FAST_ON.append(False)
    try:
        yield
    finally:
        _FAST_ON.pop()


def _fast_path(t: Transform, ctx: StepContext) -> FastPath | None:
    own = type(t).update
    for cls in type(t).__mro__:
        for fp in _FAST.get(cls, ()):
            if own is fp.reference.update and fp.applies(t, ctx):
                return fp
    return None


class Transform:
    """Base class of a gradient transform. Subclasses override what they need.

    Class attributes:
        state_keys: names of the per-parameter state entries this transform creates.
        hyperparams: names of the parameter-group entries it reads.
        supports_sparse: whether it accepts sparse gradients (none of ours do yet).
        supports_compile: whether its ``update`` traces under ``torch.compile``.
        splits: its :meth:`granularity` (``BUCKET`` unless a transform declares finer).
        applies: whether it writes the parameters itself (the last transform of a named
            optimizer's chain, e.g. ``apply_decayed_update()``); it then returns no updates.
    """

    state_keys: tuple[str, ...] = ()
    hyperparams: tuple[str, ...] = ()
    supports_sparse: bool = False
    supports_compile: bool = True
    needs_grad_graph: bool = False
    splits: str = BUCKET
    applies: bool = False

    def validate(self, group: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming the argument and value if ``group`` is invalid."""

    def on_shards(self, group: Mapping[str, Any]) -> bool:
        """Whether :meth:`update` runs on FSDP2 ``DTensor`` shards as they are.

        ``True`` for element-wise transforms (the default follows :meth:`granularity`): each
        rank updates its own rows. A transform that needs whole tensors may still say
        ``True`` if it gathers or reduces across ranks itself (none in hamopt does).
        Otherwise the optimizer runs it on gathered whole tensors, one tensor at a time
        (``TENSOR``) or the whole bucket (``BUCKET``), with the same result on every rank,
        and keeps its rows of the result: a sharded run then equals a single-process one.
        """
        return self.granularity(group) == ELEMENT

    def granularity(self, group: Mapping[str, Any]) -> str:
        """How finely the optimizer may split a bucket before running this transform.

        ``ELEMENT``: each element's update depends only on that element (of the gradient,
        the parameter and the state tensors shaped like it) and on per-tensor scalars such
        as the step count, so the transform may run on flat slices of a tensor. ``TENSOR``:
        each tensor's update is independent of the other tensors (per-tensor norms, row and
        column statistics, rotations), so it may run on any sub-list of whole tensors.
        ``BUCKET`` (the default, always safe): it needs the whole bucket at once.

        On the CPU the optimizer uses this to run the step piece by piece, each piece small
        enough to stay in cache (:attr:`~hamopt.core.optimizer.ChainedOptimizer.cpu_chunk_numel`).
        The base method returns the class attribute ``splits``; override it when the answer
        depends on the hyperparameters.
        """
        return self.splits

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        """Create this transform's state for ``param`` (a tensor in the state dtype)."""

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        """Return the transformed updates: the rule, written to be read (the reference)."""
        return updates

    def run(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        """Run the rule: a registered :class:`FastPath` that applies to ``ctx``, else
        :meth:`update`. Chains and wrappers call their members through this."""
        if _FAST and _FAST_ON[-1]:
            fp = _fast_path(self, ctx)
            if fp is not None:
                return fp.update(self, ctx, updates)
        return self.update(ctx, updates)

    def children(self) -> Sequence[Transform]:
        """Inner transforms (for chains and wrappers)."""
        return ()

    def adopt(self, earlier: Sequence[Transform]) -> Transform | None:
        """Take over a transform that comes before this one in a chain, or ``None``.

        :func:`chain` asks each member in turn, passing the members before it. A transform
        that cannot live apart from another (a reshaper and the first moment it reshapes)
        owns it; for compositions of an older release that listed the two apart, the owner
        returns the one it takes, and the chain drops it from its members. Nothing passes
        between transforms during a step but the updates.
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Chain(Transform):
    """Run transforms one after the other: ``chain(a, b, c)(g) = c(b(a(g)))``."""

    def __init__(self, *transforms: Transform) -> None:
        flat: list[Transform] = []
        for t in transforms:
            if isinstance(t, Chain):
                flat.extend(t.transforms)
            elif isinstance(t, Transform):
                flat.append(t)
            else:
                raise TypeError(f"chain() takes Transform objects, got {type(t).__name__}: {t!r}")
        kept: list[Transform] = []
        for t in flat:  # each member may take over one before it (Transform.adopt)
            taken = t.adopt(tuple(kept))
            if taken is not None:
                kept = [u for u in kept if u is not taken]
            kept.append(t)
        self.transforms: tuple[Transform, ...] = tuple(kept)
        seen: dict[str, Transform] = {}
        for t in _walk(self.transforms):
            if isinstance(t, Chain):  # a nested chain's keys are its members' keys
                continue
            for k in t.state_keys:
                if k in seen and seen[k] is not t:
                    raise ValueError(
                        f"State key {k!r} is used by both {seen[k]!r} and {t!r}; "
                        "give one of them another name"
                    )
                seen[k] = t
        self.state_keys = tuple(seen)
        self.hyperparams = tuple(dict.fromkeys(h for t in _walk(self.transforms) for h in t.hyperparams))
        self.supports_sparse = all(t.supports_sparse for t in self.transforms)
        self.supports_compile = all(t.supports_compile for t in self.transforms)
        self.needs_grad_graph = any(t.needs_grad_graph for t in self.transforms)
        if any(t.applies for t in self.transforms[:-1]):
            raise ValueError("a transform that applies the update to the parameters must come last in a chain")
        self.applies = bool(self.transforms) and self.transforms[-1].applies

    def validate(self, group: Mapping[str, Any]) -> None:
        for t in self.transforms:
            t.validate(group)

    def granularity(self, group: Mapping[str, Any]) -> str:
        return coarsest(*(t.granularity(group) for t in self.transforms))

    def on_shards(self, group: Mapping[str, Any]) -> bool:
        return all(t.on_shards(group) for t in self.transforms)

    def init(self, param: Tensor, state: MutableMapping[str, Any], group: Mapping[str, Any]) -> None:
        for t in self.transforms:
            t.init(param, state, group)

    def update(self, ctx: StepContext, updates: list[Tensor]) -> list[Tensor]:
        for t in self.transforms:
            updates = t.run(ctx, updates)
        return updates

    def children(self) -> Sequence[Transform]:
        return self.transforms

    def __repr__(self) -> str:
        return "chain(" + ", ".join(map(repr, self.transforms)) + ")"


def _walk(ts: Iterable[Transform]) -> Iterable[Transform]:
    for t in ts:
        yield t
        yield from _walk(t.children())


def chain(*transforms: Transform) -> Chain:
    """Compose transforms left to right (optax's ``chain``)."""
    return Chain(*transforms)


def bias_correction(beta: float, steps: Sequence[Any]) -> list[Any]:
    """``1 - beta**t`` for each parameter's step count ``t`` (floats or 0-d tensors)."""
    return [1.0 - beta**t for t in steps]


def is_matrix_like(x: Tensor) -> bool:
    """True for tensors a factored rule treats as matrices (2 or more dims)."""
    return x.dim() >= 2


def as_matrix(x: Tensor) -> Tensor:
    """View a tensor with 2+ dims as ``dim0 x prod(rest)`` (a conv kernel as out x in*kh*kw)."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:])) if x.dim() != 2 else x


def state_like(param: Tensor, group: Mapping[str, Any], shape: Sequence[int] | None = None) -> Tensor:
    """A zero tensor for optimizer state, on ``param``'s device in ``param``'s dtype.

    ``param`` is already in the state dtype (the optimizer passes a compute-dtype view), so
    state for bf16 parameters is float32 unless the user asked otherwise. Shaped like
    ``param`` it is sharded like it under FSDP2; of another ``shape`` it is a whole tensor.
    """
    if shape is None:
        return torch.zeros_like(param, memory_format=torch.preserve_format)
    # Another shape than the parameter's (factored row and column statistics): a plain
    # tensor, so for an FSDP2 shard it is whole on every rank (the engine runs such
    # transforms on gathered tensors, see Transform.on_shards).
    return torch.zeros(tuple(shape), dtype=param.dtype, device=param.device)

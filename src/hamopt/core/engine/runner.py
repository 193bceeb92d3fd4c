"""How one parameter group's step runs: buckets, compute dtype, counters, and the path.

For each group, parameters with a gradient are bucketed by (device, dtype); each bucket
runs the chain once on lists of tensors, so multi-tensor kernels see whole buckets:

* low-precision parameters are stepped through float32 copies (``state_dtype``) that are
  written back afterwards;
* each parameter's ``step`` counter is advanced (:mod:`.counters`);
* the bucket then runs whole, in CPU pieces (:mod:`.pieces`), or on gathered FSDP2 shards
  (:mod:`.gathered`).

Nothing here names a concrete transform: the chain says what it needs through
:meth:`~hamopt.core.transform.Transform.granularity`, :meth:`~hamopt.core.transform.Transform.on_shards`
and :attr:`~hamopt.core.transform.Transform.applies`.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import torch
from torch import Tensor

from .. import ops, rounding
from ..transform import StepContext, Transform
from . import sharding
from .counters import advance_steps
from .gathered import run_gathered
from .pieces import plan_pieces, run_pieces

__all__ = ["Engine", "apply_chain", "compute_dtype", "is_compiling"]

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def is_compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover - torch < 2.3
        return False


def compute_dtype(group: Mapping[str, Any], dtype: torch.dtype) -> torch.dtype:
    """The dtype of the state and of the update arithmetic: ``group["state_dtype"]``, else
    float32 for bfloat16/float16 parameters and the parameter's dtype otherwise."""
    sd = group.get("state_dtype")
    if sd is not None:
        return sd
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def apply_chain(transform: Transform, ctx: StepContext) -> None:
    """Run ``transform`` on ``ctx``; unless it applies the update itself, add its result to
    ``ctx.params`` (``p += update``)."""
    updates = transform.run(ctx, ctx.grads)
    if not transform.applies:
        ops.add_(ctx.params, updates, ctx.foreach)


class Engine:
    """Runs the steps of one optimizer; holds only caches that can be rebuilt any time.

    Args:
        owner: the optimizer's class name, for error messages.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.step_vectors: dict[Any, tuple[Tensor, list[Tensor]]] = {}

    def step_group(self, transform: Transform, group: dict[str, Any], params: list[Tensor],
                   state: MutableMapping[Tensor, Any], chunk_numel: int) -> None:
        """One step of ``params`` (the group's parameters that have a gradient)."""
        kinds = [(p.device, p.dtype) for p in params]
        if kinds.count(kinds[0]) == len(kinds):  # the usual case: one device, one dtype
            self.step_bucket(transform, group, params, state, chunk_numel)
            return
        buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for p, k in zip(params, kinds):
            buckets.setdefault(k, []).append(p)
        for ps in buckets.values():
            self.step_bucket(transform, group, ps, state, chunk_numel)

    def step_bucket(self, transform: Transform, group: dict[str, Any], params: list[Tensor],
                    state: MutableMapping[Tensor, Any], chunk_numel: int) -> None:
        leaves, grads = params, [p.grad for p in params]
        if params[0].is_complex():  # torch's rule: a complex tensor steps as its view_as_real
            if transform.needs_grad_graph:
                raise TypeError(f"{self.owner} does not support complex parameters (got {params[0].dtype}); "
                                "optimize torch.view_as_real(p) instead")
            params = [torch.view_as_real(p) for p in params]
            grads = [torch.view_as_real(g) for g in grads]  # type: ignore[arg-type]
        foreach = group.get("foreach")
        foreach = True if foreach is None else bool(foreach)
        cdtype = compute_dtype(group, params[0].dtype)
        cast = cdtype != params[0].dtype
        if cast:
            cparams = [p.detach().to(cdtype) for p in params]
            cgrads = [g.to(cdtype) for g in grads]  # type: ignore[union-attr]
        else:  # the step runs under no_grad, so the leaves themselves can be updated in place
            cparams = params
            cgrads = list(grads)  # type: ignore[arg-type]
        if group.get("maximize", False):
            cgrads = ops.neg(cgrads, foreach)

        states = [state[p] for p in leaves]  # state is keyed by the parameters themselves
        if not all(states):  # lazy state for parameters seen for the first time
            for st, cp in zip(states, cparams):
                if len(st) == 0:
                    st["step"] = torch.tensor(0.0, dtype=torch.float32)
                    transform.init(cp, st, group)
        compiling = is_compiling()
        steps = advance_steps(self.step_vectors, leaves, states, compiling)

        sharded = any(sharding.is_sharded(p) for p in cparams)  # FSDP2: never in CPU pieces
        pieces = None
        if sharded and not transform.on_shards(group):
            run_gathered(transform, group, cparams, cgrads, states, steps, foreach, self.owner, apply_chain)
        elif (sharded or chunk_numel <= 0 or cparams[0].device.type != "cpu" or compiling
              or (pieces := plan_pieces(chunk_numel, transform.granularity(group), cparams, cgrads, states)) is None):
            apply_chain(transform, StepContext(group=group, params=cparams, grads=cgrads, states=states, steps=steps,
                                               foreach=foreach, leaves=leaves))
        else:
            run_pieces(pieces, transform, group, cparams, cgrads, states, steps, leaves, foreach, apply_chain)
        if cast:  # round-to-nearest, or stochastic rounding when the group asks for it
            rounding.write_back(params, cparams, group)

"""FSDP2: run a chain that needs whole tensors on gathered shards.

Under ``torch.distributed.fsdp.fully_shard`` parameters, gradients and the state shaped like
them are ``DTensor`` shards. A chain whose every transform works element by element (or
handles shards itself, :meth:`~hamopt.core.transform.Transform.on_shards`) runs on the shards
as they are. Any other chain (factored statistics, cautious masks, ...) runs here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from ..transform import BUCKET, StepContext, Transform
from . import sharding

__all__ = ["run_gathered"]


def run_gathered(transform: Transform, group: Mapping[str, Any], params: list[Tensor], grads: list[Tensor],
                 states: list[dict[str, Any]], steps: list[Any], foreach: bool, owner: str,
                 run: Callable[[Transform, StepContext], None]) -> None:
    """Gather the parameter, the gradient and the state shaped like the parameter, run the
    chain on the whole tensors exactly as one process would, and keep this rank's rows.

    One tensor at a time (``TENSOR`` granularity) or the whole bucket (``BUCKET``). State of
    another shape (factored row and column statistics) is whole on every rank already and is
    updated the same on each; new state shaped like the parameter is sharded like it. Every
    rank repeats the same work: the price of whole-matrix statistics that need no reduction
    code of their own.
    """
    if transform.needs_grad_graph:
        raise NotImplementedError(
            f"{owner} differentiates through the parameters (a Hessian estimate), "
            "which FSDP2 shards do not support here; use DistributedDataParallel"
        )
    n = len(params)
    chunks = [[i] for i in range(n)] if transform.granularity(group) != BUCKET else [list(range(n))]
    for idx in chunks:
        ps = [sharding.full(params[i]) for i in idx]
        whole = [{k: sharding.full(v) if sharding.is_sharded(v) else v for k, v in states[i].items()}
                 for i in idx]
        ctx = StepContext(group=group, params=ps, grads=[sharding.full(grads[i]) for i in idx], states=whole,
                          steps=[steps[i] for i in idx], foreach=foreach)
        run(transform, ctx)
        for i, p, st in zip(idx, ps, whole):
            ref = params[i]
            sharding.keep_rows(p, ref)
            for k, v in st.items():
                old = states[i].get(k)
                if v is old:
                    continue
                if sharding.is_sharded(old):
                    sharding.keep_rows(v, old)
                elif old is None and isinstance(v, Tensor) and sharding.is_sharded(ref) and v.shape == ref.shape:
                    states[i][k] = sharding.shard_like(v, ref)
                else:
                    states[i][k] = v

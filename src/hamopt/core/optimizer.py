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
                chain(scale_by_adam(), add_decayed_weights(), scale_by_learning_rate()),
            )

Per step and per group, parameters with a gradient are bucketed by (device, dtype); each
bucket runs the chain once on lists of tensors, so multi-tensor kernels see whole buckets.
On the CPU a bucket runs in cache-sized pieces instead, as finely as the chain's
granularity allows (:attr:`ChainedOptimizer.cpu_chunk_numel`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from . import ops, sharding
from .transform import BUCKET, ELEMENT, Chain, StepContext, Transform

__all__ = ["ChainedOptimizer", "ParamsT"]

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]

_LOW_PRECISION = (torch.bfloat16, torch.float16)
_PLAIN = (Tensor, torch.nn.Parameter)


def _is_compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover - torch < 2.3
        return False


def _can_slice(p: Tensor, g: Tensor, state: Mapping[str, Any]) -> bool:
    """Whether ``p``'s step may run on flat slices: plain contiguous tensors, and every state
    tensor but ``step`` shaped like ``p`` (element-wise state)."""
    if type(p) not in _PLAIN or type(g) not in _PLAIN or not (p.is_contiguous() and g.is_contiguous()):
        return False
    return all(k == "step" or not isinstance(v, Tensor)
               or (type(v) in _PLAIN and v.shape == p.shape and v.is_contiguous())
               for k, v in state.items())


class _SliceState(dict):  # type: ignore[type-arg]
    """A parameter's state restricted to the flat slice ``[lo, hi)``: views of its element-wise
    state tensors (``step`` and other entries as they are).

    In-place updates of the views reach the real state directly. :meth:`write_back` carries
    the rest over: an entry a transform created during the step (momentum switched on) is
    placed into a new full-size tensor, a replaced view is copied into the real tensor, and
    a deleted entry is deleted.
    """

    def __init__(self, real: dict[str, Any], param: Tensor, lo: int, hi: int) -> None:
        self.real, self.shape, self.lo, self.hi = real, param.shape, lo, hi
        views = {k: (v.view(-1)[lo:hi] if k != "step" and isinstance(v, Tensor) else v) for k, v in real.items()}
        super().__init__(views)
        self.views = dict(views)

    def write_back(self) -> None:
        if len(self) == len(self.views) and all(self.get(k) is v for k, v in self.views.items()):
            return
        for k in [k for k in self.views if k not in self]:
            self.real.pop(k, None)
        for k, v in self.items():
            if self.views.get(k) is v:
                continue
            if isinstance(v, Tensor) and v.numel() == self.hi - self.lo and v.dim() > 0:
                full = self.real.get(k)
                if not (isinstance(full, Tensor) and full.shape == self.shape):  # new (or first slice)
                    full = self.real[k] = v.new_zeros(self.shape)
                full.view(-1)[self.lo:self.hi].copy_(v.reshape(-1))
            else:
                self.real[k] = v


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
        kinds = [(p.device, p.dtype) for p in params]
        if kinds.count(kinds[0]) == len(kinds):  # the usual case: one device, one dtype
            self._step_bucket(group, params)
            return
        buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for p, k in zip(params, kinds):
            buckets.setdefault(k, []).append(p)
        for ps in buckets.values():
            self._step_bucket(group, ps)

    def _compute_dtype(self, group: Mapping[str, Any], dtype: torch.dtype) -> torch.dtype:
        sd = group.get("state_dtype")
        if sd is not None:
            return sd
        return torch.float32 if dtype in _LOW_PRECISION else dtype

    def _step_bucket(self, group: dict[str, Any], params: list[Tensor]) -> None:
        leaves, grads = params, [p.grad for p in params]
        if params[0].is_complex():  # torch's rule: a complex tensor steps as its view_as_real
            if self.transform.needs_grad_graph:
                raise TypeError(f"{type(self).__name__} does not support complex parameters (got {params[0].dtype}); "
                                "optimize torch.view_as_real(p) instead")
            params, grads = [torch.view_as_real(p) for p in params], [torch.view_as_real(g) for g in grads]  # type: ignore[arg-type]
        foreach = group.get("foreach")
        foreach = True if foreach is None else bool(foreach)
        cdtype = self._compute_dtype(group, params[0].dtype)
        cast = cdtype != params[0].dtype
        if cast:
            cparams = [p.detach().to(cdtype) for p in params]
            cgrads = [g.to(cdtype) for g in grads]  # type: ignore[union-attr]
        else:  # the step runs under no_grad, so the leaves themselves can be updated in place
            cparams = params
            cgrads = list(grads)  # type: ignore[arg-type]
        if group.get("maximize", False):
            cgrads = ops.neg(cgrads, foreach)

        states = [self.state[p] for p in leaves]
        if not all(states):  # lazy state for parameters seen for the first time
            for state, cp in zip(states, cparams):
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    self.transform.init(cp, state, group)
        if _is_compiling():
            step_tensors = [s["step"] for s in states]
            ops.add_(step_tensors, 1.0, foreach=False)
            steps: list[Any] = step_tensors
        else:
            steps = self._advance_steps(leaves, states)

        body, decay, lr_last = self._tail()
        pieces = None
        sharded = any(sharding.is_sharded(p) for p in cparams)  # FSDP2: never in CPU pieces
        if sharded and not self.transform.on_shards(group):
            self._apply_gathered(group, body, cparams, cgrads, states, steps, foreach, decay, lr_last)
        elif sharded or (pieces := self._cpu_pieces(group, body, cparams, cgrads, states)) is None:
            self._apply(StepContext(group=group, params=cparams, grads=cgrads, states=states, steps=steps,
                                    foreach=foreach, leaves=leaves), body, decay, lr_last)
        else:
            spares: dict[Any, list[Tensor]] = {}  # buffers reused by later pieces of this step
            for chunk in pieces:
                self._apply_piece(group, chunk, cparams, cgrads, states, steps, leaves, foreach, body, decay,
                                  lr_last, spares)
        if cast:
            for p, cp in zip(params, cparams):
                p.copy_(cp)

    def _apply(self, ctx: StepContext, body: Transform, decay: bool, lr_last: bool) -> None:
        """Run ``body`` on ``ctx`` and add the update to ``ctx.params``."""
        cparams, foreach, group = ctx.params, ctx.foreach, ctx.group
        updates = body.update(ctx, ctx.grads)
        # Fast apply of a chain ending in [add_decayed_weights(),] scale_by_learning_rate():
        # p <- p (1 - lr wd) - lr u, the same as p <- p - lr (u + wd p) with two fewer passes
        # over memory (AdamW's own decoupled form).
        alpha: Any = 1.0
        if lr_last:
            lr = group["lr"]
            if decay:
                wd = group["weight_decay"]
                if isinstance(wd, Tensor) or wd != 0:
                    ops.mul_(cparams, 1.0 - lr * wd, foreach)
            if isinstance(lr, Tensor):
                updates = ops.mul_(ctx.writable(updates), -lr, foreach)
            else:
                alpha = -lr
        ops.add_(cparams, updates, foreach, alpha=alpha)

    # ------------------------------------------------------------------ FSDP2 shards
    def _apply_gathered(self, group: dict[str, Any], body: Transform, cparams: list[Tensor], cgrads: list[Tensor],
                        states: list[dict[str, Any]], steps: list[Any], foreach: bool, decay: bool,
                        lr_last: bool) -> None:
        """Run a chain that needs whole tensors (:meth:`Transform.on_shards` ``False``) on FSDP2
        shards: gather the parameter, the gradient and the state shaped like the parameter,
        run the chain on the whole tensors exactly as one process would, and keep this
        rank's rows. One tensor at a time (``TENSOR`` granularity) or the whole bucket
        (``BUCKET``). State of another shape (factored row and column statistics) is whole
        on every rank already and is updated the same on each; new state shaped like the
        parameter is sharded like it. Every rank repeats the same work: the price of
        whole-matrix statistics that need no reduction code of their own.
        """
        if body.needs_grad_graph:
            raise NotImplementedError(
                f"{type(self).__name__} differentiates through the parameters (a Hessian estimate), "
                "which FSDP2 shards do not support here; use DistributedDataParallel"
            )
        n = len(cparams)
        chunks = [[i] for i in range(n)] if body.granularity(group) != BUCKET else [list(range(n))]
        for idx in chunks:
            ps = [sharding.full(cparams[i]) for i in idx]
            whole = [{k: sharding.full(v) if sharding.is_sharded(v) else v for k, v in states[i].items()}
                     for i in idx]
            ctx = StepContext(group=group, params=ps, grads=[sharding.full(cgrads[i]) for i in idx], states=whole,
                              steps=[steps[i] for i in idx], foreach=foreach)
            self._apply(ctx, body, decay, lr_last)
            for i, p, st in zip(idx, ps, whole):
                ref = cparams[i]
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

    # ------------------------------------------------------------------ CPU pieces
    #: On the CPU, run the step on pieces of about this many elements, one after the other,
    #: so each piece's parameters, gradients, state and temporaries stay in cache (a
    #: multi-tensor op over a whole model streams every tensor through memory once per op).
    #: Whole tensors are grouped up to this size; chains whose every transform works element
    #: by element (:meth:`Transform.granularity` ``"element"``: Adam, Lion, Grams, ...) also
    #: cut larger tensors into flat slices of this size. The result is the same; 0 turns it
    #: off. Not used on other devices, nor while compiling (the compiler fuses the step).
    cpu_chunk_numel: int = 1 << 18

    def _cpu_pieces(self, group: Mapping[str, Any], body: Transform, cparams: list[Tensor],
                    cgrads: list[Tensor], states: list[dict[str, Any]]) -> list[list[tuple[int, int, int]]] | None:
        """The pieces of a CPU bucket as lists of ``(index, start, stop)`` (``stop = -1``: the
        whole tensor), or ``None`` to run the bucket at once."""
        size = self.cpu_chunk_numel
        if size <= 0 or cparams[0].device.type != "cpu" or _is_compiling():
            return None
        gran = body.granularity(group)
        if gran == BUCKET or (len(cparams) == 1 and cparams[0].numel() <= size):
            return None
        sliceable = gran == ELEMENT
        chunks: list[list[tuple[int, int, int]]] = []
        cur: list[tuple[int, int, int]] = []
        filled = 0
        for i, (p, g) in enumerate(zip(cparams, cgrads)):
            n = p.numel()
            if sliceable and n > size and _can_slice(p, g, states[i]):
                parts = [(i, lo, min(lo + size, n)) for lo in range(0, n, size)]
            else:
                parts = [(i, 0, -1)]
            for part in parts:
                k = n if part[2] < 0 else part[2] - part[1]
                if cur and filled + k > size:
                    chunks.append(cur)
                    cur, filled = [], 0
                cur.append(part)
                filled += k
        chunks.append(cur)
        return chunks if len(chunks) > 1 else None

    def _apply_piece(self, group: dict[str, Any], chunk: list[tuple[int, int, int]], cparams: list[Tensor],
                     cgrads: list[Tensor], states: list[dict[str, Any]], steps: list[Any], leaves: list[Tensor],
                     foreach: bool, body: Transform, decay: bool, lr_last: bool,
                     spares: dict[Any, list[Tensor]]) -> None:
        ps, gs, ss, ts, ls = [], [], [], [], []
        sliced: list[_SliceState] = []
        for i, lo, hi in chunk:
            if hi < 0:
                ps.append(cparams[i])
                gs.append(cgrads[i])
                ss.append(states[i])
            else:
                ps.append(cparams[i].view(-1)[lo:hi])
                gs.append(cgrads[i].view(-1)[lo:hi])
                st = _SliceState(states[i], cparams[i], lo, hi)
                ss.append(st)
                sliced.append(st)
            ts.append(steps[i])
            ls.append(leaves[i])
        ctx = StepContext(group=group, params=ps, grads=gs, states=ss, steps=ts, foreach=foreach,
                          leaves=None if sliced else ls, spares=spares)
        self._apply(ctx, body, decay, lr_last)
        ctx.give_back()
        for st in sliced:
            st.write_back()

    def _advance_steps(self, params: list[Tensor], states: list[dict[str, Any]]) -> list[float]:
        """Add 1 to each parameter's ``step`` and return the counts as Python floats.

        The per-parameter ``step`` tensors of a bucket are 0-d views of one float32 vector,
        so the increment is one tiny CPU op and the read one ``tolist`` (instead of a
        per-tensor loop, ~4 us per parameter). The vector is rebuilt, keeping the counts,
        whenever a ``step`` tensor is not one of its views (new state, a loaded checkpoint,
        another set of parameters with gradients).
        """
        cache: dict[tuple[int, ...], tuple[Tensor, list[Tensor]]] = self.__dict__.setdefault("_step_vectors", {})
        key = tuple(map(id, params))
        hit = cache.get(key)
        if hit is None or any(s["step"] is not v for s, v in zip(states, hit[1])):
            vec = torch.stack([s["step"].detach().to("cpu", torch.float32) for s in states])
            views = list(vec.unbind(0))
            for s, v in zip(states, views):
                s["step"] = v
            if len(cache) >= 32:  # parameter sets that keep changing: do not grow without bound
                cache.clear()
            hit = cache[key] = (vec, views)
        hit[0].add_(1.0)
        return hit[0].tolist()

    def _tail(self) -> tuple[Transform, bool, bool]:
        """The chain without a trailing ``[add_decayed_weights(),] scale_by_learning_rate()``,
        which the shell then applies itself (``(body, has_decay, has_lr)``).

        Worked out once per transform object (a new chain, e.g. from ``make_cautious``, is
        looked at again), not on every step.
        """
        cached = self.__dict__.get("_tail_cache")
        if cached is not None and cached[0] is self.transform:
            return cached[1]
        from ..transforms.common import AddDecayedWeights, ScaleByLearningRate

        t = self.transform
        result: tuple[Transform, bool, bool] = (t, False, False)
        if isinstance(t, Chain) and t.transforms and isinstance(t.transforms[-1], ScaleByLearningRate):
            rest = t.transforms[:-1]
            decay = bool(rest) and isinstance(rest[-1], AddDecayedWeights)
            if decay:
                rest = rest[:-1]
            result = (Chain(*rest), decay, True)
        self._tail_cache = (t, result)
        return result

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
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("state_dtype", None)

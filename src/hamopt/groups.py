"""Parameter groups from a model, several optimizers in one, and a table of what went where.

Three things a practitioner does before the first step, in the spirit of timm's
``param_groups_weight_decay`` / ``create_optimizer_v2(filter_bias_and_bn=True)``,
pytorch-optimizer's ``get_optimizer_parameters`` and optax's ``masked`` / ``multi_transform``:

- :func:`param_groups` splits a model's trainable parameters into a group with weight decay
  (matrices, convolution kernels) and one without (biases, normalization layers, other
  vectors, optionally embeddings, and the model's own ``no_weight_decay()`` names). The
  rules look at modules and shapes, not only at names, so a user's own ``RMSNorm`` class is
  found without a list of names.
- :func:`partition` builds one ``torch.optim.Optimizer`` from several rules (say H-Fac on
  the hidden matrices and AdamW on everything else) with selectors such as ``"matrices"``,
  ``"embeddings"``, ``"head"``, ``"vectors"``, a name pattern or a predicate. Every
  parameter is assigned exactly once.
- :func:`describe` prints a table of an optimizer's groups: the rule, its hyperparameters,
  parameter count, shapes and state bytes.

    >>> import torch, hamopt
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    >>> [g["param_names"] for g in hamopt.param_groups(model, weight_decay=0.1)]
    [['0.weight', '2.weight'], ['0.bias', '1.weight', '1.bias', '2.bias']]
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .core.optimizer import init_wrapper_hooks
from .memory import _local, _tensors, expected_state_bytes, fmt_bytes
from .model_groups import NORM_CLASSES, ParamInfo, _matches, _split, inspect_model, param_groups
from .registry import create, get

__all__ = [
    "NORM_CLASSES",
    "PartitionedOptimizer",
    "Selector",
    "describe",
    "group_rows",
    "param_groups",
    "partition",
    "select",
]

# ---------------------------------------------------------------------------- selectors
class Selector:
    """Picks parameters of a model for one rule of :func:`partition`.

    ``Selector(label, fn)`` with ``fn(info: ParamInfo) -> bool``. Build them with
    :data:`select`: ``select.matrices``, ``select.embeddings``, ``select.head``,
    ``select.vectors``, ``select.rest``, ``select.name("*.attn.*")``, ``select.where(fn)``,
    ``select.module(nn.Conv2d)``.
    """

    def __init__(self, label: str, fn: Callable[[ParamInfo], bool] | None) -> None:
        self.label, self.fn = label, fn

    def __call__(self, info: ParamInfo) -> bool:
        return bool(self.fn(info)) if self.fn is not None else False

    def __repr__(self) -> str:
        return self.label

    @property
    def is_rest(self) -> bool:
        return self.fn is None


class _Select:
    """Selector constructors. The built-in kinds split every model into four disjoint sets:

    - ``embeddings``: parameters of ``nn.Embedding`` / ``nn.EmbeddingBag`` (a head tied to
      the embedding is an embedding);
    - ``head``: the output layer's parameters (``get_output_embeddings()`` of a Hugging Face
      model, ``get_classifier()`` of a timm model, else the last ``nn.Linear``);
    - ``vectors``: every other 0-D or 1-D parameter (biases, norm gains);
    - ``matrices``: every other parameter with 2 or more dims (hidden weights, conv kernels).

    ``rest`` takes what no other rule took.
    """

    embeddings = Selector("embeddings", lambda i: i.kind == "embeddings")
    head = Selector("head", lambda i: i.kind == "head")
    vectors = Selector("vectors", lambda i: i.kind == "vectors")
    matrices = Selector("matrices", lambda i: i.kind == "matrices")
    rest = Selector("rest", None)

    @staticmethod
    def name(*patterns: str) -> Selector:
        """Parameters whose qualified name matches a pattern: equal, a module prefix, or a glob."""
        if not patterns or not all(isinstance(p, str) for p in patterns):
            raise ValueError(f"select.name needs one or more string patterns, got {patterns!r}")
        return Selector(f"name{patterns!r}".replace(",)", ")"), lambda i: _matches(i.name, patterns) is not None)

    @staticmethod
    def where(fn: Callable[[str, Tensor], bool], label: str | None = None) -> Selector:
        """Parameters for which ``fn(name, param)`` is true."""
        return Selector(label or getattr(fn, "__name__", "where"), lambda i: fn(i.name, i.param))

    @staticmethod
    def module(*classes: type[nn.Module]) -> Selector:
        """Parameters held by an instance of one of ``classes``."""
        label = "module(" + ", ".join(c.__name__ for c in classes) + ")"
        return Selector(label, lambda i: any(isinstance(m, classes) for m in i.owners))

    @staticmethod
    def ndim(minimum: int = 0, maximum: int | None = None) -> Selector:
        """Parameters with ``minimum <= p.dim() <= maximum`` (any kind)."""
        hi = maximum if maximum is not None else 1 << 30
        label = f"ndim({minimum}, {maximum})"
        return Selector(label, lambda i: minimum <= i.param.dim() <= hi)


#: The selector constructors (see :class:`_Select`).
select = _Select()
_BUILTIN = {"embeddings": select.embeddings, "head": select.head, "vectors": select.vectors,
            "matrices": select.matrices, "rest": select.rest}


def _selector(key: Any) -> Selector:
    if isinstance(key, Selector):
        return key
    if isinstance(key, str):
        if key in _BUILTIN:
            return _BUILTIN[key]
        if any(c in key for c in "*?[."):
            return select.name(key)
        close = difflib.get_close_matches(key, list(_BUILTIN), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown selector {key!r}{hint} (built-in: {', '.join(_BUILTIN)}; a name pattern "
                         f"contains '*', '?' or '.', e.g. 'blocks.*.attn.*', or use hamopt.select.name)")
    if callable(key):
        return select.where(key)
    raise TypeError(f"A partition key must be a selector name, a Selector or a callable (name, param) -> bool, "
                    f"got {key!r}")


# ---------------------------------------------------------------------------- rules
def _build(rule: Any, groups: list[dict[str, Any]], kwargs: Mapping[str, Any]) -> torch.optim.Optimizer:
    if isinstance(rule, str):
        return create(rule, groups, **kwargs)
    if isinstance(rule, type) and issubclass(rule, torch.optim.Optimizer):
        return rule(groups, **kwargs)
    if callable(rule):
        opt = rule(groups, **kwargs)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"The factory {rule!r} returned {type(opt).__name__}, not a torch.optim.Optimizer")
        return opt
    raise TypeError(f"A partition rule must be a registry name, an Optimizer class or a factory, got {rule!r}")


def _rule_label(rule: Any) -> str:
    if isinstance(rule, str):
        return rule
    return getattr(rule, "__name__", type(rule).__name__)


def _wants_weight_decay(rule: Any, kwargs: Mapping[str, Any]) -> bool:
    """Whether the rule has a weight decay to keep off biases and norms."""
    if "weight_decay" in kwargs:
        return True
    if isinstance(rule, str):
        return "weight_decay" in get(rule).defaults
    try:
        return "weight_decay" in inspect.signature(rule).parameters
    except (TypeError, ValueError):
        return False




class _MergedState(Mapping[Tensor, Any]):
    """The children's ``state`` dicts seen as one mapping (parameter -> state), read through."""

    def __init__(self, children: Sequence[torch.optim.Optimizer]) -> None:
        self.children = children

    def __getitem__(self, p: Tensor) -> Any:
        for c in self.children:
            if p in c.state:
                return c.state[p]
        raise KeyError(p)

    def __iter__(self) -> Iterator[Tensor]:
        for c in self.children:
            yield from c.state

    def __len__(self) -> int:
        return sum(len(c.state) for c in self.children)

    def __contains__(self, p: object) -> bool:
        return any(p in c.state for c in self.children)


class PartitionedOptimizer(torch.optim.Optimizer):
    """Several optimizers as one ``torch.optim.Optimizer`` (built by :func:`partition`).

    ``optimizers`` are the children, one per rule; ``labels`` the rules' selectors. The
    composite owns no hyperparameters of its own: ``param_groups`` is the list of the
    children's own group dicts (so a scheduler's change of ``group["lr"]`` is the child's),
    ``state`` reads through to the children's state. ``step`` steps every child once (step
    hooks registered on the composite fire once per step), ``zero_grad`` clears every
    gradient, ``state_dict`` is torch's format (``state`` keyed by the position of each
    parameter in ``param_groups`` order, and ``param_groups``), which
    ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict`` understands.
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], labels: Sequence[str] | None = None) -> None:
        optimizers = list(optimizers)
        if not optimizers or not all(isinstance(o, torch.optim.Optimizer) for o in optimizers):
            raise TypeError("PartitionedOptimizer needs a non-empty list of torch.optim.Optimizer")
        seen: dict[int, int] = {}
        for k, o in enumerate(optimizers):
            for g in o.param_groups:
                for p in g["params"]:
                    if id(p) in seen:
                        raise ValueError(f"A parameter of shape {tuple(p.shape)} is in optimizers "
                                         f"{seen[id(p)]} and {k}")
                    seen[id(p)] = k
        self.optimizers = optimizers
        self.labels = list(labels) if labels is not None else [type(o).__name__ for o in optimizers]
        # The defaults every child has (the first child's values): schedulers read them to
        # tell what they may change (OneCycleLR and CyclicLR cycle ``betas`` only when
        # ``"betas" in optimizer.defaults``); the children's own defaults are unchanged.
        self.defaults: dict[str, Any] = {k: v for k, v in optimizers[0].defaults.items()
                                         if all(k in o.defaults for o in optimizers[1:])}
        init_wrapper_hooks(self)

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [g for o in self.optimizers for g in o.param_groups]

    @property  # type: ignore[override]
    def state(self) -> Mapping[Tensor, Any]:  # type: ignore[override]
        return _MergedState(self.optimizers)

    def __getstate__(self) -> dict[str, Any]:
        return {"optimizers": self.optimizers, "labels": self.labels, "defaults": self.defaults}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        init_wrapper_hooks(self)

    def __repr__(self) -> str:
        inner = ",\n".join(f"  {lab}: {o!r}".replace("\n", "\n  ") for lab, o in zip(self.labels, self.optimizers))
        return f"PartitionedOptimizer(\n{inner}\n)"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise NotImplementedError(
            "PartitionedOptimizer cannot tell which rule a new group belongs to; add it to one of "
            "its children: opt.optimizers[i].add_param_group(group)"
        )

    @staticmethod
    def _raw_step(o: torch.optim.Optimizer) -> Callable[..., Any]:
        # The child's step without torch's hook wrapper, so global step hooks fire once (for the
        # composite), not once per child. A step replaced on the instance is used as it is.
        if "step" in o.__dict__:
            return o.step
        fn = type(o).step
        if getattr(fn, "hooked", False):  # torch's profile_hook_step wrapper: take what it wraps
            fn = fn.__wrapped__
        return fn.__get__(o)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Step every child optimizer once. ``closure`` is evaluated once (with gradients
        enabled) before the children step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            self._raw_step(o)()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def _offsets(self) -> list[int]:
        offs, n = [], 0
        for o in self.optimizers:
            offs.append(n)
            n += sum(len(g["params"]) for g in o.param_groups)
        return offs

    @torch._disable_dynamo
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        for pre in self._optimizer_state_dict_pre_hooks.values():
            pre(self)
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        extra: dict[int, dict[str, Any]] = {}
        for k, (o, off) in enumerate(zip(self.optimizers, self._offsets())):
            sd = o.state_dict()
            if "param_groups" not in sd or "state" not in sd:
                # A child with a format of its own (Lookahead: its base's state dict inside):
                # kept whole; its groups are listed for the shape of the format only.
                extra[k] = {"opaque": sd}
                n = off
                for g in o.param_groups:
                    groups.append({**{key: v for key, v in g.items() if key != "params"},
                                   "params": list(range(n, n + len(g["params"])))})
                    n += len(g["params"])
                continue
            for pid, s in sd["state"].items():
                state[int(pid) + off] = s
            for g in sd["param_groups"]:
                groups.append({**g, "params": [int(pid) + off for pid in g["params"]]})
            more = {key: v for key, v in sd.items() if key not in ("state", "param_groups")}
            if more:
                extra[k] = more
        out: dict[str, Any] = {"state": state, "param_groups": groups}
        if extra:
            out["partition_extra"] = extra
        for post in self._optimizer_state_dict_post_hooks.values():
            res = post(self, out)
            if res is not None:
                out = res
        return out

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        for pre in self._optimizer_load_state_dict_pre_hooks.values():
            res = pre(self, state_dict)
            if res is not None:
                state_dict = res
        groups = state_dict["param_groups"]
        mine = [len(o.param_groups) for o in self.optimizers]
        if len(groups) != sum(mine):
            raise ValueError(f"loaded state dict has {len(groups)} parameter groups; this optimizer has "
                             f"{sum(mine)} ({' + '.join(map(str, mine))} in {len(mine)} rules)")
        extra = state_dict.get("partition_extra", {})
        saved_state = state_dict["state"]
        start = 0
        for k, (o, n) in enumerate(zip(self.optimizers, mine)):
            part = groups[start:start + n]
            start += n
            mine_extra = dict(extra.get(k, extra.get(str(k), {})))
            if "opaque" in mine_extra:
                o.load_state_dict(mine_extra["opaque"])
                continue
            # Saved ids are matched by position (ints from state_dict(), FQNs from torch's
            # distributed checkpoint helpers); each child numbers its own parameters from 0.
            local: dict[Any, int] = {}
            sub_groups = []
            for g in part:
                sub_groups.append({**g, "params": [local.setdefault(pid, len(local)) for pid in g["params"]]})
            sub = {
                "state": {local[pid]: s for pid, s in saved_state.items() if pid in local},
                "param_groups": sub_groups,
                **mine_extra,
            }
            o.load_state_dict(sub)
        for post in self._optimizer_load_state_dict_post_hooks.values():
            post(self)


def _normalize_rule(value: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], Mapping):
        return value[0], dict(value[1])
    return value, {}


def partition(
    model: nn.Module,
    rules: Mapping[Any, Any] | Sequence[tuple[Any, Any]],
    *,
    filter_bias_and_norm: bool = True,
    no_decay: Iterable[str | type[nn.Module]] = (),
    decay_embeddings: bool = True,
    include_frozen: bool = False,
) -> PartitionedOptimizer:
    """One optimizer that runs a different rule on each part of ``model``.

    ``rules`` maps a selector to a rule, in a dict or a list of pairs::

        opt = hamopt.partition(model, {
            "matrices": ("hfac", {"lr": 3e-3, "weight_decay": 0.1}),   # hidden 2-D+ weights
            "rest": ("adamw", {"lr": 1e-3}),                          # embeddings, head, vectors
        })

    Selectors: ``"matrices"``, ``"embeddings"``, ``"head"``, ``"vectors"`` (disjoint built-in
    kinds, see :data:`select`), ``"rest"`` (what no other rule took), a name pattern
    (``"blocks.*.attn.*"``, ``hamopt.select.name(...)``), a module class
    (``hamopt.select.module(nn.Conv2d)``) or a predicate ``fn(name, param) -> bool``.

    A rule is a registry name (``"hfac"``), an optimizer class (``torch.optim.SGD``) or a
    factory ``f(params, **kwargs) -> Optimizer``, alone or as ``(rule, kwargs)``.

    Each rule's parameters are split into groups with and without weight decay as
    :func:`param_groups` does (``filter_bias_and_norm=False`` turns that off), when the rule
    has a weight decay. Every trainable parameter must be taken by exactly one rule: one
    taken by two rules, one taken by none (without a ``"rest"`` rule), or a rule that takes
    nothing, is a ``ValueError`` naming it.

    Returns:
        A :class:`PartitionedOptimizer`: one ``torch.optim.Optimizer`` whose ``param_groups``
        are the children's groups (each with its ``param_names``) in rule order.
    """
    pairs = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
    if not pairs:
        raise ValueError("partition needs at least one rule")
    infos = inspect_model(model, no_decay=no_decay, decay_embeddings=decay_embeddings, include_frozen=include_frozen)
    if not infos:
        raise ValueError(f"model {type(model).__name__} has no trainable parameter")
    sels = [_selector(k) for k, _ in pairs]
    if sum(s.is_rest for s in sels) > 1:
        raise ValueError("partition: 'rest' may appear once")
    taken: dict[int, int] = {}
    for k, s in enumerate(sels):
        if s.is_rest:
            continue
        for i, info in enumerate(infos):
            if s(info):
                if i in taken:
                    raise ValueError(f"partition: parameter {info.name!r} {tuple(info.param.shape)} is selected by "
                                     f"two rules, {sels[taken[i]]!r} and {s!r}; make the selectors disjoint")
                taken[i] = k
    rest_k = next((k for k, s in enumerate(sels) if s.is_rest), None)
    left = [i for i in range(len(infos)) if i not in taken]
    if left and rest_k is None:
        names = ", ".join(repr(infos[i].name) for i in left[:5])
        more = f" and {len(left) - 5} more" if len(left) > 5 else ""
        what = "parameter" if len(left) == 1 else "parameters"
        raise ValueError(f"partition: {what} {names}{more} selected by no rule; add a rule for "
                         f"{'it' if len(left) == 1 else 'them'} or a 'rest' rule")
    for i in left:
        taken[i] = rest_k  # type: ignore[assignment]
    children, labels = [], []
    for k, ((_, value), s) in enumerate(zip(pairs, sels)):
        mine = [infos[i] for i in range(len(infos)) if taken[i] == k]
        if not mine:
            raise ValueError(f"partition: rule {s!r} selects no parameter of {type(model).__name__}")
        rule, kwargs = _normalize_rule(value)
        split = filter_bias_and_norm and _wants_weight_decay(rule, kwargs)
        groups = _split(mine, None, split, {})
        children.append(_build(rule, groups, kwargs))
        labels.append(f"{s!r}: {_rule_label(rule)}")
    return PartitionedOptimizer(children, labels)


# ---------------------------------------------------------------------------- describe
_SKIP = ("params", "param_names", "initial_lr", "foreach", "fused", "capturable", "differentiable",
         "decoupled_weight_decay")


def _fmt(v: Any) -> str:
    if isinstance(v, Tensor) and v.numel() == 1:
        v = v.item()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    if isinstance(v, torch.dtype):
        return str(v).replace("torch.", "")
    return str(v)


def _shapes(params: Sequence[Tensor]) -> str:
    counts: dict[str, int] = {}
    for p in params:
        key = "x".join(map(str, p.shape)) or "scalar"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n}x {s}" if n > 1 else s for s, n in counts.items())


def _state_bytes_of(opt: torch.optim.Optimizer, params: Sequence[Tensor]) -> int:
    total, seen = 0, set()
    opts = [opt, *(o for o in (getattr(opt, "base_optimizer", None),) if isinstance(o, torch.optim.Optimizer))]
    for p, o in ((p, o) for p in params for o in opts):  # a wrapper's state and its base's
        st = o.state.get(p) if hasattr(o.state, "get") else None
        for t in _tensors(st or {}):
            t = _local(t)
            key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()
    return total


def group_rows(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """One dict per parameter group: ``rule``, ``hyper`` (its hyperparameters), ``tensors``,
    ``numel``, ``shapes``, ``names``, ``state_bytes`` (measured from the live state, 0
    before the first step) and ``expected_state_bytes`` (the registry's formula, when the
    optimizer came from a registry name, else ``None``)."""
    if isinstance(optimizer, PartitionedOptimizer):
        parts = list(zip(optimizer.labels, optimizer.optimizers))
    else:
        parts = [(getattr(optimizer, "hamopt_name", type(optimizer).__name__), optimizer)]
    rows = []
    for label, opt in parts:
        name = getattr(opt, "hamopt_name", None)
        for g in opt.param_groups:
            params = list(g["params"])
            hyper = {k: v for k, v in g.items() if k not in _SKIP and v is not None and v is not False}
            rows.append(dict(
                rule=label,
                optimizer=type(opt).__name__,
                hyper=hyper,
                tensors=len(params),
                numel=sum(p.numel() for p in params),
                shapes=_shapes(params),
                names=list(g.get("param_names", [])),
                state_bytes=_state_bytes_of(opt, params),
                expected_state_bytes=expected_state_bytes(name, params) if name else None,
            ))
    return rows


def describe(optimizer: torch.optim.Optimizer) -> str:
    """A table of ``optimizer``'s parameter groups: rule, hyperparameters, parameter count,
    shapes and optimizer-state bytes (measured; the registry's prediction beside it when
    known, e.g. before the first step).

        >>> import torch, hamopt
        >>> print(hamopt.describe(hamopt.create("hfac", torch.nn.Linear(4, 2))).splitlines()[0].split())
        ['#', 'rule', 'params', 'numel', 'state', 'expected', 'hyperparameters', '/', 'shapes']
    """
    rows = group_rows(optimizer)
    lines = []
    head = ("#", "rule", "params", "numel", "state", "expected")
    table = [(str(i), r["rule"], str(r["tensors"]), f"{r['numel']:,}", fmt_bytes(r["state_bytes"]),
              "-" if r["expected_state_bytes"] is None else fmt_bytes(r["expected_state_bytes"]))
             for i, r in enumerate(rows)]
    widths = [max(len(h), *(len(t[c]) for t in table)) for c, h in enumerate(head)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  hyperparameters / shapes")
    for t, r in zip(table, rows):
        hyper = ", ".join(f"{k}={_fmt(v)}" for k, v in r["hyper"].items())
        lines.append("  ".join(c.ljust(w) for c, w in zip(t, widths)) + "  " + hyper)
        lines.append(" " * (sum(widths) + 2 * len(widths)) + "shapes: " + r["shapes"])
    total = sum(r["numel"] for r in rows)
    sb = sum(r["state_bytes"] for r in rows)
    lines.append(f"{len(rows)} groups, {sum(r['tensors'] for r in rows)} tensors, {total:,} numbers, "
                 f"state {fmt_bytes(sb)}")
    return "\n".join(lines)

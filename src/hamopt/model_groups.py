"""Which parameters of a model get weight decay: the rules behind :func:`hamopt.param_groups`.

A parameter gets none when it is a bias, a normalization layer's (torch's norm classes, or
any module whose own parameters are all 1-D, whatever its class name), a 0-d/1-d tensor,
one of the model's own ``no_weight_decay()`` names, named in ``no_decay``, or (optionally)
an embedding. The rules look at modules and shapes, not only at names, so a user's own
``RMSNorm`` class is found without a list of names. This module imports nothing else of
hamopt, so :func:`hamopt.create` can build groups from a model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

__all__ = ["NORM_CLASSES", "ParamInfo", "inspect_model", "param_groups"]

#: torch's normalization layers; any module whose own parameters are all 1-D counts as one too.
NORM_CLASSES: tuple[type[nn.Module], ...] = tuple(
    c for c in (
        nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm, lazy variants
        nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None), nn.LocalResponseNorm, nn.CrossMapLRN2d,
    ) if c is not None
)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


# ---------------------------------------------------------------------------- what each parameter is
@dataclass
class ParamInfo:
    """One trainable parameter of a model, as the rules see it.

    Attributes:
        name: its qualified name (the first one, for a parameter shared by several modules).
        param: the tensor.
        owners: the modules that hold it directly (several when weights are tied).
        kind: ``"embeddings"``, ``"head"``, ``"vectors"`` or ``"matrices"`` (see :data:`select`).
        no_decay: why it gets no weight decay (``None``: it gets weight decay).
    """

    name: str
    param: Tensor
    owners: list[nn.Module]
    kind: str
    no_decay: str | None = None


def _output_head(model: nn.Module) -> nn.Module | None:
    """The output layer: ``get_output_embeddings()`` (Hugging Face), ``get_classifier()``
    (timm), else the last ``nn.Linear`` in registration order."""
    for attr in ("get_output_embeddings", "get_classifier"):
        fn = getattr(model, attr, None)
        if callable(fn):
            try:
                head = fn()
            except (NotImplementedError, AttributeError, TypeError):
                head = None
            if isinstance(head, nn.Module):
                return head
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last


def _model_no_weight_decay(model: nn.Module) -> set[str]:
    """Names (or prefixes) that ``no_weight_decay()`` of the model and its submodules return,
    qualified with each submodule's name (timm's and many vision models' convention)."""
    names: set[str] = set()
    for prefix, m in model.named_modules():
        fn = getattr(m, "no_weight_decay", None)
        if not callable(fn):
            continue
        for n in fn():
            names.add(f"{prefix}.{n}" if prefix else str(n))
    return names


def _matches(name: str, patterns: Iterable[str]) -> str | None:
    """The first pattern that names ``name``: equal, a dotted prefix (a module), or a glob."""
    for pat in patterns:
        if name == pat or name.startswith(pat + ".") or fnmatch.fnmatchcase(name, pat):
            return pat
    return None


def _is_norm(m: nn.Module) -> bool:
    if isinstance(m, NORM_CLASSES):
        return True
    own = [p for p in m.parameters(recurse=False)]
    return bool(own) and not isinstance(m, _EMBEDDINGS) and all(p.dim() == 1 for p in own)


def inspect_model(
    model: nn.Module,
    *,
    no_decay: Iterable[str | type[nn.Module]] = (),
    decay_embeddings: bool = True,
    include_frozen: bool = False,
) -> list[ParamInfo]:
    """Every trainable parameter of ``model`` (each once, in ``named_parameters`` order) with
    its kind and whether it gets weight decay. See :func:`param_groups` for the rules."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    patterns = [x for x in no_decay if isinstance(x, str)]
    classes = tuple(x for x in no_decay if isinstance(x, type))
    bad = [x for x in no_decay if not isinstance(x, (str, type))]
    if bad:
        raise TypeError(f"no_decay entries must be names, patterns or module classes, got {bad[0]!r}")
    owners: dict[int, list[tuple[str, nn.Module]]] = {}
    for m in model.modules():
        for local, p in m.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append((local, m))
    under_class = {id(q) for m in model.modules() if classes and isinstance(m, classes) for q in m.parameters()}
    head = _output_head(model)
    model_nwd = _model_no_weight_decay(model)
    out = []
    for name, p in model.named_parameters():
        if not p.requires_grad and not include_frozen:
            continue
        own = owners.get(id(p), [])
        mods = [m for _, m in own]
        if any(isinstance(m, _EMBEDDINGS) for m in mods):
            kind = "embeddings"
        elif head is not None and any(m is head for m in mods):
            kind = "head"
        elif p.dim() < 2:
            kind = "vectors"
        else:
            kind = "matrices"
        reason: str | None = None
        if (pat := _matches(name, patterns)) is not None:
            reason = f"no_decay {pat!r}"
        elif id(p) in under_class:
            reason = "no_decay class"
        elif _matches(name, model_nwd) is not None:
            reason = "no_weight_decay()"
        elif any(_is_norm(m) for m in mods):
            reason = "norm"
        elif any(local == "bias" for local, _ in own) or name.rsplit(".", 1)[-1] == "bias":
            reason = "bias"
        elif p.dim() < 2:
            reason = "vector"
        elif kind == "embeddings" and not decay_embeddings:
            reason = "embedding"
        out.append(ParamInfo(name=name, param=p, owners=mods, kind=kind, no_decay=reason))
    return out


def _split(infos: Sequence[ParamInfo], weight_decay: float | None, filter_bias_and_norm: bool,
           options: Mapping[str, Any]) -> list[dict[str, Any]]:
    decay = [i for i in infos if not (filter_bias_and_norm and i.no_decay)]
    rest = [i for i in infos if filter_bias_and_norm and i.no_decay]
    groups = []
    if decay:
        g: dict[str, Any] = {"params": [i.param for i in decay], "param_names": [i.name for i in decay], **options}
        if weight_decay is not None:
            g["weight_decay"] = weight_decay
        groups.append(g)
    if rest:
        groups.append({"params": [i.param for i in rest], "param_names": [i.name for i in rest], **options,
                       "weight_decay": 0.0})
    return groups


def param_groups(
    model: nn.Module,
    weight_decay: float | None = None,
    *,
    no_decay: Iterable[str | type[nn.Module]] = (),
    decay_embeddings: bool = True,
    include_frozen: bool = False,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into torch parameter groups with and without weight decay.

    A parameter gets **no** weight decay when (first rule that applies, shown by
    :func:`describe`):

    1. its name matches an entry of ``no_decay`` (an exact name, a module prefix such as
       ``"blocks.0.attn"``, or a glob such as ``"*.pos_embed"``), or it belongs to (an instance
       of) a module class listed there, directly or in a submodule;
    2. the model names it: ``no_weight_decay()`` of the model or of any submodule (names
       relative to that submodule), as timm's models define it;
    3. a normalization layer holds it: any of torch's norm classes (:data:`NORM_CLASSES`,
       BatchNorm, LayerNorm, GroupNorm, RMSNorm, ...) and **any module whose own parameters
       are all 1-D**, whatever its class name (a user's ``RMSNorm``, a LayerScale);
    4. it is a bias (its own name is ``bias``, whatever its shape);
    5. it is 0-D or 1-D;
    6. an embedding holds it (``nn.Embedding``, ``nn.EmbeddingBag``) and ``decay_embeddings=False``.

    Everything else (matrices, convolution kernels, embeddings by default) gets weight decay.
    Frozen parameters (``requires_grad=False``) are left out unless ``include_frozen``; a
    parameter shared by several modules (tied weights) appears once.

    Args:
        model: the module.
        weight_decay: the decayed group's ``weight_decay``; ``None`` (default) leaves the key
            out, so the optimizer's own default applies.
        no_decay: extra names, patterns or module classes kept free of weight decay.
        decay_embeddings: weight decay on embedding tables (default ``True``, as timm).
        include_frozen: keep parameters with ``requires_grad=False``.
        **group_options: more keys for every group (``lr``, ``stochastic_rounding``, ...).

    Returns:
        Up to two groups, decayed first, each ``{"params", "param_names", ...}``; the group
        without decay has ``weight_decay=0.0``.
    """
    return _module_groups(model, True, weight_decay, no_decay, decay_embeddings, include_frozen, group_options)


def _module_groups(model: nn.Module, filter_bias_and_norm: bool, weight_decay: float | None,
                   no_decay: Iterable[str | type[nn.Module]] = (), decay_embeddings: bool = True,
                   include_frozen: bool = False, group_options: dict[str, Any] | None = None
                   ) -> list[dict[str, Any]]:
    """:func:`param_groups`, or one group when not ``filter_bias_and_norm`` (what
    ``hamopt.create(name, model)`` passes to the optimizer, see :func:`hamopt.create`)."""
    infos = inspect_model(model, no_decay=no_decay, decay_embeddings=decay_embeddings,
                          include_frozen=include_frozen)
    if not infos:
        raise ValueError(f"model {type(model).__name__} has no trainable parameter")
    return _split(infos, weight_decay, filter_bias_and_norm, group_options or {})



"""Print the README's optimizer table (Markdown) from the registry.

    python scripts/optimizer_table.py > table.md

One row per entry of ``hamopt.registry.registered()``, in registration order: the registry
name, the class it builds (with the keyword arguments that make the entry differ from the
class), the family page in ``docs/``, the paper, and the optimizer state of an ``m x n``
matrix (numbers of the state dtype, per-parameter step counters left out), all read from the
registry entry. ``tests/test_readme.py`` checks that README.md holds this output verbatim.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from hamopt.registry import OptimizerInfo, registered

#: family -> the docs page that describes it (relative to the README)
PAGES = {
    "hfac": "docs/hfac.md",
    "adadiag": "docs/adadiag.md",
    "ams": "docs/ams.md",
    "lionk": "docs/lionk.md",
    "lecture": "docs/lecture.md",
    "classic": "docs/classic.md",
}

#: hyperparameters that every entry sets to its paper's values: not what makes a variant
_TUNING = {"lr", "betas", "eps", "weight_decay", "fused", "foreach", "maximize", "capturable",
           "differentiable", "decoupled_weight_decay"}


def _fmt(v: Any) -> str:
    return repr(v)


def class_text(info: OptimizerInfo) -> str:
    """``Class(kw=value)``: the class the entry builds and what the entry fixes beyond tuning."""
    opt = info.create([torch.nn.Parameter(torch.zeros(2, 2))])
    base = getattr(opt, "base_optimizer", None)
    cls = type(opt)
    # a torch class, or hamopt's thin subclass of one (Adafactor, the guarded fused Adam/AdamW)
    torch_named = any(c.__module__.startswith("torch.optim") and c.__name__ == cls.__name__ for c in cls.__mro__)
    kind = "torch.optim." if torch_named else ""
    if isinstance(info.factory, type):
        extra = dict(info.overrides)
    else:  # a factory: compare what it built with the class's own defaults
        sig = {k: p.default for k, p in inspect.signature(cls).parameters.items()
               if p.default is not inspect.Parameter.empty}
        group = opt.param_groups[0]
        extra = {k: group[k] for k in sig if k in group and k not in _TUNING and group[k] != sig[k]}
    args = ", ".join(f"{k}={_fmt(v)}" for k, v in extra.items())
    text = f"`{kind}{cls.__name__}({args})`" if args else f"`{kind}{cls.__name__}`"
    if base is not None:
        text += f" around `{type(base).__name__}`"
    return text


def table() -> str:
    rows = ["| name | class | family | paper | state per m x n |", "|---|---|---|---|---|"]
    for name, info in registered().items():
        page = PAGES.get(info.family)
        family = f"[{info.family}]({page})" if page else info.family
        paper = info.paper.replace("|", "/")
        memory = info.memory.replace("|", "/")
        rows.append(f"| `{name}` | {class_text(info)} | {family} | {paper} | {memory} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())

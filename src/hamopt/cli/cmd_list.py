"""``hamopt list``: every registered optimizer with its paper, defaults and state memory.

With ``--model``, the parameter groups an optimizer gets for that model instead (what
``hamopt.create(name, model)`` or ``--partition`` builds): rule, hyperparameters, parameter
count, shapes and predicted state bytes, and with ``--params`` why each parameter went where.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from typing import Any

from ..registry import get, list_optimizers, registered
from .main import UsageError

NAME = "list"
HELP = "list the optimizers: paper, defaults, optimizer-state memory per m x n matrix"
ORDER = 10


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="show only these optimizers (default: all)")
    p.add_argument("--family", help="show one family only (classic, lecture, hfac, adadiag, ams, lionk)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--model", metavar="SPEC",
                   help="show the parameter groups for a model instead: one of " + ", ".join(MODELS)
                   + ", or module:callable (a function or class that builds the nn.Module with no arguments)")
    p.add_argument("--partition", metavar="RULES",
                   help="with --model: several rules in one optimizer, e.g. matrices=hfac,rest=adamw "
                   "(selectors: matrices, embeddings, head, vectors, rest, or a name pattern)")
    p.add_argument("--weight-decay", type=float, help="with --model: weight decay of the decayed groups")
    p.add_argument("--params", action="store_true", help="with --model: list every parameter and its group")


def _charlm_model() -> Any:
    from ..bench.models import TinyLlama

    return TinyLlama(d=48, layers=2, heads=4, ctx=32, ffn=128)


def _models() -> dict[str, Callable[[], Any]]:
    from ..bench.models import MLP, SmallCNN, TinyLlama

    return {
        "tinyllama": lambda: TinyLlama(),
        "charlm": _charlm_model,
        "mlp": lambda: MLP(64, 64, 10),
        "cnn": lambda: SmallCNN(1, 8, 10),
    }


MODELS = ("tinyllama", "charlm", "mlp", "cnn")  # the benchmark tasks' models (hamopt.bench.models)


def _build_model(spec: str) -> Any:
    import torch

    if spec in MODELS:
        return _models()[spec]()
    if ":" not in spec:
        raise UsageError(f"unknown model {spec!r}; choose one of {', '.join(MODELS)} or give module:callable")
    mod_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"cannot import --model {spec!r}: {e}") from None
    try:
        model = obj() if callable(obj) else obj
    except TypeError as e:
        raise UsageError(f"--model {spec!r} must build the module with no arguments: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"--model {spec!r} gave a {type(model).__name__}, not a torch.nn.Module")
    return model


def _parse_partition(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        sel, eq, rule = item.partition("=")
        if not eq or not sel.strip() or not rule.strip():
            raise UsageError(f"bad --partition item {item!r}; expected selector=optimizer, e.g. matrices=hfac")
        pairs.append((sel.strip(), rule.strip()))
    return pairs


def _run_model(args: argparse.Namespace) -> int:
    from ..groups import describe, group_rows, inspect_model, partition
    from ..registry import create

    model = _build_model(args.model)
    kw = {} if args.weight_decay is None else {"weight_decay": args.weight_decay}
    opts = []
    try:
        if args.partition:
            pairs = _parse_partition(args.partition)
            opts.append((args.partition, partition(model, [(s, (r, kw)) for s, r in pairs])))
        else:
            for name in args.names or ["adamw"]:
                opts.append((name, create(name, model, **kw)))
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    if args.json:
        out = []
        for label, opt in opts:
            rows = group_rows(opt)
            for r in rows:
                r["hyper"] = {k: (str(v) if not isinstance(v, (int, float, str, bool, list, tuple)) else v)
                              for k, v in r["hyper"].items()}
            out.append(dict(optimizer=label, groups=rows))
        print(json.dumps(dict(model=args.model, optimizers=out), indent=2, default=str))
        return 0
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {type(model).__name__}, {n:,} parameters")
    if args.params:
        infos = inspect_model(model)
        w = max(len(i.name) for i in infos)
        print(f"\n{'parameter':<{w}}  {'shape':<12}  {'kind':<10}  weight decay")
        for i in infos:
            shape = "x".join(map(str, i.param.shape)) or "scalar"
            print(f"{i.name:<{w}}  {shape:<12}  {i.kind:<10}  {'no (' + i.no_decay + ')' if i.no_decay else 'yes'}")
    for label, opt in opts:
        print(f"\n{label}:")
        print(describe(opt))
    return 0


def _fmt_defaults(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def run(args: argparse.Namespace) -> int:
    if args.model:
        return _run_model(args)
    if args.partition or args.params or args.weight_decay is not None:
        raise UsageError("--partition, --params and --weight-decay need --model")
    try:
        infos = [get(n) for n in args.names] if args.names else list(registered().values())
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.family:
        fams = sorted({i.family for i in registered().values()})
        if args.family not in fams:
            raise UsageError(f"unknown family {args.family!r}; choose one of {', '.join(fams)}")
        infos = [i for i in infos if i.family == args.family]
    if args.json:
        rows = [
            dict(name=i.name, family=i.family, summary=i.summary, paper=i.paper,
                 defaults={k: (list(v) if isinstance(v, tuple) else v) for k, v in i.defaults.items()},
                 memory_per_mxn=i.memory, flags=i.flags)
            for i in infos
        ]
        print(json.dumps(rows, indent=2, default=str))
        return 0
    width = max((len(i.name) for i in infos), default=4)
    mem_w = max((len(i.memory) for i in infos), default=6)
    print(f"{'name':<{width}}  {'state (m x n)':<{max(mem_w, 13)}}  flags / summary")
    for i in infos:
        flags = f"[{', '.join(i.flags)}] " if i.flags else ""
        print(f"{i.name:<{width}}  {i.memory:<{max(mem_w, 13)}}  {flags}{i.summary}")
        print(f"{'':<{width}}  {'':<{max(mem_w, 13)}}  defaults: {_fmt_defaults(dict(i.defaults))}")
        print(f"{'':<{width}}  {'':<{max(mem_w, 13)}}  paper: {i.paper}")
    print(f"\n{len(infos)} of {len(list_optimizers())} optimizers")
    return 0

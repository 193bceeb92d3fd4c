"""``hamopt list``: every registered optimizer with its paper, defaults and state memory."""

from __future__ import annotations

import argparse
import json

from ..registry import get, list_optimizers, registered
from .main import UsageError

NAME = "list"
HELP = "list the optimizers: paper, defaults, optimizer-state memory per m x n matrix"
ORDER = 10


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="show only these optimizers (default: all)")
    p.add_argument("--family", help="show one family only (classic, lecture, hfac, adadiag, ams, lionk)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _fmt_defaults(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def run(args: argparse.Namespace) -> int:
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

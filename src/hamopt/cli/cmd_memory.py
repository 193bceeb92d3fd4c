"""``hamopt memory``: optimizer-state bytes per optimizer for a model's parameter shapes."""

from __future__ import annotations

import argparse
import json

from .main import UsageError

NAME = "memory"
HELP = "optimizer-state bytes per optimizer for a model's parameter shapes (no weights needed)"
ORDER = 30


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..bench.shapes import MODELS

    p.add_argument("--model", default="llama60m",
                   help=f"parameter shapes of: {', '.join(MODELS)} (default llama60m)")
    p.add_argument("--shapes", help="your own shapes instead of --model, e.g. 512x512,1376x512,512")
    p.add_argument("--optimizers", nargs="+", metavar="NAME",
                   help="registry names (default: all); commas allowed")
    check = p.add_mutually_exclusive_group()
    check.add_argument("--check", dest="check", action="store_true", default=None,
                       help="also instantiate every optimizer and compare with hamopt.state_bytes "
                            "(default: only for models up to 2M parameters)")
    check.add_argument("--no-check", dest="check", action="store_false", help="formulas only")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from ..bench.common import fmt_bytes, resolve_optimizers
    from ..bench.memory import memory_table
    from ..bench.shapes import model_shapes, parse_shapes

    try:
        shapes = parse_shapes(args.shapes) if args.shapes else model_shapes(args.model)
        infos = resolve_optimizers(args.optimizers)
    except ValueError as e:
        raise UsageError(str(e)) from None
    model = "custom shapes" if args.shapes else args.model
    table = memory_table(shapes, infos, check=args.check)
    table["model"] = model
    if args.json:
        print(json.dumps(table, indent=2))
        return 0 if all(r["match"] is not False and r["error"] is None for r in table["rows"]) else 1
    print(f"{model}: {table['params']:,} parameters ({fmt_bytes(table['param_bytes'])} in float32); "
          f"optimizer state in float32")
    w = max(len(r["name"]) for r in table["rows"])
    mw = max(max(len(r["memory_per_mxn"]) for r in table["rows"]), 9)
    head = f"{'optimizer':<{w}}  {'per m x n':<{mw}}  {'state':>11}  {'vs AdamW':>8}  {'B/param':>7}"
    if table["checked"]:
        head += "  measured (hamopt.state_bytes)"
    print(head)
    bad = 0
    for r in table["rows"]:
        line = (f"{r['name']:<{w}}  {r['memory_per_mxn']:<{mw}}  {fmt_bytes(r['state_bytes']):>11}  "
                f"{r['vs_adamw']:>8.3f}  {r['bytes_per_param']:>7.2f}")
        if table["checked"]:
            if r["error"]:
                line += f"  ERROR {r['error']}"
                bad += 1
            elif r["match"]:
                line += f"  {r['measured_bytes']:,} B (matches)"
            else:
                line += f"  {r['measured_bytes']:,} B (MISMATCH: formula says {r['state_bytes']:,} B)"
                bad += 1
        print(line)
    if not table["checked"]:
        print("(formulas only; add --check to instantiate each optimizer and measure)")
    return 1 if bad else 0

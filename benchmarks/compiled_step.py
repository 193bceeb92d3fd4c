"""Eager vs ``torch.compile``d optimizer steps on a model's parameter shapes.

hamopt's Optimizer shell runs a chain of list-of-tensor transforms; eagerly that costs a few
kernel launches per transform and, for shape-dependent rules (factored statistics, rotations),
Python work per tensor. ``torch.compile(opt.step)`` traces the whole step into one graph and
fuses it. This script measures both, side by side with torch's AdamW (foreach, fused, and
compiled foreach) in the same run, so the ratios are comparable on a shared machine.

    python benchmarks/compiled_step.py --model llama60m --device cuda --optimizers hfac adafactor_m lion grams

Steps are compiled with :func:`hamopt.compile_step` (learning rates become tensors first,
so an LR schedule does not recompile the step). ``--peers`` adds the peer implementations
of ``hamopt speed`` (``pytorch_optimizer``, ``lion_pytorch``, ``grams``), eager and compiled
the same way, for a like-for-like comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import hamopt
from hamopt.bench.shapes import model_shapes, total_params
from hamopt.bench.speed import PEERS, time_optimizer


def _compiled(factory: Callable[[list[torch.Tensor]], torch.optim.Optimizer]) -> Callable[..., Any]:
    return lambda params: hamopt.compile_step(factory(params))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama60m")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--optimizers", nargs="+", default=["hfac", "adafactor_m", "lion", "grams", "adamw_variant"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--peers", nargs="*", metavar="LABEL",
                    help="peer rows (e.g. peer:pytorch_optimizer.Lion); no label: every installed peer")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()

    shapes = model_shapes(args.model)
    kw = dict(device=args.device, steps=args.steps, repeat=args.repeat, warmup=3)
    rows: list[dict[str, Any]] = []

    def run(label: str, factory: Callable[..., torch.optim.Optimizer]) -> None:
        t0 = time.perf_counter()
        try:
            r = time_optimizer(factory, shapes, **kw)
        except Exception as e:  # report and go on: one failing row must not lose the others
            rows.append(dict(name=label, error=f"{type(e).__name__}: {e}"[:200]))
            print(f"{label:<34} ERROR {rows[-1]['error']}", flush=True)
            return
        ms = 1e3 * statistics.median(r["times"])
        rows.append(dict(name=label, ms=ms, state_bytes=r["state_bytes"], finite=r["finite"],
                         wall_s=time.perf_counter() - t0))
        print(f"{label:<34} {ms:9.3f} ms  state {r['state_bytes'] / 2**20:9.2f} MiB  "
              f"(row took {rows[-1]['wall_s']:.0f} s)", flush=True)

    print(f"{args.model}: {total_params(shapes):,} params on {args.device}, torch {torch.__version__}", flush=True)
    run("torch AdamW foreach", lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True))
    run("torch AdamW fused", lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True))
    run("torch AdamW foreach compiled", _compiled(lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True)))
    for name in args.optimizers:
        info = hamopt.get(name)
        run(f"{name} eager", lambda ps, i=info: i.create(ps))
        run(f"{name} compiled", _compiled(lambda ps, i=info: i.create(ps)))
    if args.peers is not None:
        for peer in PEERS:
            if peer.graph or not peer.available() or (args.peers and peer.label not in args.peers):
                continue
            run(f"{peer.label} eager", peer.factory())
            run(f"{peer.label} compiled", _compiled(peer.factory()))
    base = next((r["ms"] for r in rows if r["name"] == "torch AdamW foreach" and "ms" in r), None)
    if base:
        print("\nratio to torch AdamW foreach:")
        for r in rows:
            if "ms" in r:
                print(f"  {r['name']:<34} {r['ms'] / base:6.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model=args.model, device=args.device, torch=torch.__version__, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()

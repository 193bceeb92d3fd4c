"""``hamopt trajectories``: optimizer paths on 2-D loss surfaces (the lecture's and the papers' figures)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .main import UsageError, check_writable

NAME = "trajectories"
HELP = "draw optimizer paths on loss-surface contours (lecture, Grams Figure 1, Lion-K Figures 1 and 5)"
DESCRIPTION = (
    "Draw the chosen optimizers' paths on Rosenbrock, Beale and the saddle x^2 - y^2, each at its best learning "
    "rate from a small grid, and the Grams paper's Figure 1 and the Lion-K paper's Figures 1 and 5, as PNGs."
)
ORDER = 55


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..theory.trajectories import DEFAULT_OPTIMIZERS, FIGURES, LR_GRID

    p.add_argument("--optimizers", nargs="+", metavar="NAME",
                   help=f"registry names (default: {', '.join(DEFAULT_OPTIMIZERS)}); commas allowed")
    p.add_argument("--out", default="hamopt-trajectories", help="output folder (default ./hamopt-trajectories)")
    p.add_argument("--energy", action="store_true",
                   help="also draw each path coloured by its family's energy (hamopt.theory.energy)")
    p.add_argument("--steps", type=int, default=250, help="steps per lecture path (default 250)")
    p.add_argument("--paper-steps", type=int, default=600, help="steps of the papers' figures (default 600)")
    p.add_argument("--lrs", nargs="+", type=float, metavar="LR",
                   help=f"learning-rate grid of the lecture figures (default {' '.join(map(str, LR_GRID))})")
    p.add_argument("--figures", nargs="+", choices=FIGURES, default=list(FIGURES),
                   help="which figures (default: all)")


def run(args: argparse.Namespace) -> int:
    from ..bench.common import resolve_optimizers
    from ..theory.trajectories import DEFAULT_OPTIMIZERS, LR_GRID, draw_all

    try:
        names = [i.name for i in resolve_optimizers(args.optimizers)] if args.optimizers else list(DEFAULT_OPTIMIZERS)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for n in names:
        if n == "lookahead":
            raise UsageError("optimizer 'lookahead' wraps another optimizer and cannot be drawn alone")
    if args.steps < 1 or args.paper_steps < 1:
        raise UsageError(f"--steps and --paper-steps must be at least 1, got {args.steps} and {args.paper_steps}")
    grid = tuple(args.lrs) if args.lrs else LR_GRID
    for lr in grid:
        if not lr > 0:
            raise UsageError(f"--lrs must be positive numbers, got {lr}")
    out = Path(args.out)
    check_writable(out)
    try:
        from ..theory.figures import pyplot

        pyplot()
    except ImportError as e:
        raise UsageError(str(e)) from None
    t0 = time.perf_counter()
    paths = draw_all(out, names, steps=args.steps, grid=grid, energy=args.energy, figures=args.figures,
                     paper_steps=args.paper_steps)
    for p in paths:
        print(p)
    print(f"{len(paths)} figures in {out}/ ({time.perf_counter() - t0:.0f} s)")
    return 0

"""``hamopt theory``: check every family's energy claim (THEORY.md) on toy objectives."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .main import UsageError, check_writable

NAME = "theory"
HELP = "check each family's Hamiltonian/Lyapunov claim (THEORY.md) on toy problems; print verdicts, draw figures"
DESCRIPTION = (
    "Integrate each family's ODE (float64 RK4, fixed step) on a convex quadratic, Rosenbrock and a small "
    "two-layer network, search adversarial states, and check the Lion-K constraints, Theorem 4.1 and the AMS "
    "corollaries on live optimizers. One line per family, claim and objective: holds / conditional / fails, "
    "with the measured margin. Exit status 1 if an unconditional claim fails."
)
ORDER = 50


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..theory.claims import FAMILIES
    from ..theory.objectives import MATRIX_OBJECTIVES

    p.add_argument("--families", nargs="+", metavar="NAME",
                   help=f"families to check (default: all): {', '.join(FAMILIES)}; commas allowed")
    p.add_argument("--objectives", nargs="+", metavar="NAME",
                   help=f"toy objectives (default: all): {', '.join(MATRIX_OBJECTIVES)}; commas allowed")
    p.add_argument("--out", default="hamopt-theory", help="folder for the PNG figures (default ./hamopt-theory)")
    p.add_argument("--json", action="store_true", help="print the records as JSON instead of lines")
    p.add_argument("--steps", type=int, default=300, help="RK4 steps per trajectory (default 300; step h = 0.005)")
    p.add_argument("--live-steps", type=int, default=200,
                   help="optimizer steps of the live checks (Lion-K constraints, AMS; default 200)")
    p.add_argument("--probe", type=int, nargs=2, default=(4, 60), metavar=("STARTS", "ITERS"),
                   help="adversarial search: random starts and ascent iterations (default 4 60)")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")


def _names(items: list[str] | None, known: list[str], what: str) -> list[str] | None:
    if not items:
        return None
    flat = [n.strip() for item in items for n in item.split(",") if n.strip()]
    for n in flat:
        if n not in known:
            raise UsageError(f"unknown {what} {n!r}; choose from {', '.join(known)}")
    return list(dict.fromkeys(flat))


def _fmt_margin(x: float) -> str:
    return f"{x:+.3g}"


def run(args: argparse.Namespace) -> int:
    from ..theory.claims import FAMILIES, Settings, check_family
    from ..theory.objectives import MATRIX_OBJECTIVES

    families = _names(args.families, list(FAMILIES), "family") or list(FAMILIES)
    objectives = _names(args.objectives, list(MATRIX_OBJECTIVES), "objective") or list(MATRIX_OBJECTIVES)
    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if args.live_steps < 1:
        raise UsageError(f"--live-steps must be at least 1, got {args.live_steps}")
    if args.probe[0] < 1 or args.probe[1] < 1:
        raise UsageError(f"--probe needs two numbers >= 1, got {args.probe[0]} {args.probe[1]}")
    if "lionk_discrete" in families and not any(o in ("quadratic", "rosenbrock") for o in objectives):
        if args.families:
            raise UsageError("family 'lionk_discrete' does not support objective 'mlp' (Theorem 4.1 needs a global "
                             "smoothness constant L; add quadratic or rosenbrock)")
        families.remove("lionk_discrete")
        sys.stderr.write("hamopt theory: lionk_discrete skipped (it needs quadratic or rosenbrock)\n")
    out = Path(args.out)
    if not args.no_figures:
        check_writable(out)
        try:
            from ..theory.figures import pyplot

            pyplot()
        except ImportError as e:
            raise UsageError(f"{e} (or pass --no-figures)") from None
    settings = Settings(steps=args.steps, live_steps=args.live_steps, probe_starts=args.probe[0],
                        probe_iters=args.probe[1], objectives=tuple(objectives))
    records = []
    failed = 0
    t0 = time.perf_counter()
    for fam in families:
        t1 = time.perf_counter()
        res = check_family(fam, settings)
        figs = []
        if not args.no_figures:
            from ..theory.figures import draw_family

            figs = draw_family(res, out)
        for r in res.records:
            if r.figure is not None:
                r.figure = str(out / r.figure) if not args.no_figures else None
            if r.verdict == "fails":
                failed += 1
            records.append(r)
            if not args.json:
                step = f" (h {r.h:g})" if r.h is not None else ""
                note = f" [{r.note}]" if r.note else ""
                print(f"{r.family:<15} {r.verdict:<11} margin {_fmt_margin(r.margin):>10}{step:<10} {r.objective:<18} "
                      f"{r.claim}{note}")
        if not args.json:
            sys.stderr.write(f"  [{fam}: {len(res.records)} checks, {len(figs)} figures, "
                             f"{time.perf_counter() - t1:.1f} s]\n")
    if args.json:
        print(json.dumps([r.as_json() for r in records], indent=2))
    else:
        counts = {v: sum(r.verdict == v for r in records) for v in ("holds", "conditional", "fails")}
        where = f"; figures in {out}/" if not args.no_figures else ""
        print(f"{len(records)} checks: {counts['holds']} hold, {counts['conditional']} conditional, "
              f"{counts['fails']} fail{where}; {time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0

"""``hamopt bench``: tune, repeat and compare optimizers on offline tasks; write a report."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from .main import UsageError, check_writable

NAME = "bench"
HELP = "compare optimizers on offline tasks (lr tuning, seeds) and write a Markdown + JSON report"
ORDER = 20
DESCRIPTION = (
    "Run benchmark tasks (toy functions, a noisy quadratic, digits, MNIST-5k, a character-level "
    "LLaMA on the standard library's source), tune each optimizer's learning rate on a small grid "
    "(chosen on validation), repeat with seeds, judge the source papers' claims with paired statistics "
    "over seeds, and write report.md (summary first) with PNG plots and results.json. "
    "With no arguments: the quick suite, about 2 minutes on 2 idle CPU cores."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", choices=("quick", "standard"), default="quick",
                   help="quick (default: 5 small tasks, 3 lrs, 3 seeds) or standard (all tasks including a "
                        "1.8M-parameter character LM, 5 lrs, 3 seeds; meant for --device cuda)")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="tasks to run (default: the suite's); commas allowed")
    p.add_argument("--optimizers", nargs="+", metavar="NAME", help="registry names (default: the suite's)")
    p.add_argument("--seeds", type=int,
                   help="seeds per optimizer at the selected lr (default: the suite's; the paired statistics "
                        "need at least 3)")
    p.add_argument("--grid", type=int, help="learning rates tried per optimizer and task (default: the suite's)")
    p.add_argument("--out", default="hamopt-report", help="output folder (default ./hamopt-report)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/results.json without redoing finished runs")
    p.add_argument("--jobs", type=int,
                   help="parallel worker processes (default: 2 or the CPU count if smaller; 1 with --device cuda)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where every task's model and data live (default: cpu)")
    p.add_argument("--text", metavar="PATH",
                   help="add a byte-level LM task on your text: a file (last 20%% held out) "
                        "or a folder (split by file)")
    p.add_argument("--images", metavar="PATH",
                   help="add a classification task on your images: .npz with x, y or .csv[.gz] with the label last")
    p.add_argument("--steps", type=int, default=None, help="step budget of the --text/--images tasks")
    p.add_argument("--target", type=float, default=None,
                   help="target of the --text (validation loss) / --images (validation accuracy) tasks")
    p.add_argument("--list-tasks", action="store_true", help="list the tasks with their budgets and targets")
    p.add_argument("--quiet", action="store_true",
                   help="no progress (without it: a bar on a terminal, one line per finished run otherwise)")


def _flat(items: list[str] | None) -> list[str]:
    return [x.strip() for it in (items or []) for x in it.split(",") if x.strip()]


def run(args: argparse.Namespace) -> int:
    from ..bench.runner import (
        SUITE_LR_CENTRES,
        SUITE_OVERRIDES,
        SUITES,
        Plan,
        ResultsError,
        load_results,
        run_benchmark,
    )
    from ..bench.tasks import TASKS
    from ..registry import get, list_optimizers

    if args.list_tasks:
        print(f"{'task':<16} {'steps':>5} {'batch':>5}  {'target':<22} description")
        for t in TASKS.values():
            tgt = f"val {t.metric} {'>=' if t.higher_is_better else '<='} {t.target}"
            print(f"{t.name:<16} {t.steps:>5} {t.batch or '-':>5}  {tgt:<22} {t.description}")
        return 0
    suite = SUITES[args.suite]
    for mod in ("tqdm", "matplotlib"):
        if importlib.util.find_spec(mod) is None:
            raise UsageError(f"{mod} is needed for hamopt bench: pip install hamopt[bench]")

    names = _flat(args.tasks)
    for n in names:
        if n not in TASKS:
            raise UsageError(f"unknown task {n!r}; choose from {', '.join(TASKS)}")
    specs = [dict(kind="builtin", name=n) for n in names]
    for kind, path in (("text", args.text), ("images", args.images)):
        if path:
            from ..bench.data import DataError
            from ..bench.tasks import image_task, text_task

            steps = args.steps or (300 if kind == "text" else 400)
            if steps < 1:
                raise UsageError("--steps must be at least 1")
            try:
                (text_task if kind == "text" else image_task)(path, steps, args.target)
            except DataError as e:
                raise UsageError(str(e)) from None
            specs.append(dict(kind=kind, name=kind, path=str(Path(path).resolve()), steps=steps, target=args.target))
    if not specs:
        specs = [dict(kind="builtin", name=n) for n in suite.tasks]

    skipped: list[str] = []
    if args.optimizers:
        opts = []
        for n in _flat(args.optimizers):
            try:
                opts.append(get(n).name)
            except ValueError as e:
                raise UsageError(str(e)) from None
    else:
        registered = set(list_optimizers())
        opts = [o for o in suite.optimizers if o in registered]
        skipped = [o for o in suite.optimizers if o not in registered]
    opts = list(dict.fromkeys(opts))
    seeds = args.seeds if args.seeds is not None else suite.seeds
    grid = args.grid if args.grid is not None else suite.grid
    if seeds < 1 or grid < 1:
        raise UsageError("--seeds and --grid must be at least 1")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available to this torch")
    default_jobs = 1 if args.device == "cuda" else max(1, min(2, os.cpu_count() or 1))
    jobs = args.jobs if args.jobs is not None else default_jobs
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")

    out = Path(args.out)
    check_writable(out)
    if args.resume:
        try:
            load_results(out / "results.json")
        except ResultsError as e:
            raise UsageError(str(e)) from None
    if not args.quiet:
        sys.stderr.write(f"hamopt bench: {len(specs)} tasks x {len(opts)} optimizers, grid {grid}, {seeds} seeds, "
                         f"{jobs} worker(s), device {args.device}; results in {out}/\n")
        if skipped:
            sys.stderr.write(f"  (not registered, skipped: {', '.join(skipped)})\n")
    import torch

    # tiny models: one thread per process is fastest (and fair to a shared machine); the
    # second core goes to a second worker process
    torch.set_num_threads(1)
    plan = Plan(tasks=specs, optimizers=opts, grid=grid, seeds=seeds, suite=args.suite if not args.tasks else "custom",
                skipped=skipped, overrides={o: kw for o, kw in SUITE_OVERRIDES.items() if o in opts},
                lr_centres={o: lr for o, lr in SUITE_LR_CENTRES.items() if o in opts}, device=args.device)
    res = run_benchmark(plan, out, resume=args.resume, jobs=jobs, progress=not args.quiet)
    n_bad = sum(r["status"] != "ok" for r in res["runs"].values())
    print(f"report: {out / 'report.md'}  (results: {out / 'results.json'}; {len(res['runs'])} runs, "
          f"{res['new_runs']} new, {n_bad} diverged/failed)")
    return 0

"""The benchmark protocol: learning-rate tuning, seeds, resume, and ``compare``.

Protocol, per optimizer and task:

1. **Tune**: one run (seed 0) per learning rate on a log grid of half-decade steps centred
   on the registry default times the task's ``lr_shift``. Where the best lr sits at an edge
   of the grid, the grid grows by one point past that edge, at most ``GRID_EXTENSION``
   times. The tuning budget is ``len(grid)`` (+ up to 2) runs of the task's full step budget.
2. **Select** the learning rate with the best *final validation* metric (diverged runs are
   excluded; test data is never looked at).
3. **Repeat** the chosen learning rate with fresh seeds ``1..S`` (the tuning seed is not
   reused, so the reported numbers are not biased by the selection). Report mean and
   spread of the final validation (and test) metrics, steps- and time-to-target, wall time,
   the median optimizer-step time and the optimizer-state bytes. Two optimizers run with the
   same seeds, so their results pair up seed by seed (:mod:`.stats`, :mod:`.analysis`).

A run whose training or validation loss becomes NaN/inf is stopped and recorded as
``diverged``. Results are saved (atomically) after every run, so ``--resume`` continues
an interrupted benchmark without redoing finished runs.

Modules, lowest first (none imports a higher one, a test checks): ``common``, ``stats``,
``data``, ``models``, ``shapes``, ``memory``, ``speed``, ``tasks``, ``analysis``, ``report``,
``runner``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..memory import state_bytes
from ..registry import get
from .analysis import claims, summarize
from .common import atomic_write
from .tasks import TASKS, Problem, Task, image_task, text_task

__all__ = ["SUITES", "Plan", "ResultsError", "compare", "lr_grid", "run_benchmark", "run_one"]

RESULTS_FORMAT = "hamopt-bench-results/1"


class ResultsError(ValueError):
    """A results file that cannot be resumed from (corrupt or of another format)."""


@dataclass(frozen=True)
class Suite:
    tasks: tuple[str, ...]
    optimizers: tuple[str, ...]
    grid: int
    seeds: int
    description: str


# Optimizers are the seed families plus the baselines; names not (yet) registered are skipped.
_QUICK_OPTS = ("adamw", "momentum", "lion", "adafactor", "adafactor_m", "adafactor_m0", "hfac", "adadiag", "grams",
               "cadamw", "lionk")
_STANDARD_OPTS = (*_QUICK_OPTS, "adam", "sgd", "signfsgd", "lionfactor", "adamw_variant", "adadiag++",
                  "adafacdiag", "ams", "clion", "adamod", "diffgrad", "ranger", "sophia")

#: Settings the suites give an optimizer beyond its registry defaults: Lion-K with its default
#: ``l1`` kernel is Lion, so the suites run it with the ``lp`` kernel, ``p = 2`` (normalized
#: momentum, seed 004 Table 2), whose per-entry step is about ``1/sqrt(numel)`` of Lion's.
SUITE_OVERRIDES: dict[str, dict[str, Any]] = {"lionk": dict(kernel="lp", p=2.0)}
#: Grid centres that differ from the registry default lr for those settings.
SUITE_LR_CENTRES: dict[str, float] = {"lionk": 1e-2}

SUITES: dict[str, Suite] = {
    "quick": Suite(("rosenbrock", "noisy_quadratic", "matrix_regression", "digits_mlp", "charlm"), _QUICK_OPTS,
                   grid=3, seeds=3,
                   description="5 small tasks, 3 learning rates, 3 seeds (about 5-7 minutes on 2 idle CPU cores)"),
    "standard": Suite(tuple(TASKS), _STANDARD_OPTS, grid=5, seeds=3,
                      description="every task (charlm_large: 1.8M parameters, 1200 steps), 5 learning rates, "
                                  "3 seeds; meant for a GPU (--device cuda): days on 2 CPU cores"),
}


def lr_grid(default: float, points: int, shift: float = 1.0, spacing: float = 0.5) -> list[float]:
    """``points`` learning rates, ``spacing`` decades apart, centred on ``default * shift``
    (an even count puts the extra point above the centre)."""
    c = default * shift
    lo = -((points - 1) // 2)
    return [float(f"{c * 10 ** (k * spacing):.3g}") for k in range(lo, lo + points)]


#: How many times the tuning grid may grow by one point where its best lr sits at an edge.
GRID_EXTENSION = 2


def task_grid(task: Task, default: float, points: int) -> list[float]:
    """The tuning grid of ``task`` for an optimizer whose registry default lr is ``default``."""
    return lr_grid(default, points + task.lr_extra, task.lr_shift, task.lr_spacing)


def _median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run_one(task: Task, optimizer: str, lr: float, seed: int, overrides: dict[str, Any] | None = None,
            threads: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Train ``task`` with ``optimizer`` at ``lr`` from ``seed`` on ``device``; return the run record.

    The curve records, at every evaluation, the step, the validation metric, the mean training
    loss since the previous evaluation and the training time so far (``time``: seconds spent
    in steps, evaluations excluded), from which time-to-target is read.
    """
    if threads:
        torch.set_num_threads(threads)
    info = get(optimizer)
    graph = info.step_needs == "graph"
    cuda = device.startswith("cuda")

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    t0 = time.perf_counter()
    rec: dict[str, Any] = dict(task=task.name, optimizer=info.name, lr=lr, seed=seed, status="ok", error=None,
                               device=device, steps_done=0, steps_to_target=None,
                               curve=dict(step=[], val=[], train=[], time=[]))
    step_times: list[float] = []
    problem: Problem | None = None
    try:
        problem = task.build(seed, device)
        rec["n_params"] = sum(p.numel() for p in problem.params)
        opt = info.create(problem.params, lr=lr, **(overrides or {}))
        train_acc, n_acc = 0.0, 0
        train_time = 0.0
        for step in range(1, task.steps + 1):
            t_step = now()
            opt.zero_grad(set_to_none=True)
            loss = problem.train_loss(step)
            lv = float(loss.detach())
            if not math.isfinite(lv):
                rec["status"] = "diverged"
                break
            loss.backward(create_graph=graph)
            ts = now()
            opt.step()
            te = now()
            step_times.append(te - ts)
            train_time += te - t_step
            if graph:
                opt.zero_grad(set_to_none=True)
            rec["steps_done"] = step
            train_acc += lv
            n_acc += 1
            if step % task.eval_every == 0 or step == task.steps:
                ev = problem.evaluate("val")
                val = ev.get(task.metric, ev["loss"])
                rec["curve"]["step"].append(step)
                rec["curve"]["val"].append(val)
                rec["curve"]["train"].append(train_acc / n_acc)
                rec["curve"]["time"].append(train_time)
                train_acc, n_acc = 0.0, 0
                if not all(math.isfinite(v) for v in ev.values()):
                    rec["status"] = "diverged"
                    break
                if rec["steps_to_target"] is None and task.reached(val):
                    rec["steps_to_target"] = step
        if rec["status"] == "ok":
            rec["final_val"] = problem.evaluate("val")
            rec["final_test"] = problem.evaluate("test")
        rec["state_bytes"] = state_bytes(opt)
    except Exception as e:  # a crashing optimizer is a recorded failure, not a crashed benchmark
        rec["status"] = "error"
        rec["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    rec["wall_s"] = time.perf_counter() - t0
    rec["step_ms"] = _median(step_times) * 1e3 if step_times else None
    return rec


# ------------------------------------------------------------------------------------ planning
_LOCAL_TASKS: dict[str, Task] = {}  # tasks built in this process (compare()); never sent to workers


def task_from_spec(spec: dict[str, Any]) -> Task:
    """Rebuild a task from its JSON-able spec (worker processes cannot receive closures)."""
    if spec["kind"] == "local":
        return _LOCAL_TASKS[spec["name"]]
    if spec["kind"] == "builtin":
        return TASKS[spec["name"]]
    if spec["kind"] == "images":
        return image_task(spec["path"], spec["steps"], spec.get("target"))
    if spec["kind"] == "text":
        return text_task(spec["path"], spec["steps"], spec.get("target"))
    raise ValueError(f"bad task spec {spec!r}")


@dataclass
class Plan:
    """What a benchmark runs: task specs, optimizers, grid size, seeds."""

    tasks: list[dict[str, Any]]
    optimizers: list[str]
    grid: int
    seeds: int
    suite: str = "custom"
    skipped: list[str] = field(default_factory=list)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    lr_centres: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"

    def to_json(self) -> dict[str, Any]:
        return dict(tasks=self.tasks, optimizers=self.optimizers, grid=self.grid, seeds=self.seeds,
                    suite=self.suite, skipped=self.skipped, overrides=self.overrides, lr_centres=self.lr_centres,
                    device=self.device)

    def centre(self, optimizer: str) -> float:
        """The lr the tuning grid is centred on (before the task's ``lr_shift``)."""
        return float(self.lr_centres.get(optimizer, get(optimizer).defaults.get("lr", 1e-3)))


def run_key(task: str, opt: str, lr: float, seed: int, steps: int) -> str:
    return f"{task}|{opt}|{lr:.6g}|{seed}|{steps}"


def load_results(path: Path) -> dict[str, Any]:
    """Read a results JSON for ``--resume``; ``ResultsError`` if it is corrupt."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"--resume: no results file at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"--resume: corrupt results file {path} ({type(e).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT or not isinstance(data.get("runs"), dict):
        raise ResultsError(f"--resume: {path} is not a hamopt bench results file (format {RESULTS_FORMAT})")
    for k, r in data["runs"].items():
        if not isinstance(r, dict) or "status" not in r or "curve" not in r:
            raise ResultsError(f"--resume: corrupt results file {path} (run {k!r})")
    return data


def _select(task: Task, runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return None

    def score(r: dict[str, Any]) -> tuple[float, float]:
        v = r["final_val"].get(task.metric, r["final_val"]["loss"])
        return (-v if task.higher_is_better else v, r["final_val"]["loss"])

    return min(ok, key=score)


def _machine() -> dict[str, Any]:
    import platform

    return dict(python=platform.python_version(), torch=torch.__version__, platform=platform.platform(),
                processor=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                threads=torch.get_num_threads())


def _worker(args: tuple[dict[str, Any], str, float, int, dict[str, Any], str]) -> dict[str, Any]:
    spec, opt, lr, seed, overrides, device = args
    torch.set_num_threads(1)
    return run_one(task_from_spec(spec), opt, lr, seed, overrides, device=device)


def run_benchmark(plan: Plan, out: Path | None, resume: bool = False, jobs: int = 1,
                  progress: bool = True, report: bool = True) -> dict[str, Any]:
    """Run ``plan``; save ``results.json`` (and the report) under ``out`` after every run.

    Returns the results dictionary (also when interrupted: then ``complete`` is False and the
    ``KeyboardInterrupt`` is re-raised after the partial results and report are written).
    """
    results_path = out / "results.json" if out is not None else None
    runs: dict[str, dict[str, Any]] = {}
    if resume and results_path is not None:
        runs = dict(load_results(results_path)["runs"])
    t_start = time.time()
    tasks = {s["name"]: task_from_spec(s) for s in plan.tasks}
    res: dict[str, Any] = dict(format=RESULTS_FORMAT, plan=plan.to_json(),
                               tasks={n: t.describe() for n, t in tasks.items()}, machine=_machine(),
                               started=time.strftime("%Y-%m-%d %H:%M:%S"), runs=runs,
                               selected={}, complete=False, reused_runs=0, new_runs=0)
    reused_before = len(runs)

    def save() -> None:
        res["elapsed_s"] = time.time() - t_start
        if results_path is not None:
            atomic_write(results_path, json.dumps(res, indent=1, default=float))

    # the plan: tuning jobs first, then the seeds at the selected lr
    pairs = [(tn, o) for tn in tasks for o in plan.optimizers]
    tune_jobs = []
    for tn, o in pairs:
        for lr in task_grid(tasks[tn], plan.centre(o), plan.grid):
            tune_jobs.append((tn, o, lr, 0))
    total = len(tune_jobs) + len(pairs) * plan.seeds
    bar = _progress(total, progress, tty=sys.stderr.isatty())
    interrupted = False
    try:
        _execute(tune_jobs, tasks, plan, runs, bar, save, jobs, res)
        tuned = {pair: [lr for (t2, o2, lr, _) in tune_jobs if (t2, o2) == pair] for pair in pairs}

        def best_of(tn: str, o: str) -> dict[str, Any] | None:
            return _select(tasks[tn], [runs[run_key(tn, o, lr, 0, tasks[tn].steps)] for lr in tuned[(tn, o)]])

        # A best lr at the edge of the grid may not be the best lr: grow the grid one point past
        # that edge (same spacing), up to GRID_EXTENSION times, and select again.
        for _ in range(GRID_EXTENSION):
            extra = []
            for tn, o in pairs:
                best, lrs = best_of(tn, o), tuned[(tn, o)]
                if best is None or min(lrs) < best["lr"] < max(lrs):
                    continue
                factor = 10 ** tasks[tn].lr_spacing
                new = max(lrs) * factor if best["lr"] >= max(lrs) else min(lrs) / factor
                new = float(f"{new:.3g}")
                lrs.append(new)
                extra.append((tn, o, new, 0))
            if not extra:
                break
            bar.grow(len(extra))
            _execute(extra, tasks, plan, runs, bar, save, jobs, res)
        final_jobs = []
        for tn, o in pairs:
            best = best_of(tn, o)
            res["selected"][f"{tn}|{o}"] = None if best is None else best["lr"]
            if best is None:
                bar.update(plan.seeds)  # every lr diverged: nothing to repeat
                continue
            final_jobs += [(tn, o, best["lr"], s) for s in range(1, plan.seeds + 1)]
        _execute(final_jobs, tasks, plan, runs, bar, save, jobs, res)
        res["complete"] = True
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    res["reused_runs"] = reused_before
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if "lion" in plan.optimizers:  # (lionk with its default l1 kernel is Lion)
        res["checks"] = {"lion_box": lion_box_check(["lion"])}
    res["summary"] = summarize(res)
    res["claims"] = claims(res, res["summary"])
    save()
    if report and out is not None:
        from .report import write_report

        write_report(res, out)
    if interrupted:
        raise KeyboardInterrupt
    return res


class _Progress:
    """Progress without a terminal: one line per finished run, nothing in between."""

    def __init__(self, total: int, stream: Any | None) -> None:
        self.total, self.n, self.stream = total, 0, stream
        self.t0 = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n

    def grow(self, n: int) -> None:
        """``n`` more runs than planned (the tuning grid grew)."""
        self.total += n

    def set_postfix_str(self, s: str) -> None: ...

    def finished(self, rec: dict[str, Any]) -> None:
        """Count a finished run and (with a stream) write its line."""
        self.n += 1
        if self.stream is None:
            return
        val = rec.get("final_val") or {}
        metric = "accuracy" if "accuracy" in val else "loss"
        what = f"ok, val {metric} {val[metric]:.4g}" if rec["status"] == "ok" and metric in val else rec["status"]
        self.stream.write(f"hamopt bench [{self.n}/{self.total}] {time.perf_counter() - self.t0:.0f}s "
                          f"{rec['task']} {rec['optimizer']} lr={rec['lr']:g} seed={rec['seed']}: {what} "
                          f"({rec.get('wall_s', 0.0):.1f} s)\n")
        self.stream.flush()

    def close(self) -> None: ...


class _Bar(_Progress):
    """A tqdm bar on a terminal."""

    def __init__(self, total: int, stream: Any) -> None:
        super().__init__(total, stream)
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, file=stream, unit="run", desc="hamopt bench", dynamic_ncols=True,
                        bar_format="{desc}: {n_fmt}/{total_fmt} runs |{bar}| {elapsed} elapsed, {remaining} left "
                                   "{postfix}")

    def grow(self, n: int) -> None:
        super().grow(n)
        self.bar.total = self.total
        self.bar.refresh()

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_postfix_str(self, s: str) -> None:
        self.bar.set_postfix_str(s)

    def finished(self, rec: dict[str, Any]) -> None:
        self.bar.set_postfix_str(f"{rec['task']}/{rec['optimizer']} lr={rec['lr']:g} seed={rec['seed']}: "
                                 f"{rec['status']}")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _progress(total: int, enabled: bool, tty: bool, stream: Any | None = None) -> _Progress:
    """A tqdm bar when ``stream`` (standard error by default) is a terminal, one line per
    finished run when it is not (a log file, CI), nothing when not ``enabled``."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return _Progress(total, None)
    return _Bar(total, stream) if tty else _Progress(total, stream)


def _execute(jobs_list: list[tuple[str, str, float, int]], tasks: dict[str, Task], plan: Plan,
             runs: dict[str, dict[str, Any]], bar: _Progress, save: Callable[[], None], jobs: int,
             res: dict[str, Any]) -> None:
    todo = []
    for tn, o, lr, seed in jobs_list:
        key = run_key(tn, o, lr, seed, tasks[tn].steps)
        if key in runs and runs[key].get("status") in ("ok", "diverged", "error"):
            bar.update(1)
            continue
        todo.append((key, tn, o, lr, seed))
    spec = {s["name"]: s for s in plan.tasks}

    def record(key: str, rec: dict[str, Any]) -> None:
        rec["phase"] = "tune" if rec["seed"] == 0 else "final"
        runs[key] = rec
        res["new_runs"] += 1
        save()
        bar.finished(rec)

    if jobs <= 1 or len(todo) <= 1:
        for key, tn, o, lr, seed in todo:
            bar.set_postfix_str(f"{tn}/{o} lr={lr:g} seed={seed}")
            record(key, run_one(tasks[tn], o, lr, seed, plan.overrides.get(o), device=plan.device))
        return
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
        pending: dict[Future[dict[str, Any]], str] = {}
        it = iter(todo)
        try:
            for key, tn, o, lr, seed in it:
                pending[ex.submit(_worker, (spec[tn], o, lr, seed, plan.overrides.get(o, {}), plan.device))] = key
                if len(pending) >= 2 * jobs:
                    break
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    record(pending.pop(fut), fut.result())
                    nxt = next(it, None)
                    if nxt is not None:
                        key, tn, o, lr, seed = nxt
                        pending[ex.submit(_worker, (spec[tn], o, lr, seed, plan.overrides.get(o, {}),
                                                    plan.device))] = key
        except BaseException:
            for fut in pending:
                fut.cancel()
            ex.shutdown(wait=False, cancel_futures=True)
            raise


# ------------------------------------------------------------------------------------ checks
def lion_box_check(names: Iterable[str], wd: float = 2.0, lr: float = 0.01, steps: int = 300
                   ) -> list[dict[str, Any]]:
    """Lion-K's constraint (seed 004, Theorem 4.1): with weight decay ``wd``, Lion's iterates
    approach the box ``||x||_inf <= 1/wd`` at least at the rate ``(1/(1 + lr wd))^t`` and
    never leave it once inside. Minimise ``0.5 ||x - 2||^2`` in 50 dimensions (optimum outside
    the box of radius 1/wd) from a start inside the box (``U(-1/wd, 1/wd)``: the iterates must
    stay inside) and from outside (``N(0, 4)``: the distance to the box must shrink at the rate)."""
    out = []
    for name in names:
        try:
            info = get(name)
        except ValueError:
            continue
        bound = 1.0 / wd
        g = torch.Generator().manual_seed(0)
        starts = {"inside": (torch.rand(50, generator=g, dtype=torch.float64) * 2 - 1) * bound,
                  "outside": 2.0 * torch.randn(50, generator=g, dtype=torch.float64)}
        row: dict[str, Any] = dict(optimizer=name, wd=wd, lr=lr, steps=steps, bound=bound)
        holds = True
        for which, x0 in starts.items():
            x = x0.clone().requires_grad_(True)
            opt = info.create([x], lr=lr, weight_decay=wd)
            d0 = max(0.0, float(x0.abs().max()) - bound)
            worst = 0.0  # largest excess of the distance to the box over the theorem's bound
            for t in range(1, steps + 1):
                opt.zero_grad()
                (0.5 * (x - 2.0).pow(2).sum()).backward()
                opt.step()
                dist = max(0.0, float(x.detach().abs().max()) - bound)
                worst = max(worst, dist - d0 * (1.0 / (1.0 + lr * wd)) ** t)
            row[f"{which}_final_inf"] = float(x.detach().abs().max())
            row[f"{which}_worst_excess"] = worst
            holds &= worst <= 1e-9 * (1 + d0)
        row["holds"] = bool(holds)
        out.append(row)
    return out


# ------------------------------------------------------------------------------------ compare()
def compare(build_model: Callable[[], torch.nn.Module], loss_fn: Callable[..., torch.Tensor], data: Any,
            optimizers: Sequence[str] = ("adamw", "lion", "hfac"), budget: int = 300, batch_size: int = 32,
            seeds: int = 3, grid: int = 3, target: float | None = None, metric: str = "loss",
            out: str | os.PathLike[str] | None = None, progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Compare optimizers on your own model and data with ``hamopt bench``'s protocol.

    Args:
        build_model: ``() -> nn.Module`` (called after ``torch.manual_seed(run seed)``).
        loss_fn: ``loss_fn(model(x), y) -> scalar`` (e.g. ``torch.nn.functional.cross_entropy``).
        data: ``(x, y)`` tensors (split 80/20 into train/validation with a fixed seed), or
            ``{"train": (x, y), "val": (x, y)}`` (optionally ``"test"``).
        optimizers: registry names (unregistered names are an error).
        budget: optimizer steps per run; ``batch_size``: mini-batch size.
        seeds, grid: repeats at the selected lr (3 or more for a paired comparison), and the lr
            grid size (half-decade steps).
        target: steps-to-target threshold on ``metric`` (``"loss"`` or ``"accuracy"``).
        out: folder for the Markdown report, the PNG plots and the JSON (optional).
        device: ``"cpu"`` or ``"cuda"`` (the model and the data are moved there).

    Returns:
        The results dictionary (``summary`` rows per optimizer; every run under ``runs``).
    """
    if metric not in ("loss", "accuracy"):
        raise ValueError(f"metric must be 'loss' or 'accuracy', not {metric!r}")
    for o in optimizers:
        get(o)
    if isinstance(data, dict):
        train, val = data["train"], data["val"]
        test = data.get("test", val)
    else:
        x, y = data
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        n_val = max(1, len(x) // 5)
        train = (x[perm[n_val:]], y[perm[n_val:]])
        val = test = (x[perm[:n_val]], y[perm[:n_val]])

    def build(seed: int, device: str = "cpu") -> Problem:
        torch.manual_seed(seed)
        model = build_model().to(device)
        g = torch.Generator().manual_seed(seed)
        n = len(train[0])
        tr, va, te = ((a.to(device), b.to(device)) for a, b in (train, val, test))

        def train_loss(step: int) -> torch.Tensor:
            idx = torch.randint(0, n, (min(batch_size, n),), generator=g).to(device)
            model.train()
            return loss_fn(model(tr[0][idx]), tr[1][idx])

        def evaluate(split: str) -> dict[str, float]:
            xs, ys = va if split == "val" else te
            model.eval()
            with torch.no_grad():
                pred = model(xs)
                ev = {"loss": float(loss_fn(pred, ys))}
                if pred.ndim == 2 and ys.dtype in (torch.int64, torch.int32) and ys.ndim == 1:
                    ev["accuracy"] = float((pred.argmax(1) == ys).float().mean())
            return ev

        return Problem(list(model.parameters()), train_loss, evaluate)

    task = Task("custom", "user", "compare() on the caller's model and data", "caller's data", "caller's model",
                steps=budget, eval_every=max(budget // 20, 1), batch=batch_size, metric=metric, target=target,
                build=build)
    plan = Plan(tasks=[dict(kind="local", name="custom")], optimizers=list(optimizers), grid=grid, seeds=seeds,
                suite="compare", device=device)
    _LOCAL_TASKS["custom"] = task
    try:
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
        return run_benchmark(plan, Path(out) if out is not None else None, jobs=1, progress=progress,
                             report=out is not None)
    finally:
        _LOCAL_TASKS.pop("custom", None)



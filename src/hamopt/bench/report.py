"""The ``hamopt bench`` report: PNG plots and a Markdown page that leads with the answer.

``write_report(results, out)`` writes ``report.md`` with PNG plots (matplotlib, Agg backend,
imported lazily) next to ``results.json``: first a summary (per task family, the optimizers
within noise of the best with their memory and step time relative to AdamW; which claims
held), then the claims table, then the details per task. The numbers come from
:mod:`.analysis`. Every file is written to a temporary name and renamed, and a report of an
unfinished benchmark says so in its first line.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from ..registry import get
from .analysis import claims, headline, memory_bytes_per_param, performance_profile, summarize
from .common import atomic_write, missing_extra
from .stats import t_quantile

__all__ = ["claims", "performance_profile", "summarize", "write_report"]

INF = float("inf")


# ------------------------------------------------------------------------------------ plots
def _plots(res: dict[str, Any], summary: dict[str, dict[str, Any]], out: Path) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError(missing_extra("matplotlib")) from None
    files: dict[str, str] = {}
    opts = res["plan"]["optimizers"]
    cmap = plt.get_cmap("tab20" if len(opts) > 10 else "tab10")
    color = {o: cmap(i % cmap.N) for i, o in enumerate(opts)}

    def save(fig: Any, name: str) -> str:
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=90, bbox_inches="tight")
        plt.close(fig)
        tmp.replace(out / name)
        return name

    runs = list(res["runs"].values())
    for tn, td in res["tasks"].items():
        fig, ax = plt.subplots(figsize=(7, 4))
        drawn = False
        positive = True
        for o in opts:
            s = summary.get(f"{tn}|{o}")
            if not s or s["lr"] is None:
                continue
            cs = [r["curve"] for r in runs if r["task"] == tn and r["optimizer"] == o and r["seed"] > 0
                  and r["status"] == "ok" and math.isclose(r["lr"], s["lr"])]
            if not cs:
                continue
            n = min(len(c["step"]) for c in cs)
            st = cs[0]["step"][:n]
            vals = [[c["val"][i] for c in cs] for i in range(n)]
            mean = [statistics.fmean(v) for v in vals]
            lo, hi = [min(v) for v in vals], [max(v) for v in vals]
            positive &= min(lo) > 0
            ax.plot(st, mean, label=f"{o} (lr {s['lr']:g})", color=color[o], lw=1.5)
            ax.fill_between(st, lo, hi, color=color[o], alpha=0.2)
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        if td["target"] is not None:
            ax.axhline(td["target"], color="k", ls="--", lw=0.8, label="target")
        if td["metric"] == "loss" and positive:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(f"validation {td['metric']}")
        ax.set_title(f"{tn}: mean over seeds, band = min..max")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        files[f"curves_{tn}"] = save(fig, f"curves_{tn}.png")

    for tn, td in res["tasks"].items():  # learning-rate sensitivity from the tuning runs
        fig, ax = plt.subplots(figsize=(6, 3.6))
        drawn = False
        for o in opts:
            s = summary.get(f"{tn}|{o}")
            pts = [(t["lr"], t["val"]) for t in (s or {}).get("tuning", []) if t["val"] is not None]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=o, color=color[o], lw=1)
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xscale("log")
        vals = [t["val"] for o in opts for t in summary.get(f"{tn}|{o}", {}).get("tuning", []) if t["val"] is not None]
        if td["metric"] == "loss" and vals and min(vals) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("learning rate (tuning runs, seed 0; diverged runs not drawn)")
        ax.set_ylabel(f"final validation {td['metric']}")
        ax.set_title(f"{tn}: learning-rate sensitivity")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        files[f"lr_{tn}"] = save(fig, f"lr_{tn}.png")

    tasks = list(res["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 0.3 * len(opts) + 1.5), squeeze=False)
    for ax, tn in zip(axes[0], tasks):
        budget = res["tasks"][tn]["steps"]
        ys, ws, cs, hatch = [], [], [], []
        for o in opts:
            s = summary.get(f"{tn}|{o}", {})
            v = s.get("steps_to_target")
            reached = v is not None and math.isfinite(v)
            ys.append(o)
            ws.append(v if reached else budget)
            cs.append(color[o])
            hatch.append("" if reached else "xx")
        bars = ax.barh(ys, ws, color=cs)
        for b, h in zip(bars, hatch):
            if h:
                b.set_hatch(h)
                b.set_alpha(0.3)
        ax.invert_yaxis()
        ax.set_title(f"{tn}\n(target {res['tasks'][tn]['target']})", fontsize=9)
        ax.set_xlabel("steps (hatched: not reached)", fontsize=8)
        ax.tick_params(labelsize=7)
    files["steps_to_target"] = save(fig, "steps_to_target.png")

    taus = [1 + 0.05 * i for i in range(61)]
    prof = performance_profile(summary, tasks, opts, taus)
    fig, ax = plt.subplots(figsize=(6, 4))
    for o in opts:
        ax.step(taus, prof[o], where="post", label=o, color=color[o])
    ax.set_xlabel("tau (steps-to-target / best on the task)")
    ax.set_ylabel("fraction of tasks within tau")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("performance profile (steps to target)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    files["profile"] = save(fig, "profile.png")

    from .shapes import model_shapes

    shapes = model_shapes("llama60m")
    n = sum(math.prod(s) for _, s in shapes)
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(opts) + 1.2))
    vals = [sum(get(o).state_bytes_for(s) for _, s in shapes) / 2**20 for o in opts]
    ax.barh(opts, vals, color=[color[o] for o in opts])
    ax.invert_yaxis()
    ax.set_xlabel(f"optimizer state for LLaMA-60M ({n / 1e6:.1f}M params), MiB (float32)")
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.1f}", va="center", fontsize=7)
    ax.set_title("optimizer-state memory (registry formula, checked against state_bytes)")
    files["memory"] = save(fig, "memory.png")
    return files


# ------------------------------------------------------------------------------------ markdown
def _f(x: float | None, spec: str = ".4g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "not reached"
    return format(x, spec)


def _rel(x: float | None) -> str:
    return "-" if x is None else f"{x:.2g}x"


def _lr_cells(s: dict[str, Any]) -> str:
    cells = []
    for t in s["tuning"]:
        v = "div" if t["status"] == "diverged" else "err" if t["val"] is None else format(t["val"], ".3g")
        cell = f"{t['lr']:g}: {v}"
        cells.append(f"**{cell}**" if s["lr"] is not None and math.isclose(t["lr"], s["lr"]) else cell)
    return ", ".join(cells) or "-"


def _summary_section(res: dict[str, Any], summary: dict[str, dict[str, Any]]) -> list[str]:
    seeds = res["plan"]["seeds"]
    L = ["## Summary\n"]
    L.append(f"Per task, the optimizer with the best mean final validation metric (and no diverged seed) and "
             f"every optimizer with **no detectable difference** from it (95% paired t-interval over {seeds} seeds, "
             f"see *Statistical method*), best first; in brackets the optimizer-state memory and the step time "
             f"relative to AdamW on the same task.\n")
    L.append("| family | task | best within noise (mean final metric; memory, step time vs AdamW) |")
    L.append("|---|---|---|")
    for h in sorted(headline(res, summary), key=lambda h: (h["kind"], list(res["tasks"]).index(h["task"]))):
        if not h["best"]:
            L.append(f"| {h['kind']} | {h['task']} | no optimizer finished every seed |")
            continue
        parts = [f"{w['optimizer']} {w['val_mean']:.4g} ({_rel(w['memory_vs_adamw'])} mem, "
                 f"{_rel(w['step_time_vs_adamw'])} step)" for w in h["within"]]
        L.append(f"| {h['kind']} | {h['task']} ({h['metric']}) | {'; '.join(parts)} |")
    L.append("")
    L.append("Claims of the source papers, judged on the tasks in their scope against the paper's own baseline:\n")
    for c in claims(res, summary):
        L.append(f"- **{c['verdict']}**: {c['claim']} ({c['source']}; vs {c['baseline']}, scope: {c['scope']})")
    L.append("")
    return L


def _claims_section(res: dict[str, Any], summary: dict[str, dict[str, Any]]) -> list[str]:
    L = ["## Claims from the source papers, at our small scale\n"]
    L.append("Each claim is judged only on the tasks in its scope (*matrix*: tasks whose parameters are matrices, "
             "where the factored or rotated rule differs from its baseline; *any*: every task), against the "
             "baseline the paper itself uses, paired over the same seeds. Per task: the verdict and the effect "
             "with its 95% interval (a loss ratio challenger / baseline, below 1 is better; or an accuracy "
             "difference in percentage points, above 0 is better).\n")
    L.append("| claim | source | scope | baseline | seeds | tasks in scope: verdict (effect [95% CI]) | verdict |")
    L.append("|---|---|---|---|---|---|---|")
    for c in claims(res, summary):
        if c["per_task"]:
            per = "<br>".join(f"{tn}: {d['verdict']} ({d['text']})" for tn, d in c["per_task"].items())
        else:
            per = c["measured"]
        L.append(f"| {c['claim']} | {c['source']} | {c['scope']} ({len(c['tasks'])} tasks) | {c['baseline']} | "
                 f"{c['seeds']} | {per} | **{c['verdict']}** |")
    L.append("\nSmall tasks and few seeds: a claim made at LLaMA or ImageNet scale may not show here, and "
             "a small-scale win is not proof at scale.\n")
    return L


def _method_section(res: dict[str, Any]) -> list[str]:
    n = res["plan"]["seeds"]
    t = t_quantile(n - 1) if n >= 2 else float("nan")
    return ["## Statistical method\n",
            f"Every optimizer runs its selected learning rate with the same seeds 1..{n}; a seed fixes the "
            "initialization, the batch order and the gradient noise, so two optimizers' final validation metrics "
            "pair up seed by seed. For a challenger against a baseline the paired difference per seed is "
            "`d = log(loss_baseline / loss_challenger)` for a positive loss (`loss_baseline - loss_challenger` "
            "for a loss that can be zero or negative) or `accuracy_challenger - accuracy_baseline`, so `d > 0` "
            "means the challenger did better. The effect is the mean of `d` with a 95% confidence interval "
            f"`mean ± t sd / sqrt(n)`, Student's t with n - 1 degrees of freedom (t = {t:.3f} for n = {n}): the "
            "paired t-test. Verdict: **better** if the whole interval is above 0, **worse** if below, **no "
            "detectable difference** otherwise, and also when the mean effect is negligible (under 1% of the loss, "
            "0.1 percentage point of accuracy), however narrow its interval. A seed that diverged for one "
            "optimizer only makes that one "
            "**worse**, whatever the other seeds show. The loss ratio reported is `exp(-mean d)` with the "
            "interval mapped the same way.\n"]


def _markdown(res: dict[str, Any], summary: dict[str, dict[str, Any]], files: dict[str, str]) -> str:
    plan = res["plan"]
    runs = list(res["runs"].values())
    n_runs = len(runs)
    L: list[str] = []
    if not res.get("complete"):
        L.append(f"> **INCOMPLETE REPORT**: the benchmark was interrupted ({n_runs} runs finished). "
                 "Numbers below cover the finished runs only; continue with `hamopt bench --resume` "
                 "and the same options.\n")
    L.append("# hamopt bench report\n")
    m = res["machine"]
    run_time = sum(r.get("wall_s", 0.0) for r in runs)
    L.append(f"Suite `{plan['suite']}`, started {res['started']}, finished {res.get('finished', '-')}; "
             f"wall time {res.get('elapsed_s', 0):.0f} s, sum of run times {run_time:.0f} s over {n_runs} runs "
             f"({res.get('reused_runs', 0)} reused from a previous run). Python {m['python']}, torch {m['torch']}, "
             f"{m['cpu_count']} CPUs ({m['processor']}), device {plan.get('device', 'cpu')}.\n")
    if plan.get("skipped"):
        L.append(f"Not registered in this hamopt, so not run: {', '.join(plan['skipped'])}.\n")
    L += _summary_section(res, summary)
    L += _claims_section(res, summary)
    L += _method_section(res)
    L.append("## Protocol\n")
    special = "; ".join(f"{o} runs with {', '.join(f'{k}={v}' for k, v in kw.items())}"
                        + (f" (grid centred at lr {plan.get('lr_centres', {})[o]:g})"
                           if o in plan.get("lr_centres", {}) else "")
                        for o, kw in plan.get("overrides", {}).items() if o in plan["optimizers"])
    L.append(
        f"For every task and optimizer: **tune** the learning rate with one run (seed 0) per point of a log grid "
        f"centred on the optimizer's registry default times the task's shift ({plan['grid']} points, plus the "
        f"task's extra points, see the lr grid column of *Tasks*), plus one more point past an edge of "
        f"the grid where the best lr sits at that edge, at most twice; **select** the lr with the best final "
        f"validation metric (diverged runs excluded; test data never used); **repeat** it with {plan['seeds']} "
        f"fresh seeds (1..{plan['seeds']}, not the tuning seed). Other hyperparameters are the registry "
        f"defaults{'; ' + special if special else ''}. Reported per task: mean ± standard deviation over the seeds "
        f"of the final validation and test metric; success over seeds (reached the target / diverged); median "
        f"steps- and time-to-target (training time in steps, evaluations excluded; 'not reached' counts as "
        f"infinite); mean wall time per run; median optimizer-step time; optimizer state in bytes per parameter. "
        f"A run with a NaN/inf loss is stopped and recorded as diverged. Timings come from a shared machine and "
        f"are indicative only.\n")
    L.append("## Tasks\n")
    L.append("| task | family | data | model | matrix parameters | steps | batch | metric | target | lr grid |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for tn, td in res["tasks"].items():
        points = plan["grid"] + td.get("lr_extra", 0)
        grid = (f"{points} points {td.get('lr_spacing', 0.5):g} decade apart around "
                f"{td.get('lr_shift', 1.0):g} x default")
        L.append(f"| {tn} | {td['kind']} | {td['data']} | {td['model']} | {'yes' if td.get('matrix_params') else 'no'} "
                 f"| {td['steps']} | {td['batch'] or 'full'} | validation {td['metric']} | {td['target']} | {grid} |")
    L.append("")
    L.append("## Results per task\n")
    for tn, td in res["tasks"].items():
        better = "higher" if td["metric"] == "accuracy" else "lower"
        L.append(f"### {tn}\n")
        L.append(f"{td['description']}. Validation {td['metric']} ({better} is better), target {td['target']}.\n")
        L.append(f"| optimizer | lr | val {td['metric']} | test {td['metric']} | reached / diverged | steps to target "
                 "| s to target | run s | step ms | state B/param | notes |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        rows = [summary[f"{tn}|{o}"] for o in plan["optimizers"] if f"{tn}|{o}" in summary]
        sign = 1 if td["metric"] == "accuracy" else -1
        rows.sort(key=lambda s: -sign * s["val_mean"] if s["val_mean"] is not None else INF)
        for s in rows:
            notes = []
            if s["lr"] is None:
                if s["tuning"] and all(t["status"] == "error" for t in s["tuning"]):
                    notes.append(f"failed at every lr ({s['tuning'][0]['error']})")
                elif s["tuning"] and all(t["status"] != "ok" for t in s["tuning"]):
                    notes.append("diverged (or failed) at every lr")
                else:
                    notes.append("not run yet")
            if s["tune_diverged"]:
                notes.append(f"{s['tune_diverged']}/{len(s['tuning'])} tuning lrs diverged")
            if s["errors"]:
                err = next((t["error"] for t in s["tuning"] if t.get("error")), "")
                notes.append(f"{s['errors']} run(s) failed {err}")
            if s["seeds"] and s["lr"] is not None:
                grid = [t["lr"] for t in s["tuning"]]
                if grid and s["lr"] in (min(grid), max(grid)):
                    notes.append("best lr at the grid edge")
            val = "-" if s["val_mean"] is None else f"{s['val_mean']:.4g} ± {s['val_std']:.2g}"
            test = "-" if s["test_mean"] is None else f"{s['test_mean']:.4g} ± {s['test_std']:.2g}"
            L.append(f"| {s['optimizer']} | {_f(s['lr'], 'g')} | {val} | {test} | "
                     f"{s['reached']}/{s['seeds']} / {s['diverged']}/{s['seeds']} | {_f(s['steps_to_target'], 'g')} | "
                     f"{_f(s.get('time_to_target'), '.2f')} | {_f(s['wall_s'], '.2f')} | {_f(s['step_ms'], '.3f')} | "
                     f"{_f(s.get('bytes_per_param'), '.3g')} | {'; '.join(notes)} |")
        L.append("")
        if f"curves_{tn}" in files:
            L.append(f"![validation {td['metric']} on {tn}]({files[f'curves_{tn}']})\n")
        L.append(f"Learning-rate sensitivity on {tn} (final validation {td['metric']} of the tuning run, seed 0, per "
                 "lr; the selected lr in bold; div = diverged):\n")
        L.append("| optimizer | lr: final metric |")
        L.append("|---|---|")
        for o in plan["optimizers"]:
            if f"{tn}|{o}" in summary:
                L.append(f"| {o} | {_lr_cells(summary[f'{tn}|{o}'])} |")
        L.append("")
        if f"lr_{tn}" in files:
            L.append(f"![final validation {td['metric']} vs learning rate on {tn}]({files[f'lr_{tn}']})\n")
    L.append("## Steps to target\n")
    if "steps_to_target" in files:
        L.append(f"![steps to target]({files['steps_to_target']})\n")
    L.append("## Performance profile\n")
    taus = [1.0, 1.25, 1.5, 2.0, 3.0, 4.0]
    prof = performance_profile(summary, list(res["tasks"]), plan["optimizers"], taus)
    L.append("Fraction of tasks on which an optimizer's median steps-to-target is within tau times the best "
             "optimizer's (AlgoPerf style; tasks no optimizer solved are left out).\n")
    L.append("| optimizer | " + " | ".join(f"tau={t:g}" for t in taus) + " |")
    L.append("|---|" + "---|" * len(taus))
    for o in sorted(plan["optimizers"], key=lambda o: -sum(prof[o])):
        L.append(f"| {o} | " + " | ".join(f"{v:.2f}" for v in prof[o]) + " |")
    L.append("")
    if "profile" in files:
        L.append(f"![performance profile]({files['profile']})\n")
    L.append("## Memory\n")
    from .shapes import model_shapes

    shapes = [s for _, s in model_shapes("llama60m")]
    L.append("Optimizer state in bytes per parameter: measured on each task (`state_bytes` after the run, step "
             "counters included, divided by the number of parameter entries; in the task's dtype: the toy problems "
             "and the quadratics are float64) and predicted by the registry formula for the LLaMA-60M shapes in "
             "float32 (AdamW: 8).\n")
    tasks = list(res["tasks"])
    L.append("| optimizer | LLaMA-60M | " + " | ".join(tasks) + " |")
    L.append("|---|---|" + "---|" * len(tasks))
    for o in plan["optimizers"]:
        cells = [_f(summary.get(f"{tn}|{o}", {}).get("bytes_per_param"), ".3g") for tn in tasks]
        L.append(f"| {o} | {memory_bytes_per_param(o, shapes):.3g} | " + " | ".join(cells) + " |")
    L.append("")
    if "memory" in files:
        L.append(f"![optimizer-state memory]({files['memory']})\n")
    div = [r for r in runs if r["status"] != "ok"]
    if div:
        L.append("## Diverged and failed runs\n")
        for r in sorted(div, key=lambda r: (r["task"], r["optimizer"], r["lr"], r["seed"])):
            why = r["error"] or f"non-finite loss after {r['steps_done']} steps"
            L.append(f"- {r['task']} / {r['optimizer']} lr={r['lr']:g} seed {r['seed']}: {r['status']} ({why})")
        L.append("")
    L.append("\nEvery number is in `results.json` next to this page.\n")
    return "\n".join(L)


def write_report(res: dict[str, Any], out: Path) -> Path:
    """Write ``report.md`` and its PNG plots into ``out``; returns the report's path."""
    summary = summarize(res)
    res["summary"] = summary
    res["claims"] = claims(res, summary)
    files = _plots(res, summary, out)
    path = out / "report.md"
    atomic_write(path, _markdown(res, summary, files))
    return path

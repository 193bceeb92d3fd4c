"""From run records to answers: per-(task, optimizer) numbers, the papers' claims, the headline.

``summarize(results)`` turns the run records of ``hamopt bench`` into per-(task, optimizer)
numbers; ``claims(results, summary)`` judges each source paper's claim on the tasks in its
scope, against its baseline, paired over seeds (:mod:`hamopt.bench.stats`);
``headline(results, summary)`` picks, per task, the optimizers within noise of the best.
Pure functions of the results dictionary: no plotting, no files (see :mod:`.report`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..registry import get, list_optimizers
from .stats import BETTER, NO_DIFFERENCE, NOT_MEASURED, Comparison, paired_comparison

__all__ = ["CLAIMS", "Claim", "claims", "compare_on_task", "headline", "in_scope", "memory_bytes_per_param",
           "performance_profile", "summarize"]

INF = float("inf")


def _mean(xs: Sequence[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _std(xs: Sequence[float]) -> float | None:
    return statistics.stdev(xs) if len(xs) >= 2 else (0.0 if xs else None)


def _median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _time_to_target(r: dict[str, Any]) -> float:
    """Training seconds (evaluations excluded) until the first evaluation at the target."""
    st = r.get("steps_to_target")
    if r["status"] != "ok" or st is None:
        return INF
    times = r["curve"].get("time")
    if not times:
        return INF
    return times[r["curve"]["step"].index(st)]


def summarize(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per ``"task|optimizer"``: the selected lr, the tuning results and the seed statistics.

    ``per_seed`` maps each final seed to its final validation metric (``None``: diverged or
    failed); the paired comparisons use it. ``reached``/``diverged`` count seeds (success
    rate over seeds); ``steps_to_target`` and ``time_to_target`` are medians over seeds (a
    seed that never reached the target counts as infinite); ``bytes_per_param`` is the
    optimizer state divided by the number of parameter entries.
    """
    out: dict[str, dict[str, Any]] = {}
    runs = list(res["runs"].values())
    for tn, tdesc in res["tasks"].items():
        metric = tdesc["metric"]
        for o in res["plan"]["optimizers"]:
            key = f"{tn}|{o}"
            tune = sorted((r for r in runs if r["task"] == tn and r["optimizer"] == o and r["seed"] == 0),
                          key=lambda r: r["lr"])
            lr = res.get("selected", {}).get(key)
            final = sorted((r for r in runs if r["task"] == tn and r["optimizer"] == o and r["seed"] > 0
                            and lr is not None and math.isclose(r["lr"], lr)), key=lambda r: r["seed"])
            ok = [r for r in final if r["status"] == "ok"]
            vals = [r["final_val"].get(metric, r["final_val"]["loss"]) for r in ok]
            tests = [r["final_test"].get(metric, r["final_test"]["loss"]) for r in ok]
            stt = [r["steps_to_target"] if (r["status"] == "ok" and r["steps_to_target"] is not None) else INF
                   for r in final]
            state = max((r.get("state_bytes") or 0 for r in final), default=None)
            n_params = max((r.get("n_params") or 0 for r in final), default=0)
            out[key] = dict(
                task=tn, optimizer=o, lr=lr, metric=metric,
                tuning=[dict(lr=r["lr"], status=r["status"],
                             val=(r["final_val"].get(metric, r["final_val"]["loss"]) if r["status"] == "ok" else None),
                             error=r.get("error")) for r in tune],
                per_seed={str(r["seed"]): (r["final_val"].get(metric, r["final_val"]["loss"])
                                           if r["status"] == "ok" else None) for r in final},
                seeds=len(final), ok=len(ok), diverged=sum(r["status"] == "diverged" for r in final),
                errors=sum(r["status"] == "error" for r in final),
                val_mean=_mean(vals), val_std=_std(vals), val_min=min(vals) if vals else None,
                val_max=max(vals) if vals else None, test_mean=_mean(tests), test_std=_std(tests),
                steps_to_target=statistics.median(stt) if stt else None,
                time_to_target=statistics.median([_time_to_target(r) for r in final]) if final else None,
                reached=sum(math.isfinite(s) for s in stt),
                wall_s=_mean([r["wall_s"] for r in final]),
                step_ms=_mean([r["step_ms"] for r in final if r.get("step_ms") is not None]),
                state_bytes=state, n_params=n_params or None,
                bytes_per_param=(state / n_params) if state is not None and n_params else None,
                tune_diverged=sum(r["status"] == "diverged" for r in tune),
            )
    return out


def performance_profile(summary: dict[str, dict[str, Any]], tasks: Sequence[str], optimizers: Sequence[str],
                        taus: Sequence[float]) -> dict[str, list[float]]:
    """AlgoPerf-style profile on steps-to-target: for each optimizer, the fraction of tasks
    whose median steps-to-target is within ``tau`` times the best optimizer's on that task."""
    prof: dict[str, list[float]] = {o: [] for o in optimizers}
    ratios: dict[str, list[float]] = {o: [] for o in optimizers}
    usable = []
    for tn in tasks:
        s = {o: summary[f"{tn}|{o}"]["steps_to_target"] for o in optimizers if f"{tn}|{o}" in summary}
        finite = [v for v in s.values() if v is not None and math.isfinite(v)]
        if not finite:
            continue
        usable.append(tn)
        best = min(finite)
        for o in optimizers:
            v = s.get(o)
            ratios[o].append(v / best if v is not None and math.isfinite(v) else INF)
    for o in optimizers:
        prof[o] = [sum(r <= t for r in ratios[o]) / len(usable) if usable else 0.0 for t in taus]
    return prof


# ------------------------------------------------------------------------------------ comparisons
def compare_on_task(res: dict[str, Any], summary: dict[str, dict[str, Any]], task: str, challenger: str,
                    baseline: str) -> Comparison:
    """``challenger`` against ``baseline`` on ``task``, paired over the seeds both ran."""
    a, b = summary.get(f"{task}|{challenger}"), summary.get(f"{task}|{baseline}")
    higher = res["tasks"][task]["metric"] == "accuracy"
    if not a or not b or not a["per_seed"] or not b["per_seed"]:
        missing = challenger if not a or not a["per_seed"] else baseline
        why = "diverged at every lr" if (summary.get(f"{task}|{missing}") or {}).get("lr") is None else "no seeds"
        return Comparison(NOT_MEASURED, "accuracy" if higher else "log_ratio", None, None, None, 0, 0, 0,
                          note=f"{missing}: {why}")
    seeds = sorted(set(a["per_seed"]) & set(b["per_seed"]), key=int)
    return paired_comparison([a["per_seed"][s] for s in seeds], [b["per_seed"][s] for s in seeds], higher)


# ------------------------------------------------------------------------------------ claims
@dataclass(frozen=True)
class Claim:
    """A source paper's claim, judged where it applies.

    Attributes:
        claim: what the paper says, in one line.
        source: the seed and paper.
        challenger, baseline: registry names; the baseline is the paper's own comparison.
        scope: ``"matrix"`` (the rule differs from its baseline only on matrices: judged on
            tasks whose parameters are matrices) or ``"any"``.
        expect: ``"better"`` (the claim holds on a task when the challenger is better beyond
            the noise) or ``"not worse"`` (comparable: better or no detectable difference).
    """

    claim: str
    source: str
    challenger: str
    baseline: str
    scope: str
    expect: str


H_FAC = "seed 000 (H-Fac; Nguyen, Chen, Liu and Liu)"
CLAIMS: tuple[Claim, ...] = (
    Claim("H-Fac beats Adafactor without momentum, both in sublinear memory (section 5.1)", H_FAC,
          "hfac", "adafactor_m0", "matrix", "better"),
    Claim("H-Fac is competitive with Adafactor with momentum (section 5.1)", H_FAC,
          "hfac", "adafactor_m", "matrix", "not worse"),
    Claim("AdaDiag converges faster than Adam(W) (1.5-2x on LLaMA): a lower final metric at the same budget",
          "seed 001 (AdaDiag)", "adadiag", "adamw", "matrix", "better"),
    Claim("Grams reaches a lower loss than AdamW", "seed 003 (AMS/Grams)", "grams", "adamw", "any", "better"),
    Claim("Grams reaches a lower loss than C-AdamW", "seed 003 (AMS/Grams)", "grams", "cadamw", "any", "better"),
    Claim("Lion performs comparably to AdamW with half the optimizer state",
          "seed 004 (Lion-K) / Chen et al. 2023", "lion", "adamw", "any", "not worse"),
)


def in_scope(res: dict[str, Any], scope: str) -> list[str]:
    """The tasks of ``res`` in a claim's scope (``"matrix"``: tasks whose parameters are matrices)."""
    if scope == "any":
        return list(res["tasks"])
    return [tn for tn, td in res["tasks"].items() if td.get("matrix_params")]


def _meets(c: Comparison, expect: str) -> bool:
    return c.verdict == BETTER if expect == "better" else c.verdict in (BETTER, NO_DIFFERENCE)


def _not_measured(res: dict[str, Any], missing: list[str]) -> str:
    registered = set(list_optimizers())
    miss_reg = [m for m in missing if m not in registered]
    if miss_reg:
        return f"not measured ({', '.join(miss_reg)} not registered in this hamopt)"
    return f"not measured ({', '.join(missing)} not in this run; add --optimizers)"


def claims(res: dict[str, Any], summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each claim of :data:`CLAIMS` on the tasks in its scope (paired over seeds), and the direct
    check of Lion's constraint.

    Each row: ``claim``, ``source``, ``scope``, ``baseline``, ``tasks`` (in scope), ``seeds``,
    ``per_task`` (``{task: comparison}``), ``verdict`` and ``measured`` (one line of text).
    The verdict is ``holds`` when every measured task in scope meets the expectation,
    ``does not hold`` when none does, ``mixed (k/n tasks)`` otherwise.
    """
    rows: list[dict[str, Any]] = []
    opts = res["plan"]["optimizers"]
    for cl in CLAIMS:
        tasks = in_scope(res, cl.scope)
        row: dict[str, Any] = dict(claim=cl.claim, source=cl.source, scope=cl.scope, challenger=cl.challenger,
                                   baseline=cl.baseline, expect=cl.expect, tasks=tasks, seeds=res["plan"]["seeds"],
                                   per_task={})
        missing = [n for n in (cl.challenger, cl.baseline) if n not in opts]
        if missing:
            row.update(verdict=_not_measured(res, missing), measured="-")
            rows.append(row)
            continue
        if not tasks:
            row.update(verdict="not measured (no task in scope in this run)", measured="-")
            rows.append(row)
            continue
        comps = {tn: compare_on_task(res, summary, tn, cl.challenger, cl.baseline) for tn in tasks}
        row["per_task"] = {tn: c.to_json() for tn, c in comps.items()}
        measured = [c for c in comps.values() if c.verdict != NOT_MEASURED]
        k = sum(_meets(c, cl.expect) for c in measured)
        if not measured:
            verdict = "not measured"
        elif k == len(measured):
            verdict = f"holds ({k}/{len(measured)} tasks)"
        elif k == 0:
            verdict = f"does not hold (0/{len(measured)} tasks)"
        else:
            verdict = f"mixed ({k}/{len(measured)} tasks)"
        row["verdict"] = verdict
        row["measured"] = "; ".join(f"{tn}: {c.verdict} ({c.text()})" for tn, c in comps.items())
        rows.append(row)

    claim = ("Lion with weight decay wd enters ||x||_inf <= 1/wd at rate (1/(1+lr wd))^t and stays "
             "(Lion-K, Theorem 4.1)")
    checks = res.get("checks", {}).get("lion_box") or []
    base = dict(claim=claim, source="seed 004 (Lion-K)", scope="direct check", challenger="lion", baseline="-",
                expect="holds", tasks=[], seeds=1, per_task={})
    if not checks:
        rows.append({**base, "verdict": _not_measured(res, [n for n in ("lion",) if n not in opts] or ["lion"]),
                     "measured": "-"})
    else:
        parts = [f"{c['optimizer']} (wd={c['wd']}, lr={c['lr']}, {c['steps']} steps): from inside the box "
                 f"final ||x||_inf {c['inside_final_inf']:.6g} <= {c['bound']:.3g}; from outside final "
                 f"{c['outside_final_inf']:.6g}, worst excess over the (1/(1+lr wd))^t rate "
                 f"{c['outside_worst_excess']:.2g}" for c in checks]
        ok = all(c["holds"] for c in checks)
        rows.append({**base, "verdict": "holds (direct check)" if ok else "VIOLATED", "measured": "; ".join(parts)})
    return rows


# ------------------------------------------------------------------------------------ headline
def _score(s: dict[str, Any]) -> float:
    sign = 1 if s["metric"] == "accuracy" else -1
    return sign * s["val_mean"] if s.get("val_mean") is not None else -INF


def headline(res: dict[str, Any], summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task: the best optimizer (best mean final validation metric with no diverged seed)
    and every optimizer with no detectable difference from it (paired over seeds), with its
    state bytes and step time relative to AdamW on the same task (``None`` without AdamW)."""
    out = []
    opts = res["plan"]["optimizers"]
    for tn, td in res["tasks"].items():
        rows = [summary[f"{tn}|{o}"] for o in opts if f"{tn}|{o}" in summary]
        clean = [s for s in rows if s["val_mean"] is not None and s["diverged"] == 0 and s["errors"] == 0]
        if not clean:
            out.append(dict(task=tn, kind=td["kind"], best=None, within=[]))
            continue
        best = max(clean, key=_score)
        adamw = summary.get(f"{tn}|adamw")
        within = []
        for s in sorted(clean, key=_score, reverse=True):
            if s is best:
                verdict = "best"
            else:
                verdict = compare_on_task(res, summary, tn, s["optimizer"], best["optimizer"]).verdict
                if verdict != NO_DIFFERENCE:
                    continue
            mem = step = None
            if adamw and adamw.get("state_bytes") and s.get("state_bytes") is not None:
                mem = s["state_bytes"] / adamw["state_bytes"]
            if adamw and adamw.get("step_ms") and s.get("step_ms"):
                step = s["step_ms"] / adamw["step_ms"]
            within.append(dict(optimizer=s["optimizer"], val_mean=s["val_mean"], memory_vs_adamw=mem,
                               step_time_vs_adamw=step, bytes_per_param=s.get("bytes_per_param")))
        out.append(dict(task=tn, kind=td["kind"], metric=td["metric"], best=best["optimizer"], within=within))
    return out


def memory_bytes_per_param(name: str, shapes: Sequence[tuple[int, ...]]) -> float:
    """The registry formula's state bytes per parameter entry (float32) for a set of shapes."""
    info = get(name)
    n = sum(math.prod(s) for s in shapes)
    return sum(info.state_bytes_for(s) for s in shapes) / n if n else 0.0


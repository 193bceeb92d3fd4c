"""`hamopt bench` statistics: paired verdicts, claims judged in their scope, the headline summary,
the report's first section and the progress lines of a run without a terminal.

The expected intervals are recomputed here with NumPy and a hard-coded t quantile, not with
hamopt's code; the synthetic results are built by hand so each verdict is known in advance.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
import pytest

from hamopt.bench.analysis import claims, headline, in_scope, summarize
from hamopt.bench.stats import BETTER, NO_DIFFERENCE, NOT_MEASURED, WORSE, paired_comparison, t_quantile

T975_DF2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2)


def _ref_interval(d: np.ndarray) -> tuple[float, float, float]:
    half = T975_DF2 * d.std(ddof=1) / math.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


def test_t_quantile_table_and_tail() -> None:
    scipy_t = pytest.importorskip("scipy.stats").t
    for df in (*range(1, 41), 60, 120, 1000):
        assert t_quantile(df) == pytest.approx(float(scipy_t.ppf(0.975, df)), abs=2e-3 if df > 30 else 1e-5), df
    assert t_quantile(2) == pytest.approx(T975_DF2, abs=1e-5)
    assert t_quantile(1) == pytest.approx(12.7062, abs=1e-3)
    assert t_quantile(30) == pytest.approx(2.0423, abs=1e-3)
    assert t_quantile(40) == pytest.approx(2.0211, abs=2e-3)  # scipy: 2.02108
    assert t_quantile(1000) == pytest.approx(1.9623, abs=2e-3)
    with pytest.raises(ValueError, match="Invalid df: 0"):
        t_quantile(0)


def test_better_loss_ratio_with_its_interval() -> None:
    base = [10.0, 20.0, 15.0]
    chal = [5.2, 9.7, 7.4]  # about half, consistently
    c = paired_comparison(chal, base, higher_is_better=False)
    assert c.verdict == BETTER and c.scale == "log_ratio" and c.pairs == 3
    mean, lo, hi = _ref_interval(np.log(np.array(base) / np.array(chal)))
    assert c.effect == pytest.approx(math.exp(-mean), rel=1e-9)
    assert (c.low, c.high) == (pytest.approx(math.exp(-hi), rel=1e-6), pytest.approx(math.exp(-lo), rel=1e-6))
    assert c.high < 1.0 and "loss ratio" in c.text()


def test_worse_and_no_detectable_difference() -> None:
    base = [10.0, 20.0, 15.0]
    assert paired_comparison([13.0, 25.0, 19.5], base, False).verdict == WORSE
    noisy = paired_comparison([6.0, 30.0, 14.0], base, False)  # one much better, one much worse
    assert noisy.verdict == NO_DIFFERENCE
    assert noisy.low < 1.0 < noisy.high
    # a consistent but negligible gain (0.1% of the loss) is no difference either
    tiny = paired_comparison([x * 0.999 for x in base], base, False)
    assert tiny.verdict == NO_DIFFERENCE and tiny.high < 1.0
    tiny = paired_comparison([x * 1.001 for x in base], base, False)
    assert tiny.verdict == NO_DIFFERENCE and tiny.low > 1.0


def test_accuracy_scale_in_percentage_points() -> None:
    base = [0.90, 0.92, 0.91]
    chal = [0.93, 0.95, 0.93]
    c = paired_comparison(chal, base, higher_is_better=True)
    assert c.scale == "accuracy" and c.verdict == BETTER
    mean, lo, hi = _ref_interval(100 * (np.array(chal) - np.array(base)))
    assert (c.effect, c.low, c.high) == (pytest.approx(mean), pytest.approx(lo, rel=1e-5), pytest.approx(hi, rel=1e-5))
    assert paired_comparison(base, chal, True).verdict == WORSE


def test_negative_losses_use_differences() -> None:
    base = [-0.5, -0.6, -0.55]
    chal = [-0.9, -0.95, -0.92]
    c = paired_comparison(chal, base, False)
    assert c.scale == "difference" and c.verdict == BETTER and c.effect == pytest.approx(-0.37333, rel=1e-4)


def test_divergence_decides_and_too_few_seeds_is_not_measured() -> None:
    base = [10.0, 20.0, 15.0]
    c = paired_comparison([1.0, None, 2.0], base, False)  # better where it finished, but diverged once
    assert c.verdict == WORSE and c.chal_failed == 1 and "diverged" in c.text()
    assert paired_comparison([5.0, 9.0, 7.0], [10.0, float("nan"), 15.0], False).verdict == BETTER
    assert paired_comparison([5.0], [10.0], False).verdict == NOT_MEASURED
    with pytest.raises(ValueError, match="one value per seed"):
        paired_comparison([1.0, 2.0], [1.0], False)


# ---------------------------------------------------------------------------- synthetic results
def _run(task: str, opt: str, seed: int, val: float | None, lr: float = 0.01, state: int = 800) -> dict[str, Any]:
    ok = val is not None
    return dict(task=task, optimizer=opt, lr=lr, seed=seed, status="ok" if ok else "diverged", error=None,
                steps_done=10, steps_to_target=10 if ok and val < 5 else None,
                curve=dict(step=[10], val=[val if ok else float("nan")], train=[1.0], time=[0.5]),
                final_val={"loss": val} if ok else None, final_test={"loss": val} if ok else None,
                wall_s=1.0, step_ms=1.0 if opt != "hfac" else 2.0, state_bytes=state, n_params=100)


def _results(values: dict[tuple[str, str], list[float | None]], matrix: dict[str, bool],
             states: dict[str, int] | None = None) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    opts = sorted({o for _, o in values})
    for (tn, o), vals in values.items():
        st = (states or {}).get(o, 800)
        runs[f"{tn}|{o}|0"] = _run(tn, o, 0, vals[0], state=st)
        for s, v in enumerate(vals, start=1):
            runs[f"{tn}|{o}|{s}"] = _run(tn, o, s, v, state=st)
    tasks = {tn: dict(name=tn, kind="quadratic" if not m else "vision", description=tn, data="-", model="-",
                      steps=10, eval_every=10, batch=1, metric="loss", target=5.0, matrix_params=m)
             for tn, m in matrix.items()}
    return dict(plan=dict(optimizers=opts, seeds=3, grid=1, suite="test"), tasks=tasks, runs=runs,
                selected={f"{tn}|{o}": 0.01 for tn, o in values}, machine=dict(python="3", torch="2", cpu_count=2,
                                                                               processor="x"),
                started="-", complete=True)


def _hfac_case() -> dict[str, Any]:
    # H-Fac beats adafactor_m0 on both matrix tasks and loses badly on the vector task
    v: dict[tuple[str, str], list[float | None]] = {
        ("mat_a", "hfac"): [5.0, 6.0, 5.5], ("mat_a", "adafactor_m0"): [10.0, 12.0, 11.0],
        ("mat_b", "hfac"): [2.0, 2.2, 2.1], ("mat_b", "adafactor_m0"): [4.0, 4.1, 4.4],
        ("vec", "hfac"): [50.0, 60.0, 55.0], ("vec", "adafactor_m0"): [1.0, 1.2, 1.1],
    }
    for tn in ("mat_a", "mat_b", "vec"):  # adamw, about as good as the baseline everywhere
        v[(tn, "adamw")] = [x * 1.0 for x in v[(tn, "adafactor_m0")]]  # type: ignore[misc]
    return _results(v, {"mat_a": True, "mat_b": True, "vec": False},
                    states={"adamw": 800, "hfac": 40, "adafactor_m0": 20})


def test_scope_filter_judges_matrix_claims_on_matrix_tasks_only() -> None:
    res = _hfac_case()
    assert in_scope(res, "matrix") == ["mat_a", "mat_b"] and in_scope(res, "any") == ["mat_a", "mat_b", "vec"]
    rows = {(c["challenger"], c["baseline"]): c for c in claims(res, summarize(res))}
    h = rows[("hfac", "adafactor_m0")]
    assert h["scope"] == "matrix" and h["tasks"] == ["mat_a", "mat_b"]
    assert set(h["per_task"]) == {"mat_a", "mat_b"}
    assert all(d["verdict"] == BETTER for d in h["per_task"].values())
    assert h["verdict"] == "holds (2/2 tasks)"
    # the same data judged on every task (as a scope-less claim would) does not hold on the vector task
    s = summarize(res)
    from hamopt.bench.analysis import compare_on_task

    assert compare_on_task(res, s, "vec", "hfac", "adafactor_m0").verdict == WORSE
    # claims whose optimizers did not run say so
    assert rows[("grams", "adamw")]["verdict"].startswith("not measured (grams")


def test_headline_keeps_the_optimizers_within_noise_of_the_best() -> None:
    res = _results({("t", "adamw"): [10.0, 11.0, 12.0], ("t", "hfac"): [6.0, 14.0, 9.0],
                    ("t", "lion"): [3.0, 3.3, 3.6], ("t", "sgd"): [3.1, 3.2, 3.8], ("t", "adam"): [2.0, None, 2.0]},
                   {"t": True}, states={"adamw": 800, "hfac": 40, "lion": 400, "sgd": 0, "adam": 800})
    (h,) = headline(res, summarize(res))
    assert h["best"] == "lion"  # adam's mean is lower but it diverged on a seed
    assert [w["optimizer"] for w in h["within"]] == ["lion", "sgd"]  # adamw and hfac are worse beyond noise
    assert h["within"][0]["memory_vs_adamw"] == pytest.approx(0.5)
    assert h["within"][1]["bytes_per_param"] == 0.0


def test_report_leads_with_the_summary(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from hamopt.bench.report import write_report

    res = _hfac_case()
    md = write_report(res, tmp_path).read_text()
    order = [md.index(h) for h in ("# hamopt bench report", "## Summary", "## Claims from the source papers",
                                   "## Statistical method", "## Results per task")]
    assert order == sorted(order)
    summary = md[md.index("## Summary"):md.index("## Claims from")]
    assert "| vision | mat_a (loss) | hfac 5.5 (0.05x mem, 2x step) |" in summary
    assert "**holds (2/2 tasks)**: H-Fac beats Adafactor without momentum" in summary
    assert "Learning-rate sensitivity on mat_a" in md and "reached / diverged" in md
    table = md[md.index("## Claims from"):md.index("## Statistical method")]
    assert "mat_a: better (loss ratio" in table and "vec:" not in table.split("H-Fac is competitive")[0]


# ---------------------------------------------------------------------------- progress and layering
def test_progress_without_a_terminal_is_one_line_per_run() -> None:
    from hamopt.bench.runner import _progress

    buf = io.StringIO()
    bar = _progress(3, True, tty=False, stream=buf)
    bar.finished(_run("t", "adamw", 1, 2.5))
    bar.grow(1)
    bar.finished(_run("t", "hfac", 2, None))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in buf.getvalue()
    assert lines[0].startswith("hamopt bench [1/3]") and "t adamw lr=0.01 seed=1: ok, val loss 2.5" in lines[0]
    assert lines[1].startswith("hamopt bench [2/4]") and lines[1].endswith("diverged (1.0 s)")
    quiet = io.StringIO()
    _progress(3, False, tty=False, stream=quiet).finished(_run("t", "adamw", 1, 2.5))
    assert quiet.getvalue() == ""


def test_cli_progress_in_a_log(tmp_path, capsys) -> None:
    from hamopt.cli import main

    out = tmp_path / "o"  # pytest's captured stderr is not a terminal
    assert main(["bench", "--tasks", "saddle", "--optimizers", "adamw", "--grid", "1", "--seeds", "1", "--jobs", "1",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    run_lines = [ln for ln in err.splitlines() if ln.startswith("hamopt bench [")]
    assert len(run_lines) == len(json.loads((out / "results.json").read_text())["runs"]) >= 4


#: The bench modules, lowest first: none may import a module later in this list (lazily either).
LAYERS = ["common", "stats", "data", "models", "shapes", "memory", "speed", "tasks", "analysis", "report", "runner"]


def test_bench_modules_import_only_downwards() -> None:
    import ast
    from pathlib import Path

    import hamopt.bench

    root = Path(hamopt.bench.__file__).parent
    assert {p.stem for p in root.glob("*.py")} - {"__init__"} == set(LAYERS)
    for i, name in enumerate(LAYERS):
        tree = ast.parse((root / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [a.name for a in node.names]
                for t in targets:
                    mod = t.split(".")[0]
                    assert mod not in LAYERS[i:], f"bench/{name}.py imports .{mod}, which is not below it"

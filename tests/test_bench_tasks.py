"""`hamopt bench` tasks on tiny budgets, the data splits, divergence handling, the Lion check."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from hamopt.bench import data as D
from hamopt.bench.runner import lion_box_check, lr_grid, run_one, task_grid
from hamopt.bench.tasks import TASKS, beale, quadratic_hessian, rosenbrock, saddle

#: charlm_large is charlm's builder at a larger size: it runs once (its evaluations take
#: seconds), and charlm checks the rest (seeding, the double backward).
LARGE = {"charlm_large"}


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_runs_on_a_tiny_budget(name):
    steps = 2 if name in LARGE else 4
    task = dataclasses.replace(TASKS[name], steps=steps, eval_every=2)
    rec = run_one(task, "adamw", 1e-3, seed=1)
    assert rec["status"] == "ok", rec["error"]
    assert rec["curve"]["step"] == list(range(2, steps + 1, 2))
    assert all(math.isfinite(v) for v in rec["curve"]["val"] + rec["curve"]["train"])
    assert task.metric in rec["final_val"] and task.metric in rec["final_test"]
    assert rec["state_bytes"] > 0 and rec["step_ms"] > 0
    assert rec["n_params"] == sum(p.numel() for p in task.build(1, "cpu").params)
    times = rec["curve"]["time"]
    assert len(times) == len(rec["curve"]["step"]) and all(b > a for a, b in zip([0.0, *times], times))
    if name in LARGE:
        return
    # same seed, same numbers (initialisation, batches and noise are seeded)
    again = run_one(task, "adamw", 1e-3, seed=1)
    assert again["curve"]["val"] == rec["curve"]["val"]


@pytest.mark.parametrize("name", [n for n in TASKS if n not in LARGE])
def test_every_task_supports_a_second_order_step(name):
    # Sophia's Hutchinson estimate needs backward(create_graph=True) through the whole model
    # (the character LM's attention once picked a CPU kernel without a double backward).
    task = dataclasses.replace(TASKS[name], steps=2, eval_every=2)
    rec = run_one(task, "sophia", 1e-4, seed=1)
    assert rec["status"] == "ok", rec["error"]


def test_toy_functions_have_their_known_minima():
    assert float(rosenbrock(torch.tensor([1.0, 1.0]))) == 0.0
    assert float(beale(torch.tensor([3.0, 0.5]))) == 0.0
    assert float(saddle(torch.tensor([0.0, math.sqrt(2.0)]))) == pytest.approx(-1.0)
    assert float(rosenbrock(torch.tensor([-1.2, 1.0]))) == pytest.approx(24.2)


def test_noisy_quadratic_spectrum():
    ev = torch.linalg.eigvalsh(quadratic_hessian())
    assert ev.shape == (100,)
    assert ((ev > 0) & (ev < 1)).sum() == 90
    assert ((ev > 30) & (ev < 60)).sum() == 10
    assert torch.equal(quadratic_hessian(), quadratic_hessian())  # fixed seed


def test_data_splits_are_fixed_and_disjoint_sizes():
    d = D.digits()
    assert len(d.train[1]) + len(d.val[1]) + len(d.test[1]) == 1797
    assert d.train[0].shape[1:] == (1, 8, 8) and float(d.train[0].max()) <= 1.0
    m = D.mnist5k()
    assert len(m.train[1]) + len(m.val[1]) + len(m.test[1]) == 5000
    assert m.train[0].shape[1:] == (1, 28, 28)
    assert sorted(set(m.train[1].tolist())) == list(range(10))
    t = D.stdlib_text()
    n_train, n_val, n_test = t.files
    assert n_val >= 1 and n_test >= 1 and n_train > n_val
    assert len(t.val) > 1000 and int(t.train.max()) < 256


def test_user_text_and_images(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(5):
        (folder / f"f{i}.txt").write_text(f"file {i}: " + "the quick brown fox jumps over the lazy dog. " * 20)
    t = D.load_text(folder)
    assert t.files == (3, 1, 1)
    with pytest.raises(D.DataError, match="no such file"):
        D.load_text(tmp_path / "missing")
    x = torch.rand(40, 8, 8).numpy()
    y = (torch.arange(40) % 3).numpy()
    import numpy as np

    np.savez(tmp_path / "img.npz", x=x, y=y)
    im = D.load_images(tmp_path / "img.npz")
    assert im.train[0].shape[1:] == (1, 8, 8) and im.classes == 3
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(D.DataError):
        D.load_images(tmp_path / "bad.npz")


def test_divergence_is_recorded_not_raised():
    rec = run_one(TASKS["rosenbrock"], "momentum", 1.0, seed=0)
    assert rec["status"] == "diverged"
    assert rec["steps_done"] < TASKS["rosenbrock"].steps
    assert "final_val" not in rec


def test_lr_grid():
    assert lr_grid(1e-3, 3) == [0.000316, 0.001, 0.00316]
    assert lr_grid(1e-3, 1) == [0.001]
    assert task_grid(TASKS["rosenbrock"], 1e-3, 3) == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]


def test_lion_box_check_holds_for_lion_and_fails_without_the_constraint():
    rows = lion_box_check(["lion"])
    assert rows and rows[0]["holds"]
    assert rows[0]["inside_final_inf"] <= 0.5 + 1e-12
    # AdamW with the same decoupled weight decay has no such box: the check must say so
    bad = lion_box_check(["adamw"], wd=2.0, lr=0.01)
    assert not bad[0]["holds"]


def test_matrix_params_flag_matches_the_built_parameters():
    for name, task in TASKS.items():
        params = task.build(1, "cpu").params
        frac = sum(p.numel() for p in params if p.dim() >= 2) / sum(p.numel() for p in params)
        assert task.matrix_params == (frac >= 0.9), (name, frac)


def test_matrix_regression_validation_is_the_expected_excess_loss():
    # E[train loss] = 0.5 tr(D^T H D) + 0.5 * outputs * noise^2 for D = W - W*: estimate the
    # left side by Monte Carlo at a random W and compare with the exact excess the task reports.
    task = TASKS["matrix_regression"]
    problem = task.build(3, "cpu")
    (w,) = problem.params
    assert w.shape == (100, 10) and task.matrix_params
    with torch.no_grad():
        w.copy_(torch.randn(100, 10, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    n = 4000
    with torch.no_grad():
        mc = sum(float(problem.train_loss(k)) for k in range(n)) / n
    excess = problem.evaluate("val")["loss"]
    assert excess > 100  # far from the optimum: not saturated at a noise floor
    assert mc - 0.5 * 10 * 1.0**2 == pytest.approx(excess, rel=0.03)


def test_charlm_large_is_a_less_toy_scale():
    task = TASKS["charlm_large"]
    n = sum(p.numel() for p in task.build(1, "cpu").params)
    assert 1_000_000 <= n <= 3_000_000 and task.steps >= 1000 and task.matrix_params
    from hamopt.bench.runner import SUITES

    assert "charlm_large" in SUITES["standard"].tasks and "charlm_large" not in SUITES["quick"].tasks


def test_quick_suite_judges_every_claim_on_two_tasks_in_scope():
    from hamopt.bench.analysis import CLAIMS, in_scope
    from hamopt.bench.runner import SUITES

    quick = SUITES["quick"]
    res = {"tasks": {n: TASKS[n].describe() for n in quick.tasks}}
    assert quick.seeds >= 3
    for claim in CLAIMS:
        assert claim.challenger in quick.optimizers and claim.baseline in quick.optimizers, claim
        assert len(in_scope(res, claim.scope)) >= 2, claim
    hfac = [c for c in CLAIMS if c.challenger == "hfac"]
    assert {c.baseline for c in hfac} == {"adafactor_m0", "adafactor_m"}
    assert all(c.scope == "matrix" for c in hfac)


def test_lionk_is_benchmarked_with_a_kernel_that_is_not_lion():
    from hamopt.bench.runner import SUITE_OVERRIDES

    kw = SUITE_OVERRIDES["lionk"]
    assert kw.get("kernel", "l1") != "l1"
    task = dataclasses.replace(TASKS["noisy_quadratic"], steps=20, eval_every=20)
    a = run_one(task, "lionk", 1e-2, seed=1, overrides=kw)
    b = run_one(task, "lion", 1e-2, seed=1)
    plain = run_one(task, "lionk", 1e-2, seed=1)
    assert plain["curve"]["val"] == b["curve"]["val"]  # the default kernel is Lion...
    assert a["curve"]["val"] != b["curve"]["val"]  # ...the benchmarked one is not


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when no GPU is present")
def test_device_cuda_without_a_gpu_is_a_one_line_error(tmp_path, capsys):
    from hamopt.cli import main

    assert main(["bench", "--tasks", "saddle", "--device", "cuda", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda" in err[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_runs_on_cuda(name):
    task = dataclasses.replace(TASKS[name], steps=2, eval_every=2)
    rec = run_one(task, "adamw", 1e-3, seed=1, device="cuda")
    assert rec["status"] == "ok", rec["error"]
    cpu = run_one(task, "adamw", 1e-3, seed=1)
    # same seed, same problem: the first evaluation agrees up to float32 kernels' rounding
    assert rec["curve"]["val"][0] == pytest.approx(cpu["curve"]["val"][0], rel=1e-2, abs=1e-3)

"""`hamopt bench`: the report writer, --resume, compare(), the user-data hooks and the errors."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from hamopt.bench import compare
from hamopt.bench.report import write_report
from hamopt.bench.runner import GRID_EXTENSION
from hamopt.cli import main

# saddle: 500 cheap steps; grid 1 + the toy tasks' 2 extra points = 3 tuning runs per optimizer
BASE = ["bench", "--tasks", "saddle", "--optimizers", "adamw,momentum", "--grid", "1", "--jobs", "1", "--quiet"]


def _results(out):
    return json.loads((out / "results.json").read_text())


def _check_run_counts(res, pairs, grid, seeds):
    """Per (task, optimizer): ``grid`` tuning runs plus at most GRID_EXTENSION past an edge
    (each extension only where the previous best sat at that edge), then ``seeds`` final runs."""
    runs = list(res["runs"].values())
    for task, opt in pairs:
        mine = [r for r in runs if r["task"] == task and r["optimizer"] == opt]
        tune = sorted(r["lr"] for r in mine if r["seed"] == 0)
        assert grid <= len(tune) <= grid + GRID_EXTENSION, (task, opt, tune)
        if len(tune) > grid:  # an extension happened: the selection is at or next to the old edge
            assert res["selected"][f"{task}|{opt}"] in tune
        assert sum(r["seed"] > 0 for r in mine) == seeds


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "report"
    assert main([*BASE, "--seeds", "1", "--out", str(out)]) == 0
    return out


def test_report_markdown_json_and_embedded_pngs(finished):
    res = _results(finished)
    assert res["complete"] is True
    opts = res["plan"]["optimizers"]
    assert len(opts) == 2
    _check_run_counts(res, [(t, o) for t in res["tasks"] for o in opts], grid=3, seeds=1)
    md = (finished / "report.md").read_text()
    assert md.startswith("# hamopt bench report")
    assert "INCOMPLETE" not in md
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    assert {"curves_saddle.png", "steps_to_target.png", "profile.png", "memory.png"} <= set(images)
    for name in images:
        blob = (finished / name).read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 1000
    for section in ("## Protocol", "## Tasks", "## Performance profile", "## Claims from the source papers"):
        assert section in md
    # every number is in the JSON: the summary row matches the runs it summarises
    s = res["summary"]["saddle|adamw"]
    seeds = [r for r in res["runs"].values() if r["optimizer"] == "adamw" and r["seed"] == 1]
    assert len(seeds) == 1 and s["lr"] == seeds[0]["lr"]
    assert s["val_mean"] == seeds[0]["final_val"]["loss"]
    tune = [r for r in res["runs"].values() if r["optimizer"] == "adamw" and r["seed"] == 0]
    best = min(tune, key=lambda r: r["final_val"]["loss"] if r["status"] == "ok" else float("inf"))
    assert s["lr"] == best["lr"]  # selected on the tuning runs' validation loss
    assert not list(finished.glob(".*tmp*"))  # no temporary files left behind


def test_resume_does_not_redo_finished_runs(finished, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    res = _results(finished)
    # pretend the run was interrupted: drop two runs, mark incomplete
    keys = sorted(res["runs"])
    dropped = [k for k in keys if k.startswith("saddle|momentum")][:2]
    for k in dropped:
        del res["runs"][k]
    res["complete"] = False
    (out / "results.json").write_text(json.dumps(res))
    assert main([*BASE, "--seeds", "1", "--out", str(out), "--resume"]) == 0
    again = _results(out)
    assert again["complete"] is True
    assert again["new_runs"] == 2 and again["reused_runs"] == len(keys) - 2
    assert sorted(again["runs"]) == keys
    # a finished run is kept as it was
    k0 = next(k for k in keys if k not in dropped)
    assert again["runs"][k0] == res["runs"][k0]
    # more seeds later: only the new seed runs are done
    assert main([*BASE, "--seeds", "2", "--out", str(out), "--resume"]) == 0
    assert _results(out)["new_runs"] == 2


def test_incomplete_report_is_marked(finished, tmp_path):
    res = _results(finished)
    res["complete"] = False
    path = write_report(res, tmp_path)
    assert path.read_text().startswith("> **INCOMPLETE REPORT**")


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--tasks", "nope"], "unknown task 'nope'"),
        (["--optimizers", "adamx"], "Unknown optimizer 'adamx'"),
        (["--seeds", "0"], "--seeds"),
    ],
)
def test_bad_input_one_line_exit_2(extra, fragment, tmp_path, capsys):
    argv = ["bench", "--tasks", "saddle", "--optimizers", "adamw", "--out", str(tmp_path / "o"), "--quiet", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


def test_unwritable_output_and_corrupt_resume(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([*BASE, "--out", str(blocker / "sub")]) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err
    out = tmp_path / "c"
    out.mkdir()
    (out / "results.json").write_text("{not json")
    assert main([*BASE, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt results file" in err[0]
    (out / "results.json").write_text(json.dumps({"format": "something else"}))
    assert main([*BASE, "--out", str(out), "--resume"]) == 2
    assert "not a hamopt bench results file" in capsys.readouterr().err
    assert main([*BASE, "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "no results file" in capsys.readouterr().err


def test_python_dash_m_error_in_a_subprocess(tmp_path):
    p = subprocess.run([sys.executable, "-m", "hamopt", "bench", "--tasks", "nope", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hamopt: error: unknown task") and "Traceback" not in p.stderr


def test_images_hook(tmp_path):
    g = np.random.default_rng(0)
    y = np.arange(60) % 3
    x = g.normal(size=(60, 8, 8)).astype(np.float32) + y[:, None, None]  # learnable
    np.savez(tmp_path / "imgs.npz", x=x, y=y)
    out = tmp_path / "rep"
    rc = main(["bench", "--images", str(tmp_path / "imgs.npz"), "--steps", "6", "--optimizers", "adamw",
               "--grid", "1", "--seeds", "1", "--jobs", "1", "--quiet", "--out", str(out)])
    assert rc == 0
    res = _results(out)
    assert list(res["tasks"]) == ["images"]
    _check_run_counts(res, [("images", "adamw")], grid=1, seeds=1)
    # A one-point grid is at its own edge, so it must have grown by half-decade steps.
    tune = sorted(r["lr"] for r in res["runs"].values() if r["seed"] == 0)
    assert len(tune) >= 2
    for a, b in itertools.pairwise(tune):
        assert b / a == pytest.approx(10**0.5, rel=0.01)
    assert "### images" in (out / "report.md").read_text()


def test_compare_on_a_user_model(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] > 0).long()
    res = compare(lambda: torch.nn.Linear(5, 2), torch.nn.functional.cross_entropy, (x, y),
                  optimizers=["adamw", "sgd"], budget=30, seeds=1, grid=1, target=0.8, metric="accuracy",
                  out=tmp_path / "cmp", progress=False)
    assert res["complete"]
    _check_run_counts(res, [("custom", "adamw"), ("custom", "sgd")], grid=1, seeds=1)
    assert set(res["summary"]) == {"custom|adamw", "custom|sgd"}
    assert (tmp_path / "cmp" / "report.md").is_file()
    with pytest.raises(ValueError, match="Unknown optimizer"):
        compare(lambda: torch.nn.Linear(5, 2), torch.nn.functional.cross_entropy, (x, y), optimizers=["nope"])

"""``hamopt trajectories``: the lecture's and the papers' figures on small settings, diverging
paths drawn up to the exit, and one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hamopt.cli import main
from hamopt.theory.objectives import SURFACES
from hamopt.theory.trajectories import best_path, color_of, run_path


def test_trajectories_write_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "traj"
    code = main(["trajectories", "--optimizers", "sgd,adam", "lion", "--steps", "12", "--paper-steps", "10",
                 "--lrs", "0.01", "0.1", "--energy", "--out", str(out)])
    assert code == 0
    names = sorted(p.name for p in out.glob("*.png"))
    want = [f"trajectories-{s}.png" for s in ("rosenbrock", "beale", "saddle")]
    want += [f"trajectories-energy-{s}.png" for s in ("rosenbrock", "beale", "saddle")]
    want += ["trajectories-grams-figure1.png", "trajectories-lionk-figure1.png", "trajectories-lionk-figure5.png"]
    assert names == sorted(want)
    assert "9 figures" in capsys.readouterr().out


def test_a_diverging_path_stops_at_the_plot_edge() -> None:
    s = SURFACES["rosenbrock"]
    p = run_path("sgd", s, lr=1.0, steps=50)
    assert p.left_at is not None and p.left_at < 50
    assert len(p.losses) == p.left_at  # losses only while inside
    assert all(math.isfinite(v) for xy in p.xs for v in xy)
    # a path that leaves is never the best of a grid that also has one that stays
    best = best_path("sgd", s, steps=30, grid=(1.0, 1e-4))
    assert best.lr == 1e-4 and best.left_at is None


def test_best_lr_is_the_lowest_final_loss() -> None:
    s = SURFACES["beale"]
    grid = (1e-3, 1e-2)
    runs = [run_path("adam", s, lr, 40) for lr in grid]
    best = best_path("adam", s, 40, grid)
    assert best.end_loss == min(r.end_loss for r in runs)
    assert color_of("adam") == color_of("adam", ["adam", "sgd"])  # one colour per optimizer everywhere


@pytest.mark.parametrize(("argv", "needle"), [
    (["trajectories", "--optimizers", "adamm"], "Unknown optimizer 'adamm'"),
    (["trajectories", "--lrs", "-1"], "--lrs must be positive"),
])
def test_trajectories_user_mistakes(argv: list[str], needle: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_trajectories_unwritable_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["trajectories", "--out", str(blocker / "x")]) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err

"""``hamopt theory``: verdict lines, JSON records, PNG figures, exit statuses 0, 1 and 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hamopt.cli import main
from hamopt.theory import claims

SMALL = ["--steps", "20", "--live-steps", "10", "--probe", "1", "5"]


def test_theory_json_and_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figs"
    code = main(["theory", "--families", "heavy_ball,adafactor_m", "ams", "--objectives", "quadratic", "mlp",
                 "--out", str(out), "--json", *SMALL])
    assert code == 0
    recs = json.loads(capsys.readouterr().out)
    assert {r["family"] for r in recs} == {"heavy_ball", "adafactor_m", "ams"}
    for r in recs:
        assert {"family", "claim", "objective", "verdict", "margin", "figure"} <= set(r)
        assert r["verdict"] in ("holds", "conditional", "fails")
        assert Path(r["figure"]).is_file() and r["figure"].endswith(".png")
    assert {r["verdict"] for r in recs if r["family"] == "adafactor_m"} == {"conditional"}
    assert {r["objective"] for r in recs if r["family"] == "heavy_ball"} >= {"quadratic", "mlp", "adversarial states"}
    assert sorted(p.name for p in out.glob("*.png")) == ["theory-adafactor_m.png", "theory-ams.png",
                                                         "theory-heavy_ball.png"]


def test_theory_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["theory", "--families", "lionk", "--objectives", "quadratic", "--no-figures", *SMALL,
                 "--out", str(tmp_path)])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # 5 kernels x (energy on quadratic, adversarial states, constraint on quadratic)
    assert len(lines) == 15 + 1
    assert all(line.startswith("lionk ") and " holds " in line and "margin" in line for line in lines[:-1])
    assert lines[-1].startswith("15 checks: 15 hold")


def test_a_failing_claim_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    # a deliberately wrong family: H-Fac's energy with the constants n/2, m/2
    monkeypatch.setitem(claims.FAMILIES, "hfac_n2",
                        ("H-Fac with n/2", lambda s: claims.family_hfac(s, energy_scale=2.0)))
    code = main(["theory", "--families", "hfac_n2", "--objectives", "quadratic", "--steps", "10",
                 "--probe", "4", "60", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert " fails " in out and "adversarial states" in out
    assert (tmp_path / "theory-hfac.png").is_file()


@pytest.mark.parametrize(("argv", "needle"), [
    (["theory", "--families", "nope"], "unknown family 'nope'"),
    (["theory", "--objectives", "sphere"], "unknown objective 'sphere'"),
    (["theory", "--families", "lionk_discrete", "--objectives", "mlp"], "does not support objective 'mlp'"),
    (["theory", "--steps", "0"], "--steps must be at least 1"),
])
def test_theory_user_mistakes(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_theory_unwritable_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["theory", "--families", "heavy_ball", "--out", str(blocker / "sub"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "cannot write to the output folder" in err and len(err.strip().splitlines()) == 1

"""The command line tool: listing, help, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import hamopt
from hamopt.cli import main


def test_list_shows_every_optimizer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in hamopt.list_optimizers():
        assert f"\n{name} " in "\n" + out
    assert "paper:" in out and "defaults:" in out


def test_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json", "adamw", "sgd"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["adamw", "sgd"]
    assert rows[0]["memory_per_mxn"] == "2mn"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["list", "adamm"], "Unknown optimizer 'adamm'; did you mean 'adam'"),
        (["list", "--family", "nope"], "unknown family 'nope'"),
        (["frobnicate"], "invalid choice"),
        (["list", "--bogus"], "unrecognized arguments"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(argv: list[str], needle: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_python_dash_m_and_help() -> None:
    r = subprocess.run([sys.executable, "-m", "hamopt", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "list" in r.stdout
    r = subprocess.run([sys.executable, "-m", "hamopt", "list", "nosuch"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("hamopt: error: Unknown optimizer 'nosuch'")
    assert "Traceback" not in r.stderr

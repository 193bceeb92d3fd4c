"""The distribution: ``python -m build`` makes a wheel and an sdist with the right contents.

The full check (the wheel installed into a fresh virtual environment with the CPU torch,
running ``hamopt list`` and a quickstart) is ``scripts/check_wheel.sh``; this test builds the
two archives (no network: ``--no-isolation``) and reads them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import hamopt

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("build", reason="pip install 'hamopt[dev]'")


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def test_one_version_in_one_place() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    project = pyproject.split("\n[project]\n", 1)[1].split("\n[", 1)[0]  # the [project] table
    assert not re.search(r"^version\s*=", project, re.M) and 'dynamic = ["version"]' in project
    assert 'attr = "hamopt._version.__version__"' in pyproject
    defs = [p.relative_to(ROOT).as_posix() for p in (ROOT / "src").rglob("*.py")
            if re.search(r"^__version__\s*=", p.read_text(), re.M)]
    assert defs == ["src/hamopt/_version.py"]
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", hamopt.__version__)


def test_wheel_contents_and_metadata(dist: Path) -> None:
    (wheel,) = dist.glob("hamopt-*.whl")
    assert wheel.name == f"hamopt-{hamopt.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"hamopt-{hamopt.__version__}.dist-info"
        meta = Parser().parsestr(z.read(f"{info}/METADATA").decode())
        entry = z.read(f"{info}/entry_points.txt").decode()
    # every module of the source tree, the typing marker, nothing else at top level
    sources = {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "hamopt").rglob("*.py")}
    assert sources <= names, sorted(sources - names)
    assert "hamopt/py.typed" in names
    assert {n.split("/")[0] for n in names} == {"hamopt", info}
    assert meta["Name"] == "hamopt" and meta["Version"] == hamopt.__version__
    requires = meta.get_all("Requires-Dist")
    assert any(r.startswith("torch>=") for r in requires) and any(r.startswith("numpy") for r in requires)
    assert {"bench", "integrations", "dev"} <= set(meta.get_all("Provides-Extra"))
    assert any(r.startswith("transformers") and 'extra == "integrations"' in r for r in requires)
    assert re.search(r"^hamopt\s*=\s*hamopt\.cli:main$", entry, re.M)


def test_sdist_contents(dist: Path) -> None:
    (sdist,) = dist.glob("hamopt-*.tar.gz")
    top = f"hamopt-{hamopt.__version__}"
    with tarfile.open(sdist) as t:
        names = set(t.getnames())
        pkg_info = t.extractfile(f"{top}/PKG-INFO").read().decode()  # type: ignore[union-attr]
    for f in ("pyproject.toml", "README.md", "src/hamopt/py.typed", "src/hamopt/_version.py"):
        assert f"{top}/{f}" in names, f
    assert f"\nVersion: {hamopt.__version__}\n" in pkg_info

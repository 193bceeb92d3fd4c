"""Every Python example in README.md and in docs/*.md runs as written.

Each ```python block runs alone, in a fresh namespace, with a temporary folder as the working
directory (examples that write files write them there). Snippets that are not meant to run
are fenced as ```text or ```bash. The README's optimizer table is the output of
``scripts/optimizer_table.py`` (checked here too), and every relative link in the docs points
at a file that exists.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from hamopt import registry

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

#: pages that docs/index.md lists but that other work in progress writes
def _blocks() -> list[tuple[Path, int, str]]:
    out = []
    for page in PAGES:
        for i, m in enumerate(FENCE.finditer(page.read_text(encoding="utf-8"))):
            out.append((page, i, m.group(1)))
    return out


BLOCKS = _blocks()


def _id(page: Path, i: int) -> str:
    return f"{page.relative_to(ROOT).as_posix()}:block{i}"


def test_docs_have_examples() -> None:
    """The README keeps its quickstart, and each family page shows its optimizers at work."""
    per_page: dict[str, int] = {}
    for page, _, _ in BLOCKS:
        per_page[page.relative_to(ROOT).as_posix()] = per_page.get(page.relative_to(ROOT).as_posix(), 0) + 1
    assert per_page.get("README.md", 0) >= 1, per_page
    for name in ("hfac", "adadiag", "ams", "lionk", "lecture", "building-optimizers", "performance",
                 "distributed", "benchmarks"):
        assert per_page.get(f"docs/{name}.md", 0) >= 1, (name, per_page)
    assert len(BLOCKS) >= 20, per_page


@pytest.mark.parametrize(("page", "index", "code"), BLOCKS, ids=[_id(p, i) for p, i, _ in BLOCKS])
def test_example_runs(page: Path, index: int, code: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = dict(registry._REGISTRY)  # an example may register an optimizer: keep it to itself
    try:
        exec(compile(code, f"{page}:block{index}", "exec"), {"__name__": "__docs__"})
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(before)


def test_readme_starts_with_the_two_commands() -> None:
    """``.ci/run`` runs the README's test command: the README must open with it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert first_block[0].startswith("bash scripts/bench.sh")
    assert first_block[1].startswith("bash scripts/test.sh")
    assert text.index("```bash") < text.index("## ")
    assert len(text.splitlines()) <= 300


def test_readme_optimizer_table_is_current() -> None:
    """The README's table is the script's output, pasted whole: no optimizer is missing."""
    spec = importlib.util.spec_from_file_location("optimizer_table", ROOT / "scripts" / "optimizer_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    table = script.table()
    assert table.count("\n") == len(registry.registered()) + 1
    assert table in (ROOT / "README.md").read_text(encoding="utf-8")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of ``page`` (fenced code left out)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    heads = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_relative_links_resolve() -> None:
    """Every relative link points at a file that exists, and at one of its headings if it names one."""
    link = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)")
    missing = []
    for page in PAGES:
        for target, anchor in link.findall(page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                missing.append(f"{page.relative_to(ROOT)} -> {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                missing.append(f"{page.relative_to(ROOT)} -> {target}#{anchor}")
    assert not missing, missing

"""The import graph of ``src/hamopt`` (issue 14): no cycles, no upward arrows, and the few
modules that may meet FSDP2 shards or the engine named.

The graph is read from the source with ``ast`` (every ``import`` and ``from ... import``,
inside functions too, but not those under ``if TYPE_CHECKING``). ``from pkg import name``
is an arrow to the module ``pkg.name`` when there is one, else to ``pkg``; an arrow from a
module to a package that contains it (``from . import __path__``) is not counted: that
package is already initialised.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hamopt
from hamopt.core.transform import StepContext

SRC = Path(hamopt.__file__).parent

#: Layers, lowest first: a module may import its own layer and the ones below only.
LAYERS = [("hamopt.core", 0), ("hamopt.transforms", 1), ("hamopt.fast", 2), ("hamopt.optim", 3),
          ("hamopt.bench", 6), ("hamopt.theory", 6), ("hamopt.cli", 7)]
#: Modules that are no package above: the registry, groups, memory accounting (4), the package root (5).
ENTRY_POINTS = {"hamopt.__main__"}  # ``python -m hamopt`` runs the CLI


def _modules() -> dict[str, Path]:
    mods = {}
    for f in SRC.rglob("*.py"):
        parts = list(f.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {}
    for mod, f in mods.items():
        pkg = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
        out: set[str] = set()
        for node in _imports(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs + ([base] if len(subs) < len(node.names) else [])
            out.update(t for t in targets if t in mods and t != mod and not mod.startswith(t + "."))
        edges[mod] = out
    return edges


def _layer(mod: str) -> int:
    for prefix, layer in LAYERS:
        if mod == prefix or mod.startswith(prefix + "."):
            return layer
    return 5 if mod == "hamopt" else 4


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


GRAPH = _graph()


def test_the_graph_is_read() -> None:
    # The reader itself: known arrows are there, so the checks below are not vacuous.
    assert "hamopt.core.engine.runner" in GRAPH["hamopt.core.optimizer"] or \
        "hamopt.core.engine" in GRAPH["hamopt.core.optimizer"]
    assert "hamopt.transforms.common" in GRAPH["hamopt.optim.classic"] or \
        "hamopt.transforms.common" in GRAPH["hamopt.optim.lecture"]
    assert "hamopt.core.engine.sharding" in GRAPH["hamopt.core.engine.gathered"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_nothing_lower_imports_anything_higher() -> None:
    up = [f"{m} -> {t}" for m, ts in GRAPH.items() if m not in ENTRY_POINTS for t in ts if _layer(t) > _layer(m)]
    assert up == []


@pytest.mark.parametrize("package", ["hamopt.transforms", "hamopt.fast", "hamopt.optim"])
def test_rules_never_meet_shards_or_the_engine(package: str) -> None:
    # How a step runs (CPU pieces, FSDP2 shards) is the engine's; a rule declares what it needs.
    bad = [f"{m} -> {t}" for m, ts in GRAPH.items() if m == package or m.startswith(package + ".")
           for t in ts if t == "hamopt.core.engine.sharding" or t.startswith("hamopt.core.engine")]
    assert bad == []


@pytest.mark.parametrize("module", ["hamopt.core.transform", "hamopt.core.ops", "hamopt.core.validation",
                                    "hamopt.core.reductions", "hamopt.core.optimizer"])
def test_the_contract_and_the_shell_never_meet_shards(module: str) -> None:
    assert "hamopt.core.engine.sharding" not in GRAPH[module]
    if module != "hamopt.core.optimizer":  # the shell runs the engine; the contract never does
        assert not any(t.startswith(("hamopt.core.engine", "hamopt.core.optimizer")) for t in GRAPH[module])


def test_the_step_context_has_no_side_channel() -> None:
    # Nothing passes between the transforms of a chain but the updates (no scratch dict).
    names = {f.name for f in StepContext.__dataclass_fields__.values()}
    assert names == {"group", "params", "grads", "states", "steps", "foreach", "leaves", "workspace", "_owned"}

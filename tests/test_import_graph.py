"""The package's imports follow the declared layer order and form no cycle, counting imports
inside functions.

A lazy import hides a dependency from Python but not from the reader: two modules that need each
other are one module, or a third is missing. The graph is read from the source with `ast`, so
every `import` statement counts wherever it sits (TYPE_CHECKING blocks excepted: they never run).
An edge goes to the module named; `from package import submodule` goes to the submodule.

`LAYERS` is docs/architecture.md's layer order, lowest first: a module imports from its own unit
(folder or top-level module) and from units of lower layers, never from its layer's other units
or from a higher one. A type two stages share lives in the lower one.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = "pytest_speedbench"

#: lowest first; each entry is one layer of units (a sub-package or a top-level module)
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "cpu_compat"),
    ("",),  # the package root: __version__, and the start-up fix run before anything else
    ("models",),
    ("engines",),
    ("settings",),
    ("data",),
    ("measure",),
    ("metrics",),
    ("results",),
    ("analysis",),
    ("progress", "hookspecs", "commands"),
    ("engine_pool",),
    ("case_runner",),
    ("session", "cli"),
    ("xdist", "shards"),
    ("plugin",),
)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers inside `if TYPE_CHECKING:` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in (root / PACKAGE).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_lines(tree)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in files else base)
            for target in targets:
                if target in files and target != name:
                    graph[name].add(target)
    return graph


def unit_of(module: str) -> str:
    """`pytest_speedbench.engines.base` -> `engines`; the package root -> ``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_violations(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """Every edge that goes sideways (another unit of the same layer) or up, as text."""
    rank = {unit: i for i, layer in enumerate(layers) for unit in layer}
    bad = []
    for source, targets in sorted(graph.items()):
        here = unit_of(source)
        for target in sorted(targets):
            there = unit_of(target)
            if there == here:
                continue
            if here not in rank or there not in rank:
                bad.append(f"{source} -> {target}: {here if here not in rank else there!r} is in no layer")
            elif rank[there] >= rank[here]:
                way = "sideways" if rank[there] == rank[here] else "up"
                bad.append(f"{source} -> {target} ({way}: {here} is layer {rank[here]}, {there} layer {rank[there]})")
    return bad


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_walker_sees_function_level_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pytest_speedbench.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\n")
    graph = import_graph(tmp_path)
    assert graph[f"{PACKAGE}.a"] == {f"{PACKAGE}.sub.b"}
    assert find_cycle(graph) == [f"{PACKAGE}.a", f"{PACKAGE}.sub.b", f"{PACKAGE}.a"]


def test_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and any(graph.values())
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_every_unit_has_a_layer():
    units = {unit_of(m) for m in import_graph()}
    declared = {u for layer in LAYERS for u in layer}
    assert units == declared, f"undeclared: {sorted(units - declared)}; gone: {sorted(declared - units)}"


def test_layer_check_catches_an_upward_and_a_sideways_import(tmp_path):
    pkg = tmp_path / PACKAGE
    for sub in ("engines", "measure", "metrics"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "engines" / "base.py").write_text("def f():\n    from pytest_speedbench.measure import records\n")
    (pkg / "measure" / "records.py").write_text("from pytest_speedbench.engines import base\n")
    (pkg / "metrics" / "run.py").write_text("from pytest_speedbench.measure.records import x\n")
    layers = (("",), ("engines",), ("measure", "metrics"))
    bad = layer_violations(import_graph(tmp_path), layers)
    assert bad == [
        f"{PACKAGE}.engines.base -> {PACKAGE}.measure.records (up: engines is layer 1, measure layer 2)",
        f"{PACKAGE}.metrics.run -> {PACKAGE}.measure.records (sideways: metrics is layer 2, measure layer 2)",
    ]


def test_package_imports_follow_the_layer_order():
    """docs/architecture.md's order: each unit imports only its own modules and lower layers."""
    assert layer_violations(import_graph()) == []


def test_the_session_stays_thin():
    """session.py wires the pool, the case runner and the book; work it grows belongs in them
    (issue 22: under 250 lines)."""
    lines = (REPO / PACKAGE / "session.py").read_text().count("\n")
    assert lines < 250, f"session.py has {lines} lines: move the new work to engine_pool, case_runner or results/"

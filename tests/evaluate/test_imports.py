"""Layers import downward only and the evaluator's modules have no import cycles (read with `ast`, nothing imported).

Every ``import`` and ``from ... import`` counts, at module level or inside a function (a lazy import is
still a dependency), except under ``if TYPE_CHECKING:`` (never executed). Cycles are looked for through
every module but `onnxforge.passes` (whose package, registry and catalogue import each other; its
owners' business), so the evaluator, frontends, backends, CLI and the low modules stay acyclic.
"""

from __future__ import annotations

import ast
from pathlib import Path

import onnxforge

SRC = Path(onnxforge.__file__).resolve().parent
#: what each layer may import from inside onnxforge (prefixes); cli -> evaluate -> frontends/backends/passes -> low
LOW = ("onnxforge.numerics", "onnxforge.modelio", "onnxforge.errors", "onnxforge.scenes", "onnxforge.pooling",
       "onnxforge.spec", "onnxforge.cann")
ALLOWED = {
    "onnxforge.frontends": ("onnxforge.frontends",) + LOW,
    "onnxforge.passes": ("onnxforge.passes", "onnxforge.__version__") + LOW,
    "onnxforge.backends": ("onnxforge.backends",) + LOW,
    "onnxforge.evaluate": ("onnxforge.evaluate", "onnxforge.passes", "onnxforge.backends", "onnxforge.frontends") + LOW,
    "onnxforge.scenes": ("onnxforge.errors",),
    "onnxforge.pooling": (),  # pure arithmetic below frontends and passes
    "onnxforge.spec": ("onnxforge.errors",),
    "onnxforge.cann": ("onnxforge.errors",),  # CANN profiles: data below frontends, passes and backends
}


def module_graph(src: Path = SRC) -> dict[str, set[str]]:
    """onnxforge module -> the onnxforge modules it imports (``from pkg import name`` resolves to pkg.name if a module)."""
    mods = {}
    for path in src.rglob("*.py"):
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for a in node.names:
                    full = f"{base}.{a.name}"
                    found.add(full if full in mods else base)
        graph[name] = {m for m in found if m in mods and m != name}
    return graph


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if one exists."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_the_graph_reader_sees_lazy_and_from_imports():
    graph = module_graph()
    assert "onnxforge.evaluate.catalog" in graph["onnxforge.evaluate.evaluator"]  # a module-level from-import
    assert "onnxforge.frontends" in graph["onnxforge.evaluate.evaluator"]  # a lazy import inside a function
    assert "onnxforge.scenes" in graph["onnxforge.frontends.train"]


def test_no_import_cycle():
    graph = module_graph()
    cycles = [c for c in (_cycle_through(graph, m) for m in sorted(graph)) if c]
    assert cycles == []


def test_layers_import_downward_only():
    graph = module_graph()
    wrong = []
    for name, deps in graph.items():
        for layer, allowed in ALLOWED.items():
            if name == layer or name.startswith(layer + "."):
                wrong += [f"{name} -> {d}" for d in deps
                          if not any(d == a or d.startswith(a + ".") for a in allowed) and d != "onnxforge"]
    assert wrong == []
    assert not [f"{n} -> {d}" for n, ds in graph.items() if n.startswith("onnxforge.frontends") for d in ds
                if d.startswith("onnxforge.evaluate")]

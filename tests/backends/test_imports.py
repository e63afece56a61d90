"""Backends import downward only and without cycles; spec.py is low-level; every module imports alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import onnxforge

SRC = Path(onnxforge.__file__).parent
BACKENDS = sorted(p for p in (SRC / "backends").glob("*.py"))


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path) -> set[str]:
    """Every onnxforge module `path` imports anywhere (functions included), except under TYPE_CHECKING."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("onnxforge"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("onnxforge"):
                found.add(child.module)
                for a in child.names:  # `from onnxforge import spec` imports the module onnxforge.spec
                    if (SRC.parent / (child.module.replace(".", "/") + f"/{a.name}.py")).is_file():
                        found.add(f"{child.module}.{a.name}")
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def test_no_import_cycles_among_backend_modules():
    graph = {_module_name(p): {m for m in imports_of(p) if m.startswith("onnxforge.backends")} for p in BACKENDS}
    assert "onnxforge.backends.ascend" in graph and "onnxforge.backends.registry" in graph
    state: dict[str, int] = {}

    def walk(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(graph.get(mod, ())):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]) if dep in path
                                     else f"import cycle through {dep}")
            if dep not in state:
                walk(dep, path + [dep])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            walk(mod, [mod])
    # the cycles issue 9 named are gone: base imports no backend, and atc/ais_bench are one module
    assert not {"onnxforge.backends.onnxruntime", "onnxforge.backends.ascend"} & graph["onnxforge.backends.base"]
    assert graph["onnxforge.backends.registry"] == set()  # backend modules are imported by name, on lookup


def test_backends_import_downward_only():
    upward = ("onnxforge.passes", "onnxforge.evaluate", "onnxforge.cli", "onnxforge.frontends", "onnxforge.demo")
    for path in BACKENDS:
        bad = [m for m in imports_of(path) if m.startswith(upward)]
        assert not bad, f"{path.name} imports {bad}"
    assert imports_of(SRC / "spec.py") == {"onnxforge.errors"}
    assert not [m for m in imports_of(SRC / "numerics.py") if m not in ("onnxforge.errors",)]


@pytest.mark.parametrize("module", [_module_name(p) for p in BACKENDS] + ["onnxforge.spec"])
def test_each_module_imports_alone_in_a_fresh_interpreter(module):
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr

"""The pass registry: name -> Pass class. `onnxforge.passes.catalog` finds every built-in pass.

Imports only `base` (pass modules import `register` from here; the built-ins are loaded by
`catalog.load()` at the first lookup), so registry, catalog, pipeline and the passes form no cycle.
"""

from __future__ import annotations

from onnxforge.passes.base import NodeSelecting, Pass

_REGISTRY: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator adding a pass to the registry under its `name`."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"pass name {name!r} registered twice")
    _REGISTRY[name] = cls
    return cls


def _load_builtins() -> None:
    _catalog().load()


def _catalog():
    import importlib

    return importlib.import_module(__name__.rpartition(".")[0] + ".catalog")


def get_pass(name: str) -> type[Pass] | None:
    _load_builtins()
    return _REGISTRY.get(name)


def all_passes() -> dict[str, type[Pass]]:
    """Every registered pass by name, in catalogue order."""
    _load_builtins()
    rank = {name: i for i, name in enumerate(_catalog().ORDER)}
    return {k: _REGISTRY[k] for k in sorted(_REGISTRY, key=lambda n: (rank.get(n, len(rank)), n))}


def node_selecting(name: str) -> bool:
    """Whether the registered pass `name` implements `base.NodeSelecting` (per-node search)."""
    cls = get_pass(name)
    return cls is not None and issubclass(cls, NodeSelecting)


def tagged(tag: str) -> list[str]:
    """The passes carrying `tag`, in catalogue order."""
    return [name for name, cls in all_passes().items() if tag in cls.tags]


def shortcut(name: str) -> list[str] | None:
    """The exact passes a pipeline shortcut stands for (a tag that is not a pass name), else None."""
    if get_pass(name) is not None:
        return None
    names = [n for n in tagged(name) if get_pass(n)().effective_kind().value == "exact"]
    return names or None

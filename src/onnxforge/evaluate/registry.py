"""Registries of evaluation datasets and metrics: name -> class, filled by decorators where each is defined.

``@register_dataset`` (in `datasets.py`, `synthetic.py`) and ``@register_metric`` (in `metrics.py`) add
a class under its ``name``; its ``summary`` is the one line help texts show. Help strings, known-name
lists and "unknown name" errors are generated from here, never written out by hand.
`onnxforge.evaluate.catalog` imports every built-in module, so look names up through it.

Contract:
- a name registers once (a second class under the same name is a ValueError: a programming error);
- `Registry.get(name)` returns the class or raises the registry's `ForgeError` subclass with one
  line naming the known names, in registration order.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from onnxforge.errors import DatasetError, EvaluationError, ForgeError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Named classes of one kind ("dataset", "metric"), in registration order."""

    def __init__(self, kind: str, error: type[ForgeError]) -> None:
        self.kind = kind
        self.error = error
        self._entries: dict[str, T] = {}

    def register(self, cls: T) -> T:
        """Class decorator: adds `cls` under `cls.name`."""
        name = getattr(cls, "name", "")
        if not name:
            raise ValueError(f"{cls.__qualname__}: a registered {self.kind} needs a non-empty `name`")
        if name in self._entries and self._entries[name] is not cls:
            raise ValueError(f"{self.kind} name {name!r} registered twice")
        self._entries[name] = cls
        return cls

    def names(self) -> tuple[str, ...]:
        """Registered names in registration order."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        """The class registered as `name`; the registry's error, listing the known names, otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise self.error(f"unknown {self.kind} '{name}'; known {self.kind}s: {', '.join(self._entries)}") from None

    def help(self, sep: str = " | ") -> str:
        """The known names joined by `sep` (for CLI help)."""
        return sep.join(self._entries)

    def summaries(self) -> dict[str, str]:
        """name -> its class's one-line ``summary``."""
        return {n: getattr(c, "summary", "") for n, c in self._entries.items()}


DATASETS: Registry = Registry("dataset", DatasetError)
METRICS: Registry = Registry("metric", EvaluationError)

register_dataset = DATASETS.register
register_metric = METRICS.register

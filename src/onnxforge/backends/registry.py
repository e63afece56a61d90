"""The backend registry: name -> "module:Class", imported on first use; backend specs.

A backend spec is one item of the pipeline grammar (`onnxforge.spec`): a backend name with options in
braces, e.g. ``onnxruntime{device=cuda,threads=2}`` or ``atc{soc_version=Ascend310P3,max_opset=18}``.
Values are converted by the type of the backend's `Options` fields; `str(parse_backend(s))` is the
canonical spec (only non-default options). Every error is one BackendError line naming the column and
the known backends or options.

Importing this module (or `onnxforge.backends`) imports no backend module, so neither onnxruntime nor
the Ascend tooling is loaded until a backend is looked up. Backend modules are imported by name
(importlib), so this module has no import edge to them and `onnxforge.backends.base` may re-export
`get_backend` from here without a cycle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping

from onnxforge import spec
from onnxforge.errors import BackendError

if TYPE_CHECKING:
    from onnxforge.backends.base import Backend

GRAMMAR = spec.Grammar(
    what="backend spec", item="a backend name", error=BackendError, name_pattern=spec.SNAKE_OR_KEBAB_NAME,
    empty="empty backend spec: give a backend name, e.g. onnxruntime or 'onnxruntime{threads=2}'",
)

#: name -> "module:Class"; a registered class object replaces its string on first lookup
_REGISTRY: dict[str, Any] = {
    "ais_bench": "onnxforge.backends.ascend:AisBenchBackend",
    "atc": "onnxforge.backends.ascend:AtcBackend",
    "onnxruntime": "onnxforge.backends.onnxruntime:OnnxruntimeBackend",
}


def register_backend(name: str, target: type["Backend"] | str) -> None:
    """Makes `name` resolve to a Backend subclass, given as the class or lazily as "module:Class"."""
    _REGISTRY[name] = target


def backend_names() -> list[str]:
    """Every registered backend name, sorted (imports nothing)."""
    return sorted(_REGISTRY)


def backend_class(name: str) -> type["Backend"]:
    """The Backend subclass registered as `name` (its module imported now).

    Raises:
        BackendError: unknown name (one line listing the known names).
    """
    target = _REGISTRY.get(name)
    if target is None:
        raise BackendError(_unknown(name))
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
        _REGISTRY[name] = target
    return target


def parse_backend(text: "str | Backend", overrides: Mapping[str, Any] | None = None, *,
                  flags: Mapping[str, str] | None = None) -> "Backend":
    """A configured backend from a spec such as ``onnxruntime{device=cuda,threads=2}``.

    Args:
        text: the spec (a bare name is a backend with default options), or a Backend (returned as is
            when there are no overrides).
        overrides: option values given another way (CLI flags, library arguments); None means not given.
            They fill options the spec leaves at their default.
        flags: how each override was given, for errors (``{"threads": "--threads"}``).

    Raises:
        BackendError: bad syntax, unknown backend or option, bad value (with the column); an override the
            backend has no option for; an override that contradicts an option the spec sets.
    """
    if not isinstance(text, str):
        backend, explicit, shown = text, text.non_default_options(), str(text)
    else:
        item = spec.parse_item(text, GRAMMAR)
        if item.name not in _REGISTRY:
            raise GRAMMAR.fail(text, item.column, _unknown(item.name))
        cls = backend_class(item.name)
        explicit = spec.item_kwargs(item, cls.Options, text, GRAMMAR, f"backend '{item.name}'")
        try:
            backend = cls(**explicit)
        except BackendError as exc:
            raise GRAMMAR.fail(text, item.column, str(exc)) from None
        shown = text
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if not given:
        return backend
    flags = dict(flags or {})
    names = [f.name for f, _ in spec.option_fields(backend.Options)]
    changes = {}
    for key, value in given.items():
        said = f"{flags[key]} {spec.format_value(value)}" if key in flags else f"option {key}={spec.format_value(value)}"
        if key not in names and key in flags:
            raise BackendError(f"{said} does not apply to backend '{backend.name}' (its options: {', '.join(names) or 'none'})")
        if key not in names:
            raise BackendError(f"backend '{backend.name}' has no option '{key}' (options: {', '.join(names) or 'none'})")
        if key in explicit and explicit[key] != value:
            raise BackendError(f"{said} contradicts {key}={spec.format_value(explicit[key])} in backend spec '{shown}'; give it once")
        if key not in explicit:
            changes[key] = value
    return backend.with_options(**changes)


def get_backend(name: "str | Backend", **options: Any) -> "Backend":
    """The backend `name` (a name or a spec) configured with `options`; `parse_backend(name, options)`.

    Raises:
        BackendError: unknown name (one line listing the known names), option or value.
    """
    return parse_backend(name, options)


def backend_help() -> str:
    """One line per backend: name, summary and options with types and defaults (for CLI help)."""
    lines = []
    for name in backend_names():
        cls = backend_class(name)
        lines.append(f"{name}: {cls.summary} Options: {spec.describe_options(cls.Options)}.")
    return "\n".join(lines)


def _unknown(name: str) -> str:
    return f"unknown backend '{name}'; known backends: {', '.join(backend_names())}"

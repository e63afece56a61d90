"""Pipeline strings: `simplify,resize-nearest{nodes=up1|up2},fp16-output`.

Grammar (whitespace around tokens is ignored)::

    pipeline := item ("," item)*
    item     := NAME ("{" option ("," option)* "}")?
    option   := KEY "=" VALUE          VALUE: no ',', '{', '}', '='; list values are '|'-separated

Values are converted to the type of the option's dataclass field (int, float, bool, str, tuple of
str, or a Literal choice). Errors name the column of the bad token and, for unknown names, the known
ones. `str(Pipeline)` prints the canonical form (only non-default options, in declaration order), and
parsing the canonical form gives the same pipeline.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any

from onnxforge.errors import PipelineError
from onnxforge.passes.base import Pass, option_fields

_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_KEY = re.compile(r"[a-z_][a-z0-9_-]*")
_VALUE = re.compile(r"[^,{}=]*")


@dataclass(frozen=True)
class Pipeline:
    """An ordered list of configured passes."""

    passes: tuple[Pass, ...]

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)

    def __len__(self) -> int:
        return len(self.passes)

    def __iter__(self):
        return iter(self.passes)

    @classmethod
    def parse(cls, text: str) -> "Pipeline":
        return parse_pipeline(text)


def parse_pipeline(text: str) -> Pipeline:
    """Parses a pipeline string into configured passes; raises PipelineError pointing at the bad token."""
    from onnxforge.passes.registry import all_passes

    registry = all_passes()
    parser = _Parser(text)
    items = parser.parse()
    passes = []
    for name, col, opts in items:
        cls = registry.get(name)
        if cls is None:
            raise PipelineError(
                f"{_where(text, col)}: unknown pass '{name}'; known passes: {', '.join(registry)}"
            )
        kwargs = {}
        fields = {f.name: (f, t) for f, t in option_fields(cls.Options)}
        for key, kcol, raw in opts:
            if key not in fields:
                known = ", ".join(fields) or "none"
                raise PipelineError(f"{_where(text, kcol)}: pass '{name}' has no option '{key}' (options: {known})")
            if key in kwargs:
                raise PipelineError(f"{_where(text, kcol)}: option '{key}' given twice")
            kwargs[key] = _convert(raw, fields[key][1], f"{_where(text, kcol)}: option '{name}.{key}'")
        try:
            passes.append(cls(**kwargs))
        except PipelineError as exc:
            raise PipelineError(f"{_where(text, col)}: {exc}") from None
    return Pipeline(tuple(passes))


def format_item(name: str, options: dict[str, Any]) -> str:
    if not options:
        return name
    return name + "{" + ",".join(f"{k}={format_value(v)}" for k, v in options.items()) + "}"


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "|".join(format_value(v) for v in value)
    return str(value)


def _where(text: str, col: int) -> str:
    return f"pipeline '{text}' column {col + 1}"


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> list[tuple[str, int, list[tuple[str, int, str]]]]:
        if not self.text.strip():
            raise PipelineError("empty pipeline: give comma-separated pass names (see 'onnxforge passes')")
        items = [self._item()]
        while self._peek() == ",":
            self.pos += 1
            items.append(self._item())
        self._skip_ws()
        if self.pos != len(self.text):
            raise PipelineError(f"{_where(self.text, self.pos)}: unexpected '{self.text[self.pos]}'")
        return items

    def _skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _peek(self) -> str:
        self._skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _match(self, pattern: re.Pattern, what: str) -> tuple[str, int]:
        self._skip_ws()
        m = pattern.match(self.text, self.pos)
        if not m or not m.group(0):
            found = self.text[self.pos] if self.pos < len(self.text) else "end of text"
            raise PipelineError(f"{_where(self.text, self.pos)}: expected {what}, found '{found}'")
        start = self.pos
        self.pos = m.end()
        return m.group(0), start

    def _item(self):
        name, col = self._match(_NAME, "a pass name")
        opts: list[tuple[str, int, str]] = []
        if self._peek() == "{":
            self.pos += 1
            while True:
                key, kcol = self._match(_KEY, "an option name")
                if self._peek() != "=":
                    raise PipelineError(f"{_where(self.text, self.pos)}: expected '=' after option '{key}'")
                self.pos += 1
                self._skip_ws()
                m = _VALUE.match(self.text, self.pos)
                value = m.group(0).strip()
                self.pos = m.end()
                opts.append((key, kcol, value))
                nxt = self._peek()
                if nxt == ",":
                    self.pos += 1
                    continue
                if nxt == "}":
                    self.pos += 1
                    break
                raise PipelineError(f"{_where(self.text, self.pos)}: expected ',' or '}}' in the options of '{name}'")
        return name, col, opts


def _convert(raw: str, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union:  # Optional[X]
        non_none = [a for a in args if a is not type(None)]
        if raw.lower() in ("", "none") and type(None) in args:
            return None
        return _convert(raw, non_none[0], where)
    if origin is typing.Literal:
        choices = [str(a) for a in args]
        if raw not in choices:
            raise PipelineError(f"{where}: expected one of {', '.join(choices)}, got '{raw}'")
        return args[choices.index(raw)]
    if origin in (tuple, list):
        if raw == "":
            return ()
        inner = args[0] if args else str
        return tuple(_convert(part.strip(), inner, where) for part in raw.split("|"))
    if typ is bool:
        low = raw.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise PipelineError(f"{where}: expected true or false, got '{raw}'")
    if typ is int:
        try:
            return int(raw)
        except ValueError:
            raise PipelineError(f"{where}: expected an integer, got '{raw}'") from None
    if typ is float:
        try:
            return float(raw)
        except ValueError:
            raise PipelineError(f"{where}: expected a number, got '{raw}'") from None
    if typ is str:
        if raw == "":
            raise PipelineError(f"{where}: empty value")
        return raw
    raise TypeError(f"unsupported option type {typ!r}")  # a bug in a pass definition


def describe_type(typ: Any) -> str:
    """Human-readable option type for `onnxforge passes`."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union:
        return describe_type([a for a in args if a is not type(None)][0]) + "?"
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (tuple, list):
        return f"{describe_type(args[0]) if args else 'str'}[|...]"
    return getattr(typ, "__name__", str(typ))


def option_docs(cls: type[Pass]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for each option of a pass class."""
    rows = []
    for f, typ in option_fields(cls.Options):
        default = f.default if f.default is not dataclasses.MISSING else None
        rows.append((f.name, describe_type(typ), format_value(default) if default not in (None, ()) else "-", f.metadata.get("help", "")))
    return rows

"""The `name{key=value,...}` grammar shared by pass pipelines and backend specs.

Grammar (whitespace around tokens is ignored)::

    list     := item ("," item)*             a pipeline; a backend spec is a single item
    item     := NAME ("{" option ("," option)* "}")?
    option   := KEY "=" VALUE
    VALUE    := '"' any text but '"' '"'  |  text without ',', '{', '}', '"'
                list values are '|'-separated; a quoted value may hold ',', '{', '}' and '='

What a name means (a pass, a backend) is the caller's business: this module parses text into `SpecItem`
values, converts raw option values to the type of an options dataclass field (int, float, bool, str,
tuple, Optional, Literal choice), formats items canonically (only the options given, in the order given)
and describes option types for help texts. Every error is one line naming the column of the bad token;
the caller chooses the error class (PipelineError for pipelines, BackendError for backend specs) and
the word that names the text ("pipeline", "backend spec").

This module imports only `onnxforge.errors` and the standard library, so every layer may use it.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Sequence

from onnxforge.errors import ForgeError

#: kebab-case names (passes); backends also allow '_' (ais_bench)
KEBAB_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
SNAKE_OR_KEBAB_NAME = re.compile(r"[a-z][a-z0-9_]*(?:-[a-z0-9_]+)*")
_KEY = re.compile(r"[a-z_][a-z0-9_-]*")
_BARE_VALUE = re.compile(r'[^,{}"]*')
_NEEDS_QUOTES = re.compile(r'[,{}]|^\s|\s$')


def option(default: Any, help: str) -> Any:
    """An option field: a dataclass field with a default and a help line (shown in help texts)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class NoOptions:
    """Options of something that takes none."""


@dataclass(frozen=True)
class SpecOption:
    """One `key=value` as written: the key, its 0-based column, and the raw (unquoted) value."""

    key: str
    column: int
    raw: str


@dataclass(frozen=True)
class SpecItem:
    """One `name{...}` as written: the name, its 0-based column, and its options in order."""

    name: str
    column: int
    options: tuple[SpecOption, ...] = ()


@dataclass(frozen=True)
class Grammar:
    """How one kind of text is parsed and how its errors read.

    Attributes:
        what: the word naming the text in errors ("pipeline", "backend spec").
        item: what a name is, for "expected ..." errors ("a pass name").
        error: the ForgeError subclass every error is raised as.
        name_pattern: the regular expression a name must match.
        empty: the message for an empty text.
    """

    what: str
    item: str
    error: type[ForgeError]
    name_pattern: re.Pattern = KEBAB_NAME
    empty: str = "empty text"

    def where(self, text: str, column: int) -> str:
        """`pipeline 'TEXT' column N` (N is 1-based)."""
        return f"{self.what} '{text}' column {column + 1}"

    def fail(self, text: str, column: int, message: str) -> ForgeError:
        """The error to raise for `message` at `column` of `text`."""
        return self.error(f"{self.where(text, column)}: {message}")


def parse_items(text: str, grammar: Grammar) -> list[SpecItem]:
    """Parses comma-separated items; raises `grammar.error` pointing at the bad token."""
    return _Parser(text, grammar).parse(many=True)


def parse_item(text: str, grammar: Grammar) -> SpecItem:
    """Parses exactly one item (a backend spec); raises `grammar.error` pointing at the bad token."""
    return _Parser(text, grammar).parse(many=False)[0]


def option_fields(options_cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved type) for each field of an options dataclass, in declaration order."""
    hints = typing.get_type_hints(options_cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(options_cls)]


def field_default(f: dataclasses.Field) -> Any:
    """A field's default (None when it has none)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def item_kwargs(item: SpecItem, options_cls: type, text: str, grammar: Grammar, owner: str) -> dict[str, Any]:
    """The keyword arguments `item`'s options give for `options_cls`, each converted to its field's type.

    Args:
        owner: how errors name the thing configured ("pass 'simplify'", "backend 'atc'").

    Raises:
        grammar.error: unknown option (listing the known ones), an option given twice, a bad value.
    """
    fields = {f.name: typ for f, typ in option_fields(options_cls)}
    kwargs: dict[str, Any] = {}
    for opt in item.options:
        if opt.key not in fields:
            raise grammar.fail(text, opt.column, f"{owner} has no option '{opt.key}' (options: {', '.join(fields) or 'none'})")
        if opt.key in kwargs:
            raise grammar.fail(text, opt.column, f"option '{opt.key}' given twice")
        kwargs[opt.key] = convert(opt.raw, fields[opt.key], f"{grammar.where(text, opt.column)}: option '{item.name}.{opt.key}'",
                                  grammar.error)
    return kwargs


def non_default_options(options: Any) -> dict[str, Any]:
    """The fields of an options dataclass instance that differ from their defaults, in declaration order."""
    out = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if value != field_default(f):
            out[f.name] = value
    return out


def format_item(name: str, options: dict[str, Any]) -> str:
    """`name{key=value,...}` (just `name` without options); parsing it gives the same options back."""
    if not options:
        return name
    return name + "{" + ",".join(f"{k}={format_value(v)}" for k, v in options.items()) + "}"


def format_value(value: Any) -> str:
    """An option value as the grammar writes it: true/false, '|'-joined lists, quoted where needed."""
    text = _plain(value)
    return f'"{text}"' if _NEEDS_QUOTES.search(text) else text


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "|".join(_plain(v) for v in value)
    if value is None:
        return "none"
    return str(value)


def convert(raw: str, typ: Any, where: str, error: type[ForgeError] = ForgeError) -> Any:
    """`raw` converted to `typ` (a field type); raises `error` prefixed with `where` for a bad value."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union:  # Optional[X]
        non_none = [a for a in args if a is not type(None)]
        if raw.lower() in ("", "none") and type(None) in args:
            return None
        return convert(raw, non_none[0], where, error)
    if origin is typing.Literal:
        choices = [str(a) for a in args]
        if raw not in choices:
            raise error(f"{where}: expected one of {', '.join(choices)}, got '{raw}'")
        return args[choices.index(raw)]
    if origin in (tuple, list):
        if raw == "":
            return ()
        inner = args[0] if args else str
        return tuple(convert(part.strip(), inner, where, error) for part in raw.split("|"))
    if typ is bool:
        low = raw.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise error(f"{where}: expected true or false, got '{raw}'")
    if typ is int:
        try:
            return int(raw)
        except ValueError:
            raise error(f"{where}: expected an integer, got '{raw}'") from None
    if typ is float:
        try:
            return float(raw)
        except ValueError:
            raise error(f"{where}: expected a number, got '{raw}'") from None
    if typ is str:
        if raw == "":
            raise error(f"{where}: empty value")
        return raw
    raise TypeError(f"unsupported option type {typ!r}")  # a bug in an options definition


def describe_type(typ: Any) -> str:
    """Human-readable option type for help texts (`int`, `cpu|cuda`, `str[|...]`, `float?`)."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union:
        return describe_type([a for a in args if a is not type(None)][0]) + "?"
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (tuple, list):
        return f"{describe_type(args[0]) if args else 'str'}[|...]"
    return getattr(typ, "__name__", str(typ))


def option_rows(options_cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for each field of an options dataclass ('-' for no default)."""
    rows = []
    for f, typ in option_fields(options_cls):
        default = field_default(f)
        shown = format_value(default) if default not in (None, ()) else "-"
        rows.append((f.name, describe_type(typ), shown, f.metadata.get("help", "")))
    return rows


def describe_options(options_cls: type, names: Sequence[str] | None = None) -> str:
    """`key=type (default d)` for each option, '; '-separated: one line for help texts."""
    parts = []
    for name, typ, default, _help in option_rows(options_cls):
        if names is not None and name not in names:
            continue
        parts.append(f"{name}={typ}" + (f" (default {default})" if default != "-" else ""))
    return "; ".join(parts) or "no options"


class _Parser:
    def __init__(self, text: str, grammar: Grammar) -> None:
        self.text = text
        self.grammar = grammar
        self.pos = 0

    def fail(self, message: str, column: int | None = None) -> ForgeError:
        return self.grammar.fail(self.text, self.pos if column is None else column, message)

    def parse(self, many: bool) -> list[SpecItem]:
        if not self.text.strip():
            raise self.grammar.error(self.grammar.empty)
        items = [self._item()]
        while many and self._peek() == ",":
            self.pos += 1
            items.append(self._item())
        self._skip_ws()
        if self.pos != len(self.text):
            raise self.fail(f"unexpected '{self.text[self.pos]}'")
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
            raise self.fail(f"expected {what}, found '{found}'")
        start = self.pos
        self.pos = m.end()
        return m.group(0), start

    def _value(self) -> str:
        self._skip_ws()
        if self.pos < len(self.text) and self.text[self.pos] == '"':
            end = self.text.find('"', self.pos + 1)
            if end < 0:
                raise self.fail("unterminated '\"'")
            value = self.text[self.pos + 1:end]
            self.pos = end + 1
            return value
        m = _BARE_VALUE.match(self.text, self.pos)
        self.pos = m.end()
        return m.group(0).strip()

    def _item(self) -> SpecItem:
        name, col = self._match(self.grammar.name_pattern, self.grammar.item)
        opts: list[SpecOption] = []
        if self._peek() == "{":
            self.pos += 1
            while True:
                key, kcol = self._match(_KEY, "an option name")
                if self._peek() != "=":
                    raise self.fail(f"expected '=' after option '{key}'")
                self.pos += 1
                opts.append(SpecOption(key, kcol, self._value()))
                nxt = self._peek()
                if nxt == ",":
                    self.pos += 1
                    continue
                if nxt == "}":
                    self.pos += 1
                    break
                raise self.fail(f"expected ',' or '}}' in the options of '{name}'")
        return SpecItem(name, col, tuple(opts))

"""onnxforge.spec: the `name{key=value,...}` grammar shared by pipelines and backend specs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from onnxforge import spec
from onnxforge.errors import BackendError, PipelineError


@dataclass(frozen=True)
class _Opts:
    n: int = spec.option(1, "a count")
    ratio: float = spec.option(0.5, "a ratio")
    flag: bool = spec.option(True, "a switch")
    mode: Literal["a", "b"] = spec.option("a", "a choice")
    names: tuple[str, ...] = spec.option((), "a list")
    limit: Optional[float] = spec.option(None, "optional")


G = spec.Grammar(what="thing", item="a thing name", error=BackendError, name_pattern=spec.SNAKE_OR_KEBAB_NAME, empty="empty thing")


def _kwargs(text: str) -> dict:
    item = spec.parse_item(text, G)
    return spec.item_kwargs(item, _Opts, text, G, f"thing '{item.name}'")


def test_values_convert_by_field_type_and_format_back():
    kw = _kwargs('my_thing{n=3,ratio=0.25,flag=off,mode=b,names=x|y,limit=none}')
    assert kw == {"n": 3, "ratio": 0.25, "flag": False, "mode": "b", "names": ("x", "y"), "limit": None}
    opts = _Opts(**kw)
    text = spec.format_item("my_thing", spec.non_default_options(opts))
    assert text == "my_thing{n=3,ratio=0.25,flag=false,mode=b,names=x|y}"  # limit=None is the default
    assert _Opts(**_kwargs(text)) == opts


def test_quotes_hold_commas_braces_and_equals():
    kw = _kwargs('t{names="--a=1,2|{b}"}')
    assert kw["names"] == ("--a=1,2", "{b}")
    formatted = spec.format_item("t", kw)
    assert formatted == 't{names="--a=1,2|{b}"}'
    assert _kwargs(formatted) == kw
    assert spec.format_value("plain=ok") == "plain=ok"  # '=' alone needs no quotes


@pytest.mark.parametrize(
    "text, fragments",
    [
        ('t{names="abc}', ["thing 't{names=\"abc}' column 9", "unterminated"]),
        ("t{n=x}", ["column 3", "option 't.n'", "expected an integer, got 'x'"]),
        ("t{ratio=fast}", ["expected a number, got 'fast'"]),
        ("t{mode=c}", ["expected one of a, b, got 'c'"]),
        ("t{m=1}", ["column 3", "thing 't' has no option 'm' (options: n, ratio, flag, mode, names, limit)"]),
        ("t{n}", ["expected '=' after option 'n'"]),
        ("t u", ["column 3", "unexpected 'u'"]),
        ("", ["empty thing"]),
    ],
)
def test_errors_use_the_grammar_error_class_and_column(text, fragments):
    with pytest.raises(BackendError) as info:
        _kwargs(text)
    msg = str(info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_pipeline_grammar_is_kebab_and_raises_pipeline_errors():
    from onnxforge.passes.pipeline import GRAMMAR

    assert [i.name for i in spec.parse_items("simplify,fp16-output{x=1}", GRAMMAR)] == ["simplify", "fp16-output"]
    with pytest.raises(PipelineError, match="column 1: expected a pass name"):
        spec.parse_items("_x", GRAMMAR)


def test_help_texts():
    assert spec.option_rows(_Opts)[3] == ("mode", "a|b", "a", "a choice")
    assert spec.option_rows(_Opts)[4][1:3] == ("str[|...]", "-")
    assert spec.describe_type(Optional[float]) == "float?"
    assert spec.describe_options(_Opts, ["n", "limit"]) == "n=int (default 1); limit=float?"

"""The pipeline grammar: parsing, canonical printing, and errors that point at the bad token."""

from __future__ import annotations

import pytest

from onnxforge.errors import PipelineError
from onnxforge.passes import all_passes, parse_pipeline


def test_round_trip_is_canonical():
    text = "simplify,fp16-output{outputs=a|b}"
    assert str(parse_pipeline(text)) == text
    assert str(parse_pipeline(str(parse_pipeline(text)))) == text


def test_whitespace_and_default_options_are_normalised():
    assert str(parse_pipeline(" simplify { fuse_bn = true } ,  fp16-output ")) == "simplify,fp16-output"
    assert str(parse_pipeline("simplify{fuse_bn=false}")) == "simplify{fuse_bn=false}"


def test_options_are_typed():
    p = parse_pipeline("simplify{fuse_bn=no,optimize=1},fp16-output{outputs=x}").passes
    assert p[0].options.fuse_bn is False and p[0].options.optimize is True
    assert p[1].options.outputs == ("x",)


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("simplfy", ["column 1", "unknown pass 'simplfy'", "known passes: simplify"]),
        ("simplify,fp16-outptu", ["column 10", "unknown pass 'fp16-outptu'"]),
        ("simplify{fuse=1}", ["column 10", "no option 'fuse'", "fuse_bn"]),
        ("simplify{fuse_bn=maybe}", ["expected true or false", "'maybe'"]),
        ("simplify{fuse_bn=true", ["expected ',' or '}'"]),
        ("simplify,,fp16-output", ["column 10", "expected a pass name"]),
        ("simplify{fuse_bn=true,fuse_bn=false}", ["given twice"]),
        ("simplify fp16-output", ["unexpected 'f'"]),
        ("", ["empty pipeline"]),
    ],
)
def test_parse_errors_point_at_the_bad_token(text, fragments):
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_every_registered_pass_has_the_contract():
    for name, cls in all_passes().items():
        assert name == cls.name
        assert cls.kind.value in ("exact", "approximate", "backend-only")
        assert cls.summary and "\n" not in cls.summary
        assert (cls.__doc__ or "") or (cls.__module__ and __import__(cls.__module__, fromlist=["x"]).__doc__)
        # the default configuration prints as the bare name and parses back
        assert str(parse_pipeline(name)) == name

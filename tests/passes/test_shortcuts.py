"""Tags and pipeline shortcuts: `ascend` expands to the exact Ascend knowledges in catalogue order."""

from __future__ import annotations

import pytest

from onnxforge.errors import PipelineError
from onnxforge.passes import parse_pipeline
from onnxforge.passes.catalog import ORDER
from onnxforge.passes.registry import all_passes, shortcut, tagged


def test_ascend_shortcut_expands_to_the_tagged_exact_passes_in_order():
    expanded = shortcut("ascend")
    exact = [n for n in tagged("ascend") if all_passes()[n]().effective_kind().value == "exact"]
    assert expanded == [n for n in ORDER if n in exact]
    assert {"merge-slices", "merge-concats", "merge-casts", "split-large-pool"} <= set(expanded)
    pipeline = parse_pipeline("simplify,ascend,target-opset")
    names = [p.name for p in pipeline]
    assert names == ["simplify", *expanded, "target-opset"]
    assert str(pipeline) == ",".join(names)  # canonical form lists the expansion: reproducible
    assert str(parse_pipeline(str(pipeline))) == str(pipeline)


def test_every_tagged_pass_is_registered_and_exact_when_in_a_shortcut():
    for name in tagged("ascend"):
        assert name in all_passes()
    for name in shortcut("ascend"):
        assert all_passes()[name]().effective_kind().value == "exact"
    left_out = set(tagged("ascend")) - set(shortcut("ascend"))
    assert left_out and all(all_passes()[n]().effective_kind().value != "exact" for n in left_out)


def test_a_pass_name_is_never_a_shortcut_and_unknown_names_still_fail():
    assert shortcut("simplify") is None
    with pytest.raises(PipelineError, match="unknown pass 'ascnd'"):
        parse_pipeline("ascnd")


def test_a_shortcut_takes_no_options():
    with pytest.raises(PipelineError, match="shortcut .* takes no options"):
        parse_pipeline("simplify,ascend{x=1}")

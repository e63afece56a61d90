"""The per-node protocol: candidates(model) and with_nodes(names) on every node-selecting pass."""

from __future__ import annotations

import pytest

from onnxforge.passes import PassManager
from onnxforge.passes.base import NodeSelecting
from onnxforge.passes.registry import all_passes, get_pass, node_selecting
from tests.passes.helpers import apply, parse

RESIZES = """
g (float[1,3,4,4] x) => (float[1,3,8,8] y1, float[1,3,8,8] y2, float[1,3,8,8] y3) {
  s = Constant<value = float[4] {1.0, 1.0, 2.0, 2.0}>()
  y1 = Resize<mode = "linear">(x, , s)
  y2 = Resize<mode = "cubic">(x, , s)
  y3 = Resize<mode = "nearest">(x, , s)
}"""


def _named(text: str):
    model = parse(text)
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type.lower()}{i}"
    return model


def test_registry_knows_which_passes_select_nodes():
    assert {n for n in all_passes() if node_selecting(n)} == {"resize-nearest", "fp16", "label-upsample"}
    assert not node_selecting("no-such-pass")
    assert isinstance(get_pass("fp16")(), NodeSelecting)


def test_resize_nearest_candidates_and_one_node():
    model = _named(RESIZES)
    p = get_pass("resize-nearest")()
    assert p.candidates(model) == ["resize1", "resize2"]
    one = p.with_nodes(["resize2"])
    assert str(one) == "resize-nearest{nodes=resize2}"
    result, after = apply(one, model)
    assert result.stats["resize_rewritten"] == 1
    modes = {n.name: next(a.s for a in n.attribute if a.name == "mode") for n in after.graph.node if n.op_type == "Resize"}
    assert modes == {"resize1": b"linear", "resize2": b"nearest", "resize3": b"nearest"}
    assert get_pass("resize-nearest")(exclude=("resize1",)).candidates(model) == ["resize2"]
    with pytest.raises(ValueError):
        p.with_nodes([])


def test_label_upsample_candidates_are_outputs():
    model = _named(RESIZES.replace("float[1,3,8,8] y3", "float[1,3,8,8] y3").replace("cubic", "linear"))
    p = get_pass("label-upsample")()
    assert p.candidates(model) == ["y1", "y2", "y3"]
    result, after = apply(p.with_nodes(["y2"]), model)
    assert result.stats["rewritten"] == "y2"
    kinds = {o.name: o.type.tensor_type.elem_type for o in after.graph.output}
    assert kinds == {"y1": 1, "y2": 7, "y3": 1}  # only y2 became int64 labels


CONVS = """
g (float[1,3,8,8] x) => (float[1,3,8,8] y) {
  a = Relu(x)
  b = Sigmoid(a)
  y = Relu(b)
}"""


def test_fp16_candidates_and_one_node_in_float16():
    model = _named(CONVS)
    p = get_pass("fp16")()
    assert p.candidates(model) == ["relu0", "sigmoid1", "relu2"]
    result, after = apply(p.with_nodes(["sigmoid1"]), model)
    assert result.modified
    ops = [n.op_type for n in after.graph.node]
    assert ops == ["Relu", "Cast", "Sigmoid", "Cast", "Relu"]
    assert str(p.with_nodes(["sigmoid1"])) == "fp16{nodes=sigmoid1}"


def test_with_nodes_composes_with_the_manager():
    model = _named(RESIZES)
    p = get_pass("resize-nearest")()
    for name in p.candidates(model):
        out = PassManager([p.with_nodes([name])]).run(model)
        assert out.stages[0].stats["rewritten"] == name

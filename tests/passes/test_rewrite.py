"""The rule layer: RulePass counting and skips, the rewiring helpers, the graph I/O rule base."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from onnxforge.errors import PassError
from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass, replace_all_uses, sole_consumer, take_name
from onnxforge.passes.base import PassKind
from onnxforge.passes.registry import get_pass
from tests.passes.helpers import apply, ops, outputs, parse

MODEL = """
g (float[1,4,8,8] x) => (float[1,4,8,8] y, float[1,4,8,8] z) {
  a = Relu(x)
  b = Relu(a)
  y = Relu(b)
  z = Sigmoid(a)
}"""


def _graph():
    return gs.import_onnx(parse(MODEL))


def test_sole_consumer_replace_all_uses_take_name():
    g = _graph()
    t = g.tensors()
    assert sole_consumer(g, t["a"]) is None  # two readers
    assert sole_consumer(g, t["b"]).op == "Relu"
    assert sole_consumer(g, t["y"]) is None  # a graph output
    assert sole_consumer(g, t["a"], ignore=lambda n: n.op == "Sigmoid").op == "Relu"
    new = gs.Variable("tmp", dtype=np.float32)
    replace_all_uses(g, t["a"], new)
    assert not t["a"].outputs and len(new.outputs) == 2
    out = g.outputs[0]
    label = gs.Variable("new_y", dtype=np.float32)
    take_name(out, label, GraphBuilder(g, "t"))
    assert label.name == "y" and out.name.startswith("t/replaced")


class DoubleRelu(Rule):
    """Relu(Relu(x)) -> Relu(x): the inner Relu's reader reads x's Relu output directly."""

    name = "relu_folded"
    op_types = ("Relu",)

    def match(self, node, ctx: RuleContext):
        inner = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
        if inner is None or inner.op != "Relu":
            return None  # not a candidate: no skip reported
        if sole_consumer(ctx.graph, node.inputs[0]) is None:
            return self.skip(node, "the inner Relu feeds other nodes")
        return Match(node.name, node=node)

    def rewrite(self, match, builder):
        node = match.node
        node.inputs[0] = node.inputs[0].inputs[0].inputs[0]
        return f"{match.target} folded"


class FoldRelu(RulePass):
    name = "fold-relu-test"
    summary = "test"
    kind = PassKind.EXACT

    def rules(self):
        return [DoubleRelu()]


def test_rule_pass_counts_under_the_rule_name_and_collects_skips():
    model = parse(MODEL)
    result, after = apply(FoldRelu(), model)
    assert result.modified and result.stats == {"relu_folded": 1}
    assert len(result.notes) == 1 and result.notes[0].endswith("folded")
    assert [s.reason for s in result.skipped] == ["the inner Relu feeds other nodes"]
    np.testing.assert_allclose(outputs(after)["y"], outputs(model)["y"])
    assert ops(after).count("Relu") == 2
    again, _ = apply(FoldRelu(), after)
    assert not again.modified and again.stats == {"relu_folded": 0}


def test_graph_io_rule_refuses_unknown_names_listing_the_real_ones():
    with pytest.raises(PassError, match=r"no graph output 'nope' \(outputs: y, z\)"):
        apply(get_pass("fp16-output")(outputs=("nope",)), parse(MODEL))
    with pytest.raises(PassError, match=r"no graph input 'nope' \(inputs: x\)"):
        apply(get_pass("fp16-input")(inputs=("nope",)), parse(MODEL))


def test_graph_io_rule_keeps_names_and_order():
    result, after = apply(get_pass("fp16-output")(outputs=("z",)), parse(MODEL))
    assert result.stats == {"outputs_cast": 1}
    assert [o.name for o in after.graph.output] == ["y", "z"]
    assert after.graph.output[1].type.tensor_type.elem_type == 10  # FLOAT16


def test_select_names_the_closest_nodes_not_every_node():
    from types import SimpleNamespace

    from onnxforge.errors import PassError
    from onnxforge.passes._rewrite import select

    nodes = [SimpleNamespace(name=f"/layer{i}/Conv") for i in range(500)]
    with pytest.raises(PassError, match=r"no graph node '/layer7/Cnv' \(closest: /layer7/Conv") as err:
        select("fp16", "node", ["/layer7/Cnv"], nodes)
    assert len(str(err.value)) < 300
    with pytest.raises(PassError, match=r"nodes: /layer0/Conv, .*\.\.\. \(500 in all\)"):
        select("fp16", "node", ["zzz"], nodes)
    with pytest.raises(PassError, match="the graph has no nodes"):
        select("fp16", "node", ["a"], [])

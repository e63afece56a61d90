"""The manager's contract checks: modified=False means unchanged (byte for byte), crashes are PassCrash,
ModelState.types() in any order, IR-3 rules applied at export."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from onnxforge.errors import PassCrash, PassError
from onnxforge.passes import Pass, PassKind, PassManager, PassResult
from onnxforge.passes.base import ModelState
from onnxforge.passes.manager import fingerprint
from onnxforge.passes.registry import get_pass
from tests.passes.helpers import parse

MODEL = """
g (float[1,4,8,8] x) => (float[1,4,8,8] y) {
  r = Relu(x)
  y = Sigmoid(r)
}"""


class LiesAboutChanges(Pass):
    name = "lies-about-changes"
    summary = "test pass"
    kind = PassKind.EXACT

    def run(self, state):
        state.graph.nodes[1].op = "Tanh"
        return PassResult(False)


class ReadsAndLeaves(Pass):
    name = "reads-and-leaves"
    summary = "test pass"
    kind = PassKind.EXACT

    def run(self, state):
        _ = state.graph.nodes  # holds the graph (a graphsurgeon round trip) but changes nothing
        return PassResult(False, notes=["nothing"])


class Crashes(Pass):
    name = "crashes"
    summary = "test pass"
    kind = PassKind.EXACT

    def run(self, state):
        return {}["missing"]


def test_unmodified_pass_that_changed_the_graph_is_an_internal_error():
    with pytest.raises(PassCrash, match="internal error in pass 'lies-about-changes'.*modified=False but changed the graph"):
        PassManager([LiesAboutChanges()]).run(parse(MODEL))


def test_crash_is_pass_crash_with_a_reproducer_not_a_user_error():
    with pytest.raises(PassCrash) as info:
        PassManager([get_pass("drop-softmax-argmax")(), Crashes()]).run(parse(MODEL))
    text = str(info.value)
    assert "internal error in pass 'crashes' (#2 of 2, after drop-softmax-argmax): KeyError" in text
    assert "please report" in text and "onnxforge optimize" in text and "--passes 'crashes'" in text
    assert isinstance(info.value, PassError) and "\n" not in text


def _ir3_model() -> onnx.ModelProto:
    """An old IR-3 model: weights are initializers and graph inputs too (as exporters wrote them then)."""
    w = onnx.numpy_helper.from_array(np.full((1, 4, 1, 1), 0.5, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["m"], name="mul"), helper.make_node("Relu", ["m"], ["y"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2]), helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 4, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2, 2])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("pass_", [ReadsAndLeaves(), get_pass("resize-nearest")(), get_pass("label-upsample")()])
def test_a_pass_with_nothing_to_do_leaves_the_model_byte_for_byte(pass_):
    model = _ir3_model()
    result = PassManager([pass_]).run(model)
    assert not result.stages[0].modified
    out = result.model
    del out.metadata_props[:]  # the manager records the pipeline there, nothing else
    assert out.SerializeToString() == model.SerializeToString()


def test_ir3_initializers_added_by_a_pass_are_graph_inputs():
    out = PassManager("fp16-output,fp16").run(_ir3_model()).model
    assert out.ir_version == 3
    inputs = {vi.name for vi in out.graph.input}
    assert {t.name for t in out.graph.initializer} <= inputs
    onnx.checker.check_model(out)


def test_fingerprint_sees_structure_not_weight_bytes():
    model = _ir3_model()
    other = onnx.ModelProto()
    other.CopyFrom(model)
    other.graph.initializer[0].raw_data = np.zeros((1, 4, 1, 1), np.float32).tobytes()
    assert fingerprint(other) == fingerprint(model)
    other.graph.node[1].op_type = "Sigmoid"
    assert fingerprint(other) != fingerprint(model)


def test_types_in_any_order_and_fresh_after_the_graph_is_handed_out_again():
    state = ModelState(parse(MODEL))
    graph = state.graph  # first: the graph, then types (no ordering trap)
    assert state.types()["r"] == (TensorProto.FLOAT, (1, 4, 8, 8))
    first = ModelState(parse(MODEL))
    assert first.types() == state.types()  # types first, then the graph: the same answer
    _ = first.graph
    assert first.types() is not None
    # change the graph: handing it out again drops the cached types
    graph.nodes[0].outputs[0].shape = None
    cast = gs.Variable("c", dtype=np.int64)
    graph.nodes.append(gs.Node("Cast", attrs={"to": TensorProto.INT64}, inputs=[graph.outputs[0]], outputs=[cast]))
    graph.outputs.append(cast)
    assert "c" not in state.types()  # cached
    _ = state.graph
    assert state.types()["c"][0] == TensorProto.INT64


@pytest.mark.parametrize("verify", [True, False])
def test_contract_check_also_when_the_state_holds_a_graph(verify):
    """Without the verifier the state still holds the previous pass's graph: checked on the graph."""
    with pytest.raises(PassCrash, match="modified=False but changed the graph"):
        PassManager([get_pass("fp16-output")(), LiesAboutChanges()], verify=verify).run(parse(MODEL))
    result = PassManager([get_pass("fp16-output")(), ReadsAndLeaves()], verify=verify).run(parse(MODEL))
    assert [s.modified for s in result.stages] == [True, False]


def test_ir3_transdata_align_padded_weights_are_graph_inputs():
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((3, 2, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4]), helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 2, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    result = PassManager("transdata-align").run(model)
    assert result.stages[0].modified and result.stages[0].verification.status == "passed"
    out = result.model
    assert out.ir_version == 3
    assert {t.name for t in out.graph.initializer} <= {vi.name for vi in out.graph.input}
    onnx.checker.check_model(out)


LOGITS = """
g (float[1,5,4,4] x) => (float[1,5,8,8] y) {
  s = Constant<value = float[4] {1.0, 1.0, 2.0, 2.0}>()
  r = Relu(x)
  y = Resize<mode = "linear", coordinate_transformation_mode = "half_pixel">(r, , s)
}"""


@pytest.mark.parametrize("verify", [True, False])
def test_an_unmodified_pass_after_a_rewrite_is_not_mistaken_for_a_change(verify):
    """The held graph (annotated by the rewrite) and its export differ in inner annotations only."""
    result = PassManager("label-upsample,merge-slices,drop-softmax-argmax", verify=verify).run(parse(LOGITS))
    assert [s.modified for s in result.stages] == [True, False, False]

"""The pass manager: verification after each pass, failures that name the pass, stage dumps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest

from onnxforge.errors import PassError
from onnxforge.modelio import load_model
from onnxforge.passes import DumpStages, Pass, PassKind, PassManager, PassResult
from onnxforge.passes.manager import PIPELINE_METADATA_KEY
from tests.passes.helpers import outputs, parse

MODEL = """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  w = Constant<value = float[4,3,1,1] {1,2,3,4,5,6,7,8,9,10,11,12}>()
  c = Conv(x, w)
  i = Identity(c)
  y = Relu(i)
}"""


@dataclass(frozen=True)
class _NoOpts:
    pass


class BreaksNumerics(Pass):
    """Claims to be exact but scales the output: the verifier must catch it."""

    name = "breaks-numerics"
    summary = "test pass"
    kind = PassKind.EXACT

    def run(self, state):
        import onnx_graphsurgeon as gs

        g = state.graph
        out = g.outputs[0]
        relu = out.inputs[0]
        mid = gs.Variable("scaled_in", dtype=np.float32, shape=out.shape)
        two = gs.Constant("two", np.array(2.0, dtype=np.float32))
        relu.outputs = [mid]
        g.nodes.append(gs.Node("Mul", inputs=[mid, two], outputs=[out]))
        return PassResult(True)


class BreaksStructure(Pass):
    name = "breaks-structure"
    summary = "test pass"
    kind = PassKind.APPROXIMATE

    def run(self, state):
        state.graph.nodes[0].op = "NoSuchOp"
        return PassResult(True)


class DoesNothing(Pass):
    name = "does-nothing"
    summary = "test pass"
    kind = PassKind.EXACT

    def run(self, state):
        return PassResult(False, notes=["no candidate: test"])


def test_records_stats_verification_and_metadata():
    model = parse(MODEL)
    result = PassManager("simplify,fp16-output").run(model)
    s1, s2 = result.stages
    assert (s1.name, s1.modified, s1.kind, s1.verification.status) == ("simplify", True, "exact", "passed")
    assert s1.nodes_before == 4 and s1.nodes_after == 2  # Identity removed, the weight Constant an initializer
    assert (s2.name, s2.kind, s2.verification.status) == ("fp16-output", "approximate", "measured")
    assert 0 < s2.verification.max_abs < 0.1
    meta = {p.key: p.value for p in result.model.metadata_props}
    assert meta[PIPELINE_METADATA_KEY] == "simplify,fp16-output"
    np.testing.assert_allclose(outputs(result.model)["y"], outputs(model)["y"], rtol=1e-2, atol=1e-2)


def test_input_model_is_not_mutated():
    model = parse(MODEL)
    before = model.SerializeToString()
    PassManager("simplify,fp16-output").run(model)
    assert model.SerializeToString() == before


def test_unmodified_pass_says_why():
    result = PassManager([DoesNothing()]).run(parse(MODEL))
    stage = result.stages[0]
    assert not stage.modified and stage.notes == ["no candidate: test"]
    assert stage.verification.status == "unchanged"


def test_exact_pass_that_changes_numbers_fails_naming_the_pass():
    manager = PassManager([DoesNothing(), BreaksNumerics()])
    with pytest.raises(PassError) as info:
        manager.run(parse(MODEL))
    msg = str(info.value)
    assert "pass 'breaks-numerics' (#2 of 2, after does-nothing)" in msg
    assert "outputs differ" in msg


def test_invalid_graph_fails_verification():
    with pytest.raises(PassError, match="breaks-structure.*invalid model"):
        PassManager([BreaksStructure()]).run(parse(MODEL))


def test_no_verify_skips_numeric_check():
    result = PassManager([BreaksNumerics()], verify=False).run(parse(MODEL))
    assert result.stages[0].verification.status == "off"


def test_dump_stages_and_reproducer(tmp_path):
    PassManager("simplify,fp16-output", instruments=[DumpStages(tmp_path)]).run(parse(MODEL))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000_input.onnx", "001_simplify.onnx", "002_fp16-output.onnx"]
    assert load_model(tmp_path / "002_fp16-output.onnx").graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16

    fail_dir = tmp_path / "fail"
    with pytest.raises(PassError):
        PassManager([DoesNothing(), BreaksNumerics()], instruments=[DumpStages(fail_dir)]).run(parse(MODEL))
    repro = (fail_dir / "reproduce.txt").read_text()
    assert "001_does-nothing.onnx" in repro and "--passes 'breaks-numerics'" in repro


def test_manager_is_reusable_across_models():
    manager = PassManager("simplify")
    a = manager.run(parse(MODEL))
    b = manager.run(parse(MODEL.replace("Relu", "Sigmoid")))
    assert [n.op_type for n in a.model.graph.node][-1] == "Relu"
    assert [n.op_type for n in b.model.graph.node][-1] == "Sigmoid"


def test_dynamic_spatial_dims_are_verified_numerically_at_a_default_shape():
    model = parse("""
g (float[1,3,H,W] x) => (float[1,3,H,W] y) {
  i = Identity(x)
  y = Relu(i)
}""")
    stage = PassManager("simplify").run(model).stages[0]
    assert stage.verification.status == "passed", stage.verification.detail
    assert stage.verification.inputs.startswith("x:1x3x32x32 (default")


class FlipsLabels(Pass):
    """Claims to be exact on a label output; flips `n` labels (as float ties can, or as a bug does)."""

    name = "flips-labels"
    summary = "test pass"
    kind = PassKind.EXACT

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def run(self, state):
        import onnx_graphsurgeon as gs

        g = state.graph
        out = g.outputs[0]
        mid = gs.Variable("labels_in", dtype=np.int64, shape=out.shape)
        out.inputs[0].outputs = [mid]
        flip = np.zeros(out.shape, np.int64)
        flip.reshape(-1)[: self.n] = 1
        g.nodes.append(gs.Node("Add", inputs=[mid, gs.Constant("flip", flip)], outputs=[out]))
        return PassResult(True)


LABELS = """
g (float[1,4,100,100] x) => (int64[1,1,100,100] y) {
  y = ArgMax<axis = 1, keepdims = 1>(x)
}"""


def test_label_outputs_tolerate_rare_argmax_ties_but_not_real_changes():
    ok = PassManager([FlipsLabels(1)]).run(parse(LABELS)).stages[0].verification  # 1 of 10000 = 1e-4
    assert ok.status == "passed" and "labels differ" in ok.detail
    with pytest.raises(PassError, match="outputs differ"):
        PassManager([FlipsLabels(5)]).run(parse(LABELS))

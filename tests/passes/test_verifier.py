"""The verifier on dynamic inputs: concrete shapes from the user, the history or a default; user data;
tolerances; per-output statistics; a structural fallback that says why; bad input as one clear error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxforge.errors import InputSpecError, PassError
from onnxforge.numerics import load_input_arrays
from onnxforge.passes import Pass, PassKind, PassManager, PassResult, Verifier
from tests.passes.helpers import parse

# Identity -> Relu with every dim dynamic (N, C, H, W as symbols).
DYNAMIC = """
g (float[N,C,H,W] x) => (float[N,C,H,W] y) {
  i = Identity(x)
  y = Relu(i)
}"""

# A graph that only runs when H and W are at least 64: MaxPool with a 64x64 window, no padding.
NEEDS_64 = """
g (float[N,3,H,W] x) => (float[N,3,?,?] y) {
  i = Identity(x)
  y = MaxPool<kernel_shape = [64, 64]>(i)
}"""


def _paddle(model: onnx.ModelProto) -> onnx.ModelProto:
    for vi in list(model.graph.input) + list(model.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                d.dim_value = -1
    return model


def _run(model, **verify):
    return PassManager("simplify", verifier=Verifier(**verify)).run(model).stages[0].verification


class Nudge(Pass):
    """Claims to be exact; adds `delta` to the output (a small bug, or float rounding)."""

    name = "nudge"
    summary = "test pass"
    kind = PassKind.EXACT

    def __init__(self, delta: float) -> None:
        super().__init__()
        self.delta = delta

    def run(self, state):
        import onnx_graphsurgeon as gs

        g = state.graph
        out = g.outputs[0]
        mid = gs.Variable("pre_nudge", dtype=np.float32)
        out.inputs[0].outputs = [mid]
        g.nodes.append(gs.Node("Add", inputs=[mid, gs.Constant("delta", np.array(self.delta, np.float32))], outputs=[out]))
        return PassResult(True)


def test_default_shape_is_batch_1_channels_3_and_the_smallest_size():
    v = _run(parse(DYNAMIC))
    assert v.status == "passed", v.detail
    assert v.inputs == "x:1x3x32x32 (default: smallest of 32/64/128/224/256/512/640 that runs)"
    assert [o.name for o in v.outputs] == ["y"] and v.outputs[0].max_abs == 0.0 and v.outputs[0].max_rel == 0.0


def test_default_tries_sizes_smallest_first_until_the_graph_runs():
    v = _run(parse(NEEDS_64))
    assert v.status == "passed", v.detail
    assert v.inputs.startswith("x:1x3x64x64 (default")


def test_dim_value_minus_one_is_dynamic_and_verified():
    v = _run(_paddle(parse(DYNAMIC)))
    assert v.status == "passed" and v.inputs.startswith("x:1x3x32x32")


def test_user_shape_wins():
    v = _run(parse(DYNAMIC), shapes={"x": (2, 3, 40, 50)})
    assert v.status == "passed" and v.inputs == "x:2x3x40x50 (--verify-shape)"


def test_static_shape_history_in_the_pipeline_is_used_from_the_start():
    result = PassManager("simplify,static-shape{shape=x:1x3x96x80}").run(parse(DYNAMIC))
    first, second = (s.verification for s in result.stages)
    assert first.status == "passed" and first.inputs == "x:1x3x96x80 (static-shape history)"
    assert second.status == "passed"


def test_static_shape_history_in_the_model_metadata_is_used():
    model = parse(DYNAMIC)
    onnx.helper.set_model_props(model, {"onnxforge.pipeline": "static-shape{shape=x:1x3x48x48}"})
    assert _run(model).inputs == "x:1x3x48x48 (static-shape history)"


def test_user_inputs_are_used_and_checked(tmp_path):
    model = parse(DYNAMIC)
    data = np.full((1, 3, 5, 7), -2.0, np.float32)
    np.save(tmp_path / "x.npy", data)
    np.savez(tmp_path / "x.npz", x=data)
    for path in ("x.npy", "x.npz"):
        arrays = load_input_arrays(model, [tmp_path / path])
        assert arrays["x"].shape == (1, 3, 5, 7)
        v = _run(model, inputs=arrays)
        assert v.status == "passed" and v.inputs == "x:1x3x5x7 (your input)"


def test_tolerances_are_the_users():
    model = parse(DYNAMIC)
    with pytest.raises(PassError, match="outputs differ"):
        PassManager([Nudge(1e-3)]).run(model)
    stage = PassManager([Nudge(1e-3)], verifier=Verifier(atol=1e-2)).run(model).stages[0]
    assert stage.verification.status == "passed"
    assert stage.verification.outputs[0].max_abs == pytest.approx(1e-3, rel=1e-3)


def test_per_output_statistics_on_failure_name_the_output_and_the_shape():
    with pytest.raises(PassError, match=r"on x:1x3x32x32 \(default.*y: MISMATCH"):
        PassManager([Nudge(0.5)]).run(parse(DYNAMIC))


def test_structural_only_when_onnxruntime_cannot_run_and_the_record_says_why():
    model = parse("""
g (float[1,3,H,W] x) => (float[1,3,H,W] y) {
  i = Identity(x)
  y = Relu(i)
}""")
    model.graph.node[1].op_type = "NoSuchOp"
    model.graph.node[1].domain = "custom.domain"
    model.opset_import.append(onnx.helper.make_opsetid("custom.domain", 1))
    stage = PassManager("simplify").run(model).stages[0]
    assert stage.verification.status == "structural"
    assert stage.verification.detail.startswith("numeric check off, structural checks only: onnxruntime cannot load the graph")


def test_structural_when_no_shape_runs_lists_what_was_tried():
    v = _run(parse(NEEDS_64), sizes=(8, 16))
    assert v.status == "structural"
    assert "no input shape runs" in v.detail and "x:1x3x8x8 | x:1x3x16x16" in v.detail and "--verify-shape" in v.detail


@pytest.mark.parametrize("shapes, message", [
    ({"nope": (1, 3, 8, 8)}, "no graph input 'nope'"),
    ({"x": (1, 3, 8)}, "has rank 4"),
    ({"x": (2, 3, 8, 8)}, "dimension 0 is 1"),
])
def test_bad_shapes_are_one_clear_error(shapes, message):
    model = parse("""
g (float[1,3,H,W] x) => (float[1,3,H,W] y) {
  y = Relu(x)
}""")
    with pytest.raises(InputSpecError, match=message):
        _run(model, shapes=shapes)


def test_bad_input_files_are_one_clear_error(tmp_path):
    model = parse("""
g (float[1,3,H,W] x) => (float[1,3,H,W] y) {
  y = Relu(x)
}""")
    np.save(tmp_path / "rank.npy", np.zeros((3, 8, 8), np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((1, 3, 8, 8), np.int64))
    np.savez(tmp_path / "other.npz", z=np.zeros((1, 3, 8, 8), np.float32))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    for name, message in [("rank.npy", "has rank 4"), ("ints.npy", "the array is int64"),
                          ("other.npz", "no graph input 'z'"), ("junk.npy", "not a .npy/.npz"), ("missing.npy", "no such file")]:
        with pytest.raises(InputSpecError, match=message):
            load_input_arrays(model, [tmp_path / name])
    with pytest.raises(InputSpecError, match="non-negative"):
        Verifier(atol=-1.0)


def test_verification_sessions_take_large_weights_as_inputs_not_serialised(monkeypatch):
    """The verifier's sessions are built from the model without its large weights (fed as arrays):
    the serialised graph onnxruntime loads is small, and the verdict is the same."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import onnxforge.passes.manager as manager
    from onnxforge.passes import PassManager

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Identity", ["m"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 32])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    loaded = []
    real = manager.make_session

    def recording(m, **kw):
        loaded.append(m.ByteSize() if isinstance(m, onnx.ModelProto) else len(m))
        return real(m, **kw)

    monkeypatch.setattr(manager, "make_session", recording)
    result = PassManager("simplify").run(model)
    assert result.stages[0].modified and result.stages[0].verification.status == "passed"
    assert loaded and max(loaded) < 64 * 32 * 4, loaded  # the 8 KB weight never went into a session

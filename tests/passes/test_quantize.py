"""quantize: structure (which nodes get Q/DQ), the documented bound, exclusions, calibration data, bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxforge.errors import PassError, PipelineError
from onnxforge.numerics import run_model, seeded_inputs
from onnxforge.passes import PassManager, parse_pipeline
from onnxforge.passes.base import ModelState
from onnxforge.passes.quantize import Quantize
from tests.conftest import assert_one_line_error
from tests.passes.helpers import op_counts

Q_OPS = ("QuantizeLinear", "DequantizeLinear")
BOUND = 0.05  # documented in passes/quantize.py: within 5% of max|reference| on small conv nets


def _convnet(opset: int = 17, batch: int = 1) -> onnx.ModelProto:
    """x -> conv1 -> relu1 -> conv2 -> add(conv2, relu1) -> conv3 -> pool -> y: Convs, a residual Add, named nodes."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32), "w2"),
        numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32), "w3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "w3"], ["c3"], name="conv3"),
        helper.make_node("MaxPool", ["c3"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    graph = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _elementwise() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Add", ["r", "x"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "ew", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _apply(p: Quantize, model: onnx.ModelProto):
    state = ModelState(model)
    result = p.run(state)
    return result, state.release()


def _fed_by_dq(model: onnx.ModelProto, node_name: str) -> list[bool]:
    """For each input of the named node: whether a DequantizeLinear produces it."""
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    node = next(n for n in model.graph.node if n.name == node_name)
    return [i in dq for i in node.input]


# -- structure ------------------------------------------------------------------------------------

def test_quantizes_convs_with_per_channel_weights_and_keeps_io():
    model = _convnet()
    result, q = _apply(Quantize(), model)
    assert result.modified
    assert result.stats["compute_int8"] == 3 and result.stats["compute_float"] == 0
    assert _fed_by_dq(q, "conv1") == [True, True, True] and _fed_by_dq(q, "conv2") == [True, True]
    counts = op_counts(q)
    assert counts["Conv"] == 3 and counts["QuantizeLinear"] >= 2 and counts["DequantizeLinear"] >= 5
    # weights are int8 with one scale per output channel (axis 0)
    conv1 = next(n for n in q.graph.node if n.name == "conv1")
    w_dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == conv1.input[1])
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    assert inits[w_dq.input[0]].dtype == np.int8 and inits[w_dq.input[1]].shape == (8,)
    # the graph's interface is unchanged
    assert [(i.name, i.type.tensor_type.elem_type) for i in q.graph.input] == [("x", TensorProto.FLOAT)]
    assert [(o.name, o.type.tensor_type.elem_type) for o in q.graph.output] == [("y", TensorProto.FLOAT)]
    onnx.checker.check_model(q, full_check=True)
    assert "w1" in {t.name for t in model.graph.initializer}  # the input model is not modified
    assert not any(n.op_type in Q_OPS for n in model.graph.node)


def test_outputs_within_documented_bound():
    model = _convnet()
    _, q = _apply(Quantize(), model)
    feeds = seeded_inputs(model, seed=1234)  # not one of the calibration seeds
    ref, got = run_model(model, feeds)["y"], run_model(q, feeds)["y"]
    err = float(np.abs(got - ref).max())
    assert err <= BOUND * float(np.abs(ref).max())
    assert err > 0  # it is quantized, not a copy


def test_deterministic_and_stateless():
    p = Quantize(method="entropy", images=4)
    _, a = _apply(p, _convnet())
    _, b = _apply(p, _convnet())
    assert a.SerializeToString() == b.SerializeToString()


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_each_calibration_method_quantizes(method):
    result, q = _apply(Quantize(method=method, images=4), _convnet())
    assert result.modified and result.stats["method"] == method
    feeds = seeded_inputs(q, seed=99)
    ref = run_model(_convnet(), feeds)["y"]
    assert np.abs(run_model(q, feeds)["y"] - ref).max() <= 2 * BOUND * np.abs(ref).max()


def test_calibration_method_changes_ranges():
    def scales(q):
        inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
        return [float(inits[n.input[1]]) for n in q.graph.node if n.op_type == "QuantizeLinear"]
    _, mm = _apply(Quantize(method="minmax"), _convnet())
    _, pc = _apply(Quantize(method="percentile", percentile=99.0), _convnet())
    assert all(p <= m + 1e-12 for p, m in zip(scales(pc), scales(mm)))  # a 99% clip never widens a range
    assert scales(pc) != scales(mm)


# -- selection: exclude=, exclude_types=, nodes=, candidates/with_nodes ------------------------------

def test_exclude_keeps_the_named_node_float():
    result, q = _apply(Quantize(exclude=("conv2",)), _convnet())
    assert result.modified
    assert _fed_by_dq(q, "conv2")[1] is False  # its weight stays a float initializer
    w2 = next(t for t in q.graph.initializer if t.name == "w2")
    assert w2.data_type == TensorProto.FLOAT
    assert _fed_by_dq(q, "conv1") == [True, True, True]
    assert any(s.target == "conv2" and "exclude=" in s.reason for s in result.skipped)
    assert result.stats["compute_float"] == 1


def _conv_matmul() -> onnx.ModelProto:
    """x -> conv -> relu -> flatten -> matmul -> y: a Conv and a MatMul, each with constant weights."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "wc"),
             numpy_helper.from_array((rng.standard_normal((256, 10)) * 0.1).astype(np.float32), "wm")]
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "wm"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(nodes, "cm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("excluded,kept", [("Conv", "matmul"), ("MatMul", "conv")])
def test_exclude_types_keeps_that_op_type_float(excluded, kept):
    result, q = _apply(Quantize(exclude_types=(excluded,)), _conv_matmul())
    assert result.modified
    float_node = "conv" if excluded == "Conv" else "matmul"
    assert _fed_by_dq(q, float_node)[1] is False  # its weight stays a float initializer
    assert _fed_by_dq(q, kept)[1] is True
    assert any(s.target == float_node and "exclude_types" in s.reason for s in result.skipped)
    assert result.stats["compute_int8"] == 1 and result.stats["compute_float"] == 1


def test_candidates_and_with_nodes():
    p = Quantize(exclude=("add",))
    names = p.candidates(_convnet())
    assert names == ["conv1", "relu1", "conv2", "conv3", "pool"]
    only = p.with_nodes(["conv1"])
    assert only.candidates(_convnet()) == ["conv1"]
    assert str(only) == "quantize{nodes=conv1}"
    _, q = _apply(only, _convnet())
    assert _fed_by_dq(q, "conv1")[1] is True and _fed_by_dq(q, "conv2")[1] is False


def test_no_compute_op_is_a_clean_noop_with_a_reason():
    model = _elementwise()
    result, out = _apply(Quantize(), model)
    assert not result.modified
    assert "no Conv" in result.why_nothing()
    assert [n.op_type for n in out.graph.node] == ["Relu", "Add"]
    result, _ = _apply(Quantize(exclude_types=("Conv",)), _convnet())
    assert not result.modified and "no Conv" in result.why_nothing()


# -- calibration file -------------------------------------------------------------------------------

def test_calibration_file_sets_the_input_range(tmp_path):
    rng = np.random.default_rng(5)
    data = (rng.random((6, 3, 16, 16)) * 4.0 - 1.0).astype(np.float32)  # range [-1, 3]: not standard normal
    path = tmp_path / "calib.npz"
    np.savez(path, x=data)
    result, q = _apply(Quantize(calibration=str(path), images=6), _convnet())
    assert str(path) in result.stats["calibration"]
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    qx = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    # minmax, uint8 asymmetric: scale = (max - min) / 255 of exactly these samples
    assert float(inits[qx.input[1]]) == pytest.approx((data.max() - min(data.min(), 0.0)) / 255.0, rel=1e-5)
    # only the first `images` samples are used
    result, q2 = _apply(Quantize(calibration=str(path), images=2), _convnet())
    inits2 = {t.name: numpy_helper.to_array(t) for t in q2.graph.initializer}
    assert float(inits2[qx.input[1]]) == pytest.approx((data[:2].max() - min(data[:2].min(), 0.0)) / 255.0, rel=1e-5)


def test_calibration_file_in_batches_of_a_static_batch(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, anyname=np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32))
    result, _ = _apply(Quantize(calibration=str(path), images=4), _convnet(batch=2))
    assert result.modified
    with pytest.raises(PassError, match="multiple of the model's batch 2"):
        _apply(Quantize(calibration=str(path), images=3), _convnet(batch=2))


@pytest.mark.parametrize("arrays,images,match", [
    ({"x": np.zeros((3, 3, 16, 16), np.float32)}, 8, "has 3 samples for 'x', images=8 requested"),
    ({"x": np.zeros((8, 3, 8, 8), np.float32)}, 8, r"samples of shape \[3, 8, 8\]"),
    ({"a": np.zeros((8, 3, 16, 16), np.float32), "b": np.zeros((8, 3, 16, 16), np.float32)}, 8, "no array for input 'x'"),
])
def test_bad_calibration_file(tmp_path, arrays, images, match):
    path = tmp_path / "calib.npz"
    np.savez(path, **arrays)
    with pytest.raises(PassError, match=match):
        _apply(Quantize(calibration=str(path), images=images), _convnet())


def test_missing_or_corrupt_calibration_file(tmp_path):
    with pytest.raises(PassError, match="no such file"):
        _apply(Quantize(calibration=str(tmp_path / "nope.npz")), _convnet())
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(PassError, match="not a readable .npz"):
        _apply(Quantize(calibration=str(bad)), _convnet())


# -- bad input ----------------------------------------------------------------------------------------

def test_unknown_method_is_a_pipeline_error():
    with pytest.raises(PipelineError, match="unknown calibration method 'kl'"):
        Quantize(method="kl")
    with pytest.raises(PipelineError, match="kl"):
        parse_pipeline("quantize{method=kl}")


def test_excluding_a_node_that_does_not_exist():
    with pytest.raises(PassError, match="no node named 'conv9'"):
        _apply(Quantize(exclude=("conv9",)), _convnet())
    with pytest.raises(PassError, match="no node named 'conv9'"):
        Quantize(nodes=("conv9",)).candidates(_convnet())


def test_already_quantized_model_is_refused():
    _, q = _apply(Quantize(), _convnet())
    with pytest.raises(PassError, match="already quantized"):
        _apply(Quantize(), q)


def test_opset_below_13_with_per_channel_is_refused_per_tensor_works():
    with pytest.raises(PassError, match=r"opset 11.*target-opset\{opset=13\}"):
        _apply(Quantize(), _convnet(opset=11))
    result, q = _apply(Quantize(per_channel=False), _convnet(opset=11))
    assert result.modified
    run_model(q, seeded_inputs(q))  # onnxruntime loads and runs it


@pytest.mark.parametrize("opts", [{"images": 0}, {"percentile": 0.0}, {"nodes": ("a",), "exclude": ("a",)}])
def test_bad_option_values(opts):
    with pytest.raises(PipelineError):
        Quantize(**opts)


# -- pipeline and manager -------------------------------------------------------------------------------

def test_pipeline_round_trip():
    text = "quantize{method=entropy,images=16,exclude=conv2|add,exclude_types=MaxPool}"
    pipe = parse_pipeline(text)
    assert str(pipe) == text
    assert str(parse_pipeline(str(pipe))) == text


def test_manager_runs_simplify_then_quantize():
    result = PassManager("simplify,quantize{images=2}").run(_convnet())
    assert op_counts(result.model)["QuantizeLinear"] >= 2
    assert result.stages[-1].kind == "approximate" and result.stages[-1].modified


def test_cli_bad_exclude_writes_nothing(tmp_path, cli):
    src = tmp_path / "m.onnx"
    onnx.save(_convnet(), src)
    out = tmp_path / "q.onnx"
    proc = cli("optimize", src, "-o", out, "--passes", "quantize{exclude=conv9}")
    assert_one_line_error(proc, "conv9")
    assert not out.exists()
    proc = cli("optimize", src, "-o", out, "--passes", "simplify,quantize{images=2}")
    assert proc.returncode == 0, proc.stderr
    q = onnx.load(out)
    assert op_counts(q)["QuantizeLinear"] >= 2
    run_model(q, seeded_inputs(q))


def test_unnamed_nodes_are_named_and_quantized():
    model = _conv_matmul()
    for node in model.graph.node:
        node.name = ""
    p = Quantize()
    assert p.candidates(model) == ["Conv_quantize_0", "Relu_quantize_1", "Flatten_quantize_2", "MatMul_quantize_3"]
    result, q = _apply(p, model)
    assert result.modified and result.stats["nodes_named"] == 4 and result.stats["compute_int8"] == 2
    _, q2 = _apply(Quantize(exclude=("MatMul_quantize_3",)), model)
    assert _fed_by_dq(q2, "MatMul_quantize_3")[1] is False and _fed_by_dq(q2, "Conv_quantize_0")[1] is True


def test_ranges_file_reused_gives_the_same_model(tmp_path):
    from onnxforge.passes.quantize import calibrate_ranges

    path = calibrate_ranges(_convnet(), tmp_path / "ranges.json", Quantize(images=4).options)
    assert path.is_file()
    _, direct = _apply(Quantize(images=4, exclude=("conv2",)), _convnet())
    result, cached = _apply(Quantize(ranges=str(path), exclude=("conv2",)), _convnet())
    assert result.stats["calibration"] == f"ranges from {path}"
    assert [n.op_type for n in cached.graph.node] == [n.op_type for n in direct.graph.node]
    a = {t.name: numpy_helper.to_array(t) for t in direct.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in cached.graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(PassError, match="no such file"):
        _apply(Quantize(ranges=str(tmp_path / "none.json")), _convnet())


def test_sharing_calibration_copies_keep_the_ranges_through_with_nodes(tmp_path):
    shared = Quantize(images=4, method="entropy").sharing_calibration(_convnet(), tmp_path)
    assert shared.options.ranges == str(tmp_path / "ranges.json") and (tmp_path / "ranges.json").is_file()
    assert shared.options.method == "entropy" and shared.options.images == 4
    variant = shared.with_nodes(["conv1"])
    assert variant.options.ranges == shared.options.ranges and variant.options.nodes == ("conv1",)
    assert shared.sharing_calibration(_convnet(), tmp_path / "elsewhere") is shared  # ranges given: nothing to do
    with pytest.raises(PassError, match="nothing to calibrate"):
        Quantize().sharing_calibration(_elementwise(), tmp_path)

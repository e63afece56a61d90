"""Layer-by-layer comparison against NPU dumps the tests write themselves in ais_bench/msit's layout."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxforge.errors import EvaluationError, InputSpecError
from onnxforge.evaluate.dump_compare import (
    compare_dump, compare_tensors, dump_name, match_nodes, read_dump_dir, read_fusion_map, run_all_outputs,
)


def small_model() -> onnx.ModelProto:
    """x -> /conv1/Conv -> /relu/Relu -> Sub_26 -> Mul_28 -> /head/Conv -> y (names as exporters write them)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.float32(0.5).reshape(()), "c"),
             numpy_helper.from_array(np.float32(2.0).reshape(()), "k"),
             numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["/conv1/Conv_output_0"], name="/conv1/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["/conv1/Conv_output_0"], ["/relu/Relu_output_0"], name="/relu/Relu"),
             helper.make_node("Sub", ["/relu/Relu_output_0", "c"], ["sub"], name="Sub_26"),
             helper.make_node("Mul", ["sub", "k"], ["mul"], name="Mul_28"),
             helper.make_node("Conv", ["mul", "w2"], ["y"], name="/head/Conv")]
    g = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def write_dump(root, model, x, perturb=(), fuse=False, stamp=1700000000000000, raw=False):
    """The converted dump in msit's layout: {ts}/0/{om}/1/0/{type}.{name}.{task}.{stream}.{ts}.output.0.npy."""
    golden = run_all_outputs(model, {"x": x}, [n.output[0] for n in model.graph.node])
    folder = root / "20240101_120000" / "0" / "small" / "1" / "0"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for task, node in enumerate(model.graph.node):
        if fuse and node.name == "Sub_26":
            continue  # fused into Mul_28 by atc: one op named Sub_26Mul_28
        name = "Sub_26Mul_28" if fuse and node.name == "Mul_28" else dump_name(node.name)
        value = golden[node.output[0]].astype(np.float16).astype(np.float32)  # the device computes in fp16
        if node.name in perturb:
            value = value + rng.standard_normal(value.shape).astype(np.float32) * (np.abs(value).max() + 1)
        base = f"{node.op_type}.{name}.{task + 2}.{task % 3}.{stamp + task}"
        np.save(folder / f"{base}.output.0.npy", value)
        np.save(folder / f"{base}.input.0.npy", np.zeros(3, np.float32))  # inputs are not compared
        if raw:
            (folder / base).write_bytes(b"\x00raw dump")
    return folder


@pytest.fixture
def case(tmp_path):
    model = small_model()
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    onnx.save(model, tmp_path / "small.onnx")
    return model, x, tmp_path


def test_clean_dump_passes_every_op(case):
    model, x, tmp = case
    write_dump(tmp / "dump", model, x)
    result = compare_dump(tmp / "small.onnx", tmp / "dump", [tmp / "x.npy"])
    assert [r.op_name for r in result.rows] == ["_conv1_Conv", "_relu_Relu", "Sub_26", "Mul_28", "_head_Conv"]
    assert all(r.passed for r in result.rows) and result.first_failing is None
    assert all(r.cosine > 0.9999 and r.relative_distance < 1e-3 and 0 < r.max_abs < 0.05 for r in result.rows)  # fp16 rounding


def test_the_perturbed_node_is_named_first(case):
    model, x, tmp = case
    write_dump(tmp / "dump", model, x, perturb=("Mul_28", "/head/Conv"))  # the error propagates downstream
    result = compare_dump(model, tmp / "dump", [tmp / "x.npy"])
    first = result.first_failing
    assert first is not None and first.op_name == "Mul_28" and first.onnx_nodes == ["Mul_28"]
    assert first.cosine < 0.99 and "cosine" in first.reason
    assert [r.passed for r in result.rows] == [True, True, True, False, False]
    data = result.to_dict()
    assert data["first_failing"] == "Mul_28" and data["failing"] == 2 and data["thresholds"]["cosine_min"] == 0.99


def test_fused_op_compares_against_its_last_node(case):
    model, x, tmp = case
    write_dump(tmp / "dump", model, x, fuse=True, perturb=("Mul_28",))
    result = compare_dump(model, tmp / "dump", [tmp / "x.npy"])
    fused = next(r for r in result.rows if r.op_name == "Sub_26Mul_28")
    assert fused.onnx_nodes == ["Sub_26", "Mul_28"] and fused.onnx_output == "mul"
    assert result.first_failing is fused


def test_fusion_map_json_and_om_json(case, tmp_path):
    model, _, _ = case
    plain = tmp_path / "map.json"
    plain.write_text(json.dumps({"fused_0": ["Sub_26", "Mul_28"]}))
    assert read_fusion_map(plain) == {"fused_0": ["Sub_26", "Mul_28"]}
    assert [n.name for n in match_nodes("fused_0", model, read_fusion_map(plain))] == ["Sub_26", "Mul_28"]
    om = tmp_path / "om.json"
    om.write_text(json.dumps({"graph": [{"op": [{"name": "fused/op", "attr": [
        {"key": "_datadump_original_op_names", "value": {"list": {"s": ["/relu/Relu", "Sub_26"]}}}]}]}]}))
    assert read_fusion_map(om) == {"fused_op": ["/relu/Relu", "Sub_26"]}
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(EvaluationError, match="neither"):
        read_fusion_map(bad)


def test_latest_timestamp_wins_and_raw_files_are_reported(case):
    model, x, tmp = case
    write_dump(tmp / "dump", model, x, perturb=("Sub_26",), stamp=1700000000000000)
    write_dump(tmp / "dump", model, x, stamp=1800000000000000, raw=True)  # a later iteration, clean
    tensors, raw = read_dump_dir(tmp / "dump")
    assert len(tensors) == 5 and len(raw) == 5
    result = compare_dump(model, tmp / "dump", [tmp / "x.npy"])
    assert result.first_failing is None
    assert any("raw dump files" in n and "msaccucmp.py convert" in n for n in result.notes)


def test_device_layout_is_reshaped_and_a_wrong_size_fails(case):
    model, x, tmp = case
    folder = write_dump(tmp / "dump", model, x)
    golden = run_all_outputs(model, {"x": x}, ["/relu/Relu_output_0", "sub"])
    relu = next(folder.glob("Relu._relu_Relu.*.output.0.npy"))
    np.save(relu, golden["/relu/Relu_output_0"].reshape(1, 4, 64))  # same elements, another shape
    sub = next(folder.glob("Sub.Sub_26.*.output.0.npy"))
    np.save(sub, golden["sub"][:, :2])  # fewer elements than the ONNX output
    result = compare_dump(model, tmp / "dump", [tmp / "x.npy"])
    rows = {r.op_name: r for r in result.rows}
    assert rows["_relu_Relu"].passed and "reshaping [1, 4, 64] to [1, 4, 8, 8]" in rows["_relu_Relu"].reason
    assert not rows["Sub_26"].passed and rows["Sub_26"].cosine is None and "shape [1, 2, 8, 8]" in rows["Sub_26"].reason
    assert result.first_failing is rows["Sub_26"]


def test_names_with_the_shape_of_a_format_conversion(case):
    model, x, tmp = case
    folder = write_dump(tmp / "dump", model, x, perturb=("/head/Conv",))
    for f in folder.glob("*.output.0.npy"):  # msaccucmp.py convert -f NCHW names: .output.{i}.{shape}.npy
        shape = "x".join(map(str, np.load(f).shape))
        f.rename(f.with_name(f.name[: -len(".npy")] + f".{shape}.npy"))
    result = compare_dump(model, tmp / "dump", [tmp / "x.npy"])
    assert len(result.rows) == 5 and result.first_failing.op_name == "_head_Conv"


def test_unmatched_ops_are_listed_last(case):
    model, x, tmp = case
    folder = write_dump(tmp / "dump", model, x)
    np.save(folder / "TransData.trans_TransData_3.9.0.1700000000000009.output.0.npy", np.zeros(4, np.float32))
    result = compare_dump(model, tmp / "dump", [tmp / "x.npy"])
    assert result.rows[-1].op_name == "trans_TransData_3" and result.rows[-1].onnx_output is None
    assert result.first_failing is None and any("match no ONNX node" in n for n in result.notes)


def test_metrics_by_hand():
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([1.0, 1.0, 0.0])
    m = compare_tensors(a, b)
    assert m["cosine"] == pytest.approx(1 / np.sqrt(2))
    assert m["relative_distance"] == pytest.approx(1 / np.sqrt(2))
    assert m["max_abs"] == 1.0 and m["rmse"] == pytest.approx(np.sqrt(1 / 3))
    assert compare_tensors(np.zeros(3), np.zeros(3))["cosine"] == 1.0
    assert compare_tensors(np.zeros(3), b)["cosine"] is None


def test_bad_input(case, tmp_path):
    model, x, tmp = case
    with pytest.raises(EvaluationError, match="dump folder does not exist"):
        compare_dump(model, tmp / "nope", [tmp / "x.npy"])
    (tmp / "empty").mkdir()
    with pytest.raises(EvaluationError, match="no dump files"):
        compare_dump(model, tmp / "empty", [tmp / "x.npy"])
    write_dump(tmp / "dump", model, x)
    np.save(tmp / "wrong.npy", np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(InputSpecError, match="--inputs"):
        compare_dump(model, tmp / "dump", [tmp / "wrong.npy"])
    with pytest.raises(EvaluationError, match="--inputs"):
        compare_dump(model, tmp / "dump", [])

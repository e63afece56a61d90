"""The opset-aware graph builder: each op at opsets on both sides of each change, checked by
onnx.checker (full check, strict shape inference) and run by onnxruntime against numpy."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from onnxforge.passes._build import BuildError, GraphBuilder

X = np.arange(2 * 4 * 3 * 6, dtype=np.float32).reshape(2, 4, 3, 6) / 7.0


def build(opset: int, body: Callable[[GraphBuilder, gs.Variable], list[gs.Tensor]], x: np.ndarray = X) -> onnx.ModelProto:
    inp = gs.Variable("x", dtype=x.dtype, shape=list(x.shape))
    graph = gs.Graph(inputs=[inp], opset=opset)
    outs = body(GraphBuilder(graph, "test"), inp)
    graph.outputs = list(outs)
    model = gs.export_onnx(graph.toposort(), do_type_check=False)
    model.ir_version = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])
    # graph outputs take the types shape inference gives them (the builder leaves most untyped)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    typed = [known[o.name] for o in model.graph.output]
    del model.graph.output[:]
    model.graph.output.extend(typed)
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model: onnx.ModelProto, x: np.ndarray = X) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def node_of(model: onnx.ModelProto, op: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == op)


def attr_names(node: onnx.NodeProto) -> set[str]:
    return {a.name for a in node.attribute}


@pytest.mark.parametrize("opset", [11, 12, 13, 17])
def test_unsqueeze_and_squeeze(opset):
    model = build(opset, lambda b, x: [b.squeeze(b.unsqueeze(x, [1]), [1]), b.unsqueeze(x, [0, 5])])
    a, u = run(model)
    np.testing.assert_array_equal(a, X)
    assert u.shape == (1, 2, 4, 3, 6, 1)
    node = node_of(model, "Unsqueeze")
    assert ("axes" in attr_names(node)) == (opset < 13)
    assert len(node.input) == (1 if opset < 13 else 2)


@pytest.mark.parametrize("opset", [12, 13])
def test_squeeze_without_axes(opset):
    x = X[:1]
    model = build(opset, lambda b, t: [b.squeeze(t)], x)
    assert run(model, x)[0].shape == (4, 3, 6)


@pytest.mark.parametrize("opset", [9, 10, 11, 13])
def test_slice(opset):
    model = build(opset, lambda b, x: [b.slice(x, [1, 2], [3, 10**9], [1, 3]), b.slice(x, [0], [1])])
    a, c = run(model)
    np.testing.assert_array_equal(a, X[:, 1:3, :, 2:])
    np.testing.assert_array_equal(c, X[0:1])
    node = node_of(model, "Slice")
    assert ("starts" in attr_names(node)) == (opset < 10)


def test_slice_steps_need_opset_10():
    model = build(10, lambda b, x: [b.slice(x, [0], [6], [3], [2])])
    np.testing.assert_array_equal(run(model)[0], X[..., ::2])
    with pytest.raises(BuildError, match="opset 9"):
        build(9, lambda b, x: [b.slice(x, [0], [6], [3], [2])])


@pytest.mark.parametrize("opset", [11, 12, 13, 17, 18])
def test_split_sizes(opset):
    model = build(opset, lambda b, x: b.split(x, [1, 3], axis=1))
    a, c = run(model)
    np.testing.assert_array_equal(a, X[:, :1])
    np.testing.assert_array_equal(c, X[:, 1:])
    node = node_of(model, "Split")
    assert ("split" in attr_names(node)) == (opset < 13)
    assert len(node.input) == (1 if opset < 13 else 2)


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_split_equal_parts(opset):
    model = build(opset, lambda b, x: b.split(x, 2, axis=3))
    a, c = run(model)
    np.testing.assert_array_equal(a, X[..., :3])
    np.testing.assert_array_equal(c, X[..., 3:])
    assert ("num_outputs" in attr_names(node_of(model, "Split"))) == (opset >= 18)


@pytest.mark.parametrize("opset", [11, 12, 13, 17, 18])
@pytest.mark.parametrize("op,fn", [("ReduceSum", np.sum), ("ReduceMean", np.mean), ("ReduceMax", np.max)])
def test_reduce(opset, op, fn):
    model = build(opset, lambda b, x: [b.reduce(op, x, [2, 3], keepdims=True), b.reduce(op, x, [1], keepdims=False), b.reduce(op, x)])
    a, c, d = run(model)
    np.testing.assert_allclose(a, fn(X, axis=(2, 3), keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(c, fn(X, axis=1), rtol=1e-6)
    np.testing.assert_allclose(d, fn(X, keepdims=True), rtol=1e-5)
    moved = 13 if op == "ReduceSum" else 18
    assert ("axes" in attr_names(node_of(model, op))) == (opset < moved)


@pytest.mark.parametrize("opset", [10, 11, 12, 13, 18, 19])
def test_resize_scales(opset):
    model = build(opset, lambda b, x: [b.resize(x, scales=[1, 1, 2, 2], mode="nearest")])
    np.testing.assert_array_equal(run(model)[0], X.repeat(2, axis=2).repeat(2, axis=3))
    node = node_of(model, "Resize")
    if opset < 13:
        assert all(node.input), "roi/scales are required inputs before 13: never an empty name"
    if opset >= 13:
        assert node.input[1] == ""


@pytest.mark.parametrize("opset", [11, 12, 13, 18])
def test_resize_sizes(opset):
    model = build(opset, lambda b, x: [b.resize(x, sizes=[2, 4, 6, 12], mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")])
    np.testing.assert_array_equal(run(model)[0], X.repeat(2, axis=2).repeat(2, axis=3))
    node = node_of(model, "Resize")
    assert len(node.input) == 4
    if opset < 13:
        roi, scales = (next(i for i in model.graph.initializer if i.name == name) for name in node.input[1:3])
        assert list(roi.dims) == [0] and list(scales.dims) == [0]
        assert roi.data_type == scales.data_type == onnx.TensorProto.FLOAT
    else:
        assert node.input[1] == node.input[2] == ""


def test_resize_opset_rules_refuse_what_the_opset_lacks():
    with pytest.raises(BuildError, match="opset 10"):
        build(10, lambda b, x: [b.resize(x, sizes=[2, 4, 6, 12])])
    with pytest.raises(BuildError, match="opset 17: the axes attribute"):
        build(17, lambda b, x: [b.resize(x, sizes=[6, 12], axes=[2, 3])])
    # neutral pre-18 values are dropped below 18
    model = build(17, lambda b, x: [b.resize(x, scales=[1, 1, 2, 2], mode="nearest", antialias=0)])
    assert "antialias" not in attr_names(node_of(model, "Resize"))
    model = build(18, lambda b, x: [b.resize(x, sizes=[6, 12], axes=[2, 3], mode="nearest")])
    assert run(model)[0].shape == (2, 4, 6, 12)


@pytest.mark.parametrize("opset", [11, 14, 15])
def test_shape_start_end(opset):
    model = build(opset, lambda b, x: [b.shape(x, 1, 3), b.shape(x, 2), b.shape(x)])
    a, c, d = run(model)
    assert list(a) == [4, 3] and list(c) == [3, 6] and list(d) == [2, 4, 3, 6]
    shapes = [n for n in model.graph.node if n.op_type == "Shape"]
    assert any(attr_names(n) for n in shapes) == (opset >= 15)


@pytest.mark.parametrize("opset", [9, 13])
def test_cast_concat_const(opset):
    def body(b, x):
        y = b.cast(x, np.int64)
        z = b.cast(y, onnx.TensorProto.FLOAT)
        return [y, b.concat([z, b.const(np.ones((2, 1, 3, 6), np.float32), "ones")], axis=1)]

    model = build(opset, body)
    y, z = run(model)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(z, np.concatenate([X.astype(np.int64).astype(np.float32), np.ones((2, 1, 3, 6), np.float32)], axis=1))


def test_names_are_unique_and_avoid_the_graph():
    inp = gs.Variable("test/x_0", dtype=np.float32, shape=[1])
    graph = gs.Graph(inputs=[inp], opset=13)
    b = GraphBuilder(graph, "test")
    names = {b.name("x") for _ in range(5)}
    assert len(names) == 5 and "test/x_0" not in names
    assert GraphBuilder(graph, "p").opset == 13
    assert GraphBuilder(graph, "p", opset=11).opset == 11


def test_op_reuses_given_outputs():
    inp = gs.Variable("x", dtype=np.float32, shape=[2])
    kept = gs.Variable("y")
    graph = gs.Graph(inputs=[inp], outputs=[kept], opset=13)
    b = GraphBuilder(graph, "t")
    out = b.op("Relu", [inp], outputs=[kept], dtype=np.float32, shape=[2])
    assert out is kept and kept.dtype == np.float32 and kept.inputs[0].op == "Relu"

"""keep_in_float: the search keeps the sensitive node (and only it) in float, and says when it cannot."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxforge.errors import ForgeError
from onnxforge.evaluate.int8_search import agreement_score, keep_in_float
from onnxforge.numerics import seeded_inputs
from onnxforge.passes import parse_pipeline
from onnxforge.passes.quantize import Quantize


def sensitive_convnet(size: int = 8, scales: tuple[float, float, float] = (0.3, 0.2, 0.3)) -> onnx.ModelProto:
    """x -> conv0 -> relu0 -> conv1 -> relu1 -> head -> logits (1,5,size,size); `scales`: of the random
    weights of conv0, conv1 and head.

    conv1's channel 0 is dead (bias -100, ReLU'd to zero) and `head` has a huge weight on exactly that
    input channel: harmless in float, but with one scale per weight tensor (per_channel=false) it
    rounds every other weight of `head` to zero. Keeping `head` in float is the fix.
    """
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((6, 3, 3, 3)) * scales[0]
    w1 = rng.standard_normal((6, 6, 3, 3)) * scales[1]
    b1 = rng.standard_normal(6) * 0.1
    b1[0] = -100.0
    wh = rng.standard_normal((5, 6, 1, 1)) * scales[2]
    wh[:, 0] = 500.0
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in {"w0": w0, "w1": w1, "b1": b1, "wh": wh}.items()]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wh"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(nodes, "sensitive", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5, size, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _feeds(model, n=4):
    return [seeded_inputs(model, seed=100 + i) for i in range(n)]  # apart from the calibration seeds 1..8


def test_keeps_the_sensitive_node_in_float():
    model = sensitive_convnet()
    found = keep_in_float(model, _feeds(model), budget=0.02, quantize=Quantize(per_channel=False))
    assert found.score_all < 0.98  # every node quantized: outside the budget
    assert found.keep == ["head"] and found.within_budget and found.score >= 0.98
    assert found.ranking[0][0] == "head" and {n for n, _ in found.ranking} == {"conv0", "conv1", "head"}
    assert found.item == "quantize{per_channel=false,exclude=head}"
    parse_pipeline(found.item)  # the item is a valid pipeline
    assert found.quantizations == 1 + 3  # all, then each node alone; no calibration after the first


def test_within_budget_keeps_nothing():
    model = sensitive_convnet()
    loose = keep_in_float(model, _feeds(model), budget=0.02, quantize=Quantize(per_channel=False))
    found = keep_in_float(model, _feeds(model), budget=1 - loose.score_all, quantize=Quantize(per_channel=False))
    assert found.keep == [] and found.within_budget and found.ranking == [] and found.quantizations == 1
    assert found.item == "quantize{per_channel=false}"


def test_gives_up_after_max_keep_and_says_so():
    model = sensitive_convnet()
    found = keep_in_float(model, _feeds(model), budget=0.0, quantize=Quantize(per_channel=False), max_keep=1,
                          score=lambda ref, got: 0.5)
    assert not found.within_budget and found.keep == [found.ranking[0][0]] and len(found.keep) == 1


def test_agreement_score_forms():
    a = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)
    assert agreement_score([a], [a[::-1].copy()]) == 0.0
    seg = np.zeros((1, 3, 2, 2), np.float32)
    seg[0, 1] = 1.0
    other = seg.copy()
    other[0, 2, 0, 0] = 2.0
    assert agreement_score([seg], [other]) == pytest.approx(0.75)
    labels = np.array([[1, 2, 3, 4]])
    assert agreement_score([labels], [np.array([[1, 2, 0, 4]])]) == pytest.approx(0.75)


@pytest.mark.parametrize("budget,feeds,match", [(1.0, None, "budget"), (0.01, [], "no evaluation inputs")])
def test_bad_arguments(budget, feeds, match):
    model = sensitive_convnet()
    with pytest.raises(ForgeError, match=match):
        keep_in_float(model, _feeds(model) if feeds is None else feeds, budget=budget)


def test_the_search_calibrates_once_and_builds_what_a_fresh_calibration_writes(monkeypatch):
    """Every candidate keep-set is quantized from one calibration (`Quantize.sharing_calibration`); the
    model of the chosen keep-set is byte for byte what its pipeline item writes with its own calibration."""
    from onnxforge.passes import quantize as qmod

    calls = []
    real = qmod.calibrate_ranges
    monkeypatch.setattr(qmod, "calibrate_ranges", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = sensitive_convnet()
    found = keep_in_float(model, _feeds(model), budget=0.02, quantize=Quantize(per_channel=False))
    assert len(calls) == 1 and found.quantizations > 1
    assert "ranges" not in found.item

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxforge.errors import ForgeError
from onnxforge.evaluate.bisect import bisect, ddmin, parse_budget


def two_resizes() -> onnx.ModelProto:
    """x -> Resize r_up (linear, x2) -> Resize r_down (linear, /2) -> y."""
    inits = [
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up"),
        numpy_helper.from_array(np.array([1, 1, 0.5, 0.5], np.float32), "down"),
    ]
    nodes = [
        helper.make_node("Resize", ["x", "", "up"], ["a"], name="r_up", mode="linear"),
        helper.make_node("Resize", ["a", "", "down"], ["y"], name="r_down", mode="linear"),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def lossy_on(node: str):
    """A fake scorer (no data): 0.9 when `node` was switched to nearest, else 1.0; counts its calls."""
    calls = []

    def scorer(m: onnx.ModelProto) -> float:
        calls.append(1)
        for n in m.graph.node:
            if n.name == node and any(a.name == "mode" and a.s == b"nearest" for a in n.attribute):
                return 0.9
        return 1.0

    scorer.calls = calls
    return scorer


def test_budget_forms():
    assert parse_budget("1%").over(0.8, 0.79) and not parse_budget("1%").over(0.8, 0.795)
    assert parse_budget("0.5pt").over(0.8, 0.794) and not parse_budget("0.5pt").over(0.8, 0.796)
    with pytest.raises(ForgeError):
        parse_budget("abc")


def test_names_the_lossy_pass_and_node():
    s = lossy_on("r_down")
    r = bisect(two_resizes(), "simplify,resize-nearest,argmax-output", s, parse_budget("1%"))
    assert r.culprit.startswith("resize-nearest") and r.culprit_index == 2
    assert r.nodes == ["r_down"]
    assert "r_down" in r.node_item and "r_down" in r.summary()
    assert r.evaluations == len(s.calls)


def test_within_budget():
    r = bisect(two_resizes(), "simplify,resize-nearest", lossy_on("nothing"), parse_budget("1%"))
    assert r.within and r.culprit is None and "within" in r.summary()


def test_empty_pipeline_is_an_error():
    with pytest.raises(ForgeError):
        bisect(two_resizes(), " ", lossy_on("r_up"), parse_budget("1%"))


def test_stage_evaluations_are_logarithmic():
    s = lossy_on("r_up")
    n = 16
    pipeline = ",".join(["simplify"] * (n - 1) + ["resize-nearest{nodes=r_up}"])
    r = bisect(two_resizes(), pipeline, s, parse_budget("1%"))
    assert r.culprit_index == n
    # baseline + final + ceil(log2 n) probes + ddmin over one candidate (none)
    assert r.evaluations <= 2 + int(np.ceil(np.log2(n))) + 1


def test_ddmin_minimal():
    calls = []

    def fails(s):
        calls.append(s)
        return "c" in s and "f" in s

    assert sorted(ddmin(list("abcdefgh"), fails)) == ["c", "f"]


def test_scorer_judges_on_the_dataset_metric_where_it_means_something(tmp_path):
    from onnxforge.evaluate.bisect import make_scorer
    from tests.evaluate.test_evaluator import CITY_SPEC, oracle

    root = _city(tmp_path)
    model = oracle(19, (8, 16))
    scorer, name, _ = make_scorer(model, "cityscapes", root, CITY_SPEC)
    assert name == "mIoU" and scorer(model) == pytest.approx(3 / 19)  # not its agreement with itself (1.0)


def test_scorer_judges_on_agreement_where_the_baseline_is_at_chance(tmp_path, caplog):
    from onnxforge.evaluate.bisect import make_scorer
    from onnxforge.evaluate.synthetic import write_synthetic
    from tests.evaluate.test_report import C, H, W, tiny_segmenter

    root = tmp_path / "synth"
    write_synthetic(root, n=3, size=(H, W), classes=C)
    model = tiny_segmenter()
    scorer, name, _ = make_scorer(model, "synthetic", root)
    assert name == "miou_vs_reference" and scorer(model) == pytest.approx(1.0)
    assert "chance level" in caplog.text


def _city(tmp_path):
    """Three 8x16 Cityscapes images labelled so that `oracle` is right on 3 of the 19 classes."""
    from tests.evaluate.builders import rand_image, write_png
    from tests.evaluate.test_evaluator import TRAIN_TO_ID, _norm01

    root = tmp_path / "cityscapes"
    for k, city_name in enumerate(("aachen", "bonn", "koeln")):
        prefix = f"{city_name}_000000_{k:06d}"
        img = rand_image(8, 16, k)
        write_png(root / "leftImg8bit" / "val" / city_name / f"{prefix}_leftImg8bit.png", img)
        ids = TRAIN_TO_ID[_norm01(img).argmax(-1)]
        ids[0, :5] = 0
        write_png(root / "gtFine" / "val" / city_name / f"{prefix}_gtFine_labelIds.png", ids)
    return root

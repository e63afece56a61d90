"""The fp16 keep-set search: exactly the overflowing node is kept, the config names it, the budgets hold."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxforge.cann import profile
from onnxforge.backends.cann.precision import read_precision_config
from onnxforge.errors import BackendError, ForgeError
from onnxforge.evaluate.fp16_search import fp16_groups, fp16_range_stats, search_fp16, write_precision_config
from onnxforge.evaluate.history import Budget
from onnxforge.evaluate.keep_search import Group, Sensitivity, agreement_scorer, search_keep_set
from onnxforge.numerics import seeded_inputs
from onnxforge.passes import PassManager, parse_pipeline
from onnxforge.passes.fp16 import Fp16


def overflow_model(classes: int = 4, size: int = 8) -> onnx.ModelProto:
    """image -> conv (harmless) -> relu -> amplify (x 3e5: overflows float16) -> norm (InstanceNormalization,
    on the fp16 pass's block list: float32) -> head (harmless) -> logits (1, classes, size, size).

    In float32 the normalisation undoes the gain; in float16 `amplify`'s output is inf and the
    normalised map NaN. Keeping `amplify` in float32 is the whole fix: its float32 output feeds the
    float32 normalisation directly.
    """
    rng = np.random.default_rng(7)
    inits = {
        "w0": rng.standard_normal((6, 3, 3, 3)) * 0.4, "b0": rng.standard_normal(6) * 0.1,
        "gain": np.array(3e5), "scale": np.ones(6), "bias": np.zeros(6),
        "wh": rng.standard_normal((classes, 6, 1, 1)), "bh": rng.standard_normal(classes) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["image", "w0", "b0"], ["c0"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu"),
        helper.make_node("Mul", ["r0", "gain"], ["big"], name="amplify"),
        helper.make_node("InstanceNormalization", ["big", "scale", "bias"], ["n0"], name="norm"),
        helper.make_node("Conv", ["n0", "wh", "bh"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes, size, size])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _feeds(model, n=4, seed=100):
    return [seeded_inputs(model, seed=seed + i) for i in range(n)]


def test_the_search_keeps_exactly_the_overflowing_node():
    model = overflow_model()
    scorer = agreement_scorer(model, _feeds(model))
    confirm = agreement_scorer(model, _feeds(model, 8, seed=200))
    found = search_fp16(model, scorer, 1.0, "1%", confirm=confirm, confirm_baseline=1.0, stats_feeds=_feeds(model, 2, seed=300))
    assert found.keep == ["amplify"] and found.within_budget
    assert found.item == "fp16{keep=amplify}"
    # all-fp16 over the budget, the mixed model within (float16 simulated by Cast pairs, as the search scores)
    assert confirm(Fp16().simulate(model)) < 0.99 <= confirm(parse_pipeline(found.item).passes[0].simulate(model))
    mixed = PassManager(parse_pipeline(found.item), verify=False).run(model).model  # the real float16 graph
    assert {n.name for n in mixed.graph.node if n.op_type == "Mul"} == {"amplify"} and confirm(mixed) >= 0.99
    assert found.search.score_all < 0.99 and found.search.score >= 0.99
    # evaluations: all-fp16, then each group kept and alone (conv+relu, amplify, head), the first greedy
    # step reuses its sensitivity score; then one confirmation on the full set
    assert found.search.evaluations == 1 + 2 * 3 and found.search.confirm_evaluations == 1
    rows = {r["group"]: r for r in found.rows()}
    assert rows["conv"]["nodes"] == ["conv", "relu"]  # Conv + activation grouped
    assert rows["amplify"]["kept"] and not rows["conv"]["kept"] and not rows["head"]["kept"]
    assert rows["amplify"]["overflow"] > 0 and rows["conv"]["overflow"] == 0 and rows["head"]["overflow"] == 0
    assert found.search.ranking[0].group == "amplify"
    # only amplify in float16 costs as much as all in float16; any other alone is harmless
    assert rows["amplify"]["score_alone"] < 0.99 <= min(rows["conv"]["score_alone"], rows["head"]["score_alone"])


def test_within_budget_keeps_nothing_and_one_evaluation():
    model = overflow_model()
    scorer = agreement_scorer(model, _feeds(model))
    found = search_fp16(model, scorer, 1.0, "1%", fp16=parse_pipeline("fp16{block_nodes=amplify}").passes[0])
    assert found.keep == [] and found.within_budget and found.search.evaluations == 1
    assert found.item == "fp16{block_nodes=amplify}"


def test_a_budget_no_keep_set_meets_says_so_with_the_best_and_the_fallback():
    model = overflow_model()
    found = search_fp16(model, lambda m: 0.5, 1.0, "1%", max_keep=2, reverse=False)
    assert not found.within_budget and len(found.search.groups) == 2
    assert "no keep-set of up to 2 group(s) meets the 1.00% budget: the best reached is 0.5000" in found.search.note
    assert "the fallback is the all-float32 model" in found.search.note


def test_range_stats_count_overflow_and_underflow():
    model = overflow_model()
    stats = fp16_range_stats(model, _feeds(model, 2))
    assert stats["amplify"].overflow > 0 and stats["amplify"].max_abs > 65504
    assert stats["conv"].overflow == 0 and stats["conv"].elements == 2 * 6 * 8 * 8
    assert stats["norm"].overflow == 0


def test_groupings():
    model = overflow_model()
    names = ["conv", "relu", "amplify", "head"]
    assert [g.nodes for g in fp16_groups(model, names, "chain")] == [("conv", "relu"), ("amplify",), ("head",)]
    assert [g.name for g in fp16_groups(model, names, "node")] == names
    assert [(g.name, g.nodes) for g in fp16_groups(model, names, "op")] == [
        ("OpType::Conv", ("conv", "head")), ("OpType::Relu", ("relu",)), ("OpType::Mul", ("amplify",))]
    with pytest.raises(ForgeError, match="grouping must be one of chain, node, op"):
        fp16_groups(model, names, "layer")


def test_precision_config_files_for_cann_8_and_5(tmp_path):
    model = overflow_model()
    scorer = agreement_scorer(model, _feeds(model))
    found = search_fp16(model, scorer, 1.0, "1%", reverse=False)
    paths = write_precision_config(tmp_path / "p8", found, "8.0", model="m.onnx")
    lines = paths["keep_dtype"].read_text().splitlines()
    assert [ln for ln in lines if not ln.startswith("#")] == ["amplify"]
    assert paths["op_precision"].read_text() == "[ByNodeName]\namplify=high_precision\n"
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["pipeline_item"] == "fp16{keep=amplify}" and manifest["within_budget"] is True
    assert manifest["atc_flags"][:2] == ["--precision_mode_v2=fp16", f"--keep_dtype={tmp_path / 'p8' / 'keep_dtype.cfg'}"]
    config = read_precision_config(tmp_path / "p8", [n.name for n in model.graph.node], profile("8.0"))
    assert config.names == ("amplify",) and config.precision_mode_v2 == "fp16" and config.op_precision is not None
    # CANN 6.x: no precision_mode_v2, no op_precision_mode: force_fp16 and keep_dtype alone
    paths = write_precision_config(tmp_path / "p6", found, "6.0")
    assert "op_precision" not in paths
    assert json.loads(paths["manifest"].read_text())["atc_flags"][0] == "--precision_mode=force_fp16"
    with pytest.raises(BackendError, match="atc --keep_dtype is not in the CANN 5.0 profile"):
        read_precision_config(tmp_path / "p6", None, profile("5.0"))


def test_op_type_groups_are_written_as_optype_lines(tmp_path):
    model = overflow_model()
    scorer = agreement_scorer(model, _feeds(model))
    found = search_fp16(model, scorer, 1.0, "1%", grouping="op", reverse=False)
    assert found.search.groups == ["OpType::Mul"] and found.keep == ["amplify"]
    paths = write_precision_config(tmp_path / "mul", found, "8.0")
    assert [ln for ln in paths["keep_dtype"].read_text().splitlines() if not ln.startswith("#")] == ["OpType::Mul"]
    # ONNX op types become Ascend IR types (Conv -> Conv2D); a type with no recorded Ascend IR name is
    # written as its nodes
    conv = dataclasses.replace(found, search=dataclasses.replace(found.search, groups=["OpType::Conv", "OpType::Relu2"],
                                                                  ranking=[Sensitivity("OpType::Conv", ["conv", "head"], 1.0),
                                                                           Sensitivity("OpType::Relu2", ["relu"], 1.0)]))
    paths = write_precision_config(tmp_path / "conv", conv, "8.0")
    assert [ln for ln in paths["keep_dtype"].read_text().splitlines() if not ln.startswith("#")] == ["OpType::Conv2D", "relu"]


def test_bad_precision_config_directories(tmp_path):
    with pytest.raises(BackendError, match="not a directory"):
        read_precision_config(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError, match="no keep_dtype.cfg and no precision.json"):
        read_precision_config(tmp_path / "empty")
    d = tmp_path / "other"
    d.mkdir()
    (d / "keep_dtype.cfg").write_text("# comment\nmissing_node\n")
    (d / "precision.json").write_text("{}")
    with pytest.raises(BackendError, match="names node 'missing_node', which the model does not have"):
        read_precision_config(d, ["conv", "head"])


def test_search_keep_set_confirmation_continues_on_the_full_set():
    """Subset says one group suffices; the full set needs two: the greedy goes on there."""
    groups = [Group("a", ("a",)), Group("b", ("b",)), Group("c", ("c",))]
    sub = {(): 0.5, ("a",): 0.995, ("b",): 0.9, ("c",): 0.6}
    full = {("a",): 0.98, ("a", "b"): 0.995}
    found = search_keep_set(groups, lambda keep: tuple(keep), lambda m: sub.get(m, 0.5), 1.0, Budget.parse("1%"),
                            confirm=lambda m: full.get(m, 0.0), confirm_baseline=1.0)
    assert found.keep == ["a", "b"] and found.within_budget and found.score == 0.995
    assert found.evaluations == 4 and found.confirm_evaluations == 2
    assert [s.group for s in found.ranking] == ["a", "b", "c"]

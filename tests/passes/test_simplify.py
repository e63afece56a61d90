"""simplify: structure, numerics, near-miss."""

from __future__ import annotations

import numpy as np

from onnxforge.passes import PassManager
from onnxforge.passes.simplify import Simplify
from tests.passes.helpers import apply, ops, outputs, parse

FOLDABLE = """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  w = Constant<value = float[4,3,1,1] {1,2,3,4,5,6,7,8,9,10,11,12}>()
  shape = Shape(x)
  flat = Constant<value = int64[2] {1, -1}>()
  c = Conv(x, w)
  i = Identity(c)
  r = Reshape(i, flat)
  shape_y = Constant<value = int64[4] {1, 4, 8, 8}>()
  y = Reshape(r, shape_y)
}"""


def test_structure_folds_and_removes_dead_code():
    result, model = apply(Simplify(), parse(FOLDABLE))
    assert result.modified
    assert "Identity" not in ops(model) and "Shape" not in ops(model)
    assert result.stats["nodes_removed"] >= 2
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    assert names == (["x"], ["y"])


def test_idempotent():
    _, once = apply(Simplify(), parse(FOLDABLE))
    again, twice = apply(Simplify(), once)
    assert not again.modified and "already simplified" in again.why_nothing()
    assert ops(once) == ops(twice)


def test_numerics_equal_through_manager():
    model = parse(FOLDABLE)
    result = PassManager("simplify").run(model)
    assert result.stages[0].verification.status == "passed"
    np.testing.assert_allclose(outputs(result.model)["y"], outputs(model)["y"], rtol=1e-5, atol=1e-5)


def test_near_miss_nothing_to_fold():
    model = parse("""
g (float[1,3,8,8] x) => (float[1,3,8,8] y) {
  y = Relu(x)
}""")
    result, out = apply(Simplify(), model)
    assert not result.modified and ops(out) == ["Relu"]


def test_batchnorm_fusion_can_be_turned_off():
    text = """
g (float[1,2,4,4] x) => (float[1,2,4,4] y) {
  w = Constant<value = float[2,2,1,1] {1,0,0,1}>()
  s = Constant<value = float[2] {2,3}>()
  b = Constant<value = float[2] {0.5,1}>()
  m = Constant<value = float[2] {0.1,0.2}>()
  v = Constant<value = float[2] {1,4}>()
  c = Conv(x, w)
  y = BatchNormalization(c, s, b, m, v)
}"""
    _, fused = apply(Simplify(), parse(text))
    _, kept = apply(Simplify(fuse_bn=False), parse(text))
    assert "BatchNormalization" not in ops(fused)
    assert "BatchNormalization" in ops(kept)


# -- at least as good as the peers, statistics that add up --------------------------------------------

def _paddle_classifier() -> "onnx.ModelProto":
    """Conv -> BN -> Relu twice, weights also listed among the graph inputs (paddle2onnx, old exporters)."""
    import onnx

    model = parse("""
g (float[N,2,4,4] x) => (float[N,2,4,4] y) {
  w = Constant<value = float[2,2,1,1] {1,0.5,0.25,1}>()
  s = Constant<value = float[2] {2,3}>()
  b = Constant<value = float[2] {0.5,1}>()
  m = Constant<value = float[2] {0.1,0.2}>()
  v = Constant<value = float[2] {1,4}>()
  c = Conv(x, w)
  n = BatchNormalization(c, s, b, m, v)
  r = Relu(n)
  c2 = Conv(r, w)
  n2 = BatchNormalization(c2, s, b, m, v)
  i = Identity(n2)
  y = Relu(i)
}""")
    from onnxforge.passes.base import ModelState

    state = ModelState(model)
    state.graph.fold_constants().cleanup()
    out = state.to_model()
    out.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in out.graph.initializer)
    out.ir_version = 8
    return out


def test_bn_folds_when_weights_are_also_graph_inputs_and_never_larger_than_the_peers():
    import onnx
    import onnxsim
    import onnxslim

    model = _paddle_classifier()
    assert ops(model).count("BatchNormalization") == 2
    result = PassManager("simplify").run(model)
    stage = result.stages[0]
    assert stage.verification.status == "passed", stage.verification.detail
    assert ops(result.model) == ["Conv", "Relu", "Conv", "Relu"]
    sim, _ = onnxsim.simplify(model, check_n=0)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    assert len(result.model.graph.node) <= min(len(sim.graph.node), len(onnxslim.slim(copy).graph.node))


def test_statistics_add_up():
    from collections import Counter

    model = _paddle_classifier()
    result, out = apply(Simplify(), model)
    stats = result.stats
    assert (stats["nodes_before"], stats["nodes_after"]) == (len(model.graph.node), len(out.graph.node))

    def total(text: str) -> int:
        return sum(int(part.rsplit("x", 1)[1]) for part in text.split(", ")) if text else 0

    assert total(stats.get("ops_removed", "")) - total(stats.get("ops_added", "")) == stats["nodes_removed"]
    assert stats["nodes_removed"] == stats["nodes_before"] - stats["nodes_after"]
    removed = Counter(ops(model)) - Counter(ops(out))
    assert stats["ops_removed"] == ", ".join(f"{op}x{n}" for op, n in removed.most_common())


def test_onnxslim_stage_is_kept_where_it_is_smaller():
    """onnxsim folds Conv + Add(bias) but leaves the folded weights as Constant nodes; onnxslim's output
    holds them as initializers, and so does the pass (its own conversion, what onnxslim's export does,
    without running onnxslim's whole loop); `slim=false` is plain onnxsim."""
    import onnxsim

    model = parse("""
g (float[1,2,4,4] x) => (float[1,2,4,4] y) {
  w = Constant<value = float[2,2,1,1] {1,0.5,0.25,1}>()
  s = Constant<value = float[1,2,1,1] {2,3}>()
  c = Conv(x, w)
  y = Add(c, s)
}""")
    sim, _ = onnxsim.simplify(model, check_n=0)
    assert ops(sim) == ["Constant", "Constant", "Conv"]
    result = PassManager("simplify").run(model)
    assert ops(result.model) == ["Conv"] and result.stages[0].stats["by"] == "onnxsim+initializers"
    assert result.stages[0].verification.status == "passed"
    off = PassManager("simplify{slim=false}").run(model)
    assert ops(off.model) == ops(sim) and off.stages[0].stats["by"] == "onnxsim"


def test_reason_when_nothing_to_do_names_both_tools():
    model = parse("""
g (float[1,3,8,8] x) => (float[1,3,8,8] y) {
  y = Relu(x)
}""")
    result, _ = apply(Simplify(), model)
    assert not result.modified and result.why_nothing() == (
        "already simplified: onnxsim, its follow-ups (initializers, whole-shape, unflatten-gemm, transpose-to-reshape) "
        "found nothing to fold, fuse or remove")


def _count_onnxslim_runs(monkeypatch) -> list[bool]:
    """Records each full onnxslim run of the pass (its shape_infer flag)."""
    runs: list[bool] = []
    real = Simplify._onnxslim

    def counting(self, model, shape_infer):
        runs.append(shape_infer)
        return real(self, model, shape_infer)

    monkeypatch.setattr(Simplify, "_onnxslim", counting)
    return runs


def test_transposes_of_size_1_axes_become_one_reshape_without_running_onnxslim(monkeypatch):
    """A Transpose that only moves a size-1 axis between two Reshapes: onnxsim keeps all three; onnxslim's
    eliminations leave one Reshape, and so does `transpose-to-reshape` inside simplify, without onnxslim's
    loop. `thorough=true` runs onnxslim after onnxsim anyway (nothing left for it here)."""
    from tests.passes.test_transpose_to_reshape import CHAIN

    runs = _count_onnxslim_runs(monkeypatch)
    model = parse(CHAIN)
    result = PassManager("simplify").run(model)
    stage = result.stages[0]
    assert ops(result.model) == ["Reshape", "Relu"] and "transpose-to-reshape" in stage.stats["by"]
    assert runs == [] and stage.verification.status == "passed"
    assert stage.stats["onnxslim_runs"].startswith("none")
    thorough = PassManager("simplify{thorough=true}").run(model)
    assert runs == [False] and ops(thorough.model) == ["Reshape", "Relu"]
    assert thorough.stages[0].stats["onnxslim_runs"] == "after onnxsim"


def _lost_rank(opset: int):
    """x.view(n, 3, -1) then a view on its dim 1: the first Reshape's target is computed, so ONNX shape
    inference loses its rank and onnxsim cannot fold the Shape -> Gather(1) of it (it is 3)."""
    unsq = "Unsqueeze<axes=[0]>({})" if opset < 13 else "Unsqueeze({}, zero)"
    return parse(f"""
g (float[N,3,H,W] x) => (float[N,3,?] y) {{
  s = Shape(x)
  i = Constant<value = int64 {{0}}>()
  zero = Constant<value = int64[1] {{0}}>()
  g = Gather(s, i)
  u = {unsq.format("g")}
  k = Constant<value = int64[1] {{3}}>()
  m1 = Constant<value = int64[1] {{-1}}>()
  c = Concat<axis=0>(u, k, m1)
  r = Reshape(x, c)
  s2 = Shape(r)
  j = Constant<value = int64 {{1}}>()
  g2 = Gather(s2, j)
  u2 = {unsq.format("g2")}
  c2 = Concat<axis=0>(u, u2, m1)
  y = Reshape(x, c2)
}}""", opset=opset)


def test_onnxslim_shape_inference_runs_only_where_onnx_inference_lost_a_shape_inputs_rank(monkeypatch):
    """onnxslim's symbolic shape inference can only win where ONNX's own inference (onnxsim's, and
    whole-shape's) does not know what a Shape reads: at opset 11 the computed Reshape target loses the
    rank, onnxslim runs on onnxsim's result with its shape inference and folds the view; at opset 17 ONNX's
    data propagation keeps the rank, onnxsim folds it itself and onnxslim is not run. A dynamic graph
    without Shape ops never runs it."""
    from onnxforge.passes.simplify import _rank_lost

    runs = _count_onnxslim_runs(monkeypatch)
    old = _lost_rank(11)
    assert _rank_lost(onnxsim_simplified(old))
    result = PassManager("simplify").run(old)
    stage = result.stages[0]
    assert runs == [True] and stage.stats["onnxslim_runs"] == "after onnxsim, with its symbolic shape inference"
    assert ops(result.model) == ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"] and stage.verification.status == "passed"
    runs.clear()
    new = PassManager("simplify").run(_lost_rank(17))
    assert runs == [] and ops(new.model) == ops(result.model)
    PassManager("simplify").run(parse("""
g (float[N,3,H,W] x) => (float[N,3,H,W] y) {
  y = Relu(x)
}"""))
    assert runs == []


def onnxsim_simplified(model):
    import onnxsim

    return onnxsim.simplify(model, check_n=0)[0]


def test_constants_become_initializers_but_not_graph_outputs_or_ir3():
    from onnx import helper

    from onnxforge.passes.simplify import _constants_as_initializers

    model = parse("""
g (float[2] x) => (float[2] y, float[2] k) {
  c = Constant<value_floats = [1.0, 2.0]>()
  k = Constant<value = float[2] {3, 4}>()
  y = Add(x, c)
}""")
    out = _constants_as_initializers(model)
    assert ops(out) == ["Constant", "Add"] and [t.name for t in out.graph.initializer] == ["c"]
    from onnxforge.numerics import run_model

    np.testing.assert_array_equal(run_model(out, {"x": np.ones(2, np.float32)})["y"], [2.0, 3.0])
    old = helper.make_model(model.graph, opset_imports=list(model.opset_import), ir_version=3)
    assert _constants_as_initializers(old) is old

"""The A/B report: schema, verdicts against the budget, --auto, and the CLI run as a user would."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxforge.evaluate.ab import DataSource, decide_pipeline, run_report
from onnxforge.modelio import load_model, save_model
from onnxforge.numerics import run_model, seeded_inputs
from onnxforge.passes import Pass, PassKind, PassManager, PassResult, Pipeline, parse_pipeline
from tests.conftest import assert_one_line_error

from onnxforge.evaluate.timing import TimingPolicy

H, W, C = 32, 64, 4
FAST = TimingPolicy(min_rounds=3, max_rounds=6, max_seconds=5.0, resamples=200)


def _nearest(m):
    return any(a.name == "mode" and a.s == b"nearest" for n in m.graph.node if n.op_type == "Resize" for a in n.attribute)


def fake_candidates(ms_per_node: float = 1.0, noise: float = 0.01, speed: dict | None = None):
    """Timing candidates on a fake timer: a model runs `ms_per_node` per node (times `speed[op]` where the
    model has that op; `speed["nearest"]` where a Resize is nearest) with seeded multiplicative noise; the
    same calls always give the same samples."""
    def factory(models):
        rng = np.random.default_rng(0)
        out = {}
        for name, m in models.items():
            ms = ms_per_node * len(m.graph.node)
            for op, f in (speed or {}).items():
                if any(n.op_type == op for n in m.graph.node) or (op == "nearest" and _nearest(m)):
                    ms *= f
            out[name] = lambda ms=ms: ms / 1000.0 * (1.0 + noise * rng.standard_normal())
        return out
    return factory


def fake_clock():
    t = [0.0]

    def clock():
        t[0] += 0.001
        return t[0]
    return clock


def tiny_segmenter() -> onnx.ModelProto:
    """Conv 3->C at 1/2 resolution, bilinear upsample back: a real (if weak) segmentation graph.

    The bias favours class 0 (the synthetic background), so the model is right on most pixels: a
    rewrite that breaks it measurably loses accuracy."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(0.05 * rng.standard_normal((C, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.array([2.0] + [0.0] * (C - 1), np.float32), "b")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["feat"], strides=[2, 2], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Identity", ["feat"], ["feat2"], name="noop"),
        helper.make_node("Resize", ["feat2", "", "scales"], ["logits"], mode="linear", name="up",
                         coordinate_transformation_mode="half_pixel"),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, C, H, W])], [w, b, scales])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


class ScrambleLogits(Pass):
    """A deliberately lossy 'rewrite': negates the logits (predictions change almost everywhere)."""

    name = "scramble-logits"
    summary = "test-only lossy pass"
    kind = PassKind.APPROXIMATE

    def run(self, state):
        g = state.graph
        out = g.outputs[0]
        producer = out.inputs[0]
        mid = gs.Variable("pre_negate", dtype=np.float32, shape=out.shape)
        producer.outputs = [mid]
        g.nodes.append(gs.Node("Neg", inputs=[mid], outputs=[out]))
        return PassResult(True, {"negated": 1})


@pytest.fixture
def model_path(tmp_path):
    return save_model(tiny_segmenter(), tmp_path / "tiny.onnx")


def test_report_schema_and_files(model_path, tmp_path):
    out = tmp_path / "report"
    result = run_report(model_path, "simplify,resize-nearest,fp16-output", out, DataSource("synthetic", None, None, 3),
                        batch_sizes=(1, 2), timing=FAST, keep_stages="all")
    data = json.loads((out / "report.json").read_text())
    names = [s["name"] for s in data["stages"]]
    assert names[:4] == ["baseline", "1-simplify", "2-resize-nearest", "3-fp16-output"]
    assert names[4:] in ([], ["combined"])
    for s in data["stages"]:
        for key in ("name", "pipeline", "pass", "parent", "model_sha256", "nodes", "accuracy", "agreement", "delta",
                    "latency_ms", "throughput", "verdict", "reason", "accuracy_verdict", "speed", "size_bytes",
                    "op_histogram"):
            assert key in s, key
        assert {"p50", "p90"} <= set(s["latency_ms"]) and s["latency_ms"]["p50"] > 0
        assert set(s["throughput"]) == {"1", "2"}
        assert 0.0 <= s["accuracy"]["mIoU"] <= 1.0
        assert len(s["model_sha256"]) == 64
    base, simp, near, half = data["stages"][:4]
    assert simp["speed"]["vs"] == "baseline" and half["speed"]["vs"] == "2-resize-nearest"
    assert simp["speed"]["verdict"] in ("faster", "same", "slower") and simp["speed"]["low"] <= simp["speed"]["ratio"] <= simp["speed"]["high"]
    assert data["timing"][0]["floor_source"] == "aa" and data["timing"][0]["stopped_by"] in ("stable", "max_rounds", "time_limit")
    assert base["verdict"] == "baseline" and base["parent"] is None
    assert simp["parent"] == "baseline" and simp["verification"]["status"] == "passed"
    assert simp["nodes"] == base["nodes"] - 1  # the Identity is gone
    assert near["pipeline"] == "simplify,resize-nearest" and near["kind"] == "approximate"
    assert near["verification"]["status"] == "measured" and "pixel_agreement" in near["agreement"]
    assert half["parent"] == "2-resize-nearest"
    assert data["environment"]["onnxruntime"] and data["commands"]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "3-fp16-output" in html
    assert (out / "accuracy_vs_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| stage |" in (out / "report.md").read_text()
    best = load_model(out / "best.onnx")
    assert result.best.name in [s["name"] for s in data["stages"]]
    assert len(best.graph.node) == next(s["nodes"] for s in data["stages"] if s["name"] == result.best.name)
    assert sorted(p.name for p in (out / "stages").iterdir()) == [f"{i:02d}_{n}.onnx" for i, n in enumerate(
        ["baseline", "1-simplify", "2-resize-nearest", "3-fp16-output"] + (["combined"] if len(names) > 4 else []))]
    assert data["disk_bytes"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name != "report.json") or data["disk_bytes"] > 0


def test_lossy_pass_rejected_under_tight_budget_accepted_under_loose(model_path, tmp_path):
    pipe = Pipeline((parse_pipeline("simplify").passes[0], ScrambleLogits()))
    fake = dict(timing=FAST, clock=fake_clock(), candidates_factory=fake_candidates(speed={"Neg": 0.5, "nearest": 0.5}))
    tight = run_report(model_path, pipe, tmp_path / "tight", DataSource("synthetic", None, None, 3), budget=0.001, **fake)
    t = {s.name: s for s in tight.stages}
    assert t["1-simplify"].verdict == "accepted"  # exact and smaller at the same (fake) speed
    assert t["2-scramble-logits"].verdict == "rejected" and "exceeds" in t["2-scramble-logits"].reason
    assert t["2-scramble-logits"].accuracy_verdict == "over" and t["2-scramble-logits"].speed["verdict"] == "faster"
    assert t["2-scramble-logits"].agreement["pixel_agreement"] < 0.5
    assert tight.best.name == "combined" and tight.report["kept_pipeline"] == "simplify"
    # a mild lossy pass within a loose budget that is measurably faster is kept, and in best.onnx
    loose = run_report(model_path, "simplify,resize-nearest", tmp_path / "loose", DataSource("synthetic", None, None, 3),
                       budget=0.99, **fake)
    near = {s.name: s for s in loose.stages}["2-resize-nearest"]
    assert near.verdict == "accepted" and near.speed["verdict"] == "faster", near.reason
    assert loose.report["kept_pipeline"] == "simplify,resize-nearest" and loose.best.name == "combined"
    assert _nearest(load_model(tmp_path / "loose" / "best.onnx"))


def test_isolated_mode_applies_each_pass_to_the_baseline(model_path, tmp_path):
    result = run_report(model_path, "resize-nearest,fp16-output", tmp_path / "iso", DataSource("synthetic", None, None, 2),
                        isolated=True, timing=FAST, clock=fake_clock(), candidates_factory=fake_candidates())
    assert [s.parent for s in result.stages[1:]] == ["baseline", "baseline"]
    assert result.stages[2].pipeline == "fp16-output"


def test_per_node_resize_measures_each_node(model_path, tmp_path):
    result = run_report(model_path, "simplify", tmp_path / "pn", DataSource("synthetic", None, None, 2),
                        per_node="resize-nearest", timing=FAST, keep_stages="none")
    names = [s.name for s in result.stages]
    assert "node-up" in names
    node = next(s for s in result.stages if s.name == "node-up")
    assert node.pass_ == "resize-nearest{nodes=up}" and node.latency_ms["p50"] > 0 and node.speed["vs"] == "baseline"
    assert not (tmp_path / "pn" / "best.onnx").exists() and not (tmp_path / "pn" / "stages").exists()


def test_auto_drops_the_lossy_pass(model_path):
    pipe = Pipeline((parse_pipeline("simplify").passes[0], ScrambleLogits()))
    d = decide_pipeline(load_model(model_path), pipe, DataSource("synthetic", None, None, 3), budget="1%", timing=FAST,
                        clock=fake_clock(), candidates_factory=fake_candidates(speed={"Neg": 0.5}))
    stages = {s.name: s for s in d.stages}
    assert "exceeds" in stages["2-scramble-logits"].reason and stages["2-scramble-logits"].verdict == "rejected"
    assert d.kept_pipeline == "simplify" and d.best.name == "combined"
    final = d.best_model
    assert "Neg" not in [n.op_type for n in final.graph.node]
    feeds = seeded_inputs(final)
    np.testing.assert_allclose(run_model(final, feeds)["logits"], run_model(tiny_segmenter(), feeds)["logits"], rtol=1e-4, atol=1e-4)


def test_report_cli_writes_report_and_best_model_that_runs(cli, model_path, tmp_path):
    out = tmp_path / "cli-report"
    proc = cli("report", model_path, "--passes", "simplify,fp16-output", "--synthetic", "2", "--min-rounds", "3",
               "--max-rounds", "6", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "best stage" in proc.stdout and "report.html" in proc.stdout and "MB on disk" in proc.stdout
    outputs = run_model(load_model(out / "best.onnx"), seeded_inputs(load_model(out / "best.onnx")))
    assert next(iter(outputs.values())).shape == (1, C, H, W)


def test_optimize_auto_cli(cli, model_path, tmp_path):
    out = tmp_path / "auto.onnx"
    js = tmp_path / "auto.json"
    proc = cli("optimize", model_path, "-o", out, "--passes", "simplify,fp16-output", "--auto", "--synthetic", "2",
               "--budget", "5%", "--min-rounds", "3", "--max-rounds", "6", "--json", js, "--dump-dir", tmp_path / "dump")
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "kept:" in proc.stdout
    model = load_model(out)
    run_model(model, seeded_inputs(model))
    record = json.loads(js.read_text())
    kept = record["auto"]["kept_pipeline"]
    # exactly the kept pipeline is applied, stored in the model's metadata and dumped
    assert record["pipeline"] == kept
    assert {p.key: p.value for p in model.metadata_props}.get("onnxforge.pipeline", "") == kept
    assert [p.name for p in sorted((tmp_path / "dump").iterdir())][1:] == [
        f"{i:03d}_{n}.onnx" for i, n in enumerate([x for x in kept.split(",") if x], start=1)]
    assert f"kept: {kept or 'nothing'}" in proc.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--budget", "lots"], "--budget"),
    (["--budget", "150%"], "budget"),
    (["--budget", "-1pt"], "budget"),
    (["--per-node", "simplify"], "per-node"),
    (["--per-node", "no-such-pass"], "no-such-pass"),
    (["--min-rounds", "0"], "--min-rounds"),
    (["--min-rounds", "-3"], "--min-rounds"),
    (["--max-rounds", "1"], "--max-rounds"),
    (["--keep-stages", "some"], "--keep-stages"),
    ([], "accuracy needs data"),
])
def test_report_bad_input(cli, model_path, tmp_path, args, fragment):
    data = [] if args == [] else ["--synthetic", "2"]
    proc = cli("report", model_path, "--passes", "simplify", "-o", tmp_path / "r", *data, *args)
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "r").exists() and [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]


def test_report_dir_that_is_a_file_is_refused(cli, model_path, tmp_path):
    target = tmp_path / "r"
    target.write_text("keep")
    proc = cli("report", model_path, "--passes", "simplify", "-o", target, "--synthetic", "2")
    assert_one_line_error(proc, "not a directory")
    assert target.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["r", "tiny.onnx"]




def test_combined_stage_reuses_a_stage_measured_already(model_path, tmp_path):
    """Isolated, only simplify kept: the combined stage is that graph, so no second timing run."""
    r = run_report(model_path, "simplify,fp16-output", tmp_path / "r", DataSource("synthetic", None, None, 3), isolated=True,
                   timing=FAST, clock=fake_clock(), candidates_factory=fake_candidates())
    assert r.report["kept_pipeline"] == "simplify" and r.best.name == "combined"
    assert len(r.report["timing"]) == 1 and "faster than baseline" in r.best.reason
    assert r.report["commands"][-1].endswith("-o best.onnx --passes simplify")


def test_when_the_kept_passes_do_not_pay_together_the_exact_ones_are_tried(model_path, tmp_path):
    def factory(models):
        rng = np.random.default_rng(0)

        def ms(m):
            n = len(m.graph.node)
            return 3.0 if _nearest(m) and n == 2 else n * (0.8 if _nearest(m) else 1.0)  # together they clash

        return {name: (lambda t=ms(m): t / 1000.0 * (1.0 + 0.005 * rng.standard_normal())) for name, m in models.items()}

    r = run_report(model_path, "simplify,resize-nearest", tmp_path / "r", DataSource("synthetic", None, None, 3), isolated=True,
                   timing=FAST, clock=fake_clock(), candidates_factory=factory)
    by = {s.name: s for s in r.stages}
    assert by["1-simplify"].verdict == by["2-resize-nearest"].verdict == "accepted"
    assert by["combined"].verdict == "rejected" and by["combined"].speed["verdict"] == "same"
    assert r.best.name == "combined-exact" and r.report["kept_pipeline"] == "simplify"
    assert any("were not kept" in w for w in r.report["warnings"])
    assert r.report["commands"][-1].endswith("--passes simplify")


def test_optimize_auto_no_verify_is_honoured(cli, model_path, tmp_path):
    out = tmp_path / "auto.onnx"
    js = tmp_path / "auto.json"
    proc = cli("optimize", model_path, "-o", out, "--passes", "simplify", "--auto", "--synthetic", "2", "--no-verify",
               "--min-rounds", "3", "--max-rounds", "4", "--json", js)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(js.read_text())
    assert all(s["verification"]["status"] == "off" for s in record["stages"])
    assert all(s["verification"].get("status") in ("off", "unchanged") for s in record["auto"]["stages"][1:])


def test_same_graph_is_recognised_when_constants_were_marked():
    """onnx-graphsurgeon's import marks the caller's Constant tensors with an explicitly empty name: the
    graph is the same, so the combined stage must still reuse the stage measured already."""
    from onnxforge.evaluate.ab import _graph_sha256
    from onnxforge.evaluate.history import model_sha256

    m = tiny_segmenter()
    m.graph.node.insert(0, helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.zeros((1,), np.float32))))
    marked = onnx.ModelProto()
    marked.CopyFrom(m)
    marked.graph.node[0].attribute[0].t.name = ""
    assert model_sha256(marked) != model_sha256(m)  # serialised differently ...
    assert _graph_sha256(marked) == _graph_sha256(m)  # ... but the same graph
    marked.graph.node[0].attribute[0].t.float_data[:] = [1.0]
    assert _graph_sha256(marked) != _graph_sha256(m)

"""Keep-set searches reached from `report --per-node fp16|quantize`, and INT8 judged on a task metric."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from PIL import Image

from onnxforge.evaluate.ab import DataSource, run_report
from onnxforge.evaluate.evaluator import plan_evaluation
from onnxforge.evaluate.int8_search import keep_in_float
from onnxforge.evaluate.keep_search import task_scorer
from onnxforge.evaluate.preprocess import prepare
from onnxforge.evaluate.synthetic import voc_palette, write_synthetic
from onnxforge.modelio import save_model
from onnxforge.numerics import run_model
from onnxforge.passes.quantize import Quantize
from tests.evaluate.test_fp16_search import overflow_model
from tests.evaluate.test_report import FAST, fake_candidates, fake_clock


def labelled_by(model, root, n=6, classes=5):
    """A synthetic set on disk (VOC layout) whose labels are `model`'s own predictions: the float model
    scores mIoU 1.0 on it, so the task metric is meaningful and any change of prediction costs."""
    h, w = (int(d.dim_value) for d in model.graph.input[0].type.tensor_type.shape.dim[2:])
    write_synthetic(root, n=n, size=(h, w), classes=classes)
    plan = plan_evaluation(model, "synthetic", root)
    for s in plan.dataset:
        p = prepare(plan.spec.preprocess, s, plan.canvas, plan.spec.mean, plan.spec.std, plan.spec.resize_short, plan.spec.ignore_index)
        logits = next(iter(run_model(model, {model.graph.input[0].name: p.input[None].astype(np.float32)}).values()))
        lab = Image.fromarray(logits.argmax(1)[0].astype(np.uint8), "P")
        lab.putpalette(voc_palette())
        lab.save(root / "SegmentationClass" / f"{s.name}.png")
    return root


def sensitive_segmenter(size: int = 16) -> onnx.ModelProto:
    """test_int8_search's model (`head` is the node to keep in float) at `size` with larger weights."""
    from tests.evaluate.test_int8_search import sensitive_convnet

    return sensitive_convnet(size, (0.5, 0.3, 1.0))


def test_int8_keep_set_judged_on_the_task_metric(tmp_path):
    model = sensitive_segmenter()
    root = labelled_by(model, tmp_path / "data")
    scorer = task_scorer(model, "synthetic", root, limit=4)
    assert scorer.metric == "mIoU" and scorer.source == "accuracy" and scorer.baseline_value == pytest.approx(1.0)
    confirm = task_scorer(model, "synthetic", root)
    found = keep_in_float(model, [], "5%", quantize=Quantize(per_channel=False), scorer=scorer,
                          confirm=confirm, confirm_baseline=confirm.baseline_value)
    assert found.keep == ["head"] and found.within_budget
    assert found.score_all < 0.95 <= found.score  # mIoU: every node INT8 is over the 5% budget, head in float within
    assert found.item == "quantize{per_channel=false,exclude=head}" and found.budget_text == "5.00%"
    assert found.ranking[0][0] == "head" and found.quantizations == 1 + 3 + 1  # all, each alone, the confirmation


def test_report_per_node_fp16_adds_the_mixed_stage_and_writes_precision(tmp_path):
    model_path = save_model(overflow_model(size=16), tmp_path / "m.onnx")
    out = tmp_path / "rep"
    result = run_report(model_path, "fp16", out, DataSource("synthetic", None, None, 10), per_node="fp16", timing=FAST,
                        keep_stages="none", clock=fake_clock(), candidates_factory=fake_candidates())
    names = [s.name for s in result.stages]
    assert names[:3] == ["baseline", "1-fp16", "mixed-precision"]
    mixed = result.stages[2]
    assert mixed.pass_ == "fp16{keep=amplify}" and mixed.parent == "baseline" and mixed.accuracy_verdict == "within"
    search = result.report["keep_searches"][0]
    assert search["keep"] == ["amplify"] and search["subset_images"] == 8 and search["full_images"] == 10
    assert search["search"]["score_all"] < search["baseline_subset"]  # all-fp16 (simulated) over budget
    rows = {r["group"]: r for r in search["rows"]}
    assert rows["amplify"]["kept"] and rows["amplify"]["overflow"] > 0 and not rows["head"]["kept"]
    keep = [ln for ln in (out / "precision" / "keep_dtype.cfg").read_text().splitlines() if not ln.startswith("#")]
    assert keep == ["amplify"]
    manifest = json.loads((out / "precision" / "precision.json").read_text())
    assert manifest["pipeline_item"] == "fp16{keep=amplify}" and manifest["cann_profile"] == "8.0"
    md = (out / "report.md").read_text()
    assert "## Keep-set search: fp16" in md and "| amplify | amplify |" in md
    assert "--precision-config" in result.report["commands"][-1]
    assert 'data-pass="fp16"' in (out / "report.html").read_text()


def test_an_over_budget_quantize_stage_without_per_node_says_how_to_search():
    from onnxforge.evaluate.ab import decide_pipeline

    d = decide_pipeline(sensitive_segmenter(), "quantize{per_channel=false}", DataSource("synthetic", None, None, 4),
                        timing=FAST, clock=fake_clock(), candidates_factory=fake_candidates())
    assert d.stages[1].accuracy_verdict == "over" and not d.searches
    assert any("1-quantize is over the budget: --per-node quantize searches the nodes to keep in float" in w for w in d.warnings)


def test_report_per_node_quantize_adds_the_keep_set_stage(tmp_path):
    model_path = save_model(sensitive_segmenter(), tmp_path / "m.onnx")
    result = run_report(model_path, "quantize{per_channel=false}", tmp_path / "rep", DataSource("synthetic", None, None, 8),
                        per_node="quantize", budget="5%", timing=FAST, keep_stages="none", clock=fake_clock(),
                        candidates_factory=fake_candidates())
    names = [s.name for s in result.stages]
    assert names[:3] == ["baseline", "1-quantize", "quantize-keep-set"]
    stage = result.stages[2]
    search = result.report["keep_searches"][0]
    assert search["pass"] == "quantize" and search["keep"][0] == "head"  # the sensitive node is kept first
    assert stage.pass_ == f"quantize{{per_channel=false,exclude={'|'.join(search['keep'])}}}"
    assert stage.accuracy_verdict == "within" and result.stages[1].accuracy_verdict == "over"
    assert not (tmp_path / "rep" / "precision").exists()
    assert "## Keep-set search: quantize" in (tmp_path / "rep" / "report.md").read_text()


def test_cli_report_per_node_fp16_then_compile_with_its_precision_config(cli, tmp_path):
    """As a user would: the report writes precision/, compile consumes it (dry run: no atc needed)."""
    model_path = save_model(overflow_model(size=16), tmp_path / "m.onnx")
    proc = cli("report", model_path, "--passes", "fp16", "--synthetic", "10", "--per-node", "fp16", "--min-rounds", "2",
               "--max-rounds", "3", "--max-seconds", "2", "--keep-stages", "none", "-o", tmp_path / "rep")
    assert proc.returncode == 0, proc.stderr
    assert "keep-set search (fp16): fp16: keep 1 node(s) in float32 (amplify): fp16{keep=amplify}" in proc.stdout
    assert f"atc precision config: {tmp_path / 'rep' / 'precision'}" in proc.stdout.replace("\n", "")
    proc = cli("compile", model_path, "--cann", "8.0", "--precision-config", tmp_path / "rep" / "precision", "--dry-run",
               env={"PATH": ""})
    assert proc.returncode == 0, proc.stderr
    line = (tmp_path / "m.atc.sh").read_text().splitlines()[-1]
    assert f"--precision_mode_v2=fp16 --keep_dtype={tmp_path / 'rep' / 'precision' / 'keep_dtype.cfg'}" in line
    assert f"--op_precision_mode={tmp_path / 'rep' / 'precision' / 'op_precision.ini'}" in line


def test_report_per_node_fp16_within_budget_adds_no_stage_and_writes_an_empty_keep_set(tmp_path):
    model_path = save_model(overflow_model(size=16), tmp_path / "m.onnx")
    result = run_report(model_path, "fp16{block_nodes=amplify}", tmp_path / "rep", DataSource("synthetic", None, None, 4),
                        per_node="fp16", timing=FAST, keep_stages="none", clock=fake_clock(), candidates_factory=fake_candidates())
    assert "mixed-precision" not in [s.name for s in result.stages]
    search = result.report["keep_searches"][0]
    assert search["keep"] == [] and search["search"]["evaluations"] == 1 and "nothing to keep in float32" in search["summary"]
    cfg = (tmp_path / "rep" / "precision" / "keep_dtype.cfg").read_text()
    assert [ln for ln in cfg.splitlines() if not ln.startswith("#")] == []
    assert json.loads((tmp_path / "rep" / "precision" / "precision.json").read_text())["pipeline_item"] == "fp16{block_nodes=amplify}"


def test_a_keep_set_naming_a_node_the_model_lacks_is_one_error_line(cli, tmp_path):
    from tests.conftest import assert_one_line_error

    model_path = save_model(overflow_model(), tmp_path / "m.onnx")
    proc = cli("optimize", model_path, "-o", tmp_path / "o.onnx", "--passes", "fp16{keep=amplify|Mul_99}")
    assert_one_line_error(proc, "fp16: no graph node 'Mul_99'")
    assert not (tmp_path / "o.onnx").exists()

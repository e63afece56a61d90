"""The A/B report with the atc backend records the exact atc command of every compiled stage (recording fakes)."""

from __future__ import annotations

import json
import sys

from onnxforge.evaluate.ab import DataSource, run_report
from onnxforge.modelio import save_model
from tests.backends.fakes import FAKE_ATC, OK_BODY, install_fake_ais_bench, install_fake_atc, path_with
from tests.evaluate.test_report import FAST, fake_candidates, fake_clock, tiny_segmenter


def test_report_records_each_stages_atc_argv_in_json_and_markdown(tmp_path, monkeypatch):
    record = tmp_path / "argv.txt"
    atc = install_fake_atc(tmp_path / "bin", record)
    runs = tmp_path / "runs.jsonl"  # every run: its argv and the node count of the model it was given
    atc.write_text(FAKE_ATC.format(python=sys.executable, record=str(record), body=OK_BODY + f"""
import json, onnx
with open({str(runs)!r}, "a") as f:
    f.write(json.dumps({{"argv": args, "nodes": len(onnx.load(opts["model"]).graph.node)}}) + "\\n")
"""))
    monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
    install_fake_ais_bench(monkeypatch)
    model = save_model(tiny_segmenter(), tmp_path / "tiny.onnx")
    result = run_report(model, "simplify", tmp_path / "r", DataSource("synthetic", None, None, 2),
                        backend="atc{cann=8.0,soc_version=Ascend910}", timing=FAST, clock=fake_clock(),
                        candidates_factory=fake_candidates())
    report = json.loads(result.files["json"].read_text())
    compiled = {c["stage"]: c for c in report["compile_commands"]}
    assert set(compiled) == {s.name for s in result.stages}  # every evaluated stage was compiled once
    for c in compiled.values():
        argv = c["command"]
        assert argv[0].endswith("atc") and argv[1] == "--framework=5" and "--soc_version=Ascend910" in argv
        assert "--input_shape=image:1,3,32,64" in argv and c["tool"] == "atc" and c["cann_profile"] == "8.0"
        assert c["shell"].split()[1:] == argv[1:]
    # each record is the compile of its own stage's model (not the reference baseline's, compiled beside it)
    ran = [json.loads(line) for line in runs.read_text().splitlines()]
    nodes = {s.name: s.nodes for s in result.stages}
    assert nodes["baseline"] != nodes["1-simplify"]
    for name, c in compiled.items():
        assert [r["nodes"] for r in ran if r["argv"] == c["command"][1:]] == [nodes[name]], name
    assert compiled["combined"]["command"] == compiled["1-simplify"]["command"]  # the same graph, measured once
    md = result.files["md"].read_text()
    assert "## Compile commands" in md and compiled["baseline"]["shell"] in md


def test_onnxruntime_reports_no_compile_commands(tmp_path):
    model = save_model(tiny_segmenter(), tmp_path / "tiny.onnx")
    result = run_report(model, "simplify", tmp_path / "r", DataSource("synthetic", None, None, 2), timing=FAST,
                        clock=fake_clock(), candidates_factory=fake_candidates())
    assert json.loads(result.files["json"].read_text())["compile_commands"] == []
    assert "## Compile commands" not in result.files["md"].read_text()

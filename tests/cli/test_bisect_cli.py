from __future__ import annotations

import json
import shlex

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxforge.cli.app import main


def seg_model(path) -> None:
    """(1,3,32,32) -> 1x1 conv to 4 classes -> Resize r_down (linear, /8) -> Resize r_up (linear, x8) -> logits.

    Switching r_up to nearest makes blocky label maps (an accuracy loss); the pipeline's other passes are exact.
    """
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([1, 1, 0.125, 0.125], np.float32), "down"),
        numpy_helper.from_array(np.array([1, 1, 8, 8], np.float32), "up"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Resize", ["c", "", "down"], ["d"], name="r_down", mode="linear"),
        helper.make_node("Resize", ["d", "", "up"], ["logits"], name="r_up", mode="linear"),
    ]
    g = helper.make_graph(nodes, "seg", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 32, 32])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_bisect_end_to_end_and_reproducer_runs(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    seg_model(model)
    out = tmp_path / "repro"
    rc = main(["bisect", str(model), "--passes", "simplify,resize-nearest,simplify", "--synthetic", "4",
               "--budget", "0.5pt", "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    data = json.loads((out / "bisect.json").read_text())
    assert data["culprit"].startswith("resize-nearest") and data["culprit_index"] == 2
    assert data["nodes"] and set(data["nodes"]) <= {"r_up", "r_down"}
    assert "resize-nearest" in text and "evaluations" in text
    assert (out / "subgraph.onnx").exists() and (out / "inputs.npz").exists()
    cmd = shlex.split((out / "command.txt").read_text())
    assert cmd[:2] == ["onnxforge", "optimize"]
    assert main(cmd[1:]) == 0
    assert (out / "subgraph-opt.onnx").exists()


def test_within_budget_writes_nothing(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    seg_model(model)
    out = tmp_path / "repro"
    rc = main(["bisect", str(model), "--passes", "simplify", "--synthetic", "2", "-o", str(out)])
    assert rc == 0 and "within budget" in capsys.readouterr().out
    assert not out.exists()


def test_bad_budget_is_one_error_line(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    seg_model(model)
    rc = main(["bisect", str(model), "--passes", "simplify", "--synthetic", "2", "--budget", "lots"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error:")

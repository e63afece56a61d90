"""`onnxforge passes` and `onnxforge optimize` run as a user would, then their output is run."""

from __future__ import annotations

import json

import numpy as np
import onnx

from onnxforge.modelio import load_model, save_model
from tests.conftest import assert_one_line_error
from tests.passes.helpers import outputs, parse

MODEL = """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  w = Constant<value = float[4,3,1,1] {1,2,3,4,5,6,7,8,9,10,11,12}>()
  c = Conv(x, w)
  i = Identity(c)
  y = Relu(i)
}"""


def _model(tmp_path):
    return save_model(parse(MODEL), tmp_path / "in.onnx")


def test_passes_lists_every_pass(cli):
    proc = cli("passes")
    assert proc.returncode == 0, proc.stderr
    from onnxforge.passes import all_passes

    for name, cls in all_passes().items():
        assert name in proc.stdout
        assert cls.kind.value in proc.stdout


def test_optimize_writes_a_model_that_runs(cli, tmp_path):
    src = _model(tmp_path)
    before = src.read_bytes()
    out = tmp_path / "out.onnx"
    report = tmp_path / "stages.json"
    proc = cli("optimize", src, "-o", out, "--passes", "simplify,fp16-output", "--json", report, "--dump-dir", tmp_path / "dump")
    assert proc.returncode == 0, proc.stderr
    assert "simplify" in proc.stdout and "passed" in proc.stdout and "measured" in proc.stdout
    assert src.read_bytes() == before
    got = outputs(load_model(out))["y"]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), outputs(parse(MODEL))["y"], rtol=1e-2, atol=1e-2)
    stages = json.loads(report.read_text())["stages"]
    assert [s["name"] for s in stages] == ["simplify", "fp16-output"]
    assert sorted(p.name for p in (tmp_path / "dump").iterdir())[-1] == "002_fp16-output.onnx"


def test_unknown_pass_is_one_line_error_and_writes_nothing(cli, tmp_path):
    src = _model(tmp_path)
    out = tmp_path / "out.onnx"
    proc = cli("optimize", src, "-o", out, "--passes", "simplify,resize-neerest")
    assert_one_line_error(proc, "unknown pass 'resize-neerest'", "column 10")
    assert not out.exists()


def test_output_equal_to_input_is_refused(cli, tmp_path):
    src = _model(tmp_path)
    before = src.read_bytes()
    proc = cli("optimize", src, "-o", src, "--passes", "simplify")
    assert_one_line_error(proc, "is the input model")
    assert src.read_bytes() == before


def test_bad_input_files(cli, tmp_path):
    missing = cli("optimize", tmp_path / "nope.onnx", "-o", tmp_path / "o.onnx", "--passes", "simplify")
    assert_one_line_error(missing, "no such file")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 50)
    proc = cli("optimize", junk, "-o", tmp_path / "o.onnx", "--passes", "simplify")
    assert_one_line_error(proc, "junk.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_bad_option_value(cli, tmp_path):
    proc = cli("optimize", _model(tmp_path), "-o", tmp_path / "o.onnx", "--passes", "simplify{fuse_bn=3}")
    assert_one_line_error(proc, "expected true or false")


def test_existing_output_is_kept_when_a_pass_fails(cli, tmp_path):
    # fp16-output with a name that does not exist changes nothing; a failing pipeline must not touch OUT.
    out = tmp_path / "out.onnx"
    out.write_bytes(b"keep me")
    proc = cli("optimize", tmp_path / "absent.onnx", "-o", out, "--passes", "simplify")
    assert proc.returncode != 0
    assert out.read_bytes() == b"keep me"


DYNAMIC = """
g (float[N,3,H,W] x) => (float[N,4,H,W] y) {
  w = Constant<value = float[4,3,1,1] {1,2,3,4,5,6,7,8,9,10,11,12}>()
  c = Conv(x, w)
  i = Identity(c)
  y = Relu(i)
}"""


def test_optimize_verifies_dynamic_inputs_numerically_at_the_given_shape(cli, tmp_path):
    src = save_model(parse(DYNAMIC), tmp_path / "dyn.onnx")
    out, report = tmp_path / "out.onnx", tmp_path / "stages.json"
    proc = cli("optimize", src, "-o", out, "--passes", "simplify", "--verify-shape", "x:2x3x16x24",
               "--atol", "1e-5", "--rtol", "1e-5", "--json", report)
    assert proc.returncode == 0, proc.stderr
    v = json.loads(report.read_text())["stages"][0]["verification"]
    assert v["status"] == "passed" and v["inputs"] == "x:2x3x16x24 (--verify-shape)"
    assert v["outputs"][0]["name"] == "y" and v["outputs"][0]["max_abs"] is not None
    assert "max rel" in proc.stdout and "2x3x16x24" in proc.stdout
    x = np.random.default_rng(0).standard_normal((1, 3, 5, 5)).astype(np.float32)
    from onnxforge.numerics import run_model

    np.testing.assert_allclose(run_model(load_model(out), {"x": x})["y"], run_model(parse(DYNAMIC), {"x": x})["y"], rtol=1e-5, atol=1e-5)


def test_optimize_verifies_on_user_inputs(cli, tmp_path):
    src = save_model(parse(DYNAMIC), tmp_path / "dyn.onnx")
    np.savez(tmp_path / "data.npz", x=np.ones((1, 3, 7, 9), np.float32))
    out, report = tmp_path / "out.onnx", tmp_path / "stages.json"
    proc = cli("optimize", src, "-o", out, "--passes", "simplify", "--verify-inputs", tmp_path / "data.npz", "--json", report)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_text())["stages"][0]["verification"]["inputs"] == "x:1x3x7x9 (your input)"


def test_bad_verification_inputs_are_one_line_errors_and_write_nothing(cli, tmp_path):
    src = save_model(parse(DYNAMIC), tmp_path / "dyn.onnx")
    out = tmp_path / "out.onnx"
    np.save(tmp_path / "wrong.npy", np.ones((1, 4, 8, 8), np.float32))
    for args, message in [
        (["--verify-shape", "nope:1x3x8x8"], "no graph input 'nope'"),
        (["--verify-shape", "x:1x3x8"], "has rank 4"),
        (["--verify-shape", "x:1x3xHx8"], "positive integer sizes"),
        (["--verify-inputs", tmp_path / "wrong.npy"], "dimension 1 is 3"),
        (["--atol", "-1"], "non-negative"),
    ]:
        proc = cli("optimize", src, "-o", out, "--passes", "simplify", *args)
        assert_one_line_error(proc, message)
        assert not out.exists()

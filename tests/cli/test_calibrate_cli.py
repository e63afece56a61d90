"""`onnxforge calibrate`: a calibration file from a dataset with its preprocessing, usable by quantize; bad input."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.evaluate.calibration import calibration_inputs
from onnxforge.modelio import load_model
from tests.conftest import assert_one_line_error
from tests.evaluate.builders import save, seg_model, write_cityscapes


def test_calibrate_writes_the_datasets_preprocessed_images_and_quantize_uses_them(cli, tmp_path):
    write_cityscapes(tmp_path / "cs", size=(8, 16))
    model = save(seg_model(classes=19, size=(8, 16)), tmp_path / "m.onnx")
    out = tmp_path / "calib.npz"
    proc = cli("calibrate", model, "--dataset", "cityscapes", "--data-root", tmp_path / "cs", "--preset", "fastscnn",
               "--images", "2", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "image 2x3x8x16 float32" in proc.stdout and "quantize{calibration=" in proc.stdout
    with np.load(out) as npz:
        written = {k: npz[k] for k in npz.files}
    want = calibration_inputs(load_model(model), "cityscapes", tmp_path / "cs", preset="fastscnn", count=2)
    assert written.keys() == want.keys() and np.array_equal(written["image"], want["image"])  # the evaluator's preprocessing
    q = tmp_path / "q.onnx"
    proc = cli("optimize", model, "-o", q, "--passes", f"quantize{{calibration={out},images=2}}")
    assert proc.returncode == 0, proc.stderr
    ops = [n.op_type for n in load_model(q).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


def test_calibrate_synthetic_in_memory_at_the_models_size(cli, tmp_path):
    model = save(seg_model(classes=6, size=(16, 24)), tmp_path / "m.onnx")
    out = tmp_path / "c.npz"
    proc = cli("calibrate", model, "--dataset", "synthetic", "--images", "3", "-o", out)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as npz:
        assert npz["image"].shape == (3, 3, 16, 24)


@pytest.mark.parametrize("args, fragments", [
    (["--dataset", "cityscapes", "--preset", "fastscnn", "--images", "5"], ["has 2 samples, 5 requested"]),
    (["--dataset", "cityscapes"], ["needs a preset"]),
    (["--dataset", "nosuch", "--preset", "fastscnn"], ["nosuch"]),
    (["--dataset", "cityscapes", "--preset", "fastscnn", "--images", "0"], ["--images"]),
])
def test_bad_input_is_one_error_line_and_nothing_written(cli, tmp_path, args, fragments):
    write_cityscapes(tmp_path / "cs", size=(8, 16))
    model = save(seg_model(classes=19, size=(8, 16)), tmp_path / "m.onnx")
    out = tmp_path / "calib.npz"
    proc = cli("calibrate", model, "--data-root", tmp_path / "cs", *args, "-o", out)
    assert_one_line_error(proc, *fragments)
    assert not out.exists()


def test_missing_model_and_missing_output_directory(cli, tmp_path):
    proc = cli("calibrate", tmp_path / "none.onnx", "--dataset", "synthetic", "-o", tmp_path / "c.npz")
    assert_one_line_error(proc, "none.onnx")
    model = save(seg_model(), tmp_path / "m.onnx")
    proc = cli("calibrate", model, "--dataset", "synthetic", "-o", tmp_path / "no" / "c.npz")
    assert_one_line_error(proc, "does not exist")

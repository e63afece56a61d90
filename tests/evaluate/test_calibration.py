"""Calibration inputs from datasets: the dataset's own preprocessing, sizes, seeds, bad input; and the
quantize pass calibrated on the file written."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from onnxforge.errors import DatasetError, EvaluationError
from onnxforge.evaluate.calibration import CALIBRATION_SEED, calibration_inputs, write_calibration
from onnxforge.evaluate.synthetic import EVAL_SEED, generate_sample
from onnxforge.passes.base import ModelState
from onnxforge.passes.quantize import Quantize
from tests.evaluate.builders import seg_model, write_cityscapes, write_voc

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def test_cityscapes_with_the_fastscnn_preset_is_rgb_over_255_mean_std(tmp_path):
    stems = write_cityscapes(tmp_path, size=(8, 16))
    model = seg_model(classes=19, size=(8, 16))
    arrays = calibration_inputs(model, "cityscapes", tmp_path, preset="fastscnn", count=2)
    assert list(arrays) == ["image"] and arrays["image"].shape == (2, 3, 8, 16) and arrays["image"].dtype == np.float32
    files = sorted(tmp_path.glob("leftImg8bit/val/*/*.png"))
    assert [f.stem for f in files] == sorted(stems)
    for row, path in zip(arrays["image"], files):
        rgb = np.asarray(Image.open(path).convert("RGB"), np.float32)
        want = ((rgb / 255.0 - MEAN) / STD).transpose(2, 0, 1)
        np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-5)


def test_voc_with_the_pspnet_preset_pads_with_zero_after_normalising(tmp_path):
    write_voc(tmp_path, sizes=[(10, 20), (20, 10)])
    model = seg_model(classes=21, size=(16, 16))
    x = calibration_inputs(model, "voc2012", tmp_path, preset="pspnet", count=2)["image"]
    # keep-ratio-pad: 10x20 fits 16x16 as 8x16, centred: rows 0..3 and 12..15 are the zero pad
    assert x.shape == (2, 3, 16, 16)
    assert np.all(x[0, :, :4, :] == 0) and np.all(x[0, :, 12:, :] == 0) and np.abs(x[0, :, 4:12, :]).max() > 0
    assert np.all(x[1, :, :, :4] == 0) and np.all(x[1, :, :, 12:] == 0)


def test_synthetic_in_memory_uses_its_own_seed_not_the_evaluation_one():
    model = seg_model(classes=6, size=(16, 24))
    x = calibration_inputs(model, "synthetic", None, count=3)["image"]
    assert x.shape == (3, 3, 16, 24)
    img, _ = generate_sample(0, (16, 24), seed=CALIBRATION_SEED)
    np.testing.assert_allclose(x[0], ((img / 255.0 - MEAN) / STD).astype(np.float32).transpose(2, 0, 1), rtol=1e-5, atol=1e-5)
    eval_img, _ = generate_sample(0, (16, 24), seed=EVAL_SEED)
    assert not np.array_equal(img, eval_img)
    assert CALIBRATION_SEED != EVAL_SEED


def test_fewer_samples_than_requested_writes_nothing(tmp_path):
    write_cityscapes(tmp_path / "cs", size=(8, 16))
    out = tmp_path / "calib.npz"
    with pytest.raises(DatasetError, match="has 2 samples, 5 requested"):
        write_calibration(out, seg_model(classes=19, size=(8, 16)), "cityscapes", tmp_path / "cs", preset="fastscnn", count=5)
    assert not out.exists()


@pytest.mark.parametrize("kwargs,error,match", [
    ({"dataset": "cityscapes", "preset": None}, EvaluationError, "needs a preset"),
    ({"dataset": "cityscapes", "preset": "fastscnn", "count": 0}, EvaluationError, "count must be at least 1"),
    ({"dataset": "mnist", "preset": "fastscnn"}, DatasetError, "unknown dataset"),
])
def test_bad_requests(tmp_path, kwargs, error, match):
    write_cityscapes(tmp_path, size=(8, 16))
    with pytest.raises(error, match=match):
        calibration_inputs(seg_model(classes=19, size=(8, 16)), data_root=tmp_path, **kwargs)


def test_dynamic_input_is_refused():
    with pytest.raises(EvaluationError, match="dynamic dims"):
        calibration_inputs(_dynamic_hw(), "synthetic")


def _dynamic_hw() -> onnx.ModelProto:
    model = seg_model(classes=6, size=(16, 24))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    return model


def test_quantize_calibrated_on_the_written_file(tmp_path):
    """End to end: write_calibration -> quantize{calibration=...}: the input's range is the dataset's."""
    write_cityscapes(tmp_path / "cs", size=(8, 16))
    model = seg_model(classes=19, size=(8, 16), opset=13)
    path = write_calibration(tmp_path / "calib.npz", model, "cityscapes", tmp_path / "cs", preset="fastscnn", count=2)
    data = np.load(path)["image"]
    state = ModelState(model)
    result = Quantize(calibration=str(path), images=2).run(state)
    q = state.release()
    assert result.modified
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    qx = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "image")
    lo, hi = min(float(data.min()), 0.0), max(float(data.max()), 0.0)
    assert float(inits[qx.input[1]]) == pytest.approx((hi - lo) / 255.0, rel=1e-5)

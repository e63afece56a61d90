"""`evaluate --predictions` finds the outputs at every level of ais_bench's output layout (written here by hand)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxforge.backends.base import TensorInfo
from onnxforge.errors import EvaluationError
from onnxforge.evaluate.predictions import PredictionDir, output_folders

OUT = TensorInfo("logits", (1, 2, 2, 2), np.dtype(np.float32))


def _write(folder, stem, value):
    folder.mkdir(parents=True, exist_ok=True)
    np.full((1, 2, 2, 2), value, np.float32).tofile(folder / f"{stem}_0.bin")


def _multi_device_run(out):
    """OUT/TS/device<k>/<stem>_0.bin and OUT/TS/device<k>_summary.json, as `ais_bench --device 0,1` writes them."""
    run = out / "2024_05_06-07_08_09"
    for k, stems in ((0, ("a", "b")), (1, ("c",))):
        for i, stem in enumerate(stems):
            _write(run / f"device{k}", stem, 10 * k + i)
        (run / f"device{k}_summary.json").write_text(json.dumps({"throughput": 100.0 + k}))
    return run


def test_every_level_of_a_multi_device_run_reads_the_same_files(tmp_path):
    run = _multi_device_run(tmp_path / "out")
    for folder in (tmp_path / "out", run):
        pred = PredictionDir(folder, OUT)
        assert [p.name for p in pred.folders] == ["device0", "device1"]
        assert pred.convention == "ais_bench" and pred.throughput == pytest.approx(201.0)
        pred.check_complete(["a", "b", "c"])
        assert float(pred.read("c").ravel()[0]) == 10.0
    one = PredictionDir(run / "device1", OUT)
    assert one.throughput == pytest.approx(101.0) and one.path_for("a") is None


def test_single_device_run_and_ais_infers_sumary_json(tmp_path):
    run = tmp_path / "out" / "2024_05_06-07_08_09"
    _write(run, "a", 1.0)
    (tmp_path / "out" / "2024_05_06-07_08_09_summary.json").write_text(json.dumps({"throughput": 50.0}))
    assert output_folders(tmp_path / "out") == [run]
    assert PredictionDir(tmp_path / "out", OUT).throughput == pytest.approx(50.0)
    flat = tmp_path / "ais_infer"
    _write(flat, "a", 1.0)
    (flat / "sumary.json").write_text(json.dumps({"throughput": 7.5}))
    assert PredictionDir(flat, OUT).throughput == pytest.approx(7.5)
    bare = tmp_path / "bare"
    _write(bare, "a", 1.0)
    assert PredictionDir(bare, OUT).throughput is None


def test_several_runs_or_a_name_in_two_devices_are_errors(tmp_path):
    _multi_device_run(tmp_path / "out")
    (tmp_path / "out" / "2024_05_06-07_09_00").mkdir()
    with pytest.raises(EvaluationError, match=r"holds 2 ais_bench runs \(2024_05_06-07_08_09, 2024_05_06-07_09_00\)"):
        PredictionDir(tmp_path / "out", OUT)
    run = _multi_device_run(tmp_path / "dup")
    _write(run / "device1", "a", 5.0)
    with pytest.raises(EvaluationError, match="a_0.bin is in both"):
        PredictionDir(run, OUT)

"""`onnxforge shapes`, `evaluate --gears` and `onnxforge compare-dump` run as a user would."""

from __future__ import annotations

import json

import numpy as np
import onnx

from tests.conftest import assert_one_line_error
from tests.evaluate.builders import save, write_voc
from tests.evaluate.test_dump_compare import small_model, write_dump
from tests.evaluate.test_evaluator import oracle
from tests.evaluate.test_gears import CITY_SIZES, _city_mixed


def test_shapes_table_compile_line_and_json(cli, tmp_path):
    write_voc(tmp_path, [(40, 60), (40, 60), (60, 40), (100, 150)])
    proc = cli("shapes", "--dataset", "voc2012", "--data-root", tmp_path, "--max-gears", "3", "--multiple", "8")
    assert proc.returncode == 0, proc.stderr
    assert "40x60" in proc.stdout and "exact" in proc.stdout and "p90" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "onnxforge compile MODEL.onnx --dynamic-image-sizes 40x64,64x40,104x152"
    proc = cli("shapes", "--dataset", "voc2012", "--data-root", tmp_path, "--max-gears", "3", "--multiple", "8", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [g["gear"] for g in data["gears"]] == ["40x64", "64x40", "104x152"] and data["images"] == 4
    assert data["compile_args"] == "--dynamic-image-sizes 40x64,64x40,104x152"


def test_shapes_measures_pad_against_resize_and_evaluate_routes(cli, tmp_path):
    root = _city_mixed(tmp_path, CITY_SIZES)
    model = save(oracle(19, ("H", "W"), batch="N"), tmp_path / "dyn.onnx")
    proc = cli("shapes", "--dataset", "cityscapes", "--data-root", root, "--preset", "fastscnn", "--max-gears", "2",
               "--multiple", "8", "--model", model, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [g["gear"] for g in data["gears"]] == ["8x16", "16x24"]
    pad, resize = data["policies"]["pad"]["metrics"], data["policies"]["resize"]["metrics"]
    assert pad["pixAcc"] == 1.0 and resize["pixAcc"] < 1.0
    out = tmp_path / "r.json"
    proc = cli("evaluate", model, "--dataset", "cityscapes", "--data-root", root, "--preset", "fastscnn",
               "--gears", "8x16,16x24", "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["metrics"]["pixAcc"] == 1.0 and "8x16: 2 images" in proc.stdout


def test_gear_and_shapes_errors_are_one_line(cli, tmp_path):
    root = _city_mixed(tmp_path, CITY_SIZES)
    model = save(oracle(19, ("H", "W"), batch="N"), tmp_path / "dyn.onnx")
    proc = cli("evaluate", model, "--dataset", "cityscapes", "--data-root", root, "--preset", "fastscnn", "--gears", "8x16")
    assert_one_line_error(proc, "larger than every gear (8x16)")
    proc = cli("evaluate", model, "--dataset", "cityscapes", "--data-root", root, "--preset", "fastscnn", "--gears", "8by16")
    assert_one_line_error(proc, "--gears", "HEIGHTxWIDTH")
    proc = cli("shapes", "--dataset", "voc2012", "--data-root", tmp_path / "missing")
    assert_one_line_error(proc, "data root does not exist")
    proc = cli("shapes", "--dataset", "cityscapes", "--data-root", root, "--max-gears", "0")
    assert_one_line_error(proc, "--max-gears")
    write_voc(tmp_path / "voc", [(6, 8)])
    proc = cli("shapes", "--dataset", "voc2012", "--data-root", tmp_path / "voc", "--preset", "pspnet", "--model", model)
    assert_one_line_error(proc, "--model: preset pspnet makes every image 500x500")


def test_compare_dump_names_the_perturbed_op(cli, tmp_path):
    model = small_model()
    onnx.save(model, tmp_path / "small.onnx")
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    write_dump(tmp_path / "dump", model, x, perturb=("/relu/Relu", "/head/Conv"))
    proc = cli("compare-dump", tmp_path / "small.onnx", tmp_path / "dump", "--inputs", tmp_path / "x.npy")
    assert proc.returncode == 0, proc.stderr
    assert "FIRST FAIL" in proc.stdout and proc.stdout.strip().splitlines()[-1].startswith("first failing op: _relu_Relu")
    proc = cli("compare-dump", tmp_path / "small.onnx", tmp_path / "dump", "--inputs", tmp_path / "x.npy", "--format", "json")
    data = json.loads(proc.stdout)
    assert data["first_failing"] == "_relu_Relu" and data["compared"] == 5 and data["failing"] == 2
    proc = cli("compare-dump", tmp_path / "small.onnx", tmp_path / "nodump", "--inputs", tmp_path / "x.npy")
    assert_one_line_error(proc, "dump folder does not exist")

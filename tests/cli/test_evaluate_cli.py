"""`onnxforge evaluate`, `bench` and `compile` run as a user would (subprocesses), then their outputs checked."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from onnxforge.evaluate.synthetic import write_synthetic
from tests.backends.fakes import install_fake_atc, path_with
from tests.conftest import assert_one_line_error
from tests.evaluate.builders import save, seg_model, write_png


def test_evaluate_synthetic_json_schema(cli, tmp_path):
    model = save(seg_model(classes=3, size=(16, 24)), tmp_path / "m.onnx")
    out = tmp_path / "result.json"
    proc = cli("evaluate", model, "--dataset", "synthetic", "--limit", "4", "--json", out, "--reference", model)
    assert proc.returncode == 0, proc.stderr
    assert "mIoU" in proc.stdout and "pixAcc" in proc.stdout and "vs reference: pixel_agreement" in proc.stdout
    data = json.loads(out.read_text())
    assert set(data["metrics"]) == {"mIoU", "pixAcc"}
    assert all(0.0 <= v <= 1.0 for v in data["metrics"].values())
    assert data["dataset"] == "synthetic" and data["preset"] is None and data["backend"] == "onnxruntime"
    assert data["images"] == 4 and data["batch_size"] == 1
    assert set(data["timings"]) >= {"total_s", "inference_s", "overhead_s"}
    assert data["agreement"]["pixel_agreement"] == 1.0 and data["agreement"]["max_abs_error"] == 0.0
    assert not list(tmp_path.glob(".result.json.*"))  # written atomically, no temp left behind


def test_evaluate_with_a_real_preset_on_voc(cli, tmp_path):
    # pspnet's preset: 500x500 keep-ratio-pad, mmseg mIoU; a 1x1-conv model with 21 classes at that size
    model = save(seg_model(classes=21, size=(500, 500), input_name="input"), tmp_path / "psp.onnx")
    root = tmp_path / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    for name, (h, w) in (("2007_000033", (375, 500)), ("2007_000042", (335, 500))):
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        write_png(root / "SegmentationClass" / f"{name}.png", rng.integers(0, 3, (h, w)).astype(np.uint8), palette=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n2007_000042\n")
    out = tmp_path / "psp.json"
    proc = cli("evaluate", model, "--dataset", "voc2012", "--data-root", tmp_path, "--preset", "pspnet", "--json", out)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["preset"] == "pspnet" and data["metric"] == "miou-mmseg" and data["images"] == 2
    assert 0.0 <= data["metrics"]["mIoU"] <= 1.0 and len(data["per_class_iou"]) == 21


def test_evaluate_user_errors_are_one_line(cli, tmp_path):
    model = save(seg_model(classes=19, size=(64, 128)), tmp_path / "m.onnx")
    # the layout is checked before the preset (and torch) is loaded, so these fail fast
    proc = cli("evaluate", model, "--dataset", "cityscapes", "--data-root", tmp_path / "missing", "--preset", "fastscnn")
    assert_one_line_error(proc, f"{tmp_path / 'missing'}: data root does not exist")
    (tmp_path / "city" / "leftImg8bit" / "val").mkdir(parents=True)
    proc = cli("evaluate", model, "--dataset", "cityscapes", "--data-root", tmp_path / "city", "--preset", "fastscnn")
    assert_one_line_error(proc, f"{tmp_path / 'city' / 'gtFine' / 'val'}: missing folder")
    write_synthetic(tmp_path / "syn3", 2, (8, 8), 3)
    proc = cli("evaluate", save(seg_model(classes=5, size=(8, 8)), tmp_path / "c5.onnx"), "--dataset", "synthetic",
               "--data-root", tmp_path / "syn3")
    assert_one_line_error(proc, "the model predicts 5 classes but the synthetic set")
    syn = save(seg_model(classes=3, size=(8, 8)), tmp_path / "syn.onnx")
    (tmp_path / "preds").mkdir()
    (tmp_path / "preds" / "synth_00000_0.bin").write_bytes(np.zeros((1, 3, 8, 8), np.float32).tobytes())
    proc = cli("evaluate", syn, "--dataset", "synthetic", "--limit", "2", "--predictions", tmp_path / "preds")
    assert_one_line_error(proc, f"{tmp_path / 'preds' / 'synth_00001_0.bin'}: prediction file missing")
    proc = cli("evaluate", syn, "--dataset", "synthetic", "--backend", "nope")
    assert_one_line_error(proc, "unknown backend 'nope'")


def test_bench_table_and_json(cli, tmp_path):
    model = save(seg_model(classes=3, size=(8, 8), batch=2), tmp_path / "m.onnx")
    out = tmp_path / "bench.json"
    proc = cli("bench", model, "--batch-sizes", "1,2", "--warmup", "1", "--iters", "3", "--threads", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert "p50 ms" in proc.stdout and "batch fixed on a copy" in proc.stdout
    data = json.loads(out.read_text())
    recs = data["records"]
    assert [(r["batch_size"], r["fixed_batch"]) for r in recs] == [(1, True), (2, False)]
    assert all(r["p50_ms"] > 0 and r["throughput"] > 0 for r in recs)
    assert_one_line_error(cli("bench", model, "--batch-sizes", "1,x"), "--batch-sizes: expected comma-separated integers")


def test_compile_with_recording_fake_atc(cli, tmp_path):
    model = save(seg_model(classes=19, size=(16, 32), fp16_out=True), tmp_path / "fast.onnx")
    install_fake_atc(tmp_path / "bin", tmp_path / "argv.txt")
    env = {"PATH": path_with(tmp_path / "bin")}
    proc = cli("compile", model, "--backend", "atc", "--soc-version", "Ascend310P3", "-o", tmp_path / "fast.om", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "fast.om").is_file() and f"wrote {tmp_path / 'fast.om'}" in proc.stdout.replace("\n", "")
    assert (tmp_path / "argv.txt").read_text().split("\n")[:-1] == [
        "--framework=5", f"--model={model}", f"--output={tmp_path / 'fast'}", "--input_shape=image:1,3,16,32",
        "--soc_version=Ascend310P3", "--output_type=FP16", "--input_format=NCHW", "--log=error",
    ]


def test_compile_errors(cli, tmp_path):
    model = save(seg_model(), tmp_path / "m.onnx")
    proc = cli("compile", model, "--backend", "atc", "-o", tmp_path / "m.om", env={"PATH": ""})
    assert_one_line_error(proc, "atc not found on PATH: install the CANN toolkit and run "
                                "'source /usr/local/Ascend/ascend-toolkit/set_env.sh'")
    install_fake_atc(tmp_path / "bin", tmp_path / "argv.txt", fail=True)
    proc = cli("compile", model, "-o", tmp_path / "m.om", env={"PATH": path_with(tmp_path / "bin")})
    assert_one_line_error(proc, "atc failed (exit 1): E10001", "m.atc.log")
    proc = cli("compile", save(seg_model(opset=17), tmp_path / "o17.onnx"), env={"PATH": path_with(tmp_path / "bin")})
    assert_one_line_error(proc, "ai.onnx opset 17 is outside what atc accepts (9..13)")


def test_evaluate_synthetic_for_every_task(cli, tmp_path):
    from tests.evaluate.test_plan_score import unetpp_like, vovnet_like

    vov = save(vovnet_like(), tmp_path / "vovnet39.onnx")
    proc = cli("evaluate", vov, "--dataset", "synthetic", "--limit", "3", "--reference", vov, "--json", tmp_path / "v.json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "v.json").read_text())
    assert data["task"] == "classification" and set(data["metrics"]) == {"top1", "top5"}
    assert (data["dataset_classes"], data["model_classes"]) == (255, 1000) and data["agreement"]["top1_agreement"] == 1.0
    unet = save(unetpp_like(), tmp_path / "unetpp.onnx")
    proc = cli("evaluate", unet, "--dataset", "synthetic", "--limit", "2", "--preset", "unetpp", "--json", tmp_path / "u.json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "u.json").read_text())
    assert data["task"] == "binary-segmentation" and data["preset"] == "unetpp" and 0.0 <= data["metrics"]["IoU"] <= 1.0
    labels = save(seg_model(classes=4, size=(16, 24), labels=True), tmp_path / "labels.onnx")
    assert_one_line_error(cli("evaluate", labels, "--dataset", "synthetic", "--limit", "2"),
                          f"{labels}: cannot tell the number of classes", "--num-classes")
    proc = cli("evaluate", labels, "--dataset", "synthetic", "--limit", "2", "--num-classes", "4")
    assert proc.returncode == 0 and "mIoU" in proc.stdout, proc.stderr
    assert_one_line_error(cli("evaluate", labels, "--dataset", "coco"), "unknown dataset 'coco'; known datasets: voc2012")


def test_bench_takes_a_backend_spec_and_shorthands(cli, tmp_path):
    model = save(seg_model(classes=3, size=(8, 8), batch="N"), tmp_path / "m.onnx")
    out = tmp_path / "bench.json"
    proc = cli("bench", model, "--backend", "onnxruntime{threads=1,spin=false}", "--device", "cpu",
               "--batch-sizes", "2", "--warmup", "0", "--iters", "2", "--json", out)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["backend"] == "onnxruntime{threads=1,spin=false}"  # --device cpu is the default: not in the spec
    assert [(r["spec"], r["threads"], r["backend"]) for r in data["records"]] == [("onnxruntime{threads=1,spin=false}", 1, "onnxruntime")]
    assert_one_line_error(cli("bench", model, "--backend", "onnxruntime{threads=2}", "--threads", "1"),
                          "--threads 1 contradicts threads=2 in backend spec 'onnxruntime{threads=2}'")
    assert_one_line_error(cli("bench", model, "--backend", "onnxruntime{thread=2}"),
                          "backend spec 'onnxruntime{thread=2}' column 13", "has no option 'thread'")
    assert_one_line_error(cli("bench", model, "--backend", "atc", "--device", "cuda"),
                          "--device cuda does not apply to backend 'atc'")


def test_compile_takes_a_backend_spec(cli, tmp_path):
    model = save(seg_model(classes=3, size=(8, 8)), tmp_path / "m.onnx")
    install_fake_atc(tmp_path / "bin", tmp_path / "argv.txt")
    env = {"PATH": path_with(tmp_path / "bin")}
    proc = cli("compile", model, "--backend", "atc{soc_version=Ascend910,extra_args=--log=info}", "-o", tmp_path / "n", env=env)
    assert proc.returncode == 0, proc.stderr
    argv = (tmp_path / "argv.txt").read_text().split("\n")[:-1]
    assert argv[3:] == ["--input_shape=image:1,3,8,8", "--soc_version=Ascend910", "--input_format=NCHW", "--log=error",
                        "--log=info"]
    assert (tmp_path / "n.om").is_file() and f"command: {tmp_path / 'bin' / 'atc'} --framework=5" in proc.stdout.replace("\n", "")
    proc = cli("compile", model, "--backend", "atc", "--soc-version", "Ascend310", env=env)  # default output: next to the model
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m.om").is_file() and "--soc_version=Ascend310" in (tmp_path / "argv.txt").read_text()
    assert_one_line_error(cli("compile", model, "--backend", "atc{soc_version=Ascend910}", "--soc-version", "Ascend310", env=env),
                          "--soc-version Ascend310 contradicts soc_version=Ascend910")
    assert_one_line_error(cli("compile", model, "--backend", "onnxruntime", env=env),
                          "compile: backend 'onnxruntime' has no compile step")


def test_evaluate_takes_a_backend_spec_and_shorthands(cli, tmp_path):
    model = save(seg_model(classes=3, size=(16, 24)), tmp_path / "m.onnx")
    out = tmp_path / "r.json"
    proc = cli("evaluate", model, "--dataset", "synthetic", "--limit", "2", "--backend", "onnxruntime{threads=1}",
               "--device", "cpu", "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["backend"] == "onnxruntime{threads=1}"  # the canonical spec is recorded
    proc = cli("evaluate", model, "--dataset", "synthetic", "--limit", "2", "--threads", "1", "--json", out)
    assert proc.returncode == 0 and json.loads(out.read_text())["backend"] == "onnxruntime{threads=1}", proc.stderr
    assert_one_line_error(cli("evaluate", model, "--dataset", "synthetic", "--backend", "onnxruntime{threads=2}", "--threads", "1"),
                          "--threads 1 contradicts threads=2")
    assert_one_line_error(cli("evaluate", model, "--dataset", "synthetic", "--backend", "onnxruntime", "--soc-version", "Ascend910"),
                          "--soc-version")
    om = tmp_path / "m.om"
    om.write_bytes(model.read_bytes())
    assert_one_line_error(cli("evaluate", om, "--dataset", "synthetic"), "an .om model is compiled for ais_bench / atc",
                          "use --backend ais_bench")

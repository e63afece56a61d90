"""`onnxforge compile` with the atc flags, run as a user would (subprocess), against the recording fake atc."""

from __future__ import annotations

import json
import os
import stat

from tests.backends.fakes import install_fake_atc, path_with
from tests.conftest import assert_one_line_error
from tests.evaluate.builders import save, seg_model


def test_dry_run_prints_and_writes_the_exact_command(cli, tmp_path):
    model = save(seg_model(classes=3, size=(8, 8), batch=4), tmp_path / "m.onnx")
    proc = cli("compile", model, "--cann", "8.0", "--precision-mode-v2", "fp16", "--dynamic-batch-sizes", "1,4,8,16",
               "--atc-arg=--op_select_implmode=high_performance", "--atc-arg", "--fusion_switch_file=f.cfg",
               "-o", tmp_path / "out.om", "--dry-run", env={"PATH": ""})  # no atc needed
    assert proc.returncode == 0, proc.stderr
    expected = (f"atc --framework=5 --model={model} --output={tmp_path / 'out'} --input_shape=image:-1,3,8,8 "
                "--soc_version=Ascend310P3 --input_format=NCHW --log=error --precision_mode_v2=fp16 "
                "--dynamic_batch_size=1,4,8,16 --op_select_implmode=high_performance --fusion_switch_file=f.cfg")
    assert expected in proc.stdout.replace("\n", "")
    script = tmp_path / "out.atc.sh"
    assert script.read_text().splitlines()[0] == "#!/bin/sh" and script.read_text().splitlines()[-1] == expected
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(script.stat().st_mode) == 0o666 & ~umask
    assert not (tmp_path / "out.om").exists()


def test_compile_records_the_command_in_the_sidecar(cli, tmp_path):
    model = save(seg_model(classes=3, size=(16, 16)), tmp_path / "m.onnx")
    install_fake_atc(tmp_path / "bin", tmp_path / "argv.txt")
    proc = cli("compile", model, "--cann", "5.0", "--precision-mode", "allow_mix_precision",
               "--dynamic-image-sizes", "16x16,32x32", env={"PATH": path_with(tmp_path / "bin")})
    assert proc.returncode == 0, proc.stderr
    argv = (tmp_path / "argv.txt").read_text().split("\n")[:-1]
    assert argv[-3:] == ["--log=error", "--precision_mode=allow_mix_precision", "--dynamic_image_size=16,16;32,32"]
    side = json.loads((tmp_path / "m.om.json").read_text())
    assert side["command"][1:] == argv and side["cann_profile"] == "5.0"
    assert "CANN profile: 5.0" in proc.stdout


def test_bad_input_is_one_error_line_and_nothing_written(cli, tmp_path):
    model = save(seg_model(classes=3, size=(8, 8)), tmp_path / "m.onnx")
    env = {"PATH": ""}
    assert_one_line_error(cli("compile", model, "--cann", "4.0", "--dry-run", env=env), "no CANN profile for version '4.0'")
    assert_one_line_error(cli("compile", model, "--cann", "5.0", "--precision-mode-v2", "fp16", "--dry-run", env=env),
                          "atc --precision_mode_v2 does not exist in CANN 5.0")
    assert_one_line_error(cli("compile", model, "--dynamic-batch-sizes", "2,4", "--dry-run", env=env),
                          "exported with batch 1, which the batch gears 2,4 do not include")
    assert_one_line_error(cli("compile", model, "--dynamic-batch-sizes", "2,x", env=env), "--dynamic-batch-sizes")
    assert_one_line_error(cli("compile", model, "--cann", "8.0", env=env), "atc not found on PATH")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_aipp_from_a_preset_writes_the_cfg_and_passes_it_to_atc(cli, tmp_path):
    model = save(seg_model(classes=3, size=(8, 16)), tmp_path / "m.onnx")
    proc = cli("compile", model, "--aipp", "fastscnn", "--dry-run", env={"PATH": ""})
    assert proc.returncode == 0, proc.stderr
    cfg = tmp_path / "m.aipp.cfg"
    assert "input_format: RGB888_U8" in cfg.read_text() and "src_image_size_w: 16" in cfg.read_text()
    assert f"--insert_op_conf={cfg}" in (tmp_path / "m.atc.sh").read_text()
    other = tmp_path / "o"
    other.mkdir()
    model = save(seg_model(classes=3, size=(8, 8)), other / "m.onnx")
    assert_one_line_error(cli("compile", model, "--aipp", "refinenet", "--dry-run", env={"PATH": ""}),
                          "preprocessing 'longest-pad' cannot be expressed in static AIPP")
    assert sorted(p.name for p in other.iterdir()) == ["m.onnx"]


def _precision_dir(tmp_path, model_path, cann="8.0"):
    """A precision-config directory from a real fp16 search on the overflow model (keeps `amplify`)."""
    from onnxforge.evaluate.fp16_search import search_fp16, write_precision_config
    from onnxforge.evaluate.keep_search import agreement_scorer
    from onnxforge.modelio import load_model
    from onnxforge.numerics import seeded_inputs

    model = load_model(model_path)
    feeds = [seeded_inputs(model, seed=100 + i) for i in range(3)]
    found = search_fp16(model, agreement_scorer(model, feeds), 1.0, "1%", reverse=False)
    write_precision_config(tmp_path / "precision", found, cann, model=str(model_path))
    return tmp_path / "precision"


def test_precision_config_passes_keep_dtype_mode_and_ini_to_atc(cli, tmp_path):
    from tests.evaluate.test_fp16_search import overflow_model

    model = save(overflow_model(), tmp_path / "m.onnx")
    pdir = _precision_dir(tmp_path, model)
    install_fake_atc(tmp_path / "bin", tmp_path / "argv.txt")
    proc = cli("compile", model, "--cann", "8.0", "--precision-config", pdir, env={"PATH": path_with(tmp_path / "bin")})
    assert proc.returncode == 0, proc.stderr
    argv = (tmp_path / "argv.txt").read_text().split("\n")[:-1]
    assert argv[-3:] == ["--precision_mode_v2=fp16", f"--keep_dtype={pdir / 'keep_dtype.cfg'}",
                         f"--op_precision_mode={pdir / 'op_precision.ini'}"]
    keep = [ln for ln in (pdir / "keep_dtype.cfg").read_text().splitlines() if not ln.startswith("#")]
    assert keep == ["amplify"]
    side = json.loads((tmp_path / "m.om.json").read_text())
    assert side["command"][1:] == argv
    assert side["precision_config"]["files"]["op_precision.ini"] == "[ByNodeName]\namplify=high_precision\n"
    assert side["precision_config"]["files"]["keep_dtype.cfg"] == (pdir / "keep_dtype.cfg").read_text()


def test_precision_config_on_cann_6_uses_force_fp16(cli, tmp_path):
    from tests.evaluate.test_fp16_search import overflow_model

    model = save(overflow_model(), tmp_path / "m.onnx")
    pdir = _precision_dir(tmp_path, model, cann="6.0")
    proc = cli("compile", model, "--cann", "6.0", "--max-opset", "17", "--precision-config", pdir, "--dry-run", env={"PATH": ""})
    assert proc.returncode == 0, proc.stderr
    line = (tmp_path / "m.atc.sh").read_text().splitlines()[-1]
    assert line.endswith(f"--log=error --precision_mode=force_fp16 --keep_dtype={pdir / 'keep_dtype.cfg'}")


def test_precision_config_bad_input_is_one_error_line(cli, tmp_path):
    from tests.evaluate.test_fp16_search import overflow_model

    model = save(overflow_model(), tmp_path / "m.onnx")
    env = {"PATH": ""}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(cli("compile", model, "--cann", "8.0", "--precision-config", empty, "--dry-run", env=env),
                          "no keep_dtype.cfg and no precision.json")
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep_dtype.cfg").write_text("conv\nResize_229\n")
    (other / "precision.json").write_text("{}")
    assert_one_line_error(cli("compile", model, "--cann", "8.0", "--precision-config", other, "--dry-run", env=env),
                          "names node 'Resize_229', which the model does not have")
    assert_one_line_error(cli("compile", model, "--cann", "5.0", "--max-opset", "17", "--precision-config", other, "--dry-run", env=env),
                          "Resize_229")
    (other / "keep_dtype.cfg").write_text("conv\n")
    assert_one_line_error(cli("compile", model, "--cann", "5.0", "--max-opset", "17", "--precision-config", other, "--dry-run", env=env),
                          "atc --keep_dtype is not in the CANN 5.0 profile")
    assert_one_line_error(cli("compile", model, "--cann", "8.0", "--precision-mode-v2", "origin", "--precision-config", other,
                              "--dry-run", env=env), "atc ignores --keep_dtype under --precision_mode_v2=origin")
    assert_one_line_error(cli("compile", model, "--cann", "8.0", "--precision-config", other, env=env),
                          "atc not found on PATH")  # a good config, no atc: the config was checked first, then atc
    assert not list(tmp_path.glob("m.om*")) and not (tmp_path / "m.atc.sh").exists()

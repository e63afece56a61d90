"""CANN profiles: loading, selection (flag, installed toolkit, default), and how they drive the atc backend."""

from __future__ import annotations

import json

import pytest

from onnxforge.backends.ascend import AtcBackend, check_model_for_atc
from onnxforge.cann import DEFAULT_CANN, installed_version, profile, profiles, select_profile
from onnxforge.errors import BackendError
from tests.backends.fakes import install_fake_atc, path_with
from tests.evaluate.builders import save, seg_model


@pytest.fixture
def fake_atc(tmp_path, monkeypatch):
    record = tmp_path / "argv.txt"
    install_fake_atc(tmp_path / "bin", record)
    monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
    return record


def _argv(record):
    return record.read_text().split("\n")[:-1]


def test_every_profile_cites_sources_and_has_a_sane_opset_range():
    assert set(profiles()) == {"5.0", "6.0", "7.0", "8.0", "9.0"}
    for prof in profiles().values():
        assert prof.sources and all(s.strip() for s in prof.sources)
        assert 1 <= prof.min_opset <= prof.max_opset
        assert {"framework", "model", "output", "input_shape", "soc_version"} <= prof.atc_options


def test_version_texts_select_their_line():
    assert profile("8.0.RC2").version == profile("8").version == "8.0"
    assert (profile("5.0").min_opset, profile("5.0").max_opset) == (9, 13)
    assert profile("7.0").max_opset == 18 and profile("8.0").max_opset == 17
    assert profile("5.0").has_option("precision_mode") and not profile("5.0").has_option("precision_mode_v2")
    assert profile("9.0").has_option("precision_mode_v2")
    with pytest.raises(BackendError, match=r"no CANN profile for version '4.1' \(profiles: 5.0, 6.0"):
        profile("4.1")
    with pytest.raises(BackendError, match="not a version"):
        profile("latest")


def test_installed_toolkit_version_is_read_else_the_default(tmp_path):
    home = tmp_path / "latest"
    (home / "x86_64-linux").mkdir(parents=True)
    (home / "x86_64-linux" / "ascend_toolkit_install.info").write_text("package_name=Ascend-cann-toolkit\nversion=8.0.RC2\n")
    env = {"ASCEND_TOOLKIT_HOME": str(home)}
    assert installed_version(env) == "8.0.RC2"
    assert select_profile(None, env).version == "8.0"
    assert select_profile("6.3", env).version == "6.0"  # a flag wins over the installed one
    assert select_profile(None, {}).version == DEFAULT_CANN
    (home / "x86_64-linux" / "ascend_toolkit_install.info").write_text("version=12.0\n")
    assert select_profile(None, env).version == DEFAULT_CANN  # no profile for it: the default, logged


def test_profile_sets_the_opset_range_and_the_op_check(tmp_path):
    m17 = seg_model(opset=17)
    assert any("opset 17 is outside what atc accepts (9..13) in the CANN 5.0 profile" in p for p in check_model_for_atc(m17))
    assert check_model_for_atc(m17, profile=profile("8.0")) == []
    assert AtcBackend(cann="8.0").opset_range() == (9, 17)
    assert AtcBackend(cann="8.0", max_opset=15).opset_range() == (9, 15)


def test_unknown_cann_and_options_the_profile_lacks_are_errors():
    with pytest.raises(BackendError, match="backend 'atc': no CANN profile for version '10.0'"):
        AtcBackend(cann="10.0")
    with pytest.raises(BackendError, match=r"atc --precision_mode_v2 does not exist in CANN 5.0"):
        AtcBackend(cann="5.0", precision_mode_v2="fp16")
    with pytest.raises(BackendError, match="not both"):
        AtcBackend(cann="9.0", precision_mode="force_fp16", precision_mode_v2="fp16")
    with pytest.raises(BackendError, match="HEIGHTxWIDTH"):
        AtcBackend(dynamic_image_sizes=("512by512", "1024x2048"))


@pytest.mark.parametrize("cann, extra", [
    ("5.0", ["--precision_mode=force_fp16"]),
    ("8.0", ["--precision_mode_v2=fp16"]),
    ("9.0", ["--precision_mode_v2=origin"]),
])
def test_exact_argv_per_profile(tmp_path, fake_atc, cann, extra):
    src = save(seg_model(classes=3, size=(8, 8)), tmp_path / "m.onnx")
    mode = extra[0].split("=", 1)
    opts = {"precision_mode" if mode[0] == "--precision_mode" else "precision_mode_v2": mode[1]}
    AtcBackend(cann=cann, soc_version="Ascend310", extra_args=("--op_select_implmode=high_performance",),
               **opts).compile(src, tmp_path / "m.om")
    assert _argv(fake_atc) == [
        "--framework=5", f"--model={src}", f"--output={tmp_path / 'm'}", "--input_shape=image:1,3,8,8",
        "--soc_version=Ascend310", "--input_format=NCHW", "--log=error", *extra,
        "--op_select_implmode=high_performance",
    ]


def test_batch_gears_put_minus_one_in_the_batch_and_must_cover_the_export(tmp_path, fake_atc):
    src = save(seg_model(classes=3, size=(8, 8), batch=4), tmp_path / "m.onnx")
    AtcBackend(dynamic_batch_sizes=(1, 4, 8, 16)).compile(src, tmp_path / "m.om")
    argv = _argv(fake_atc)
    assert "--input_shape=image:-1,3,8,8" in argv and argv[-1] == "--dynamic_batch_size=1,4,8,16"
    fake_atc.unlink()
    with pytest.raises(BackendError, match="exported with batch 4, which the batch gears 1,8 do not include"):
        AtcBackend(dynamic_batch_sizes=(1, 8)).compile(src, tmp_path / "n.om")
    with pytest.raises(BackendError, match="2 to 100 gears, got 1"):
        AtcBackend(dynamic_batch_sizes=(4,)).compile(src, tmp_path / "n.om")
    with pytest.raises(BackendError, match="given twice"):
        AtcBackend(dynamic_batch_sizes=(4, 4)).compile(src, tmp_path / "n.om")
    assert not fake_atc.exists() and not (tmp_path / "n.om").exists()


def test_image_gears_put_minus_one_in_h_and_w(tmp_path, fake_atc):
    src = save(seg_model(classes=3, size=(16, 32)), tmp_path / "m.onnx")
    AtcBackend(dynamic_image_sizes=("16x32", "32x64")).compile(src, tmp_path / "m.om")
    argv = _argv(fake_atc)
    assert "--input_shape=image:1,3,-1,-1" in argv and argv[-1] == "--dynamic_image_size=16,32;32,64"
    with pytest.raises(BackendError, match="exported at 16x32, which the image gears 32x32,64x64 do not include"):
        AtcBackend(dynamic_image_sizes=("32x32", "64x64")).compile(src, tmp_path / "n.om")
    with pytest.raises(BackendError, match="not both"):
        AtcBackend(dynamic_batch_sizes=(1, 2), dynamic_image_sizes=("16x32", "32x64")).compile(src, tmp_path / "n.om")


def test_sidecar_json_records_the_exact_command(tmp_path, fake_atc):
    src = save(seg_model(classes=3, size=(8, 8)), tmp_path / "m.onnx")
    result = AtcBackend(cann="8.0").compile_full(src, tmp_path / "m.om")
    side = json.loads((tmp_path / "m.om.json").read_text())
    assert side["command"] == result.command and side["command"][1:] == _argv(fake_atc)
    assert side["cann_profile"] == "8.0" and side["om"] == str(tmp_path / "m.om")


def test_plan_is_a_dry_run_needing_no_atc(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    src = save(seg_model(classes=3, size=(8, 8)), tmp_path / "m.onnx")
    plan = AtcBackend(dynamic_image_sizes=("8x8", "16x16")).plan(src, tmp_path / "out.om")
    assert plan.command[0] == "atc" and f"--output={tmp_path / 'out'}" in plan.command
    assert plan.shell().endswith("'--dynamic_image_size=8,8;16,16'")  # quoted for the shell
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())


def test_every_profile_has_a_default_opset_it_accepts_and_the_old_path_still_works():
    from onnxforge.backends import cann as old_path

    for prof in profiles().values():
        assert prof.accepts_opset(prof.default_opset), prof.version
        assert any("default_opset" in n for n in prof.notes), prof.version  # the reason is recorded
    assert profile("5.0").default_opset == 11  # the seeds' opset on CANN 5.0.2
    assert profile("5.0").describe_opsets() == "CANN 5.0's atc accepts opset 9..13 (default 11)"
    assert old_path.select_profile is select_profile and old_path.DEFAULT_CANN == DEFAULT_CANN


def test_opset_error_suggests_the_profiles_default_opset():
    m17 = seg_model(opset=17)
    assert any("--passes 'target-opset{opset=11}'" in p for p in check_model_for_atc(m17))
    assert any("--passes 'target-opset{opset=13}'" in p for p in check_model_for_atc(m17, min_opset=12, max_opset=13))

"""`onnxforge export` run as a user would, then its output run in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from onnxforge.numerics import make_session, seeded_inputs
from tests.conftest import assert_one_line_error
from tests.frontends.seed_model_utils import reference_keys, upstream_state_dict


def _run(path):
    proto = onnx.load(str(path))
    feeds = seeded_inputs(proto)
    return proto, make_session(proto).run(None, feeds)


def test_help_lists_every_model_and_variant(cli):
    from onnxforge.frontends import list_specs

    proc = cli("export", "--help", env={"COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for spec in list_specs():
        line = next((ln for ln in proc.stdout.splitlines() if f" {spec.name}:" in ln), "")
        assert line, (spec.name, text)
        for variant in spec.variants:
            assert variant in line, (spec.name, variant, line)
    assert "identity" in text and "nearest" in text and "package.module:factory" in text


def test_export_without_checkpoint_runs_and_warns(cli, tmp_path):
    out = tmp_path / "fastscnn.onnx"
    proc = cli("export", "fastscnn", "-o", out, "--input-size", "64,128")
    assert proc.returncode == 0, proc.stderr
    assert "no checkpoint: deterministic weights; accuracy figures need real weights" in proc.stderr
    assert "max abs diff" in proc.stdout and "output1 1x19x64x128" in proc.stdout
    proto, (main,) = _run(out)
    assert [i.name for i in proto.graph.input] == ["image"] and main.shape == (1, 19, 64, 128)
    assert np.isfinite(main).all()


@pytest.mark.slow
def test_export_with_checkpoint_guide_variant_and_aux(cli, tmp_path):
    ck = tmp_path / "best_model.pth.tar"
    torch.save({"state_dict": upstream_state_dict(reference_keys("fastscnn.keys.json"))}, ck)
    out = tmp_path / "fastscnn_guide.onnx"
    proc = cli("export", "fastscnn", "-o", out, "--checkpoint", ck, "--variant", "guide", "--with-aux",
               "--input-shape", "1x3x192x384", "--opset", "11")
    assert proc.returncode == 0, proc.stderr
    assert "no checkpoint" not in proc.stderr and str(ck) in proc.stdout.replace("\n", "")
    proto, outs = _run(out)
    assert [o.name for o in proto.graph.output] == ["output1", "aux1", "aux2"]
    assert [o.shape for o in outs] == [(1, 19, 192, 384)] * 3
    assert proto.opset_import[0].version == 11


def test_export_generic_factory(cli, tmp_path):
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n"
        "def net():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d((5, 3)))\n"
    )
    out = tmp_path / "net.onnx"
    proc = cli("export", "my_models:net", "-o", out, "--input-shape", "1x3x17x13", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    _, (y,) = _run(out)
    assert y.shape == (1, 4, 5, 3)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("nope",), ("unknown model 'nope'", "fastscnn")),
        (("fastscnn", "--input-size", "100,200"), ("must be a multiple of 32",)),
        (("fastscnn", "--input-size", "big"), ("--input-size: expected H,W",)),
        (("fastscnn", "--variant", "fast"), ("unknown variant 'fast'",)),
        (("pspnet", "--opset", "9"), ("opset 9 is not supported",)),
    ],
)
def test_bad_arguments_are_one_line_errors(cli, tmp_path, args, fragments):
    out = tmp_path / "m.onnx"
    proc = cli("export", *args, "-o", out)
    assert_one_line_error(proc, *fragments)
    assert not out.exists()


def test_corrupt_checkpoint_keeps_the_existing_output(cli, tmp_path):
    ck = tmp_path / "broken.pth"
    ck.write_bytes(b"PK\x03\x04 not really a zip")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old model")
    proc = cli("export", "fastscnn", "-o", out, "--checkpoint", ck, "--input-size", "64,128")
    assert_one_line_error(proc, "broken.pth: not a readable PyTorch checkpoint")
    assert out.read_bytes() == b"old model"


def test_output_paths(cli, tmp_path):
    ck = tmp_path / "ck.pth"
    torch.save({"a": torch.zeros(1)}, ck)
    before = ck.read_bytes()
    assert_one_line_error(cli("export", "fastscnn", "-o", ck, "--checkpoint", ck), "output path is the input")
    assert ck.read_bytes() == before
    assert_one_line_error(cli("export", "fastscnn", "-o", tmp_path / "no" / "m.onnx"), "does not exist")


# -- the opset default and range come from the CANN profile ---------------------------------------------

NO_CANN = {"ASCEND_TOOLKIT_HOME": "", "ASCEND_HOME_PATH": ""}


def test_opset_help_and_range_read_the_exporter_and_the_cann_profile(cli):
    from onnxforge.cli.export_cmd import CANN_HELP, EXPORT_OPSETS
    from onnxforge.frontends.export import MAX_OPSET, MIN_OPSET

    assert EXPORT_OPSETS == (MIN_OPSET, MAX_OPSET)
    text = " ".join(cli("export", "--help", env={"COLUMNS": "250"}).stdout.split())
    assert "CANN 5.0's atc accepts opset 9..13 (default 11)" in text and "--cann" in text
    assert "8.0: opset 9..17, default 17" in CANN_HELP


def test_opset_default_is_the_selected_profiles_and_a_note_says_when_atc_would_refuse(cli, tmp_path):
    (tmp_path / "tiny_models.py").write_text("from torch import nn\ndef net():\n    return nn.Conv2d(3, 4, 3)\n")
    import os

    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]), **NO_CANN}
    for extra, opset, note in (((), 11, False), (("--cann", "8.0"), 17, False), (("--opset", "17"), 17, True)):
        out = tmp_path / f"m{len(extra)}{opset}.onnx"
        proc = cli("export", "tiny_models:net", "-o", out, "--input-shape", "1x3x8x8", *extra, env=env)
        assert proc.returncode == 0, proc.stderr
        assert onnx.load(str(out)).opset_import[0].version == opset, extra
        assert ("note: CANN 5.0's atc accepts opset 9..13 (default 11)" in proc.stdout) == note, proc.stdout


def test_bad_cann_version_and_opset_errors_name_the_profile(cli, tmp_path):
    out = tmp_path / "m.onnx"
    assert_one_line_error(cli("export", "pspnet", "-o", out, "--cann", "4.0", env=NO_CANN),
                          "no CANN profile for version '4.0'")
    assert_one_line_error(cli("export", "pspnet", "-o", out, "--opset", "9", "--cann", "8.0", env=NO_CANN),
                          "opset 9 is not supported; choose 11..20 (CANN 8.x's atc accepts opset 9..17 (default 17))")
    assert not out.exists()

"""The `onnxforge` entry point run as a user would (subprocesses, stdout and stderr piped): usage errors,
-v after the subcommand, Ctrl-C, output outside a terminal, export progress, file modes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from onnxforge.modelio import save_model
from tests.passes.helpers import parse

BOX = set("╭╮╰╯│─┃━┏┓┗┛")

MODEL = """
g (float[1,3,8,8] x) => (float[1,3,8,8] y) {
  i = Identity(x)
  y = Relu(i)
}"""


def _usage_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr
    assert len(lines) <= 2 and all(ln.startswith("try 'onnxforge") for ln in lines[1:]), proc.stderr
    assert not BOX & set(proc.stderr) and "Usage:" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("args", "fragment"), [
    (("optimize", "in.onnx", "-o", "o.onnx", "--pases", "x"), "No such option: --pases"),
    (("export", "fastscnn", "-o", "o.onnx", "--opset", "eleven"), "'--opset'"),
    (("export",), "Missing argument"),
    (("frobnicate",), "No such command 'frobnicate'"),
])
def test_usage_errors_are_one_error_line_with_exit_2(cli, tmp_path, args, fragment):
    proc = cli(*args, cwd=tmp_path)
    _usage_error(proc, fragment)
    if args[0] != "frobnicate":
        assert f"try 'onnxforge {args[0]} --help'" in proc.stderr


def test_user_errors_stay_exit_1(cli, tmp_path):
    proc = cli("optimize", tmp_path / "absent.onnx", "-o", tmp_path / "o.onnx", "--passes", "simplify")
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1


def test_verbose_works_after_the_subcommand(cli, tmp_path):
    src = save_model(parse(MODEL), tmp_path / "in.onnx")
    quiet = cli("optimize", src, "-o", tmp_path / "a.onnx", "--passes", "simplify")
    after = cli("optimize", src, "-o", tmp_path / "b.onnx", "--passes", "simplify", "-v")
    before = cli("-v", "optimize", src, "-o", tmp_path / "c.onnx", "--passes", "simplify")
    assert quiet.returncode == after.returncode == before.returncode == 0, after.stderr
    assert "info: simplify" not in quiet.stderr
    assert "info: simplify" in after.stderr and "info: simplify" in before.stderr


def test_tables_are_not_folded_when_stdout_is_a_pipe(cli):
    from onnxforge.passes import all_passes

    proc = cli("passes", env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name, cls in all_passes().items():
        assert any(name in ln and cls.summary in ln for ln in lines), (name, proc.stdout)


def test_ctrl_c_exits_130_with_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "slow_models.py").write_text(
        "import pathlib, time\n"
        "def net():\n"
        f"    pathlib.Path({str(tmp_path / 'started')!r}).write_text('1')\n"
        "    time.sleep(120)\n"
    )
    env = dict(os.environ, PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "net.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "onnxforge", "export", "slow_models:net", "-o", str(out),
                             "--input-shape", "1x3x8x8"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "started").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the export never reached the model build"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "interrupted" and stderr.count("interrupted") == 1, stderr
    assert "Traceback" not in stderr and not out.exists()
    assert "export: build model (1/4" in stderr  # progress was visible before the interrupt


def test_export_shows_its_steps_and_writes_a_umask_file(tmp_path):
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n"
        "def net():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d((5, 3)))\n"
    )
    env = dict(os.environ, PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "net.onnx"
    proc = subprocess.run(
        ["/bin/sh", "-c", f'umask 027 && exec "{sys.executable}" -m onnxforge export my_models:net -o "{out}" '
                          "--input-shape 1x3x17x13"],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    steps = [ln.split(" (")[0] for ln in proc.stderr.splitlines() if ln.startswith("export: ")]
    assert steps == ["export: build model", "export: factory weights", "export: export",
                     "export: check against PyTorch", "export: done"], proc.stderr
    assert os.stat(out).st_mode & 0o777 == 0o640

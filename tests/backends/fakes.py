"""A recording fake `atc` and a fake ais_bench package, so the Ascend paths run on any machine."""

from __future__ import annotations

import os
import stat
import sys
import types
from pathlib import Path

import numpy as np

FAKE_ATC = '''#!{python}
import sys, pathlib
args = sys.argv[1:]
pathlib.Path({record!r}).write_text("\\n".join(args) + "\\n")
opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
{body}
'''

OK_BODY = '''
model = pathlib.Path(opts["model"]).read_bytes()
pathlib.Path(opts["output"] + ".om").write_bytes(model)  # the fake .om is the ONNX itself
print("ATC run success, welcome to the next use.")
'''

FAIL_BODY = '''
print("ATC start working now, please wait for a moment.")
print("ATC run failed, Please check the detail log, Try 'atc --help' for more information")
print("E10001: Value [%s] for parameter [--soc_version] is invalid. Reason: The value is not supported." % opts.get("soc_version"))
print("        Solution: try again with a valid argument.")
sys.exit(1)
'''


def install_fake_atc(bin_dir: Path, record: Path, fail: bool = False) -> Path:
    """Writes an executable `atc` into `bin_dir` that records its argv into `record`."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "atc"
    path.write_text(FAKE_ATC.format(python=sys.executable, record=str(record), body=FAIL_BODY if fail else OK_BODY))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def path_with(bin_dir: Path) -> str:
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


class _Info:
    def __init__(self, name, shape, datatype):
        self.name, self.shape, self.datatype = name, list(shape), datatype


class _Summary:
    def __init__(self, times):
        self.exec_time_list = times


class FakeInferSession:
    """ais_bench's InferSession API over onnxruntime, reading the fake .om (which is ONNX bytes)."""

    instances: list["FakeInferSession"] = []

    def __init__(self, device_id: int, model_path: str, *args, **kwargs):
        import onnxruntime as ort

        self.device_id = device_id
        self.sess = ort.InferenceSession(Path(model_path).read_bytes(), providers=["CPUExecutionProvider"])
        self.times: list[float] = []
        self.freed = False
        FakeInferSession.instances.append(self)

    def get_inputs(self):
        return [_Info(i.name, i.shape, "dtype." + _np_name(i.type)) for i in self.sess.get_inputs()]

    def get_outputs(self):
        return [_Info(o.name, o.shape, "dtype." + _np_name(o.type)) for o in self.sess.get_outputs()]

    def infer(self, feeds, mode="static"):
        names = [i.name for i in self.sess.get_inputs()]
        outs = self.sess.run(None, dict(zip(names, feeds)))
        self.times.append(1.5)  # milliseconds, as older ais_bench reports
        return outs

    def summary(self):
        return _Summary(self.times)

    def free_resource(self):
        self.freed = True


def _np_name(ort_type: str) -> str:
    return {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
            "tensor(int32)": "int32"}.get(ort_type, "float32")


def install_fake_ais_bench(monkeypatch) -> type:
    """Puts a fake `ais_bench.infer.interface` into sys.modules for the duration of a test."""
    pkg = types.ModuleType("ais_bench")
    infer = types.ModuleType("ais_bench.infer")
    interface = types.ModuleType("ais_bench.infer.interface")
    interface.InferSession = FakeInferSession
    pkg.infer = infer
    infer.interface = interface
    monkeypatch.setitem(sys.modules, "ais_bench", pkg)
    monkeypatch.setitem(sys.modules, "ais_bench.infer", infer)
    monkeypatch.setitem(sys.modules, "ais_bench.infer.interface", interface)
    FakeInferSession.instances.clear()
    return FakeInferSession


def as_np(x) -> np.ndarray:
    return np.asarray(x)

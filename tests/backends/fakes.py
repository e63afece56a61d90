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


FAKE_AIS_BENCH_MAIN = '''
"""A recording fake of `python -m ais_bench` (ais_bench 0.0.2's command line and output layout) over onnxruntime."""
import argparse, json, os, pathlib, sys

import numpy as np
import onnxruntime as ort

RECORD = {record!r}
parser = argparse.ArgumentParser()
for flag in ("--model", "--input", "--output", "--output_dirname", "--outfmt", "--device"):
    parser.add_argument(flag)
parser.add_argument("--loop", type=int, default=1)
parser.add_argument("--warmup_count", type=int, default=1)
args = parser.parse_args()
pathlib.Path(RECORD, f"device{{args.device}}.argv").write_text(json.dumps(sys.argv[1:]))
if {fail_device!r} is not None and args.device == str({fail_device!r}):
    print("[ERROR] E19999: open device {{}} failed".format(args.device))
    sys.exit(1)
sess = ort.InferenceSession(pathlib.Path(args.model).read_bytes(), providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
dtype = {{"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}}[inp.type]
shape = [int(d) for d in inp.shape]
prefix = pathlib.Path(args.output, args.output_dirname)
prefix.mkdir(parents=True, exist_ok=True)
ms_per_run = 2.0 + 0.5 * int(args.device)  # a fake NPU compute time per run, in milliseconds
times = []
if args.input:
    files = sorted(pathlib.Path(args.input).iterdir())
    for f in files:
        x = np.fromfile(f, dtype=dtype).reshape(shape)
        for i, out in enumerate(sess.run(None, {{inp.name: x}})):
            np.asarray(out).tofile(prefix / f"{{f.stem}}_{{i}}.bin")
        times.append(ms_per_run)
else:
    x = np.zeros(shape, dtype)
    for _ in range(args.loop):
        sess.run(None, {{inp.name: x}})
        times.append(ms_per_run)
    for i, out in enumerate(sess.run(None, {{inp.name: x}})):
        np.asarray(out).tofile(prefix / f"pure_infer_data_{{i}}.bin")
mean = sum(times) / len(times)
summary = {{"NPU_compute_time": {{"mean": mean, "count": len(times)}}, "throughput": 1000.0 * shape[0] / mean,
            "npu_compute_time_list": times, "pid": os.getpid()}}
pathlib.Path(str(prefix) + "_summary.json").write_text(json.dumps(summary))
print("[INFO] throughput 1000*batchsize.mean({{}})/NPU_compute_time.mean({{}}): {{}}".format(shape[0], mean, summary["throughput"]))
'''


def install_fake_ais_bench_cli(monkeypatch, root: Path, fail_device: int | None = None) -> Path:
    """A fake ``ais_bench`` package whose ``python -m ais_bench`` records its argv as ``RECORD/device<k>.argv``,
    runs the fake .om (ONNX bytes) on each input file and writes ais_bench's output files and summary; put on
    this process's sys.path and the children's PYTHONPATH. Returns the record folder."""
    pkg = root / "fake_site" / "ais_bench"
    pkg.mkdir(parents=True, exist_ok=True)
    record = root / "ais_bench_argv"
    record.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(FAKE_AIS_BENCH_MAIN.format(record=str(record), fail_device=fail_device))
    monkeypatch.syspath_prepend(str(pkg.parent))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(pkg.parent), *filter(None, [os.environ.get("PYTHONPATH")])]))
    for name in [m for m in sys.modules if m == "ais_bench" or m.startswith("ais_bench.")]:
        monkeypatch.delitem(sys.modules, name)
    return record

"""ais_bench: a clear BackendUnavailable without the package; the runner's wiring with a fake one."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from onnxforge.backends import get_backend
from onnxforge.backends.ascend import AIS_BENCH_MISSING
from onnxforge.errors import BackendError, BackendUnavailable
from onnxforge.numerics import run_model, seeded_inputs
from tests.backends.fakes import install_fake_ais_bench, install_fake_atc, path_with
from tests.evaluate.builders import save, seg_model


def test_unavailable_without_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ais_bench", None)  # makes `import ais_bench` raise ImportError
    be = get_backend("ais_bench")
    with pytest.raises(BackendUnavailable) as info:
        be.check_available()
    assert str(info.value) == AIS_BENCH_MISSING
    assert "--predictions DIR" in AIS_BENCH_MISSING
    with pytest.raises(BackendUnavailable):
        be.runner(tmp_path / "m.om")


def test_compile_with_atc_then_run_with_fake_ais_bench(tmp_path, monkeypatch):
    install_fake_atc(tmp_path / "bin", tmp_path / "argv.txt")
    monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
    fake = install_fake_ais_bench(monkeypatch)
    model = seg_model(classes=4, size=(6, 8))
    src = save(model, tmp_path / "m.onnx")
    be = get_backend("ais_bench", device_id=3, soc_version="Ascend310P3")
    om = be.compile(src, tmp_path / "m.om")
    assert be.compile(om) == om  # an .om passes through
    feeds = seeded_inputs(model)
    with be.runner(om) as runner:
        assert runner.inputs()[0].shape == (1, 3, 6, 8) and runner.inputs()[0].dtype == np.float32
        (out,) = runner.infer(feeds)
        assert runner.infer(feeds, ["logits"])[0].shape == out.shape
        with pytest.raises(BackendError, match="no output named 'aux'"):
            runner.infer(feeds, ["aux"])
    assert fake.instances[0].device_id == 3 and fake.instances[0].freed
    assert runner.last_inference_s == pytest.approx(0.0015) and runner.calls == 2  # the session's own time, not wall time
    np.testing.assert_allclose(out, run_model(model, feeds)["logits"], rtol=1e-6)

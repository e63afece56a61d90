"""export_model's progress callback: the steps in order, before any work for bad arguments."""

from __future__ import annotations

import sys

import pytest

from onnxforge.errors import FrontendError
from onnxforge.frontends.export import EXPORT_STEPS, export_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def tiny_factory(tmp_path, monkeypatch):
    (tmp_path / "onnxforge_progress_models.py").write_text(
        "from torch import nn\n"
        "def net():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "onnxforge_progress_models:net"
    sys.modules.pop("onnxforge_progress_models", None)


def test_steps_are_reported_in_order_then_done(tmp_path, tiny_factory):
    calls = []
    export_model(tiny_factory, tmp_path / "m.onnx", input_shape=(1, 3, 8, 8),
                 progress=lambda step, i, n: calls.append((step, i, n, (tmp_path / "m.onnx").exists())))
    n = len(EXPORT_STEPS)
    assert calls == [("build model", 0, n, False), ("factory weights", 1, n, False), ("export", 2, n, False),
                     ("check against PyTorch", 3, n, False), ("done", n, n, True)]


def test_bad_arguments_fail_before_the_first_step(tmp_path):
    calls = []
    with pytest.raises(FrontendError):
        export_model("fastscnn", tmp_path / "m.onnx", opset=3, progress=lambda *a: calls.append(a))
    assert calls == []

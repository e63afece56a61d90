"""transdata-align: structure, exact numerics, estimates, near-misses on real torch exports."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxforge.errors import PipelineError
from onnxforge.passes import PassManager
from onnxforge.passes.transdata_align import TransdataAlign
from tests.passes.helpers import apply, op_counts, outputs
from tests.passes.torch_export import export

NAMES = ["logits", "probs", "raw", "feat16", "mix", "dw", "sized"]
H = W = 8


def _module():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Heads(nn.Module):
        """Conv features leaving the device (graph outputs) or an ND op (Softmax), and near-misses."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.cls = nn.Conv2d(8, 19, 1)  # Fast-SCNN's 19 classes, upsampled to the output
            self.soft = nn.Conv2d(8, 5, 1)
            self.raw = nn.Conv2d(8, 3, 1, bias=False)
            self.aligned = nn.Conv2d(8, 16, 1)
            self.a, self.b = nn.Conv2d(8, 3, 1), nn.Conv2d(8, 3, 1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.sized = nn.Conv2d(8, 7, 1)

        def forward(self, x):
            f = torch.relu(self.stem(x))
            logits = F.interpolate(torch.relu(self.cls(f)) * 0.5, scale_factor=2, mode="bilinear", align_corners=True)
            probs = F.softmax(self.soft(f), dim=1)
            # size-based: dynamo writes sizes [N, C, H, W] (C must follow the padding); legacy computes them at run time
            sized = F.interpolate(self.sized(f), size=(2 * H, 2 * W), mode="bilinear", align_corners=False)
            return logits, probs, self.raw(f), self.aligned(f), self.a(f) + self.b(f), self.dw(f), sized

    return Heads()


@pytest.fixture(scope="module", params=[True, False], ids=["dynamo", "legacy"])
def exported(request, tmp_path_factory) -> tuple[onnx.ModelProto, bool]:
    """(model, whether the dynamo exporter wrote it)."""
    import torch

    path = tmp_path_factory.mktemp("ta") / f"heads_{request.param}.onnx"
    model = export(_module(), (torch.randn(1, 3, H, W),), path, dynamo=request.param, input_names=["x"], output_names=NAMES)
    return model, request.param


@pytest.fixture
def model(exported) -> onnx.ModelProto:
    return exported[0]


def _conv_out_channels(m: onnx.ModelProto) -> list[int]:
    inits = {t.name: t for t in m.graph.initializer}
    return sorted(int(inits[n.input[1]].dims[0]) for n in m.graph.node if n.op_type == "Conv")


def test_structure_pads_and_slices_back(exported):
    model, dynamo = exported
    result, after = apply(TransdataAlign(), model)
    assert result.modified
    padded = result.stats["padded_tensors"].split(", ")  # graph outputs first, then ND-op inputs
    assert padded[:2] == ["logits 19->32", "raw 3->16"] and padded[-1].endswith(" 5->16")  # the Softmax input
    assert "through Relu, Mul, Resize" in result.notes[0]
    reasons = {s.target: s.reason for s in result.skipped}
    if dynamo:  # Resize sizes [1, 7, 16, 16] are constants and follow the padding
        assert "sized 7->16" in padded and result.stats["padded"] == 4
    else:  # the legacy exporter computes them from Shape at run time
        assert "computed at run time (run simplify first)" in reasons["sized"] and result.stats["padded"] == 3
    counts, before = op_counts(after), op_counts(model)
    assert counts["Slice"] - before["Slice"] == result.stats["padded"]
    assert counts["Conv"] == before["Conv"]
    # 19 -> 32, 5 -> 16, 3 -> 16 (7 -> 16); the 16-channel, Add and depthwise outputs keep their Convs
    assert _conv_out_channels(after) == sorted([8, 32, 16, 16, 16, 3, 3, 8, 16 if dynamo else 7])
    assert [o.name for o in after.graph.output] == NAMES
    assert "already a multiple of c0=16" in reasons["feat16"]
    assert "produced by Add" in reasons["mix"] and "not a Conv" in reasons["mix"]
    assert "grouped Conv" in reasons["dw"]


def test_estimates_bytes_and_ragged_blocks(exported):
    model, dynamo = exported
    result, _ = apply(TransdataAlign(), model)
    s = result.stats
    # the graph outputs except probs (a Softmax output is ND already), plus the Softmax input
    assert s["boundaries"] == 7
    assert s["ragged_before"] == 6 and s["ragged_after"] == (2 if dynamo else 3)  # mix and dw stay ragged
    plane = H * W * 4  # float32
    grown = (32 - 19) * 4 * plane + (16 - 5) * plane + (16 - 3) * plane + ((16 - 7) * 4 * plane if dynamo else 0)
    assert s["transdata_bytes_after"] - s["transdata_bytes_before"] == grown


def test_idempotent(model):
    first, once = apply(TransdataAlign(), model)
    again, twice = apply(TransdataAlign(), once)
    assert not again.modified
    # the boundaries are now the padded tensors the Slices read
    assert again.stats["ragged_before"] == first.stats["ragged_after"] and again.stats["boundaries"] == 7
    assert sum("already a multiple of c0=16 (read by Slice" in s.reason for s in again.skipped) == first.stats["padded"]
    assert again.stats["transdata_bytes_before"] == first.stats["transdata_bytes_after"]
    assert op_counts(twice) == op_counts(once)


def test_numerics_exact(model):
    result = PassManager("transdata-align").run(model)
    stage = result.stages[0]
    assert stage.kind == "exact" and stage.verification.status == "passed", stage.verification.detail
    before, after = outputs(model), outputs(result.model)
    for name in NAMES:
        assert after[name].shape == before[name].shape
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-5)


def test_near_miss_c0_1_rejected_and_aligned_channels_untouched_at_c0_4(model):
    with pytest.raises(PipelineError, match="c0 must be at least 2"):
        TransdataAlign(c0=1)
    # with c0=4 only the ragged ones change: 19 -> 20, 5 -> 8, 3 -> 4 (7 -> 8); 16 and 8 are aligned already
    result, after = apply(TransdataAlign(c0=4), model)
    changed = sorted(x.split(" ")[1] for x in result.stats["padded_tensors"].split(", "))
    assert changed in (["19->20", "3->4", "5->8"], ["19->20", "3->4", "5->8", "7->8"])
    reasons = {s.target: s.reason for s in result.skipped}
    assert "already a multiple of c0=4" in reasons["dw"] and "already a multiple" in reasons["feat16"]


def test_opset_9_export_gets_an_opset_9_slice(tmp_path):
    """Issue 11: an opset-9 graph gets Slice with attributes (inputs arrived in opset 10)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = export(nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU()), (torch.randn(1, 3, 8, 8),), tmp_path / "c9.onnx", dynamo=False, opset=9)
    result, after = apply(TransdataAlign(), model)
    assert result.modified and result.stats["padded"] == 1
    (sl,) = [n for n in after.graph.node if n.op_type == "Slice"]
    assert len(sl.input) == 1 and {a.name for a in sl.attribute} == {"starts", "ends", "axes"}
    onnx.checker.check_model(after, full_check=True)
    np.testing.assert_allclose(outputs(after)[after.graph.output[0].name], outputs(model)[model.graph.output[0].name], rtol=1e-5, atol=1e-5)

"""label-upsample: structure, numerics against the definition and the boundary bound, near-misses."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxforge.numerics import run_model, seeded_inputs
from onnxforge.passes import PassManager
from onnxforge.passes.label_upsample import LabelUpsample
from tests.passes.helpers import apply, op_counts, parse
from tests.passes.test_resize_nearest import _source_coords, nearest_reference
from tests.passes.torch_export import export

NAMES = ["main", "labels", "mask", "feat", "aux", "aux_gate"]


def _module():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Seg(nn.Module):
        """A segmentation net at 1/4 resolution with the output forms seen in the seed models."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.head = nn.Conv2d(3, 5, 4, 4)
            self.head2 = nn.Conv2d(3, 5, 4, 4)
            self.mask_head = nn.Conv2d(3, 1, 4, 4)

        def forward(self, x):
            logits = self.head(x)
            # Fast-SCNN: logits upsampled to the input size with align_corners=True, a graph output
            main = F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=True)
            # PSPNet/mmseg: resize, identity resize, softmax, argmax, unsqueeze(0)
            up = F.interpolate(self.head2(x), size=(32, 32), mode="bilinear", align_corners=False)
            up = F.interpolate(up, size=(32, 32), mode="bilinear", align_corners=False)
            labels = F.softmax(up, dim=1).argmax(dim=1).unsqueeze(0)
            # near-misses: one channel; not a Resize; a Resize output that also feeds another node
            mask = F.interpolate(self.mask_head(x), size=(32, 32), mode="bilinear", align_corners=False)
            aux = F.interpolate(self.head2(x), size=(32, 32), mode="bilinear", align_corners=True)
            return main, labels, mask, logits, aux, torch.sigmoid(aux)

    return Seg()


@pytest.fixture(scope="module", params=[True, False], ids=["dynamo", "legacy"])
def model(request, tmp_path_factory) -> onnx.ModelProto:
    import torch

    path = tmp_path_factory.mktemp("lu") / f"seg_{request.param}.onnx"
    return export(_module(), (torch.randn(1, 3, 32, 32),), path, dynamo=request.param, input_names=["x"], output_names=NAMES)


def _outputs(m: onnx.ModelProto) -> dict[str, tuple[int, list[int]]]:
    return {o.name: (o.type.tensor_type.elem_type, [d.dim_value for d in o.type.tensor_type.shape.dim]) for o in m.graph.output}


def _with_outputs(m: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    for n in names:
        out.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    return out


def _low_logits_names(m: onnx.ModelProto) -> dict[str, str]:
    """Output name -> name of the low-resolution logits its first Resize reads."""
    producers = {o: n for n in m.graph.node for o in n.output}
    found = {}
    for out in ("main", "labels"):
        t, first = out, None
        while t in producers:
            n = producers[t]
            if n.op_type == "Resize":
                first = n.input[0]
            t = n.input[0]
        found[out] = first
    return found


def test_structure(model):
    result, after = apply(LabelUpsample(), model)
    assert result.modified and result.stats == {"outputs_rewritten": 2, "rewritten": "main, labels"}
    outs = _outputs(after)
    assert outs["main"] == (onnx.TensorProto.INT64, [1, 1, 32, 32])  # logits became labels
    assert outs["labels"] == _outputs(model)["labels"]  # ArgMax output keeps its form
    counts = op_counts(after)
    assert counts["ArgMax"] == 2 and counts["Softmax"] == 0
    # two label Resizes (nearest) + the untouched mask and aux Resizes
    modes = [dict((a.name, onnx.helper.get_attribute_value(a)) for a in n.attribute).get("mode") for n in after.graph.node if n.op_type == "Resize"]
    assert sorted(modes) == [b"linear", b"linear", b"nearest", b"nearest"]
    reasons = {s.target: s.reason for s in result.skipped}
    assert "channel(s): not class logits" in reasons["mask"]
    assert "not produced by a Resize" in reasons["feat"]
    assert "also feeds other nodes" in reasons["aux"]
    assert "produced by Sigmoid" in reasons["aux_gate"]
    assert [o.name for o in after.graph.output] == NAMES
    assert "logits output becomes int64 labels" in result.notes[0]


def test_idempotent(model):
    _, once = apply(LabelUpsample(), model)
    again, twice = apply(LabelUpsample(), once)
    assert not again.modified
    reasons = {s.target: s.reason for s in again.skipped}
    assert reasons["main"] == reasons["labels"] == "already upsamples a label map (ArgMax before the Resize)"
    assert op_counts(twice) == op_counts(once)


@pytest.mark.parametrize("label_dtype", ["int32", "uint8"])
def test_numerics_equal_nearest_resize_of_low_resolution_argmax(model, label_dtype):
    result = PassManager(f"label-upsample{{label_dtype={label_dtype}}}" if label_dtype != "int32" else "label-upsample").run(model)
    stage = result.stages[0]
    assert stage.kind == "approximate" and stage.verification.status == "measured"
    feeds = seeded_inputs(model, 5)
    lows = _low_logits_names(model)
    ref = run_model(_with_outputs(model, list(lows.values())), feeds)
    got = run_model(result.model, feeds)
    for out, coord in (("main", "align_corners"), ("labels", "half_pixel")):
        low_labels = ref[lows[out]].argmax(axis=1)[:, None]
        expected = nearest_reference(low_labels, (32, 32), coord)
        np.testing.assert_array_equal(got[out].reshape(expected.shape), expected, err_msg=out)
        assert got[out].dtype == np.int64
    for untouched in ("mask", "feat", "aux", "aux_gate"):
        np.testing.assert_array_equal(got[untouched], ref[untouched])


def test_labels_change_only_along_class_boundaries(model):
    """The documented bound: where the low-resolution pixels bilinear blends share a label, the label is
    the original one (a convex blend of logit vectors with a common ArgMax keeps it)."""
    _, after = apply(LabelUpsample(), model)
    # a blocky input (constant 8x8 tiles) gives regions of one label at 1/4 resolution
    tiles = np.random.default_rng(6).standard_normal((1, 3, 4, 4)).astype(np.float32)
    feeds = {"x": np.repeat(np.repeat(tiles, 8, axis=2), 8, axis=3)}
    low_name = _low_logits_names(model)["main"]
    ref = run_model(_with_outputs(model, [low_name]), feeds)
    original = ref["main"].argmax(axis=1)[0]
    new = run_model(after, feeds)["main"][0, 0]
    low = ref[low_name].argmax(axis=1)[0]
    h = low.shape[0]
    src = np.clip(_source_coords(32, h, "align_corners"), 0, h - 1)
    lo, hi = np.floor(src).astype(int), np.minimum(np.floor(src).astype(int) + 1, h - 1)
    taps = np.stack([low[np.ix_(r, c)] for r in (lo, hi) for c in (lo, hi)])
    uniform = (taps == taps[0]).all(axis=0)
    assert uniform.mean() > 0.2  # the check covers a real share of pixels
    np.testing.assert_array_equal(new[uniform], original[uniform])
    assert (new != original).mean() < 0.5


DYNAMIC_SCALES = """
g (float[1,3,4,4] x, float[4] s) => (float[1,3,?,?] y) {
  y = Resize<mode = "linear">(x, , s)
}"""


def test_near_miss_scales_computed_at_run_time():
    model = parse(DYNAMIC_SCALES)
    result, after = apply(LabelUpsample(), model)
    assert not result.modified
    assert "output size unknown (scales computed at run time)" in result.skipped[0].reason
    assert op_counts(after) == op_counts(model)


def test_selected_output_only(model):
    result, after = apply(LabelUpsample(outputs=("labels", "nope")), model)
    assert result.stats["rewritten"] == "labels"
    assert _outputs(after)["main"] == _outputs(model)["main"]
    assert any(s.target == "nope" and "no graph output" in s.reason for s in result.skipped)


DYNAMIC_BATCH = """
g (float[N,5,4,4] x) => (float[N,5,8,8] y) {
  s = Constant<value = float[4] {1.0, 1.0, 2.0, 2.0}>()
  y = Resize<mode = "linear", coordinate_transformation_mode = "half_pixel">(x, , s)
}"""


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_symbolic_batch_sizes_built_per_opset(opset):
    """N unknown: the label Resize gets its sizes from Shape (+Slice before opset 15) or axes (opset 18)."""
    result = PassManager("label-upsample").run(parse(DYNAMIC_BATCH, opset=opset))
    assert result.stages[0].modified
    x = np.random.default_rng(0).standard_normal((3, 5, 4, 4)).astype(np.float32)
    got = run_model(result.model, {"x": x})["y"]
    np.testing.assert_array_equal(got, np.repeat(np.repeat(x.argmax(1)[:, None], 2, 2), 2, 3))
    assert ("Shape" in op_counts(result.model)) == (opset < 18)


NOT_4D = """
g (float[1,4,8] x) => (float[1,4,16] y) {
  s = Constant<value = float[3] {1.0, 1.0, 2.0}>()
  y = Resize<mode = "linear">(x, , s)
}"""


def test_near_miss_not_4d():
    model = parse(NOT_4D)
    result, after = apply(LabelUpsample(), model)
    assert not result.modified and "is not 4-D" in result.skipped[0].reason
    assert op_counts(after) == op_counts(model)


def test_opset_11_export_gets_a_resize_with_a_real_roi(tmp_path):
    """Issue 11: at opset 11 roi and scales are required inputs; an empty name there is invalid."""
    import torch

    model = export(_module(), (torch.randn(1, 3, 32, 32),), tmp_path / "seg11.onnx", dynamo=False, opset=11, input_names=["x"], output_names=NAMES)
    result, after = apply(LabelUpsample(outputs=("main",)), model)
    assert result.modified
    new = [n for n in after.graph.node if n.op_type == "Resize" and n.name.startswith("label_upsample")]
    assert len(new) == 1 and len(new[0].input) == 4 and all(new[0].input), "roi/scales must be named tensors at opset 11"
    onnx.checker.check_model(after, full_check=True)
    x = seeded_inputs(after, 0)
    assert run_model(after, x)["main"].shape == (1, 1, 32, 32)


NO_SHAPE = """
g (float[1,5,4,4] a, int64[K] shape) => (float[1,5,8,8] y) {
  x = Reshape(a, shape)
  s = Constant<value = float[4] {1.0, 1.0, 2.0, 2.0}>()
  y = Resize<mode = "linear">(x, , s)
}"""


def test_near_miss_unknown_shape_says_so():
    """Issue 11: an input without an inferred shape is not called 'not 4-D'."""
    result, _ = apply(LabelUpsample(), parse(NO_SHAPE))
    assert not result.modified
    assert "has no inferred shape" in result.skipped[0].reason and "not 4-D" not in result.skipped[0].reason


def test_near_miss_opset_10_is_skipped_with_the_reason():
    text = DYNAMIC_BATCH.replace("N,", "1,").replace("(x, , s)", "(x, s)").replace(', coordinate_transformation_mode = "half_pixel"', "")
    result, after = apply(LabelUpsample(), parse(text, opset=10))
    assert not result.modified and "from opset 11" in result.skipped[0].reason

"""resize-nearest: structure, numerics against a numpy nearest reference, selection, near-misses."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxforge.errors import PassError, PipelineError
from onnxforge.numerics import run_model
from onnxforge.passes import PassManager, parse_pipeline
from onnxforge.passes.resize_nearest import ResizeNearest
from tests.passes.helpers import apply, parse
from tests.passes.torch_export import export

IN_HW = (8, 8)
# output name -> (coordinate mode of the bilinear/bicubic Resize, output size)
CASES = {
    "up_ac": ("align_corners", (32, 32)),  # x4 with align_corners=True (Fast-SCNN's FFM)
    "up_hp": ("half_pixel", (30, 30)),  # size-based, align_corners=False (PSPNet's resizes)
    "up_cubic": ("half_pixel", (16, 16)),  # bicubic x2
}


def _module():
    import torch.nn.functional as F
    from torch import nn

    class Ups(nn.Module):
        def forward(self, x):
            return (
                F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=True),
                F.interpolate(x, size=(30, 30), mode="bilinear", align_corners=False),
                F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False),
                F.interpolate(x, scale_factor=2, mode="nearest"),
            )

    return Ups()


NAMES = ["up_ac", "up_hp", "up_cubic", "up_nn"]


@pytest.fixture(scope="module", params=[True, False], ids=["dynamo", "legacy"])
def model(request, tmp_path_factory) -> onnx.ModelProto:
    import torch

    x = torch.randn(1, 2, *IN_HW)
    path = tmp_path_factory.mktemp("rn") / f"ups_{request.param}.onnx"
    return export(_module(), (x,), path, dynamo=request.param, input_names=["x"], output_names=NAMES)


def _resizes(m: onnx.ModelProto) -> dict[str, dict[str, object]]:
    """Resize node name -> attributes, for the Resize producing each graph output."""
    out = {}
    for n in m.graph.node:
        if n.op_type == "Resize":
            out[n.output[0]] = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
    return {k: {a: (v.decode() if isinstance(v, bytes) else v) for a, v in attrs.items()} for k, attrs in out.items()}


def _source_coords(out_len: int, in_len: int, coord: str) -> np.ndarray:
    x = np.arange(out_len, dtype=np.float64)
    if out_len == 1:
        return np.zeros(1) if coord != "half_pixel" else np.array([in_len / 2 - 0.5])
    if coord == "align_corners":
        return x * (in_len - 1) / (out_len - 1)
    scale = out_len / in_len
    return (x + 0.5) / scale - 0.5  # half_pixel (pytorch_half_pixel for lengths > 1)


def nearest_reference(x: np.ndarray, out_hw: tuple[int, int], coord: str) -> np.ndarray:
    """numpy nearest resize: the source pixel nearest to where the interpolating Resize samples, halves up."""
    rows = np.clip(np.floor(_source_coords(out_hw[0], x.shape[2], coord) + 0.5), 0, x.shape[2] - 1).astype(int)
    cols = np.clip(np.floor(_source_coords(out_hw[1], x.shape[3], coord) + 0.5), 0, x.shape[3] - 1).astype(int)
    return x[:, :, rows][:, :, :, cols]


def test_structure_all_interpolating_resizes_become_nearest(model):
    result, after = apply(ResizeNearest(), model)
    assert result.modified and result.stats["resize_rewritten"] == 3
    attrs = _resizes(after)
    assert [n.op_type for n in after.graph.node if n.op_type == "Resize"] == ["Resize"] * 4
    for name, (coord, _) in CASES.items():
        assert attrs[name]["mode"] == "nearest"
        assert attrs[name]["nearest_mode"] == "round_prefer_ceil"
        assert attrs[name]["coordinate_transformation_mode"] == coord
        assert "cubic_coeff_a" not in attrs[name]
    assert attrs["up_nn"] == _resizes(model)["up_nn"]  # the nearest one is untouched
    assert [s.reason for s in result.skipped] == ["already nearest"]
    assert [o.name for o in after.graph.output] == NAMES


def test_idempotent(model):
    _, once = apply(ResizeNearest(), model)
    again, twice = apply(ResizeNearest(), once)
    assert not again.modified
    assert [s.reason for s in again.skipped] == ["already nearest"] * 4
    assert "already nearest" in again.why_nothing()
    assert _resizes(twice) == _resizes(once)


def test_numerics_equal_numpy_nearest_reference(model):
    result = PassManager("resize-nearest").run(model)
    assert result.stages[0].kind == "approximate" and result.stages[0].verification.status == "measured"
    x = np.random.default_rng(7).standard_normal((1, 2, *IN_HW)).astype(np.float32)
    before, after = run_model(model, {"x": x}), run_model(result.model, {"x": x})
    for name, (coord, size) in CASES.items():
        np.testing.assert_array_equal(after[name], nearest_reference(x, size, coord), err_msg=name)
    np.testing.assert_array_equal(after["up_nn"], before["up_nn"])


@pytest.mark.parametrize("coord,in_len,out_len", [("align_corners", 8, 32), ("align_corners", 32, 128), ("half_pixel", 8, 16), ("half_pixel", 63, 500)])
def test_nearest_samples_the_closest_source_pixel(coord, in_len, out_len):
    """The rounding sits on the bilinear source coordinate: the pixel chosen is the nearer of the two taps
    bilinear blends (the one it weighted most), so alignment is kept; corners map to corners."""
    src = _source_coords(out_len, in_len, coord)
    x = np.arange(in_len, dtype=np.float32).reshape(1, 1, in_len, 1)
    picked = nearest_reference(x, (out_len, 1), coord)[0, 0, :, 0]
    clipped = np.clip(src, 0, in_len - 1)
    assert np.all(np.abs(picked - clipped) <= 0.5 + 1e-9)
    taps = np.stack([np.floor(clipped), np.minimum(np.floor(clipped) + 1, in_len - 1)])
    assert np.all((picked == taps[0]) | (picked == taps[1]))
    if coord == "align_corners":
        assert picked[0] == 0 and picked[-1] == in_len - 1
    else:  # an integer upscale with half-pixel rounding is exactly PyTorch's nearest, floor(x/s)
        if out_len % in_len == 0:
            np.testing.assert_array_equal(picked, np.arange(out_len) // (out_len // in_len))
    # ONNX's default nearest_mode (floor) would not be the closest pixel here
    floor_pick = np.clip(np.floor(src), 0, in_len - 1)
    assert np.any(np.abs(floor_pick - clipped) > 0.5)


def test_selection_by_name_and_exclusion(model):
    names = [n.name for n in model.graph.node if n.op_type == "Resize"]
    first, second = names[0], names[1]
    result, after = apply(ResizeNearest(nodes=(first,)), model)
    assert result.stats == {"resize_rewritten": 1, "rewritten": first}
    assert sum(1 for s in result.skipped if s.reason == "not selected (nodes=)") == 3
    result, after = apply(ResizeNearest(exclude=(second,)), model)
    assert result.stats["resize_rewritten"] == 2 and second not in result.stats["rewritten"]
    assert any(s.target == second and s.reason == "excluded (exclude=)" for s in result.skipped)
    pipeline = parse_pipeline(f"resize-nearest{{nodes={first}|{second}}}")
    assert str(pipeline) == f"resize-nearest{{nodes={first}|{second}}}"


def test_unknown_names_list_the_resize_nodes(model):
    names = sorted(n.name for n in model.graph.node if n.op_type == "Resize")
    with pytest.raises(PassError, match="no Resize node named 'up9'") as err:
        PassManager("resize-nearest{exclude=up9}").run(model)
    assert all(n in str(err.value) for n in names)
    with pytest.raises(PipelineError, match="both selected"):
        ResizeNearest(nodes=("a",), exclude=("a",))


RESIZE_10 = """
g (float[1,1,2,2] x) => (float[1,1,4,4] y) {
  s = Constant<value = float[4] {1.0, 1.0, 2.0, 2.0}>()
  y = Resize<mode = "linear">(x, s)
}"""


def test_near_miss_opset_10_resize_untouched():
    model = parse(RESIZE_10, opset=10)
    result, after = apply(ResizeNearest(), model)
    assert not result.modified
    assert "convert to opset >= 11" in result.skipped[0].reason
    assert _resizes(after) == _resizes(model)


PYTORCH_HALF_PIXEL = """
g (float[1,1,4,4] x) => (float[1,1,8,8] y, float[1,1,1,8] z) {
  s = Constant<value = float[4] {1.0, 1.0, 2.0, 2.0}>()
  y = Resize<mode = "linear", coordinate_transformation_mode = "pytorch_half_pixel">(x, , s)
  t = Constant<value = float[4] {1.0, 1.0, 0.25, 2.0}>()
  z = Resize<mode = "linear", coordinate_transformation_mode = "pytorch_half_pixel">(x, , t)
}"""


def test_pytorch_half_pixel_becomes_half_pixel_unless_an_axis_has_length_one():
    model = parse(PYTORCH_HALF_PIXEL)
    result, after = apply(ResizeNearest(), model)
    attrs = _resizes(after)
    assert attrs["y"]["coordinate_transformation_mode"] == "half_pixel"
    assert attrs["z"]["coordinate_transformation_mode"] == "pytorch_half_pixel"  # height 4 -> 1
    assert "pytorch_half_pixel kept" in result.notes[1]
    x = np.random.default_rng(2).standard_normal((1, 1, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(run_model(after, {"x": x})["y"], nearest_reference(x, (8, 8), "half_pixel"))

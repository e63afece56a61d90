"""UNet++ (NestedUNet) frontend: upstream keys, checkpoint loading, variants, shapes and ONNX export."""

from __future__ import annotations

import pytest
import torch

from onnxforge.errors import FrontendError
from onnxforge.frontends import unetpp
from tests.frontends.seed_model_utils import (
    assert_onnx_matches_pytorch,
    assert_state_equal,
    model_keys,
    onnx_op_attributes,
    reference_keys,
    upstream_state_dict,
)

REF = reference_keys("unetpp.keys.json")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return unetpp.build()


@pytest.fixture(scope="module")
def guide() -> torch.nn.Module:
    return unetpp.build("guide")


def _input(h: int = 96, w: int = 96) -> torch.Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))


def test_state_dict_matches_reference_exactly(model):
    assert model_keys(model) == REF
    assert len(REF) == 212


def test_guide_variant_has_the_same_keys(guide):
    assert model_keys(guide) == REF


def test_parameter_count(model):
    assert sum(p.numel() for p in model.parameters()) == 9_163_329


def test_spec():
    spec = unetpp.SPEC
    assert spec.name == "unetpp" and spec.build is unetpp.build
    assert spec.input_name == "actual_input_1" and spec.output_names == ("output1",)
    assert spec.size_multiple == 16 and spec.keys_reference == "unetpp.keys.json"
    assert set(spec.variants) == {"upstream", "guide"}
    ev = spec.eval
    assert (ev.task, ev.dataset, ev.input_size, ev.preprocess) == (
        "binary-segmentation", "dsb2018", (96, 96), "resize-bgr-double-scale")
    assert (ev.metric, ev.threshold, ev.num_classes, ev.output_layout) == ("binary-iou", 0.0, 1, "logits-nchw")
    assert ev.reported == {"iou": 0.8385}
    assert "0.5" in ev.notes


def test_build_is_eval_and_deterministic(model):
    assert not model.training
    again = unetpp.build()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_build_rejects_unknown_variant_and_aux():
    with pytest.raises(FrontendError, match="known: upstream, guide"):
        unetpp.build("nearest")
    with pytest.raises(FrontendError, match="auxiliary"):
        unetpp.build(with_aux=True)


@pytest.mark.parametrize("size", [(96, 96), (32, 64)])
def test_output_is_full_resolution_logits(model, size):
    with torch.no_grad():
        out = model(_input(*size))
    assert out.shape == (1, 1, *size)


def test_upsampling_per_variant(model, guide):
    assert model.up.mode == "bilinear" and model.up.align_corners is True and model.up.scale_factor == 2
    assert guide.up.mode == "nearest" and guide.up.scale_factor == 2


def test_guide_forward_differs_from_upstream_with_the_same_weights(model):
    guide = unetpp.build("guide")
    guide.load_state_dict(model.state_dict())
    x = _input()
    with torch.no_grad():
        a, b = model(x), guide(x)
    assert a.shape == b.shape
    assert (a - b).abs().max() > 1e-4 * a.abs().max()


def test_flat_upstream_checkpoint_loads_strictly(tmp_path):
    from onnxforge.frontends.checkpoint import load_checkpoint, load_into

    state = upstream_state_dict(REF)
    path = tmp_path / "model.pth"  # train.py: torch.save(model.state_dict(), 'models/<name>/model.pth')
    torch.save(state, path)
    fresh = unetpp.build()
    load_into(fresh, load_checkpoint(path), "unetpp")
    assert_state_equal(fresh, state)
    with torch.no_grad():
        assert torch.isfinite(fresh(_input())).all()


@pytest.mark.parametrize("variant", ["upstream", "guide"])
def test_checkpoint_exports_to_onnx_that_matches_pytorch(tmp_path, variant):
    from onnxforge.frontends.checkpoint import load_checkpoint, load_into
    from onnxforge.frontends.export import export_model

    state = upstream_state_dict(REF)
    ckpt = tmp_path / "nested_unet.pth"
    torch.save(state, ckpt)
    result = export_model("unetpp", tmp_path / "unetpp.onnx", checkpoint=ckpt, variant=variant)
    assert result.input_shapes == [(1, 3, 96, 96)] and result.output_shapes == [(1, 1, 96, 96)]

    resizes = onnx_op_attributes(result.path, "Resize")
    assert len(resizes) == 10
    if variant == "upstream":
        assert all(r["mode"] == b"linear" and r["coordinate_transformation_mode"] == b"align_corners" for r in resizes)
    else:
        assert all(r["mode"] == b"nearest" for r in resizes)

    torch_model = unetpp.build(variant)
    load_into(torch_model, load_checkpoint(ckpt), "unetpp")
    assert_onnx_matches_pytorch(result.path, torch_model, _input(), "actual_input_1", "output1")


def test_export_rejects_sizes_that_are_not_multiples_of_16(tmp_path):
    from onnxforge.frontends.export import export_model

    with pytest.raises(FrontendError, match="multiple of 16"):
        export_model("unetpp", tmp_path / "bad.onnx", input_size=(100, 96))
    assert not (tmp_path / "bad.onnx").exists()

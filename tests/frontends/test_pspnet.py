"""PSPNet R50-D8 frontend: upstream keys, backbone facts, spec, guide pooling emulation, export vs PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from onnxforge.frontends import get_spec, pspnet
from onnxforge.frontends.adaptive import EmulatedAdaptiveAvgPool2d
from onnxforge.frontends.checkpoint import load_into
from onnxforge.frontends.export import export_model, resolve_input_shape
from onnxforge.numerics import make_session
from tests.frontends.seed_model_utils import model_keys, onnx_op_attributes, reference_keys, upstream_state_dict

REF = reference_keys("pspnet.keys.json")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return upstream_state_dict(REF, seed=21)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, state):
    path = tmp_path_factory.mktemp("ck") / "pspnet_r50-d8_512x512_20k_voc12aug.pth"
    torch.save({"meta": {"CLASSES": tuple(f"c{i}" for i in range(21)), "mmseg_version": "0.18.0"}, "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def upstream_model(state) -> torch.nn.Module:
    model = pspnet.build()
    load_into(model, state, "pspnet")
    return model.eval()


def _x(h: int, w: int) -> torch.Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(4))


def test_state_dict_matches_reference_exactly():
    model = pspnet.build()
    assert model_keys(model) == REF
    assert len(REF) == 370
    assert sum(p.numel() for p in model.parameters()) == 48_977_034
    assert sum(p.numel() for p in model.auxiliary_head.parameters()) == 2_365_205
    assert model_keys(pspnet.build("guide", with_aux=True)) == REF
    assert not any(k.startswith(("backbone.conv1", "backbone.bn1")) for k, _ in REF)  # deep stem only


def test_backbone_dilations_are_contracted():
    bb = pspnet.build().backbone
    assert [b.conv2.dilation[0] for b in bb.layer3] == [1, 2, 2, 2, 2, 2]
    assert [b.conv2.dilation[0] for b in bb.layer4] == [2, 4, 4]
    assert [b.conv2.padding[0] for b in bb.layer4] == [2, 4, 4]
    assert bb.layer2[0].conv2.stride == (2, 2) and bb.layer3[0].downsample[0].stride == (1, 1)


def test_spec():
    spec = get_spec("pspnet")
    assert spec is pspnet.SPEC
    assert spec.input_name == "input" and spec.output_names == ("output", "aux")
    assert spec.size_multiple == 1 and set(spec.variants) == {"upstream", "guide"}
    ev = spec.eval
    assert (ev.dataset, ev.input_size, ev.preprocess, ev.metric, ev.ignore_index) == (
        "voc2012", (500, 500), "keep-ratio-pad", "miou-mmseg", 255)
    assert ev.mean == (123.675, 116.28, 103.53) and ev.std == (58.395, 57.12, 57.375)
    assert ev.num_classes == 21 and ev.reported == {"miou": 0.7618} and ev.output_layout == "logits-nchw"
    assert resolve_input_shape(spec) == (1, 3, 500, 500)


def test_output_is_logits_at_input_size_and_aux_is_optional(state):
    model = pspnet.build(with_aux=True)
    load_into(model, state, "pspnet")
    with torch.no_grad():
        feats = model.eval().backbone(_x(64, 72))
        outs = model(_x(64, 72))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 16, 18), (1, 512, 8, 9), (1, 1024, 8, 9), (1, 2048, 8, 9)]
    assert [tuple(o.shape) for o in outs] == [(1, 21, 64, 72)] * 2


def test_guide_emulation_at_500_differs_only_in_the_scale_6_branch():
    # the 63x63 layer4 feature of a 500x500 input (pspnet.md's table)
    x = torch.randn(1, 8, 63, 63, generator=torch.Generator().manual_seed(0))
    for scale in (1, 2, 3, 6):
        same = torch.allclose(EmulatedAdaptiveAvgPool2d(scale)(x), nn.AdaptiveAvgPool2d(scale)(x), atol=1e-6)
        assert same is (scale != 6), scale


def test_guide_model_differs_from_upstream(state, upstream_model):
    guide = pspnet.build("guide")
    load_into(guide, state, "pspnet")
    with torch.no_grad():
        x = _x(64, 64)  # 8x8 feature: 8->3 and 8->6 windows differ
        assert not torch.allclose(guide.eval()(x)[0], upstream_model(x)[0], atol=1e-4)
        x = _x(48, 48)  # 6x6 feature: every pool size divides it, same windows
        torch.testing.assert_close(guide(x)[0], upstream_model(x)[0], rtol=1e-5, atol=1e-5)


def _check_onnx(path, model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    sess = make_session(path.read_bytes())
    assert [i.name for i in sess.get_inputs()] == ["input"] and sess.get_inputs()[0].shape == list(x.shape)
    got = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref = [t.numpy() for t in model(x)]
    assert len(got) == len(ref)
    for r, g in zip(ref, got):
        assert g.shape == r.shape and np.isfinite(r).all()
        assert float(np.abs(r - g).max()) <= 1e-3 * max(1.0, float(np.abs(r).max()))
    return got[0]


@pytest.mark.slow
def test_export_with_mmcv_checkpoint_matches_pytorch(tmp_path, checkpoint, state):
    out = tmp_path / "pspnet.onnx"
    result = export_model("pspnet", out, checkpoint=checkpoint, input_size=(64, 64), with_aux=True)
    assert result.output_names == ["output", "aux"] and result.output_shapes == [(1, 21, 64, 64)] * 2
    assert len(result.pool_swaps) == 4 and result.warnings == []
    model = pspnet.build(with_aux=True)
    load_into(model, state, "pspnet")
    _check_onnx(out, model.eval(), _x(64, 64))
    resizes = onnx_op_attributes(out, "Resize")
    assert len(resizes) == 6 and all(a["coordinate_transformation_mode"] == b"half_pixel" for a in resizes)


@pytest.mark.slow
def test_export_guide_at_a_non_square_size_without_checkpoint(tmp_path, caplog):
    out = tmp_path / "pspnet_guide_72x96.onnx"
    with caplog.at_level("WARNING", logger="onnxforge"):
        result = export_model("pspnet", out, variant="guide", input_size=(72, 96), opset=11)
    assert "no checkpoint" in caplog.text and result.checkpoint is None and result.variant == "guide"
    assert result.output_shapes == [(1, 21, 72, 96)]
    # the 9x12 feature; mmcv's AveragePool: k = in-(out-1)*floor(in/out), s = floor(in/out) per axis
    pools = [(tuple(a["kernel_shape"]), tuple(a["strides"])) for a in onnx_op_attributes(out, "AveragePool")]
    assert pools == [((9, 12), (9, 12)), ((5, 6), (4, 6)), ((3, 4), (3, 4)), ((4, 2), (1, 2))]
    sess = make_session(out.read_bytes())
    assert sess.get_inputs()[0].shape == [1, 3, 72, 96]
    (got,) = sess.run(None, result.golden_inputs)
    ref = result.golden_outputs["output"]
    assert float(np.abs(got - ref).max()) <= 1e-3 * max(1.0, float(np.abs(ref).max()))

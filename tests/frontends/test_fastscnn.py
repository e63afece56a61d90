"""Fast-SCNN frontend: upstream keys, spec, interpolation facts, variants, export vs PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onnxforge.errors import FrontendError
from onnxforge.frontends import fastscnn, get_spec
from onnxforge.frontends.checkpoint import load_into
from onnxforge.frontends.export import export_model, resolve_input_shape
from onnxforge.numerics import make_session
from tests.frontends.seed_model_utils import model_keys, onnx_op_attributes, reference_keys, upstream_state_dict

REF = reference_keys("fastscnn.keys.json")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return upstream_state_dict(REF, seed=11)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, state):
    path = tmp_path_factory.mktemp("ck") / "best_model.pth"
    torch.save(state, path)  # SegmenTron best_model.pth: a flat state_dict with aux, no prefix
    return path


def _loaded(state, variant="upstream", with_aux=False) -> torch.nn.Module:
    model = fastscnn.build(variant, with_aux=with_aux)
    load_into(model, state, "fastscnn")
    return model.eval()


def _x(h: int, w: int, n: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(3))


def test_state_dict_matches_reference_exactly():
    model = fastscnn.build()
    assert model_keys(model) == REF
    assert len(REF) == 284
    assert sum(p.numel() for p in model.parameters()) == 1_209_961
    assert model_keys(fastscnn.build("guide", with_aux=True)) == REF


def test_spec():
    spec = get_spec("fastscnn")
    assert spec is fastscnn.SPEC
    assert spec.input_name == "image" and spec.output_names == ("output1", "aux1", "aux2")
    assert spec.size_multiple == 32 and set(spec.variants) == {"upstream", "guide"}
    ev = spec.eval
    assert (ev.dataset, ev.input_size, ev.preprocess, ev.metric, ev.ignore_index) == (
        "cityscapes", (1024, 2048), "full", "miou-segmentron", -1)
    assert ev.num_classes == 19 and ev.reported == {"miou": 0.6446, "pixacc": 0.9388}
    assert ev.mean == (0.485, 0.456, 0.406) and ev.std == (0.229, 0.224, 0.225)
    assert resolve_input_shape(spec) == (1, 3, 1024, 2048)  # the default export size


def test_first_conv_has_no_padding_and_branch_sizes():
    model = fastscnn.build().eval()
    assert model.learning_to_downsample.conv.conv.padding == (0, 0)
    with torch.no_grad():
        higher = model.learning_to_downsample(_x(256, 512))
        lower = model.global_feature_extractor(higher)
    assert tuple(higher.shape) == (1, 64, 32, 64) and tuple(lower.shape) == (1, 128, 8, 16)


def test_ffm_size_based_upsample_equals_scale_factor_4():
    # align_corners=True: source coordinates depend on sizes only, so the static size form is the same op
    x = _x(8, 16)
    a = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=True)
    b = F.interpolate(x, size=(32, 64), mode="bilinear", align_corners=True)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_outputs_and_aux(state):
    with torch.no_grad():
        outs = _loaded(state, with_aux=True)(_x(64, 128))
        main_only = _loaded(state)(_x(64, 128))
    assert [tuple(o.shape) for o in outs] == [(1, 19, 64, 128)] * 3
    assert len(main_only) == 1
    torch.testing.assert_close(main_only[0], outs[0])


def test_size_must_be_a_multiple_of_32():
    with pytest.raises(FrontendError, match="multiple of 32"):
        resolve_input_shape(fastscnn.SPEC, input_size=(100, 200))
    with pytest.raises(FrontendError, match="multiple of 32"):
        fastscnn.build()(_x(48, 64))


def test_guide_differs_where_windows_differ_and_equals_where_they_coincide(state):
    upstream, guide = _loaded(state), _loaded(state, "guide")
    with torch.no_grad():
        # 256x512: the pooled feature is 8x16; 8->3, 8->6, 16->3, 16->6 windows differ
        x = _x(256, 512)
        assert not torch.allclose(upstream(x)[0], guide(x)[0], atol=1e-4)
        # 192x384: the feature is 6x12, every pool size divides it: identical windows
        x = _x(192, 384)
        torch.testing.assert_close(upstream(x)[0], guide(x)[0], rtol=1e-5, atol=1e-5)


def test_guide_needs_a_feature_of_at_least_6():
    with pytest.raises(FrontendError, match="cannot pool 4 -> 6"):
        fastscnn.build("guide").eval()(_x(128, 256))


def _run_onnx(path, x: torch.Tensor) -> list[np.ndarray]:
    sess = make_session(path.read_bytes())
    return sess.run(None, {"image": x.numpy()})


def test_export_with_checkpoint_and_aux_matches_pytorch(tmp_path, checkpoint, state):
    out = tmp_path / "fastscnn.onnx"
    result = export_model("fastscnn", out, checkpoint=checkpoint, input_size=(64, 128), with_aux=True)
    assert result.output_names == ["output1", "aux1", "aux2"]
    assert result.output_shapes == [(1, 19, 64, 128)] * 3 and result.input_shapes == [(1, 3, 64, 128)]
    assert result.checkpoint == checkpoint and result.warnings == []
    # independent check: a freshly loaded PyTorch model vs onnxruntime on another input
    x = _x(64, 128)
    with torch.no_grad():
        ref = [t.numpy() for t in _loaded(state, with_aux=True)(x)]
    got = _run_onnx(out, x)
    for r, g in zip(ref, got):
        assert float(np.abs(r - g).max()) <= 1e-3 * max(1.0, float(np.abs(r).max()))
    resizes = onnx_op_attributes(out, "Resize")
    assert resizes and all(a["coordinate_transformation_mode"] == b"align_corners" for a in resizes)


@pytest.mark.slow
def test_export_guide_at_another_size_has_the_emulated_avgpools(tmp_path, checkpoint, state):
    out = tmp_path / "fastscnn_guide.onnx"
    result = export_model("fastscnn", out, checkpoint=checkpoint, variant="guide", input_size=(256, 512), batch_size=2)
    assert result.output_names == ["output1"] and result.output_shapes == [(2, 19, 256, 512)]
    pools = [(tuple(a["kernel_shape"]), tuple(a["strides"])) for a in onnx_op_attributes(out, "AveragePool")]
    # 8x16 feature: k = in-(out-1)*floor(in/out), s = floor(in/out)
    assert pools == [((8, 16), (8, 16)), ((4, 8), (4, 8)), ((4, 6), (2, 5)), ((3, 6), (1, 2))]
    x = _x(256, 512, n=2)
    with torch.no_grad():
        ref = _loaded(state, "guide")(x)[0].numpy()
        upstream = _loaded(state)(x)[0].numpy()
    (got,) = _run_onnx(out, x)
    assert float(np.abs(got - ref).max()) <= 1e-3 * max(1.0, float(np.abs(ref).max()))
    assert float(np.abs(got - upstream).max()) > 1e-3  # the guide's numerics, not PyTorch's adaptive pooling

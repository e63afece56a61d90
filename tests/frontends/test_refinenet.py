"""RefineNet-101 frontend: upstream keys, checkpoint wrappers, variants, shapes and ONNX export.

The model has 118M parameters (a 472 MB checkpoint): it is built once per module, inputs are small,
and every checkpoint or ONNX file is deleted as soon as it has been used.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onnxforge.errors import FrontendError
from onnxforge.frontends import refinenet
from tests.frontends.seed_model_utils import (
    assert_onnx_matches_pytorch,
    assert_state_equal,
    model_keys,
    onnx_op_attributes,
    reference_keys,
    upstream_state_dict,
    with_prefix,
)

REF = reference_keys("refinenet.keys.json")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """The upstream model; checkpoint tests load into it (the other tests do not depend on its values)."""
    return refinenet.build()


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return upstream_state_dict(REF)


def _input(h: int = 64, w: int = 64) -> torch.Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))


def test_state_dict_matches_reference_exactly(model):
    assert model_keys(model) == REF
    assert len(REF) == 712


def test_parameter_count(model):
    assert sum(p.numel() for p in model.parameters()) == 118_052_437


def test_spec():
    spec = refinenet.SPEC
    assert spec.name == "refinenet" and spec.build is refinenet.build
    assert spec.input_name == "input" and spec.output_names == ("output",)
    assert spec.size_multiple == 1 and spec.keys_reference == "refinenet.keys.json"
    assert set(spec.variants) == {"upstream", "guide"}
    ev = spec.eval
    assert (ev.task, ev.dataset, ev.input_size, ev.preprocess) == ("segmentation", "voc2012", (500, 500), "longest-pad")
    assert (ev.mean, ev.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert (ev.metric, ev.ignore_index, ev.num_classes, ev.output_layout) == ("miou-densetorch", 255, 21, "logits-nchw")
    assert ev.reported == {"miou": 0.7861}


def test_build_rejects_unknown_variant_and_aux():
    with pytest.raises(FrontendError, match="known: upstream, guide"):
        refinenet.build("patched")
    with pytest.raises(FrontendError, match="auxiliary"):
        refinenet.build(with_aux=True)


@pytest.mark.parametrize(("size", "expected"), [((128, 128), (32, 32)), ((100, 100), (25, 25)), ((65, 97), (17, 25))])
def test_output_is_stride_4_logits_at_any_size(model, size, expected):
    # At 100x100 the skips are 25/13/7/4: the decoder upsamplings (4->7->13->25) are not 2x, so only
    # size-based interpolation from the skip tensor gets the additions to line up.
    assert not model.training
    with torch.no_grad():
        out = model(_input(*size))
    assert out.shape == (1, 21, *expected)


def test_crp_pools_per_variant(model):
    guide = refinenet.build("guide")
    for m, g4_kernel in ((model, 5), (guide, 1)):
        kernels = {name: m.get_submodule(f"mflow_conv_g{i}_pool.0.maxpool").kernel_size
                   for i, name in enumerate(["g1", "g2", "g3", "g4"], start=1)}
        assert kernels == {"g1": 5, "g2": 5, "g3": 5, "g4": g4_kernel}
    assert model_keys(guide) == REF

    guide.load_state_dict(model.state_dict())
    x = _input()
    with torch.no_grad():
        a, b = model(x), guide(x)
    assert a.shape == b.shape == (1, 21, 16, 16)
    assert (a - b).abs().max() > 1e-3 * a.abs().max()


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("wrapper", ["flat", "model", "segmenter", "pth.tar"])
def test_upstream_checkpoints_load_strictly(tmp_path, model, state, wrapper):
    from onnxforge.frontends.checkpoint import load_checkpoint, load_into

    if wrapper == "flat":  # rf101's 101_voc download: a flat state_dict, no prefix
        path = _save(state, tmp_path / "101_voc.pth")
    elif wrapper == "model":  # light-weight-refinenet src_v2/train.py, DataParallel on cuda
        path = _save({"model": with_prefix(state), "epoch": 3, "optimisers": [], "schedulers": []},
                     tmp_path / "checkpoint.pth")
    elif wrapper == "segmenter":  # light-weight-refinenet src/train.py
        path = _save({"segmenter": with_prefix(state), "epoch_start": 3, "best_val": 0.78},
                     tmp_path / "checkpoint.pth.tar")
    else:  # the guide's RefineNet_910.pth.tar, read with torch.load(f)['model']
        path = _save({"model": state, "epoch": 99}, tmp_path / "RefineNet_910.pth.tar")
    try:
        loaded = load_checkpoint(path)
    finally:
        path.unlink()
    load_into(model, loaded, "refinenet")
    del loaded
    assert_state_equal(model, state)


@pytest.mark.slow
def test_checkpoint_exports_to_onnx_that_matches_pytorch(tmp_path, model, state):
    from onnxforge.frontends.checkpoint import load_into
    from onnxforge.frontends.export import export_model

    ckpt = _save({"model": with_prefix(state), "epoch": 99}, tmp_path / "RefineNet_910.pth.tar")
    try:
        result = export_model("refinenet", tmp_path / "refinenet.onnx", checkpoint=ckpt, input_size=(64, 64))
    finally:
        ckpt.unlink()
    try:
        assert result.input_shapes == [(1, 3, 64, 64)] and result.output_shapes == [(1, 21, 16, 16)]
        resizes = onnx_op_attributes(result.path, "Resize")
        assert len(resizes) == 3
        assert all(r["mode"] == b"linear" and r["coordinate_transformation_mode"] == b"align_corners" for r in resizes)

        load_into(model, state, "refinenet")
        assert_onnx_matches_pytorch(result.path, model, _input(), "input", "output")
    finally:
        result.path.unlink()

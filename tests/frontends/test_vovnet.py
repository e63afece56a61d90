"""VoVNet-39 frontend: upstream '/' keys, checkpoint wrappers, shapes and ONNX export."""

from __future__ import annotations

import pytest
import torch

from onnxforge.errors import FrontendError
from onnxforge.frontends import vovnet
from tests.frontends.seed_model_utils import (
    assert_onnx_matches_pytorch,
    assert_state_equal,
    model_keys,
    onnx_op_attributes,
    onnx_op_types,
    reference_keys,
    upstream_state_dict,
    with_prefix,
)

REF = reference_keys("vovnet39.keys.json")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return vovnet.build()


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return upstream_state_dict(REF)


def _input(h: int = 224, w: int = 224) -> torch.Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))


def test_state_dict_matches_reference_exactly(model):
    assert model_keys(model) == REF
    assert len(REF) == 236
    assert REF[0][0] == "stem.stem_1/conv.weight"


def test_parameter_count(model):
    assert sum(p.numel() for p in model.parameters()) == 22_600_296


def test_spec():
    spec = vovnet.SPEC
    assert spec.name == "vovnet39" and spec.build is vovnet.build
    assert spec.input_name == "image" and spec.output_names == ("class",)
    assert spec.size_multiple == 1 and spec.keys_reference == "vovnet39.keys.json"
    assert list(spec.variants) == ["upstream"]
    ev = spec.eval
    assert (ev.task, ev.dataset, ev.input_size, ev.preprocess, ev.resize_short) == (
        "classification", "imagenet", (224, 224), "resize-crop", 256)
    assert (ev.metric, ev.num_classes, ev.output_layout, ev.ignore_index) == ("topk", 1000, "logits-nc", None)
    assert ev.reported == {"top1": 0.7678, "top5": 0.9343}


def test_build_rejects_unknown_variant_and_aux():
    with pytest.raises(FrontendError, match="known: upstream"):
        vovnet.build("guide")
    with pytest.raises(FrontendError, match="auxiliary"):
        vovnet.build(with_aux=True)


def test_structure_follows_upstream(model):
    assert not model.training
    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.ceil_mode) for p in pools] == [(3, 2, True)] * 3
    assert not hasattr(model.stage2, "Pooling")
    assert [m.identity for m in model.modules() if isinstance(m, vovnet.OSAModule)] == [
        False, False, False, True, False, True]


@pytest.mark.parametrize("size", [(224, 224), (97, 131)])
def test_output_is_class_logits(model, size):
    with torch.no_grad():
        out = model(_input(*size))
    assert out.shape == (1, 1000)


def test_odd_sizes_round_up_in_the_pools(model):
    # stem 97 -> 49 -> 25; pools with ceil_mode=True: 25 -> 12 -> 6 -> 3 (floor mode would give 12 -> 5 -> 2).
    sizes = []
    hook = model.stage5.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[2:])))
    try:
        with torch.no_grad():
            model(_input(97, 97))
    finally:
        hook.remove()
    assert sizes == [(3, 3)]


@pytest.mark.parametrize("wrapper", ["main.py checkpoint", "released module. flat"])
def test_upstream_checkpoints_load_strictly(tmp_path, state, wrapper):
    from onnxforge.frontends.checkpoint import load_checkpoint, load_into

    if wrapper == "main.py checkpoint":  # DataParallel state_dict inside main.py's training checkpoint
        obj = {"epoch": 90, "arch": "vovnet39", "state_dict": with_prefix(state), "best_prec1": torch.tensor(76.77),
               "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}}
        path = tmp_path / "model_best.pth.tar"
    else:  # vovnet39_torchvision.pth: a flat state_dict whose keys start with module.
        obj = with_prefix(state)
        path = tmp_path / "vovnet39_torchvision.pth"
    torch.save(obj, path)
    fresh = vovnet.build()
    load_into(fresh, load_checkpoint(path), "vovnet39")
    assert_state_equal(fresh, state)


def test_checkpoint_exports_to_onnx_that_matches_pytorch(tmp_path, state):
    from onnxforge.frontends.checkpoint import load_checkpoint, load_into
    from onnxforge.frontends.export import export_model

    ckpt = tmp_path / "vovnet39_torchvision.pth"
    torch.save(with_prefix(state), ckpt)
    result = export_model("vovnet39", tmp_path / "vovnet39.onnx", checkpoint=ckpt)
    assert result.input_shapes == [(1, 3, 224, 224)] and result.output_shapes == [(1, 1000)]

    ops = onnx_op_types(result.path)
    assert "GlobalAveragePool" in ops and "Flatten" in ops and "Reshape" not in ops
    assert [p["ceil_mode"] for p in onnx_op_attributes(result.path, "MaxPool")] == [1, 1, 1]

    torch_model = vovnet.build()
    load_into(torch_model, load_checkpoint(ckpt), "vovnet39")
    assert_onnx_matches_pytorch(result.path, torch_model, _input(), "image", "class")

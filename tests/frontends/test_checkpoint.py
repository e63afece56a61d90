"""Checkpoint loading: the upstream wrapper formats load strictly; wrong or corrupt files give one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from onnxforge.errors import CheckpointError
from onnxforge.frontends import fastscnn, pspnet
from onnxforge.frontends.checkpoint import load_checkpoint, load_into
from tests.frontends.seed_model_utils import assert_state_equal, reference_keys, upstream_state_dict

FAST_KEYS = reference_keys("fastscnn.keys.json")
PSP_KEYS = reference_keys("pspnet.keys.json")


@pytest.fixture(scope="module")
def fast_state() -> dict[str, torch.Tensor]:
    return upstream_state_dict(FAST_KEYS, seed=5)


@pytest.fixture(scope="module")
def psp_state() -> dict[str, torch.Tensor]:
    return upstream_state_dict(PSP_KEYS, seed=6)


@pytest.fixture(scope="module")
def psp_model() -> torch.nn.Module:
    return pspnet.build()


def _prefixed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"module.{k}": v for k, v in state.items()}


# Each upstream way of saving weights: (file name, how the object wraps the state_dict)
WRAPPERS = {
    "flat.pth": lambda sd: sd,  # SegmenTron best_model.pth
    "mmcv.pth": lambda sd: {  # mmcv runner / publish_model: meta + state_dict
        "meta": {"mmseg_version": "0.18.0", "CLASSES": ("background", "aeroplane"), "PALETTE": [[0, 0, 0]],
                 "config": "model = dict(type='EncoderDecoder')", "epoch": 1, "iter": 20000,
                 "best_score": np.float64(0.77), "hist": np.zeros(3)},  # numpy in metadata is common
        "state_dict": sd,
    },
    "periodic.pth": lambda sd: {"epoch": 10, "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}},
    "model.pth": lambda sd: {"model": sd},
    "segmenter.pth": lambda sd: {"segmenter": sd, "epoch": 3},
    "nested.pth": lambda sd: {"model": {"state_dict": sd}},
    "dataparallel.pth": _prefixed,
    "dp_wrapped.pth.tar": lambda sd: {"state_dict": _prefixed(sd), "best_pred": 0.6},
}


@pytest.mark.parametrize("fname", list(WRAPPERS))
def test_every_wrapper_format_loads_strictly(tmp_path, fast_state, fname):
    path = tmp_path / fname
    torch.save(WRAPPERS[fname](fast_state), path)
    state = load_checkpoint(path)
    assert list(state) == list(fast_state)
    model = fastscnn.build()
    load_into(model, state, "fastscnn")
    assert_state_equal(model, fast_state)


def test_legacy_non_zip_format_loads(tmp_path, fast_state):
    path = tmp_path / "old.pth"
    torch.save({"state_dict": fast_state}, path, _use_new_zipfile_serialization=False)
    assert list(load_checkpoint(path)) == list(fast_state)


def test_mmcv_pspnet_checkpoint_with_aux_loads_into_the_model(tmp_path, psp_state, psp_model):
    path = tmp_path / "pspnet_r50-d8_512x512_20k_voc12aug.pth"
    torch.save(WRAPPERS["mmcv.pth"](psp_state), path)
    load_into(psp_model, load_checkpoint(path), "pspnet")
    assert_state_equal(psp_model, psp_state)
    assert any(k.startswith("auxiliary_head.") for k in psp_model.state_dict())


def test_half_precision_checkpoint_loads_as_float(fast_state):
    model = fastscnn.build()
    load_into(model, {k: (v.half() if v.is_floating_point() else v) for k, v in fast_state.items()}, "fastscnn")
    assert model.classifier.conv[1].weight.dtype == torch.float32


def test_missing_num_batches_tracked_is_tolerated(fast_state):
    old = {k: v for k, v in fast_state.items() if not k.endswith("num_batches_tracked")}
    load_into(fastscnn.build(), old, "fastscnn")


def test_mismatch_report_names_counts_and_offenders(psp_state, psp_model):
    state = dict(psp_state)
    state["decode_head.conv_seg.weight"] = torch.zeros(19, 512, 1, 1)  # a Cityscapes head
    del state["auxiliary_head.conv_seg.weight"]
    del state["auxiliary_head.conv_seg.bias"]
    state["decode_head.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        load_into(psp_model, state, "pspnet")
    msg = str(info.value)
    assert msg == (
        "checkpoint does not match pspnet: 2 missing (auxiliary_head.conv_seg.weight, auxiliary_head.conv_seg.bias), "
        "1 unexpected (decode_head.extra.weight), "
        "1 shape mismatch (decode_head.conv_seg.weight: ckpt [19,512,1,1] vs model [21,512,1,1])"
    )


def test_checkpoint_without_aux_is_rejected_and_names_the_aux_keys():
    # 16 aux entries; the 2 num_batches_tracked among them are tolerated (pre-0.4.1 checkpoints lack them)
    noaux = [(k, s) for k, s in FAST_KEYS if not k.startswith("auxlayer")]
    with pytest.raises(CheckpointError, match=r"14 missing \(auxlayer1\.0\.weight, auxlayer1\.1\.weight, auxlayer1\.1\.bias, \.\.\.\)"):
        load_into(fastscnn.build(), upstream_state_dict(noaux), "fastscnn")


def test_another_models_checkpoint_says_so(fast_state, psp_model):
    with pytest.raises(CheckpointError) as info:
        load_into(psp_model, fast_state, "pspnet")
    msg = str(info.value)  # 370 keys less the 61 tolerated num_batches_tracked
    assert msg.startswith("checkpoint does not match pspnet: 309 missing (backbone.stem.0.weight")
    assert "284 unexpected" in msg and "no key in common" in msg and "\n" not in msg


def test_failed_load_leaves_the_model_untouched(fast_state):
    model = fastscnn.build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = dict(fast_state)
    state["classifier.conv.1.bias"] = torch.zeros(21)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_into(model, state, "fastscnn")
    assert_state_equal(model, before)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: d / "missing.pth", "no such checkpoint file"),
        (lambda d: _write(d / "empty.pth", b""), "empty file"),
        (lambda d: _write(d / "garbage.pth", b"this is not a checkpoint" * 20), "not a readable PyTorch checkpoint"),
        (lambda d: d, "not a file"),
    ],
)
def test_unreadable_files_are_one_line_errors(tmp_path, make, fragment):
    path = make(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert fragment in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_checkpoint(tmp_path, fast_state):
    full = tmp_path / "full.pth"
    torch.save(fast_state, full)
    cut = _write(tmp_path / "cut.pth", full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth: not a readable PyTorch checkpoint \(truncated or corrupt"):
        load_checkpoint(cut)


class Opaque:  # stands for a training script's own class pickled into a checkpoint
    pass


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        (torch.zeros(3), "holds a Tensor, not a state_dict"),
        ({"epoch": 3, "best": 0.5}, "no state_dict found (top-level keys: epoch, best; non-tensor entries: epoch, best)"),
        ({"state_dict": {"a": torch.zeros(1)}, "args": Opaque()}, "pickled Python objects"),
    ],
)
def test_objects_that_are_not_state_dicts(tmp_path, obj, fragment):
    path = tmp_path / "x.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)

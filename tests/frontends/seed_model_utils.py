"""Helpers shared by the seed-model frontend tests (refinenet, vovnet39, unetpp).

The reference key lists are copies of shared/reference/models/<model>.keys.json, kept in
tests/frontends/data/ so the tests do not depend on shared/ sitting beside the checkout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
SHARED_MODELS = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "models"


def reference_keys(keys_file: str) -> list[tuple[str, tuple[int, ...]]]:
    """The upstream state_dict as an ordered list of (key, shape); fails (never skips) if the copy is absent."""
    path = DATA / keys_file
    if not path.is_file():
        pytest.fail(f"reference key list {path} is missing; copy it from {SHARED_MODELS / keys_file}")
    return [(key, tuple(shape)) for key, shape in json.loads(path.read_text())]


def model_keys(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(value.shape)) for key, value in model.state_dict().items()]


def upstream_state_dict(keys: list[tuple[str, tuple[int, ...]]], seed: int = 123) -> dict[str, torch.Tensor]:
    """A checkpoint with the upstream key names and deterministic, well-scaled values.

    Conv/Linear weights ~ N(0, 1/fan_in), BN affine near (1, 0), running_var > 0, so a forward pass
    through the loaded model stays finite; `num_batches_tracked` is 7 so a load is visible there too.
    """
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in keys:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.long)
            continue
        noise = torch.randn(shape, generator=gen)
        if key.endswith("running_var"):
            value = 1.0 + 0.1 * noise.abs()
        elif len(shape) >= 2:  # conv / linear weight
            fan_in = 1
            for dim in shape[1:]:
                fan_in *= dim
            value = noise / fan_in ** 0.5
        elif key.endswith("weight"):  # BN gamma
            value = 1.0 + 0.1 * noise
        else:  # biases, running_mean
            value = 0.1 * noise
        state[key] = value
    return state


def assert_state_equal(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    """Every tensor of `model.state_dict()` equals `expected[key]` (same key set)."""
    got = model.state_dict()
    assert list(got) == list(expected)
    differing = [k for k in expected if not torch.equal(got[k], expected[k].to(got[k].dtype))]
    assert not differing, differing[:5]


def with_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


def assert_onnx_matches_pytorch(onnx_path: Path, torch_model: torch.nn.Module, x: torch.Tensor,
                                input_name: str, output_name: str, rel_tol: float = 1e-3) -> None:
    """The exported graph runs in onnxruntime (CPU) with the spec's I/O names and matches `torch_model(x)`.

    Tolerance: max |ort - torch| <= rel_tol * max(1, max |torch|), the export verifier's bound.
    """
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [input_name]
    assert [o.name for o in sess.get_outputs()] == [output_name]
    assert sess.get_inputs()[0].shape == list(x.shape)  # static shapes
    (got,) = sess.run(None, {input_name: x.numpy()})
    with torch.no_grad():
        ref = torch_model(x).numpy()
    assert got.shape == ref.shape
    assert np.isfinite(ref).all()
    scale = max(1.0, float(np.abs(ref).max()))
    assert float(np.abs(got - ref).max()) <= rel_tol * scale


def onnx_op_attributes(onnx_path: Path, op_type: str) -> list[dict[str, object]]:
    """The attributes of every node of `op_type`, in graph order (weights not loaded)."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    return [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            for n in proto.graph.node if n.op_type == op_type]


def onnx_op_types(onnx_path: Path) -> list[str]:
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    return [n.op_type for n in proto.graph.node]

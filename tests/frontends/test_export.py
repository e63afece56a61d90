"""export_model: registry, validation before work, the generic factory path, verification, atomic output."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from onnxforge.errors import CheckpointError, FrontendError, OutputPathError
from onnxforge.frontends import MODELS, get_spec, list_specs
from onnxforge.frontends.export import NO_CHECKPOINT_WARNING, calibrate_batchnorm, export_model
from onnxforge.numerics import make_session, seeded_inputs

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FACTORIES = textwrap.dedent(
    """
    import torch
    from torch import nn

    def tiny():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(72, 5))

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            y = self.conv(x)
            return y, self.pool(y)

    class TracingDiffers(nn.Module):
        # a model whose traced graph is not what it computes eagerly: verification must catch it
        def forward(self, x):
            return x + 1.0 if torch.jit.is_tracing() else x

    def not_a_module():
        return 42
    """
)


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    root = tmp_path_factory.mktemp("factories")
    (root / "onnxforge_test_factories.py").write_text(FACTORIES)
    sys.path.insert(0, str(root))
    yield "onnxforge_test_factories"
    sys.path.remove(str(root))
    sys.modules.pop("onnxforge_test_factories", None)


def test_registry_lists_the_five_models():
    specs = list_specs()
    assert [s.name for s in specs] == list(MODELS) == ["refinenet", "vovnet39", "pspnet", "unetpp", "fastscnn"]
    for spec in specs:
        assert get_spec(spec.name) is spec and "upstream" in spec.variants
        assert (Path(__file__).parent / "data" / spec.keys_reference).is_file()


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(FrontendError, match=r"unknown model 'resnet'; known models: refinenet, vovnet39, pspnet, unetpp, fastscnn"):
        get_spec("resnet")


def test_generic_factory_export(tmp_path, factories):
    out = tmp_path / "tiny.onnx"
    result = export_model(f"{factories}:tiny", out, input_shape=(1, 3, 16, 20))
    assert result.path == out and out.is_file()
    assert (result.input_names, result.input_shapes) == (["input"], [(1, 3, 16, 20)])
    assert (result.output_names, result.output_shapes) == (["output"], [(1, 5)])
    assert result.pool_swaps == ["3: 16x20 -> 3x3 as matrix"] and result.max_abs_diff < 1e-5
    proto = onnx.load(str(out))
    ops = [n.op_type for n in proto.graph.node]
    assert "MatMul" in ops and "Shape" not in ops and "BatchNormalization" not in ops
    # the golden input is the one numerics.seeded_inputs (the pass verifier's input) draws
    feeds = seeded_inputs(proto)
    np.testing.assert_array_equal(feeds["input"], result.golden_inputs["input"])
    (got,) = make_session(proto).run(None, feeds)
    np.testing.assert_allclose(got, result.golden_outputs["output"], rtol=1e-4, atol=1e-5)


def test_generic_factory_with_two_outputs_and_batch(tmp_path, factories):
    result = export_model(f"{factories}:TwoHeads", tmp_path / "two.onnx", input_shape=(2, 3, 8, 8))
    assert result.output_names == ["output0", "output1"]
    assert result.output_shapes == [(2, 4, 8, 8), (2, 4, 1, 1)]
    assert "GlobalAveragePool" in [n.op_type for n in onnx.load(str(tmp_path / "two.onnx")).graph.node]


def test_verification_failure_writes_nothing(tmp_path, factories):
    out = tmp_path / "bad.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(FrontendError, match=r"differs from PyTorch by 1 .*nothing written"):
        export_model(f"{factories}:TracingDiffers", out, input_shape=(1, 3, 4, 4))
    assert out.read_bytes() == b"previous"


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"name_or_factory": "resnet"}, FrontendError, "unknown model 'resnet'"),
        ({"name_or_factory": "fastscnn", "variant": "fast"}, FrontendError, "unknown variant 'fast'; choose one of upstream, guide"),
        ({"name_or_factory": "vovnet39", "with_aux": True}, FrontendError, "vovnet39 has no auxiliary outputs"),
        ({"name_or_factory": "fastscnn", "input_size": (100, 200)}, FrontendError, "100x200 must be a multiple of 32 (e.g. 128x224)"),
        ({"name_or_factory": "unetpp", "input_size": (40, 40)}, FrontendError, "must be a multiple of 16"),
        ({"name_or_factory": "pspnet", "batch_size": 0}, FrontendError, "batch size must be a positive integer"),
        ({"name_or_factory": "pspnet", "opset": 10}, FrontendError, "opset 10 is not supported; choose 11..20"),
        ({"name_or_factory": "pspnet", "opset": 21}, FrontendError, "opset 21"),
        ({"name_or_factory": "pspnet", "input_shape": (1, 1, 64, 64)}, FrontendError, "input shape must be Nx3xHxW"),
        ({"name_or_factory": "pspnet", "input_shape": (1, 3, 64, 64), "input_size": (32, 32)}, FrontendError, "disagrees"),
        ({"name_or_factory": "x.y:z"}, FrontendError, "needs --input-shape"),
        ({"name_or_factory": "no_such_pkg_xyz:f", "input_shape": (1, 3)}, FrontendError, "cannot import no_such_pkg_xyz"),
        ({"name_or_factory": "onnxforge.frontends:nope", "input_shape": (1, 3)}, FrontendError, "has no attribute 'nope'"),
        ({"name_or_factory": ":f", "input_shape": (1, 3)}, FrontendError, "expected 'package.module:factory'"),
    ],
)
def test_bad_arguments_fail_before_any_work(tmp_path, kwargs, error, fragment):
    out = tmp_path / "m.onnx"
    with pytest.raises(error) as info:
        export_model(out_path=out, **kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert not out.exists()


def test_factory_must_return_a_module(tmp_path, factories):
    with pytest.raises(FrontendError, match="returned a int, not a torch.nn.Module"):
        export_model(f"{factories}:not_a_module", tmp_path / "m.onnx", input_shape=(1, 3, 4, 4))


def test_output_path_errors(tmp_path):
    ck = tmp_path / "ck.pth"
    torch.save({"a": torch.zeros(1)}, ck)
    with pytest.raises(OutputPathError, match="output path is the input"):
        export_model("fastscnn", ck, checkpoint=ck)
    with pytest.raises(OutputPathError, match="does not exist"):
        export_model("fastscnn", tmp_path / "missing" / "m.onnx")
    with pytest.raises(OutputPathError, match="is a directory"):
        export_model("fastscnn", tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        export_model("fastscnn", tmp_path / "m.onnx", checkpoint=tmp_path / "nope.pth")


def test_wrong_checkpoint_leaves_existing_output_untouched(tmp_path):
    ck = tmp_path / "other.pth"
    torch.save({"state_dict": {"backbone.stem.0.weight": torch.zeros(32, 3, 3, 3)}}, ck)
    out = tmp_path / "fastscnn.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(CheckpointError, match="checkpoint does not match fastscnn: 238 missing"):
        export_model("fastscnn", out, checkpoint=ck, input_size=(64, 128))
    assert out.read_bytes() == b"keep me"


def test_calibrated_batchnorm_is_deterministic_and_non_trivial():
    from onnxforge.frontends import fastscnn

    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = fastscnn.build()
        assert calibrate_batchnorm(model, (1, 3, 64, 128)) == 44  # every BN but the two aux ones
        assert not model.training
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    var = states[0]["global_feature_extractor.out.bn.running_var"]
    assert not torch.allclose(var, torch.ones_like(var))
    assert torch.equal(states[0]["auxlayer1.1.running_var"], torch.ones(32))  # not reached: untouched


def test_named_model_without_checkpoint_warns_and_is_deterministic(tmp_path, caplog):
    rng_before = torch.random.get_rng_state()
    with caplog.at_level("WARNING", logger="onnxforge"):
        first = export_model("fastscnn", tmp_path / "a.onnx", input_size=(64, 128), batch_size=2)
    assert NO_CHECKPOINT_WARNING in caplog.text and first.warnings == [NO_CHECKPOINT_WARNING]
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is left alone
    assert first.input_shapes == [(2, 3, 64, 128)] and first.output_shapes == [(2, 19, 64, 128)]
    assert first.variant == "upstream" and first.opset == 17 and first.max_abs_diff < 1e-3
    a = onnx.load(str(tmp_path / "a.onnx"))
    assert [i.name for i in a.graph.input] == ["image"] and [o.name for o in a.graph.output] == ["output1"]
    assert {n.op_type for n in a.graph.node}.isdisjoint({"Shape", "Gather", "Slice"})  # static-clean


def test_opset_none_is_the_cann_profiles_default_and_errors_name_the_profile(tmp_path, factories, monkeypatch):
    from onnxforge.frontends.export import DEFAULT_OPSET

    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    shape = (1, 3, 16, 20)
    assert export_model(f"{factories}:tiny", tmp_path / "a.onnx", input_shape=shape, opset=None).opset == 11  # CANN 5.0's
    assert export_model(f"{factories}:tiny", tmp_path / "b.onnx", input_shape=shape, opset=None, cann="8.0").opset == 17
    assert DEFAULT_OPSET == 17  # the library's own default is unchanged
    with pytest.raises(FrontendError, match=r"choose 11..20 \(CANN 7.x's atc accepts opset 9..18 \(default 18\)\)"):
        export_model(f"{factories}:tiny", tmp_path / "c.onnx", input_shape=shape, opset=21, cann="7.0")
    with pytest.raises(FrontendError, match="no CANN profile for version '3.3'"):
        export_model(f"{factories}:tiny", tmp_path / "d.onnx", input_shape=shape, opset=None, cann="3.3")
    assert not (tmp_path / "c.onnx").exists() and not (tmp_path / "d.onnx").exists()

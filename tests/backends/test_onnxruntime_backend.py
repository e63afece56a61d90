from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from onnxforge.backends import get_backend
from onnxforge.backends.onnxruntime import available_providers
from onnxforge.errors import BackendError, BackendUnavailable
from onnxforge.numerics import seeded_inputs
from tests.evaluate.builders import save, seg_model


def test_runner_runs_reports_time_and_specs(tmp_path):
    model = seg_model(classes=3, size=(4, 6))
    be = get_backend("onnxruntime", threads=1)
    be.check_available()
    art = be.compile(save(model, tmp_path / "m.onnx"))  # a path compiles to the loaded proto
    feeds = seeded_inputs(model)
    with be.runner(art) as runner:
        assert runner.session.get_session_options().intra_op_num_threads == 1
        assert [i.name for i in runner.inputs()] == ["image"]
        assert runner.outputs()[0].shape == (1, 3, 4, 6)
        (out,) = runner.infer(feeds)
        runner.infer(feeds)
    assert out.shape == (1, 3, 4, 6)
    assert runner.calls == 2 and runner.last_inference_s > 0
    assert runner.total_inference_s >= runner.last_inference_s
    assert runner.session is None  # released on exit
    w = numpy_helper.to_array(model.graph.initializer[0]).reshape(3, 3)
    b = numpy_helper.to_array(model.graph.initializer[1])
    expected = np.einsum("oc,nchw->nohw", w, feeds["image"]) + b[None, :, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_infer_outside_with_block_is_an_error():
    be = get_backend("onnxruntime")
    runner = be.runner(be.compile(seg_model()))
    with pytest.raises(BackendError, match="outside its 'with' block"):
        runner.infer({})


def test_missing_gpu_provider_says_how_to_fix():
    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("this onnxruntime has CUDA")
    be = get_backend("onnxruntime", device="cuda")
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider is not in this onnxruntime build"):
        be.check_available()
    assert get_backend("onnxruntime", device="auto").runner(seg_model()).providers[-1] == "CPUExecutionProvider"


def test_run_failure_is_a_backend_error():
    be = get_backend("onnxruntime")
    with be.runner(be.compile(seg_model())) as runner:
        with pytest.raises(BackendError, match="onnxruntime failed to run the model"):
            runner.infer({"image": np.zeros((1, 3, 5, 5), np.float32)})


def test_infer_a_subset_of_outputs():
    model = seg_model(classes=2, size=(3, 3), extra_outputs=2)
    be = get_backend("onnxruntime")
    feeds = seeded_inputs(model)
    with be.runner(be.compile(model)) as runner:
        full = runner.infer(feeds)
        (aux1,) = runner.infer(feeds, ["aux1"])
    assert len(full) == 3
    np.testing.assert_array_equal(aux1, full[2])


def test_spec_options_reach_the_session():
    from onnxforge.backends import parse_backend

    be = parse_backend("onnxruntime{threads=1,inter_op_threads=2,optimize=false,spin=false}")
    with be.runner(be.compile(seg_model())) as runner:
        opts = runner.session.get_session_options()
        assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 2)
        assert opts.graph_optimization_level.name == "ORT_DISABLE_ALL"
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_make_session_is_the_one_session_builder(monkeypatch):
    import onnxforge.backends.onnxruntime as ortmod
    from onnxforge import numerics

    calls = []
    real = numerics.make_session
    monkeypatch.setattr(ortmod, "make_session", lambda model, **kw: calls.append(kw) or real(model, **kw))
    be = get_backend("onnxruntime", threads=2)
    with be.interleaved().runner(be.compile(seg_model())):
        pass
    assert calls == [{"threads": 2, "inter_op_threads": 0, "providers": ["CPUExecutionProvider"], "optimize": True, "spin": False}]
    sess = real(seg_model(), threads=3)
    opts = sess.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 1)  # threads alone: one inter-op thread
    with pytest.raises(RuntimeError, match="does not have configuration"):  # spinning left to onnxruntime
        opts.get_session_config_entry("session.intra_op.allow_spinning")


def test_unloadable_model_is_one_backend_error_line():
    from onnxforge.numerics import make_session

    model = seg_model()
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(BackendError) as info:
        make_session(model)
    assert str(info.value).startswith("onnxruntime cannot load the model: ") and "\n" not in str(info.value)


# -- onnxruntime's CANN execution provider (device=cann) -----------------------------------------------

def test_cann_provider_absent_here_is_one_clear_unavailable_error():
    assert "CANNExecutionProvider" not in available_providers()  # this machine's onnxruntime has no CANN build
    be = get_backend("onnxruntime{device=cann,device_id=1}")
    with pytest.raises(BackendUnavailable) as info:
        be.check_available()
    msg = str(info.value)
    assert "CANNExecutionProvider is not in this onnxruntime build" in msg and "onnxruntime-cann" in msg
    assert "set_env.sh" in msg and "--device cpu" in msg and "\n" not in msg
    with pytest.raises(BackendUnavailable):
        be.runner(seg_model())


def test_cann_provider_list_and_options_reach_the_session(monkeypatch):
    import onnxforge.backends.onnxruntime as ort_backend

    monkeypatch.setattr(ort_backend, "available_providers", lambda: ["CANNExecutionProvider", "CPUExecutionProvider"])
    seen = {}

    def fake_make_session(model, **kwargs):
        seen.update(kwargs)
        raise BackendError("stop here")  # nothing can run the CANN provider on this machine

    monkeypatch.setattr(ort_backend, "make_session", fake_make_session)
    be = get_backend("onnxruntime{device=cann,device_id=2,precision_mode=allow_mix_precision,"
                     "op_select_impl_mode=high_performance,npu_mem_limit=2147483648,enable_cann_graph=false}")
    be.check_available()
    with pytest.raises(BackendError, match="stop here"):
        with be.runner(seg_model()):
            pass
    assert seen["providers"] == [
        ("CANNExecutionProvider", {"device_id": "2", "precision_mode": "allow_mix_precision",
                                   "op_select_impl_mode": "high_performance", "npu_mem_limit": "2147483648",
                                   "enable_cann_graph": "0"}),
        "CPUExecutionProvider",
    ]
    plain = get_backend("onnxruntime{device=cann}")
    assert ort_backend.session_providers(plain.options) == [("CANNExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]
    assert str(be).startswith("onnxruntime{device=cann,device_id=2,")  # the canonical spec round-trips
    assert get_backend(str(be)) == be


@pytest.mark.parametrize("spec", ["onnxruntime{precision_mode=force_fp16}", "onnxruntime{device=cuda,device_id=1}",
                                  "onnxruntime{device=cpu,npu_mem_limit=1024}"])
def test_cann_provider_options_need_device_cann(spec):
    with pytest.raises(BackendError, match="is a CANN provider option; it needs device=cann"):
        get_backend(spec)


def test_cann_precision_mode_is_checked_against_the_documented_values():
    with pytest.raises(BackendError, match="precision_mode"):
        get_backend("onnxruntime{device=cann,precision_mode=fp8}")


def test_cli_with_device_cann_is_one_error_line_and_writes_nothing(tmp_path):
    from tests.conftest import assert_one_line_error, run_cli

    model = save(seg_model(), tmp_path / "m.onnx")
    out = tmp_path / "b.json"
    proc = run_cli("bench", model, "--device", "cann", "--batch-sizes", "1", "--json", out)
    assert_one_line_error(proc, "CANNExecutionProvider is not in this onnxruntime build", "onnxruntime-cann")
    assert not out.exists()

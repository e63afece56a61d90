from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxforge.errors import EvaluationError
from onnxforge.evaluate.bench import benchmark, static_batch, with_batch
from onnxforge.numerics import input_specs
from tests.evaluate.builders import seg_model


def test_dynamic_batch_runs_each_size_directly():
    calls = []
    recs = benchmark(seg_model(batch="N", size=(4, 4)), [1, 3], warmup=1, iters=3, threads=1,
                     progress=lambda d, t: calls.append((d, t)))
    assert [r.batch_size for r in recs] == [1, 3]
    for r in recs:
        assert not r.fixed_batch and r.error is None and r.iters == 3 and r.threads == 1
        assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms
        assert r.throughput == pytest.approx(r.batch_size / (r.p50_ms / 1000))
    assert calls[-1] == (8, 8) and len(calls) == 8


def test_static_batch_other_sizes_run_on_a_fixed_copy():
    model = seg_model(batch=2, size=(4, 4))
    assert static_batch(model) == 2
    copy = with_batch(model, 5)
    assert input_specs(copy)[0].shape == (5, 3, 4, 4) and input_specs(model)[0].shape == (2, 3, 4, 4)
    recs = benchmark(model, [2, 5], warmup=0, iters=2)
    assert [(r.batch_size, r.fixed_batch, r.error) for r in recs] == [(2, False, None), (5, True, None)]


def test_a_graph_that_hard_codes_its_batch_reports_why():
    shape = numpy_helper.from_array(np.array([1, 48], np.int64), "shape")
    g = helper.make_graph([helper.make_node("Reshape", ["image", "shape"], ["flat"])], "flat",
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("flat", TensorProto.FLOAT, [1, 48])], [shape])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    recs = benchmark(model, [1, 4], warmup=0, iters=1)
    assert recs[0].error is None
    assert recs[1].p50_ms is None and "cannot run with the batch fixed to 4" in recs[1].error
    assert "re-export with --batch-size 4" in recs[1].error


def test_bad_arguments():
    with pytest.raises(EvaluationError, match="batch sizes must be positive"):
        benchmark(seg_model(), [0])
    with pytest.raises(EvaluationError, match="need iters >= 1"):
        benchmark(seg_model(), [1], iters=0)


def test_backend_spec_and_threads_shorthand():
    from onnxforge.errors import BackendError

    recs = benchmark(seg_model(size=(4, 4)), [1], warmup=0, iters=1, backend="onnxruntime{threads=1}")
    assert (recs[0].backend, recs[0].spec, recs[0].threads) == ("onnxruntime", "onnxruntime{threads=1}", 1)
    recs = benchmark(seg_model(size=(4, 4)), [1], warmup=0, iters=1, threads=1, backend_options={"optimize": False})
    assert recs[0].spec == "onnxruntime{threads=1,optimize=false}"
    with pytest.raises(BackendError, match="contradicts threads=2"):
        benchmark(seg_model(), [1], backend="onnxruntime{threads=2}", threads=1)
    with pytest.raises(BackendError, match="backend 'atc' has no option 'threads'"):
        benchmark(seg_model(), [1], backend="atc", threads=1)


def test_round_robin_times_onnxruntime_without_spinning(monkeypatch):
    import onnxforge.backends.onnxruntime as ortmod
    from onnxforge.evaluate.bench import round_robin

    seen = []
    real = ortmod.make_session
    monkeypatch.setattr(ortmod, "make_session", lambda model, **kw: seen.append(kw) or real(model, **kw))
    times = round_robin([seg_model(size=(4, 4)), seg_model(size=(4, 4))], backend="onnxruntime{threads=1}", warmup=0, iters=2)
    assert [len(t) for t in times] == [2, 2]
    assert [(kw["threads"], kw["spin"]) for kw in seen] == [(1, False), (1, False)]


def test_file_artifacts_are_named_by_the_backend_suffix(tmp_path, monkeypatch):
    from onnxforge.evaluate.bench import round_robin
    from tests.backends.fakes import install_fake_ais_bench, install_fake_atc, path_with

    record = tmp_path / "argv.txt"
    install_fake_atc(tmp_path / "bin", record)
    monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
    install_fake_ais_bench(monkeypatch)  # reports 1.5 ms per run
    recs = benchmark(seg_model(size=(4, 4)), [1, 2], warmup=0, iters=2, backend="ais_bench{device_id=1}")
    assert [(r.batch_size, r.p50_ms, r.spec) for r in recs] == [(1, 1.5, "ais_bench{device_id=1}"), (2, 1.5, "ais_bench{device_id=1}")]
    output = next(a for a in record.read_text().split("\n") if a.startswith("--output="))
    assert output.endswith("/b2")  # atc adds .om: the artifact is b2.om, from artifact_suffix
    assert round_robin([seg_model(size=(4, 4))], backend="atc", warmup=0, iters=1) == [[1.5]]
    assert next(a for a in record.read_text().split("\n") if a.startswith("--output=")).endswith("/m0_b1")

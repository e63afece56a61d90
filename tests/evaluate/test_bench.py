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

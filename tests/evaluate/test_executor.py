"""Executors and sharded evaluation: parallel results equal serial ones exactly; mIoU of merged shards is the
unsharded mIoU (summed confusion statistics), not the mean of the shards' mIoU; bad input is one line."""

from __future__ import annotations

import operator
import pickle

import numpy as np
import pytest

from onnxforge.errors import BackendUnavailable, ForgeError
from onnxforge.evaluate import executor as ex
from onnxforge.evaluate.ab import DataSource, decide_pipeline
from onnxforge.evaluate.evaluator import evaluate, merge_results, plan_evaluation, score
from onnxforge.evaluate.executor import (EvalUnit, ModelBlob, PoolExecutor, SerialExecutor, evaluate_sharded,
                                         make_executor, run_eval_unit, score_sharded, shard_bounds)
from onnxforge.evaluate.metrics import make_metric
from onnxforge.passes import Pipeline, parse_pipeline
from tests.conftest import assert_one_line_error
from tests.evaluate.builders import cls_model, save, seg_model
from tests.evaluate.test_report import FAST, ScrambleLogits, fake_candidates, fake_clock, tiny_segmenter


def _decisions(d):
    """Everything a report decides from accuracy, per stage (timing comes from the same fake clock)."""
    return [(s.name, s.pipeline, s.accuracy, s.agreement, s.accuracy_verdict, s.verdict, s.reason, s.delta, s.flags)
            for s in d.stages] + [d.kept_pipeline, d.judged_on, d.warnings, d.best.name]


def _decide(executor, per_node=None):
    pipe = Pipeline((parse_pipeline("simplify").passes[0], ScrambleLogits(), parse_pipeline("resize-nearest").passes[0]))
    return decide_pipeline(tiny_segmenter(), pipe, DataSource("synthetic", None, None, 4), budget="1%", timing=FAST,
                           per_node=per_node, clock=fake_clock(), candidates_factory=fake_candidates(speed={"Neg": 0.5}),
                           executor=executor)


# ------------------------------------------------------------------------------------ executors
def test_serial_map_keeps_order_and_reports_progress():
    calls = []
    assert SerialExecutor().map(operator.neg, [3, 1, 2], lambda d, t: calls.append((d, t))) == [-3, -1, -2]
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_thread_budget_defaults_to_cores_over_workers_and_refuses_oversubscription():
    assert PoolExecutor(2, cores=4).threads == 2
    assert PoolExecutor(3, cores=4).threads == 1
    assert PoolExecutor(2, threads=2, cores=4).threads == 2
    with pytest.raises(ForgeError, match=r"--workers 2 x --threads 3 = 6 threads on 4 cores"):
        PoolExecutor(2, threads=3, cores=4)
    with pytest.raises(ForgeError, match=r"--workers 5: this machine has 4 cores"):
        PoolExecutor(5, cores=4)
    with pytest.raises(ForgeError, match="one device per worker"):
        PoolExecutor(2, devices=[0], cores=4)
    assert PoolExecutor(3, devices=[0, 1, 2], cores=2).threads == 1  # devices do the work, not the cores


def test_make_executor_by_name_and_bad_values():
    assert isinstance(make_executor("serial"), SerialExecutor)
    assert isinstance(make_executor("serial", workers=2), PoolExecutor)  # --workers N alone means a pool
    with pytest.raises(ForgeError, match="--workers: expected at least 1, got 0"):
        make_executor("pool", workers=0)
    with pytest.raises(ForgeError, match="unknown executor 'threads'; known: serial, pool, ray"):
        make_executor("threads")
    with pytest.raises(ForgeError, match="--ray-address needs --executor ray"):
        make_executor("serial", address="127.0.0.1:6379")


def test_shard_bounds_are_contiguous_and_balanced():
    assert shard_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert shard_bounds(2, 4) == [(0, 1), (1, 2)]  # never an empty shard
    assert shard_bounds(5, 1) == [(0, 5)]


def test_device_hook_sets_the_backend_device_option(monkeypatch):
    monkeypatch.setattr(ex, "_WORKER_DEVICE", 3)
    assert ex._unit_backend("ais_bench", 0).options.device_id == 3
    assert ex._unit_backend("onnxruntime", 2).options.threads == 2  # no device option: only the thread budget
    monkeypatch.setattr(ex, "_WORKER_DEVICE", None)
    assert ex._unit_backend("onnxruntime{threads=4}", 1).options.threads == 4  # the spec's own value stays


def test_a_unit_is_a_picklable_description_and_its_model_travels_as_a_blob():
    m = seg_model(classes=3)
    u = EvalUnit(model=ModelBlob.of(m), dataset="synthetic", limit=2, reference=ModelBlob.of(m))
    assert u.blobs() == {u.model.sha256: m.SerializeToString()}  # one blob: model and reference are the same bytes
    bare = u.bind({})
    assert bare.model.data is None and pickle.loads(pickle.dumps(bare)) == bare
    assert bare.bind(u.blobs()) == u
    assert bare.key() == u.key() and "label" not in u.key() and u.key()["model"] == u.model.sha256
    assert EvalUnit(model=ModelBlob.of(seg_model(classes=3, seed=1)), dataset="synthetic", limit=2).key() != u.key()
    with pytest.raises(ForgeError, match="not bound"):
        run_eval_unit(bare)


# ------------------------------------------------------------------------------ sharded metrics
def test_merged_shards_give_the_unsharded_miou_not_the_mean_of_shard_mious():
    """Two shards with very different class mixes: shard A is all class 0 (predicted right), shard B has
    classes 1 and 2 half wrong. The mean of the shards' mIoU weighs each shard equally; the real mIoU sums
    the areas over all images first."""
    a_t = np.zeros((4, 4), np.int64)
    b_t = np.array([[1, 1, 2, 2]] * 4)
    b_p = np.array([[1, 2, 2, 2]] * 4)
    full, sa, sb = (make_metric("miou-mmseg", 3) for _ in range(3))
    for m, pairs in ((full, [(a_t, a_t), (b_p, b_t)]), (sa, [(a_t, a_t)]), (sb, [(b_p, b_t)])):
        for p, t in pairs:
            m.update(p, t)
    mean_of_shards = (sa.result()["mIoU"] + sb.result()["mIoU"]) / 2
    sa.merge(sb)
    assert sa.result() == full.result()
    assert sa.per_class() == full.per_class()
    # by hand: IoU 1 (class 0), 4/8 (class 1), 8/12 (class 2) over all images; shard A has class 0 only
    assert full.result()["mIoU"] == pytest.approx((1 + 1 / 2 + 2 / 3) / 3)
    assert mean_of_shards == pytest.approx((1 + (1 / 2 + 2 / 3) / 2) / 2)
    assert abs(mean_of_shards - full.result()["mIoU"]) > 0.05


@pytest.mark.parametrize("metric", ["miou-segmentron", "miou-densetorch", "topk", "binary-iou"])
def test_every_metric_merges_to_its_unsharded_result(metric):
    rng = np.random.default_rng(0)
    full, a, b = (make_metric(metric, 4) for _ in range(3))
    for i in range(6):
        if metric == "topk":
            p, t = rng.standard_normal(7), int(rng.integers(0, 7))
        else:
            t = rng.integers(0, 2 if metric == "binary-iou" else 4, (5, 6))
            p = rng.integers(0, 2 if metric == "binary-iou" else 4, (5, 6))
        full.update(p, t)
        (a if i < 4 else b).update(p, t)
    a.merge(b)
    assert a.result() == full.result()


@pytest.mark.parametrize("build", [
    lambda seed: seg_model(classes=4, size=(16, 24), seed=seed),
    lambda seed: cls_model(classes=5, size=(16, 16), seed=seed),
    lambda seed: seg_model(classes=1, size=(16, 16), seed=seed),  # binary segmentation: a float sum of per-image IoUs
], ids=["segmentation", "classification", "binary"])
def test_sharded_evaluation_equals_unsharded_exactly(build):
    model, ref = build(0), build(1)
    whole = evaluate(model, "synthetic", None, limit=7, reference=ref, per_image=True)
    parts = evaluate_sharded(model, "synthetic", None, SerialExecutor(), limit=7, reference=ref, shards=3, per_image=True)
    assert parts.metrics == whole.metrics and parts.agreement == whole.agreement
    assert parts.per_class_iou == whole.per_class_iou and parts.images == whole.images == 7
    assert parts.per_image.names == whole.per_image.names
    np.testing.assert_array_equal(parts.per_image.values, whole.per_image.values)
    np.testing.assert_array_equal(parts.per_image.agreement, whole.per_image.agreement)
    assert "scored in 3 shards of 3-2 images on serial" in parts.notes


def test_shards_of_a_dataset_on_disk_are_the_listed_files(tmp_path):
    from onnxforge.evaluate.synthetic import write_synthetic

    write_synthetic(tmp_path / "synth", n=5, size=(16, 24), classes=4)
    m = seg_model(classes=4, size=(16, 24))
    whole = evaluate(m, "synthetic", tmp_path / "synth")
    parts = evaluate_sharded(m, "synthetic", tmp_path / "synth", SerialExecutor(), shards=2)
    assert parts.metrics == whole.metrics and parts.images == 5
    plan = plan_evaluation(m, "synthetic", tmp_path / "synth")
    assert plan.dataset.shard(2, 5).names() == plan.dataset.names()[2:]


def test_merge_results_needs_shard_accumulators():
    r = evaluate(seg_model(classes=3), "synthetic", None, limit=2)
    with pytest.raises(ForgeError, match="no shard results"):
        merge_results([])
    from dataclasses import replace

    with pytest.raises(ForgeError, match="no accumulators"):
        merge_results([replace(r, state=None)])


# --------------------------------------------------------------------------- pool == serial
@pytest.fixture(scope="module")
def pool():
    with PoolExecutor(2, cores=max(2, ex.cpu_cores())) as p:
        yield p


def test_report_on_a_pool_of_two_decides_exactly_as_serially(pool):
    serial = _decide(None, per_node="resize-nearest")
    parallel = _decide(pool, per_node="resize-nearest")
    assert _decisions(parallel) == _decisions(serial)
    assert {s.name for s in serial.stages} >= {"baseline", "1-simplify", "2-scramble-logits", "node-up", "combined"}


def test_sharded_evaluation_and_bisect_scoring_on_a_pool_equal_serial(pool):
    m, ref = seg_model(classes=4, size=(16, 24)), seg_model(classes=4, size=(16, 24), seed=1)
    whole = evaluate(m, "synthetic", None, limit=5, reference=ref)
    parts = evaluate_sharded(m, "synthetic", None, pool, limit=5, reference=ref)
    assert parts.metrics == whole.metrics and parts.agreement == whole.agreement
    assert "on pool of 2 processes" in parts.notes[-1]
    plan = plan_evaluation(ref, "synthetic", None, limit=5)
    from onnxforge.evaluate.evaluator import ModelRunner

    with ModelRunner(m) as run, ModelRunner(ref) as r:
        one = score(plan, run, reference=r)
    assert score_sharded(plan, m, pool, reference=ref).metrics == one.metrics


def test_an_error_in_a_worker_is_raised_in_the_parent(pool):
    bad = EvalUnit(model=ModelBlob.of(seg_model(classes=3)), dataset="voc2012", data_root="/nonexistent", preset="pspnet")
    with pytest.raises(ForgeError, match="nonexistent"):
        pool.map(run_eval_unit, [bad])


# --------------------------------------------------------------------------------------- CLI
def test_cli_workers_zero_and_unreachable_ray_address_are_one_line(cli, tmp_path):
    model = save(seg_model(classes=3), tmp_path / "m.onnx")
    assert_one_line_error(cli("evaluate", model, "--dataset", "synthetic", "--limit", "2", "--workers", "0"),
                          "--workers: expected at least 1, got 0")
    assert_one_line_error(cli("report", model, "--passes", "simplify", "--synthetic", "2", "-o", tmp_path / "r",
                              "--workers", "0"), "--workers")
    assert not (tmp_path / "r").exists()
    proc = cli("evaluate", model, "--dataset", "synthetic", "--limit", "2", "--executor", "ray", "--ray-address", "127.0.0.1:1")
    assert_one_line_error(proc, "ray")
    try:
        import ray  # noqa: F401
    except ImportError:
        assert "pip install 'onnxforge[ray]'" in proc.stderr
    else:
        assert "--ray-address 127.0.0.1:1: cannot reach a Ray cluster there" in proc.stderr


def test_cli_evaluate_with_two_workers_prints_the_serial_numbers(cli, tmp_path):
    import json

    model = save(seg_model(classes=4, size=(16, 24)), tmp_path / "m.onnx")
    one = cli("evaluate", model, "--dataset", "synthetic", "--limit", "4", "--json", tmp_path / "1.json")
    two = cli("evaluate", model, "--dataset", "synthetic", "--limit", "4", "--workers", "2", "--no-cache",
              "--json", tmp_path / "2.json")
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert json.loads((tmp_path / "2.json").read_text())["metrics"] == json.loads((tmp_path / "1.json").read_text())["metrics"]
    assert "scored in 2 shards" in two.stdout
    # the sharded run keys its merged result like the serial one: a cached serial result serves it
    three = cli("evaluate", model, "--dataset", "synthetic", "--limit", "4", "--workers", "2", "--json", tmp_path / "3.json")
    assert three.returncode == 0 and "reused 1 of 1 evaluation" in three.stdout, three.stdout
    assert json.loads((tmp_path / "3.json").read_text())["metrics"] == json.loads((tmp_path / "1.json").read_text())["metrics"]


# --------------------------------------------------------------------------------------- Ray
@pytest.mark.slow
def test_ray_local_cluster_equals_serial():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'onnxforge[ray]')")
    executor = ex.RayExecutor(workers=2, num_cpus=2)
    m, other = seg_model(classes=4, size=(16, 24)), seg_model(classes=4, size=(16, 24), seed=1)
    units = [EvalUnit(model=ModelBlob.of(x), dataset="synthetic", limit=3, reference=ModelBlob.of(m)) for x in (m, other, other)]
    put = []
    try:
        real_put = ray.put
        ray.put = lambda x: put.append(x) or real_put(x)
        try:
            got = executor.map(run_eval_unit, units)
            executor.map(run_eval_unit, units[1:])  # a later call reuses what is in the store already
        finally:
            ray.put = real_put
        parallel = _decide(executor)
        sharded = evaluate_sharded(m, "synthetic", None, executor, limit=4)
        bad = EvalUnit(model=ModelBlob.of(m), dataset="voc2012", data_root="/nonexistent", preset="pspnet")
        with pytest.raises(ForgeError, match="nonexistent"):  # the unit's own error, not a Ray wrapper
            executor.map(run_eval_unit, [bad])
    finally:
        executor.close()
    # eleven model references over two calls, two distinct models: each put in the object store once
    assert sorted(put) == sorted([m.SerializeToString(), other.SerializeToString()])
    assert [r.metrics for r in got] == [run_eval_unit(u).metrics for u in units]
    assert _decisions(parallel) == _decisions(_decide(None))
    assert sharded.metrics == evaluate(m, "synthetic", None, limit=4).metrics


def test_ray_missing_is_one_clear_line(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(BackendUnavailable, match=r"pip install 'onnxforge\[ray\]'"):
        ex.RayExecutor()


AGREEMENT_SNIPPET = """
import numpy as np
from onnxforge.evaluate.agreement import Agreement
rng = np.random.default_rng(0)
a = Agreement(3)
for _ in range(3):
    x = rng.standard_normal(1_000_000).astype(np.float32)
    a.update_raw(x, x + 0.01 * rng.standard_normal(x.size).astype(np.float32))
print(repr(a.result()))
"""


def test_agreement_sums_do_not_depend_on_the_blas_thread_count():
    """Ray runs workers with OMP_NUM_THREADS=1; a BLAS dot product splits its sum by threads. The raw
    agreement statistics must be the same digits either way, or Ray would not equal serial."""
    import os
    import subprocess
    import sys

    out = []
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        proc = subprocess.run([sys.executable, "-c", AGREEMENT_SNIPPET], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        out.append(proc.stdout)
    assert out[0] == out[1]


def test_bisect_with_two_workers_finds_the_same_culprit_and_scores(tmp_path, capsys):
    import json

    from onnxforge.cli.app import main
    from tests.cli.test_bisect_cli import seg_model as bisect_model

    model = tmp_path / "m.onnx"
    bisect_model(model)
    found = []
    for workers in ("1", "2"):
        out = tmp_path / f"repro{workers}"
        rc = main(["bisect", str(model), "--passes", "simplify,resize-nearest,simplify", "--synthetic", "4",
                   "--budget", "0.5pt", "-o", str(out), "--workers", workers])
        assert rc == 0, capsys.readouterr().out
        data = json.loads((out / "bisect.json").read_text())
        found.append({k: data[k] for k in ("culprit", "culprit_index", "nodes", "stages", "baseline")})
    assert found[0] == found[1] and found[0]["culprit"].startswith("resize-nearest")


def test_optimize_auto_with_two_workers_runs_and_writes_a_model_that_runs(cli, tmp_path):
    from onnxforge.modelio import load_model, save_model
    from onnxforge.numerics import run_model, seeded_inputs

    model = save_model(tiny_segmenter(), tmp_path / "tiny.onnx")
    out = tmp_path / "opt.onnx"
    proc = cli("optimize", model, "-o", out, "--passes", "simplify,fp16-output", "--auto", "--synthetic", "2",
               "--workers", "2", "--min-rounds", "3", "--max-rounds", "4")
    assert proc.returncode == 0, proc.stderr
    assert "kept:" in proc.stdout
    m = load_model(out)
    assert run_model(m, seeded_inputs(m))


def _device_of(_unit) -> int | None:
    return ex.worker_device()


def test_a_device_mapped_pool_gives_each_worker_its_own_device():
    with PoolExecutor(2, devices=[3, 5], cores=2) as pool:
        got = pool.map(_device_of, list(range(6)))
    assert set(got) <= {3, 5} and None not in got
    assert SerialExecutor().map(_device_of, [0]) == [None]

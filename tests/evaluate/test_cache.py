"""The evaluation cache: keys, hits and misses, corruption, an unwritable directory, LRU eviction, and
reports (cached equals uncached; an interrupted report resumes from the cache)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import onnxforge
from onnxforge.errors import ForgeError
from onnxforge.evaluate.ab import DataSource, decide_pipeline, run_report
from onnxforge.evaluate.cache import (
    CACHE_ENV, DEFAULT_MAX_BYTES, EvalCache, dataset_fingerprint, default_cache_dir, evaluation_key, files_fingerprint,
    parse_size,
)
from onnxforge.evaluate.evaluator import evaluate, generic_spec
from onnxforge.evaluate.synthetic import write_synthetic
from onnxforge.passes import Pipeline, parse_pipeline
from tests.evaluate.test_report import FAST, C, H, W, ScrambleLogits, fake_candidates, fake_clock, tiny_segmenter

CACHE_LOG = "onnxforge.evaluate.cache"


def _eval(cache, model=None, **kw):
    kw.setdefault("limit", 3)
    return evaluate(model or tiny_segmenter(), kw.pop("dataset", "synthetic"), kw.pop("data_root", None), cache=cache,
                    per_image=kw.pop("per_image", True), **kw)


def _same(a, b):
    assert a.metrics == b.metrics and a.agreement == b.agreement and a.per_class_iou == b.per_class_iou
    assert list(a.metrics) == list(b.metrics) and list(a.agreement or ()) == list(b.agreement or ())  # order too
    assert a.images == b.images and a.dataset_classes == b.dataset_classes and a.model_classes == b.model_classes
    if a.per_image is not None or b.per_image is not None:
        assert a.per_image.names == b.per_image.names and a.per_image.kind == b.per_image.kind
        np.testing.assert_array_equal(a.per_image.values, b.per_image.values)
        assert a.per_image.metrics_of([0, 0, 1]) == b.per_image.metrics_of([0, 0, 1])


# ------------------------------------------------------------------------------------------- keys
def test_same_inputs_hit_and_give_the_same_result(tmp_path):
    cache = EvalCache(tmp_path / "c")
    model = tiny_segmenter()
    first = _eval(cache, model, reference=model)
    again = _eval(cache, model, reference=model)
    assert (cache.stats.lookups, cache.stats.hits, cache.stats.stores) == (2, 1, 1)
    _same(first, again)
    assert "reused from the evaluation cache" in again.notes[-1]
    assert again.inference_s == 0.0 and again.setup_s == 0.0  # timings are not cached by default
    assert cache.summary() == f"reused 1 of 2 evaluations from the cache ({tmp_path / 'c'})"
    # another process (a fresh cache object on the same directory) finds it too
    other = EvalCache(tmp_path / "c")
    _same(first, _eval(other, model, reference=model))
    assert other.stats.hits == 1


def test_latency_is_cached_only_when_asked(tmp_path):
    cache = EvalCache(tmp_path / "c")
    first = _eval(cache, cache_latency=True)
    again = _eval(cache, cache_latency=True)
    assert cache.stats.hits == 1 and again.inference_s == first.inference_s > 0
    assert again.total_s == first.total_s
    # stored without timings: a hit carries none even if asked
    _eval(cache, limit=2)
    assert _eval(cache, limit=2, cache_latency=True).inference_s == 0.0


def _changed_model():
    m = tiny_segmenter()
    w = next(t for t in m.graph.initializer if t.name == "b")
    w.float_data[:] = []
    arr = np.array([2.0, 0.0, 0.0, 1e-3], np.float32)
    w.raw_data = arr.tobytes()
    return m


@pytest.mark.parametrize("change", ["model byte", "limit", "backend option", "preprocessing", "metric", "version",
                                    "code", "reference", "synthetic seed"])
def test_any_key_ingredient_changed_misses(tmp_path, monkeypatch, change):
    cache = EvalCache(tmp_path / "c")
    spec = generic_spec("synthetic", C, (H, W))
    base = dict(preset=spec)
    _eval(cache, **base)
    assert _eval(cache, **base) is not None and cache.stats.hits == 1
    kw = dict(base)
    model = None
    if change == "model byte":
        model = _changed_model()
    elif change == "limit":
        kw["limit"] = 2
    elif change == "backend option":
        kw["backend"] = "onnxruntime{threads=1}"
    elif change == "preprocessing":
        kw["preset"] = replace(spec, mean=(0.5, 0.5, 0.5))
    elif change == "metric":
        kw["preset"] = replace(spec, metric="miou-segmentron")
    elif change == "version":
        monkeypatch.setattr(onnxforge, "__version__", onnxforge.__version__ + ".post1")
    elif change == "code":  # an edited checkout at the same version
        from onnxforge.evaluate import cache as cache_module

        monkeypatch.setattr(cache_module, "code_fingerprint", lambda: "edited")
    elif change == "reference":
        kw["reference"] = _changed_model()
    elif change == "synthetic seed":
        kw["synthetic_seed"] = 12345
    _eval(cache, model, **kw)
    assert cache.stats.hits == 1 and cache.stats.lookups == 3, change


def test_dataset_files_are_part_of_the_key(tmp_path):
    root = tmp_path / "synth"
    write_synthetic(root, n=3, size=(H, W), classes=C)
    cache = EvalCache(tmp_path / "c")
    _eval(cache, dataset="synthetic", data_root=root)
    same = EvalCache(tmp_path / "c")
    _eval(same, dataset="synthetic", data_root=root)
    assert same.stats.hits == 1  # unchanged: a hit
    image = sorted((root / "JPEGImages").iterdir())[0]
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # mtime changed
    mtime = EvalCache(tmp_path / "c")
    _eval(mtime, dataset="synthetic", data_root=root)
    assert (mtime.stats.lookups, mtime.stats.hits) == (1, 0)
    with open(image, "ab") as f:  # size changed
        f.write(b"\0")
    size = EvalCache(tmp_path / "c")
    before = files_fingerprint(root)
    _eval(size, dataset="synthetic", data_root=root)
    assert size.stats.hits == 0 and files_fingerprint(root) == before
    (root / "extra.txt").write_text("x")  # a file added
    assert files_fingerprint(root) != before


def test_dataset_fingerprint_and_key_ingredients():
    fp = dataset_fingerprint("synthetic", None, limit=3, synthetic={"seed": 1, "size": (8, 8), "count": 3})
    assert fp == dataset_fingerprint("synthetic", None, limit=3, synthetic={"count": 3, "size": (8, 8), "seed": 1})
    assert fp != dataset_fingerprint("synthetic", None, limit=4, synthetic={"seed": 1, "size": (8, 8), "count": 3})
    assert fp != dataset_fingerprint("synthetic", None, limit=3, synthetic={"seed": 2, "size": (8, 8), "count": 3})
    assert fp != dataset_fingerprint("synthetic", None, limit=3, synthetic={"seed": 1, "size": (8, 9), "count": 3})
    assert fp != dataset_fingerprint("synthetic", None, limit=3, preprocessing={"policy": "full"},
                                     synthetic={"seed": 1, "size": (8, 8), "count": 3})
    from onnxforge.evaluate.cache import code_fingerprint

    assert len(code_fingerprint()) == 64 and code_fingerprint() == code_fingerprint()
    key = evaluation_key("a" * 64, fp, "onnxruntime", "miou-mmseg", "1.0")
    assert len(key) == 64 and key == evaluation_key("a" * 64, fp, "onnxruntime", "miou-mmseg", "1.0")
    others = [evaluation_key("b" * 64, fp, "onnxruntime", "miou-mmseg", "1.0"),
              evaluation_key("a" * 64, fp, "onnxruntime{threads=2}", "miou-mmseg", "1.0"),
              evaluation_key("a" * 64, fp, "onnxruntime", "topk", "1.0"),
              evaluation_key("a" * 64, fp, "onnxruntime", "miou-mmseg", "1.1"),
              evaluation_key("a" * 64, fp, "onnxruntime", "miou-mmseg", "1.0", reference_sha256="c" * 64),
              evaluation_key("a" * 64, fp, "onnxruntime", "miou-mmseg", "1.0", extra={"per_image": True})]
    assert len({key, *others}) == 7


# ------------------------------------------------------------------------------------ bad entries
def _entry_files(directory):
    return sorted(directory.glob("??/*.json")), sorted(directory.glob("??/*.npz"))


@pytest.mark.parametrize("what", ["json value", "json syntax", "npz", "npz missing"])
def test_corrupted_entry_is_detected_ignored_and_rewritten(tmp_path, caplog, what):
    d = tmp_path / "c"
    first = _eval(EvalCache(d))
    (meta,), (npz,) = _entry_files(d)
    if what == "json value":
        data = json.loads(meta.read_text())
        data["value"]["metrics"]["mIoU"] = 0.999  # a plausible but wrong number: the checksum catches it
        meta.write_text(json.dumps(data))
    elif what == "json syntax":
        meta.write_text(meta.read_text()[:-10])
    elif what == "npz":
        raw = bytearray(npz.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        npz.write_bytes(bytes(raw))
    else:
        npz.unlink()
    cache = EvalCache(d)
    with caplog.at_level(logging.WARNING, logger=CACHE_LOG):
        again = _eval(cache)
    _same(first, again)  # evaluated again: the right numbers
    assert cache.stats.hits == 0 and cache.stats.corrupted == 1 and cache.stats.stores == 1
    warned = [r for r in caplog.records if "corrupted" in r.getMessage()]
    assert len(warned) == 1 and "rewritten" in warned[0].getMessage()
    third = EvalCache(d)  # rewritten: a clean hit now
    _same(first, _eval(third))
    assert third.stats.hits == 1 and third.stats.corrupted == 0


def test_unwritable_directory_warns_once_and_runs_uncached(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cache = EvalCache(blocker / "cache")
    with caplog.at_level(logging.WARNING, logger=CACHE_LOG):
        results = [_eval(cache) for _ in range(3)]
    warned = [r for r in caplog.records if "not writable" in r.getMessage()]
    assert len(warned) == 1 and "running uncached" in warned[0].getMessage()
    assert cache.stats.hits == 0 and cache.stats.stores == 0 and not cache.usable
    uncached = _eval(None)
    for r in results:
        _same(uncached, r)
    assert "not writable" in cache.summary()


def test_cache_env_and_xdg_default(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env" and EvalCache().directory == tmp_path / "env"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "onnxforge" / "eval"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "onnxforge" / "eval"
    assert DEFAULT_MAX_BYTES == 2 * 1024 ** 3


def test_the_suite_never_writes_to_the_real_cache(monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    used = EvalCache().directory
    assert os.environ.get(CACHE_ENV) and used == Path(os.environ[CACHE_ENV])
    assert Path.home() / ".cache" not in [used, *used.parents]


@pytest.mark.parametrize("text,value", [("2G", 2 * 1024 ** 3), ("500M", 500 * 1024 ** 2), ("1.5GiB", 3 * 1024 ** 3 // 2),
                                        ("64k", 64 * 1024), ("1048576", 1048576), ("0", 0), ("10MB", 10 * 1024 ** 2)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "G", "2X", "-1G", "two", "iB"])
def test_parse_size_refuses(text):
    with pytest.raises(ForgeError, match="--cache-size"):
        parse_size(text)


# -------------------------------------------------------------------------------------- eviction
def test_eviction_keeps_the_most_recently_used_under_the_limit(tmp_path):
    now = [1000.0]
    cache = EvalCache(tmp_path / "c", clock=lambda: now[0])
    keys = [evaluation_key(f"{i:064x}", "data", "onnxruntime", "m") for i in range(4)]
    blob = np.zeros(2000, np.uint8)
    for k in keys:
        now[0] += 10
        assert cache.put(k, {"k": k}, {"blob": blob})
    one = cache.size_bytes() // 4
    now[0] += 10
    assert cache.get(keys[0]) is not None  # used: now the most recent
    cache.max_bytes = 2 * one + one // 2  # room for two entries
    assert cache.evict() == 2
    assert cache.get(keys[0]) is not None and cache.get(keys[3]) is not None
    assert cache.get(keys[1]) is None and cache.get(keys[2]) is None
    assert cache.size_bytes() <= cache.max_bytes and cache.stats.evicted == 2
    # storing over the limit evicts the least recently used at once
    now[0] += 10
    cache.get(keys[3])
    now[0] += 10
    cache.put(keys[1], {"k": keys[1]}, {"blob": blob})
    assert cache.get(keys[0]) is None and cache.get(keys[3]) is not None and cache.get(keys[1]) is not None
    # a temporary file a killed writer left goes after an hour, not before
    left = tmp_path / "c" / keys[3][:2] / ".tmp-x.json"
    left.write_text("{")
    os.utime(left, (now[0] - 60, now[0] - 60))
    cache.evict()
    assert left.exists()
    now[0] += 3600
    cache.evict()
    assert not left.exists()


def test_concurrent_writers_of_one_key_write_the_same_bytes(tmp_path):
    a, b = EvalCache(tmp_path / "c"), EvalCache(tmp_path / "c")
    key = evaluation_key("f" * 64, "data", "onnxruntime", "m")
    arrays = {"values": np.arange(12).reshape(3, 4)}
    a.put(key, {"x": 1}, arrays)
    first = [p.read_bytes() for p in sorted((tmp_path / "c").rglob("*.*"))]
    b.put(key, {"x": 1}, arrays)
    assert [p.read_bytes() for p in sorted((tmp_path / "c").rglob("*.*"))] == first
    assert not list((tmp_path / "c").rglob(".tmp-*"))
    got = a.get(key)
    assert got.value == {"x": 1}
    np.testing.assert_array_equal(got.arrays["values"], arrays["values"])


# --------------------------------------------------------------------------------------- reports
def _decisions(stages):
    return [(s.name, s.accuracy, s.agreement, s.accuracy_verdict, s.verdict, s.reason, s.speed.get("verdict"))
            for s in stages]


FAKE = dict(timing=FAST)


def _pipe():
    return Pipeline((parse_pipeline("simplify").passes[0], ScrambleLogits(), parse_pipeline("resize-nearest").passes[0]))


@pytest.mark.parametrize("mode", [{}, {"isolated": True}, {"per_node": "resize-nearest"}])
def test_cached_decisions_equal_uncached_ones(tmp_path, mode):
    data = DataSource("synthetic", None, None, 3)
    run = lambda cache: decide_pipeline(tiny_segmenter(), _pipe(), data, budget=0.001, clock=fake_clock(),
                                        candidates_factory=fake_candidates(speed={"Neg": 0.5}), cache=cache, **mode, **FAKE)
    plain = run(None)
    cache = EvalCache(tmp_path / "c")
    cold = run(cache)
    cold_lookups = cache.stats.lookups
    assert cache.stats.hits == 0 and cold_lookups == cache.stats.stores >= 4
    warm = run(cache)
    assert cache.stats.hits == cold_lookups and cache.stats.lookups == 2 * cold_lookups
    assert _decisions(plain.stages) == _decisions(cold.stages) == _decisions(warm.stages)
    assert plain.kept_pipeline == cold.kept_pipeline == warm.kept_pipeline and plain.warnings == warm.warnings


class _InterruptAfter(EvalCache):
    """A cache that is interrupted (Ctrl-C) right after storing its `n`-th evaluation."""

    def __init__(self, directory, n):
        super().__init__(directory)
        self.n = n

    def put(self, key, value, arrays=None):
        stored = super().put(key, value, arrays)
        if self.stats.stores == self.n:
            raise KeyboardInterrupt
        return stored


def test_an_interrupted_report_resumes_from_the_cache(tmp_path):
    data = DataSource("synthetic", None, None, 3)
    kw = dict(budget=0.001, candidates_factory=fake_candidates(speed={"Neg": 0.5}), **FAKE)
    out = tmp_path / "report"
    with pytest.raises(KeyboardInterrupt):  # after the baseline and stages 1 and 2
        run_report(_saved(tmp_path), _pipe(), out, data, clock=fake_clock(),
                   cache=_InterruptAfter(tmp_path / "c", 3), **kw)
    assert not out.exists()  # all or nothing
    cache = EvalCache(tmp_path / "c")
    resumed = run_report(_saved(tmp_path), _pipe(), out, data, clock=fake_clock(), cache=cache, **kw)
    assert cache.stats.hits == 3  # baseline, 1-simplify, 2-scramble-logits were not evaluated again
    assert cache.stats.stores == cache.stats.lookups - 3 >= 1  # only the missing ones ran
    plain = run_report(_saved(tmp_path), _pipe(), tmp_path / "plain", data, clock=fake_clock(), **kw)
    assert _decisions(resumed.stages) == _decisions(plain.stages)
    assert resumed.report["kept_pipeline"] == plain.report["kept_pipeline"]
    assert json.loads((out / "report.json").read_text())["stages"][1]["accuracy"] == plain.stages[1].accuracy


def _saved(tmp_path):
    from onnxforge.modelio import save_model

    path = tmp_path / "m.onnx"
    if not path.exists():
        save_model(tiny_segmenter(), path)
    return path


def test_timing_runs_are_reused_only_with_cache_latency(tmp_path):
    data = DataSource("synthetic", None, None, 2)
    calls = []

    def factory(models):
        calls.append(sorted(models))
        return fake_candidates()(models)

    run = lambda cache, latency: decide_pipeline(tiny_segmenter(), "simplify", data, clock=fake_clock(), cache=cache,
                                                 cache_latency=latency, candidates_factory=factory, **FAKE)
    cache = EvalCache(tmp_path / "c")
    first = run(cache, True)
    n = len(calls)
    again = run(cache, True)
    assert len(calls) == n  # no timing ran: the samples came from the cache
    assert [s.latency_ms for s in again.stages] == [s.latency_ms for s in first.stages]
    run(cache, False)
    assert len(calls) == 2 * n  # by default timings are always measured


# ---------------------------------------------------------------------- the baseline runs once
def test_recorded_baseline_outputs_serve_as_the_reference(tmp_path):
    from onnxforge.evaluate.evaluator import RecordedOutputs

    base, stage = tiny_segmenter(), _changed_model()
    rec = RecordedOutputs(base)
    own = evaluate(base, "synthetic", None, limit=3, record=rec)
    assert rec.outputs and not rec.overflow and len(rec.outputs) == own.images
    served = evaluate(stage, "synthetic", None, limit=3, reference=rec, per_image=True)
    ran = evaluate(stage, "synthetic", None, limit=3, reference=base, per_image=True)
    _same(served, ran)
    np.testing.assert_array_equal(served.per_image.agreement, ran.per_image.agreement)
    assert served.reference_s == 0.0 < ran.reference_s  # the baseline did not run again
    # another plan (fewer images) is not served from the recording: the baseline runs, results equal
    other = evaluate(stage, "synthetic", None, limit=2, reference=rec)
    assert other.reference_s > 0 and other.agreement == evaluate(stage, "synthetic", None, limit=2, reference=base).agreement
    # over its memory bound the recording is dropped and the baseline runs as before
    small = RecordedOutputs(base, max_bytes=10)
    evaluate(base, "synthetic", None, limit=3, record=small)
    assert small.overflow and not small.outputs
    fallback = evaluate(stage, "synthetic", None, limit=3, reference=small)
    assert fallback.reference_s > 0 and fallback.agreement == ran.agreement
    # and the cache key does not depend on how the reference was produced
    cache = EvalCache(tmp_path / "c")
    evaluate(stage, "synthetic", None, limit=3, reference=rec, cache=cache)
    evaluate(stage, "synthetic", None, limit=3, reference=base, cache=cache)
    assert cache.stats.hits == 1


def test_a_report_runs_the_baseline_once(monkeypatch):
    from onnxforge.evaluate import evaluator
    from onnxforge.evaluate.history import model_sha256

    entered = []
    enter = evaluator.ModelRunner.__enter__

    def counting(self):
        entered.append(model_sha256(self.proto))
        return enter(self)

    monkeypatch.setattr(evaluator.ModelRunner, "__enter__", counting)
    model = tiny_segmenter()
    d = decide_pipeline(model, "simplify,resize-nearest,fp16-output", DataSource("synthetic", None, None, 2),
                        clock=fake_clock(), candidates_factory=fake_candidates(), **FAKE)
    assert entered.count(model_sha256(model)) == 1  # not once more per stage as the reference
    assert len(entered) >= 4 and all(s.agreement for s in d.stages[1:] if s.accuracy)


def test_a_reference_run_is_recorded_for_the_next_comparison():
    """When the baseline's own evaluation came from the cache (nothing recorded), the first stage runs it as
    the reference and records it; the next stage is served."""
    from onnxforge.evaluate.evaluator import RecordedOutputs

    base, stage = tiny_segmenter(), _changed_model()
    rec = RecordedOutputs(base)
    first = evaluate(stage, "synthetic", None, limit=3, reference=rec)
    second = evaluate(stage, "synthetic", None, limit=3, reference=rec)
    assert first.reference_s > 0 and second.reference_s == 0.0 and first.agreement == second.agreement


def test_a_pool_report_reads_and_writes_the_same_cache(tmp_path):
    from onnxforge.evaluate.executor import PoolExecutor

    model = tiny_segmenter()
    data = DataSource("synthetic", None, None, 3)
    serial_cache = EvalCache(tmp_path / "c")
    serial = decide_pipeline(model, "simplify,transdata-align", data, timing=FAST, clock=fake_clock(),
                             candidates_factory=fake_candidates(), cache=serial_cache)
    runs = []
    with PoolExecutor(2, threads=1, cores=2) as ex:
        for _ in range(2):
            cache = EvalCache(tmp_path / "c")
            runs.append((cache, decide_pipeline(model, "simplify,transdata-align", data, timing=FAST, clock=fake_clock(),
                                                candidates_factory=fake_candidates(), cache=cache, executor=ex)))
    (first, _), (second, pooled) = runs
    # the workers' sessions run 1 thread, part of the backend in the key: the first pool run stores its own
    # results (counted here, from the workers' notes), the second reuses every one of them
    assert first.stats.lookups == first.stats.stores >= 3 and first.stats.hits == 0
    assert second.stats.lookups == second.stats.hits == first.stats.lookups
    assert [(s.name, s.accuracy, s.agreement) for s in pooled.stages] == [(s.name, s.accuracy, s.agreement) for s in serial.stages]

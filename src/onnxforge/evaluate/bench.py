"""Latency and throughput per batch size on a backend, with seeded inputs.

`benchmark(model, batch_sizes)` returns one `BenchRecord` per batch size (p50/p90/p99/mean latency of
one run, throughput in images per second at the median latency, robust to a noisy machine); the report
reuses these records as they are.

Batch sizes: a model with a dynamic batch dimension is fed each batch size directly. A model with a
static batch B runs B as it is; every other size runs on a **copy whose batch dimension is fixed** to
that size (graph inputs and outputs re-declared, intermediate shapes dropped for re-inference); the
record says so (`fixed_batch=True`). A graph that hard-codes its batch elsewhere (e.g. a Reshape to
[1, -1]) cannot run at another size: that record carries the backend's error instead of timings.

Many devices (a backend with `split_devices`, e.g. ``ais_bench{devices=0|1}``): every device runs the
compiled model at once, `iters` timed runs after `warmup` (``ais_bench --loop/--warmup_count``); the
latencies are all devices' compute times together, and the throughput is the sum of the devices'
throughputs as ais_bench's summaries report them (``devices`` on the record says which ran).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from onnxforge.backends import Backend, parse_backend
from onnxforge.backends.base import load_model_arg, model_inputs
from onnxforge.errors import BackendUnavailable, EvaluationError, ForgeError
from onnxforge.numerics import DEFAULT_SEED, seeded_inputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchRecord:
    """Timings of one batch size. Latencies are per run (one batch), in milliseconds."""

    batch_size: int
    backend: str  # the backend's name
    iters: int
    warmup: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    min_ms: float | None
    throughput: float | None  # images per second at the median (p50) latency
    fixed_batch: bool = False  # ran on a copy with the batch dim fixed to batch_size
    threads: int = 0  # the backend's `threads` option (0: its default, or it has none)
    error: str | None = None
    spec: str = ""  # the canonical backend spec it ran on, e.g. onnxruntime{threads=2}
    devices: tuple[int, ...] = ()  # the devices it ran on at once (throughput: their sum); () for one runner

    def to_dict(self) -> dict:
        return asdict(self)


def static_batch(model: onnx.ModelProto) -> int | None:
    """The static leading dim shared by the image inputs, or None when it is dynamic."""
    dims = {i.shape[0] for i in model_inputs(model) if i.shape}
    if len(dims) == 1:
        (d,) = dims
        if isinstance(d, int) and d > 0:
            return d
    return None


def with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy of `model` whose graph inputs and outputs have leading dim `batch` (value_info cleared)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inits = {t.name for t in copy.graph.initializer}
    for vi in list(copy.graph.input) + list(copy.graph.output):
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = batch
    del copy.graph.value_info[:]
    return copy


def _percentiles(times_s: list[float]) -> tuple[float, float, float, float, float]:
    ms = np.asarray(times_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return float(p50), float(p90), float(p99), float(ms.mean()), float(ms.min())


def benchmark(
    model: str | Path | onnx.ModelProto,
    batch_sizes: Sequence[int] = (1,),
    backend: str | Backend = "onnxruntime",
    threads: int = 0,
    warmup: int = 5,
    iters: int = 20,
    seed: int = DEFAULT_SEED,
    progress: Callable[[int, int], None] | None = None,
    backend_options: dict | None = None,
) -> list[BenchRecord]:
    """Times `model` at each batch size on `backend`; see the module docstring for static batches.

    Args:
        backend: a backend spec (``onnxruntime{threads=2}``) or a configured Backend.
        threads: shorthand for the backend's `threads` option (0: not given).
        backend_options: more option values, filling what the spec leaves at its defaults.

    Raises:
        EvaluationError: bad arguments (no batch sizes, iters < 1).
        BackendError: a bad spec, an option the backend lacks, or one given twice with different values.
        BackendUnavailable: the backend cannot run here.
    """
    if not batch_sizes or any(int(b) <= 0 for b in batch_sizes):
        raise EvaluationError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if iters < 1 or warmup < 0:
        raise EvaluationError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    proto = load_model_arg(model)
    be = _configured(backend, threads, backend_options)
    be.check_available()
    ran_threads = getattr(be.options, "threads", 0)
    devices = be.split_devices()
    fixed = static_batch(proto)
    total = len(batch_sizes) * (warmup + iters)
    done = 0
    records = []
    with tempfile.TemporaryDirectory(prefix="onnxforge-bench-") as tmp:
        for b in batch_sizes:
            b = int(b)
            is_fixed_copy = fixed is not None and b != fixed
            m = with_batch(proto, b) if is_fixed_copy else proto
            throughput = None
            try:
                artifact = be.compile(m, be.artifact_path(tmp, f"b{b}"))
                times = []
                if devices:
                    run = be.run_split(artifact, Path(tmp) / f"ais_bench_b{b}", None, loop=iters, warmup=warmup)
                    times = [t / 1000.0 for r in run.runs for t in r.compute_ms]
                    throughput = run.throughput
                    done += warmup + iters
                    if progress is not None:
                        progress(done, total)
                else:
                    feeds = seeded_inputs(m, seed=seed, overrides={"batch": b})
                    with be.runner(artifact) as runner:
                        for i in range(warmup + iters):
                            runner.infer(feeds)
                            if i >= warmup:
                                times.append(runner.last_inference_s)
                            done += 1
                            if progress is not None:
                                progress(done, total)
            except ForgeError as exc:
                if not is_fixed_copy or isinstance(exc, BackendUnavailable):
                    raise
                reason = f"cannot run with the batch fixed to {b}: {exc} (re-export with --batch-size {b})"
                log.warning("%s", reason)
                records.append(BenchRecord(b, be.name, iters, warmup, None, None, None, None, None, None, True, ran_threads,
                                           reason, str(be)))
                done += warmup + iters
                if progress is not None:
                    progress(min(done, total), total)
                continue
            if not times:
                raise EvaluationError(f"{be}: batch {b}: the devices reported no compute times")
            p50, p90, p99, mean, mn = _percentiles(times)
            if throughput is None:
                throughput = b / (p50 / 1000.0) if p50 > 0 else None
            records.append(BenchRecord(b, be.name, iters, warmup, p50, p90, p99, mean, mn, throughput, is_fixed_copy,
                                       ran_threads, None, str(be), devices))
    return records


def round_robin(
    models: Sequence[onnx.ModelProto],
    batch: int | None = None,
    backend: str | Backend = "onnxruntime",
    threads: int = 0,
    warmup: int = 3,
    iters: int = 20,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[float]]:
    """Latencies (ms per run) of several models timed in turn: one run of each per round, the order
    alternating, so machine noise hits all of them alike. Ratios between them are what to trust.

    The backend (a spec or a Backend; `threads` is a shorthand for its `threads` option) runs as
    `Backend.interleaved()` configures it: onnxruntime sessions are made without spin-waiting, since a
    session whose idle threads spin would steal the cores from the next one's run (identical graphs
    measured up to 12% apart with spinning on). A model whose batch is fixed to another size is timed
    on a copy with the batch fixed to `batch`; `batch=None` times each model at its own batch (1 where it
    is dynamic). Backends that compile to files write them in a temporary directory.
    """
    import contextlib

    be = _configured(backend, threads, None).interleaved()
    be.check_available()
    total, done = (warmup + iters) * len(models), 0
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="onnxforge-rr-"))
        runs = []
        for k, model in enumerate(models):
            b = batch or static_batch(model) or 1
            m = model if static_batch(model) in (None, b) else with_batch(model, b)
            runner = stack.enter_context(be.runner(be.compile(m, be.artifact_path(tmp, f"m{k}_b{b}"))))
            runs.append((runner, seeded_inputs(m, overrides={"batch": b}), []))
        for i in range(warmup + iters):
            for runner, feeds, times in runs if i % 2 == 0 else reversed(runs):
                runner.infer(feeds)
                if i >= warmup:
                    times.append(runner.last_inference_s * 1000.0)
                done += 1
            if progress is not None:
                progress(done, total)
    return [times for _, _, times in runs]


def _configured(backend: str | Backend, threads: int, options: dict | None) -> Backend:
    """The backend a spec names, with `threads` (0: not given) and `options` filling its defaults."""
    return parse_backend(backend, {**(options or {}), "threads": threads or None})

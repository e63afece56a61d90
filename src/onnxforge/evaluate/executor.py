"""Executors: independent work units run serially, on a pool of local processes, or on a Ray cluster.

Contract of every executor (`Executor`):
- ``map(fn, units, progress=None)`` returns ``[fn(u) for u in units]``, **in input order**, whatever order
  the units finish in; ``progress(done, total)`` is called as units finish. `fn` is a module-level function
  (pickled by reference) and units and results are picklable values.
- A unit is a pure description (model bytes with their sha256, a data description, a backend spec, a thread
  budget), never a handle to state in the parent: the same unit gives the same result anywhere, so a cache
  can sit in front of `map` and a worker keeps nothing between units that changes a result.
- An exception raised by `fn` is raised by `map` (the first one in input order); remaining units are
  cancelled where the executor can.
- Executors are context managers: workers start on first use and stop on `close()` / leaving the ``with``.
- Only evaluations go through an executor. Timing runs stay serial and interleaved in the parent process
  (`evaluate.timing`), never concurrent with evaluations or with each other: an executor is idle (all its
  `map` calls returned) whenever something is timed.

Executors register by name (`register_executor`; ``serial``, ``pool``, ``ray``) and `make_executor` builds
one from the CLI's ``--executor``, ``--workers``, ``--ray-address``.

Thread budget: `threads` is the intra-op thread count each worker's session gets (`EvalUnit.threads`).
`PoolExecutor` defaults it to ``cores // workers`` and refuses ``workers x threads > cores``.

Devices (the hook for ais_bench / several NPUs or GPUs): ``devices=[0, 1, 2]`` gives each worker of a pool
one device (worker *i* gets ``devices[i]``, so ``workers`` must equal ``len(devices)``); inside a worker
`worker_device()` returns it and `run_eval_unit` sets the backend's device option from it (`DEVICE_OPTIONS`:
the ascend backends' ``device_id``). onnxruntime's CUDA provider has no device option yet: add its name to
`DEVICE_OPTIONS` when the backend grows one.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import multiprocessing
import os
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence, TypeVar, runtime_checkable

import onnx

from onnxforge.errors import BackendUnavailable, ForgeError

log = logging.getLogger(__name__)

U = TypeVar("U")
R = TypeVar("R")
Progress = Callable[[int, int], None]

#: backend name -> the option that selects the device a worker runs on
DEVICE_OPTIONS: dict[str, str] = {"ais_bench": "device_id", "atc": "device_id"}
#: where the pool's start method comes from: torch and onnxruntime do not survive fork after their threads start
START_METHOD = "spawn"

_WORKER_DEVICE: int | None = None  # set in each pool worker by `_init_worker`


def worker_device() -> int | None:
    """The device this worker process was given (`devices`), None outside a device-mapped pool."""
    return _WORKER_DEVICE


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------- executors
@runtime_checkable
class Executor(Protocol):
    """Runs `fn` over units; see the module docstring for the contract."""

    name: str
    workers: int
    threads: int  # intra-op threads per worker's session (0: the backend's own default)

    def map(self, fn: Callable[[U], R], units: Sequence[U], progress: Progress | None = None) -> list[R]: ...

    def close(self) -> None: ...

    def describe(self) -> str: ...


_EXECUTORS: dict[str, type] = {}


def register_executor(cls: type) -> type:
    """Class decorator: makes `cls` buildable as ``--executor cls.name``."""
    if cls.name in _EXECUTORS and _EXECUTORS[cls.name] is not cls:
        raise ValueError(f"executor {cls.name!r} registered twice")
    _EXECUTORS[cls.name] = cls
    return cls


def executor_names() -> tuple[str, ...]:
    return tuple(_EXECUTORS)


class _Base:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    workers = 1
    threads = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.name


@register_executor
class SerialExecutor(_Base):
    """Every unit in this process, one after the other (the default; what a test compares against)."""

    name = "serial"
    summary = "in this process, one unit after the other (default)"
    in_process = True  # callers may run units themselves here (with per-image progress)

    def __init__(self, workers: int = 1, threads: int = 0, **_: Any) -> None:
        self.workers, self.threads = 1, threads or 0

    def map(self, fn: Callable[[U], R], units: Sequence[U], progress: Progress | None = None) -> list[R]:
        out = []
        for i, u in enumerate(units, 1):
            out.append(fn(u))
            if progress is not None:
                progress(i, len(units))
        return out


def _init_worker(devices) -> None:
    global _WORKER_DEVICE
    if devices is not None:  # each worker takes one device from the queue, once, when it starts
        _WORKER_DEVICE = devices.get()


def _check_budget(workers: int, threads: int | None, cores: int, devices: Sequence[int] | None) -> int:
    """The threads per worker (default cores // workers); ForgeError for a budget the machine cannot give."""
    if workers < 1:
        raise ForgeError(f"--workers: expected at least 1, got {workers}")
    if devices is not None and len(devices) != workers:
        raise ForgeError(f"devices: {len(devices)} devices for {workers} workers; give one device per worker")
    if devices is not None:
        return threads or 1  # the device does the work; one host thread per worker feeds it
    if workers > cores:
        raise ForgeError(f"--workers {workers}: this machine has {cores} cores; use at most --workers {cores}")
    if threads is None or threads == 0:
        return max(cores // workers, 1)
    if threads < 0:
        raise ForgeError(f"--threads: expected a non-negative count, got {threads}")
    if workers * threads > cores:
        raise ForgeError(f"--workers {workers} x --threads {threads} = {workers * threads} threads on {cores} cores; "
                         f"use --threads {max(cores // workers, 1)} or fewer workers")
    return threads


@register_executor
class PoolExecutor(_Base):
    """A pool of `workers` local processes (spawned, not forked), each with `threads` intra-op threads.

    Raises:
        ForgeError: ``workers < 1``, more workers than cores, ``workers x threads > cores``, or a `devices`
            list whose length is not `workers`.
    """

    name = "pool"
    summary = "a pool of local worker processes (--workers N), threads split so workers x threads <= cores"

    def __init__(self, workers: int = 2, threads: int | None = None, devices: Sequence[int] | None = None,
                 cores: int | None = None, **_: Any) -> None:
        self.cores = cores or cpu_cores()
        self.threads = _check_budget(workers, threads, self.cores, devices)
        self.workers = workers
        self.devices = list(devices) if devices is not None else None
        self._pool: cf.ProcessPoolExecutor | None = None

    def _ensure(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            ctx = multiprocessing.get_context(START_METHOD)
            queue = None
            if self.devices is not None:
                queue = ctx.Queue()
                for d in self.devices:
                    queue.put(d)
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                                initargs=(queue,))
        return self._pool

    def map(self, fn: Callable[[U], R], units: Sequence[U], progress: Progress | None = None) -> list[R]:
        if not units:
            return []
        pool = self._ensure()
        futures = {pool.submit(fn, u): i for i, u in enumerate(units)}
        out: list[Any] = [None] * len(units)
        failed: BaseException | None = None
        try:
            for done, f in enumerate(cf.as_completed(futures), 1):
                failed = f.exception()
                if failed is not None:  # the first failure ends the map; the others are cancelled
                    for other in futures:
                        other.cancel()
                    break
                out[futures[f]] = f.result()
                if progress is not None:
                    progress(done, len(units))
        except BaseException:
            self.close()  # Ctrl-C: do not leave workers running
            raise
        if failed is not None:
            raise failed
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def describe(self) -> str:
        on = f", devices {','.join(map(str, self.devices))}" if self.devices else ""
        return f"pool of {self.workers} processes x {self.threads} threads{on}"


# ------------------------------------------------------------------------------------------------ ray
@runtime_checkable
class Shareable(Protocol):
    """A unit whose large parts (model bytes) go to workers by reference: `blobs()` names them by key, and
    `bind(blobs)` gives the unit back with them. `RayExecutor` puts each distinct blob in the object store
    once (``ray.put``) and sends every unit without them."""

    def blobs(self) -> dict[str, bytes]: ...

    def bind(self, blobs: dict[str, bytes]) -> Any: ...


def _ray_call(fn, unit, keys, *blobs):
    # ObjectRefs given as top-level task arguments arrive resolved: each worker reads them from the store
    if keys:
        unit = unit.bind(dict(zip(keys, blobs)))
    return fn(unit)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise BackendUnavailable("--executor ray needs the ray extra: pip install 'onnxforge[ray]'") from None
    return ray


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """ForgeError unless something listens at a ``host:port`` / ``ray://host:port`` address ("auto" and
    "local" are Ray's to resolve)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ForgeError(f"--ray-address {address}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ForgeError(f"--ray-address {address}: cannot reach a Ray cluster there ({reason})") from None


def _local_runtime_env() -> dict:
    """A local cluster's workers import onnxforge from where this process does (a source tree on sys.path
    included), whatever the working directory."""
    import onnxforge

    here = str(Path(onnxforge.__file__).resolve().parents[1])
    paths = [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != here]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}


@register_executor
class RayExecutor(_Base):
    """Units as Ray tasks on a cluster (`address`), or on a local one started here (`address` None).

    Model bytes are put in the object store once each and passed to tasks by reference (`Shareable`);
    data is a description (dataset root and shard range, or the synthetic seed), so a dataset on disk must be
    readable at the same path on every node, and onnxforge installed on every node of a cluster (a local
    cluster's workers import it from where this process does). Each task asks Ray for `threads` CPUs (its
    session's threads); how many run at once is the cluster's CPU count (a local cluster gets
    ``workers x threads``), and `workers` is also the shard count of a sharded evaluation.

    Raises:
        BackendUnavailable: ray is not installed.
        ForgeError: `address` cannot be reached, or Ray cannot start (one line).
    """

    name = "ray"
    summary = "Ray tasks on a cluster (--ray-address HOST:PORT) or a local one started here"

    def __init__(self, workers: int = 1, threads: int | None = None, address: str | None = None,
                 num_cpus: int | None = None, **_: Any) -> None:
        self.ray = _import_ray()
        if workers < 1:
            raise ForgeError(f"--workers: expected at least 1, got {workers}")
        self.workers, self.address = workers, address
        self.threads = threads or 1
        self._started = False
        if not self.ray.is_initialized():
            if address is not None:
                _check_reachable(address)
            try:
                if address is not None:
                    self.ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
                else:
                    self.ray.init(num_cpus=num_cpus or max(workers * self.threads, 1), include_dashboard=False,
                                  log_to_driver=False, logging_level=logging.WARNING, runtime_env=_local_runtime_env())
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
                raise ForgeError(f"ray: cannot start or join the cluster"
                                 f"{' at ' + address if address else ''}: {str(exc).splitlines()[0][:200]}") from None
            self._started = True
        self._remote = self.ray.remote(num_cpus=self.threads)(_ray_call)
        self._refs: dict[str, Any] = {}  # blob key -> ObjectRef, kept across `map` calls until `close`

    def map(self, fn: Callable[[U], R], units: Sequence[U], progress: Progress | None = None) -> list[R]:
        if not units:
            return []
        ray = self.ray
        refs = self._refs
        calls = []
        for u in units:
            if isinstance(u, Shareable):
                blobs = u.blobs()
                for k, data in blobs.items():
                    if k not in refs:
                        refs[k] = ray.put(data)
                keys = tuple(blobs)
                calls.append(self._remote.remote(fn, u.bind({}), keys, *[refs[k] for k in keys]))
            else:
                calls.append(self._remote.remote(fn, u, ()))
        index = {c: i for i, c in enumerate(calls)}
        out: list[Any] = [None] * len(calls)
        pending, done = list(calls), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done += len(ready)
            for r in ready:
                try:
                    out[index[r]] = ray.get(r)  # fetched once: the results carry per-image arrays
                except ray.exceptions.RayTaskError as exc:
                    for c in pending:
                        ray.cancel(c)
                    cause = getattr(exc, "cause", None)  # the unit's own exception (a ForgeError: one line)
                    raise (cause if isinstance(cause, BaseException) else exc) from None
            if progress is not None:
                progress(done, len(units))
        return out

    def close(self) -> None:
        self._refs.clear()
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False

    def describe(self) -> str:
        where = self.address or "a local cluster"
        return f"ray on {where} ({self.threads} CPU per task)"


def make_executor(name: str = "serial", workers: int = 1, threads: int | None = None, address: str | None = None,
                  devices: Sequence[int] | None = None) -> Executor:
    """The executor registered as `name`, with `workers` (``--workers``), `threads` per worker (``--threads``,
    0/None: its default), a Ray `address` and a `devices` list.

    ``--workers N`` with the default ``serial`` executor means a pool (``pool``); ``--workers 1`` without a
    name is serial.

    Raises:
        ForgeError: unknown name, ``workers < 1``, a thread budget over the cores, an address on a non-Ray
            executor, an unreachable Ray address.
    """
    if workers < 1:
        raise ForgeError(f"--workers: expected at least 1, got {workers}")
    if name not in _EXECUTORS:
        raise ForgeError(f"--executor: unknown executor {name!r}; known: {', '.join(_EXECUTORS)}")
    if address is not None and name != "ray":
        raise ForgeError(f"--ray-address needs --executor ray (got --executor {name})")
    if name == "serial" and workers > 1:
        name = "pool"
    return _EXECUTORS[name](workers=workers, threads=threads, address=address, devices=devices)


# --------------------------------------------------------------------------------------- eval units
@dataclass(frozen=True)
class ModelBlob:
    """A model as its serialized bytes and their sha256 (the cache key part); `data` None once unbound."""

    sha256: str
    data: bytes | None = field(default=None, repr=False)

    @classmethod
    def of(cls, model: onnx.ModelProto | bytes | str | Path) -> ModelBlob:
        if isinstance(model, onnx.ModelProto):
            data = model.SerializeToString()
        elif isinstance(model, bytes):
            data = model
        else:
            data = Path(model).read_bytes()
        return cls(hashlib.sha256(data).hexdigest(), data)

    def proto(self) -> onnx.ModelProto:
        if self.data is None:
            raise ForgeError(f"model {self.sha256[:12]}: bytes not bound (a Ray unit run without its blobs)")
        return onnx.load_from_string(self.data)


@dataclass(frozen=True)
class EvalUnit:
    """One accuracy evaluation as a pure description (see the module docstring).

    `shard` ``(start, stop)`` scores images start..stop-1 of the planned dataset only (the plan itself is made
    on the whole dataset, so its notes and checks are the unsharded run's). `threads` (0: as the spec says)
    fills the backend's threads option where the spec leaves it unset.
    """

    model: ModelBlob
    dataset: str
    data_root: str | None = None
    preset: str | None = None
    limit: int | None = None
    num_classes: int | None = None
    backend: str = "onnxruntime"
    threads: int = 0
    reference: ModelBlob | None = None
    shard: tuple[int, int] | None = None
    per_image: bool = False
    label: str | None = None
    batch_size: int | None = None
    #: an `EvalCache` the worker looks the result up in and stores it to (not part of the description)
    cache: Any = field(default=None, compare=False, repr=False)

    def key(self) -> dict[str, Any]:
        """The description that decides the result, for a result cache: every field, models by sha256, without
        `label` (it only names the model in errors). A cache adds the dataset's fingerprint (file list, sizes)
        and the onnxforge version; `threads` is kept although metrics do not depend on it (tests check that)."""
        return {"model": self.model.sha256, "reference": self.reference.sha256 if self.reference else None,
                "dataset": self.dataset, "data_root": self.data_root, "preset": self.preset, "limit": self.limit,
                "num_classes": self.num_classes, "backend": self.backend, "threads": self.threads,
                "shard": list(self.shard) if self.shard else None, "per_image": self.per_image,
                "batch_size": self.batch_size}

    def blobs(self) -> dict[str, bytes]:
        out = {}
        for b in (self.model, self.reference):
            if b is not None and b.data is not None:
                out[b.sha256] = b.data
        return out

    def bind(self, blobs: dict[str, bytes]) -> EvalUnit:
        def rebind(b: ModelBlob | None) -> ModelBlob | None:
            return None if b is None else ModelBlob(b.sha256, blobs.get(b.sha256))
        return replace(self, model=rebind(self.model), reference=rebind(self.reference))


def run_eval_unit(unit: EvalUnit):
    """Evaluates `unit` (the module-level function executors run); returns its `EvalResult`."""
    from onnxforge.evaluate.evaluator import evaluate

    backend = _unit_backend(unit.backend, unit.threads)
    return evaluate(unit.model.proto(), unit.dataset, unit.data_root, preset=unit.preset, backend=backend,
                    limit=unit.limit, reference=unit.reference.proto() if unit.reference is not None else None,
                    num_classes=unit.num_classes, per_image=unit.per_image, model_label=unit.label, shard=unit.shard, batch_size=unit.batch_size,
                    cache=unit.cache)


@dataclass(frozen=True)
class ScoreUnit:
    """One shard of a scoring on a plan made already (`evaluator.plan_evaluation`, pickled with its dataset
    description): what `bisect` runs, where every candidate is checked against the baseline's plan."""

    plan: Any
    model: ModelBlob
    backend: str = "onnxruntime"
    threads: int = 0
    reference: ModelBlob | None = None
    shard: tuple[int, int] | None = None
    label: str = "candidate"

    blobs = EvalUnit.blobs
    bind = EvalUnit.bind


def run_score_unit(unit: ScoreUnit):
    """Scores `unit` (its shard of the plan's dataset); returns the shard's `EvalResult`."""
    from onnxforge.evaluate.evaluator import ModelRunner, score

    backend = _unit_backend(unit.backend, unit.threads)
    plan = unit.plan if unit.shard is None else replace(unit.plan, dataset=unit.plan.dataset.shard(*unit.shard))
    with ModelRunner(unit.model.proto(), backend, label=unit.label) as run:
        if unit.reference is None:
            return score(plan, run)
        with ModelRunner(unit.reference.proto(), backend, label="baseline") as ref:
            return score(plan, run, reference=ref)


def score_sharded(plan: Any, model: onnx.ModelProto, executor: Executor, backend: str = "onnxruntime",
                  reference: onnx.ModelProto | None = None, label: str = "candidate"):
    """`evaluator.score` of `model` on `plan`, its dataset split into one contiguous shard per worker and
    merged (`merge_results`): every metric equals the unsharded score's."""
    from onnxforge.evaluate.evaluator import merge_results

    bounds = shard_bounds(len(plan.dataset), executor.workers)
    blob, ref = ModelBlob.of(model), ModelBlob.of(reference) if reference is not None else None
    units = [ScoreUnit(plan, blob, str(backend), executor.threads, ref, b if len(bounds) > 1 else None, label)
             for b in bounds]
    return merge_results(executor.map(run_score_unit, units))


def _unit_backend(spec: str, threads: int):
    """The backend of a unit's spec, `threads` filling its threads option where the spec leaves it unset and this
    worker's device (`worker_device`) its device option."""
    from onnxforge.backends import parse_backend

    backend = parse_backend(spec)
    if threads and hasattr(backend.options, "threads") and "threads" not in backend.non_default_options():
        backend = backend.with_options(threads=threads)
    dev = worker_device()
    opt = DEVICE_OPTIONS.get(backend.name)
    if dev is not None and opt is not None:
        backend = backend.with_options(**{opt: dev})
    return backend


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """`shards` contiguous ranges covering 0..n-1, sizes differing by at most one (no empty range)."""
    shards = max(1, min(shards, n))
    base, extra = divmod(n, shards)
    out, start = [], 0
    for i in range(shards):
        stop = start + base + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def evaluate_sharded(
    model: str | Path | onnx.ModelProto,
    dataset: str,
    data_root: str | Path | None,
    executor: Executor,
    preset: str | None = None,
    backend: str | Any = "onnxruntime",
    limit: int | None = None,
    reference: str | Path | onnx.ModelProto | None = None,
    num_classes: int | None = None,
    shards: int | None = None,
    per_image: bool = False,
    model_label: str | None = None,
    progress: Progress | None = None,
    batch_size: int | None = None,
    cache: Any = None,
):
    """`evaluator.evaluate` with the image list split into `shards` contiguous shards (default: one per
    worker) scored on `executor` and merged (`evaluator.merge_results`: summed confusion statistics, counts,
    per-image contributions in order). Every metric equals the unsharded evaluation's.

    The evaluation is planned here first (dataset layout, preset, model I/O), so a user error fails before
    any worker starts. With an `EvalCache` (`cache`) the merged result is looked up and stored under the
    same key as the unsharded evaluation's (the results are equal), so serial and sharded runs share it.

    Raises:
        The errors of `evaluator.evaluate`.
    """
    from onnxforge.backends import parse_backend
    from onnxforge.evaluate.evaluator import cache_key, cached_result, merge_results, plan_evaluation, store_result
    from onnxforge.evaluate.history import model_sha256
    from onnxforge.modelio import load_model

    t0 = time.perf_counter()
    be = parse_backend(backend)
    label = model_label or (str(model) if not isinstance(model, onnx.ModelProto) else None)
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    plan = plan_evaluation(proto, dataset, data_root, preset, limit=limit, num_classes=num_classes, label=label,
                           batch_size=batch_size)
    n = len(plan.dataset)
    bounds = shard_bounds(n, shards or executor.workers)
    ref_proto = (reference if isinstance(reference, onnx.ModelProto) else load_model(reference)) if reference is not None else None
    ref = ModelBlob.of(ref_proto) if ref_proto is not None else None
    blob = ModelBlob.of(proto)
    key = None
    if cache is not None:
        key = cache_key(cache, plan, data_root, model_sha256(proto), str(be),
                        model_sha256(ref_proto) if ref_proto is not None else None, {"per_image": per_image})
        hit = cached_result(cache, key, plan)
        if hit is not None:
            return replace(hit, model=plan.label, total_s=time.perf_counter() - t0)
    units = [EvalUnit(model=blob, dataset=dataset, data_root=None if data_root is None else str(data_root), preset=preset,
                      limit=limit, num_classes=num_classes, backend=str(be), threads=executor.threads, reference=ref,
                      shard=b, per_image=per_image, label=plan.label, batch_size=batch_size) for b in bounds]
    parts = executor.map(run_eval_unit, units, progress)
    note = (f"scored in {len(bounds)} shards of {bounds[0][1] - bounds[0][0]}"
            f"{'' if len({b - a for a, b in bounds}) == 1 else '-' + str(bounds[-1][1] - bounds[-1][0])} images "
            f"on {executor.describe()}") if len(bounds) > 1 else None
    result = replace(merge_results(parts, note), total_s=time.perf_counter() - t0)
    if cache is not None:
        store_result(cache, key, result)
    return result

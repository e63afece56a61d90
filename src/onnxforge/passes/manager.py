"""The pass manager: runs a pipeline on one model representation, with instruments around each pass.

Contract:
- Passes run in order on one `ModelState` (an onnx-graphsurgeon graph). After every pass the manager
  removes dead nodes and sorts the graph, then calls the instruments.
- Verification (on by default) is an instrument: `onnx.checker` with strict shape inference after every
  pass, and for exact passes onnxruntime outputs against the previous stage on seeded inputs.
- A failure raises PassError naming the pass, its position and what ran before it; a `DumpStages`
  instrument leaves the failing pass's input model and the command that reproduces the failure.
  A pass that raises anything but a ForgeError has a bug: PassCrash ("internal error ..., please
  report"), distinct from a user error.
- Contract check: a pass that returns modified=False must leave the model unchanged (a structural
  `fingerprint`, not weight bytes); otherwise PassCrash. The model then stays byte for byte as it was.
- The manager and the passes keep no state between runs: one manager can optimize many models.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxforge import __version__
from onnxforge.errors import ForgeError, InputSpecError, PassCrash, PassError, VerificationError
from onnxforge.modelio import save_model, write_text_atomic
from onnxforge.numerics import (
    DEFAULT_SEED,
    DEFAULT_SIZES,
    cast_feeds,
    compare_arrays,
    default_shape,
    fit_shape,
    format_dims,
    input_specs,
    make_session,
    parse_shape_spec,
    resolve_shapes,
    seeded_inputs,
)
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, Snapshot
from onnxforge.passes.pipeline import Pipeline, parse_pipeline

log = logging.getLogger(__name__)

PIPELINE_METADATA_KEY = "onnxforge.pipeline"

VerifyStatus = Literal["passed", "failed", "measured", "unchanged", "structural", "off"]


@dataclass
class OutputStat:
    """How one output of a stage compares with the previous stage's."""

    name: str
    max_abs: float | None = None  # float outputs: largest absolute deviation
    max_rel: float | None = None  # float outputs: largest deviation relative to |reference|
    label_agreement: float | None = None  # integer outputs: fraction of equal elements
    ok: bool = True  # within tolerance (exact passes); True when only measured

    def __str__(self) -> str:
        if self.label_agreement is not None:
            text = f"{self.name}: labels {self.label_agreement:.4%} equal"
        elif self.max_abs is None:
            text = f"{self.name}: shape changed"
        else:
            text = f"{self.name}: max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g}"
        return text + ("" if self.ok else " MISMATCH")


@dataclass
class Verification:
    """The verifier's verdict on one stage."""

    status: VerifyStatus = "off"
    detail: str = ""
    max_abs: float | None = None  # largest float deviation from the previous stage
    label_agreement: float | None = None  # for integer outputs: fraction of equal elements
    inputs: str = ""  # the concrete inputs the numeric check ran on, and where their shapes came from
    outputs: list[OutputStat] = field(default_factory=list)


@dataclass
class StageRecord:
    """One pass applied: what it did, to how many nodes, how long it took, and how it verified."""

    index: int
    name: str
    pipeline_item: str
    kind: str
    modified: bool
    stats: dict[str, Any]
    skipped: list[str]
    notes: list[str]
    nodes_before: int
    nodes_after: int
    seconds: float
    verification: Verification = field(default_factory=Verification)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PipelineResult:
    model: onnx.ModelProto
    pipeline: Pipeline
    stages: list[StageRecord]
    nodes_before: int
    nodes_after: int
    seconds: float


@dataclass
class RunContext:
    """What instruments see of the run in progress."""

    pipeline: Pipeline
    stages: list[StageRecord] = field(default_factory=list)

    def ran_before(self, index: int) -> str:
        done = [str(p) for p in self.pipeline.passes[: index - 1]]
        return ",".join(done) if done else "(nothing)"

    def remaining(self, index: int) -> str:
        return ",".join(str(p) for p in self.pipeline.passes[index - 1 :])


class Instrument:
    """Hooks around passes (timing, dumping, verification, accuracy measurement...)."""

    def run_start(self, ctx: RunContext, state: ModelState) -> None:
        pass

    def after_pass(self, ctx: RunContext, p: Pass, state: ModelState, record: StageRecord) -> None:
        pass

    def on_failure(self, ctx: RunContext, p: Pass, index: int, error: ForgeError) -> None:
        pass

    def run_end(self, ctx: RunContext, result: PipelineResult) -> None:
        pass


class Verifier(Instrument):
    """Checks every stage: checker + strict shape inference; numerics for exact passes; nothing from a
    backend-only pass's stage on (its graph is not standard ONNX: the record says so).

    Float outputs of an exact pass must satisfy |new - ref| <= atol*scale + rtol*|ref| with the
    per-dtype tolerances of `onnxforge.numerics.TOLERANCES` (or `atol`/`rtol` when given) and
    scale = max(1, max|ref|); integer outputs must be equal. Approximate passes are measured (max abs
    and max rel deviation, label agreement), not judged.

    The numeric check runs on concrete inputs, chosen in this order:
    1. `inputs`: the user's own arrays by input name (checked against the declared shapes and dtypes);
    2. `shapes`: concrete shapes by input name for dynamic inputs (`--verify-shape x:1x3x640x640`);
    3. the model's static-shape history: `static-shape{shape=...}` / `{batch=N}` in the pipeline being
       run or in the `onnxforge.pipeline` metadata of an optimized input;
    4. the documented default (`numerics.default_shape`): batch 1, channels 3 for a rank-4 input, and
       each other dynamic dim at the smallest of `numerics.DEFAULT_SIZES` the graph runs at.
    Bad user inputs (unknown input name, wrong rank, a size that contradicts a static dim, an array of
    the wrong kind) raise InputSpecError before any pass runs. Only when no shape runs in onnxruntime
    (or onnxruntime cannot load the graph, e.g. custom ops) does a stage get structural checks, and
    its record says why in plain words; every later stage retries the numeric check.
    """

    def __init__(
        self,
        seed: int = DEFAULT_SEED,
        threads: int = 0,
        *,
        shapes: Mapping[str, Sequence[int]] | None = None,
        inputs: Mapping[str, np.ndarray] | None = None,
        atol: float | None = None,
        rtol: float | None = None,
        sizes: Sequence[int] = DEFAULT_SIZES,
    ) -> None:
        for label, value in (("atol", atol), ("rtol", rtol)):
            if value is not None and not (value >= 0 and np.isfinite(value)):
                raise InputSpecError(f"--{label} must be a non-negative number, got {value}")
        self.seed = seed
        self.threads = threads
        self.shapes = {k: tuple(v) for k, v in (shapes or {}).items()}
        self.inputs = dict(inputs or {})
        self.atol, self.rtol = atol, rtol
        self.sizes = tuple(sorted(sizes))

    def run_start(self, ctx: RunContext, state: ModelState) -> None:
        self._backend_only = ""  # set by a backend-only stage: no later stage is standard ONNX
        self._prev_model = state.view()
        # user errors first, before any pass runs (and so before anything is written)
        given = resolve_shapes(self._prev_model, self.shapes)
        resolve_shapes(self._prev_model, {k: v.shape for k, v in self.inputs.items()}, "--verify-inputs")
        self._history = _history_shapes(self._prev_model, ctx.pipeline, state.get_metadata(PIPELINE_METADATA_KEY))
        self._given = given
        self._planned = False  # inputs and reference outputs: at the first stage that changes the model

    def _plan(self, model: onnx.ModelProto) -> None:
        """Chooses the concrete inputs and computes the reference outputs of `model` on them."""
        self._numeric, self._why_not, self._feeds, self._inputs_note = False, "", {}, ""
        specs = input_specs(model)
        try:
            sess = _Session(model, self.threads)
        except ForgeError as exc:  # custom ops onnxruntime cannot run, until a pass rewrites them
            self._why_not = f"numeric check off, structural checks only: onnxruntime cannot load the graph ({exc})"
            return
        fixed: dict[str, tuple[int, ...]] = {}
        sources: dict[str, str] = {}
        for spec in specs:
            for label, table in (("your input", {k: v.shape for k, v in self.inputs.items()}),
                                 ("--verify-shape", self._given), ("static-shape history", self._history)):
                if spec.name in table:
                    try:
                        fixed[spec.name] = fit_shape(spec, table[spec.name], label)
                    except InputSpecError:
                        continue  # a stale history entry; the user's own were checked in run_start
                    sources[spec.name] = label
                    break
        dynamic = [s for s in specs if s.name not in fixed and not s.is_static]
        sizes = self.sizes if dynamic else self.sizes[:1]
        tried, last_error = [], ""
        bound: dict[str, int] = {}  # one size per symbol: ONNX uses one name for one size
        for spec in specs:
            if spec.name in fixed:
                bound.update({d: n for d, n in zip(spec.shape, fixed[spec.name]) if isinstance(d, str)})
        for size in sizes:
            symbols = dict(bound)
            shapes = {}
            for spec in specs:
                shapes[spec.name] = fixed.get(spec.name) or default_shape(spec, size, symbols)
                symbols.update({d: n for d, n in zip(spec.shape, shapes[spec.name]) if isinstance(d, str)})
            feeds = seeded_inputs(model, self.seed, shapes=shapes)
            feeds.update({k: v for k, v in self.inputs.items() if k in feeds})
            tried.append(", ".join(f"{k}:{format_dims(v.shape)}" for k, v in feeds.items()))
            try:
                outputs = sess.run(feeds)
            except ForgeError as exc:
                last_error = str(exc)
                continue
            self._numeric, self._feeds, self._prev_outputs = True, feeds, outputs
            words = []
            dynamic_names = {s.name for s in dynamic}
            for k, v in feeds.items():
                how = sources.get(k) or (f"default: smallest of {'/'.join(map(str, self.sizes))} that runs"
                                         if k in dynamic_names else "declared")
                words.append(f"{k}:{format_dims(v.shape)} ({how})")
            self._inputs_note = "; ".join(words)
            return
        self._why_not = (
            f"numeric check off, structural checks only: no input shape runs in onnxruntime (tried {' | '.join(tried)}; "
            f"last error: {last_error}); give one with --verify-shape NAME:DxDx... or --verify-inputs"
        )

    def after_pass(self, ctx: RunContext, p: Pass, state: ModelState, record: StageRecord) -> None:
        if not record.modified:
            record.verification = Verification("unchanged", "model unchanged")
            return
        if record.kind == PassKind.BACKEND_ONLY.value and not self._backend_only:
            self._backend_only = f"not checked: {p.name} made the graph backend-only (not standard ONNX; onnx.checker and onnxruntime reject it)"
        if self._backend_only:
            record.verification = Verification("off", self._backend_only)
            return
        model = state.view()
        _check_structure(model)
        if not self._planned:  # a pipeline that changes nothing never runs the reference
            self._planned = True
            self._plan(self._prev_model)
        got = None if self._numeric else self._enable_numeric(model)
        if not self._numeric:
            record.verification = Verification("structural", self._why_not)
            self._prev_model = model
            return
        planned = self._feeds
        feeds = self._feeds_for(model)
        if got is None or feeds is not planned:
            got = self._run_model(model, feeds)
        if record.kind == PassKind.EXACT.value:
            expected = p.expected_outputs(self._prev_outputs)
            record.verification = _judge(expected, got, self.rtol, self.atol)
            record.verification.inputs = self._inputs_note
            if record.verification.status == "failed":
                raise VerificationError(f"outputs differ from the previous stage on {self._inputs_note}: {record.verification.detail}")
        else:
            record.verification = _measure(self._prev_outputs, got)
            record.verification.inputs = self._inputs_note
        self._prev_model, self._prev_outputs = model, got

    def _run_model(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One run without onnxruntime's graph optimizations: both sides of a comparison run the graph
        as written, and a session loads several times faster, which is most of the cost on small inputs."""
        return _Session(model, self.threads).run(feeds)

    def _enable_numeric(self, model: onnx.ModelProto) -> dict[str, np.ndarray] | None:
        """Turns the numeric check on once a pass made it possible (static shapes, custom ops rewritten):
        the inputs are planned on the new model and the reference recomputed on the previous one.
        Returns the new model's outputs on those inputs (planning ran it), or None when it stays off."""
        why = self._why_not
        self._plan(model)
        if not self._numeric:
            return None
        got = self._prev_outputs  # what planning computed: `model` on the inputs it chose
        try:
            self._prev_outputs = self._run_model(self._prev_model, self._feeds)
        except ForgeError:
            self._numeric, self._why_not = False, why
            return None
        return got

    def _feeds_for(self, model: onnx.ModelProto) -> dict[str, np.ndarray]:
        """The reference inputs, regenerated (and the reference outputs recomputed) if a pass changed
        the declared input shapes so that they no longer fit."""
        specs = {s.name: s for s in input_specs(model)}
        fits = set(specs) == set(self._feeds) and all(
            len(specs[k].shape) == v.ndim
            and all(not (isinstance(d, int) and d > 0) or d == n for d, n in zip(specs[k].shape, v.shape))
            for k, v in self._feeds.items()
        )
        if not fits:
            shapes = {}
            for name, spec in specs.items():
                old = self._feeds.get(name)
                shapes[name] = tuple(
                    d if isinstance(d, int) and d > 0 else (old.shape[i] if old is not None and i < old.ndim else 1)
                    for i, d in enumerate(spec.shape)
                )
            self._feeds = seeded_inputs(model, self.seed, shapes=shapes)
            self._prev_outputs = self._run_model(self._prev_model, self._feeds)
            self._inputs_note = "; ".join(f"{k}:{format_dims(v.shape)} (declared by the pass)" for k, v in self._feeds.items())
        return self._feeds


class _Session:
    """One verification session of `model`, without onnxruntime's graph optimizations (both sides of a
    comparison run the graph as written, and such a session loads several times faster).

    The session is built from the model without its large weights (`_graph.weightless`: they become
    graph inputs) and the weights are fed as arrays at every run: serialising tens of MB of weights
    into onnxruntime, twice per verified stage, cost more than onnxsim itself on weight-heavy graphs
    (smp's resnet18 encoders). Without graph optimizations an initializer and an input holding the same
    array compute the same. Where onnxruntime refuses that form, the whole model is loaded instead.
    """

    def __init__(self, model: onnx.ModelProto, threads: int = 0) -> None:
        from onnx import numpy_helper

        from onnxforge.passes._graph import weightless

        self.model, self.weights, self.threads, self._full = model, {}, threads, None
        light = weightless(model)
        if light is not model:
            kept = {t.name for t in light.graph.initializer}
            try:
                self.weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name not in kept}
                self.sess = make_session(light, threads=threads, optimize=False)
                return
            except Exception:  # noqa: BLE001 - any refusal of the light form: load the model as it is
                self.weights = {}
        self.sess = make_session(model, threads=threads, optimize=False)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self._run(self.sess, feeds, self.weights)
        except ForgeError:
            if not self.weights:
                raise
        # the light form failed: the whole model decides (a kernel may want its weight constant; a
        # shape the graph does not accept fails there too, and the light form stays for the next shape)
        if self._full is None:
            self._full = make_session(self.model, threads=self.threads, optimize=False)
        out = self._run(self._full, feeds, {})
        self.sess, self.weights = self._full, {}
        return out

    def _run(self, sess, feeds: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in sess.get_outputs()]
        try:
            values = sess.run(names, {**cast_feeds(self.model, feeds), **weights})
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
            raise ForgeError(f"onnxruntime failed to run the model: {str(exc).splitlines()[0][:200]}") from None
        return dict(zip(names, values))


def _history_shapes(model: onnx.ModelProto, pipeline: Pipeline, applied: str | None) -> dict[str, tuple[int, ...]]:
    """Input shapes that static-shape was (or is about to be) asked to fix: in the pipeline being run,
    then in the pipeline an optimized input records. Only whole shapes and the batch are taken."""
    from onnxforge.passes.static_shape import StaticShape

    passes = list(pipeline.passes)
    if applied:
        try:
            passes += list(parse_pipeline(applied).passes)
        except ForgeError:  # metadata written by another version: ignore, it is only a hint
            pass
    specs = {s.name: s for s in input_specs(model)}
    out: dict[str, tuple[int, ...]] = {}
    for p in passes:
        if not isinstance(p, StaticShape):
            continue
        for item in p.options.shape:
            name, dims = parse_shape_spec(item)
            out.setdefault(name, dims)
        if p.options.batch:
            for name, spec in specs.items():
                if name not in out and spec.shape and all(isinstance(d, int) and d > 0 for d in spec.shape[1:]):
                    out[name] = (p.options.batch, *spec.shape[1:])
    return out


def _check_structure(model: onnx.ModelProto) -> None:
    """onnx.checker and strict shape inference on the model without its large weights (their shapes are
    kept as typed inputs); the numeric check that follows loads the real weights into onnxruntime."""
    from onnxforge.passes._graph import weightless

    light = weightless(model)
    try:
        onnx.checker.check_model(light)
        onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise VerificationError(f"invalid model: {str(exc).strip().splitlines()[0][:300]}") from None


def _pairs(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if set(ref) == set(got):
        return [(k, ref[k], got[k]) for k in ref]
    if len(ref) != len(got):
        raise VerificationError(f"output count changed from {len(ref)} to {len(got)}")
    return [(f"{a}->{b}", ref[a], got[b]) for a, b in zip(ref, got)]


#: Integer (label) outputs computed from float logits: the largest fraction of elements allowed to differ.
#: An exact rewrite can move logits by float rounding (reassociated sums, folded BN), which flips an
#: ArgMax where two classes tie to within that rounding; more than this is a real change.
LABEL_MISMATCH_TOLERANCE = 1e-4


def _judge(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], rtol_: float | None = None, atol_: float | None = None) -> Verification:
    from onnxforge.numerics import TOLERANCES

    worst = 0.0
    details = []
    failed = False
    notes = []
    stats = []
    for name, r, g in _pairs(ref, got):
        scale = max(1.0, float(np.abs(r).max())) if r.dtype.kind == "f" and r.size else 1.0
        rtol, atol = TOLERANCES.get(np.dtype(g.dtype) if g.dtype.kind == "f" else np.dtype(np.float32), (1e-4, 1e-4))
        if r.dtype.kind == "f" and g.dtype.kind == "f" and np.dtype(r.dtype).itemsize < np.dtype(g.dtype).itemsize:
            rtol, atol = TOLERANCES.get(np.dtype(r.dtype), (rtol, atol))
        rtol = rtol if rtol_ is None else rtol_
        atol = atol if atol_ is None else atol_
        cmp = compare_arrays(name, r, g, rtol=rtol, atol=atol * scale)
        labels = r.dtype.kind in "iub" and g.dtype.kind in "iub"
        ok = cmp.ok
        if labels and not cmp.ok and r.shape == g.shape and cmp.mismatch <= LABEL_MISMATCH_TOLERANCE:
            notes.append(f"{name}: {cmp.mismatch:.4%} of labels differ (argmax ties within float rounding)")
            ok = True
        elif not cmp.ok:
            failed = True
            details.append(f"{cmp} ({cmp.mismatch:.4%} of elements outside tolerance)")
        if labels:
            stats.append(OutputStat(name, label_agreement=1.0 - cmp.mismatch if r.shape == g.shape else 0.0, ok=ok))
        else:
            worst = max(worst, cmp.max_abs)
            finite = np.isfinite(cmp.max_abs)
            stats.append(OutputStat(name, cmp.max_abs if finite else None, cmp.max_rel if finite else None, ok=ok))
    if failed:
        return Verification("failed", "; ".join(details), worst, outputs=stats)
    detail = f"outputs equal within tolerance (max abs {worst:.3g})" + ("; " + "; ".join(notes) if notes else "")
    return Verification("passed", detail, worst, outputs=stats)


def _measure(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> Verification:
    worst = 0.0
    agreement = None
    parts = []
    stats = []
    for name, r, g in _pairs(ref, got):
        if r.shape != g.shape:
            parts.append(f"{name}: shape {r.shape} -> {g.shape}")
            stats.append(OutputStat(name))
            continue
        if r.dtype.kind in "iub" or g.dtype.kind in "iub":
            a = float((r.astype(np.int64) == g.astype(np.int64)).mean()) if r.dtype.kind in "iub" and g.dtype.kind in "iub" else None
            if a is not None:
                agreement = a if agreement is None else min(agreement, a)
                parts.append(f"{name}: {a:.4%} labels equal")
                stats.append(OutputStat(name, label_agreement=a))
            continue
        cmp = compare_arrays(name, r, g)
        err, rel = (cmp.max_abs, cmp.max_rel) if r.size else (0.0, 0.0)
        worst = max(worst, err)
        parts.append(f"{name}: max abs {err:.3g}")
        stats.append(OutputStat(name, err, rel))
    return Verification("measured", "; ".join(parts), worst, agreement, outputs=stats)


class DumpStages(Instrument):
    """Writes `000_input.onnx` and `NNN_<pass>.onnx` after each pass; on failure, `reproduce.txt`."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def run_start(self, ctx: RunContext, state: ModelState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._last = save_model(state.view(), self.dir / "000_input.onnx")

    def after_pass(self, ctx: RunContext, p: Pass, state: ModelState, record: StageRecord) -> None:
        self._last = save_model(state.view(), self.dir / f"{record.index:03d}_{p.name}.onnx")

    def on_failure(self, ctx: RunContext, p: Pass, index: int, error: ForgeError) -> None:
        text = (
            f"# pass '{p}' (#{index}) failed: {error}\n"
            f"# its input model is {self._last.name}; to reproduce:\n"
            f"onnxforge optimize {self._last.name} -o repro.onnx --passes '{ctx.remaining(index)}'\n"
        )
        write_text_atomic(self.dir / "reproduce.txt", text)


class PassManager:
    """Runs a pipeline with verification and instruments. Stateless between `run` calls."""

    def __init__(
        self,
        pipeline: Pipeline | str | Sequence[Pass],
        verify: bool = True,
        instruments: Iterable[Instrument] = (),
        seed: int = DEFAULT_SEED,
        threads: int = 0,
        verifier: Verifier | None = None,
    ) -> None:
        """`verifier` replaces the default `Verifier(seed, threads)` (shapes, user inputs, tolerances)."""
        if isinstance(pipeline, str):
            pipeline = parse_pipeline(pipeline)
        elif not isinstance(pipeline, Pipeline):
            pipeline = Pipeline(tuple(pipeline))
        self.pipeline = pipeline
        self.instruments: list[Instrument] = ([verifier or Verifier(seed, threads)] if verify else []) + list(instruments)

    def run(self, model: onnx.ModelProto) -> PipelineResult:
        """Applies every pass in order to a copy of `model` and returns the rewritten model with records."""
        t0 = time.perf_counter()
        state = ModelState(model)
        ctx = RunContext(self.pipeline)
        nodes_before = state.node_count()
        for inst in self.instruments:
            inst.run_start(ctx, state)
        for index, p in enumerate(self.pipeline.passes, start=1):
            before = state.node_count()
            t = time.perf_counter()
            try:
                snapshot = state.snapshot()
                print_before = fingerprint(snapshot.proto) if snapshot.proto is not None else graph_fingerprint(snapshot.graph)
                state.touched = False  # exporting mid-pass (to_model) must not skip the cleanup below
                result = self._run_pass(p, state, ctx, index)
                if result.modified:
                    if state.touched:
                        # the pass held the graph: any ModelProto exported mid-pass may be stale, so drop it
                        state.graph.cleanup(remove_unused_graph_inputs=False).toposort()
                else:
                    self._check_unchanged(p, state, snapshot, print_before, ctx, index)
                record = StageRecord(
                    index=index,
                    name=p.name,
                    pipeline_item=str(p),
                    kind=p.effective_kind().value,
                    modified=result.modified,
                    stats=dict(result.stats),
                    skipped=[str(s) for s in result.skipped],
                    notes=list(result.notes) if result.modified else [result.why_nothing()],
                    nodes_before=before,
                    nodes_after=state.node_count(),
                    seconds=time.perf_counter() - t,
                )
                for inst in self.instruments:
                    inst.after_pass(ctx, p, state, record)
            except PassCrash as exc:
                for inst in self.instruments:
                    inst.on_failure(ctx, p, index, exc)
                raise
            except ForgeError as exc:
                error = PassError(f"pass '{p}' (#{index} of {len(self.pipeline)}, after {ctx.ran_before(index)}) failed: {exc}")
                for inst in self.instruments:
                    inst.on_failure(ctx, p, index, error)
                raise error from None
            ctx.stages.append(record)
            log.info("%s: %s", p, "modified" if result.modified else record.notes[0])
        applied = state.get_metadata(PIPELINE_METADATA_KEY)
        state.set_metadata(PIPELINE_METADATA_KEY, ",".join(x for x in (applied, str(self.pipeline)) if x))
        state.set_metadata("onnxforge.version", __version__)
        nodes_after = state.node_count()
        out = state.release()
        result = PipelineResult(out, self.pipeline, ctx.stages, nodes_before, nodes_after, time.perf_counter() - t0)
        for inst in self.instruments:
            inst.run_end(ctx, result)
        return result

    @staticmethod
    def _run_pass(p: Pass, state: ModelState, ctx: RunContext, index: int) -> PassResult:
        """Runs one pass; an unexpected exception (not a ForgeError) is a bug: PassCrash."""
        try:
            return p.run(state)
        except ForgeError:
            raise
        except Exception as exc:  # noqa: BLE001 - any other exception is a bug in the pass
            log.debug("pass %s crashed", p, exc_info=True)
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise PassCrash(_crash_message(p, ctx, index, f"{type(exc).__name__}: {text}" if text else type(exc).__name__)) from exc

    @staticmethod
    def _check_unchanged(p: Pass, state: ModelState, snapshot: Snapshot, print_before: str, ctx: RunContext, index: int) -> None:
        """A pass that reported modified=False must have left the model as it was (contract check).

        Then the state goes back to the snapshot, so a model held as a ModelProto stays byte for byte
        what it was (a graphsurgeon round trip would not be, e.g. IR-3 weights listed as graph inputs).
        Fingerprints are compared in the form the state holds (no export of the weights): ModelProto
        against ModelProto, else graph against graph (a ModelProto side is imported, lazily)."""
        if snapshot.proto is not None and not state.holds_graph:
            if state.view() is not snapshot.proto and fingerprint(state.view()) != print_before:
                raise PassCrash(_crash_message(p, ctx, index, "it reported modified=False but changed the graph"))
        else:
            before = print_before if snapshot.graph is not None else graph_fingerprint(gs.import_onnx(snapshot.proto))
            after = graph_fingerprint(state.graph if state.holds_graph else gs.import_onnx(state.view()))
            if after != before:
                raise PassCrash(_crash_message(p, ctx, index, "it reported modified=False but changed the graph"))
        state.restore(snapshot)


def _crash_message(p: Pass, ctx: RunContext, index: int, what: str) -> str:
    return (
        f"internal error in pass '{p}' (#{index} of {len(ctx.pipeline)}, after {ctx.ran_before(index)}): {what}; please report; "
        f"reproduce with: onnxforge optimize MODEL.onnx -o repro.onnx --passes '{ctx.remaining(index)}' --dump-dir DIR"
    )


def fingerprint(model: onnx.ModelProto) -> str:
    """A cheap digest of a model's structure: every node's op, domain, name, inputs, outputs and
    attributes, the graph's inputs and outputs (with types), initializer names, types and shapes, and
    the opset imports. Weight bytes are not read (a Constant's tensor contributes its type and shape)."""
    import hashlib

    h = hashlib.sha1()
    g = model.graph

    def add(*parts: object) -> None:
        h.update(repr(parts).encode())
        h.update(b"\0")

    for op in model.opset_import:
        add("opset", op.domain, op.version)
    for vi in list(g.input) + list(g.output):
        add("io", vi.SerializeToString())
    add("split")
    for t in g.initializer:
        add("init", t.name, t.data_type, tuple(t.dims))
    for node in g.node:
        add("node", node.op_type, node.domain, node.name, tuple(node.input), tuple(node.output))
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                add("attr", a.name, a.t.data_type, tuple(a.t.dims))
            elif a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                add("attr", a.name, a.type, len(a.g.node), tuple(len(x.node) for x in a.graphs))
            else:
                add("attr", a.name, a.type, a.f, a.i, a.s, tuple(a.floats), tuple(a.ints), tuple(a.strings))
    return h.hexdigest()


def graph_fingerprint(graph: "gs.Graph") -> str:
    """`fingerprint` for an onnx-graphsurgeon graph (not comparable with a ModelProto's): node ops,
    names, inputs, outputs and attributes, graph I/O with types, constants' names, types and shapes.
    Inner tensors count by name only: their dtype/shape annotations differ between a held graph and
    the same model exported and imported again."""
    import hashlib

    h = hashlib.sha1()

    def add(*parts: object) -> None:
        h.update(repr(parts).encode())
        h.update(b"\0")

    def tensor(t: "gs.Tensor") -> tuple:
        if isinstance(t, gs.Constant):
            return ("const", t.name, str(np.dtype(t.dtype)), tuple(t.shape))
        return ("var", t.name)  # annotations of inner tensors are not structure (export/import changes them)

    def typed(t: "gs.Tensor") -> tuple:
        dtype = None if t.dtype is None else str(np.dtype(t.dtype))
        return tensor(t) + (dtype, None if t.shape is None else tuple(str(d) for d in t.shape))

    def attr(value: object) -> object:
        if isinstance(value, gs.Tensor):
            return tensor(value)
        if isinstance(value, np.ndarray):
            return (str(value.dtype), value.shape)
        if isinstance(value, gs.Graph):
            return ("graph", len(value.nodes))
        if isinstance(value, (list, tuple)):
            return tuple(attr(v) for v in value)
        return value

    add("opset", graph.opset, tuple((d.domain, d.version) for d in (graph.import_domains or [])))
    add("io", tuple(typed(t) for t in graph.inputs), tuple(typed(t) for t in graph.outputs))
    for node in graph.nodes:
        add(
            "node", node.op, node.domain, node.name,
            tuple(tensor(t) for t in node.inputs), tuple(tensor(t) for t in node.outputs),
            tuple(sorted((k, repr(attr(v))) for k, v in node.attrs.items())),
        )
    return h.hexdigest()


def optimize(model: onnx.ModelProto, pipeline: Pipeline | str, verify: bool = True, dump_dir: str | Path | None = None, seed: int = DEFAULT_SEED) -> PipelineResult:
    """Convenience entry point: parse, run with optional stage dumps, return the result."""
    instruments = [DumpStages(dump_dir)] if dump_dir else []
    return PassManager(pipeline, verify=verify, instruments=instruments, seed=seed).run(model)

"""Seeded inputs, onnxruntime sessions and output comparison with per-dtype tolerances.

Shared by the pass manager's verifier, the benchmarks and the evaluator's agreement metrics. Inputs are
drawn from a fixed seed (Polygraphy's DEFAULT_SEED idea) so every comparison is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx

from onnxforge.errors import BackendError, ForgeError, InputSpecError

DEFAULT_SEED = 1

#: (rtol, atol) used when comparing outputs of an exact pass, by output dtype.
TOLERANCES: dict[np.dtype, tuple[float, float]] = {
    np.dtype(np.float64): (1e-7, 1e-9),
    np.dtype(np.float32): (1e-4, 1e-4),
    np.dtype(np.float16): (1e-2, 1e-2),
}

_ONNX_TO_NP = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}


def np_dtype(elem_type: int) -> np.dtype:
    """numpy dtype of an ONNX tensor element type."""
    if elem_type not in _ONNX_TO_NP:
        raise ForgeError(f"unsupported tensor element type {onnx.TensorProto.DataType.Name(elem_type)}")
    return np.dtype(_ONNX_TO_NP[elem_type])


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints, or a str/None for dynamic dims) and numpy dtype of a model input or output."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.shape)


def declared_dims(vi: onnx.ValueInfoProto) -> tuple[int | str | None, ...]:
    """A value's declared shape: ints for static dims, names for symbolic ones, None for unknown.

    A negative `dim_value` (paddle2onnx and some TensorFlow converters write -1 for "any size") is
    unknown, not a size.
    """
    dims: list[int | str | None] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def input_specs(model: onnx.ModelProto) -> list[TensorInfo]:
    """The graph inputs that are not initializers, with their declared shapes."""
    inits = {t.name for t in model.graph.initializer}
    return [TensorInfo(vi.name, declared_dims(vi), np_dtype(vi.type.tensor_type.elem_type))
            for vi in model.graph.input if vi.name not in inits]


#: Sizes tried, smallest first, for a dynamic non-batch dimension when nobody said which: small enough
#: to keep verification cheap, and covering the strides real backbones need (32 for most, 224 for ViTs).
DEFAULT_SIZES: tuple[int, ...] = (32, 64, 128, 224, 256, 512, 640)

#: A dynamic channel dimension (dim 1 of a rank-4 input) is taken as 3: image models.
DEFAULT_CHANNELS = 3


def parse_shape_spec(item: str) -> tuple[str, tuple[int, ...]]:
    """`x:1x3x640x640` -> ("x", (1, 3, 640, 640)); InputSpecError when malformed or a size is not positive."""
    name, sep, dims = item.strip().rpartition(":")
    try:
        values = tuple(int(d) for d in dims.lower().split("x")) if sep and name else ()
    except ValueError:
        values = ()
    if not values or any(v <= 0 for v in values):
        raise InputSpecError(f"shape '{item}' is not NAME:DxDx... with positive integer sizes (e.g. input:1x3x640x640)")
    return name, values


def fit_shape(spec: TensorInfo, shape: Sequence[int], source: str) -> tuple[int, ...]:
    """Checks a concrete shape against an input's declaration (rank, static dims); returns it as a tuple."""
    shape = tuple(int(d) for d in shape)
    if len(shape) != len(spec.shape):
        raise InputSpecError(f"{source}: input '{spec.name}' has rank {len(spec.shape)} ({format_dims(spec.shape)}), got {len(shape)} dims ({format_dims(shape)})")
    for i, (d, n) in enumerate(zip(spec.shape, shape)):
        if isinstance(d, int) and d > 0 and d != n:
            raise InputSpecError(f"{source}: input '{spec.name}' dimension {i} is {d} ({format_dims(spec.shape)}), got {n}")
    return shape


def resolve_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], source: str = "--verify-shape") -> dict[str, tuple[int, ...]]:
    """Validates user-given shapes (unknown input names, rank, static dims) and returns them by name."""
    specs = {s.name: s for s in input_specs(model)}
    out = {}
    for name, shape in shapes.items():
        if name not in specs:
            raise InputSpecError(f"{source}: no graph input '{name}' (inputs: {', '.join(specs) or 'none'})")
        out[name] = fit_shape(specs[name], shape, source)
    return out


def load_input_arrays(model: onnx.ModelProto, paths: Sequence[str | Path]) -> dict[str, np.ndarray]:
    """Reads user inputs for verification: `.npz` files keyed by input name, or `.npy` files.

    A `.npy` is `NAME=path.npy`, or a bare path when the model has one input. Shapes must fit the
    declared dims and dtypes the declared kind (float for float inputs, integer for integer inputs;
    the array is cast to the declared dtype). Any misfit is an InputSpecError naming the file.
    """
    specs = {s.name: s for s in input_specs(model)}
    arrays: dict[str, tuple[np.ndarray, str]] = {}
    for item in paths:
        item = str(item)
        name, sep, path = item.partition("=") if "=" in item and not Path(item).exists() else ("", "", item)
        p = Path(path)
        if not p.is_file():
            raise InputSpecError(f"--verify-inputs: no such file: {p}")
        try:
            loaded = np.load(p, allow_pickle=False)
        except Exception as exc:  # numpy raises ValueError/OSError/zipfile errors for non-arrays
            raise InputSpecError(f"--verify-inputs: {p} is not a .npy/.npz array file ({type(exc).__name__})") from None
        if isinstance(loaded, np.ndarray):
            if not name:
                if len(specs) != 1:
                    raise InputSpecError(f"--verify-inputs: {p}: the model has {len(specs)} inputs ({', '.join(specs)}); name it as NAME={p} or use an .npz")
                name = next(iter(specs))
            arrays[name] = (loaded, p.name)
        else:
            with loaded:
                for key in loaded.files:
                    arrays[key] = (loaded[key], f"{p.name}[{key}]")
    out = {}
    for name, (arr, where) in arrays.items():
        if name not in specs:
            raise InputSpecError(f"--verify-inputs: {where}: no graph input '{name}' (inputs: {', '.join(specs)})")
        spec = specs[name]
        fit_shape(spec, arr.shape, f"--verify-inputs {where}")
        want = spec.dtype.kind if spec.dtype.kind != "u" else "i"
        have = arr.dtype.kind if arr.dtype.kind != "u" else "i"
        if want != have:
            raise InputSpecError(f"--verify-inputs {where}: input '{name}' is {spec.dtype}, the array is {arr.dtype}")
        out[name] = arr.astype(spec.dtype, copy=False)
    return out


def default_shape(spec: TensorInfo, size: int, symbols: Mapping[str, int] | None = None) -> tuple[int, ...]:
    """An input's shape with its dynamic dims filled by the documented default.

    Static dims stay; a symbol already bound in `symbols` takes its value; otherwise dim 0 (batch) is 1,
    dim 1 of a rank-4 input (channels) is DEFAULT_CHANNELS, and every other dynamic dim is `size`.
    """
    symbols = symbols or {}
    out = []
    for i, d in enumerate(spec.shape):
        if isinstance(d, int) and d > 0:
            out.append(d)
        elif isinstance(d, str) and d in symbols:
            out.append(int(symbols[d]))
        elif i == 0:
            out.append(1)
        elif i == 1 and len(spec.shape) == 4:
            out.append(DEFAULT_CHANNELS)
        else:
            out.append(size)
    return tuple(out)


def format_dims(dims: Sequence[int | str | None]) -> str:
    return "x".join(str(d) if d is not None else "?" for d in dims)


def concrete_shape(spec: TensorInfo, overrides: Mapping[str, int] | None = None) -> tuple[int, ...]:
    """Resolves symbolic dims: named ones from `overrides`, a leading batch dim to 1; others are an error."""
    overrides = dict(overrides or {})
    out = []
    for i, d in enumerate(spec.shape):
        if isinstance(d, int) and d > 0:
            out.append(d)
        elif isinstance(d, str) and d in overrides:
            out.append(int(overrides[d]))
        elif i == 0:
            out.append(int(overrides.get("batch", 1)))
        else:
            raise ForgeError(
                f"input '{spec.name}' has a dynamic dimension {i} ({d!r}); fix it first, e.g. "
                f"--passes 'static-shape{{shape={spec.name}:1x3x224x224}}'"
            )
    return tuple(out)


def seeded_inputs(
    model: onnx.ModelProto,
    seed: int = DEFAULT_SEED,
    overrides: Mapping[str, int] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Deterministic inputs for every graph input: standard normal floats, small non-negative ints.

    `shapes` gives concrete shapes by input name (checked against the declaration); the other inputs
    are resolved by `concrete_shape` with `overrides`.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    shapes = shapes or {}
    for spec in input_specs(model):
        shape = fit_shape(spec, shapes[spec.name], "shape") if spec.name in shapes else concrete_shape(spec, overrides)
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            feeds[spec.name] = rng.integers(0, 4, shape).astype(spec.dtype)
    return feeds


def cast_feeds(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Casts reference inputs to the dtypes a (possibly rewritten) model declares, e.g. after fp16-input."""
    dtypes = {s.name: s.dtype for s in input_specs(model)}
    return {k: (v.astype(dtypes[k]) if k in dtypes and v.dtype != dtypes[k] else v) for k, v in feeds.items() if k in dtypes}


def make_session(
    model: onnx.ModelProto | bytes,
    *,
    threads: int = 0,
    inter_op_threads: int = 0,
    providers: Sequence[str] | None = None,
    optimize: bool = True,
    spin: bool = True,
):
    """THE place an onnxruntime InferenceSession is built (the verifier, the passes and the backend use it).

    Args:
        threads: intra-op threads (0: onnxruntime's default, one per core).
        inter_op_threads: inter-op threads (0: 1 when `threads` is set, else onnxruntime's default).
        providers: execution providers in order of preference (default: the CPU only).
        optimize: False disables onnxruntime's graph optimisations.
        spin: False makes worker threads sleep instead of spin-waiting after a run (needed when several
            sessions are timed in turn on few cores: one session's spinning threads steal the next one's cores).

    Raises:
        BackendError: onnxruntime cannot load the model (its first line quoted).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    if inter_op_threads:
        opts.inter_op_num_threads = int(inter_op_threads)
    elif threads:
        opts.inter_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    data = model if isinstance(model, bytes) else model.SerializeToString()
    try:
        return ort.InferenceSession(data, opts, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise BackendError(f"onnxruntime cannot load the model: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text (onnxruntime's are long), at most 300 characters."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def run_model(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], threads: int = 0) -> dict[str, np.ndarray]:
    """Runs a model once in onnxruntime and returns its outputs by name."""
    sess = make_session(model, threads=threads)
    names = [o.name for o in sess.get_outputs()]
    try:
        values = sess.run(names, dict(cast_feeds(model, feeds)))
    except Exception as exc:  # onnxruntime's own exception types
        raise BackendError(f"onnxruntime failed to run the model: {first_line(exc)}") from None
    return dict(zip(names, values))


def expose_outputs(model: onnx.ModelProto, names: Sequence[str],
                   value_info: Mapping[str, onnx.ValueInfoProto] | None = None) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs also list the tensors `names` (to read intermediate values),
    typed from `value_info` (default: shape inference of the model) where it knows them, else untyped
    (onnxruntime infers those)."""
    if value_info is None:
        try:
            value_info = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
        except Exception:  # noqa: BLE001 - inference only types the extra outputs
            value_info = {}
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name in names:
        if name in present:
            continue
        vi = value_info.get(name)
        if vi is not None and vi.type.tensor_type.elem_type:
            exposed.graph.output.add().CopyFrom(vi)
        else:
            exposed.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        present.add(name)
    return exposed


@dataclass(frozen=True)
class Comparison:
    """Result of comparing one output against its reference."""

    name: str
    ok: bool
    max_abs: float
    max_rel: float
    mismatch: float  # fraction of elements outside tolerance
    detail: str = ""

    def __str__(self) -> str:
        state = "ok" if self.ok else "MISMATCH"
        return f"{self.name}: {state} (max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g}{', ' + self.detail if self.detail else ''})"


def compare_arrays(name: str, ref: np.ndarray, got: np.ndarray, rtol: float | None = None, atol: float | None = None) -> Comparison:
    """Compares two arrays: exact for integers/bools, `|got-ref| <= atol + rtol*|ref|` for floats.

    The float tolerance is taken from the looser of the two dtypes (an fp16 output is compared at fp16
    tolerance) unless given.
    """
    if ref.shape != got.shape:
        return Comparison(name, False, float("inf"), float("inf"), 1.0, f"shape {got.shape} != reference {ref.shape}")
    if ref.size == 0:
        return Comparison(name, True, 0.0, 0.0, 0.0)
    if ref.dtype.kind in "iub" and got.dtype.kind in "iub":
        diff = ref.astype(np.int64) != got.astype(np.int64)
        frac = float(diff.mean())
        max_abs = float(np.abs(ref.astype(np.int64) - got.astype(np.int64)).max())
        return Comparison(name, frac == 0.0, max_abs, max_abs, frac)
    looser = max((np.dtype(ref.dtype), np.dtype(got.dtype)), key=lambda d: TOLERANCES.get(d, (0.0, 0.0))[1])
    d_rtol, d_atol = TOLERANCES.get(looser, TOLERANCES[np.dtype(np.float32)])
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    r = ref.astype(np.float64)
    g = got.astype(np.float64)
    if not (np.isfinite(r).all() and np.isfinite(g).all()):
        same_nonfinite = np.array_equal(~np.isfinite(r), ~np.isfinite(g))
        if not same_nonfinite:
            return Comparison(name, False, float("inf"), float("inf"), 1.0, "non-finite values differ")
        mask = np.isfinite(r)
        r, g = r[mask], g[mask]
        if r.size == 0:
            return Comparison(name, True, 0.0, 0.0, 0.0)
    err = np.abs(g - r)
    bad = err > atol + rtol * np.abs(r)
    max_rel = float((err / np.maximum(np.abs(r), 1e-12)).max())
    return Comparison(name, not bool(bad.any()), float(err.max()), max_rel, float(bad.mean()))

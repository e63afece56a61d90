"""static-shape: fixes dynamic input dimensions and re-infers every shape downstream.

Before -> After::

    x: float[batch, 3, H, W]                           x: float[16, 3, 500, 500]
    Shape(x) -> Gather -> ... -> Reshape(·, ·)   ->    same nodes; every value_info static, so a following
    y: float[batch, C, H, W]                           `simplify` folds the Shape chains; y: float[16, C, 500, 500]

`{batch=16}` sets the leading dimension of every input; `{shape=x:1x3x500x500|mask:1x1x500x500}` sets
whole shapes; with no options a dynamic leading dimension becomes 1. A dimension is dynamic when it is
symbolic (dim_param), absent, or declared `dim_value: -1` as paddle2onnx writes it. A symbolic dimension (dim_param) fixed on one input is fixed wherever it appears among
the inputs and outputs: ONNX uses one name for one size. This is the seeds' one-ONNX-per-batch-size.

Legal when the graph computes the same function at the fixed sizes, which holds by construction: only
declarations change, no node does. The pass fails (PassError, one line) on an unknown input name, a
rank that does not match, a dimension already static at another value, one symbol given two values,
or shapes under which ONNX shape inference fails. Intermediate value_info is cleared and inferred
again (with data propagation) so stale symbolic shapes do not survive. Exact: the manager runs the
model before and after at the new sizes and compares.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from onnxforge.errors import PassError, PipelineError
from onnxforge.numerics import declared_dims
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, Skip, option
from onnxforge.passes.registry import register

@dataclass(frozen=True)
class StaticShapeOptions:
    batch: int = option(0, "the leading dimension of every input; 0: a dynamic one becomes 1 (unless shape= is given)")
    shape: tuple[str, ...] = option((), "whole input shapes as NAME:DxDx...; several separated by '|'")


def parse_shape(item: str) -> tuple[str, tuple[int, ...]]:
    """`input:1x3x500x500` -> ("input", (1, 3, 500, 500)); PipelineError when malformed."""
    name, sep, dims = item.rpartition(":")
    try:
        values = tuple(int(d) for d in dims.lower().split("x")) if sep and name else ()
    except ValueError:
        values = ()
    if not values or any(v <= 0 for v in values):
        raise PipelineError(f"static-shape: option 'shape' entry '{item}' is not NAME:DxDx... with positive sizes (e.g. input:1x3x500x500)")
    return name, values


@register
class StaticShape(Pass):
    name = "static-shape"
    summary = "fixes batch and/or whole input shapes ({batch=16}, {shape=x:1x3x500x500}) and re-infers shapes"
    kind = PassKind.EXACT
    Options = StaticShapeOptions

    def validate(self) -> None:
        if self.options.batch < 0:
            raise PipelineError(f"static-shape: option 'batch' must be positive, got {self.options.batch}")
        names = [parse_shape(item)[0] for item in self.options.shape]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise PipelineError(f"static-shape: option 'shape' gives input '{dupes[0]}' twice")
        for item in self.options.shape:
            name, dims = parse_shape(item)
            if self.options.batch and dims[0] != self.options.batch:
                raise PipelineError(f"static-shape: shape of '{name}' starts with {dims[0]} but batch={self.options.batch}")

    def run(self, state: ModelState) -> PassResult:
        model = state.to_model()
        inits = {t.name for t in model.graph.initializer}
        graph_inputs = [vi for vi in model.graph.input if vi.name not in inits]
        declared = {vi.name: _dims(vi) for vi in graph_inputs}
        wanted = self._wanted(declared)

        symbols: dict[str, tuple[int, str]] = {}  # dim_param -> (size, which input fixed it)
        skipped: list[Skip] = []
        for name, dims in declared.items():
            if name not in wanted:
                continue
            if not dims and not wanted[name]:
                skipped.append(Skip(name, "a scalar input has no batch dimension"))
                continue
            for i, (have, want) in enumerate(zip(dims, wanted[name])):
                if want is None:
                    continue
                if isinstance(have, int) and have != want:
                    raise PassError(f"static-shape: input '{name}' dimension {i} is already {have}, cannot set {want}")
                if isinstance(have, str):
                    _bind(symbols, have, want, name)

        new_dims = {}
        for name, dims in declared.items():
            requested = wanted.get(name) or [None] * len(dims)
            new_dims[name] = [_resolve(have, want, symbols) for have, want in zip(dims, requested)]
        fixed = {name: sum(1 for a, b in zip(declared[name], new_dims[name]) if a != b) for name in declared}
        if not any(fixed.values()):
            shown = ", ".join(f"{n}:{_fmt(d)}" for n, d in declared.items() if n in wanted)
            return PassResult(False, skipped=skipped, notes=[f"inputs already static at {shown}"])

        for vi in graph_inputs:
            _set_dims(vi, new_dims[vi.name])
        outputs_before = {vi.name: _dims(vi) for vi in model.graph.output}
        for vi in model.graph.output:
            vi.type.tensor_type.ClearField("shape")  # inferred again below
        del model.graph.value_info[:]
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=True, data_prop=True)
        except onnx.shape_inference.InferenceError as exc:
            raise PassError(f"static-shape: shape inference fails at these sizes: {str(exc).strip().splitlines()[0][:300]}") from None
        notes = []
        for vi in inferred.graph.output:
            declared_out = [_resolve(d, None, symbols) for d in outputs_before[vi.name]]
            got = _dims(vi) if vi.type.tensor_type.HasField("shape") else None
            if got is None or (declared_out and len(got) != len(declared_out)):
                dims = declared_out  # inference could not say: keep the declaration
            else:  # inferred sizes win; where inference made up a symbol, keep the declared dim
                dims = [g if isinstance(g, int) or not declared_out else declared_out[i] for i, g in enumerate(got)]
            _set_dims(vi, dims)
            if any(not isinstance(d, int) for d in dims):
                notes.append(f"output '{vi.name}' is still dynamic: {_fmt(dims)}")
        shape_ops = sum(1 for n in inferred.graph.node if n.op_type in ("Shape", "Size"))
        if shape_ops:
            notes.append(f"{shape_ops} Shape/Size op(s) now read static shapes: run simplify next to fold them")
        state.replace(inferred)
        stats: dict[str, int | float | str] = {
            "inputs_fixed": sum(1 for v in fixed.values() if v),
            "dims_fixed": sum(fixed.values()),
            "shapes": ", ".join(f"{n}:{_fmt(new_dims[n])}" for n in declared if fixed[n]),
        }
        return PassResult(True, stats, skipped=skipped, notes=notes)

    def _wanted(self, declared: dict[str, list]) -> dict[str, list[int | None]]:
        """Per input, the requested size of each dimension (None: not requested)."""
        wanted: dict[str, list[int | None]] = {}
        for item in self.options.shape:
            name, dims = parse_shape(item)
            if name not in declared:
                raise PassError(f"static-shape: no graph input '{name}' (inputs: {', '.join(declared) or 'none'})")
            if len(dims) != len(declared[name]):
                raise PassError(f"static-shape: input '{name}' has rank {len(declared[name])} ({_fmt(declared[name])}), shape gives {len(dims)} dims")
            wanted[name] = list(dims)
        if self.options.batch:
            for name, dims in declared.items():
                if name not in wanted:
                    wanted[name] = [self.options.batch] + [None] * (len(dims) - 1) if dims else []
        elif not self.options.shape:  # no options: a dynamic batch becomes 1, static ones stay
            for name, dims in declared.items():
                wanted[name] = [None if isinstance(dims[0], int) else 1] + [None] * (len(dims) - 1) if dims else []
        return wanted


def _dims(vi: onnx.ValueInfoProto) -> list:
    """Declared dims: int (static), str (dim_param) or None (unknown, also paddle2onnx's `dim_value: -1`)."""
    return list(declared_dims(vi))


def _set_dims(vi: onnx.ValueInfoProto, dims: list) -> None:
    shape = vi.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d


def _bind(symbols: dict[str, tuple[int, str]], symbol: str, size: int, where: str) -> None:
    if symbol in symbols and symbols[symbol][0] != size:
        size0, where0 = symbols[symbol]
        raise PassError(f"static-shape: dimension '{symbol}' is {size0} for input '{where0}' but {size} for '{where}'")
    symbols.setdefault(symbol, (size, where))


def _resolve(have, want: int | None, symbols: dict[str, tuple[int, str]]):
    if want is not None:
        return want
    if isinstance(have, str) and have in symbols:
        return symbols[have][0]
    return have


def _fmt(dims: list) -> str:
    return "x".join(str(d) if d is not None else "?" for d in dims)

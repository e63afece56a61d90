"""An opset-aware graph builder: passes say what to compute, the builder decides how the opset spells it.

Every rule that changed between ONNX opsets about how an op takes its arguments lives here, once:

==============  ===============================================================================
op              what the builder emits
==============  ===============================================================================
Unsqueeze       ``axes`` attribute before 13, an int64 input from 13
Squeeze         the same; ``axes=None`` squeezes every 1-dim
Slice           ``starts/ends/axes`` attributes before 10 (steps must be 1), inputs from 10
Split           ``split`` attribute before 13, an input from 13; equal parts by output count
                before 18, ``num_outputs`` from 18
Reduce*         ``axes`` attribute; an input from 13 for ReduceSum, from 18 for the others
Resize          10: ``(X, scales)``, ``mode`` only; 11-12: ``roi`` and ``scales`` are required
                inputs, so absent ones become empty float constants (never an empty name);
                from 13 absent ``roi``/``scales`` are empty names; ``axes``, ``antialias`` and
                ``keep_aspect_ratio_policy`` only from 18
Shape           ``start/end`` attributes from 15; before, ``Shape`` then a ``Slice``
Cast, Concat    the same at every opset (``to`` accepts a numpy dtype or a TensorProto type)
==============  ===============================================================================

Usage::

    b = GraphBuilder(graph, prefix="label_upsample")   # opset: the graph's unless given
    y = b.unsqueeze(x, [1])
    z = b.op("Mul", [y, b.const(np.float32(2), "two")], dtype=np.float32)

API (stable; add, do not rename):

- ``GraphBuilder(graph, prefix, opset=None)``; ``b.graph``, ``b.opset``
- ``b.name(hint="") -> str``: a name unique in the graph (tensors and nodes), ``prefix/hint_N``
- ``b.const(value, hint="const", dtype=None) -> gs.Constant``; ``b.ints(values, hint)`` (1-D int64)
- ``b.op(op_type, inputs, attrs=None, *, dtype=None, shape=None, outputs=None, hint=None,
  domain=None) -> gs.Variable``: appends one node; returns its (first) output. ``outputs`` reuses
  given tensors (e.g. a detached output that keeps its name); ``None`` in ``inputs`` is an absent
  optional input (an empty name)
- ``b.multi(op_type, inputs, n, attrs=None, *, outputs=None, hint=None) -> list[gs.Variable]``
- ``b.unsqueeze(x, axes)``, ``b.squeeze(x, axes=None)``, ``b.slice(x, starts, ends, axes=None,
  steps=None)``, ``b.split(x, sizes, axis=0, outputs=None)`` (``sizes``: list, or an int count of
  equal parts), ``b.reduce(op, x, axes=None, keepdims=True)``, ``b.resize(x, *, scales=None,
  sizes=None, **attrs)``, ``b.cast(x, to)``, ``b.concat(xs, axis)``, ``b.shape(x, start=None,
  end=None)``: each accepts ``out=`` (a tensor to produce instead of a new one) and ``hint=``

Contract: nodes are appended to ``graph.nodes`` (call ``toposort`` before export if order matters);
list arguments that an opset takes as inputs become int64 constants, except Resize scales (float32).
An op the target opset cannot express with the given arguments raises ``BuildError`` (a
``PassError``: the pass should have checked, but the message names the op and the opset).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxforge.errors import PassError
from onnxforge.passes._graph import Namer

INT64_MAX = int(np.iinfo(np.int64).max)
#: Resize attributes that exist only from opset 18 (value that means "as before 18").
_RESIZE_18 = {"axes": None, "antialias": 0, "keep_aspect_ratio_policy": "stretch"}


class BuildError(PassError):
    """The target opset cannot express an op with the arguments given."""


class GraphBuilder:
    """Appends nodes to a graphsurgeon graph in the form its opset requires (see the module docstring)."""

    def __init__(self, graph: gs.Graph, prefix: str, opset: int | None = None) -> None:
        self.graph = graph
        self._opset = int(opset if opset is not None else (graph.opset or onnx.defs.onnx_opset_version()))
        self._namer = Namer(graph, prefix)

    @property
    def opset(self) -> int:
        """The default-domain opset nodes are built for."""
        return self._opset

    # -- names, constants, raw nodes --------------------------------------------------------------
    def name(self, hint: str = "") -> str:
        """A tensor or node name not used anywhere in the graph (nor by this builder before)."""
        return self._namer(hint)

    def const(self, value: Any, hint: str = "const", dtype: Any = None) -> gs.Constant:
        """A constant (an initializer on export) holding `value`."""
        return gs.Constant(self.name(hint), np.asarray(value, dtype=dtype))

    def ints(self, values: Sequence[int], hint: str = "ints") -> gs.Constant:
        """A 1-D int64 constant."""
        return self.const(np.array(list(values), dtype=np.int64).reshape(-1), hint)

    def op(
        self,
        op_type: str,
        inputs: Sequence[gs.Tensor | None],
        attrs: dict[str, Any] | None = None,
        *,
        dtype: Any = None,
        shape: Sequence[Any] | None = None,
        outputs: Sequence[gs.Variable] | None = None,
        hint: str | None = None,
        domain: str | None = None,
    ) -> gs.Variable:
        """Appends one node and returns its first output (new, typed by `dtype`/`shape`, unless `outputs`)."""
        if outputs is None:
            outputs = [gs.Variable(self.name(hint or op_type.lower()), dtype=dtype, shape=list(shape) if shape is not None else None)]
        else:
            outputs = list(outputs)
            for out in outputs:
                if dtype is not None and out.dtype is None:
                    out.dtype = dtype
                if shape is not None and out.shape is None:
                    out.shape = list(shape)
        self._append(op_type, inputs, attrs, outputs, hint, domain)
        return outputs[0]

    def multi(
        self,
        op_type: str,
        inputs: Sequence[gs.Tensor | None],
        n: int,
        attrs: dict[str, Any] | None = None,
        *,
        outputs: Sequence[gs.Variable] | None = None,
        hint: str | None = None,
    ) -> list[gs.Variable]:
        """Appends one node with `n` outputs (new unless `outputs`) and returns them."""
        outs = list(outputs) if outputs is not None else [gs.Variable(self.name(hint or op_type.lower())) for _ in range(n)]
        if len(outs) != n:
            raise ValueError(f"{op_type}: {n} outputs wanted, {len(outs)} given")
        self._append(op_type, inputs, attrs, outs, hint, None)
        return outs

    def _append(self, op_type: str, inputs, attrs, outputs, hint, domain) -> gs.Node:
        ins = [gs.Variable.empty() if t is None else t for t in inputs]
        while ins and ins[-1].name == "":  # trailing absent inputs are simply omitted
            ins.pop()
        node = gs.Node(op_type, name=self.name(hint or op_type), attrs=dict(attrs or {}), inputs=ins, outputs=list(outputs), domain=domain)
        self.graph.nodes.append(node)
        return node

    def _fail(self, op_type: str, why: str) -> BuildError:
        return BuildError(f"cannot build {op_type} at opset {self.opset}: {why}")

    # -- ops whose form depends on the opset ------------------------------------------------------
    def unsqueeze(self, x: gs.Tensor, axes: Sequence[int], *, out: gs.Variable | None = None, hint: str | None = None) -> gs.Variable:
        """Unsqueeze(x) at `axes`: attribute before opset 13, input from 13."""
        axes = [int(a) for a in axes]
        if self.opset < 13:
            return self.op("Unsqueeze", [x], {"axes": axes}, outputs=_one(out), hint=hint)
        return self.op("Unsqueeze", [x, self.ints(axes, "axes")], outputs=_one(out), hint=hint)

    def squeeze(self, x: gs.Tensor, axes: Sequence[int] | None = None, *, out: gs.Variable | None = None, hint: str | None = None) -> gs.Variable:
        """Squeeze(x) at `axes` (every 1-dim when None): attribute before opset 13, input from 13."""
        if axes is None:
            return self.op("Squeeze", [x], outputs=_one(out), hint=hint)
        axes = [int(a) for a in axes]
        if self.opset < 13:
            return self.op("Squeeze", [x], {"axes": axes}, outputs=_one(out), hint=hint)
        return self.op("Squeeze", [x, self.ints(axes, "axes")], outputs=_one(out), hint=hint)

    def slice(
        self,
        x: gs.Tensor,
        starts: Sequence[int],
        ends: Sequence[int],
        axes: Sequence[int] | None = None,
        steps: Sequence[int] | None = None,
        *,
        out: gs.Variable | None = None,
        hint: str | None = None,
    ) -> gs.Variable:
        """Slice(x): attributes before opset 10 (no steps there), inputs from 10. Ends are clamped as ONNX does."""
        starts, ends = [int(s) for s in starts], [int(e) for e in ends]
        if self.opset < 10:
            if steps is not None and any(int(s) != 1 for s in steps):
                raise self._fail("Slice", "steps other than 1 need opset 10")
            attrs: dict[str, Any] = {"starts": starts, "ends": ends}
            if axes is not None:
                attrs["axes"] = [int(a) for a in axes]
            return self.op("Slice", [x], attrs, outputs=_one(out), hint=hint)
        ins: list[gs.Tensor | None] = [x, self.ints(starts, "starts"), self.ints(ends, "ends")]
        if axes is not None or steps is not None:
            ins.append(self.ints(axes, "axes") if axes is not None else self.ints(range(len(starts)), "axes"))
        if steps is not None:
            ins.append(self.ints(steps, "steps"))
        return self.op("Slice", ins, outputs=_one(out), hint=hint)

    def split(
        self,
        x: gs.Tensor,
        sizes: Sequence[int] | int,
        axis: int = 0,
        *,
        outputs: Sequence[gs.Variable] | None = None,
        hint: str | None = None,
    ) -> list[gs.Variable]:
        """Split(x) along `axis` into the given `sizes`, or into `sizes` equal parts when an int.

        Sizes: the `split` attribute before opset 13, an input from 13. Equal parts: implied by the
        number of outputs before 18, the `num_outputs` attribute from 18.
        """
        attrs: dict[str, Any] = {"axis": int(axis)}
        if isinstance(sizes, (int, np.integer)):
            n = int(sizes)
            if self.opset >= 18:
                attrs["num_outputs"] = n
            return self.multi("Split", [x], n, attrs, outputs=outputs, hint=hint)
        sizes = [int(s) for s in sizes]
        if self.opset < 13:
            attrs["split"] = sizes
            return self.multi("Split", [x], len(sizes), attrs, outputs=outputs, hint=hint)
        return self.multi("Split", [x, self.ints(sizes, "split")], len(sizes), attrs, outputs=outputs, hint=hint)

    def reduce(
        self,
        op: str,
        x: gs.Tensor,
        axes: Sequence[int] | None = None,
        keepdims: bool = True,
        *,
        out: gs.Variable | None = None,
        hint: str | None = None,
    ) -> gs.Variable:
        """A Reduce* op over `axes` (all axes when None): `axes` is an input from opset 13 for
        ReduceSum and from 18 for the others, an attribute before."""
        if not op.startswith("Reduce"):
            raise ValueError(f"not a Reduce op: {op}")
        attrs: dict[str, Any] = {"keepdims": int(bool(keepdims))}
        moved_at = 13 if op == "ReduceSum" else 18
        if axes is None:
            return self.op(op, [x], attrs, outputs=_one(out), hint=hint)
        axes = [int(a) for a in axes]
        if self.opset < moved_at:
            attrs["axes"] = axes
            return self.op(op, [x], attrs, outputs=_one(out), hint=hint)
        return self.op(op, [x, self.ints(axes, "axes")], attrs, outputs=_one(out), hint=hint)

    def resize(
        self,
        x: gs.Tensor,
        *,
        scales: gs.Tensor | Sequence[float] | None = None,
        sizes: gs.Tensor | Sequence[int] | None = None,
        roi: gs.Tensor | Sequence[float] | None = None,
        out: gs.Variable | None = None,
        hint: str | None = None,
        **attrs: Any,
    ) -> gs.Variable:
        """Resize(x) to `scales` (float32) or `sizes` (int64), given as tensors or lists; exactly one.

        Opset 10 takes (X, scales) and the `mode` attribute only. 11 and 12 require `roi` and
        `scales` as inputs: absent ones are emitted as empty float32 constants. From 13 absent ones
        are empty names. `axes`, `antialias`, `keep_aspect_ratio_policy` exist from 18 only (their
        pre-18 values are accepted and dropped below 18).
        """
        if (scales is None) == (sizes is None):
            raise ValueError("Resize: give exactly one of scales and sizes")
        if self.opset < 10:
            raise self._fail("Resize", "Resize needs opset 10 (Upsample before)")
        if self.opset < 18:
            for key, neutral in _RESIZE_18.items():
                if key in attrs:
                    value = attrs.pop(key)
                    value = value.decode() if isinstance(value, bytes) else value
                    if key == "axes" and value is not None:
                        raise self._fail("Resize", "the axes attribute needs opset 18")
                    if key != "axes" and value != neutral:
                        raise self._fail("Resize", f"{key}={value!r} needs opset 18")
        scales_t = self._tensor(scales, np.float32, "scales")
        sizes_t = self._tensor(sizes, np.int64, "sizes")
        roi_t = self._tensor(roi, np.float32, "roi")
        if self.opset == 10:
            extra = sorted(set(attrs) - {"mode"})
            if sizes_t is not None or roi_t is not None or extra:
                what = "sizes" if sizes_t is not None else "roi" if roi_t is not None else f"attribute {extra[0]!r}"
                raise self._fail("Resize", f"{what} needs opset 11 (Resize-10 takes scales and mode only)")
            return self.op("Resize", [x, scales_t], attrs, outputs=_one(out), hint=hint)
        if self.opset < 13:
            roi_t = roi_t if roi_t is not None else self.const(np.zeros([0], np.float32), "roi")
            scales_t = scales_t if scales_t is not None else self.const(np.zeros([0], np.float32), "scales")
        return self.op("Resize", [x, roi_t, scales_t, sizes_t], attrs, outputs=_one(out), hint=hint)

    def _tensor(self, value: gs.Tensor | Sequence[Any] | None, dtype: Any, hint: str) -> gs.Tensor | None:
        if value is None or isinstance(value, gs.Tensor):
            return value
        return self.const(np.array(list(value), dtype=dtype), hint)

    def cast(self, x: gs.Tensor, to: Any, *, out: gs.Variable | None = None, hint: str | None = None) -> gs.Variable:
        """Cast(x) to `to`: a numpy dtype (np.int64) or an onnx.TensorProto element type."""
        if isinstance(to, (int, np.integer)) and not isinstance(to, bool):
            elem = int(to)
            dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        else:
            dtype = np.dtype(to)
            elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
        return self.op("Cast", [x], {"to": elem}, dtype=dtype, outputs=_one(out), hint=hint)

    def concat(self, xs: Sequence[gs.Tensor], axis: int, *, out: gs.Variable | None = None, hint: str | None = None) -> gs.Variable:
        """Concat(xs) along `axis`."""
        return self.op("Concat", list(xs), {"axis": int(axis)}, outputs=_one(out), hint=hint)

    def shape(
        self, x: gs.Tensor, start: int | None = None, end: int | None = None, *, out: gs.Variable | None = None, hint: str | None = None,
    ) -> gs.Variable:
        """Shape(x)[start:end] (int64): attributes from opset 15, Shape then Slice before."""
        if start in (None, 0) and end is None:
            return self.op("Shape", [x], dtype=np.int64, outputs=_one(out), hint=hint)
        if self.opset >= 15:
            attrs: dict[str, Any] = {"start": int(start or 0)}
            if end is not None:
                attrs["end"] = int(end)
            return self.op("Shape", [x], attrs, dtype=np.int64, outputs=_one(out), hint=hint)
        full = self.op("Shape", [x], dtype=np.int64, hint=hint)
        sliced = self.slice(full, [int(start or 0)], [INT64_MAX if end is None else int(end)], [0], out=out, hint=hint)
        sliced.dtype = np.int64
        return sliced


def _one(out: gs.Variable | None) -> list[gs.Variable] | None:
    return None if out is None else [out]

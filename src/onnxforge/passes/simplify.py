"""simplify: onnxsim's constant folding, shape inference and dead-code removal, then what onnxslim adds.

Before -> After::

    Shape -> Gather -> Unsqueeze -> Concat -> Reshape(x, ·)     Reshape(x, const)
    Conv -> BatchNormalization                               ->  Conv (BN folded)
    Conv -> Add(bias) / Mul(scale), Pad -> Conv                  Conv (folded into weights, pads)
    MatMul -> Add (2-D)                                          Gemm
    Identity / Dropout(eval) / unused nodes                      (removed)

onnxsim, then what onnxslim would still add, mostly done by onnxforge's own passes (onnxslim is pure
Python and several times slower than onnxsim; what it adds after onnxsim was measured on the
third-party corpus, benchmarks/RESULTS.md section 7):
1. onnxsim with its defaults (`initializers_as_constants` on: paddle2onnx and other exporters list
   weights among the graph inputs, and onnxsim only folds BatchNormalization into Conv once those are
   constants; the old `initializers_as_constants=False` left 27 BN nodes of a classifier unfolded);
2. (`slim=true`, the default) onnxsim's folded weights, left as Constant nodes, become initializers
   (what onnxslim's export does); `whole-shape` (a Concat rebuilding a tensor's shape from its
   dims is that tensor's Shape; onnxsim then runs again to fold what that makes foldable);
   `unflatten-gemm` (onnxsim 0.8.1 rewrites an N-D MatMul + Add into Reshape -> Gemm -> Reshape, with
   Shape -> Slice -> Concat for dynamic dims: MatMul + Add again, as onnxslim keeps it);
   `transpose-to-reshape` (Transposes of size-1 axes next to Reshapes, Reshape chains: onnxslim's
   EliminationTransposeAsReshape, the only one of its 20 patterns that still fired after onnxsim on
   the corpus);
3. onnxslim itself (its whole loop, on step 2's result, with its symbolic shape inference) only where
   that inference can still fold something: a dynamic graph in which a Shape or Size reads a tensor
   whose rank ONNX's shape inference lost (a Reshape to a computed target, typically at opset 11;
   timm edgenext: 508 nodes instead of 588). `thorough=true` runs it on every graph. Its result is
   kept when it has fewer nodes.
On the corpus (73 graphs) the result is never larger than onnxsim's or onnxslim's own output, and
smaller than both on 13. Where onnxsim fails on a graph, onnxslim alone (with its shape inference)
decides. Either tool failing on a graph leaves the other's result (with a note); both failing is a PassError.

Legal whenever the tools can infer the graph: every rewrite preserves outputs to float rounding, so the
pass is exact and the manager checks it numerically. Graph input and output names are preserved;
initializers that an exporter also listed as graph inputs stop being inputs (as onnxsim does).
Statistics add up: `nodes_before - nodes_after` equals the sum of `ops_removed` minus `ops_added`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from onnxforge.errors import ForgeError, PassError
from onnxforge.numerics import input_specs
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, option
from onnxforge.passes.registry import register

log = logging.getLogger(__name__)

_BN_FUSIONS = ["FusionConvBN", "FusionConvTransposeBN"]
#: What `_finish` runs after onnxsim, named in the note of a graph left as it was.
FOLLOW_UPS = "initializers, whole-shape, unflatten-gemm, transpose-to-reshape"


@dataclass(frozen=True)
class SimplifyOptions:
    fuse_bn: bool = option(True, "fold BatchNormalization into the preceding Conv")
    optimize: bool = option(True, "run onnxsim's graph optimizations besides constant folding")
    slim: bool = option(True, "then what onnxslim adds (its own passes here; onnxslim itself where ONNX shape inference lost a rank)")
    thorough: bool = option(False, "also run onnxslim's whole loop after onnxsim on every graph, keeping the smaller (slower)")


@register
class Simplify(Pass):
    name = "simplify"
    summary = "onnxsim (folding, shapes, dead code, BN), then what onnxslim adds: never larger than either on the corpus"
    kind = PassKind.EXACT
    Options = SimplifyOptions

    def run(self, state: ModelState) -> PassResult:
        model = state.to_model()
        before = Counter(n.op_type for n in model.graph.node)
        notes: list[str] = []
        best, tools = model, []
        try:
            best, tools = self._onnxsim(model), ["onnxsim"]
        except Exception as exc:  # onnxsim raises RuntimeError/ValueError/its own errors
            sim_error = _one_line(exc)
            notes.append(f"onnxsim failed ({sim_error}); onnxslim only")
        else:
            sim_error = ""
        if self.options.slim:
            sim_ok = bool(tools)
            if sim_ok:
                best, tools = self._finish(best, tools, notes)
            try:
                dynamic = any(not spec.is_static for spec in input_specs(model))
            except ForgeError:  # an input type numpy cannot hold: as if dynamic
                dynamic = True
            # one onnxslim run at most, and only where it can still win (benchmarks/RESULTS.md section 7)
            if not sim_ok:
                source, infer, ran = model, True, "alone"  # onnxsim failed: onnxslim with its own shape inference
            elif self.options.thorough or (dynamic and _rank_lost(best)):
                source, infer = best, dynamic  # its symbolic shape inference matters only for dynamic inputs
                ran = "after onnxsim, with its symbolic shape inference" if infer else "after onnxsim"
            else:
                source, ran = None, ""
            error = ""
            if source is not None:
                try:
                    slimmed = self._onnxslim(source, shape_infer=infer)
                except Exception as exc:  # onnxslim raises whatever its graph code raises
                    error = _one_line(exc)
                else:
                    if len(slimmed.graph.node) < len(best.graph.node) or not tools:
                        best, tools = slimmed, tools + ["onnxslim"]
            if error and not tools:
                raise PassError(f"onnxsim failed: {sim_error}; onnxslim failed: {error}") from None
            if error:
                notes.append(f"onnxslim failed ({error}); onnxsim's result kept")
        elif sim_error:
            raise PassError(f"onnxsim failed: {sim_error}") from None
        after = Counter(n.op_type for n in best.graph.node)
        if not tools or (len(best.graph.node) == len(model.graph.node) and _computation(best) == _computation(model)):
            tried = "onnxsim"
            if self.options.slim:
                tried += f", its follow-ups ({FOLLOW_UPS}){' and onnxslim' if ran else ''}"
            return PassResult(False, {"nodes": sum(before.values())}, notes=[f"already simplified: {tried} found nothing to fold, fuse or remove"])
        state.replace(best)
        removed, added = before - after, after - before
        stats: dict[str, int | str] = {
            "nodes_before": sum(before.values()),
            "nodes_after": sum(after.values()),
            "nodes_removed": sum(before.values()) - sum(after.values()),
            "by": "+".join(tools),
        }
        if self.options.slim:
            stats["onnxslim_runs"] = ran or "none (nothing left it could win)"
        if removed:
            stats["ops_removed"] = ", ".join(f"{op}x{n}" for op, n in removed.most_common())
        if added:
            stats["ops_added"] = ", ".join(f"{op}x{n}" for op, n in added.most_common())
        return PassResult(True, stats, notes=notes)

    def _finish(self, model: onnx.ModelProto, tools: list[str], notes: list[str]) -> tuple[onnx.ModelProto, list[str]]:
        """What onnxslim would still find in onnxsim's result, done by onnxforge at a fraction of its
        cost: Constant nodes as initializers (onnxslim's export), `whole-shape` (a Concat rebuilding a
        tensor's shape is its Shape; onnxsim then runs again to fold what that makes foldable) and
        `unflatten-gemm` (onnxsim's Reshape -> Gemm -> Reshape of an N-D Linear, MatMul + Add again)."""
        from onnxforge.passes import transpose_to_reshape, unflatten_gemm, whole_shape

        held = _constants_as_initializers(model)
        tools = tools + (["initializers"] if held is not model else [])
        whole, ran = _run_passes(held, [(whole_shape.WholeShapePass(), whole_shape.has_candidates)])
        if ran:
            try:
                held, tools = _constants_as_initializers(self._onnxsim(whole)), tools + ran + ["onnxsim"]
            except Exception as exc:  # onnxsim raises RuntimeError/ValueError/its own errors
                held, tools = whole, tools + ran
                notes.append(f"onnxsim failed after whole-shape ({_one_line(exc)}); whole-shape's result kept")
        held, ran = _run_passes(held, [(unflatten_gemm.UnflattenGemm(), unflatten_gemm.has_candidates),
                                       (transpose_to_reshape.TransposeToReshape(), transpose_to_reshape.has_candidates)])
        return held, tools + ran

    def _onnxsim(self, model: onnx.ModelProto) -> onnx.ModelProto:
        import onnxsim

        simplified, _ = onnxsim.simplify(
            model, check_n=0, perform_optimization=self.options.optimize, skip_fuse_bn=not self.options.fuse_bn,
        )
        return simplified

    def _onnxslim(self, model: onnx.ModelProto, shape_infer: bool) -> onnx.ModelProto:
        import onnxslim

        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # onnxslim freezes its input in place
        skip = None if self.options.fuse_bn else list(_BN_FUSIONS)
        out = onnxslim.slim(copy, skip_fusion_patterns=skip, no_shape_infer=not shape_infer)
        if out is None:
            raise RuntimeError("onnxslim returned no model")
        return out


def _constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Top-level Constant nodes (tensor, float(s), int(s) values) become initializers, as onnxslim's export
    does: exact, and on the corpus most of what onnxslim removes after onnxsim. Left alone: IR < 4 (an
    initializer must then be a graph input), a Constant that is a graph output, sparse and string values."""
    from onnx import helper, numpy_helper

    if model.ir_version < 4:
        return model
    outputs = {o.name for o in model.graph.output}
    inits = {}
    for i, node in enumerate(model.graph.node):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1 or node.output[0] in outputs:
            continue
        a = node.attribute[0]
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR and a.t.data_type != onnx.TensorProto.STRING:
            t = onnx.TensorProto()
            t.CopyFrom(a.t)
            if t.data_location == onnx.TensorProto.EXTERNAL:
                continue
        elif a.name in ("value_float", "value_floats"):
            t = numpy_helper.from_array(np.asarray(helper.get_attribute_value(a), np.float32))
        elif a.name in ("value_int", "value_ints"):
            t = numpy_helper.from_array(np.asarray(helper.get_attribute_value(a), np.int64))
        else:
            continue
        t.name = node.output[0]
        inits[i] = t
    if not inits:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i in sorted(inits, reverse=True):
        del out.graph.node[i]
    out.graph.initializer.extend(inits[i] for i in sorted(inits))
    return out


def _run_passes(model: onnx.ModelProto, steps: list[tuple[Pass, Callable[[onnx.ModelProto], bool]]]) -> tuple[onnx.ModelProto, list[str]]:
    """The passes whose cheap check finds candidates in `model` (on the ModelProto, no import), in order
    on one ModelState: one graph import and one export for all of them, dead nodes removed. Returns the
    model (itself when nothing changed) and the names of the passes that changed it."""
    chosen = [p for p, has_candidates in steps if has_candidates(model)]
    if not chosen:
        return model, []
    state = ModelState(model)
    ran = [p.name for p in chosen if p.run(state).modified]
    if not ran:
        return model, []
    state.graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return state.release(), ran


def _rank_lost(model: onnx.ModelProto) -> bool:
    """Whether a Shape or Size reads a tensor whose rank ONNX shape inference (with data propagation)
    does not know: typically a Reshape whose target is computed at run time. Only there can onnxslim's
    symbolic shape inference still fold something onnxsim and `whole-shape` could not (timm edgenext
    exported at opset 11: 508 nodes instead of 588); on every other graph it only costs time."""
    from onnxforge.passes._graph import inferred_types

    readers = [n.input[0] for n in model.graph.node if n.op_type in ("Shape", "Size") and n.input]
    if not readers:
        return False
    types = inferred_types(model)
    return any(name not in types for name in readers)


def _one_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _computation(model) -> tuple:
    """What the graph computes, ignoring annotations the tools add (value_info, doc strings)."""
    nodes = tuple((n.op_type, tuple(n.input), tuple(n.output), tuple(a.SerializeToString() for a in n.attribute)) for n in model.graph.node)
    inits = tuple(sorted((t.name, tuple(t.dims), t.data_type) for t in model.graph.initializer))
    return nodes, inits

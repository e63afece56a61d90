"""simplify: onnxsim's constant folding, shape inference and dead-code removal, then onnxslim's fusions.

Before -> After::

    Shape -> Gather -> Unsqueeze -> Concat -> Reshape(x, ·)     Reshape(x, const)
    Conv -> BatchNormalization                               ->  Conv (BN folded)
    Conv -> Add(bias) / Mul(scale), Pad -> Conv                  Conv (folded into weights, pads)
    MatMul -> Add                                                Gemm
    Identity / Dropout(eval) / unused nodes                      (removed)

Two stages, each a peer's own implementation, so the pass is never weaker than either peer:
1. onnxsim with its defaults (`initializers_as_constants` on: paddle2onnx and other exporters list
   weights among the graph inputs, and onnxsim only folds BatchNormalization into Conv once those are
   constants; the old `initializers_as_constants=False` left 27 BN nodes of a classifier unfolded);
2. onnxslim (`slim=True`): its pattern fusions (Conv+BN, Conv+Add, Conv+Mul, Pad+Conv, MatMul+Add ->
   Gemm, Reduce and Concat+Reshape chains, Reshape/Transpose eliminations), constants as initializers,
   and its own constant folding, considered twice: on onnxsim's result (reusing its shapes) and on the
   input (with onnxslim's symbolic shape inference, which folds more on dynamic transformer exports).
   The graph with the fewest nodes of onnxsim's, onnxslim-after-onnxsim's and onnxslim's wins (earlier
   on ties), so the result is never larger than either peer's output.
   onnxslim is pure Python and several times slower than onnxsim, so each run happens only where it can
   still win (measured on the third-party corpus, benchmarks/RESULTS.md section 7):
   - onnxsim leaves folded weights as Constant nodes; they become initializers here (what onnxslim's
     export does: on the corpus most of what onnxslim removed after onnxsim);
   - onnxslim after onnxsim runs only when one pass of its graph optimizations (fusions, dead-node and
     common-subexpression elimination, weight tying, on its imported graph) changes onnxsim's result;
   - onnxslim alone runs only for dynamic inputs when Shape/Size ops are left: its symbolic shape
     inference is what it has that onnxsim lacks, and with no shape computation left it has nothing
     to fold (static inputs: onnxsim's shapes are complete).
Either tool failing on a graph leaves the other's result (with a note); both failing is a PassError.

Legal whenever the tools can infer the graph: every rewrite preserves outputs to float rounding, so the
pass is exact and the manager checks it numerically. Graph input and output names are preserved;
initializers that an exporter also listed as graph inputs stop being inputs (as onnxsim does).
Statistics add up: `nodes_before - nodes_after` equals the sum of `ops_removed` minus `ops_added`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx

from onnxforge.errors import ForgeError, PassError
from onnxforge.numerics import input_specs
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, option
from onnxforge.passes.registry import register

log = logging.getLogger(__name__)

_BN_FUSIONS = ["FusionConvBN", "FusionConvTransposeBN"]


@dataclass(frozen=True)
class SimplifyOptions:
    fuse_bn: bool = option(True, "fold BatchNormalization into the preceding Conv")
    optimize: bool = option(True, "run onnxsim's graph optimizations besides constant folding")
    slim: bool = option(True, "then onnxslim's pattern fusions, kept where they make the graph smaller")


@register
class Simplify(Pass):
    name = "simplify"
    summary = "onnxsim (folding, shapes, dead code, BN) then onnxslim's fusions; the smaller graph"
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
            if tools:  # what onnxslim's export does after onnxsim, without its cost
                held = _constants_as_initializers(best)
                best, tools = held, tools + (["initializers"] if held is not best else [])
            # two orders, because neither wins everywhere: onnxslim after onnxsim reuses onnxsim's inferred
            # shapes (fast), onnxslim alone runs its symbolic shape inference, which on dynamic
            # transformer exports folds what onnxsim leaves (timm deit: 342 nodes vs 399)
            try:  # static inputs: onnxsim's shapes are complete and onnxslim alone finds nothing more
                dynamic = any(not spec.is_static for spec in input_specs(model))
            except ForgeError:  # an input type numpy cannot hold: try both
                dynamic = True
            sim_ok = bool(tools)
            if not sim_ok:
                runs = [(model, True, ["onnxslim"])]  # onnxslim only, with its own shape inference
            else:
                runs = [(best, False, tools + ["onnxslim"])] if self._slim_finds_more(best) else []
                runs.append((model, True, ["onnxslim"]))  # decided at its turn, on the best graph so far
            errors, ran = [], []
            for source, infer, label in runs:
                if sim_ok and source is model and not (dynamic and _has_shape_ops(best)):
                    continue  # onnxslim alone: only its symbolic shape inference can win, on Shape ops left
                ran.append("alone" if source is model else "after onnxsim")
                try:
                    slimmed = self._onnxslim(source, shape_infer=infer)
                except Exception as exc:  # onnxslim raises whatever its graph code raises
                    errors.append(_one_line(exc))
                    continue
                if len(slimmed.graph.node) < len(best.graph.node) or not tools:
                    best, tools = slimmed, label
            if errors and not tools:
                raise PassError(f"onnxsim failed: {sim_error}; onnxslim failed: {errors[0]}") from None
            if errors:
                notes.append(f"onnxslim failed ({errors[0]}); the other result kept")
        elif sim_error:
            raise PassError(f"onnxsim failed: {sim_error}") from None
        after = Counter(n.op_type for n in best.graph.node)
        if not tools or _computation(best) == _computation(model):
            tried = "onnxsim and onnxslim" if self.options.slim else "onnxsim"
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
            stats["onnxslim_runs"] = ", ".join(ran) or "none (nothing left it could win)"
        if removed:
            stats["ops_removed"] = ", ".join(f"{op}x{n}" for op, n in removed.most_common())
        if added:
            stats["ops_added"] = ", ".join(f"{op}x{n}" for op, n in added.most_common())
        return PassResult(True, stats, notes=notes)

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

    def _slim_finds_more(self, model: onnx.ModelProto) -> bool:
        """Whether onnxslim's graph optimizations (its fusion patterns, dead-node and common-subexpression
        elimination, weight tying) change onnxsim's result: one pass of them, a fraction of onnxslim's
        whole loop (up to 10 rounds of constant folding on a copied graph and all of these). On onnxsim's
        output, onnxslim's wins on the corpus are these and constants turned into initializers (done by
        `_constants_as_initializers`); when this finds nothing, the full run is skipped. Any doubt (the
        internals moved, an exception) answers True: the full run decides."""
        try:
            import onnxslim.third_party.onnx_graphsurgeon as slim_gs
            from onnxslim.core.optimization import (
                dead_node_elimination, get_fusion_patterns, graph_fusion, subexpression_elimination, tie_weights,
            )
        except ImportError:
            return True
        try:  # onnxslim's optimize_model, on the imported graph (no copy of the model, no export of its weights)
            graph = slim_gs.import_onnx(model)
            before = _gs_signature(graph)
            graph_fusion(graph, get_fusion_patterns(None if self.options.fuse_bn else list(_BN_FUSIONS)))
            dead_node_elimination(graph)
            graph.cleanup(remove_unused_graph_inputs=True).toposort()
            subexpression_elimination(graph)
            graph.cleanup(remove_unused_graph_inputs=True).toposort()
            tie_weights(graph)
            return _gs_signature(graph) != before
        except Exception:  # noqa: BLE001 - onnxslim raises whatever its graph code raises; the full run reports it
            return True


def _gs_signature(graph) -> tuple:
    """An onnx-graphsurgeon graph's structure, order-free: each node's op and input and output names
    (what onnxslim's fusions, eliminations and weight tying change: a fused or removed node, new weights)."""
    nodes = sorted((n.op, tuple(t.name for t in n.inputs), tuple(t.name for t in n.outputs)) for n in graph.nodes)
    return tuple(nodes), tuple(t.name for t in graph.inputs), tuple(t.name for t in graph.outputs)


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


def _has_shape_ops(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("Shape", "Size") for n in model.graph.node)


def _one_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _computation(model) -> tuple:
    """What the graph computes, ignoring annotations the tools add (value_info, doc strings)."""
    nodes = tuple((n.op_type, tuple(n.input), tuple(n.output), tuple(a.SerializeToString() for a in n.attribute)) for n in model.graph.node)
    inits = tuple(sorted((t.name, tuple(t.dims), t.data_type) for t in model.graph.initializer))
    return nodes, inits

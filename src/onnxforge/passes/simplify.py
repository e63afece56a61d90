"""simplify: onnxsim's constant folding, shape inference and dead-code removal.

Before -> After::

    Shape -> Gather -> Unsqueeze -> Concat -> Reshape(x, ·)     Reshape(x, const)
    Conv -> BatchNormalization                               ->  Conv (BN folded)
    Identity / Dropout(eval) / unused nodes                      (removed)

Legal whenever onnxsim can infer the graph: every rewrite preserves outputs to float rounding, so the
pass is exact and the manager checks it numerically. Graph input and output names are preserved.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from onnxforge.errors import PassError
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, option
from onnxforge.passes.registry import register


@dataclass(frozen=True)
class SimplifyOptions:
    fuse_bn: bool = option(True, "fold BatchNormalization into the preceding Conv")
    optimize: bool = option(True, "run onnxsim's graph optimizations besides constant folding")


@register
class Simplify(Pass):
    name = "simplify"
    summary = "onnxsim: constant folding, shape inference, dead code removal"
    kind = PassKind.EXACT
    Options = SimplifyOptions

    def run(self, state: ModelState) -> PassResult:
        import onnxsim

        model = state.to_model()
        before = Counter(n.op_type for n in model.graph.node)
        try:
            simplified, _ = onnxsim.simplify(
                model,
                check_n=0,
                perform_optimization=self.options.optimize,
                skip_fuse_bn=not self.options.fuse_bn,
                initializers_as_constants=False,
            )
        except Exception as exc:  # onnxsim raises RuntimeError/ValueError/its own errors
            raise PassError(f"onnxsim failed: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}") from None
        after = Counter(n.op_type for n in simplified.graph.node)
        changed = _computation(simplified) != _computation(model)
        if not changed:
            return PassResult(False, {"nodes": sum(before.values())}, notes=["already simplified: onnxsim found nothing to fold or remove"])
        state.replace(simplified)
        removed = before - after
        stats: dict[str, int | str] = {"nodes_removed": sum(before.values()) - sum(after.values())}
        if removed:
            stats["ops_removed"] = ", ".join(f"{op}x{n}" for op, n in removed.most_common(6))
        return PassResult(True, stats)


def _computation(model) -> tuple:
    """What the graph computes, ignoring annotations onnxsim adds (value_info, doc strings)."""
    nodes = tuple((n.op_type, tuple(n.input), tuple(n.output), tuple(a.SerializeToString() for a in n.attribute)) for n in model.graph.node)
    inits = tuple(sorted((t.name, tuple(t.dims), t.data_type) for t in model.graph.initializer))
    return nodes, inits

"""Down-converters for element-wise comparisons that older opsets lack.

    GreaterOrEqual(a, b)            Or(Greater(a, b), Equal(a, b))   (12; LessOrEqual likewise)
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxforge.passes.target_opset.registry import DownConverter, converter


@converter("GreaterOrEqual", "LessOrEqual", changed_in=12)
def _or_equal(c: DownConverter, node: gs.Node) -> bool:
    strict = {"GreaterOrEqual": "Greater", "LessOrEqual": "Less"}[node.op]
    a, b = node.inputs

    def build(y: gs.Variable) -> None:
        c.add("Or", [c.add(strict, [a, b]), c.add("Equal", [a, b])], out=y)

    c.replace_single(node, build)
    return True

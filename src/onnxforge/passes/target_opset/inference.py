"""Down-converters for ops whose training-time outputs or modes arrived later; in inference they simplify.

    Dropout(x, ratio, training_mode=false)   Identity(x)       (12)
    BatchNormalization-14 (one output)       BatchNormalization with its extra outputs unused   (14)
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxforge.passes._graph import const_value, is_graph_output
from onnxforge.passes.target_opset.registry import DownConverter, Unsupported, converter, truncate


@converter("Dropout", changed_in=12)
def _dropout(c: DownConverter, node: gs.Node) -> bool:
    """Dropout in inference (training_mode absent or false) is the identity."""
    if len(node.inputs) > 2 and node.inputs[2].name:
        mode = const_value(node.inputs[2])
        if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
            raise Unsupported("training_mode is true or computed at run time")
    if len(node.outputs) > 1 and (node.outputs[1].outputs or is_graph_output(c.graph, node.outputs[1])):
        raise Unsupported("its mask output is used")
    node.op, node.attrs = "Identity", {}
    truncate(node.inputs, 1)
    truncate(node.outputs, 1)
    return True


@converter("BatchNormalization", changed_in=14)
def _batchnorm(c: DownConverter, node: gs.Node) -> bool:
    """BatchNormalization-14 in inference has one output; older versions allow optional extras."""
    if any(o.outputs or is_graph_output(c.graph, o) for o in node.outputs[1:]):
        raise Unsupported("its running statistics outputs are used")
    truncate(node.outputs, 1)
    return False

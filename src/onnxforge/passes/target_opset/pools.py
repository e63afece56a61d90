"""Down-converter for pools with ceil_mode, whose last window opset 22 counts differently.

    AveragePool<ceil_mode=1, pads>(x)  (22: a last window starting in the end padding is dropped)
        ->  Slice(AveragePool<ceil_mode=1, pads>(x), 0, out_22, spatial axes)         (also MaxPool)

With ceil_mode the output size is ``ceil((in + pads - k_eff) / s) + 1``. Version 22 (as PyTorch and
onnxruntime at every opset) drops the last window when it would start in the end padding, i.e. when
``(out - 1) * s >= in + pad_begin``; older schemas count it, so their shape inference disagrees with the
shape an exporter declares (and with what onnxruntime returns), and the checker rejects the model. A
Slice to the version-22 size keeps exactly the windows both definitions share: exact under either
reading of the older op. Exporters give the op this behaviour at every opset, so nodes already at an
older version are converted too. Needs static spatial sizes; with unknown sizes the node is left as is
(nothing can disagree) and a note says so.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxforge.passes._graph import is_graph_output, node_label, static_shape
from onnxforge.passes.target_opset.registry import DownConverter, Unsupported, attr_str, converter


def ceil_mode_sizes(size: int, kernel: int, stride: int, dilation: int, pad_begin: int, pad_end: int) -> tuple[int, int]:
    """(before 22, from 22) output sizes of one spatial axis of a pool with ceil_mode=1."""
    effective = (kernel - 1) * dilation + 1
    counted = -(-(size + pad_begin + pad_end - effective) // stride) + 1
    dropped = counted - 1 if (counted - 1) * stride >= size + pad_begin else counted
    return counted, dropped


@converter("AveragePool", "MaxPool", changed_in=22, needs_shape=True, also_older=True)
def _ceil_mode(c: DownConverter, node: gs.Node) -> bool:
    if not int(node.attrs.get("ceil_mode", 0)) or attr_str(node, "auto_pad", "NOTSET") != "NOTSET":
        return False
    kernel = [int(k) for k in node.attrs.get("kernel_shape", [])]
    shape = static_shape(node.inputs[0])
    if shape is None or len(shape) != len(kernel) + 2:
        c.notes.append(f"{node_label(node)}: ceil_mode with an unknown spatial size; left as is")
        return False
    n = len(kernel)
    strides = [int(v) for v in node.attrs.get("strides", [1] * n)]
    dilations = [int(v) for v in node.attrs.get("dilations", [1] * n)]
    pads = [int(v) for v in node.attrs.get("pads", [0] * (2 * n))]
    sizes = [ceil_mode_sizes(shape[2 + i], kernel[i], strides[i], dilations[i], pads[i], pads[n + i]) for i in range(n)]
    if all(old == new for old, new in sizes):
        return False
    if len(node.outputs) > 1 and (node.outputs[1].outputs or is_graph_output(c.graph, node.outputs[1])):
        raise Unsupported("ceil_mode's last window starts on the padding (dropped from opset 22) and its Indices output is used")
    y = c.detach(node)[0]
    pooled = c.build.name("pooled")
    node.outputs.append(gs.Variable(pooled, dtype=y.dtype))
    c.build.slice(node.outputs[0], [0] * n, [new for _, new in sizes], list(range(2, 2 + n)), out=y)
    return True

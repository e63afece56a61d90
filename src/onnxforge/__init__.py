"""onnxforge: an ONNX graph-optimization compiler frontend for porting PyTorch vision models.

Frontends export PyTorch models to ONNX, passes rewrite the graph (each verified), backends compile and
run it, and the evaluator measures what every pass costs in accuracy and gains in speed.
"""

from __future__ import annotations

__version__ = "0.1.0"

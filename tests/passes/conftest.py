"""Pass tests run their pass through the real manager, with verification, automatically.

`run_verified(pass_, model)` (also the `run_pass` fixture, and `helpers.apply`) applies one pass with
`PassManager` and the `Verifier` on: onnx.checker + strict shape inference, numerics against the
input for exact passes, the manager's cleanup and its contract check (modified=False leaves the model
unchanged). It returns the pass's own `PassResult` (with `Skip` objects) and the output model.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import onnx
import pytest

from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult
from onnxforge.passes.manager import PassManager


class _Recording(Pass):
    """Runs `inner` and keeps its PassResult; otherwise the same pass as far as the manager can tell."""

    def __init__(self, inner: Pass) -> None:  # no super().__init__: the inner pass is configured already
        self.inner = inner
        self.name = inner.name
        self.summary = inner.summary
        self.kind = inner.kind
        self.Options = inner.Options
        self.options = inner.options
        self.result: PassResult | None = None

    def effective_kind(self) -> PassKind:
        return self.inner.effective_kind()

    def expected_outputs(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.inner.expected_outputs(outputs)

    def run(self, state: ModelState) -> PassResult:
        self.result = self.inner.run(state)
        return self.result

    def __str__(self) -> str:
        return str(self.inner)


def run_verified(pass_obj: Pass, model: onnx.ModelProto, verify: bool = True) -> tuple[PassResult, onnx.ModelProto]:
    """Applies one pass through the PassManager (verification on) and returns (its result, the new model)."""
    recording = _Recording(pass_obj)
    out = PassManager([recording], verify=verify).run(model)
    assert recording.result is not None
    return recording.result, out.model


@pytest.fixture
def run_pass() -> Callable[..., Any]:
    """`run_pass(pass_, model) -> (PassResult, model)` through the verifying manager."""
    return run_verified

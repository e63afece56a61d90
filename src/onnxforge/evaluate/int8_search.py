"""Accuracy control for INT8: the smallest set of nodes kept in float that brings the model within budget.

The idea of OpenVINO NNCF's ``quantize_with_accuracy_control``, on onnxruntime QDQ models:

1. Calibrate once (`calibrate_ranges`), quantize every candidate node, and score the INT8 model
   against the float model on evaluation inputs (not the calibration inputs). Within budget: done,
   nothing is kept in float.
2. Rank the compute nodes (Conv, ConvTranspose, MatMul, Gemm among `Quantize.candidates`) by
   sensitivity: the score of the model quantized with that one node kept in float.
3. Greedily keep nodes in float in that order (each step re-quantizes from the cached ranges, so no
   calibration runs again) until the score is within budget or `max_keep` nodes are kept.

The score is agreement with the float model on the first output (`agreement_score`): top-1 agreement
for (N, C) logits, pixel agreement of the argmax for (N, C, H, W) logits, equality for integer
outputs, cosine similarity otherwise. The budget is the allowed drop, 1 - score (0.01 = 1%). A caller
with labels can pass its own `score(float_outputs, int8_outputs) -> float` instead.

The result names the nodes and the pipeline item (``quantize{...,exclude=a|b}``) that reproduces the
keep-set; the search uses the pass's per-node protocol (`candidates`, and `exclude=`) only.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from onnxforge.errors import ForgeError
from onnxforge.evaluate.agreement import cosine_similarity, pixel_agreement, top1_agreement
from onnxforge.numerics import cast_feeds, make_session
from onnxforge.passes.base import ModelState
from onnxforge.passes.quantize import COMPUTE_OPS, Quantize, calibrate_ranges, name_nodes

log = logging.getLogger(__name__)

Outputs = list[np.ndarray]  # the first output of each evaluation run
Score = Callable[[Outputs, Outputs], float]


def agreement_score(reference: Outputs, candidate: Outputs) -> float:
    """Agreement of `candidate`'s first outputs with `reference`'s, in [0, 1] (see the module docstring)."""
    values = []
    for r, c in zip(reference, candidate):
        if r.dtype.kind in "iub":
            values.append(pixel_agreement(r, c))
        elif r.ndim == 2 and r.shape[1] > 1:
            values.append(top1_agreement(r, c))
        elif r.ndim == 4 and r.shape[1] > 1:
            values.append(pixel_agreement(r.argmax(1), c.argmax(1)))
        else:
            values.append(cosine_similarity(r, c))
    return float(np.mean(values)) if values else 1.0


@dataclass
class KeepSearch:
    """What the search found. `keep` are the nodes kept in float; `item` the pipeline item to use."""

    keep: list[str]
    item: str
    score_all: float  # every candidate quantized
    score: float  # with `keep` in float
    within_budget: bool
    budget: float
    ranking: list[tuple[str, float]] = field(default_factory=list)  # node -> score with that node alone in float
    quantizations: int = 0  # how many INT8 models were built (one calibration in all)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def keep_in_float(
    model: onnx.ModelProto,
    feeds: Sequence[Mapping[str, np.ndarray]],
    budget: float = 0.01,
    quantize: Quantize | None = None,
    max_keep: int = 8,
    score: Score = agreement_score,
    threads: int = 0,
) -> KeepSearch:
    """Searches the smallest set of compute nodes to keep in float for `score` within `budget`.

    Args:
        model: the float model (after simplify).
        feeds: evaluation inputs, one dict per run (keep them apart from the calibration data).
        budget: the allowed drop of the score, 1 - score (0.01: 99% agreement).
        quantize: the configured pass (calibration source, method, exclusions); default `Quantize()`.
        max_keep: the most nodes kept in float before the search gives up (the result then says
            `within_budget=False` and holds the best set found).
        score: `score(float_outputs, int8_outputs) -> float` in [0, 1]; default `agreement_score`.
        threads: onnxruntime intra-op threads for the evaluation runs (0: its default).

    Raises:
        ForgeError: bad budget or no feeds; PassError from the pass (nothing to quantize, bad data).
    """
    if not 0 <= budget < 1:
        raise ForgeError(f"keep_in_float: budget must be in [0, 1), got {budget}")
    if not feeds:
        raise ForgeError("keep_in_float: no evaluation inputs")
    base = quantize or Quantize()
    model, _ = name_nodes(model)  # the names the pass gives unnamed nodes, so exclude= can name them
    reference = _first_outputs(model, feeds, threads)
    ops = {n.name: n.op_type for n in model.graph.node}
    candidates = [c for c in base.candidates(model) if ops.get(c) in COMPUTE_OPS]
    with tempfile.TemporaryDirectory(prefix="onnxforge-keep-") as tmp:
        ranges = calibrate_ranges(model, Path(tmp) / "ranges.json", base.options)
        counter = [0]

        def scored(keep: Sequence[str]) -> tuple[float, Quantize]:
            p = Quantize(dataclasses.replace(base.options, ranges=str(ranges), exclude=tuple(base.options.exclude) + tuple(keep)))
            state = ModelState(model)
            p.run(state)
            counter[0] += 1
            value = score(reference, _first_outputs(state.release(), feeds, threads))
            log.info("keep_in_float: %d node(s) in float -> score %.4f", len(keep), value)
            return value, p

        score_all, _ = scored([])
        if 1 - score_all <= budget:
            return KeepSearch([], _item(base, []), score_all, score_all, True, budget, [], counter[0])
        ranking = sorted(((c, scored([c])[0]) for c in candidates), key=lambda kv: (-kv[1], candidates.index(kv[0])))
        keep: list[str] = []
        best = score_all
        for name, _ in ranking[:max_keep]:
            keep.append(name)
            best = scored(keep)[0] if len(keep) > 1 else dict(ranking)[name]
            if 1 - best <= budget:
                break
        return KeepSearch(keep, _item(base, keep), score_all, best, 1 - best <= budget, budget, ranking, counter[0])


def _item(base: Quantize, keep: list[str]) -> str:
    """The pipeline item reproducing the keep-set (the pass's own options, `keep` added to exclude=)."""
    options = dataclasses.replace(base.options, ranges="", exclude=tuple(base.options.exclude) + tuple(keep))
    return str(Quantize(options))


def _first_outputs(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]], threads: int) -> Outputs:
    session = make_session(model, threads=threads)
    name = session.get_outputs()[0].name
    try:
        return [session.run([name], cast_feeds(model, f))[0] for f in feeds]
    except Exception as exc:  # onnxruntime raises its own types
        raise ForgeError(f"onnxruntime failed to run the model: {str(exc).splitlines()[0][:300]}") from None

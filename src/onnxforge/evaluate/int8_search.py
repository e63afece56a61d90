"""Accuracy control for INT8: the smallest set of nodes kept in float that brings the model within budget.

The idea of OpenVINO NNCF's ``quantize_with_accuracy_control``, on onnxruntime QDQ models:

1. Calibrate once (`Quantize.sharing_calibration`), quantize every candidate node, and score the INT8 model
   against the float model on evaluation inputs (not the calibration inputs). Within budget: done,
   nothing is kept in float.
2. Rank the compute nodes (Conv, ConvTranspose, MatMul, Gemm among `Quantize.candidates`) by
   sensitivity: the score of the model quantized with that one node kept in float.
3. Greedily keep nodes in float in that order (each step re-quantizes from the cached ranges, so no
   calibration runs again) until the score is within budget or `max_keep` nodes are kept.

Steps 2-3 are `keep_search.search_keep_set` (the machinery the fp16 search shares: sensitivity,
ranking, greedy, confirmation on the full set, evaluations counted).

By default the score is agreement with the float model on the first output (`agreement_score`):
top-1 agreement for (N, C) logits, pixel agreement of the argmax for (N, C, H, W) logits, equality for
integer outputs, cosine similarity otherwise, and the budget is the allowed drop, 1 - score (0.01 =
1%). With labels, pass `scorer=keep_search.task_scorer(...)` (mIoU / top-1 through the evaluator on
one plan) and a `history.Budget` (``1%`` relative or ``0.5pt`` absolute against the float model's
metric); a caller can also pass its own `score(float_outputs, int8_outputs) -> float`.

The result names the nodes and the pipeline item (``quantize{...,exclude=a|b}``) that reproduces the
keep-set; the search uses the pass's per-node protocol (`candidates`, and `exclude=`) only.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from onnxforge.errors import ForgeError
from onnxforge.evaluate.history import Budget
from onnxforge.evaluate.keep_search import Group, Outputs, Scorer, agreement_score, agreement_scorer, search_keep_set
from onnxforge.passes.base import ModelState
from onnxforge.passes.quantize import COMPUTE_OPS, Quantize, name_nodes

log = logging.getLogger(__name__)

__all__ = ["KeepSearch", "Score", "agreement_score", "keep_in_float"]  # agreement_score: from keep_search

Score = Callable[[Outputs, Outputs], float]


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
    quantizations: int = 0  # how many INT8 models were built and scored (one calibration in all)
    evaluations: int = 0  # of those, the ones scored on the search's own data (the rest: confirmations)
    baseline: float = 1.0  # the float model's score (1.0: agreement with itself)
    note: str = ""  # why the budget cannot be met, when it cannot
    budget_text: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def keep_in_float(
    model: onnx.ModelProto,
    feeds: Sequence[Mapping[str, np.ndarray]],
    budget: float | str | Budget = 0.01,
    quantize: Quantize | None = None,
    max_keep: int = 8,
    score: Score = agreement_score,
    threads: int = 0,
    *,
    scorer: Scorer | None = None,
    baseline: float | None = None,
    confirm: Scorer | None = None,
    confirm_baseline: float | None = None,
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
        scorer: judges a model instead of agreement on `feeds` (``model -> float``, higher is better),
            e.g. `keep_search.task_scorer` (mIoU / top-1 on a dataset with labels); `budget` is then a
            `history.Budget` (``1%``, ``0.5pt``, or a float: relative) against `baseline` (default:
            `scorer(model)`).
        confirm, confirm_baseline: the full-set scorer and its baseline (`keep_search.search_keep_set`).

    Raises:
        ForgeError: bad budget or no feeds; PassError from the pass (nothing to quantize, bad data).
    """
    if isinstance(budget, (int, float)) and not 0 <= budget < 1:
        raise ForgeError(f"keep_in_float: budget must be in [0, 1), got {budget}")
    if not feeds and scorer is None:
        raise ForgeError("keep_in_float: no evaluation inputs")
    base = quantize or Quantize()
    model, _ = name_nodes(model)  # the names the pass gives unnamed nodes, so exclude= can name them
    ops = {n.name: n.op_type for n in model.graph.node}
    candidates = [c for c in base.candidates(model) if ops.get(c) in COMPUTE_OPS]
    if scorer is None:
        scorer, baseline = agreement_scorer(model, feeds, threads, compare=score), 1.0
    elif baseline is None:
        baseline = float(scorer(model))
    with tempfile.TemporaryDirectory(prefix="onnxforge-keep-") as tmp:
        shared = base.sharing_calibration(model, tmp)  # one calibration for every candidate keep-set

        def build(keep: Sequence[str]) -> onnx.ModelProto:
            p = Quantize(dataclasses.replace(shared.options, exclude=tuple(base.options.exclude) + tuple(keep)))
            state = ModelState(model)
            p.run(state)
            return state.release()

        found = search_keep_set([Group(c, (c,)) for c in candidates], build, scorer, baseline, Budget.parse(budget),
                                confirm=confirm, confirm_baseline=confirm_baseline, max_keep=max_keep)
    ranking = [(s.group, s.kept) for s in found.ranking]
    return KeepSearch(found.keep, _item(base, found.keep), found.score_all, found.score, found.within_budget,
                      budget if isinstance(budget, (int, float)) else Budget.parse(budget).value, ranking,
                      found.evaluations + found.confirm_evaluations, found.evaluations, baseline, found.note,
                      str(Budget.parse(budget)))


def _item(base: Quantize, keep: list[str]) -> str:
    """The pipeline item reproducing the keep-set (the pass's own options, `keep` added to exclude=)."""
    options = dataclasses.replace(base.options, ranges="", exclude=tuple(base.options.exclude) + tuple(keep))
    return str(Quantize(options))

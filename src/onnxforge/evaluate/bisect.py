"""Bisect an accuracy loss to the pass and the nodes that cause it.

`bisect` plans one evaluation, scores the baseline model and the pipeline's final model; when the final
model is over budget it binary-searches the cumulative stages (stage i = passes 1..i run by PassManager)
for the first stage over budget, then, if that pass is node-selecting, runs delta debugging (ddmin) over
its `candidates()` applied with `with_nodes()` on the stage before it. `write_reproducer` writes the
subgraph around the culprit nodes, its inputs captured from the dataset (.npz), and the optimize command.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from onnxforge.errors import ForgeError
from onnxforge.evaluate.history import Budget

log = logging.getLogger(__name__)

def parse_budget(text: str) -> Budget:
    """``1%`` (relative to the baseline) or ``0.5pt`` (absolute metric points): `history.Budget.parse`,
    the one budget grammar of report, optimize --auto and bisect."""
    return Budget.parse(text)


@dataclass
class StageScore:
    """One scored model: `stage` 0 is the baseline; `pipeline` the items that built it."""

    stage: int
    pipeline: str
    metric: float
    delta: float
    over: bool


@dataclass
class BisectResult:
    """What bisect found. `culprit` is None when the final model is within budget."""

    metric: str
    budget: str
    baseline: float
    stages: list[StageScore]
    evaluations: int
    culprit: str | None = None
    culprit_index: int | None = None
    nodes: list[str] = field(default_factory=list)
    node_item: str | None = None

    @property
    def within(self) -> bool:
        return self.culprit is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["within"] = self.within
        return d

    def summary(self) -> str:
        """One line for a bug report."""
        if self.within:
            return f"within budget {self.budget}: {self.metric} {self.stages[-1].metric:.4f} vs baseline {self.baseline:.4f}"
        last = next(s for s in self.stages if s.stage == self.culprit_index)
        where = f" on node(s) {', '.join(self.nodes)}" if self.nodes else ""
        return (f"onnxforge bisect: pass {self.culprit} (#{self.culprit_index}){where} puts {self.metric} over budget "
                f"{self.budget}: {last.metric:.4f} vs baseline {self.baseline:.4f} ({self.evaluations} evaluations)")


Scorer = Callable[[onnx.ModelProto], float]


def make_scorer(model: onnx.ModelProto, dataset: str, data_root: str | Path | None, preset: str | None = None, *,
                limit: int | None = None, backend: str = "onnxruntime", cache: Any = None,
                executor: Any = None) -> tuple[Scorer, str, Any]:
    """A scorer for models like `model` on one evaluation plan (planned once; `model` is evaluated here).

    The score is what `report` judges on: the dataset's headline metric (`history.primary_metric`: mIoU,
    top1, IoU or pixAcc), or, where the data has no labels or the baseline's accuracy says nothing
    (`history.meaningless_reasons`: no checkpoint, a class mismatch, chance level), the agreement with
    `model` (`history.AGREEMENT_FOR`). With an `EvalCache` (`cache`), each candidate's evaluation is looked
    up by content first and stored after. With an `executor` (`evaluate.executor`, not serial) each
    evaluation's images are split into one shard per worker and the shards merged: the same score, sooner
    (bisection itself is sequential). Returns (scorer, the name of what it scores, plan).

    Raises:
        ForgeError: the data gives neither a metric nor an agreement to compare.
    """
    from onnxforge.backends import parse_backend
    from onnxforge.evaluate.evaluator import ModelRunner, cache_key, cached_result, plan_evaluation, score, store_result
    from onnxforge.evaluate.history import AGREEMENT_FOR, meaningless_reasons, model_sha256, primary_metric

    plan = plan_evaluation(model, dataset, data_root, preset, limit=limit, label="baseline")
    spec = str(parse_backend(backend))
    reference_sha = model_sha256(model) if cache is not None else None

    def evaluated(candidate: onnx.ModelProto):
        key = result = None
        if cache is not None:
            key = cache_key(cache, plan, data_root, model_sha256(candidate), spec, reference_sha, {"per_image": False})
            result = cached_result(cache, key, plan)
        if result is None:
            if executor is not None and not getattr(executor, "in_process", False):
                from onnxforge.evaluate.executor import score_sharded

                result = score_sharded(plan, candidate, executor, backend, reference=model)
            else:
                with ModelRunner(candidate, backend, label="candidate") as run, ModelRunner(model, backend, label="baseline") as ref:
                    result = score(plan, run, reference=ref)
            if cache is not None:
                store_result(cache, key, result)
        return result

    base = evaluated(model)
    accuracy = {k: float(v) for k, v in base.metrics.items() if v is not None}
    metric = primary_metric(accuracy)
    why = meaningless_reasons(model, accuracy, plan.spec.num_classes or base.dataset_classes, base.dataset_classes,
                              base.model_classes) if metric else []
    agreement = {a: v for a, v in (base.agreement or {}).items() if v is not None}
    if metric and not why:
        name, on_agreement = metric, False
    elif AGREEMENT_FOR.get(metric or "") in agreement or agreement:
        name, on_agreement = (AGREEMENT_FOR[metric] if AGREEMENT_FOR.get(metric or "") in agreement else next(iter(agreement))), True
        if why:
            log.warning("bisect judges on %s (agreement with the input model): %s", name, "; ".join(why))
    else:
        raise ForgeError(f"bisect: {dataset} gives no {plan.spec.metric} and no agreement to compare")

    def scorer(candidate: onnx.ModelProto) -> float:
        result = base if candidate is model else evaluated(candidate)
        values = result.agreement if on_agreement else result.metrics
        value = (values or {}).get(name)
        if value is None:
            raise ForgeError(f"bisect: {candidate.graph.name or 'a stage'} gives no {name} to compare")
        return float(value)

    return scorer, name, plan


def _run(model: onnx.ModelProto, passes: Sequence[Any]) -> onnx.ModelProto:
    from onnxforge.passes import PassManager

    if not passes:
        return model
    return PassManager(list(passes), verify=False).run(model).model


def bisect(model: onnx.ModelProto, pipeline: str, scorer: Scorer, budget: Budget, metric: str = "metric") -> BisectResult:
    """Finds the first pass of `pipeline` that puts `model` over `budget` and, if node-selecting, its nodes.

    Raises:
        ForgeError: an empty pipeline (PipelineError for an unparsable one).
    """
    from onnxforge.passes import NodeSelecting, parse_pipeline

    passes = list(parse_pipeline(pipeline).passes) if pipeline.strip() else []
    if not passes:
        raise ForgeError("--passes: the pipeline is empty")
    evaluations = 0
    cache: dict[int, onnx.ModelProto] = {0: model}
    scores: dict[int, StageScore] = {}

    def stage_model(i: int) -> onnx.ModelProto:
        if i not in cache:
            prev = max(k for k in cache if k < i)
            cache[i] = _run(cache[prev], passes[prev:i])
        return cache[i]

    def measure(m: onnx.ModelProto) -> float:
        nonlocal evaluations
        evaluations += 1
        return scorer(m)

    base = measure(model)
    scores[0] = StageScore(0, "", base, 0.0, False)

    def stage(i: int) -> StageScore:
        if i not in scores:
            v = measure(stage_model(i))
            scores[i] = StageScore(i, ",".join(str(p) for p in passes[:i]), v, v - base, budget.over(base, v))
        return scores[i]

    n = len(passes)
    result = BisectResult(metric, str(budget), base, [], 0)
    if not stage(n).over:
        result.stages, result.evaluations = [scores[k] for k in sorted(scores)], evaluations
        return result
    lo, hi = 0, n  # stage lo within, stage hi over
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if stage(mid).over:
            hi = mid
        else:
            lo = mid
    culprit = passes[hi - 1]
    result.culprit, result.culprit_index = str(culprit), hi
    if isinstance(culprit, NodeSelecting):
        before = stage_model(hi - 1)
        cands = culprit.candidates(before)

        def fails(subset: list[str]) -> bool:
            return bool(subset) and budget.over(base, measure(_run(before, [culprit.with_nodes(subset)])))

        nodes = ddmin(cands, fails) if cands else []
        result.nodes = nodes
        if nodes:
            result.node_item = str(culprit.with_nodes(nodes))
    result.stages, result.evaluations = [scores[k] for k in sorted(scores)], evaluations
    return result


def ddmin(items: Sequence[str], fails: Callable[[list[str]], bool]) -> list[str]:
    """Zeller's delta debugging: a 1-minimal subset of `items` for which `fails` holds (`fails(items)` is assumed)."""
    cur, n = list(items), 2
    while len(cur) >= 2:
        size = -(-len(cur) // n)
        chunks = [cur[i:i + size] for i in range(0, len(cur), size)]
        for c in chunks:
            if fails(c):
                cur, n = c, 2
                break
        else:
            for c in chunks:
                rest = [x for x in cur if x not in c]
                if len(chunks) > 2 and fails(rest):
                    cur, n = rest, max(n - 1, 2)
                    break
            else:
                if n >= len(cur):
                    break
                n = min(len(cur), 2 * n)
    return cur


def write_reproducer(directory: str | Path, model: onnx.ModelProto, result: BisectResult, pipeline: str,
                     plan: Any = None, images: int = 2) -> Path:
    """Writes DIR all-or-nothing: bisect.json, subgraph.onnx (+ inputs.npz) around the nodes, and the command.

    `model` is the baseline; the subgraph is cut from the stage before the culprit.
    """
    from onnxforge.modelio import save_model, staging_dir
    from onnxforge.passes import parse_pipeline

    passes = list(parse_pipeline(pipeline).passes)
    before = _run(model, passes[: (result.culprit_index or 1) - 1])
    with staging_dir(directory) as tmp:
        (tmp / "bisect.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        sub, feeds = before, None
        if result.nodes:
            sub, feeds = _subgraph(before, result.nodes, plan, images)
        save_model(sub, tmp / "subgraph.onnx")
        if feeds:
            np.savez(tmp / "inputs.npz", **feeds)
        item = result.node_item or result.culprit or ""
        cmd = f"onnxforge optimize {directory}/subgraph.onnx --passes '{item}' -o {directory}/subgraph-opt.onnx"
        (tmp / "command.txt").write_text(cmd + "\n")
    return Path(directory)


def _subgraph(model: onnx.ModelProto, nodes: Sequence[str], plan: Any, images: int) -> tuple[onnx.ModelProto, dict]:
    """The culprit nodes cut out (their non-constant inputs become graph inputs) and those inputs on dataset images."""
    inits = {t.name for t in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    chosen = [n for n in model.graph.node if n.name in set(nodes)]
    ins = list(dict.fromkeys(i for n in chosen for i in n.input if i and i not in inits and i not in consts))
    outs = list(dict.fromkeys(o for n in chosen for o in n.output))
    inferred = onnx.shape_inference.infer_shapes(model)
    sub = onnx.utils.Extractor(inferred).extract_model(ins, outs)
    feeds: dict[str, np.ndarray] = {}
    if plan is not None:
        feeds = _capture(inferred, ins, plan, images)
    return sub, feeds


def _capture(model: onnx.ModelProto, names: list[str], plan: Any, images: int) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    from onnxforge.evaluate.preprocess import prepare
    from onnxforge.numerics import expose_outputs

    m = expose_outputs(model, names, {v.name: v for v in list(model.graph.value_info) + list(model.graph.input)})
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    spec = plan.spec
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for k, s in enumerate(plan.dataset):
        if k >= images:
            break
        p = prepare(spec.preprocess, s, plan.canvas, spec.mean, spec.std, spec.resize_short, spec.ignore_index)
        outs = sess.run(names, {inp: p.input[None].astype(np.float32)})
        for nm, v in zip(names, outs):
            got[nm].append(v)
    return {nm.replace("/", "_"): np.concatenate(v) for nm, v in got.items() if v}

"""Mixed precision under an accuracy budget: which nodes stay float32 when the rest runs in float16.

Evidence per candidate (a node the `fp16` pass would convert, or a group: a Conv/MatMul with the
BatchNormalization and activations that consume it alone, or every node of an op type):
- **sensitivity**, both ways: the score with every candidate in float16 except this group
  (`kept`), and with only this group in float16 (`alone`), both scored by the same scorer;
- **range statistics** (`fp16_range_stats`) of its outputs in the float32 model over a calibration
  run: overflow (|x| > 65504: inf in float16) and underflow (0 < |x| < 6.1e-5, float16's smallest
  normal: subnormal or flushed to zero) element counts, and the largest |x|.

The search is `keep_search.search_keep_set` (greedy over the sensitivity ranking, on a calibration
subset, confirmed on the full set); its result is the pipeline item ``fp16{keep=a|b}`` (reproducible:
`optimize --passes 'fp16{keep=a|b}'`) and, for atc, a precision-config directory
(`write_precision_config`: keep_dtype.cfg, op_precision.ini where the CANN line has it, precision.json).

**Simulated, not real, float16.** The search scores `Fp16.simulate` models: the float32 graph with
Cast pairs (float32 -> float16 -> float32) on every float input, weight and output of the nodes the
`fp16` pass would convert. It runs on any CPU. Real float16 graphs are not used for the search because
onnxruntime's CPU provider has float16 kernels for few ops and, for the others, runs float32 kernels
and removes the Cast pairs it inserts around them: activations between such nodes neither round nor
overflow there (measured: the overflowing Mul of the tests goes unnoticed), so an all-fp16 model can
look fine on a CPU and fail on the device. The simulation models rounding of a node's operands and
results to float16, overflow to inf (|x| > 65504), underflow to subnormal/zero, and float32
arithmetic and accumulation inside the node: what an Ascend Cube unit does with fp16 operands (it
accumulates in float32), and the usual failure, activations overflowing between nodes (a large Mul
before a normalisation). It does not model float16 *intermediate* accumulation inside a kernel (a
Vector-unit reduction summing in float16, an fp16 Softmax), atc's own fusions and per-op precision
choices, or HF32. A keep-set that passes here is the starting point
on the device, not a guarantee: confirm with ``evaluate --predictions`` on the NPU's outputs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from onnxforge.cann import CannProfile, installed_version, profile as cann_profile, select_profile
from onnxforge.backends.cann.precision import (
    ASCEND_IR_TYPES,
    KEEP_DTYPE_FILE,
    MANIFEST_FILE,
    OP_PRECISION_FILE,
    OP_TYPE_PREFIX,
    global_mode,
    keep_dtype_text,
    op_precision_text,
)
from onnxforge.errors import ForgeError
from onnxforge.evaluate.history import Budget
from onnxforge.evaluate.keep_search import Group, KeepSetResult, Scorer, search_keep_set
from onnxforge.modelio import write_text_atomic
from onnxforge.numerics import cast_feeds, expose_outputs, make_session
from onnxforge.passes._rewrite import replace_options
from onnxforge.passes.fp16 import FP16_MAX, Fp16

log = logging.getLogger(__name__)

#: float16's smallest normal number: below it (and above 0) values are subnormal or flushed to zero
FP16_MIN_NORMAL = float(np.finfo(np.float16).tiny)
#: ops that start a group; followers join while they are the sole consumer and in `_FOLLOWERS`
_LEADERS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
_FOLLOWERS = frozenset({"BatchNormalization", "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid",
                        "HardSwish", "Tanh", "Elu", "Selu", "Add"})
GROUPINGS = ("chain", "node", "op")
#: the CANN line a precision config is written for when none is given nor installed (has keep_dtype, precision_mode_v2)
DEFAULT_PRECISION_CANN = "8.0"


@dataclass
class RangeStats:
    """One node's outputs in the float32 model over the calibration feeds."""

    elements: int = 0
    overflow: int = 0  # |x| > 65504
    underflow: int = 0  # 0 < |x| < 6.1e-5
    max_abs: float = 0.0


def fp16_range_stats(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], threads: int = 0) -> dict[str, RangeStats]:
    """Overflow/underflow statistics of every named node's float32 outputs, from one run per feed of a
    copy of `model` whose float32 intermediate tensors are graph outputs (added once).

    Raises:
        ForgeError: onnxruntime cannot run the model.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    float_vi = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
                if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    producer = {out: node.name for node in model.graph.node for out in node.output if out and out in float_vi and node.name}
    stats = {name: RangeStats() for name in dict.fromkeys(producer.values())}
    if not producer:
        return stats
    untyped_shape = {n: onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in producer}
    probe = expose_outputs(model, list(producer), untyped_shape)  # float, no shape: the feeds' sizes decide
    session = make_session(probe, threads=threads)
    served = {o.name for o in session.get_outputs()}
    names = [n for n in producer if n in served]
    for feed in feeds:
        try:
            values = session.run(names, cast_feeds(probe, feed))
        except Exception as exc:  # onnxruntime raises its own types
            raise ForgeError(f"fp16 range statistics: onnxruntime failed: {str(exc).splitlines()[0][:300]}") from None
        for name, v in zip(names, values):
            a = np.abs(np.asarray(v, dtype=np.float32))
            s = stats[producer[name]]
            s.elements += int(a.size)
            s.overflow += int((a > FP16_MAX).sum())
            s.underflow += int(((a > 0) & (a < FP16_MIN_NORMAL)).sum())
            if a.size:
                s.max_abs = max(s.max_abs, float(np.nanmax(a)))
    return stats


def fp16_groups(model: onnx.ModelProto, candidates: Sequence[str], by: str = "chain") -> list[Group]:
    """The candidates in groups, in graph order.

    `by`: ``node`` (one group per candidate), ``chain`` (a Conv/ConvTranspose/MatMul/Gemm and the
    BatchNormalization/activation/Add nodes that follow it as sole consumers; others alone), ``op``
    (every candidate of an op type: group ``OpType::Conv``, written so to keep_dtype.cfg).
    """
    if by not in GROUPINGS:
        raise ForgeError(f"fp16 search: grouping must be one of {', '.join(GROUPINGS)}, got {by!r}")
    chosen = set(candidates)
    nodes = [n for n in model.graph.node if n.name in chosen]
    if by == "node":
        return [Group(n.name, (n.name,)) for n in nodes]
    if by == "op":
        types: dict[str, list[str]] = {}
        for n in nodes:
            types.setdefault(n.op_type, []).append(n.name)
        return [Group(f"{OP_TYPE_PREFIX}{t}", tuple(names), op_type=t) for t, names in types.items()]
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}
    taken: set[str] = set()
    groups: list[Group] = []
    for n in nodes:
        if n.name in taken:
            continue
        chain = [n.name]
        taken.add(n.name)
        cur = n
        while n.op_type in _LEADERS and len(cur.output) == 1 and cur.output[0] not in outputs:
            users = consumers.get(cur.output[0], [])
            if len(users) != 1 or users[0].name not in chosen or users[0].name in taken or users[0].op_type not in _FOLLOWERS:
                break
            cur = users[0]
            chain.append(cur.name)
            taken.add(cur.name)
        groups.append(Group(n.name, tuple(chain)))
    return groups


@dataclass
class MixedPrecision:
    """What `search_fp16` found: the keep-set, its pipeline item, and the per-group evidence."""

    item: str  # fp16{...,keep=a|b}: the float16 model with the keep-set in float32
    keep: list[str]
    search: KeepSetResult
    grouping: str
    subset_images: int | None
    full_images: int | None
    stats: dict[str, RangeStats] = field(default_factory=dict)

    @property
    def within_budget(self) -> bool:
        return self.search.within_budget

    def rows(self) -> list[dict[str, Any]]:
        """The per-group table: group, nodes, sensitivity both ways, overflow/underflow, kept."""
        kept = set(self.search.groups)
        rows = []
        for s in self.search.ranking:
            st = [self.stats[n] for n in s.nodes if n in self.stats]
            rows.append({"group": s.group, "nodes": list(s.nodes), "score_kept": s.kept, "score_alone": s.alone,
                         "overflow": sum(x.overflow for x in st), "underflow": sum(x.underflow for x in st),
                         "max_abs": max((x.max_abs for x in st), default=0.0), "kept": s.group in kept})
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"item": self.item, "keep": list(self.keep), "grouping": self.grouping, "subset_images": self.subset_images,
                "full_images": self.full_images, "search": self.search.to_dict(), "rows": self.rows(),
                "stats": {k: dataclasses.asdict(v) for k, v in self.stats.items()}}


def keep_item(fp16: Fp16, keep: Sequence[str]) -> Fp16:
    """`fp16` with the nodes `keep` added to its keep-set (other options kept; `nodes=` cleared)."""
    return replace_options(fp16, keep=tuple(dict.fromkeys(tuple(fp16.options.keep) + tuple(keep))), nodes=())


def search_fp16(
    model: onnx.ModelProto,
    scorer: Scorer,
    baseline: float,
    budget: Budget | str | float = "1%",
    *,
    fp16: Fp16 | None = None,
    grouping: str = "chain",
    reverse: bool = True,
    confirm: Scorer | None = None,
    confirm_baseline: float | None = None,
    stats_feeds: Sequence[dict[str, np.ndarray]] = (),
    max_keep: int = 8,
    subset_images: int | None = None,
    full_images: int | None = None,
) -> MixedPrecision:
    """The smallest keep-set of float32 nodes with which the float16 model is within `budget`.

    Args:
        model: the float32 model (the stage before the `fp16` pass).
        scorer, baseline: scores a model on the search data (`keep_search.task_scorer` on a subset,
            or `agreement_scorer`), and the float32 model's score there.
        fp16: the configured pass (block list, keep_io...); default `Fp16()`.
        grouping: ``chain`` (Conv+BN+activation), ``node`` or ``op`` (`fp16_groups`).
        reverse: also score each group alone in float16 (N more evaluations: the second sensitivity).
        confirm, confirm_baseline: the full-set scorer and its baseline.
        stats_feeds: calibration inputs for `fp16_range_stats` (none: no range statistics).

    Raises:
        ForgeError: bad budget or grouping; PassError from the pass.
    """
    p = fp16 or Fp16()
    candidates = p.candidates(model)
    groups = fp16_groups(model, candidates, grouping)

    def build(keep: Sequence[str]) -> onnx.ModelProto:
        return keep_item(p, keep).simulate(model)

    def build_alone(nodes: Sequence[str]) -> onnx.ModelProto:
        return p.with_nodes(list(nodes)).simulate(model)

    found = search_keep_set(groups, build, scorer, baseline, budget, build_alone=build_alone if reverse else None,
                            confirm=confirm, confirm_baseline=confirm_baseline, max_keep=max_keep)
    stats = fp16_range_stats(model, stats_feeds) if stats_feeds else {}
    return MixedPrecision(str(keep_item(p, found.keep)), list(found.keep), found, grouping, subset_images, full_images, stats)


def write_precision_config(directory: str | Path, found: MixedPrecision, cann: str | CannProfile | None = None,
                           model: str = "") -> dict[str, Path]:
    """Writes keep_dtype.cfg, op_precision.ini (where the CANN line has --op_precision_mode) and
    precision.json into `directory` (created; files written atomically). Returns their paths.

    `cann`: the CANN line the flags are chosen for (default: the installed CANN, else
    `DEFAULT_PRECISION_CANN`; a line without --keep_dtype, 5.0, is a ForgeError).

    keep_dtype.cfg lists op-type groups as ``OpType::X`` with X the Ascend IR type (`ASCEND_IR_TYPES`: Conv
    -> Conv2D; a type not recorded there is listed by its node names) and every other kept node by its ONNX
    node name (the names atc sees in an ONNX graph). A search that met no budget still writes its best keep-set;
    the manifest says ``within_budget: false``.
    """
    if isinstance(cann, CannProfile):
        profile = cann
    elif cann or installed_version():
        profile = select_profile(cann)
    else:
        profile = cann_profile(DEFAULT_PRECISION_CANN)
    if not profile.has_option("keep_dtype"):
        raise ForgeError(f"precision config: atc --keep_dtype is not in the CANN {profile.line} profile; write it for another CANN line")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    kept_groups = [r for r in found.rows() if r["kept"]]
    onnx_types = [r["group"][len(OP_TYPE_PREFIX):] for r in kept_groups if r["group"].startswith(OP_TYPE_PREFIX)]
    op_types = [ASCEND_IR_TYPES[t] for t in onnx_types if t in ASCEND_IR_TYPES]
    names = [n for r in kept_groups if not (r["group"].startswith(OP_TYPE_PREFIX) and r["group"][len(OP_TYPE_PREFIX):] in ASCEND_IR_TYPES)
             for n in r["nodes"]]
    header = (f"atc --keep_dtype: nodes kept in float32, chosen by onnxforge's fp16 search ({found.search.method})\n"
              f"format: one ONNX node name or OpType::TypeName per line (CANN 6.0.1 atctool_0095, 8.0.0 atlasatcparam_16_0074)\n"
              f"pipeline: {found.item}")
    paths = {"keep_dtype": d / KEEP_DTYPE_FILE}
    write_text_atomic(paths["keep_dtype"], keep_dtype_text(names, op_types, header))
    mode = global_mode(profile)
    flags = [f"--{k}={v}" for k, v in mode.items()] + [f"--keep_dtype={paths['keep_dtype']}"]
    if profile.has_option("op_precision_mode") and names:
        paths["op_precision"] = d / OP_PRECISION_FILE
        write_text_atomic(paths["op_precision"], op_precision_text(names))
        flags.append(f"--op_precision_mode={paths['op_precision']}")
    manifest = {
        "model": model,
        "pipeline_item": found.item,
        "keep": found.keep,
        "keep_op_types": op_types,
        "keep_onnx_op_types": onnx_types,
        "within_budget": found.within_budget,
        "note": found.search.note,
        "budget": found.search.budget,
        "baseline": found.search.baseline,
        "score_all_fp16": found.search.score_all,
        "score": found.search.score,
        "evaluations": {"subset": found.search.evaluations, "full": found.search.confirm_evaluations},
        "images": {"subset": found.subset_images, "full": found.full_images},
        "method": found.search.method,
        "grouping": found.grouping,
        "cann_profile": profile.version,
        "atc_flags": flags,
        "compile_note": "compile the float32 model the search started from: atc converts to float16 itself, keeping the keep_dtype nodes",
        "compile": f"onnxforge compile MODEL.onnx --backend atc --cann {profile.version} --precision-config {d}",
        "rows": found.rows(),
    }
    paths["manifest"] = d / MANIFEST_FILE
    write_text_atomic(paths["manifest"], json.dumps(manifest, indent=2, default=str) + "\n")
    return paths

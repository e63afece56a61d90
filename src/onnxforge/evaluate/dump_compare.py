"""Layer-by-layer comparison of an NPU dump against the ONNX model run in onnxruntime, as Ascend's compare tools do it.

An NPU dump is what ais_bench ``--dump`` / ``msit debug dump`` / ``msit debug compare`` write for an .om
model: one file per task (operator run) under ``.../{device_id}/{om_model_name}/{model_id}/{iteration}/``,
named ``{op_type}.{op_name}.{task_id}.{stream_id}.{timestamp}`` (newer CANN also
``{op_type}.{op_name}.({stream_id}.){task_id}.{timestamp}.{task_type}.{context_id}.{thread_id}.{device_id}``).
In op names, ``.``, ``/``, ``\\`` and spaces are written as ``_``. CANN's ``msaccucmp.py convert -d DIR
-out NPY_DIR`` turns each into numpy files ``{dump file name}.output.{i}.npy`` / ``.input.{i}.npy``; with
``-f FORMAT`` (a layout conversion, e.g. NC1HWC0 -> NCHW) the shape is part of the name:
``{dump file name}.output.{i}.{1x3x224x224}.npy``. Both forms are read.

Sources (documentation only; nothing here has read a dump written by a real NPU):
- "Data Format Requirements" of Model Accuracy Analyzer, CANN commercial 8.0.0 and 8.5.0
  (hiascend.com ``devaids/modelaccuracy/atlasaccuracy_16_0062`` / ``_0061``; CANN 5.0.4
  ``atlasaccuracy_16_0009`` has the first form only): the file name forms and the ``_`` rule;
- "Converting Dump File Formats" / "Viewing Dump Files", CANN 8.0.0 and 8.5.0 (``atlasaccuracy_16_0054`` /
  ``_0055``; CANN 8.0.RC3 ``atlasaccuracy_16_0057`` states the ``.output.{index}.{shape}.npy`` names);
- msit / ait ``debug compare`` docs (the Ascend/msit repository, "对比结果分析步骤", 2023): the dump
  directory layout above, the fused-op naming (the NPU op ``Sub_26Mul_28`` against the ONNX nodes
  ``Sub_26,Mul_28``) and the thresholds: **CosineSimilarity < 0.99, RelativeEuclideanDistance > 0.05,
  RootMeanSquareError > 1.0** (also KullbackLeiblerDivergence > 0.005 and MeanRelativeError > 1.0, not
  computed here); any one out of range marks the op, and the first such op is the one to look at.

What is read: every ``*.output.{i}.npy`` under DUMP_DIR (recursively; ``.input.`` files are skipped). What
is **not** parsed: the raw binary dump files (CANN's own binary format by default, ``-v 2``, or a
serialised protobuf, ``-v 1``; tensors in device formats such as NC1HWC0); convert them first with
``msaccucmp.py convert -d DIR -out NPY_DIR`` (``-f NCHW`` for device layouts). They are counted and
named in the report's notes. A converted tensor whose element count equals the ONNX output's is
compared after reshaping to the ONNX shape (the row says so); another count fails the op. An op
dumped more than once (several iterations or tasks) is compared at its latest timestamp.

Matching (fusion-aware): a dump op matches the ONNX node whose name, with the ``_`` rule applied, is
its op name; otherwise, if the op name is the concatenation of several such node names (atc's fused
ops), or a fusion mapping says which nodes it holds, it is compared against the output of the *last* of
those nodes in graph order. A mapping is a JSON file: ``{"dump op name": ["onnx node", ...]}``, or the
om's JSON (``atc --mode=1 --om=... --json=...``) whose ops carry ``_datadump_original_op_names``.

Metrics, as msaccucmp defines them (NPU data `a`, ONNX golden `b`, flattened, in float64):
cosine ``a·b / (|a||b|)`` (1 when both are zero, undefined when one is), relative Euclidean distance
``|a - b| / |b|``, max absolute error ``max|a - b|``, root mean square error.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from onnxforge.errors import EvaluationError, InputSpecError

log = logging.getLogger(__name__)

#: msit compare's thresholds (module docstring): a value beyond any marks the op
COSINE_MIN = 0.99
RELATIVE_DISTANCE_MAX = 0.05
RMSE_MAX = 1.0

#: converted dump: {op_type}.{op_name}.{numbers...}.{input|output}.{index}.npy (op names hold no '.')
_NPY = re.compile(r"^(?P<type>[A-Za-z0-9_-]+)\.(?P<name>[A-Za-z0-9_-]+)\.(?P<ids>\d+(?:\.\d+)*)\.(?P<io>input|output)\.(?P<index>\d+)"
                  r"(?:\.\d+(?:x\d+)*)?\.npy$")
#: raw dump: {op_type}.{op_name}.{numbers...} (no suffix)
_RAW = re.compile(r"^(?P<type>[A-Za-z0-9_-]+)\.(?P<name>[A-Za-z0-9_-]+)\.(?P<ids>\d+(?:\.\d+)+)$")
_UNSAFE = re.compile(r"[./\\ ]")


def dump_name(onnx_name: str) -> str:
    """An ONNX node name as the dump writes op names ('.', '/', '\\' and spaces become '_')."""
    return _UNSAFE.sub("_", onnx_name)


@dataclass(frozen=True)
class DumpTensor:
    """One converted dump file: the op, which output, and its file."""

    op_type: str
    op_name: str
    index: int
    timestamp: int
    path: Path


@dataclass
class NodeComparison:
    """One dumped output against the ONNX output it matches. Metric values are None where not computable."""

    op_name: str
    op_type: str
    index: int
    onnx_nodes: list[str]  # the ONNX nodes the op stands for (several for a fused op); the last is compared
    onnx_output: str | None
    shape: tuple[int, ...] | None
    cosine: float | None = None
    relative_distance: float | None = None
    max_abs: float | None = None
    rmse: float | None = None
    passed: bool = False
    reason: str = ""  # why it failed or could not be compared
    order: int = -1  # position of the compared ONNX node in graph order

    def to_dict(self) -> dict[str, Any]:
        return {"op_name": self.op_name, "op_type": self.op_type, "output_index": self.index, "onnx_nodes": self.onnx_nodes,
                "onnx_output": self.onnx_output, "shape": list(self.shape) if self.shape is not None else None,
                "cosine": self.cosine, "relative_distance": self.relative_distance, "max_abs": self.max_abs,
                "rmse": self.rmse, "passed": self.passed, "reason": self.reason}


@dataclass
class DumpComparison:
    """Every matched op in ONNX graph order, then the unmatched ones; `first_failing` is the op to look at."""

    model: str
    dump_dir: str
    rows: list[NodeComparison]
    notes: list[str] = field(default_factory=list)

    @property
    def first_failing(self) -> NodeComparison | None:
        return next((r for r in self.rows if r.onnx_output is not None and not r.passed), None)

    @property
    def thresholds(self) -> dict[str, float]:
        return {"cosine_min": COSINE_MIN, "relative_distance_max": RELATIVE_DISTANCE_MAX, "rmse_max": RMSE_MAX}

    def to_dict(self) -> dict[str, Any]:
        first = self.first_failing
        return {"model": self.model, "dump_dir": self.dump_dir, "thresholds": self.thresholds,
                "compared": sum(r.onnx_output is not None for r in self.rows),
                "failing": sum(r.onnx_output is not None and not r.passed for r in self.rows),
                "first_failing": first.op_name if first is not None else None,
                "rows": [r.to_dict() for r in self.rows], "notes": list(self.notes)}


# --------------------------------------------------------------------------------------------- reading
def read_dump_dir(dump_dir: str | Path) -> tuple[list[DumpTensor], list[Path]]:
    """The converted output tensors under `dump_dir` (latest timestamp per op and output) and the raw dump files.

    Raises:
        EvaluationError: the folder does not exist, or holds neither converted nor raw dump files.
    """
    root = Path(dump_dir)
    if not root.is_dir():
        raise EvaluationError(f"{root}: dump folder does not exist")
    latest: dict[tuple[str, int], DumpTensor] = {}
    raw: list[Path] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        m = _NPY.match(path.name)
        if m is not None:
            if m["io"] != "output":
                continue
            stamp = max(int(x) for x in m["ids"].split("."))  # the 16-digit timestamp, wherever the form puts it
            t = DumpTensor(m["type"], m["name"], int(m["index"]), stamp, path)
            key = (t.op_name, t.index)
            if key not in latest or t.timestamp > latest[key].timestamp:
                latest[key] = t
        elif _RAW.match(path.name):
            raw.append(path)
    if not latest and not raw:
        raise EvaluationError(f"{root}: no dump files ({{op_type}}.{{op_name}}.{{task_id}}.{{stream_id}}.{{timestamp}} or their "
                              "converted .output.N.npy) in this folder or below")
    return sorted(latest.values(), key=lambda t: (t.op_name, t.index)), raw


def read_fusion_map(path: str | Path) -> dict[str, list[str]]:
    """A fusion mapping: ``{"dump op": ["onnx node", ...]}`` or an om JSON with ``_datadump_original_op_names``.

    Raises:
        EvaluationError: unreadable, not JSON, or neither form.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvaluationError(f"{p}: fusion mapping file missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvaluationError(f"{p}: not a JSON fusion mapping ({type(exc).__name__})") from None
    if isinstance(data, dict) and data and all(isinstance(v, list) and all(isinstance(s, str) for s in v) for v in data.values()):
        return {dump_name(k): list(v) for k, v in data.items()}
    mapping: dict[str, list[str]] = {}
    graphs = data.get("graph", []) if isinstance(data, dict) else []
    for graph in graphs if isinstance(graphs, list) else []:
        for op in graph.get("op", []) if isinstance(graph, dict) else []:
            for attr in op.get("attr", []) if isinstance(op, dict) else []:
                if isinstance(attr, dict) and attr.get("key") == "_datadump_original_op_names":
                    names = attr.get("value", {}).get("list", {}).get("s", [])
                    if names and isinstance(op.get("name"), str):
                        mapping[dump_name(op["name"])] = [str(n) for n in names]
    if not mapping:
        raise EvaluationError(f"{p}: neither {{\"dump op\": [\"onnx node\", ...]}} nor an om JSON with _datadump_original_op_names")
    return mapping


# -------------------------------------------------------------------------------------------- matching
def _split_fused(op_name: str, keys: Mapping[str, int]) -> list[str] | None:
    """`op_name` as a concatenation of node keys (fewest parts), or None."""
    n = len(op_name)
    best: list[list[str] | None] = [None] * (n + 1)
    best[0] = []
    for i in range(n):
        if best[i] is None:
            continue
        for j in range(i + 1, n + 1):
            piece = op_name[i:j]
            if piece in keys and (best[j] is None or len(best[j]) > len(best[i]) + 1):
                best[j] = best[i] + [piece]
    return best[n] if best[n] and len(best[n]) > 1 else None


class _NodeIndex:
    """The graph's nodes by name and by dump name (built once per comparison)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.nodes = list(model.graph.node)
        self.by_name = {n.name: i for i, n in enumerate(self.nodes) if n.name}
        self.keys: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            if n.name:
                self.keys.setdefault(dump_name(n.name), i)

    def match(self, op_name: str, fusion: Mapping[str, Sequence[str]] | None = None) -> list[int]:
        """Positions in graph order of the nodes `op_name` stands for (empty if none)."""
        if fusion and op_name in fusion:
            return sorted({self.by_name.get(s, self.keys.get(dump_name(s), -1)) for s in fusion[op_name]} - {-1})
        if op_name in self.keys:
            return [self.keys[op_name]]
        parts = _split_fused(op_name, self.keys)
        return sorted({self.keys[p] for p in parts}) if parts else []


def match_nodes(op_name: str, model: onnx.ModelProto, fusion: Mapping[str, Sequence[str]] | None = None) -> list[onnx.NodeProto]:
    """The ONNX nodes a dump op stands for, in graph order (empty if none; module docstring)."""
    index = _NodeIndex(model)
    return [index.nodes[i] for i in index.match(op_name, fusion)]


# ------------------------------------------------------------------------------------------- metrics
def compare_tensors(npu: np.ndarray, golden: np.ndarray) -> dict[str, float | None]:
    """cosine, relative Euclidean distance, max abs and RMSE of `npu` against `golden` (module docstring)."""
    a = np.asarray(npu, dtype=np.float64).ravel()
    b = np.asarray(golden, dtype=np.float64).ravel()
    diff = a - b
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    eps = np.finfo(np.float64).eps
    if na <= eps and nb <= eps:
        cosine: float | None = 1.0
    elif na <= eps or nb <= eps:
        cosine = None
    else:
        cosine = float(np.dot(a, b) / (na * nb))
    dist = float(np.linalg.norm(diff))
    relative = (0.0 if dist <= eps else None) if nb <= eps else dist / nb
    return {"cosine": cosine, "relative_distance": relative, "max_abs": float(np.abs(diff).max()) if diff.size else 0.0,
            "rmse": float(np.sqrt(np.mean(diff * diff))) if diff.size else 0.0}


def _verdict(m: Mapping[str, float | None]) -> tuple[bool, str]:
    problems = []
    if m["cosine"] is None:
        problems.append("cosine undefined (one side is all zeros)")
    elif m["cosine"] < COSINE_MIN:
        problems.append(f"cosine {m['cosine']:.4f} < {COSINE_MIN}")
    if m["relative_distance"] is None:
        problems.append("relative distance undefined (golden is all zeros)")
    elif m["relative_distance"] > RELATIVE_DISTANCE_MAX:
        problems.append(f"relative distance {m['relative_distance']:.4f} > {RELATIVE_DISTANCE_MAX}")
    if m["rmse"] is not None and m["rmse"] > RMSE_MAX:
        problems.append(f"RMSE {m['rmse']:.4g} > {RMSE_MAX}")
    return not problems, "; ".join(problems)


# --------------------------------------------------------------------------------------------- running
def run_all_outputs(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The values of the tensors `names` (node outputs) on `feeds`, from a copy of `model` exposing them as outputs."""
    from onnxforge.numerics import expose_outputs, run_model

    return run_model(expose_outputs(model, names), feeds)


def compare_dump(model: onnx.ModelProto | str | Path, dump_dir: str | Path, inputs: Sequence[str | Path] = (), *,
                 fusion_map: str | Path | None = None) -> DumpComparison:
    """Compares every dumped op output under `dump_dir` with the ONNX model's output it matches, on `inputs`.

    Args:
        model: the ONNX model the .om was compiled from (file or ModelProto).
        dump_dir: a dump folder (any level of ais_bench/msit's layout) with converted ``.output.N.npy`` files.
        inputs: the inputs the NPU ran on: ``.npy`` (``NAME=x.npy`` or a bare path for one input) or ``.npz``.
        fusion_map: a JSON mapping of fused dump ops to ONNX nodes (module docstring).

    Raises:
        EvaluationError: unreadable dump folder or mapping, no inputs, nothing matched.
        InputSpecError: inputs that do not fit the model.
    """
    from onnxforge.modelio import load_model
    from onnxforge.numerics import load_input_arrays

    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    label = str(model) if not isinstance(model, onnx.ModelProto) else (proto.graph.name or "model")
    tensors, raw = read_dump_dir(dump_dir)
    fusion = read_fusion_map(fusion_map) if fusion_map is not None else None
    if not inputs:
        raise EvaluationError("--inputs: give the inputs the NPU ran on (x.npy, NAME=x.npy or an .npz)")
    try:
        feeds = load_input_arrays(proto, inputs)
    except InputSpecError as exc:
        raise InputSpecError(str(exc).replace("--verify-inputs", "--inputs")) from None
    weights = {t.name for t in proto.graph.initializer}
    missing = [i.name for i in proto.graph.input if i.name not in feeds and i.name not in weights]
    if missing:
        raise InputSpecError(f"--inputs: no array for input(s) {', '.join(missing)}")
    index = _NodeIndex(proto)
    rows: list[NodeComparison] = []
    wanted: dict[int, tuple[str, DumpTensor]] = {}
    for t in tensors:
        positions = index.match(t.op_name, fusion)
        names = [index.nodes[i].name for i in positions]
        if not positions:
            rows.append(NodeComparison(t.op_name, t.op_type, t.index, [], None, None, reason="no ONNX node of this name"))
            continue
        last = index.nodes[positions[-1]]
        if t.index >= len(last.output) or not last.output[t.index]:
            rows.append(NodeComparison(t.op_name, t.op_type, t.index, names, None, None,
                                       reason=f"ONNX node {last.name} has no output {t.index}"))
            continue
        out = last.output[t.index]
        wanted[len(rows)] = (out, t)
        rows.append(NodeComparison(t.op_name, t.op_type, t.index, names, out, None, order=positions[-1]))
    if not wanted:
        raise EvaluationError(f"{dump_dir}: none of the {len(tensors)} dumped outputs matches a node of {label}"
                              + (f" ({len(raw)} raw dump files need converting first: msaccucmp.py convert)" if raw else ""))
    golden = run_all_outputs(proto, feeds, sorted({out for out, _ in wanted.values()}))
    for i, (out, t) in wanted.items():
        row = rows[i]
        try:
            npu = np.load(t.path, allow_pickle=False)
        except Exception as exc:  # numpy raises ValueError/OSError for non-arrays
            row.reason = f"{t.path.name}: not a .npy array ({type(exc).__name__})"
            continue
        ref = golden[out]
        row.shape = tuple(int(d) for d in ref.shape)
        if npu.size != ref.size:
            row.reason = f"shape {list(npu.shape)} against ONNX {list(ref.shape)}"
            continue
        m = compare_tensors(npu.reshape(ref.shape), ref)
        row.cosine, row.relative_distance, row.max_abs, row.rmse = m["cosine"], m["relative_distance"], m["max_abs"], m["rmse"]
        row.passed, row.reason = _verdict(m)
        if npu.shape != ref.shape and row.passed:
            row.reason = f"compared after reshaping {list(npu.shape)} to {list(ref.shape)}"
    rows.sort(key=lambda r: (r.order < 0, r.order, r.index))
    notes = []
    if raw:
        notes.append(f"{len(raw)} raw dump files (e.g. {raw[0].name}) were not read, only converted .npy files are: "
                     "convert the raw ones with msaccucmp.py convert -d DIR -out NPY_DIR and compare NPY_DIR")
    unmatched = sum(r.onnx_output is None for r in rows)
    if unmatched:
        notes.append(f"{unmatched} dumped outputs match no ONNX node output (listed last)")
    return DumpComparison(label, str(dump_dir), rows, notes)

"""quantize: static INT8 quantization in QDQ form with onnxruntime's quantization tools.

Before -> After (one Conv, per-channel weights, uint8 activations)::

    x (f32) -> Conv(W f32 [Co,Ci,k,k], b f32) -> Relu -> y (f32)
    x (f32) -> QuantizeLinear(s_x, z_x: u8) -> DequantizeLinear -> Conv(DequantizeLinear(W_q i8, s_w [Co], axis=0),
            DequantizeLinear(b_q i32, s_x*s_w)) -> Relu -> QuantizeLinear(s_y, z_y) -> DequantizeLinear -> y (f32)

The graph stays standard ONNX (QuantizeLinear/DequantizeLinear around float ops); onnxruntime's CPU
execution provider fuses each DQ -> Conv -> Q group into an integer kernel (QLinearConv through MLAS,
which uses AVX2/AVX-512 VNNI or AMX-INT8 where the CPU has them). Weights are quantized symmetrically
to int8, per output channel by default; activations asymmetrically to uint8 (U8S8, what onnxruntime
recommends for x86 CPUs), their ranges calibrated on real inputs.

Calibration. Activation ranges come from running the float model on calibration inputs, either the
first `images` samples of `calibration=PATH.npz` (preprocessed network inputs, one array per graph
input whose first axis counts samples; `onnxforge.evaluate.calibration.write_calibration` writes it
from a dataset with the dataset's own preprocessing), or `images` seeded standard-normal inputs
(`onnxforge.numerics.seeded_inputs`, seeds `seed`, `seed+1`, ...) when no file is given: synthetic
data suits unit-scale normalised image inputs only, and a dataset calibrates better. `method` picks
onnxruntime's calibrator: ``minmax`` (the observed range), ``entropy`` (KL-divergence threshold over a
histogram) or ``percentile`` (the `percentile` quantile of |x|). The pass is deterministic: the same
model, options and data give the same bytes. `ranges=PATH` reuses ranges calibrated once by
`calibrate_ranges` (onnxruntime's JSON calibration cache) instead of running the model again, so a
search over node selections calibrates once. minmax keeps two scalars per tensor; entropy and
percentile keep every calibrated tensor of every image in memory (onnxruntime's HistogramCalibrater):
on large inputs use minmax or few images.

Preprocessing. onnxruntime recommends running `onnxruntime.quantization.shape_inference.quant_pre_process`
first: (1) symbolic shape inference, (2) onnxruntime's basic graph optimisations saved back to ONNX
(constant folding, redundant node elimination, Conv+BatchNormalization / Conv+Add / Conv+Mul fusion),
(3) ONNX shape inference, so that every tensor has a shape and batch norms are folded into the weights
before they are quantized. The pass does NOT run it unless `preprocess=true`; put it after `simplify`
(onnxsim does the same folding and shape inference, and keeps node names, which `exclude=` relies on):
``simplify,quantize``. Without either, onnxruntime warns and quantizes less well.

Which nodes: unnamed nodes are first named ``<op>_quantize_<k>`` (the quantizer selects nodes by name;
`candidates` reports the same names). Every node of an op type onnxruntime's QDQ quantizer handles (its `QDQRegistry`: Conv,
MatMul, Gemm, Add, Mul, Concat, Resize, MaxPool, ...), minus `exclude` (node names) and
`exclude_types` (op types); with `nodes=` only those. Data-movement ops (MaxPool, Reshape, Resize,
Transpose, ...) are quantized only where their input already is. What exclusion keeps float: in QDQ
form precision belongs to tensors. An excluded Conv/ConvTranspose/MatMul/Gemm keeps float weights and
runs as a float kernel; but a tensor it shares with a quantized neighbour is still quantized for that
neighbour (the excluded node then reads its DequantizeLinear output), and an excluded elementwise op
whose inputs and output are all quantized by neighbours may still be fused by onnxruntime into an
integer kernel (DQ -> Add -> Q becomes QLinearAdd). To keep a tensor float, exclude its producer and
its consumers. A graph with no Conv, ConvTranspose,
MatMul or Gemm among the selected nodes is left unchanged, with that reason: Q/DQ pairs around
elementwise ops alone cost time and precision and gain nothing.

Legality: opset >= 13 with per-channel weights (QuantizeLinear/DequantizeLinear's `axis` arrived in
opset 13: onnxruntime would write a per-axis DequantizeLinear that an opset-11 model cannot load, so the
pass refuses; convert first with ``target-opset{opset=13}``), opset >= 10 with per_channel=false.
A model that is already quantized (QuantizeLinear, DequantizeLinear, QLinear*, *Integer nodes) is
refused. Input shapes must be static for synthetic calibration.

Approximate. Documented bound (tests): on small conv nets with unit-scale inputs calibrated on the
same distribution, every output is within 5% of max|reference| of the float32 model. Deep nets
accumulate rounding; what it costs in task accuracy is what `report` measures, and `exclude=` keeps
the sensitive nodes in float.

Where it cannot go: Ascend's atc does not take QDQ graphs as quantized models. CANN quantizes with its
own compression toolkit (AMCT), which calibrates a float ONNX model and writes a model atc compiles
to INT8; atc given a QDQ graph sees QuantizeLinear/DequantizeLinear as ordinary ops (not in the op
list onnxforge checks against CANN 5.0.4). Use this pass for onnxruntime (CPU, and the TensorRT
provider, which reads QDQ), not for `compile --backend atc`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import onnx

from onnxforge.errors import PassError, PipelineError
from onnxforge.numerics import DEFAULT_SEED, input_specs, seeded_inputs
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, Skip, option
from onnxforge.passes.registry import register

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")
#: Ops whose integer kernels are where the speed comes from; without one of them there is nothing to gain.
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
#: Ops that mark a model as quantized already.
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSigmoid",
    "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool",
})
MIN_OPSET = 13  # per-channel (axis on QuantizeLinear/DequantizeLinear)
MIN_OPSET_PER_TENSOR = 10


@dataclass(frozen=True)
class QuantizeOptions:
    method: Literal["minmax", "entropy", "percentile"] = option("minmax", "calibration method: minmax, entropy or percentile")
    images: int = option(8, "number of calibration inputs (from calibration=, else seeded synthetic ones)")
    calibration: str = option("", "an .npz of preprocessed inputs, one array per graph input (first axis: samples); default: synthetic")
    seed: int = option(DEFAULT_SEED, "seed of the synthetic calibration inputs")
    per_channel: bool = option(True, "weights quantized per output channel (false: one scale per tensor)")
    activations: Literal["uint8", "int8"] = option("uint8", "activation type: uint8 (asymmetric, U8S8 on x86) or int8")
    percentile: float = option(99.999, "the quantile kept by method=percentile")
    exclude: tuple[str, ...] = option((), "node names kept in float")
    exclude_types: tuple[str, ...] = option((), "op types kept in float")
    nodes: tuple[str, ...] = option((), "quantize only these nodes, by name (default: every quantizable node)")
    preprocess: bool = option(False, "run onnxruntime's quant_pre_process first (shape inference + basic optimisations)")
    ranges: str = option("", "calibrated ranges to reuse instead of calibrating (a JSON file written by calibrate_ranges)")


def _qdq_op_types() -> frozenset[str]:
    from onnxruntime.quantization.registry import QDQRegistry

    return frozenset(QDQRegistry)


@register
class Quantize(Pass):
    """Static INT8 QDQ quantization with onnxruntime.quantization.quantize_static.

    Contract: graph inputs and outputs keep their names, shapes and float dtypes; selected nodes get
    QuantizeLinear/DequantizeLinear on their inputs and outputs; excluded nodes and nodes of other op
    types stay float. The input model is not modified.

    Raises:
        PassError: a named node (exclude=, nodes=) does not exist, the model is already quantized, its
            opset is too old (13 for per-channel weights), the calibration file is missing, unreadable, does not fit the model's
            inputs or holds fewer samples than `images`, or onnxruntime fails to quantize.
    """

    name = "quantize"
    summary = "static INT8 QDQ quantization (onnxruntime), per-channel weights, calibrated on data"
    kind = PassKind.APPROXIMATE
    Options = QuantizeOptions

    def validate(self) -> None:
        o = self.options
        if o.method not in METHODS:
            raise PipelineError(f"pass 'quantize': unknown calibration method {o.method!r}; known: {', '.join(METHODS)}")
        if o.activations not in ("uint8", "int8"):
            raise PipelineError(f"pass 'quantize': option 'activations' must be uint8 or int8, got {o.activations!r}")
        if o.images < 1:
            raise PipelineError(f"pass 'quantize': option 'images' must be at least 1, got {o.images}")
        if not 0.0 < o.percentile <= 100.0:
            raise PipelineError(f"pass 'quantize': option 'percentile' must be in (0, 100], got {o.percentile}")
        both = sorted(set(o.nodes) & set(o.exclude))
        if both:
            raise PipelineError(f"pass 'quantize': {', '.join(both)} both selected (nodes=) and excluded (exclude=)")

    # -- the per-node protocol (candidates / with_nodes), used by per-node reports and searches ------

    def candidates(self, model: onnx.ModelProto | ModelState) -> list[str]:
        """Names of the nodes this configured pass would quantize, in graph order.

        Raises:
            PassError: `nodes=` or `exclude=` names a node the model does not have.
        """
        proto = model.view() if isinstance(model, ModelState) else model
        selected, _ = self._select(name_nodes(proto)[0])
        return [n.name for n in selected]

    def with_nodes(self, names: Sequence[str]) -> "Quantize":
        """A copy of this pass quantizing only `names` (the other options kept)."""
        return Quantize(dataclasses.replace(self.options, nodes=tuple(names), exclude=()))

    def sharing_calibration(self, model: onnx.ModelProto | ModelState, directory: str | Path) -> "Quantize":
        """A copy of this pass that quantizes from ranges calibrated once on `model` (written to
        `directory`/ranges.json by `calibrate_ranges`): its `with_nodes` copies keep `ranges=`, so a
        per-node report runs the float model over the calibration data once instead of once per node.
        Every tensor's range is calibrated on the same data whatever the node selection, so each copy
        writes the same model a fresh calibration would. `directory` must outlive the copies' runs;
        a pass that already has `ranges=` is returned as it is.

        Raises:
            PassError: as `calibrate_ranges` (nothing to calibrate, already quantized, calibration data).
        """
        if self.options.ranges:
            return self
        proto = model.view() if isinstance(model, ModelState) else model
        path = calibrate_ranges(proto, Path(directory) / "ranges.json", self.options)
        return Quantize(dataclasses.replace(self.options, ranges=str(path)))

    # -- the rewrite -------------------------------------------------------------------------------

    def run(self, state: ModelState) -> PassResult:
        model, named = name_nodes(state.view())
        _refuse_quantized(model)
        need = MIN_OPSET if self.options.per_channel else MIN_OPSET_PER_TENSOR
        if state.opset < need:
            what = "per-channel QDQ needs opset >= 13 (per-axis DequantizeLinear)" if self.options.per_channel else "QDQ needs opset >= 10"
            raise PassError(f"quantize: the model is at opset {state.opset}; {what}: put target-opset{{opset={MIN_OPSET}}} before quantize"
                            + (" or use per_channel=false" if self.options.per_channel and state.opset >= MIN_OPSET_PER_TENSOR else ""))
        selected, skipped = self._select(model)
        if not any(n.op_type in COMPUTE_OPS for n in selected):
            reason = ("no Conv, ConvTranspose, MatMul or Gemm among the selected nodes: Q/DQ around "
                      "the other ops alone would cost time and precision and gain nothing")
            return PassResult(False, {"nodes_int8": 0}, skipped=skipped, notes=[reason])
        if self.options.ranges:
            if not Path(self.options.ranges).is_file():
                raise PassError(f"quantize: ranges file {self.options.ranges}: no such file")
            feeds, source = [], f"ranges from {self.options.ranges}"
        else:
            feeds, source = self._calibration(model)
        work = onnx.ModelProto()
        work.CopyFrom(model)  # onnxruntime's quantizer may edit what it is given
        quantized = _quantize(work, feeds, [n.name for n in selected], self.options)
        int8 = _int8_nodes(quantized)
        selected_names = {n.name for n in selected}
        for n in selected:
            if n.op_type in COMPUTE_OPS and n.name not in int8:
                skipped.append(Skip(n.name, "selected, but onnxruntime's quantizer left it in float (no calibrated range or unsupported form)"))
        state.replace(quantized)
        stats: dict[str, int | float | str] = {
            "nodes_int8": sum(1 for name in int8 if name in selected_names),
            "compute_int8": sum(1 for n in selected if n.op_type in COMPUTE_OPS and n.name in int8),
            "compute_float": sum(1 for n in model.graph.node if n.op_type in COMPUTE_OPS and n.name not in int8),
            "qdq_nodes": sum(1 for n in quantized.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")),
            "nodes_named": named,
            "calibration": source,
            "images": self.options.images,
            "method": self.options.method,
        }
        return PassResult(True, stats, skipped=skipped)

    def _select(self, model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], list[Skip]]:
        """(nodes to quantize, skips with reasons); unknown node names are a PassError."""
        o = self.options
        names = {n.name for n in model.graph.node if n.name}
        unknown = [n for n in (*o.nodes, *o.exclude) if n not in names]
        if unknown:
            raise PassError(f"quantize: no node named {', '.join(repr(u) for u in unknown)} in the model "
                            f"({len(names)} named nodes, e.g. {', '.join(sorted(names)[:5]) or 'none'})")
        qdq = _qdq_op_types()
        selected: list[onnx.NodeProto] = []
        skipped: list[Skip] = []
        for node in model.graph.node:
            label = node.name or f"{node.op_type}({node.output[0] if node.output else '?'})"
            if node.op_type not in qdq:
                continue
            if o.nodes and node.name not in o.nodes:
                skipped.append(Skip(label, "not selected (nodes=)"))
            elif node.name in o.exclude:
                skipped.append(Skip(label, "excluded (exclude=)"))
            elif node.op_type in o.exclude_types:
                skipped.append(Skip(label, f"op type {node.op_type} excluded (exclude_types=)"))
            else:
                selected.append(node)
        return selected, skipped

    def _calibration(self, model: onnx.ModelProto) -> tuple[list[dict[str, np.ndarray]], str]:
        """The calibration feeds (one dict per run) and a one-line description of their source."""
        o = self.options
        if not o.calibration:
            feeds = [seeded_inputs(model, o.seed + i) for i in range(o.images)]
            return feeds, f"synthetic (standard normal, seeds {o.seed}..{o.seed + o.images - 1})"
        return load_calibration(o.calibration, model, o.images), f"{o.calibration} (first {o.images})"


def calibrate_ranges(model: onnx.ModelProto, path: str | Path, options: QuantizeOptions | None = None) -> Path:
    """Calibrates `model` with the data source and method of `options` and writes the activation
    ranges to `path` (onnxruntime's JSON calibration cache, atomically), for `quantize{ranges=PATH}`.

    Ranges are kept for every tensor of every quantizable op type, whatever `nodes`/`exclude` say, so
    one file serves every node selection of the same model, method and data (what a per-node search
    needs: calibrate once, quantize many times).

    Raises:
        PassError: as `Quantize.run` (already quantized, opset, calibration data), or nothing to calibrate.
    """
    from onnxforge.modelio import write_bytes_atomic

    o = dataclasses.replace(options or QuantizeOptions(), ranges="", nodes=(), exclude=(), exclude_types=())
    p = Quantize(o)
    proto, _ = name_nodes(model)
    _refuse_quantized(proto)
    selected, _ = p._select(proto)
    if not any(n.op_type in COMPUTE_OPS for n in selected):
        raise PassError("quantize: nothing to calibrate: no Conv, ConvTranspose, MatMul or Gemm")
    feeds, _ = p._calibration(proto)
    with tempfile.TemporaryDirectory(prefix="onnxforge-ranges-") as tmp:
        cache = Path(tmp) / "ranges.json"
        work = onnx.ModelProto()
        work.CopyFrom(proto)
        _quantize(work, feeds, [n.name for n in selected], o, cache=str(cache))
        data = cache.read_bytes()
    path = Path(path)
    write_bytes_atomic(path, data)
    return path


def name_nodes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(model, count): a copy in which every unnamed node is named ``<op>_quantize_<k>`` (onnxruntime's
    quantizer selects and excludes nodes by name), or `model` itself when all nodes have names.
    Deterministic, so `candidates` and `run` agree on the names."""
    unnamed = [i for i, n in enumerate(model.graph.node) if not n.name]
    if not unnamed:
        return model, 0
    named = onnx.ModelProto()
    named.CopyFrom(model)
    used = {n.name for n in model.graph.node}
    k = 0
    for i in unnamed:
        node = named.graph.node[i]
        while f"{node.op_type}_quantize_{k}" in used:
            k += 1
        node.name = f"{node.op_type}_quantize_{k}"
        used.add(node.name)
        k += 1
    return named, len(unnamed)


def load_calibration(path: str | Path, model: onnx.ModelProto, images: int) -> list[dict[str, np.ndarray]]:
    """Feeds for `model` from the first `images` samples of an .npz of preprocessed inputs.

    Each array is named after a graph input (a file with one array fits a model with one input whatever
    its name) and has shape (N, *sample) where sample is the input's shape without the batch axis;
    samples are fed `batch` at a time for a static batch, else one at a time.

    Raises:
        PassError: missing or unreadable file, arrays that do not match the inputs, fewer than `images`
            samples (or not a multiple of the model's static batch).
    """
    path = Path(path)
    if not path.is_file():
        raise PassError(f"quantize: calibration file {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise PassError(f"quantize: calibration file {path}: not a readable .npz ({str(exc).splitlines()[0][:200]})") from None
    specs = input_specs(model)
    if len(arrays) == 1 and len(specs) == 1:
        arrays = {specs[0].name: next(iter(arrays.values()))}
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise PassError(f"quantize: calibration file {path} has no array for input {missing[0]!r} (arrays: {', '.join(sorted(arrays)) or 'none'})")
    feeds_per_input: dict[str, list[np.ndarray]] = {}
    for spec in specs:
        data = arrays[spec.name]
        batch = spec.shape[0] if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] > 0 else 1
        want = tuple(spec.shape[1:])
        got = tuple(data.shape[1:])
        if len(got) != len(want) or any(isinstance(w, int) and w > 0 and w != g for w, g in zip(want, got)):
            raise PassError(f"quantize: calibration array {spec.name!r} has samples of shape {list(got)}, the model's input "
                            f"{spec.name!r} takes {list(want)} (after the batch axis)")
        if data.shape[0] < images:
            raise PassError(f"quantize: calibration file {path} has {data.shape[0]} samples for {spec.name!r}, "
                            f"images={images} requested")
        if images % batch:
            raise PassError(f"quantize: images={images} is not a multiple of the model's batch {batch}")
        data = data[:images].astype(spec.dtype, copy=False)
        feeds_per_input[spec.name] = [data[i:i + batch] for i in range(0, images, batch)]
    runs = len(next(iter(feeds_per_input.values()))) if feeds_per_input else 0
    return [{name: chunks[i] for name, chunks in feeds_per_input.items()} for i in range(runs)]


def _refuse_quantized(model: onnx.ModelProto) -> None:
    found = [n for n in model.graph.node if n.op_type in QUANTIZED_OPS]
    if found:
        first = found[0]
        raise PassError(f"quantize: the model is already quantized ({len(found)} quantization nodes, e.g. "
                        f"{first.op_type} {first.name or first.output[0]!r}); quantize the float model")


class _Reader:
    """onnxruntime CalibrationDataReader over a list of feeds (duck-typed: get_next / rewind)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


class _OrtLogFilter(logging.Filter):
    """Routes the root-logger warnings of onnxruntime.quantization to this module's logger at debug
    level (library code does not print; onnxruntime logs through the root logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "onnxruntime" in record.pathname and "quantization" in record.pathname:
            log.debug("onnxruntime.quantization: %s", record.getMessage())
            return False
        return True


@contextlib.contextmanager
def _quiet_ort():
    """onnxruntime's calibrators print progress to stdout and warn on the root logger: both go to
    this module's debug log instead."""
    root = logging.getLogger()
    filt = _OrtLogFilter()
    root.addFilter(filt)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        root.removeFilter(filt)
        if printed.getvalue().strip():
            log.debug("onnxruntime.quantization printed: %s", printed.getvalue().strip())


def _quantize(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], nodes: list[str], o: QuantizeOptions,
              cache: str = "") -> onnx.ModelProto:
    """quantize_static on `model`; `o.ranges` is read (never written), `cache` (a path that does not
    exist yet) receives the calibrated ranges."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    extra = {"CalibPercentile": float(o.percentile)} if o.method == "percentile" else {}
    with tempfile.TemporaryDirectory(prefix="onnxforge-quantize-") as tmp, _quiet_ort():
        source: onnx.ModelProto | str = model
        if o.preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            pre = str(Path(tmp) / "pre.onnx")
            try:
                quant_pre_process(model, pre)
            except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidGraph) and ValueError
                raise PassError(f"quantize: onnxruntime's quant_pre_process failed: {str(exc).splitlines()[0][:300]}") from None
            source = pre
        out = Path(tmp) / "int8.onnx"
        try:
            quantize_static(
                source, str(out), _Reader(feeds) if not o.ranges else None, quant_format=QuantFormat.QDQ,
                per_channel=o.per_channel, activation_type=QuantType.QUInt8 if o.activations == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8, nodes_to_quantize=nodes, calibrate_method=methods[o.method],
                extra_options=extra, calibration_cache_path=(o.ranges or cache) or None,
            )
        except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidGraph) and ValueError
            raise PassError(f"quantize: onnxruntime failed to quantize the model: {str(exc).splitlines()[0][:300]}") from None
        result = onnx.load(str(out))
    del result.metadata_props[:]  # the state keeps its own metadata
    return result


def _int8_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of nodes all of whose inputs come from DequantizeLinear nodes (weights included): the
    groups onnxruntime turns into integer kernels. A float node fed by a quantized neighbour's
    DequantizeLinear has float weights or a float output and does not count."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and n.input and all(i in dq_out for i in n.input if i)}

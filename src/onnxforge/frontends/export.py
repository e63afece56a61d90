"""Export a seed model (or any importable torch module factory) to clean, static-shape ONNX.

Contract of ``export_model``:
- Everything the user controls is validated before any work: model name, variant, batch (>= 1), input
  size (positive, a multiple of the model's ``size_multiple``), opset (11..20, what the TorchScript
  exporter writes here; ``None``: the selected CANN profile's default opset, as ``onnxforge export`` does
  when ``--opset`` is not given), output path (its directory exists, it is not the checkpoint).
- The model is built in onnxforge's own code, the checkpoint (if any) is loaded strictly, adaptive
  pools are swapped for exact static forms (``frontends.adaptive``), and the TorchScript exporter writes
  the graph at static shapes with the spec's input/output names and constant folding.
- Shape computations on the static shapes are folded to constants (``_fold_static_shapes``).
- The graph must pass ``onnx.checker`` (full check) and, on the seeded input of ``numerics`` (the same
  input the pass manager's verifier uses), onnxruntime must match PyTorch within 1e-3 of the output's
  scale; otherwise FrontendError and nothing is written. The PyTorch outputs are kept on the result as
  the golden reference.
- The output file is written atomically (``modelio.save_model``): it is complete or untouched.
- Progress: ``progress(step, index, total)`` is called when each of the ``EXPORT_STEPS`` starts (index
  0-based; without a checkpoint the weights step is ``calibrate weights`` or ``factory weights``), then once with
  ``("done", total, total)``; validation errors are raised before the first call.
- Without a checkpoint the weights are deterministic (fixed seed, BatchNorm statistics calibrated on a
  seeded batch so activations stay at unit scale) and a warning says accuracy figures need real weights.
"""

from __future__ import annotations

import importlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from onnxforge.cann import select_profile
from onnxforge.errors import BackendError, CheckpointError, FrontendError
from onnxforge.numerics import DEFAULT_SEED

if TYPE_CHECKING:
    import onnx
    import torch

    from onnxforge.frontends.base import ModelSpec

logger = logging.getLogger(__name__)

#: The opsets the exporter writes here (what torch's TorchScript exporter does cleanly); what atc accepts is
#: the CANN profile's (`onnxforge.cann`), a narrower range.
MIN_OPSET, MAX_OPSET = 11, 20
#: The library's default (onnxruntime, the passes); ``opset=None`` (the CLI's default) is the CANN profile's.
DEFAULT_OPSET = 17
#: Seed of the deterministic weights used when no checkpoint is given.
WEIGHT_SEED = 0
#: ONNX vs PyTorch: the largest allowed max-abs difference, relative to max(1, max |golden|).
REL_TOLERANCE = 1e-3
#: The steps reported to ``export_model``'s progress callback, in order.
EXPORT_STEPS = ("build model", "load checkpoint", "export", "check against PyTorch")
#: progress(step, index, total): step `index` (0-based) starts; ("done", total, total) at the end.
ExportProgress = Callable[[str, int, int], None]

NO_CHECKPOINT_WARNING = "no checkpoint: deterministic weights; accuracy figures need real weights"


@dataclass
class ExportResult:
    """What `export_model` wrote and how it checked it."""

    path: Path
    model: str  # spec name, or "pkg.module:factory" for the generic path
    variant: str
    input_names: list[str]
    input_shapes: list[tuple[int, ...]]
    output_names: list[str]
    output_shapes: list[tuple[int, ...]]
    checkpoint: Path | None
    warnings: list[str]
    max_abs_diff: float  # onnxruntime vs PyTorch on the seeded input, over all outputs
    opset: int
    pool_swaps: list[str] = field(default_factory=list)  # adaptive pools made static, one line each
    golden_inputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    golden_outputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class _Plan:
    name: str
    variant: str
    input_shape: tuple[int, int, int, int] | tuple[int, ...]
    input_names: list[str]
    output_names: list[str] | None  # None: derived from the generic model's outputs
    build: Callable[[], torch.nn.Module]
    spec: ModelSpec | None


def export_model(
    name_or_factory: str,
    out_path: str | Path,
    checkpoint: str | Path | None = None,
    variant: str = "upstream",
    batch_size: int = 1,
    input_size: tuple[int, int] | None = None,
    opset: int | None = DEFAULT_OPSET,
    with_aux: bool = False,
    input_shape: Sequence[int] | None = None,
    progress: ExportProgress | None = None,
    cann: str | None = None,
) -> ExportResult:
    """Builds the model, loads `checkpoint`, exports static ONNX to `out_path` and checks it against PyTorch.

    Args:
        name_or_factory: a registered model name (``fastscnn``, ``pspnet``...) or ``"pkg.module:factory"``
            naming a callable that returns a ``torch.nn.Module`` (then `input_shape` is required).
        out_path: the .onnx file to write (atomically).
        checkpoint: a ``.pth``/``.pth.tar`` file in the upstream format; None: deterministic weights.
        variant: one of the spec's variants (``upstream`` always exists).
        batch_size: static batch dimension (>= 1).
        input_size: (H, W); default: the spec's evaluation input size.
        opset: ONNX opset, 11..20; None: the CANN profile's default opset (see `cann`).
        with_aux: also export the auxiliary heads' outputs (models that have them).
        input_shape: the full input shape; required for a factory, and for a named model an alternative
            to `batch_size` + `input_size` (N, 3, H, W).
        progress: called as each step starts (see the module docstring); None: silent.
        cann: CANN version whose profile gives the default opset and is named in opset errors (None: the
            installed CANN, else `onnxforge.cann.DEFAULT_CANN`).

    Raises:
        FrontendError: bad name, variant, size, opset, batch or CANN version; export or verification failed.
        CheckpointError: the checkpoint cannot be read or does not match the model.
        OutputPathError: the output path is the checkpoint or its directory is missing.
    """
    out_path = Path(out_path)
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    opset = _check_opset(opset, cann)
    _check_output(out_path, ckpt_path)
    if ckpt_path is not None and not ckpt_path.is_file():
        raise CheckpointError(f"{ckpt_path}: no such checkpoint file")
    plan = _plan(name_or_factory, variant, batch_size, input_size, with_aux, input_shape)
    total = len(EXPORT_STEPS)

    def step(index: int, name: str | None = None) -> None:
        if progress is not None:
            progress(name or EXPORT_STEPS[index], index, total)

    step(0)
    import torch  # after validation: user errors come back without paying for the import
    result_warnings: list[str] = []

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHT_SEED)
        model = plan.build()
        if not isinstance(model, torch.nn.Module):
            raise FrontendError(f"{plan.name}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
        model.eval()
        step(1, None if ckpt_path is not None else "calibrate weights" if plan.spec is not None else "factory weights")
        if ckpt_path is not None:
            from onnxforge.frontends.checkpoint import load_checkpoint, load_into

            load_into(model, load_checkpoint(ckpt_path), plan.name)
        elif plan.spec is not None:
            calibrate_batchnorm(model, plan.input_shape, seed=WEIGHT_SEED)
            logger.warning(NO_CHECKPOINT_WARNING)
            result_warnings.append(NO_CHECKPOINT_WARNING)
        else:
            msg = "no checkpoint: weights are whatever the factory built"
            logger.warning(msg)
            result_warnings.append(msg)

    step(2)
    feeds_np = _seeded_input(plan.input_shape, plan.input_names[0])
    example = torch.from_numpy(feeds_np[plan.input_names[0]])

    from onnxforge.frontends.adaptive import swap_adaptive_pools

    swaps = swap_adaptive_pools(model, example)
    for swap in swaps:
        if not swap.exact:
            msg = f"adaptive pool {swap} (the {plan.variant} variant's emulation)"
            logger.info(msg)

    with torch.no_grad():
        golden_t = _as_tuple(model(example), plan.name)
    output_names = plan.output_names or (
        ["output"] if len(golden_t) == 1 else [f"output{i}" for i in range(len(golden_t))]
    )
    if len(output_names) != len(golden_t):
        raise FrontendError(
            f"{plan.name}: the model returns {len(golden_t)} outputs but the spec names {len(output_names)}"
        )
    golden = {n: t.detach().cpu().numpy() for n, t in zip(output_names, golden_t)}

    proto = _torch_export(model, example, plan.input_names, output_names, opset, plan.name)
    step(3)
    max_abs = _verify(proto, feeds_np, golden, plan.name)

    from onnxforge.modelio import save_model

    proto.metadata_props.add(key="onnxforge.checkpoint", value=ckpt_path.name if ckpt_path is not None else "none")  # read by evaluate.ab
    save_model(proto, out_path)
    if progress is not None:
        progress("done", total, total)
    logger.info("wrote %s (max abs diff vs PyTorch %.3g)", out_path, max_abs)
    return ExportResult(
        path=out_path,
        model=plan.name,
        variant=plan.variant,
        input_names=list(plan.input_names),
        input_shapes=[tuple(plan.input_shape)],
        output_names=list(output_names),
        output_shapes=[tuple(golden[n].shape) for n in output_names],
        checkpoint=ckpt_path,
        warnings=result_warnings,
        max_abs_diff=max_abs,
        opset=opset,
        pool_swaps=[str(s) for s in swaps],
        golden_inputs=feeds_np,
        golden_outputs=golden,
    )


# --- validation -------------------------------------------------------------------------------------


def _check_opset(opset: int | None, cann: str | None = None) -> int:
    """The opset to export at (None: the profile's default), or FrontendError naming the range and what the
    selected CANN profile's atc accepts."""
    try:
        prof = select_profile(cann)
    except BackendError as exc:  # the profile loader's error: an unknown CANN version
        raise FrontendError(str(exc)) from None
    if opset is None:
        return prof.default_opset
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise FrontendError(f"opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET} ({prof.describe_opsets()})")
    return opset


def _check_output(out_path: Path, ckpt_path: Path | None) -> None:
    from onnxforge.errors import OutputPathError
    from onnxforge.modelio import check_output_path

    if ckpt_path is not None:
        check_output_path(ckpt_path, out_path)  # never overwrite the checkpoint
        return
    parent = out_path.parent if str(out_path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"{out_path}: output directory {parent} does not exist")
    if out_path.is_dir():
        raise OutputPathError(f"{out_path}: is a directory, expected a file path")


def resolve_input_shape(
    spec: ModelSpec,
    batch_size: int = 1,
    input_size: tuple[int, int] | None = None,
    input_shape: Sequence[int] | None = None,
) -> tuple[int, int, int, int]:
    """The static (N, 3, H, W) input of a named model, validated against its size rules.

    Raises:
        FrontendError: batch < 1, non-positive size, size not a multiple of ``spec.size_multiple``,
            or `input_shape` inconsistent with `input_size`.
    """
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 4 or shape[1] != 3:
            raise FrontendError(f"{spec.name}: input shape must be Nx3xHxW, got {_fmt(shape)}")
        if input_size is not None and tuple(input_size) != shape[2:]:
            raise FrontendError(
                f"{spec.name}: --input-size {input_size[0]},{input_size[1]} disagrees with --input-shape {_fmt(shape)}"
            )
        batch_size, input_size = shape[0], (shape[2], shape[3])
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FrontendError(f"batch size must be a positive integer, got {batch_size}")
    h, w = input_size if input_size is not None else spec.eval.input_size
    if h < 1 or w < 1:
        raise FrontendError(f"{spec.name}: input size must be positive, got {h}x{w}")
    m = spec.size_multiple
    if m > 1 and (h % m or w % m):
        raise FrontendError(
            f"{spec.name}: input size {h}x{w} must be a multiple of {m} (e.g. {_round_up(h, m)}x{_round_up(w, m)})"
        )
    return (batch_size, 3, int(h), int(w))


def _plan(
    name: str,
    variant: str,
    batch_size: int,
    input_size: tuple[int, int] | None,
    with_aux: bool,
    input_shape: Sequence[int] | None,
) -> _Plan:
    if ":" in name:
        return _plan_factory(name, variant, batch_size, input_size, with_aux, input_shape)
    from onnxforge.frontends import get_spec

    spec = get_spec(name)
    if variant not in spec.variants:
        raise FrontendError(f"{spec.name}: unknown variant {variant!r}; choose one of {', '.join(spec.variants)}")
    if with_aux and len(spec.output_names) < 2:
        raise FrontendError(f"{spec.name} has no auxiliary outputs; drop --with-aux")
    shape = resolve_input_shape(spec, batch_size, input_size, input_shape)
    outputs = list(spec.output_names if with_aux else spec.output_names[:1])
    return _Plan(
        name=spec.name,
        variant=variant,
        input_shape=shape,
        input_names=[spec.input_name],
        output_names=outputs,
        build=lambda: spec.build(variant=variant, with_aux=with_aux),
        spec=spec,
    )


def _plan_factory(
    target: str,
    variant: str,
    batch_size: int,
    input_size: tuple[int, int] | None,
    with_aux: bool,
    input_shape: Sequence[int] | None,
) -> _Plan:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise FrontendError(f"{target!r}: expected 'package.module:factory'")
    if variant != "upstream" or with_aux:
        raise FrontendError(f"{target}: --variant and --with-aux apply to the seed models only")
    if input_shape is None:
        raise FrontendError(f"{target}: a generic module needs --input-shape, e.g. 1x3x224x224")
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise FrontendError(f"{target}: input shape must be positive, got {_fmt(shape)}")
    if input_size is not None or batch_size != 1:
        raise FrontendError(f"{target}: give the whole shape with --input-shape, not --batch-size/--input-size")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FrontendError(f"{target}: cannot import {module_name} ({exc})") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise FrontendError(f"{target}: {module_name} has no attribute {attr!r}")
    if not callable(factory):
        raise FrontendError(f"{target}: {attr} is not callable")
    return _Plan(
        name=target,
        variant="upstream",
        input_shape=shape,
        input_names=["input"],
        output_names=None,
        build=factory,  # type: ignore[arg-type]
        spec=None,
    )


# --- weights ----------------------------------------------------------------------------------------


def calibrate_batchnorm(model: torch.nn.Module, input_shape: Sequence[int], seed: int = WEIGHT_SEED) -> int:
    """Gives every BatchNorm reached by the forward the statistics of one seeded batch (deterministic).

    Freshly initialised BatchNorms (mean 0, var 1) make deep models' activations vanish or explode, so
    numeric comparisons would mean little. One train-mode forward with cumulative statistics on a
    seeded standard-normal batch of 2 samples (so 1x1 maps still have a variance) at the given spatial
    size puts every layer at unit scale. The result depends on the model, its variant and the spatial
    size only, not on the export batch. Parameters are untouched; the model is left in eval mode.
    Returns the number of BatchNorm layers updated.
    """
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        model.eval()
        return 0
    momenta = [bn.momentum for bn in bns]
    before = [bn.num_batches_tracked.clone() if bn.num_batches_tracked is not None else None for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    shape = (2, *map(int, input_shape[1:]))  # fixed batch: the weights do not depend on the export batch
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    try:
        model.train()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout masks
            model(x)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.eval()
    updated = 0
    for bn, nbt in zip(bns, before):
        if bn.num_batches_tracked is not None and int(bn.num_batches_tracked) > 0:
            updated += 1
        elif nbt is not None:
            bn.num_batches_tracked.copy_(nbt)
    return updated


# --- export and verification ------------------------------------------------------------------------


def _seeded_input(shape: Sequence[int], name: str) -> dict[str, np.ndarray]:
    # Same draw as numerics.seeded_inputs for a single float input, so later verifiers reproduce it.
    rng = np.random.default_rng(DEFAULT_SEED)
    return {name: rng.standard_normal(tuple(shape)).astype(np.float32)}


def _as_tuple(out: object, name: str) -> tuple[torch.Tensor, ...]:
    import torch

    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (tuple, list)) and out and all(isinstance(t, torch.Tensor) for t in out):
        return tuple(out)
    raise FrontendError(f"{name}: the model must return a tensor or a tuple of tensors, got {type(out).__name__}")


def _torch_export(
    model: torch.nn.Module, example: torch.Tensor, input_names: list[str], output_names: list[str], opset: int, name: str
) -> onnx.ModelProto:
    import onnx
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        try:
            torch.onnx.export(
                model,
                (example,),
                buf,
                input_names=input_names,
                output_names=output_names,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except (torch.onnx.errors.OnnxExporterError, torch.onnx.errors.UnsupportedOperatorError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise FrontendError(f"{name}: ONNX export failed at opset {opset}: {first}") from None
    for w in caught:
        logger.debug("exporter: %s", str(w.message).splitlines()[0] if str(w.message) else w.category.__name__)
    try:
        proto = _fold_static_shapes(onnx.load_from_string(buf.getvalue()))
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise FrontendError(f"{name}: exported graph fails onnx.checker: {str(exc).splitlines()[0][:300]}") from None
    return proto


def _fold_static_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Folds the Shape -> Slice -> Concat chains the TorchScript exporter emits for Resize sizes.

    Every shape is static here, so those chains are constants; folding them (onnx shape inference, then
    onnxscript's constant folding and dead-node removal) leaves Resize nodes with constant sizes. Exact:
    only subgraphs whose values are known at export time are replaced by their values.
    """
    import onnx
    import onnx_ir as ir
    from onnxscript.optimizer import fold_constants, remove_unused_nodes

    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    model = ir.serde.deserialize_model(inferred)
    fold_constants(model)
    remove_unused_nodes(model)
    return ir.serde.serialize_model(model)


def _verify(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], golden: dict[str, np.ndarray], name: str) -> float:
    from onnxforge.numerics import run_model

    got = run_model(proto, feeds)
    max_abs = 0.0
    for out_name, ref in golden.items():
        if out_name not in got:
            raise FrontendError(f"{name}: exported graph has no output {out_name!r}")
        value = got[out_name]
        if value.shape != ref.shape:
            raise FrontendError(f"{name}: output {out_name} has shape {value.shape} in ONNX vs {ref.shape} in PyTorch")
        diff = float(np.abs(value.astype(np.float64) - ref.astype(np.float64)).max()) if ref.size else 0.0
        scale = max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
        if not np.isfinite(diff) or diff > REL_TOLERANCE * scale:
            raise FrontendError(
                f"{name}: ONNX output {out_name} differs from PyTorch by {diff:.3g} (allowed {REL_TOLERANCE * scale:.3g}); "
                "nothing written"
            )
        max_abs = max(max_abs, diff)
    return max_abs


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def _round_up(v: int, m: int) -> int:
    return max(m, -(-v // m) * m)


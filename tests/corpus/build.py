"""A third-party corpus: ONNX graphs built here from code onnxforge did not write.

Three families, every case named `family/model/exporter-opsetN`:
- `smp/...`: segmentation_models_pytorch architectures with a small encoder (resnet18 from smp's own
  encoders, `encoder_weights=None`, random weights from a fixed seed: nothing is downloaded), exported
  by the TorchScript exporter (dynamic batch and spatial dims, as users export them; static where the
  model cannot export dynamically, e.g. PSPNet's adaptive pooling) at opsets 11 and 17, and by the
  dynamo exporter (static) at opsets 18 and 17 where its conversion works;
- `timm/...`: architecturally diverse timm classifiers (`pretrained=False`), small inputs;
- `onnx-node/...`: the ONNX backend node tests of the installed `onnx` package, with their expected
  outputs as the oracle (generated from the package's own test-case code: see `node_cases`).

Exports are cached under `.cache/corpus/<key>/`, the key a hash of the versions of torch, onnx, timm
and segmentation_models_pytorch and of this builder; a case whose export fails is cached as that
failure (the exporter's one-line reason) and reported, not retried. `timm` and `smp` need torchvision,
whose CUDA-built wheel cannot load its C++ ops next to the CPU torch: `import_model_zoos` declares the
two op schemas torchvision's Python registers fake kernels for, so its pure-Python modules (all that
timm and smp use) import.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "corpus"
BUILDER_VERSION = "1"

SMP_ARCHS = ("Unet", "UnetPlusPlus", "PSPNet", "DeepLabV3", "DeepLabV3Plus", "FPN", "Linknet", "PAN", "MAnet", "UPerNet", "Segformer")
SMP_SIZE = 128  # the smallest all of them run at with resnet18 (at 64 some pooling leaves nothing)
#: TorchScript exports adaptive pooling only where the pooled sizes (1, 2, 3, 6) divide the feature map:
#: PSPNet pools the stride-8 map (96 / 8 = 12), UPerNet the stride-32 one (192 / 32 = 6).
SMP_SIZES = {"PSPNet": 96, "UPerNet": 192}
TIMM_MODELS = (
    "resnet10t", "mobilenetv3_small_050", "efficientnet_lite0", "convnext_atto", "regnetx_002", "ghostnet_050",
    "mobilevit_xxs", "deit_tiny_patch16_224", "edgenext_xx_small", "repvit_m0_9", "mixnet_s", "densenet121",
)
TIMM_SIZE = 64
#: The dynamo exporter writes opset 18 and converts down where onnx's version converter can (17 often,
#: 11 never here), so its cases are 18 and 17; TorchScript's are 11 and 17.
EXPORTS = (("torchscript", 11), ("torchscript", 17), ("dynamo", 17), ("dynamo", 18))
ZOO_PACKAGES = ("torch", "onnx", "timm", "segmentation_models_pytorch")


@dataclass
class Case:
    """One corpus graph: where it came from, the model file (None when the export failed), an oracle."""

    name: str
    family: str
    path: Path | None
    reason: str = ""  # why there is no model (export failed), in one line
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # onnx-node: the shipped inputs
    expected: dict[str, np.ndarray] = field(default_factory=dict)  # onnx-node: the shipped outputs

    def load(self) -> onnx.ModelProto:
        return onnx.load(str(self.path))


def versions() -> dict[str, str]:
    out = {}
    for pkg in ZOO_PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def cache_dir() -> Path:
    key = hashlib.sha256(json.dumps({"v": versions(), "builder": BUILDER_VERSION}, sort_keys=True).encode()).hexdigest()[:16]
    return CACHE / key


def zoos_available() -> str:
    """'' when timm and smp import; otherwise why not (one line)."""
    try:
        import_model_zoos()
    except ImportError as exc:
        return f"timm / segmentation_models_pytorch not installed ({exc}); run `make setup`"
    return ""


def import_model_zoos():
    """Imports timm and segmentation_models_pytorch (see the module docstring for torchvision)."""
    import torch

    try:
        import torchvision  # noqa: F401
    except RuntimeError:  # "operator torchvision::nms does not exist": its C++ ops did not load
        import sys

        for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[mod]
        if not hasattr(import_model_zoos, "_lib"):
            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
            import_model_zoos._lib = lib  # the registration lives as long as the library object
        import torchvision  # noqa: F401
    import segmentation_models_pytorch as smp
    import timm

    return timm, smp


def _smp_factory(arch: str) -> Callable:
    def build():
        _, smp = import_model_zoos()
        return getattr(smp, arch)("resnet18", encoder_weights=None, classes=3)
    return build


def _timm_factory(name: str) -> Callable:
    def build():
        timm, _ = import_model_zoos()
        kwargs = {"img_size": TIMM_SIZE} if "deit" in name else {}
        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    return build


def zoo_specs(families: tuple[str, ...] = ("smp", "timm"), exports=EXPORTS) -> list[tuple[str, str, Callable, int, str, int]]:
    """(case name, family, factory, input size, exporter, opset) for every zoo case."""
    specs = []
    if "smp" in families:
        for arch in SMP_ARCHS:
            for exporter, opset in exports:
                specs.append((f"smp/{arch}/{exporter}-opset{opset}", "smp", _smp_factory(arch), SMP_SIZES.get(arch, SMP_SIZE), exporter, opset))
    if "timm" in families:
        for name in TIMM_MODELS:
            for exporter, opset in exports:
                specs.append((f"timm/{name}/{exporter}-opset{opset}", "timm", _timm_factory(name), TIMM_SIZE, exporter, opset))
    return specs


def export(factory: Callable, size: int, exporter: str, opset: int, path: Path, segmentation: bool) -> None:
    """Exports the model (seed 0 weights, eval mode) to `path`; raises whatever the exporter raises."""
    import torch

    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(1, 3, size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            axes = {0: "N", 2: "H", 3: "W"}
            try:
                torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["input"],
                                  output_names=["output"], dynamic_axes={"input": axes, "output": axes if segmentation else {0: "N"}})
            except Exception:  # e.g. adaptive pooling needs static sizes: export as the user then would
                torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["input"], output_names=["output"])
        else:
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, input_names=["input"],
                                         output_names=["output"], verbose=False)
            program.save(str(tmp))
    m = onnx.load(str(tmp))
    got = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"the {exporter} exporter wrote opset {got}, not {opset} (its version conversion failed)")
    if any(t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer):
        onnx.load_external_data_for_model(m, str(tmp.parent))
    onnx.save(m, str(path))
    tmp.unlink(missing_ok=True)
    for extra in path.parent.glob(tmp.name + "*.data"):
        extra.unlink()


def zoo_cases(families: tuple[str, ...] = ("smp", "timm"), names: set[str] | None = None, exports=EXPORTS,
              progress: Callable[[str], None] | None = None) -> list[Case]:
    """Builds (or reads from the cache) every zoo case, or only those in `names`."""
    root = cache_dir()
    import_model_zoos()  # an ImportError here is about this machine, not a case: never cached
    cases = []
    for name, family, factory, size, exporter, opset in zoo_specs(families, exports):
        if names is not None and name not in names:
            continue
        path = root / (name.replace("/", "__") + ".onnx")
        failed = path.with_suffix(".failed")
        if not path.exists() and not failed.exists():
            if progress:
                progress(f"exporting {name}")
            try:
                export(factory, size, exporter, opset, path, segmentation=family == "smp")
            except Exception as exc:  # any exporter failure is a fact about the case, recorded once
                text = str(exc).strip().splitlines()
                failed.parent.mkdir(parents=True, exist_ok=True)
                failed.write_text(f"{type(exc).__name__}: {text[0][:300] if text else ''}")
        if path.exists():
            cases.append(Case(name, family, path))
        else:
            cases.append(Case(name, family, None, reason=failed.read_text()))
    return cases


def node_cases(pattern: str = "") -> list[Case]:
    """The ONNX backend node tests of the installed onnx package, with their inputs and expected outputs.

    The wheel ships their generators (`onnx.backend.test.case.node`), not the `data/node` files: they
    are generated once (half a minute) and cached as `onnx-node/<name>.onnx` + `.npz`. Cases whose
    inputs or outputs are not plain tensors (sequences, optionals) are left out.
    """
    root = cache_dir() / "onnx-node"
    index = root / "index.json"
    if not index.exists():
        _write_node_cases(root)
    cases = []
    for name in json.loads(index.read_text()):
        if pattern and pattern not in name:
            continue
        with np.load(root / f"{name}.npz", allow_pickle=False) as data:
            inputs = {k[3:]: data[k] for k in data.files if k.startswith("in:")}
            expected = {k[4:]: data[k] for k in data.files if k.startswith("out:")}
        cases.append(Case(f"onnx-node/{name}", "onnx-node", root / f"{name}.onnx", inputs=inputs, expected=expected))
    return cases


def _write_node_cases(root: Path) -> None:
    from onnx.backend.test.case.node import collect_testcases

    root.mkdir(parents=True, exist_ok=True)
    names = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        testcases = collect_testcases(None)
    for tc in testcases:
        model = tc.model
        if not tc.data_sets or model is None:
            continue
        inputs, outputs = tc.data_sets[0]
        inits = {t.name for t in model.graph.initializer}
        in_names = [vi.name for vi in model.graph.input if vi.name not in inits]
        out_names = [vi.name for vi in model.graph.output]
        arrays = list(inputs) + list(outputs)
        if len(inputs) != len(in_names) or len(outputs) != len(out_names) or not all(
                isinstance(a, np.ndarray) and a.dtype.kind in "fiub" for a in arrays):
            continue
        payload = {f"in:{n}": a for n, a in zip(in_names, inputs)} | {f"out:{n}": a for n, a in zip(out_names, outputs)}
        np.savez(root / f"{tc.name}.npz", **payload)
        onnx.save(model, str(root / f"{tc.name}.onnx"))
        names.append(tc.name)
    (root / "index.json").write_text(json.dumps(sorted(set(names))))


# -- running passes on the corpus -------------------------------------------------------------------

@dataclass
class Outcome:
    """What one pass did to one case.

    status: `ok` (exact: verified equal; approximate: ran and was measured), `unchanged` (nothing to
    do, with the pass's reason), `refused` (a PassError with a reason: a clean refusal), `mismatch`
    (an exact pass changed the outputs: a bug), `crash` (an exception that is not a ForgeError
    somewhere in the chain: a bug).
    """

    case: str
    pass_: str
    status: str
    message: str = ""
    nodes_before: int = 0
    nodes_after: int = 0
    seconds: float = 0.0
    deviation: float | None = None  # approximate passes: max abs deviation from the previous stage

    @property
    def bug(self) -> bool:
        return self.status in ("mismatch", "crash")


def oracle_problem(case: Case) -> str:
    """'' when onnxforge's verifier can run the case and onnxruntime agrees with its shipped outputs
    (onnx-node); otherwise why the case cannot judge a pass (the case is then left out, with it)."""
    from onnxforge.errors import ForgeError
    from onnxforge.numerics import compare_arrays, input_specs, run_model

    model = case.load()
    try:
        input_specs(model)
        got = run_model(model, case.inputs) if case.expected else {}
    except ForgeError as exc:
        return str(exc)
    for name, want in case.expected.items():
        if name not in got:
            return f"onnxruntime gives no output '{name}'"
        cmp = compare_arrays(name, want, got[name], rtol=1e-3, atol=1e-5)
        if not cmp.ok:
            return f"onnxruntime disagrees with the shipped output ({cmp})"
    return ""


def run_pass(case: Case, item: str, model: onnx.ModelProto | None = None) -> Outcome:
    """Applies the pipeline item (one pass, with options) to the case with verification on, the case's
    own inputs (onnx-node) or the verifier's default shapes, and classifies what happened."""
    import time

    from onnxforge.errors import ForgeError, VerificationError
    from onnxforge.numerics import compare_arrays, run_model
    from onnxforge.passes import PassManager, Verifier

    model = model if model is not None else case.load()
    t = time.perf_counter()
    try:
        result = PassManager(item, verifier=Verifier(inputs=case.inputs)).run(model)
    except ForgeError as exc:
        seconds = time.perf_counter() - t
        chain, e = [], exc
        while e is not None:
            chain.append(e)
            # `raise PassError(...) from None` is a deliberate refusal: its suppressed context is not a crash
            e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
        crash = next((c for c in chain if not isinstance(c, ForgeError)), None)
        if crash is not None:
            return Outcome(case.name, item, "crash", f"{type(crash).__name__}: {str(crash).splitlines()[0][:200] if str(crash) else ''}", seconds=seconds)
        mismatch = any(isinstance(c, VerificationError) and "outputs differ" in str(c) for c in chain)
        return Outcome(case.name, item, "mismatch" if mismatch else "refused", str(exc)[:400], seconds=seconds)
    except Exception as exc:  # a crash outside any pass (the manager itself): a bug, reported as such
        return Outcome(case.name, item, "crash", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    seconds = time.perf_counter() - t
    stage = result.stages[0]
    out = Outcome(case.name, item, "ok" if stage.modified else "unchanged", "; ".join(stage.notes)[:300],
                  result.nodes_before, result.nodes_after, seconds)
    if stage.modified and stage.kind == "approximate":
        out.deviation = stage.verification.max_abs
        out.message = stage.verification.detail[:300]
    if stage.modified and stage.kind == "exact" and stage.verification.status != "passed":
        out.message = f"verification {stage.verification.status}: {stage.verification.detail[:300]}"
    if stage.modified and stage.kind == "exact" and case.expected:  # the shipped outputs are the oracle
        from onnxforge.passes import parse_pipeline

        try:
            got = run_model(result.model, case.inputs)
        except ForgeError as exc:
            return Outcome(case.name, item, "crash", f"the rewritten model does not run: {exc}", seconds=seconds)
        expected = parse_pipeline(item).passes[0].expected_outputs(dict(case.expected))  # e.g. argmax-output's labels
        for (name, want), have in zip(expected.items(), got.values()):
            cmp = compare_arrays(name, want, have, rtol=1e-3, atol=1e-5)
            if not cmp.ok:
                out.status, out.message = "mismatch", f"against the shipped output: {cmp}"
    return out

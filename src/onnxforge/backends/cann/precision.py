"""A precision-config directory: what a mixed-precision search chose, in the files atc reads.

Layout (written by `onnxforge.evaluate.fp16_search.write_precision_config`, read by `read_precision_config`
for ``compile --precision-config DIR``)::

    DIR/keep_dtype.cfg       atc --keep_dtype: the nodes that keep their original (float32) dtype
    DIR/op_precision.ini     atc --op_precision_mode (only where the CANN profile has the option)
    DIR/precision.json       the manifest: mode, the keep-set, the atc flags, the search's evidence

keep_dtype.cfg, as the CANN documentation describes it (CANN 6.0.1 "atctool_0095 --keep_dtype", CANN
8.0.0 "atlasatcparam_16_0074 --keep_dtype", hiascend.com): one operator per line, either a node name of
the original model (for an ONNX model: the NodeProto name) or ``OpType::TypeName`` for every node of an
Ascend IR op type (Ascend IR names, not ONNX ones: `ASCEND_IR_TYPES`; an op-type group whose Ascend IR
name is not recorded there is written as its node names). It takes effect together with ``--precision_mode`` (``force_fp16``) or
``--precision_mode_v2`` (``fp16``), not with ``must_keep_origin_dtype`` / ``origin``.

op_precision.ini (CANN 8.0.0 "atlasatcparam_16_0070 --op_precision_mode"; the ``[ByNodeName]`` section
since 6.2.RC2): ``[ByNodeName]`` then ``name=high_precision`` lines. It selects an operator's
implementation mode, not its dtype: here it asks the high-precision implementation of the kept nodes,
an addition to keep_dtype, which is what keeps them in float32.

Which global mode goes with it is read from the CANN profile: ``--precision_mode_v2=fp16`` where the
profile lists precision_mode_v2 (8.x and later), else ``--precision_mode=force_fp16``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from onnxforge.cann import CannProfile
from onnxforge.errors import BackendError

#: ONNX op type -> the Ascend IR op type an ``OpType::`` line must name. From the ONNX rows of CANN 6.3.RC1
#: "atctool_000198" (quantizable layers: Conv -> Conv2D for 4-D weights, Gemm -> MatMulV2, ConvTranspose ->
#: Conv2DTranspose, MatMul -> BatchMatMulV2, AveragePool -> AvgPoolV2) and, for ops whose Ascend IR type has
#: the ONNX name, CANN 8.0.RC1's Ascend IR op list ("aoepar_16_072"). Other op types are written as node names.
ASCEND_IR_TYPES: dict[str, str] = {
    "Conv": "Conv2D", "ConvTranspose": "Conv2DTranspose", "Gemm": "MatMulV2", "MatMul": "BatchMatMulV2",
    "AveragePool": "AvgPoolV2",
    **{t: t for t in ("Abs", "Add", "Elu", "Exp", "Floor", "LeakyRelu", "Log", "MaxPool", "Mul", "Neg", "Pow", "PRelu",
                      "Relu", "Round", "Sigmoid", "Sign", "Softplus", "Sub", "Tanh")},
}

KEEP_DTYPE_FILE = "keep_dtype.cfg"
OP_PRECISION_FILE = "op_precision.ini"
MANIFEST_FILE = "precision.json"
OP_TYPE_PREFIX = "OpType::"


@dataclass(frozen=True)
class PrecisionConfig:
    """A read precision-config directory. `names` are node names, `op_types` the ``OpType::`` lines."""

    directory: Path
    names: tuple[str, ...]
    op_types: tuple[str, ...]
    precision_mode: str | None  # the older option's value (force_fp16), or None
    precision_mode_v2: str | None  # fp16, or None
    op_precision: Path | None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def keep_dtype(self) -> Path:
        return self.directory / KEEP_DTYPE_FILE


def global_mode(profile: CannProfile) -> dict[str, str]:
    """The global precision option keep_dtype goes with, for this CANN line: {"precision_mode_v2": "fp16"} or
    {"precision_mode": "force_fp16"}."""
    return {"precision_mode_v2": "fp16"} if profile.has_option("precision_mode_v2") else {"precision_mode": "force_fp16"}


def keep_dtype_text(names: Sequence[str], op_types: Sequence[str] = (), header: str = "") -> str:
    """keep_dtype.cfg content: ``#`` comment lines of `header`, then op types, then node names, one per line."""
    lines = [f"# {ln}" for ln in header.splitlines() if ln.strip()]
    lines += [f"{OP_TYPE_PREFIX}{t}" for t in op_types] + list(names)
    return "\n".join(lines) + "\n"


def op_precision_text(names: Sequence[str], mode: str = "high_precision") -> str:
    return "[ByNodeName]\n" + "".join(f"{n}={mode}\n" for n in names)


def read_precision_config(directory: str | Path, node_names: Sequence[str] | None = None,
                          profile: CannProfile | None = None) -> PrecisionConfig:
    """Reads and checks a precision-config directory.

    Args:
        node_names: the model's node names; a keep-set naming a node the model lacks is an error.
        profile: the CANN profile compiling; options it lacks (``--keep_dtype``, ``--op_precision_mode``)
            are errors, and the global mode follows it.

    Raises:
        BackendError: not a directory, keep_dtype.cfg or precision.json missing or unreadable, a node the
            model does not have, an option the CANN line lacks.
    """
    d = Path(directory)
    if not d.is_dir():
        raise BackendError(f"--precision-config {d}: not a directory (expected {KEEP_DTYPE_FILE} and {MANIFEST_FILE} in it)")
    missing = [f for f in (KEEP_DTYPE_FILE, MANIFEST_FILE) if not (d / f).is_file()]
    if missing:
        raise BackendError(f"--precision-config {d}: no {' and no '.join(missing)} (write one with "
                           "'onnxforge report ... --per-node fp16', which leaves precision/ in the report directory)")
    try:
        manifest = json.loads((d / MANIFEST_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BackendError(f"--precision-config {d}: {MANIFEST_FILE} is not JSON ({exc})") from None
    lines = [ln.strip() for ln in (d / KEEP_DTYPE_FILE).read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    op_types = tuple(ln[len(OP_TYPE_PREFIX):] for ln in lines if ln.startswith(OP_TYPE_PREFIX))
    names = tuple(ln for ln in lines if not ln.startswith(OP_TYPE_PREFIX))
    if node_names is not None:
        have = set(node_names)
        absent = [n for n in names if n not in have]
        if absent:
            raise BackendError(f"--precision-config {d}: {KEEP_DTYPE_FILE} names node '{absent[0]}', which the model does not have"
                               + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else "") + ": was it searched on another model?")
    ini = d / OP_PRECISION_FILE
    op_precision = ini if ini.is_file() else None
    mode: dict[str, str] = {}
    if profile is not None:
        for flag in ("keep_dtype",) + (("op_precision_mode",) if op_precision else ()):
            if not profile.has_option(flag):
                raise BackendError(f"--precision-config: atc --{flag} is not in the CANN {profile.line} profile "
                                   f"(profile {profile.version}); choose another --cann")
        mode = global_mode(profile)
    return PrecisionConfig(d, names, op_types, mode.get("precision_mode"), mode.get("precision_mode_v2"), op_precision, manifest)

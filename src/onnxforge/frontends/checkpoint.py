"""Reading users' checkpoints in the upstream formats and loading them strictly into onnxforge's models.

Contract:
- ``load_checkpoint(path)`` reads a ``.pth`` / ``.pth.tar`` file written by ``torch.save`` (zip or legacy
  format) with ``weights_only=True`` and returns a flat ``{key: Tensor}`` state_dict. It unwraps the
  upstream wrappers (``state_dict``, ``model``, ``segmenter``, nested in any order, e.g. mmcv's
  ``{'meta', 'state_dict'}`` or SegmenTron's ``{'epoch', 'state_dict', ...}``) and strips a leading
  ``module.`` (DataParallel / DistributedDataParallel) from every key, as mmcv's ``revise_keys`` does.
  Any unreadable, truncated or non-checkpoint file raises CheckpointError with one line naming the file.
- ``load_into(model, state_dict, spec_name)`` loads strictly: every key of the model must be present with
  the same shape and no other key may be present. The one exception is BatchNorm's
  ``num_batches_tracked``, which checkpoints written before PyTorch 0.4.1 lack and which has no effect in
  eval mode. A mismatch raises CheckpointError whose single line gives the counts and first offenders.

Nothing here executes code from the checkpoint: arbitrary pickled objects are refused (see
``_SAFE_GLOBALS``).
"""

from __future__ import annotations

import importlib
import logging
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from onnxforge.errors import CheckpointError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Keys that wrap the weights in the upstream formats, tried in this order at every level.
WRAPPER_KEYS = ("state_dict", "model", "segmenter")

#: How many offending keys a mismatch report names per category.
MAX_NAMED = 3

# Globals a weights_only load may resolve beyond torch's defaults. Training loops store numpy scalars
# and arrays in their metadata (mmcv's `meta`, SegmenTron/DenseTorch `best_pred`), which weights_only=True
# rejects. We never fall back to weights_only=False: it executes arbitrary code from the file, and the
# classes it would need (mmcv ConfigDict, argparse Namespaces of training scripts...) are usually not
# importable here anyway. Instead these numpy reconstruction helpers, which build plain arrays and
# scalars only, are allowlisted for the load.
_SAFE_GLOBALS = re.compile(
    r"^numpy\.(?:(?:_core|core)\.multiarray\.(?:scalar|_reconstruct)|dtype|ndarray|dtypes\.\w+DType)$"
)
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)|allowlisted via `add_safe_globals`, but got <class '([\w.]+)'>")


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a PyTorch checkpoint and returns its flat state_dict (CPU tensors, `module.` stripped).

    Raises:
        CheckpointError: the file is missing, empty, corrupt, holds arbitrary Python objects, or holds
            no state_dict.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a PyTorch checkpoint")
    obj = _torch_load(path)
    state = _unwrap(obj, path)
    return _strip_module_prefix(state)


def _torch_load(path: Path) -> object:
    import torch

    allowed: list[object] = []
    while True:
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            match = _UNSUPPORTED_GLOBAL.search(str(exc))
            if match is None:
                detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
                reason = detail.group(1).strip()[:160] if detail else "invalid pickle data"
                raise CheckpointError(
                    f"{path}: not a readable PyTorch checkpoint (truncated or corrupt: {reason})"
                ) from None
            name = match.group(1) or match.group(2)
            obj = _resolve_safe_global(name) if _SAFE_GLOBALS.match(name) else None
            if obj is None or obj in allowed:
                raise CheckpointError(
                    f"{path}: checkpoint holds pickled Python objects ({name}) besides weights; onnxforge only "
                    "loads tensors and plain data (torch.load weights_only=True). Re-save its state_dict with "
                    "torch.save(sd, 'weights.pth') where you trust the file"
                ) from None
            allowed.append(obj)
        # What torch's (weights-only) unpickler and zip reader raise on bytes that are not a checkpoint.
        except (
            RuntimeError, ValueError, EOFError, OSError, zipfile.BadZipFile, UnicodeDecodeError, KeyError,
            IndexError, TypeError, OverflowError, struct.error,
        ) as exc:
            raise CheckpointError(
                f"{path}: not a readable PyTorch checkpoint (truncated or corrupt: {_first_line(exc)})"
            ) from None


def _resolve_safe_global(name: str) -> object | None:
    module_name, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return None


def _is_state_dict(obj: object) -> bool:
    import torch

    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    trail: list[str] = []
    for _ in range(8):  # wrappers nest a few levels at most; bound the walk
        if _is_state_dict(obj):
            if trail:
                logger.debug("%s: weights found under %s", path, "/".join(trail))
            return dict(obj)  # type: ignore[arg-type]
        if not isinstance(obj, Mapping):
            raise CheckpointError(
                f"{path}: checkpoint holds a {type(obj).__name__}, not a state_dict (a dict of tensors)"
            )
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            keys = ", ".join(map(str, list(obj)[:8]))
            non_tensor = [str(k) for k, v in obj.items() if not _is_tensor(v)][:3]
            detail = f"; non-tensor entries: {', '.join(non_tensor)}" if non_tensor else ""
            raise CheckpointError(
                f"{path}: no state_dict found (top-level keys: {keys or 'none'}{detail}); expected a dict of "
                f"tensors, optionally wrapped in {', '.join(WRAPPER_KEYS)}"
            )
        trail.append(key)
        obj = obj[key]
    raise CheckpointError(f"{path}: no state_dict found (wrappers nested too deep: {'/'.join(trail)})")


def _is_tensor(value: object) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        if key in out:
            raise CheckpointError(f"checkpoint has key {key!r} both with and without the 'module.' prefix")
        out[key] = value
    return out


def load_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], spec_name: str) -> None:
    """Loads `state_dict` into `model` strictly (names and shapes), converting dtypes to the model's.

    Raises:
        CheckpointError: keys are missing or unexpected, or shapes differ; the message reads e.g.
            ``checkpoint does not match pspnet: 2 missing (a, b), 1 unexpected (c), 1 shape mismatch
            (x: ckpt [21,512,1,1] vs model [19,512,1,1])``.
    """
    import torch

    expected = model.state_dict()
    state = dict(state_dict)
    for key, value in expected.items():  # pre-0.4.1 checkpoints: harmless in eval mode
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        common = sum(1 for k in expected if k in state_dict)
        raise CheckpointError(mismatch_report(spec_name, missing, unexpected, mismatched, common=common))
    model.load_state_dict(state, strict=True)
    logger.debug("loaded %d tensors into %s", len(state), spec_name)


def mismatch_report(
    spec_name: str,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    common: int | None = None,
) -> str:
    """The one-line CheckpointError message for a key/shape mismatch."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_names(unexpected)})")
    if mismatched:
        shown = ", ".join(f"{k}: ckpt {_shape(a)} vs model {_shape(b)}" for k, a, b in mismatched[:MAX_NAMED])
        more = ", ..." if len(mismatched) > MAX_NAMED else ""
        word = "mismatch" if len(mismatched) == 1 else "mismatches"
        parts.append(f"{len(mismatched)} shape {word} ({shown}{more})")
    text = f"checkpoint does not match {spec_name}: " + ", ".join(parts)
    if common == 0:
        text += " (no key in common: is it a checkpoint of another model?)"
    return text


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:MAX_NAMED]) + (", ..." if len(keys) > MAX_NAMED else "")


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0].split(". ")[0].rstrip(".")[:160]  # first sentence: torch appends long advice

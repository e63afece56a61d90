"""Loading and saving ONNX models with clear errors and atomic writes.

Contract:
- `load_model` raises ModelLoadError (one line naming the file) for a missing, empty, truncated or
  non-ONNX file, for external data that cannot be found, and for models over the 2 GiB protobuf limit.
- `save_model` writes to a temporary file next to the target and renames it into place, so a failure
  never leaves a half-written file and never touches an existing file until the new one is complete.
- Files honour the umask: a new file gets mode 0666 & ~umask (0644 under umask 0022, like onnxsim or
  `open()`), an existing file keeps its mode. `staging_dir` creates directories with 0777 & ~umask.
  Every writer in the tool goes through `write_bytes_atomic`/`write_text_atomic`/`save_model` or
  `staging_dir`, never `tempfile.mkstemp`/`mkdtemp` (those create 0600/0700 files only the owner can read).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator

import onnx
from google.protobuf.message import DecodeError

from onnxforge.errors import ModelLoadError, OutputPathError

#: protobuf cannot serialise a message of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: str | Path) -> onnx.ModelProto:
    """Reads an ONNX model (with its external data, if any) and checks it is a usable graph."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: not a readable ONNX model (truncated or not ONNX: {_short(exc)})") from None
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph found)")
    if not model.opset_import:
        raise ModelLoadError(f"{path}: not an ONNX model (no opset_import)")
    if _uses_external_data(model):
        total = size + _external_bytes(model, path.parent)
        if total >= PROTOBUF_LIMIT:
            raise ModelLoadError(
                f"{path}: model with external data is {total / 2**30:.1f} GiB; models over 2 GiB are not "
                "supported (onnxsim and in-memory verification need a single protobuf)"
            )
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except (OSError, onnx.checker.ValidationError) as exc:
            raise ModelLoadError(f"{path}: external data missing: {_short(exc)}") from None
    return model


def save_model(model: onnx.ModelProto, path: str | Path) -> Path:
    """Writes `model` atomically to `path` (temporary file + rename). Returns the path."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"{path}: output directory {parent} does not exist")
    if path.is_dir():
        raise OutputPathError(f"{path}: is a directory")
    if model.ByteSize() >= PROTOBUF_LIMIT:
        raise OutputPathError(f"{path}: model is over 2 GiB; saving with external data is not supported")
    data = model.SerializeToString()
    write_bytes_atomic(path, data)
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Writes bytes to `path` through a temporary file in the same directory and an atomic rename.

    The new file's mode is 0666 & ~umask, or the mode of the file it replaces. On any failure
    (KeyboardInterrupt included) the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        keep_mode = path.stat().st_mode & 0o7777 if path.is_file() else None
    except OSError:
        keep_mode = None
    fd, tmp = _create_beside(parent, path.name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if keep_mode is not None:
            os.chmod(tmp, keep_mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """`write_bytes_atomic` of UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def _create_beside(parent: Path, name: str) -> tuple[int, Path]:
    """A new, exclusive `.NAME.XXXX.tmp` in `parent`, opened for writing with mode 0666 (the kernel applies the umask)."""
    for _ in range(100):
        tmp = parent / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise OutputPathError(f"{parent / name}: cannot create a temporary file beside it")


@contextlib.contextmanager
def staging_dir(target: str | Path) -> Iterator[Path]:
    """Builds a directory all-or-nothing: yields a fresh directory beside `target`; on success it replaces `target`.

    The staging directory has mode 0777 & ~umask. When the block raises (KeyboardInterrupt included)
    the staging directory is removed and an existing `target` is untouched. On success an existing
    `target` directory is moved aside, the new one renamed into place, then the old one deleted.

    Raises:
        OutputPathError: `target` is an existing non-directory, or its parent does not exist.
    """
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    if target.exists() and not target.is_dir():
        raise OutputPathError(f"{target}: exists and is not a directory")
    if not parent.is_dir():
        raise OutputPathError(f"{target}: parent directory {parent} does not exist")
    stage = parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
    os.mkdir(stage, 0o777)
    try:
        yield stage
        old = None
        if target.is_dir():
            old = parent / f".{target.name}.{secrets.token_hex(4)}.old"
            os.replace(target, old)
        try:
            os.replace(stage, target)
        except BaseException:
            if old is not None:
                os.replace(old, target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def check_output_path(input_path: str | Path, output_path: str | Path) -> Path:
    """Refuses an output path that is the input file (or a link to it) or whose directory is missing."""
    inp, out = Path(input_path), Path(output_path)
    if out.exists() and inp.exists() and os.path.samefile(inp, out):
        raise OutputPathError(f"{out}: output path is the input model; choose another path (the input is never overwritten)")
    if out.resolve() == inp.resolve():
        raise OutputPathError(f"{out}: output path is the input model; choose another path (the input is never overwritten)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"{out}: output directory {parent} does not exist")
    if out.is_dir():
        raise OutputPathError(f"{out}: is a directory, expected a file path")
    return out


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in _all_initializers(model)
    )


def _external_bytes(model: onnx.ModelProto, base: Path) -> int:
    seen: set[str] = set()
    total = 0
    for t in _all_initializers(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if "length" in info:
            total += int(info["length"])
        elif loc and loc not in seen and (base / loc).exists():
            total += (base / loc).stat().st_size
        seen.add(loc)
    return total


def _all_initializers(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__

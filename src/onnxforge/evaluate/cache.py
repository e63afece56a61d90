"""A content-addressed cache of evaluation results, shared by every command and safe across processes.

An entry is the result of one evaluation under a key that names everything the result depends on
(`evaluation_key`): the model's bytes (sha256), the dataset (`dataset_fingerprint`: root, the sorted file
list with sizes and mtimes, the preprocessing policy, the limit; synthetic data: count, seed, shape),
the backend spec with its options, the metric and preset, the onnxforge version and a hash of the source
of the code that computes results (`code_fingerprint`: an edited checkout invalidates its entries even
at the same version), the reference model's hash where agreement with a reference is scored, and any
extra ingredient a caller names. Change any of
them and the key changes: a stale entry is never found, so it can never give a wrong result.

Layout: ``DIR/<key[:2]>/<key>.json`` holds the JSON value, the sha256 of the arrays file and a checksum
over both; per-image arrays, where there are any, are ``<key>.npz`` beside it (written byte-for-byte
deterministically, so two processes storing the same result write the same bytes). Both files are
written to a temporary file and moved into place (`os.replace`), the arrays first: a reader sees a
whole old entry, a whole new one, or a mismatch that the checksum catches. An entry that fails its
checksum (or cannot be parsed) is reported with a warning, removed, and counted as a miss, so the
caller computes and stores it again.

The size limit (`max_bytes`, default `DEFAULT_MAX_BYTES` = 2 GiB) is kept by least-recently-used
eviction after each store: every hit and store sets the entry's mtime to "now" (filesystems often do
not keep access times), and the oldest entries go first.

A directory that cannot be written (a file in the way, no permission, a read-only disk) makes the
cache warn once and do nothing: every `get` misses and every `put` is dropped, so the run continues
uncached with correct results. Nothing is printed; warnings go through `logging`, counts are in `stats`
(a command shows `summary()`).

Default directory: ``$ONNXFORGE_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/onnxforge/eval``, else
``~/.cache/onnxforge/eval``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from onnxforge.errors import ForgeError

log = logging.getLogger(__name__)

#: the environment variable naming the cache directory (overrides the XDG default)
CACHE_ENV = "ONNXFORGE_CACHE_DIR"
#: the default size limit: 2 GiB
DEFAULT_MAX_BYTES = 2 * 1024 ** 3
#: bump when the entry layout or the meaning of a key ingredient changes
FORMAT = 1

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def default_cache_dir() -> Path:
    """``$ONNXFORGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/onnxforge/eval``, else ``~/.cache/onnxforge/eval``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "onnxforge" / "eval"


def parse_size(text: str | int) -> int:
    """A byte count from ``2G``, ``500M``, ``1.5GiB``, ``64K`` or a plain number of bytes (units are powers of 1024).

    Raises:
        ForgeError: anything else, or a negative size (naming --cache-size).
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", str(text).upper())
        if not m or (m.group(3) == "IB" and not m.group(2)):
            raise ForgeError(f"--cache-size: expected a size like 2G, 500M or 1048576 (bytes), got {text!r}")
        value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value < 0:
        raise ForgeError(f"--cache-size: must not be negative, got {text!r}")
    return value


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def files_fingerprint(root: str | Path) -> str:
    """sha256 over the sorted relative paths under `root` with each file's size and mtime (ns).

    Directory symlinks are followed once (a cycle is not walked twice); contents are not read, so a
    50,000-image folder costs a `stat` per file. A missing root fingerprints as such (the dataset
    loader reports it).
    """
    root = Path(root)
    h = hashlib.sha256()
    if not root.exists():
        h.update(b"missing")
        return h.hexdigest()
    if root.is_file():
        st = root.stat()
        h.update(f"{root.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
    seen: set[str] = set()
    for here, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        rel = os.path.relpath(here, root)
        for name in sorted(files):
            try:
                st = os.stat(os.path.join(here, name))
            except OSError:  # a dangling link: part of the listing all the same
                h.update(f"{rel}/{name}\0dangling\n".encode())
                continue
            h.update(f"{rel}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def dataset_fingerprint(dataset: str, data_root: str | Path | None = None, *, limit: int | None = None,
                        preprocessing: Mapping[str, Any] | None = None, synthetic: Mapping[str, Any] | None = None,
                        files: str | None = None) -> str:
    """What an evaluation reads, as a hash: the dataset name, its root (resolved) and every file under it
    (`files_fingerprint`: sorted names, sizes, mtimes), the `preprocessing` policy (e.g. the EvalSpec
    fields and the canvas), the `limit` (how many samples), and for data generated in memory the
    `synthetic` parameters (count, seed, shape, classes, generator version). `files` is
    `files_fingerprint(data_root)` where the caller has it already.
    """
    root = None if data_root is None else str(Path(data_root).resolve())
    return _digest({
        "dataset": dataset,
        "root": root,
        "files": (files or files_fingerprint(data_root)) if data_root is not None else None,
        "limit": limit,
        "preprocessing": dict(preprocessing or {}),
        "synthetic": dict(synthetic) if synthetic is not None else None,
    })


#: the parts of the package whose code decides an evaluation's result
_CODE_PARTS = ("evaluate", "backends", "scenes.py", "numerics.py", "modelio.py", "spec.py", "pooling.py")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 of the source files of the code that computes evaluation results (the evaluate and backends
    packages and the modules they use), read once per process."""
    import onnxforge

    root = Path(onnxforge.__file__).parent
    h = hashlib.sha256()
    for part in _CODE_PARTS:
        base = root / part
        files = sorted(base.rglob("*")) if base.is_dir() else [base]
        for f in files:
            if f.is_file() and f.suffix in (".py", ".json", ".j2"):
                h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def evaluation_key(model_sha256: str, dataset_fingerprint: str, backend: str, metric: str, version: str | None = None,
                   reference_sha256: str | None = None, extra: Mapping[str, Any] | None = None) -> str:
    """The cache key (hex sha256) of one evaluation.

    Args:
        model_sha256: the hash of the model's bytes (an ONNX model's deterministic serialisation, or a
            compiled artifact's file).
        dataset_fingerprint: `dataset_fingerprint(...)` of the data and its preprocessing.
        backend: the backend spec with its options (``str(Backend)``, e.g. ``onnxruntime{threads=2}``).
        metric: the metric (and preset) that scores it.
        version: the onnxforge version (default: the running one); the running code's `code_fingerprint`
            is part of the key too.
        reference_sha256: the reference model's hash where agreement with it is scored, else None.
        extra: anything else the result depends on (e.g. whether per-image contributions are kept).
    """
    if version is None:
        from onnxforge import __version__ as version
    return _digest({"format": FORMAT, "model": model_sha256, "data": dataset_fingerprint, "backend": backend,
                    "metric": metric, "version": version, "code": code_fingerprint(), "reference": reference_sha256,
                    "extra": dict(extra or {})})


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An .npz of `arrays` whose bytes depend on the arrays only (fixed member dates, sorted names)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def _checksum(key: str, value: Any, arrays_sha: str | None) -> str:
    return _digest({"format": FORMAT, "key": key, "value": value, "arrays": arrays_sha})


class _Corrupted(Exception):
    pass


@dataclass
class CacheEntry:
    """A value read back: the JSON `value` and its `arrays` (empty when none were stored)."""

    value: Any
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class CacheStats:
    """Counts since the cache object was made: `lookups` (gets), `hits`, `stores`, `corrupted` entries
    found (and dropped), `evicted` entries."""

    lookups: int = 0
    hits: int = 0
    stores: int = 0
    corrupted: int = 0
    evicted: int = 0


class EvalCache:
    """The evaluation cache in `directory` (default `default_cache_dir()`), at most `max_bytes` on disk.

    `get(key)` returns a `CacheEntry` or None; `put(key, value, arrays)` stores a JSON-serialisable
    `value` and optional numpy `arrays`. Safe to use from several processes at once (atomic writes,
    checksummed reads). `clock` gives the access times used for LRU eviction (tests pass a fake one).
    """

    def __init__(self, directory: str | Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES, *,
                 clock: Callable[[], float] = time.time) -> None:
        if max_bytes < 0:
            raise ForgeError(f"--cache-size: must not be negative, got {max_bytes}")
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self.max_bytes = int(max_bytes)
        self.clock = clock
        self.stats = CacheStats()
        self.disabled_reason: str | None = None
        self._checked = False
        self._memo: dict[Any, Any] = {}

    # ------------------------------------------------------------------ usability
    @property
    def usable(self) -> bool:
        """Whether the directory can be written (checked once, on first use; warns once if not)."""
        if not self._checked:
            self._checked = True
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd, probe = tempfile.mkstemp(prefix=".probe-", dir=self.directory)
                os.close(fd)
                os.unlink(probe)
            except OSError as exc:
                self._disable(exc)
        return self.disabled_reason is None

    def _disable(self, exc: BaseException) -> None:
        if self.disabled_reason is None:
            self.disabled_reason = f"{exc.__class__.__name__}: {getattr(exc, 'strerror', None) or exc}"
            log.warning("evaluation cache %s is not writable (%s): running uncached", self.directory, self.disabled_reason)

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        """`compute()` once per cache object for `key` (e.g. a dataset fingerprint shared by every stage)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    # ------------------------------------------------------------------ paths
    def _paths(self, key: str) -> tuple[Path, Path]:
        if not re.fullmatch(r"[0-9a-f]{16,128}", key):
            raise ValueError(f"cache key must be a hex digest, got {key!r}")
        d = self.directory / key[:2]
        return d / f"{key}.json", d / f"{key}.npz"

    def _touch(self, path: Path) -> None:
        now = self.clock()
        try:
            os.utime(path, (now, now))
        except OSError:
            pass

    # ------------------------------------------------------------------ get / put
    def get(self, key: str) -> CacheEntry | None:
        """The entry stored under `key`, or None (absent, corrupted — then warned about and removed — or
        the cache is unusable). A hit marks the entry as just used."""
        self.stats.lookups += 1
        if not self.usable:
            return None
        meta_path, npz_path = self._paths(key)
        try:
            text = meta_path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("evaluation cache: cannot read %s (%s): evaluating again", meta_path, exc)
            return None
        try:
            entry = self._parse(key, text, npz_path)
        except _Corrupted as exc:
            self.stats.corrupted += 1
            log.warning("evaluation cache: entry %s in %s is corrupted (%s): ignored, it will be rewritten",
                        key[:12], self.directory, exc)
            self._remove(meta_path, npz_path)
            return None
        self._touch(meta_path)
        self.stats.hits += 1
        return entry

    def _parse(self, key: str, text: str, npz_path: Path) -> CacheEntry:
        try:
            meta = json.loads(text)
            value, arrays_sha, checksum = meta["value"], meta.get("arrays_sha256"), meta["checksum"]
            if meta.get("format") != FORMAT or meta.get("key") != key:
                raise _Corrupted("written for another key or format")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _Corrupted(f"unreadable JSON: {exc.__class__.__name__}") from None
        if checksum != _checksum(key, value, arrays_sha):
            raise _Corrupted("checksum mismatch in the JSON")
        arrays: dict[str, np.ndarray] = {}
        if arrays_sha is not None:
            try:
                data = npz_path.read_bytes()
            except OSError:
                raise _Corrupted("its arrays file is missing") from None
            if hashlib.sha256(data).hexdigest() != arrays_sha:
                raise _Corrupted("checksum mismatch in the arrays file")
            try:
                with np.load(io.BytesIO(data), allow_pickle=False) as z:
                    arrays = {name: z[name] for name in z.files}
            except (ValueError, OSError, zipfile.BadZipFile) as exc:
                raise _Corrupted(f"unreadable arrays: {exc}") from None
        return CacheEntry(value, arrays)

    def put(self, key: str, value: Any, arrays: Mapping[str, np.ndarray] | None = None) -> bool:
        """Stores `value` (JSON-serialisable) and `arrays` under `key`, then evicts the least recently used
        entries over the size limit. Returns whether it was stored (False when the cache is unusable)."""
        if not self.usable:
            return False
        meta_path, npz_path = self._paths(key)
        arrays_sha = None
        try:
            meta_path.parent.mkdir(parents=True, exist_ok=True)
            if arrays:
                data = _npz_bytes(arrays)
                arrays_sha = hashlib.sha256(data).hexdigest()
                self._write(npz_path, data)
            meta = {"format": FORMAT, "key": key, "value": value, "arrays_sha256": arrays_sha,
                    "checksum": _checksum(key, value, arrays_sha)}
            # key order kept as given: callers may read "the first metric" of a dict
            self._write(meta_path, json.dumps(meta).encode())
        except OSError as exc:
            self._disable(exc)
            return False
        self._touch(meta_path)
        self.stats.stores += 1
        self.evict()
        return True

    def _write(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _remove(self, *paths: Path) -> None:
        for p in paths:
            try:
                p.unlink()
            except OSError:
                pass

    # ------------------------------------------------------------------ size
    def entries(self) -> list[tuple[float, int, str]]:
        """(last use, bytes, key) of every entry, least recently used first."""
        out = []
        if not self.directory.is_dir():
            return out
        for meta in self.directory.glob("??/*.json"):
            try:
                st = meta.stat()
            except OSError:
                continue
            size = st.st_size
            npz = meta.with_suffix(".npz")
            try:
                size += npz.stat().st_size
            except OSError:
                pass
            out.append((st.st_mtime, size, meta.stem))
        out.sort()
        return out

    def size_bytes(self) -> int:
        """Bytes the entries take on disk."""
        return sum(size for _, size, _ in self.entries())

    def evict(self) -> int:
        """Removes the least recently used entries until the rest fit in `max_bytes` (and temporary files a
        killed writer left, after an hour); returns how many entries went."""
        stale = self.clock() - 3600
        for tmp in self.directory.glob("??/.tmp-*"):
            try:
                if tmp.stat().st_mtime < stale:
                    tmp.unlink()
            except OSError:
                pass
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, key in entries:
            if total <= self.max_bytes:
                break
            self._remove(*self._paths(key))
            total -= size
            removed += 1
        self.stats.evicted += removed
        if removed:
            log.info("evaluation cache: evicted %d least recently used entries (limit %d bytes)", removed, self.max_bytes)
        return removed

    def count(self, hit: bool) -> None:
        """Counts a lookup made by another process on this cache's directory (a worker given a copy of this
        object): a hit, or a miss the worker then stored."""
        self.stats.lookups += 1
        if hit:
            self.stats.hits += 1
        else:
            self.stats.stores += 1

    def summary(self, what: str = "evaluations") -> str:
        """One line for a command to show, e.g. ``reused 5 of 7 evaluations from the cache (DIR)``."""
        if self.disabled_reason is not None:
            return f"evaluation cache off: {self.directory} is not writable ({self.disabled_reason})"
        return f"reused {self.stats.hits} of {self.stats.lookups} {what} from the cache ({self.directory})"

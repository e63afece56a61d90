"""Reads model outputs written on an NPU host by ais_bench (or the older benchmark tool).

The directory may be any level of ais_bench's layout (ais_bench 0.0.2: Ascend/tools
ais-bench_workload/tool/ais_bench README, "Saving Output Result Files" and the multi-device run of
``infer/__main__.py``): its ``--output`` folder holding one run stamp ``TS/`` (``%Y_%m_%d-%H_%M_%S``) and
``TS_summary.json``; that ``TS/`` folder, whose files are the outputs or, for ``--device 0,1``, one
``device<k>/`` folder per device with ``device<k>_summary.json`` beside it; or a folder of output files
(ais_infer's older layout kept ``sumary.json``, sic, inside it). Files of every device folder are read as
one set (a name in two of them is an error), and an ``--output`` folder with several runs is refused
naming them. The summaries' ``throughput`` values are summed (`PredictionDir.throughput`), as ais_bench's
multi-device run reports its "summary throughput".

For each image stem, the first graph output is read from ``DIR/<stem>_0.bin`` (ais_bench numbers outputs
from 0) or ``DIR/<stem>_1.bin`` (benchmark numbered them from 1); ``.npy`` and ``.txt`` (whitespace
separated numbers, the benchmark tool's text mode) are accepted too. Which convention a directory uses
is decided once, from the files present (``_0`` files mean ais_bench).

A ``.bin`` file is raw data in the model's first output shape with batch 1. Its dtype is the model
output's, unless the file size says otherwise: atc's ``--output_type=FP16`` turns float32 into float16,
and atc emits int32 for int64 outputs; the size decides between them and anything else is an
EvaluationError naming the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from onnxforge.backends.base import TensorInfo
from onnxforge.errors import EvaluationError

EXTENSIONS = (".bin", ".npy", ".txt")
_OUTPUT_FILE = re.compile(r"_\d+\.(bin|npy|txt)$")
_RUN_DIR = re.compile(r"^\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2}$")
_DEVICE_DIR = re.compile(r"^device\d+$")


def output_folders(directory: Path) -> list[Path]:
    """The folders holding output files at any level of ais_bench's layout (see the module docstring).

    Raises:
        EvaluationError: an ``--output`` folder holding several runs.
    """
    entries = sorted(directory.iterdir())
    has_files = any(e.is_file() and _OUTPUT_FILE.search(e.name) for e in entries)
    devices = [e for e in entries if e.is_dir() and _DEVICE_DIR.match(e.name)]
    if has_files or devices:
        return ([directory] if has_files else []) + devices
    runs = [e for e in entries if e.is_dir() and _RUN_DIR.match(e.name)]
    if len(runs) > 1:
        raise EvaluationError(f"{directory}: holds {len(runs)} ais_bench runs ({', '.join(r.name for r in runs)}); "
                              "give the folder of one of them")
    return output_folders(runs[0]) if runs else [directory]


def read_summaries(folders: list[Path]) -> list[dict]:
    """The ais_bench summaries of `folders`: ``<folder>_summary.json`` beside each, or ``sumary.json`` inside."""
    found = []
    for folder in folders:
        for path in (folder.parent / f"{folder.name}_summary.json", folder / "sumary.json"):
            try:
                found.append(json.loads(path.read_text(encoding="utf-8")))
                break
            except (OSError, ValueError):
                continue
    return found


class PredictionDir:
    """A directory of per-image output files for one model output."""

    def __init__(self, directory: str | Path, output: TensorInfo) -> None:
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise EvaluationError(f"{self.dir}: predictions directory does not exist")
        self.output = output
        shape = output.shape
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            raise EvaluationError(
                f"model output '{output.name}' has a dynamic shape {list(shape)}; reading raw predictions needs a static one"
            )
        self.shape = (1, *[int(d) for d in shape[1:]])
        self.folders = output_folders(self.dir)
        self.paths: dict[str, Path] = {}
        for folder in self.folders:
            for p in folder.iterdir():
                if not p.is_file():
                    continue
                if p.name in self.paths:
                    raise EvaluationError(f"{p.name} is in both {self.paths[p.name].parent} and {folder}: "
                                          "one output per image is expected")
                self.paths[p.name] = p
        files = set(self.paths)
        self.files = files
        self.summaries = read_summaries(self.folders)
        if any(re.search(r"_0\.(bin|npy|txt)$", f) for f in files):
            self.index, self.convention = 0, "ais_bench"
        elif any(re.search(r"_1\.(bin|npy|txt)$", f) for f in files):
            self.index, self.convention = 1, "benchmark"
        else:
            raise EvaluationError(
                f"{self.dir}: no prediction files (expected ais_bench's <image>_0.bin or the benchmark tool's <image>_1.bin)"
            )

    @property
    def throughput(self) -> float | None:
        """The sum of the summaries' ``throughput`` (images/s as ais_bench reports it), None without summaries."""
        values = [float(s["throughput"]) for s in self.summaries if isinstance(s.get("throughput"), (int, float))]
        return sum(values) if values else None

    def path_for(self, stem: str) -> Path | None:
        for ext in EXTENSIONS:
            name = f"{stem}_{self.index}{ext}"
            if name in self.files:
                return self.paths[name]
        return None

    def check_complete(self, stems: list[str]) -> None:
        """Raises EvaluationError naming the first image whose output file is missing."""
        for stem in stems:
            if self.path_for(stem) is None:
                raise EvaluationError(
                    f"{self.dir / f'{stem}_{self.index}.bin'}: prediction file missing for image '{stem}' "
                    f"({self.convention} naming, output {self.index})"
                )

    def read(self, stem: str) -> np.ndarray:
        """The first output for `stem`, shaped (1, ...) like the model's output with batch 1."""
        path = self.path_for(stem)
        if path is None:
            raise EvaluationError(f"{self.dir / f'{stem}_{self.index}.bin'}: prediction file missing for image '{stem}'")
        count = int(np.prod(self.shape))
        if path.suffix == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise EvaluationError(f"{path}: not a readable .npy file ({exc})") from None
            if arr.size != count:
                raise EvaluationError(f"{path}: holds {arr.size} values, expected {count} for shape {list(self.shape)}")
            return arr.reshape(self.shape)
        if path.suffix == ".txt":
            try:
                arr = np.loadtxt(path, dtype=np.float32, ndmin=1).ravel()
            except ValueError as exc:
                raise EvaluationError(f"{path}: not a text file of numbers ({str(exc)[:100]})") from None
            if arr.size != count:
                raise EvaluationError(f"{path}: holds {arr.size} values, expected {count} for shape {list(self.shape)}")
            if self.output.dtype.kind in "iu":
                arr = np.rint(arr).astype(np.int64)
            return arr.reshape(self.shape)
        size = path.stat().st_size
        dtype = self._bin_dtype(size, count, path)
        return np.fromfile(path, dtype=dtype).reshape(self.shape)

    def _bin_dtype(self, size: int, count: int, path: Path) -> np.dtype:
        declared = np.dtype(self.output.dtype)
        if size == count * declared.itemsize:
            return declared
        if declared.kind == "f":
            alternatives = {2: np.float16, 4: np.float32, 8: np.float64}
        elif declared.kind in "iu":
            alternatives = {4: np.int32, 8: np.int64, 2: np.int16, 1: np.uint8}
        else:
            alternatives = {}
        if count and size % count == 0 and size // count in alternatives:
            return np.dtype(alternatives[size // count])
        raise EvaluationError(
            f"{path}: {size} bytes does not fit output '{self.output.name}' {list(self.shape)} "
            f"({count} values of {declared.name} = {count * declared.itemsize} bytes)"
        )

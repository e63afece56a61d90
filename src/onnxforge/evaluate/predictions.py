"""Reads model outputs written on an NPU host by ais_bench (or the older benchmark tool).

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

import re
from pathlib import Path

import numpy as np

from onnxforge.backends.base import TensorInfo
from onnxforge.errors import EvaluationError

EXTENSIONS = (".bin", ".npy", ".txt")


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
        files = {p.name for p in self.dir.iterdir() if p.is_file()}
        self.files = files
        if any(re.search(r"_0\.(bin|npy|txt)$", f) for f in files):
            self.index, self.convention = 0, "ais_bench"
        elif any(re.search(r"_1\.(bin|npy|txt)$", f) for f in files):
            self.index, self.convention = 1, "benchmark"
        else:
            raise EvaluationError(
                f"{self.dir}: no prediction files (expected ais_bench's <image>_0.bin or the benchmark tool's <image>_1.bin)"
            )

    def path_for(self, stem: str) -> Path | None:
        for ext in EXTENSIONS:
            name = f"{stem}_{self.index}{ext}"
            if name in self.files:
                return self.dir / name
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

"""Shared pieces of the benchmarks: plain exports, the peers' outputs, interleaved latency timing.

Speed claims are ratios measured in one run: every model of a comparison is timed round-robin in the
same process with the same threads and inputs, so machine noise hits all of them alike.
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from onnxforge.numerics import run_model  # noqa: E402

THREADS = int(os.environ.get("BENCH_THREADS", "2"))


def environment() -> str:
    import onnxruntime
    import torch

    import onnxforge

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
        f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"onnxforge {onnxforge.__version__}, ORT threads {THREADS}"
    )


def export_plain(module, shape: tuple[int, ...], input_name: str = "input", output_names: list[str] | None = None) -> onnx.ModelProto:
    """What a user gets from torch's default exporter (dynamo, torch 2.13) at a static shape."""
    import torch

    x = torch.randn(*shape)
    warnings.simplefilter("ignore")
    with torch.no_grad():
        prog = torch.onnx.export(module.eval(), (x,), dynamo=True, input_names=[input_name], output_names=output_names, verbose=False)
    return prog.model_proto


def peer_onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    return onnxsim.simplify(model, check_n=0)[0]


def peer_onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


def peer_onnxoptimizer(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxoptimizer

    return onnxoptimizer.optimize(model)


def peer_ort_offline(model: onnx.ModelProto, tmp: Path) -> onnx.ModelProto:
    """onnxruntime's own ORT_ENABLE_ALL graph, saved offline (it may contain ORT-only fused ops)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp / "ort_offline.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp / "ort_offline.onnx"))


PEERS: dict[str, Callable] = {
    "onnxsim": peer_onnxsim,
    "onnxslim": peer_onnxslim,
    "onnxoptimizer": peer_onnxoptimizer,
}


@dataclass
class Timing:
    p50: float
    p90: float
    runs: int


def time_interleaved(models: dict[str, onnx.ModelProto], rounds: int = 10, warmup: int = 2) -> dict[str, Timing]:
    """Latency (ms) of each model, timed round-robin in one run (`onnxforge.evaluate.bench.round_robin`)."""
    from onnxforge.evaluate.bench import round_robin

    samples = round_robin(list(models.values()), None, "onnxruntime", THREADS, warmup, rounds)
    return {k: Timing(statistics.median(v), float(np.percentile(v, 90)), len(v)) for k, v in zip(models, samples)}


def agreement(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> str:
    """How far a stage's first output is from the baseline's: label agreement or max abs error."""
    r = next(iter(ref.values()))
    g = next(iter(got.values()))
    def labels(x: np.ndarray) -> np.ndarray:
        if x.dtype.kind in "iu":
            return x
        return (x > 0) if x.ndim == 4 and x.shape[1] == 1 else x.argmax(1)  # binary logits vs class logits

    r_lab, g_lab = labels(r), labels(g)
    r_lab = r_lab.reshape(-1)
    g_lab = g_lab.reshape(-1)
    if r_lab.size == g_lab.size:
        agree = float((r_lab == g_lab).mean())
        if r.dtype.kind == "f" and g.dtype.kind == "f" and r.shape == g.shape:
            err = float(np.abs(r.astype(np.float64) - g.astype(np.float64)).max())
            return f"{agree:.2%} labels, max abs {err:.2g}"
        return f"{agree:.2%} labels"
    return "n/a"


def outputs_of(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return run_model(model, feeds, threads=THREADS)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)

"""The embedded default: the whole job on Fast-SCNN, with nothing to download.

1. Weights: Fast-SCNN trained by the project on its synthetic segmentation data (shipped with the
   package; retrained and cached if absent), never random.
2. Export: `onnxforge export fastscnn --checkpoint ... --input-size 256,512`.
3. Report: each rewrite of the seed guides applied alone to the baseline (`--isolated`: what does this
   pass cost and gain by itself), plus each Resize node made nearest separately (`--per-node
   resize-nearest`), evaluated on synthetic images the model never saw in training, timed in
   interleaved rounds with an A/A noise floor on onnxruntime CPU (adaptive, at most DEMO_TIMING's
   time limit per timing run), judged against a 1% accuracy budget; the kept passes are measured
   together as the combined stage, which becomes best.onnx when it pays. The pipeline ends with INT8
   (`quantize`), calibrated on DEMO_CALIBRATION synthetic images drawn with the calibration seed (never
   the evaluation images), written to `calib.npz` beside the report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from onnxforge.frontends.train import TrainConfig

log = logging.getLogger(__name__)

DEMO_PIPELINE = "simplify,adaptive-pool,transdata-align,fp16-output,resize-nearest,label-upsample"
DEMO_IMAGES = 24
DEMO_CALIBRATION = 8
#: Adaptive timing bounded so the demo stays within about 1.5x its time before interleaved timing.
DEMO_TIMING_SECONDS = 10.0


@dataclass
class DemoResult:
    weights: Path
    weights_source: str  # shipped | cached | trained
    model: Path
    report: object  # evaluate.ab.ReportResult


def run_demo(out_dir: str | Path, train_progress: Callable[[int, int, float], None] | None = None,
             progress: Callable[[str, int, int], None] | None = None, images: int = DEMO_IMAGES,
             pipeline: str | None = None, threads: int = 2) -> DemoResult:
    """Runs the demo into `out_dir` and returns where everything is.

    `pipeline` defaults to DEMO_PIPELINE followed by the INT8 stage on the demo's own calibration file.
    """
    from onnxforge.evaluate.ab import DataSource, run_report
    from onnxforge.evaluate.calibration import write_calibration
    from onnxforge.evaluate.timing import TimingPolicy
    from onnxforge.frontends.export import export_model
    from onnxforge.frontends.train import ensure_weights

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = TrainConfig()
    weights, how = ensure_weights(config, train_progress)
    model_path = out_dir / "fastscnn.onnx"
    export_model("fastscnn", model_path, checkpoint=weights, input_size=config.size)
    if pipeline is None:
        calibration = write_calibration(out_dir / "calib.npz", model_path, "synthetic", count=DEMO_CALIBRATION, classes=config.classes)
        pipeline = f"{DEMO_PIPELINE},quantize{{calibration={calibration},images={DEMO_CALIBRATION}}}"
    command = (f"onnxforge report {model_path} --passes '{pipeline}' --isolated --per-node resize-nearest "
               f"--synthetic {images} --threads {threads} --max-seconds {DEMO_TIMING_SECONDS:g} -o {out_dir / 'report'}")
    report = run_report(
        model_path, pipeline, out_dir / "report", DataSource("synthetic", None, None, images), isolated=True,
        per_node="resize-nearest", threads=threads, progress=progress, command=command,
        timing=TimingPolicy(min_rounds=10, max_rounds=200, max_seconds=DEMO_TIMING_SECONDS),
    )
    return DemoResult(weights, how, model_path, report)

"""Train a seed model on the project's synthetic segmentation data (for the embedded demo).

The demo's accuracy figures must mean something, so its Fast-SCNN is trained, not random: on
`onnxforge.scenes.generate_sample(i, seed=TRAIN_SEED)` scenes (disjoint from the evaluation seed; the
evaluator's synthetic dataset streams the same generator, so the trainer needs nothing above the
frontends layer), with the same
preprocessing the evaluator uses for the synthetic set (RGB/255, ImageNet mean/std). Training is
deterministic for a given config on one machine (fixed seeds, single process). The result is a plain
state_dict in the upstream key layout (aux heads included, as SegmenTron saves), stored as float16 to
keep the shipped file small; it loads strictly like a user's checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TrainConfig:
    model: str = "fastscnn"
    size: tuple[int, int] = (256, 512)
    classes: int = 19
    steps: int = 360
    batch: int = 4
    lr: float = 4e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2

    def key(self) -> str:
        """A short hash naming the weights this config produces (used as cache file name)."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


Progress = Callable[[int, int, float], None]  # (step, total, loss)


def train(config: TrainConfig, progress: Progress | None = None) -> dict:
    """Trains `config.model` on synthetic data and returns its float16 state_dict (upstream keys)."""
    import torch
    import torch.nn.functional as F

    from onnxforge.frontends import get_spec
    from onnxforge.scenes import TRAIN_SEED, generate_sample

    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    spec = get_spec(config.model)
    model = spec.build("upstream", with_aux=False)
    model.train()
    samples = (generate_sample(i, config.size, config.classes, TRAIN_SEED) for i in range(config.steps * config.batch))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps, pct_start=0.15)
    t0 = time.perf_counter()
    for step in range(1, config.steps + 1):
        batch = [next(samples) for _ in range(config.batch)]
        x = torch.from_numpy(np.stack([image for image, _ in batch])).permute(0, 3, 1, 2).float().div_(255)
        x = (x - mean) / std
        if step % 2 == 0:  # horizontal flips: the classes do not depend on orientation
            x = x.flip(-1)
            y = torch.from_numpy(np.stack([label[:, ::-1].copy() for _, label in batch]).astype(np.int64))
        else:
            y = torch.from_numpy(np.stack([label for _, label in batch]).astype(np.int64))
        out = model(x)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        loss = F.cross_entropy(logits, y, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if not math.isfinite(loss.item()):
            raise RuntimeError("training diverged (loss is not finite)")
        if progress:
            progress(step, config.steps, float(loss.item()))
    log.info("trained %s in %.0f s", config.model, time.perf_counter() - t0)
    model.eval()
    return {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}


def shipped_weights(config: TrainConfig) -> Path:
    """Where the package ships the weights of `config` (present only for the demo's config)."""
    return Path(__file__).resolve().parents[1] / "data" / f"{config.model}_synthetic_{config.key()}.pth"


def cache_dir() -> Path:
    import os

    base = os.environ.get("ONNXFORGE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "onnxforge")
    return Path(base)


def ensure_weights(config: TrainConfig, progress: Progress | None = None, retrain: bool = False) -> tuple[Path, str]:
    """The checkpoint for `config`: shipped with the package, cached, or trained now (and cached).

    Returns (path, how) with how in {"shipped", "cached", "trained"}.
    """
    import torch

    from onnxforge.modelio import write_bytes_atomic

    shipped = shipped_weights(config)
    if shipped.exists() and not retrain:
        return shipped, "shipped"
    cached = cache_dir() / shipped.name
    if cached.exists() and not retrain:
        return cached, "cached"
    state = train(config, progress)
    cached.parent.mkdir(parents=True, exist_ok=True)
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(cached, buf.getvalue())
    return cached, "trained"


if __name__ == "__main__":  # python -m onnxforge.frontends.train OUT.pth: (re)train the demo weights
    import sys

    import torch

    cfg = TrainConfig()
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else shipped_weights(cfg)
    t = time.perf_counter()

    def show(step: int, total: int, loss: float) -> None:
        if step % 10 == 0 or step == total:
            sys.stderr.write(f"\rstep {step}/{total} loss {loss:.3f} ({time.perf_counter() - t:.0f} s)")
            sys.stderr.flush()

    torch.save(train(cfg, show), out)
    sys.stderr.write(f"\nwrote {out}\n")

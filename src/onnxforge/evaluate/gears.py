"""Image-size gears from the data: the size distribution of a dataset and the K gears that cover it with least padding.

atc compiles one model for several input sizes ("gears", ``--dynamic_image_size="512,512;1024,2048"``,
`onnxforge compile --dynamic-image-sizes`); at run time each image goes to the smallest gear that holds
it and is padded (bottom/right) to it. `analyse_shapes` reads every image's size from the file header
(PIL's ``Image.open(...).size`` does not decode the pixels), applies the preset's resize policy, and
proposes gears:

- presets whose preprocessing makes every image one size (``longest-pad``, ``keep-ratio-pad``,
  ``resize-crop``, ``resize-bgr-double-scale``: see `preprocess.py`) need exactly one gear, the model's
  input size; the proposal says so;
- whole-image presets (``full``, and datasets scored without a preset) feed images at their own size:
  each size is rounded up to a multiple of `multiple` (the network's stride, 32 by default), and the K
  gears minimising the padded pixels (gear area minus image area, summed over the images, each at the
  smallest gear holding it) are chosen among the candidate gears (every pair of a rounded image height
  and a rounded image width that holds at least one image: an optimal gear can always be shrunk to
  such a pair).

**Search**: exact by exhaustive enumeration when there are at most `EXACT_LIMIT` gear sets to try;
otherwise greedy (start from the bounding gear, which holds every image; repeatedly add the candidate
that saves most padding) followed by swap passes (replace one chosen gear by any candidate while that
lowers the cost, the bounding gear included where the others still cover everything). The greedy
result is not guaranteed optimal; `GearProposal.method` says which search ran. Candidate heights and
widths are thinned to `MAX_SIDE_CANDIDATES` evenly spaced distinct values each (the largest always kept)
when the data has more.

**Batch suggestion** (a heuristic, not a measurement): per gear the largest power of two up to 16 that
is at most the images routed to it and keeps batch x gear pixels within `PIXEL_BUDGET` (16 images of
512x512). atc takes image gears or batch gears, not both: the .om with image gears has one static batch,
suggested as the largest such power of two at the largest gear, at most the images of the busiest gear.

`compare_policies` evaluates a dynamic-H/W ONNX model on the data at the gears with both policies
(``pad`` vs ``resize``, `preprocess.prepare_gear`), which measures what padding costs against resizing.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from onnxforge.errors import DatasetError, EvaluationError
from onnxforge.evaluate.preprocess import GEAR_POLICIES, route_gear

log = logging.getLogger(__name__)

#: gear sets tried exhaustively at most (above: greedy + swap)
EXACT_LIMIT = 20_000
#: candidate heights (and widths) kept at most
MAX_SIDE_CANDIDATES = 48
#: pixels per run the batch suggestion stays within: 16 images of 512x512
PIXEL_BUDGET = 16 * 512 * 512
#: batch sizes the suggestion picks from
BATCH_CHOICES = (1, 2, 4, 8, 16)
#: policies that make every image the model's input size
FIXED_SIZE_POLICIES = ("longest-pad", "keep-ratio-pad", "resize-crop", "resize-bgr-double-scale")

Size = tuple[int, int]


@dataclass(frozen=True)
class Gear:
    """One proposed gear: (height, width), how many images it takes, their mean padded fraction, a batch."""

    height: int
    width: int
    images: int
    padded_fraction: float | None  # mean over its images of (gear pixels - image pixels) / gear pixels
    batch: int

    @property
    def text(self) -> str:
        return f"{self.height}x{self.width}"

    def to_dict(self) -> dict[str, Any]:
        return {"gear": self.text, "height": self.height, "width": self.width, "images": self.images,
                "padded_fraction": self.padded_fraction, "batch": self.batch}


@dataclass
class GearProposal:
    """The chosen gears (ascending by area), the search that chose them and the overall padded fraction."""

    gears: list[Gear]
    method: str
    padded_fraction: float | None  # padded pixels / gear pixels over all images (None: the preset's own padding)
    fixed: bool = False  # the preset resizes every image to one size

    @property
    def sizes(self) -> tuple[Size, ...]:
        return tuple((g.height, g.width) for g in self.gears)

    @property
    def batch(self) -> int:
        """The static batch for an .om compiled with these image gears (module docstring)."""
        largest = max(self.gears, key=lambda g: g.height * g.width)
        return batch_for_gear(largest.height, largest.width, max(g.images for g in self.gears))


@dataclass
class ShapesReport:
    """What `analyse_shapes` found: the size distribution and the proposed gears."""

    dataset: str
    preset: str | None
    policy: str
    images: int
    multiple: int
    max_gears: int
    sizes: list[tuple[Size, int]]  # (H, W) -> images, most common first
    quantiles: dict[str, dict[str, float]]  # height / width / megapixels -> min, p50, p90, p99, max
    proposal: GearProposal
    notes: list[str] = field(default_factory=list)

    def compile_args(self) -> str:
        """The `onnxforge compile` arguments for the proposal ('' when one gear suffices)."""
        if len(self.proposal.gears) < 2:
            return ""
        return "--dynamic-image-sizes " + ",".join(g.text for g in self.proposal.gears)

    def compile_line(self, model: str = "MODEL.onnx") -> str:
        """The command to paste: compile with the gears (the model exported at one of them, e.g. the largest)."""
        if len(self.proposal.gears) < 2:
            g = self.proposal.gears[0]
            return f"onnxforge compile {model}  # one gear suffices: export the model at {g.text}, no --dynamic-image-sizes"
        return f"onnxforge compile {model} {self.compile_args()}"

    def to_dict(self) -> dict[str, Any]:
        p = self.proposal
        return {
            "dataset": self.dataset, "preset": self.preset, "policy": self.policy, "images": self.images,
            "multiple": self.multiple, "max_gears": self.max_gears,
            "sizes": [{"height": h, "width": w, "images": n} for (h, w), n in self.sizes],
            "quantiles": self.quantiles,
            "gears": [g.to_dict() for g in p.gears], "method": p.method, "fixed": p.fixed,
            "padded_fraction": p.padded_fraction, "batch": p.batch,
            "compile_args": self.compile_args(), "compile_line": self.compile_line(), "notes": list(self.notes),
        }


# -------------------------------------------------------------------------------------------- search
def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _thin(values: list[int], limit: int) -> list[int]:
    """At most `limit` of the sorted distinct `values`, evenly spaced by rank, the largest always kept."""
    if len(values) <= limit:
        return values
    idx = np.unique(np.round(np.linspace(0, len(values) - 1, limit)).astype(int))
    return [values[i] for i in idx]


def batch_for_gear(height: int, width: int, images: int) -> int:
    """The batch suggestion for one gear (module docstring)."""
    fits = [b for b in BATCH_CHOICES if b <= max(images, 1) and b * height * width <= PIXEL_BUDGET]
    return max(fits) if fits else 1


def propose_gears(sizes: Sequence[Size], max_gears: int = 4, multiple: int = 32) -> GearProposal:
    """The at most `max_gears` gears covering every image size in `sizes` with least padding (module docstring).

    Raises:
        EvaluationError: no sizes, `max_gears` outside 1..100 or `multiple` < 1.
    """
    if not sizes:
        raise EvaluationError("no images to propose gears for")
    if not 1 <= max_gears <= 100:
        raise EvaluationError(f"--max-gears: atc takes 2 to 100 image gears (1: a static model), got {max_gears}")
    if multiple < 1:
        raise EvaluationError(f"--multiple: expected a positive stride, got {multiple}")
    counts = Counter((int(h), int(w)) for h, w in sizes)
    points = sorted(counts)
    weights = np.array([counts[p] for p in points], dtype=np.float64)
    area_sum = np.array([h * w * counts[(h, w)] for h, w in points], dtype=np.float64)
    ph = np.array([_round_up(h, multiple) for h, _ in points])
    pw = np.array([_round_up(w, multiple) for _, w in points])
    all_h, all_w = sorted(set(ph.tolist())), sorted(set(pw.tolist()))
    heights, widths = _thin(all_h, MAX_SIDE_CANDIDATES), _thin(all_w, MAX_SIDE_CANDIDATES)
    thinned = "" if (len(heights), len(widths)) == (len(all_h), len(all_w)) else (
        f"; candidate sides thinned to {len(heights)} heights x {len(widths)} widths")
    cands = [(h, w) for h in heights for w in widths if np.any((ph <= h) & (pw <= w))]
    ch = np.array([c[0] for c in cands])
    cw = np.array([c[1] for c in cands])
    holds = (ch[:, None] >= ph[None, :]) & (cw[:, None] >= pw[None, :])
    cost = np.where(holds, (ch * cw).astype(np.float64)[:, None] * weights[None, :], np.inf)  # C x P: gear pixels
    bounding = cands.index((heights[-1], widths[-1]))
    k = min(max_gears, len(cands))

    def total(rows: Sequence[int]) -> float:
        return float(cost[list(rows)].min(axis=0).sum())

    n_sets = math.comb(len(cands), k)
    if n_sets <= EXACT_LIMIT:
        best, best_cost = (bounding,), total((bounding,))
        for size in range(1, k + 1):
            for rows in itertools.combinations(range(len(cands)), size):
                c = total(rows)
                if c < best_cost - 1e-9:
                    best, best_cost = rows, c
        chosen = list(best)
        method = f"exact (every set of up to {k} of {len(cands)} candidate gears{thinned})"
    else:
        chosen = [bounding]
        current = cost[bounding].copy()
        while len(chosen) < k:
            trial = np.minimum(current[None, :], cost).sum(axis=1)
            trial[chosen] = np.inf
            c = int(np.argmin(trial))
            if not trial[c] < current.sum() - 1e-9:
                break
            chosen.append(c)
            current = np.minimum(current, cost[c])
        for _ in range(20):  # swap passes
            improved = False
            for i in range(len(chosen)):
                others = [r for j, r in enumerate(chosen) if j != i]
                base = cost[others].min(axis=0) if others else np.full(len(points), np.inf)
                trial = np.minimum(base[None, :], cost).sum(axis=1)
                trial[chosen] = np.inf
                c = int(np.argmin(trial))
                if trial[c] < total(chosen) - 1e-9:
                    chosen[i] = c
                    improved = True
            if not improved:
                break
        method = (f"greedy + swap over {len(cands)} candidate gears (not guaranteed optimal: {n_sets} sets are too many to try"
                  f"{thinned})")
    chosen_sizes = tuple(cands[r] for r in chosen)
    per: dict[Size, list[float]] = {g: [0.0, 0.0, 0.0] for g in chosen_sizes}  # images, sum of fractions, image pixels
    for (h, w), n, a in zip(points, weights, area_sum):
        # the image itself goes to the smallest gear holding it; rounding only picks the candidates
        g = route_gear((_round_up(h, multiple), _round_up(w, multiple)), chosen_sizes)
        assert g is not None
        gp = g[0] * g[1]
        per[g][0] += n
        per[g][1] += n * (gp - h * w) / gp
        per[g][2] += a
    gears = [Gear(h, w, int(v[0]), float(v[1] / v[0]), batch_for_gear(h, w, int(v[0])))
             for (h, w), v in sorted(per.items(), key=lambda kv: (kv[0][0] * kv[0][1], kv[0])) if v[0] > 0]
    gear_pixels = sum(g.height * g.width * g.images for g in gears)
    padded = (gear_pixels - float(area_sum.sum())) / gear_pixels
    return GearProposal(gears, method, padded)


def _quantiles(values: np.ndarray) -> dict[str, float]:
    q = {f"p{p}": float(np.percentile(values, p, method="nearest")) for p in (50, 90, 99)}
    return {"min": float(values.min()), **q, "max": float(values.max())}


# ------------------------------------------------------------------------------------------- dataset
def analyse_shapes(dataset: str, data_root: str | Path | None, preset: str | None = None, *, limit: int | None = None,
                   max_gears: int = 4, multiple: int = 32) -> ShapesReport:
    """The size distribution of `dataset` (read from headers) and the gears to compile for it (module docstring).

    Raises:
        DatasetError: unknown dataset, wrong layout, an unreadable image.
        EvaluationError: bad `max_gears` / `multiple`, a preset for another dataset.
    """
    from onnxforge.evaluate.catalog import open_dataset
    from onnxforge.evaluate.evaluator import resolve_preset

    ds = open_dataset(dataset, data_root, limit=limit)
    spec, preset_name = resolve_preset(preset)
    if spec is not None and dataset != spec.dataset and not getattr(ds, "generated", False):
        raise EvaluationError(f"preset {preset_name} evaluates on {spec.dataset}, not {dataset}: use --dataset {spec.dataset}")
    policy = spec.preprocess if spec is not None else "full"
    sizes = [size for _, size in ds.image_sizes()]
    if not sizes:
        raise DatasetError(f"{data_root}: no images")
    arr = np.array(sizes, dtype=np.float64)
    quantiles = {"height": _quantiles(arr[:, 0]), "width": _quantiles(arr[:, 1]),
                 "megapixels": _quantiles(arr[:, 0] * arr[:, 1] / 1e6)}
    notes: list[str] = []
    if policy in FIXED_SIZE_POLICIES:
        h, w = spec.input_size
        n = len(sizes)
        proposal = GearProposal([Gear(h, w, n, None, batch_for_gear(h, w, n))], f"fixed by the preset ({policy})", None, fixed=True)
        notes.append(f"preset {preset_name} preprocesses every image to {h}x{w} ({policy}): one gear suffices, "
                     "the padding its policy adds is part of the preset")
    else:
        proposal = propose_gears(sizes, max_gears, multiple)
        if len(proposal.gears) >= 2:
            notes.append(f"export the model at one of the gears (e.g. the largest, {proposal.gears[-1].text}) and compile with "
                         f"{' '.join(['--dynamic-image-sizes', ','.join(g.text for g in proposal.gears)])}; atc takes image gears "
                         f"or batch gears, not both: use batch {proposal.batch} (static)")
    counted = Counter(tuple(s) for s in sizes).most_common()
    return ShapesReport(dataset, preset_name, policy, len(sizes), multiple, max_gears, counted, quantiles, proposal, notes)


def compare_policies(model: str | Path, dataset: str, data_root: str | Path | None, gears: Sequence[Size | str],
                     preset: str | None = None, *, limit: int | None = None, backend: str = "onnxruntime",
                     num_classes: int | None = None, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """`evaluate` of a dynamic-H/W ONNX model at `gears` with each policy: {policy: EvalResult}.

    `progress(policy, done, total)` is called after each batch.

    Raises:
        EvaluationError: the model has a static H/W, or the gears do not cover the data (see
            `evaluator.plan_evaluation`).
    """
    from onnxforge.evaluate.evaluator import evaluate

    results = {}
    for policy in GEAR_POLICIES:
        update = (lambda done, total, p=policy: progress(p, done, total)) if progress is not None else None
        results[policy] = evaluate(model, dataset, data_root, preset=preset, backend=backend, limit=limit,
                                   num_classes=num_classes, gears=tuple(gears), gear_policy=policy, progress=update)
    return results

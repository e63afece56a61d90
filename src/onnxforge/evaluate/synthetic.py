"""A synthetic segmentation dataset the project generates: deterministic, any count and size, K classes.

Each image is a textured, low-saturation background (class 0) with one to five objects painted over it.
An object's class decides its **shape** (disk, rotated rectangle, triangle, ellipse, ring, diamond,
cross, cycling when K-1 > 7), its **hue** (classes are spread round the colour wheel) and its
**texture** (stripes whose frequency grows with the class); position, size, rotation, stripe phase and
orientation, saturation and brightness are random, objects occlude each other and may leave the frame,
and Gaussian pixel noise is added on top. A model must therefore use colour and shape together, which
a small network learns in minutes but cannot solve with a per-pixel colour lookup.

Labels follow VOC: class indices in a palette PNG, with **255 = void** on a band ``void`` pixels wide
around every object boundary (train with ``ignore_index=255``; ``void=0`` disables it).

Sample `i` of a set depends only on ``(seed, i, size, classes, void)``, so a set can be streamed in
memory (`SyntheticDataset`) or written once in the VOC layout (`write_synthetic`) and read back with
identical pixels. Use `TRAIN_SEED` for training data and `EVAL_SEED` for evaluation, so they never
overlap.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np

from onnxforge.errors import DatasetError
from onnxforge.evaluate.datasets import VOC2012, Dataset, Sample

TRAIN_SEED = 0
EVAL_SEED = 1
DEFAULT_COUNT = 32
DEFAULT_SIZE = (128, 256)
DEFAULT_CLASSES = 6
GENERATOR_VERSION = 1
META_FILE = "synthetic.json"
SHAPES = ("disk", "rectangle", "triangle", "ellipse", "ring", "diamond", "cross")


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triples, flattened), as VOC's own palette PNGs carry."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float32)


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    """Inside-test in the object's rotated frame (u, v), half-extents a (along u) and b (along v)."""
    if kind == "disk":
        return u * u + v * v <= a * a
    if kind == "rectangle":
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    if kind == "triangle":
        # isosceles: apex at v=-b, base at v=+b of half-width a
        t = (v + b) / (2 * b)
        return (v >= -b) & (v <= b) & (np.abs(u) <= a * t)
    if kind == "ellipse":
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if kind == "ring":
        d2 = u * u + v * v
        return (d2 <= a * a) & (d2 >= (0.55 * a) ** 2)
    if kind == "diamond":
        return np.abs(u) / a + np.abs(v) / b <= 1.0
    if kind == "cross":
        return ((np.abs(u) <= a) & (np.abs(v) <= b / 3.5)) | ((np.abs(u) <= a / 3.5) & (np.abs(v) <= b))
    raise ValueError(kind)


def _void_band(label: np.ndarray, width: int) -> np.ndarray:
    """Pixels within `width` of a class boundary (4-neighbourhood), as a boolean map."""
    edge = np.zeros(label.shape, dtype=bool)
    dv = label[1:, :] != label[:-1, :]
    dh = label[:, 1:] != label[:, :-1]
    edge[1:, :] |= dv
    edge[:-1, :] |= dv
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    band = edge
    for _ in range(max(0, width - 1)):
        grown = band.copy()
        grown[1:, :] |= band[:-1, :]
        grown[:-1, :] |= band[1:, :]
        grown[:, 1:] |= band[:, :-1]
        grown[:, :-1] |= band[:, 1:]
        band = grown
    return band


def generate_sample(index: int, size: tuple[int, int] = DEFAULT_SIZE, classes: int = DEFAULT_CLASSES,
                    seed: int = EVAL_SEED, void: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Image (HxWx3 uint8 RGB) and label (HxW uint8, 255 = void) of sample `index`; deterministic."""
    if classes < 2 or classes > 255:
        raise DatasetError(f"synthetic: classes must be in 2..255 (class 0 is the background), got {classes}")
    h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8:
        raise DatasetError(f"synthetic: image size must be at least 8x8, got {h}x{w}")
    rng = np.random.default_rng([int(seed), int(index), GENERATOR_VERSION])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    scale = float(min(h, w))

    # background: a muted base colour, two low-frequency waves and a fine grain
    base = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.35, 0.75))
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = base * 255.0
    for _ in range(2):
        theta = rng.uniform(0, math.pi)
        freq = rng.uniform(1.0, 4.0) * 2 * math.pi / scale
        wave = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * freq + rng.uniform(0, 2 * math.pi))
        img += (wave * rng.uniform(10, 30))[..., None] * rng.uniform(0.6, 1.0, size=3).astype(np.float32)
    label = np.zeros((h, w), dtype=np.uint8)

    for _ in range(int(rng.integers(1, 6))):
        cls = int(rng.integers(1, classes))
        kind = SHAPES[(cls - 1) % len(SHAPES)]
        cy, cx = rng.uniform(-0.1, 1.1) * h, rng.uniform(-0.1, 1.1) * w
        a = rng.uniform(0.10, 0.28) * scale
        b = a * rng.uniform(0.55, 1.0) if kind in ("rectangle", "ellipse", "diamond", "triangle", "cross") else a
        rot = rng.uniform(0, 2 * math.pi)
        # every shape lies within radius hypot(a, b) of its centre: work on that box only
        reach = math.hypot(a, b) + 1.0
        y0, y1 = max(int(math.floor(cy - reach)), 0), min(int(math.ceil(cy + reach)) + 1, h)
        x0, x1 = max(int(math.floor(cx - reach)), 0), min(int(math.ceil(cx + reach)) + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue
        bx, by = xx[y0:y1, x0:x1], yy[y0:y1, x0:x1]
        du, dv = bx - cx, by - cy
        u = du * math.cos(rot) + dv * math.sin(rot)
        v = -du * math.sin(rot) + dv * math.cos(rot)
        mask = _shape_mask(kind, u, v, a, b)
        if not mask.any():
            continue
        hue = ((cls - 1) / (classes - 1) + rng.uniform(-0.2, 0.2) / (classes - 1)) % 1.0
        colour = _hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0)) * 255.0
        stripe_f = (1.5 + 1.5 * cls) * 2 * math.pi / scale
        st = rng.uniform(0, math.pi)
        stripes = np.sin((bx[mask] * math.cos(st) + by[mask] * math.sin(st)) * stripe_f + rng.uniform(0, 2 * math.pi))
        img[y0:y1, x0:x1][mask] = colour[None, :] * (1.0 + 0.18 * stripes[:, None])
        label[y0:y1, x0:x1][mask] = cls

    img += rng.normal(0.0, 8.0, size=img.shape).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if void > 0:
        label[_void_band(label, void)] = 255
    return image, label


class SyntheticDataset(Dataset):
    """`count` synthetic samples generated on the fly (nothing is kept in memory between samples)."""

    name = "synthetic"
    task = "segmentation"
    ignore_index = 255

    def __init__(self, count: int = DEFAULT_COUNT, size: tuple[int, int] = DEFAULT_SIZE,
                 classes: int = DEFAULT_CLASSES, seed: int = EVAL_SEED, void: int = 1, start: int = 0) -> None:
        if count <= 0:
            raise DatasetError(f"synthetic: count must be positive, got {count}")
        self.count, self.size, self.classes, self.seed, self.void, self.start = count, tuple(size), classes, seed, void, start
        self.num_classes = classes

    def __len__(self) -> int:
        return self.count

    def names(self) -> list[str]:
        return [f"synth_{i:05d}" for i in range(self.start, self.start + self.count)]

    def __iter__(self) -> Iterator[Sample]:
        for i, name in zip(range(self.start, self.start + self.count), self.names()):
            image, label = generate_sample(i, self.size, self.classes, self.seed, self.void)
            yield Sample(name, image, label)


def write_synthetic(root: str | Path, n: int = DEFAULT_COUNT, size: tuple[int, int] = DEFAULT_SIZE,
                    classes: int = DEFAULT_CLASSES, seed: int = EVAL_SEED, void: int = 1,
                    split: str = "val") -> Path:
    """Writes `n` samples in the VOC layout under `root` and returns `root`.

    Files: ``JPEGImages/synth_NNNNN.png`` (lossless PNG, despite the folder name), ``SegmentationClass/
    synth_NNNNN.png`` (VOC palette), ``ImageSets/Segmentation/<split>.txt`` and ``synthetic.json``
    (the generator's parameters). Existing files of the same names are replaced.
    """
    from PIL import Image

    root = Path(root)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    ds = SyntheticDataset(n, size, classes, seed, void)
    for sample in ds:
        Image.fromarray(sample.image, "RGB").save(root / "JPEGImages" / f"{sample.name}.png")
        lab = Image.fromarray(sample.label, "P")
        lab.putpalette(palette)
        lab.save(root / "SegmentationClass" / f"{sample.name}.png")
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ds.names()) + "\n")
    meta = {"generator": "onnxforge.evaluate.synthetic", "version": GENERATOR_VERSION, "count": n,
            "size": list(size), "classes": classes, "seed": seed, "void": void, "split": split,
            "ignore_index": 255}
    (root / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return root


def read_meta(root: str | Path) -> dict:
    path = Path(root) / META_FILE
    if not path.is_file():
        raise DatasetError(f"{path}: missing; not a synthetic dataset written by onnxforge (write_synthetic)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc.msg})") from None


class SyntheticOnDisk(VOC2012):
    """A synthetic set written by `write_synthetic`, read back through the VOC reader."""

    name = "synthetic"

    def __init__(self, root: str | Path, split: str | None = None, limit: int | None = None) -> None:
        meta = read_meta(root)
        super().__init__(root, split=split or meta.get("split", "val"), limit=limit)
        self.num_classes = int(meta["classes"])
        self.meta = meta


def open_synthetic(root: str | Path | None, limit: int | None = None, size: tuple[int, int] | None = None,
                   classes: int | None = None, seed: int | None = None, count: int | None = None,
                   void: int = 1) -> Dataset:
    """On disk if `root` is given, else in memory with `count` (or `limit`, or DEFAULT_COUNT) samples."""
    if root is not None:
        return SyntheticOnDisk(root, limit=limit)
    n = count or limit or DEFAULT_COUNT
    if limit is not None:
        n = min(n, limit)
    return SyntheticDataset(n, tuple(size or DEFAULT_SIZE), classes or DEFAULT_CLASSES,
                            EVAL_SEED if seed is None else seed, void)

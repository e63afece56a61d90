"""The project's synthetic scene generator: deterministic images and label maps, any size, K classes.

Each image is a textured, low-saturation background (class 0) with one to five objects painted over it.
An object's class decides its **shape** (disk, rotated rectangle, triangle, ellipse, ring, diamond,
cross, cycling when K-1 > 7), its **hue** (classes are spread round the colour wheel) and its
**texture** (stripes whose frequency grows with the class); position, size, rotation, stripe phase and
orientation, saturation and brightness are random, objects occlude each other and may leave the frame,
and Gaussian pixel noise is added on top. A model must therefore use colour and shape together, which
a small network learns in minutes but cannot solve with a per-pixel colour lookup.

Labels follow VOC: class indices, with **255 = void** on a band ``void`` pixels wide around every
object boundary (train with ``ignore_index=255``; ``void=0`` disables it).

Sample `i` depends only on ``(seed, i, size, classes, void)``. Use `TRAIN_SEED` for training data and
`EVAL_SEED` for evaluation, so they never overlap.

This module sits low (it needs only numpy and `onnxforge.errors`) so that both the trainer
(`onnxforge.frontends.train`) and the evaluator's synthetic dataset (`onnxforge.evaluate.synthetic`)
import it downward.
"""

from __future__ import annotations

import math

import numpy as np

from onnxforge.errors import DatasetError

TRAIN_SEED = 0
EVAL_SEED = 1
DEFAULT_COUNT = 32
DEFAULT_SIZE = (128, 256)
DEFAULT_CLASSES = 6
GENERATOR_VERSION = 1
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

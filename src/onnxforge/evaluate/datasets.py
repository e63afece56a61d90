"""Evaluation datasets in their real on-disk layouts, streamed one sample at a time.

Layouts (``ROOT`` is ``--data-root``):

- ``voc2012``: ``ROOT/JPEGImages/<id>.jpg``, ``ROOT/SegmentationClass/<id>.png`` (palette PNG: pixel
  values are class indices, 255 = void), ``ROOT/ImageSets/Segmentation/val.txt``. ROOT may also be the
  folder holding ``VOC2012`` or ``VOCdevkit/VOC2012``.
- ``imagenet``: ``ROOT/val_label.txt`` with lines ``<image name> <label>`` and the images in
  ``ROOT/val/`` (or ROOT itself).
- ``cityscapes``: ``ROOT/leftImg8bit/val/<city>/<x>_leftImg8bit.png`` and
  ``ROOT/gtFine/val/<city>/<x>_gtFine_labelIds.png``; labelIds become trainIds through SegmenTron's
  ``_key`` table, every void id (and anything outside 0..33) becomes -1.
- ``dsb2018``: ``ROOT/dsb2018_96/images/<id>.png``, ``ROOT/dsb2018_96/masks/0/<id>.png`` and
  ``val_ids.txt`` (in ROOT or ROOT/dsb2018_96); masks become 0/1 with ``mask/255 > 0.5``.
- ``synthetic`` (registered by `synthetic.py`): the VOC-like layout `write_synthetic` writes (images
  may be ``.png``), or generated in memory.

Every dataset class registers itself (``@register_dataset``) under its ``name`` with a one-line
``summary``; `onnxforge.evaluate.catalog.open_dataset(name, root)` opens one by name.

Contract: constructing a dataset checks the layout and that every listed image and label file exists
(DatasetError naming the first missing path); iterating decodes one sample at a time, so memory does
not grow with the dataset. Images come back as HxWx3 uint8 **RGB** (policies that want BGR flip them);
segmentation labels as HxW integer arrays of the image's size (a label of another size is a
DatasetError naming both files); classification labels as ints.
"""

from __future__ import annotations

import copy
import itertools
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from onnxforge.errors import DatasetError
from onnxforge.evaluate.registry import register_dataset

log = logging.getLogger(__name__)

#: SegmenTron's cityscapes `_key`: index = labelId + 1 (np.digitize over range(-1, 34)), value = trainId.
CITYSCAPES_KEY = np.array([
    -1, -1, -1, -1, -1, -1,
    -1, -1, 0, 1, -1, -1,
    2, 3, 4, -1, -1, -1,
    5, -1, 6, 7, 8, 9,
    10, 11, 12, 13, 14, 15,
    -1, -1, 16, 17, 18,
], dtype=np.int16)


@dataclass
class Sample:
    """One evaluation item. `name` is the stem prediction files are named after."""

    name: str
    image: np.ndarray  # HxWx3 uint8 RGB
    label: np.ndarray | int  # HxW integer map, or a class index
    image_path: Path | None = None
    label_path: Path | None = None


class Dataset(ABC):
    """A finite, ordered, lazily decoded set of samples.

    A registered dataset class declares `name`, a one-line `summary` and what its labels are (`task`,
    `num_classes`, `ignore_index`); `open` builds it from the CLI's ``--data-root`` and options.
    """

    name: str = ""
    summary: str = ""
    task: str = "segmentation"  # segmentation | classification | binary-segmentation
    num_classes: int | None = None
    ignore_index: int | None = None
    generated: bool = False  # True: the data is generated for the model (any task and size), no preset needed

    @classmethod
    def open(cls, root: str | Path | None, limit: int | None = None, **options) -> Dataset:
        """The dataset read from `root` (DatasetError if it needs one and `root` is None)."""
        if root is None:
            raise DatasetError(f"dataset {cls.name} needs --data-root")
        return cls(root, limit=limit, **options)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def names(self) -> list[str]:
        """Sample names in order (cheap: no decoding)."""

    @abstractmethod
    def __iter__(self) -> Iterator[Sample]: ...

    def image_sizes(self) -> Iterator[tuple[str, tuple[int, int]]]:
        """(name, (H, W)) of every image in order; this default decodes the samples (file datasets read headers)."""
        for sample in self:
            yield sample.name, tuple(int(d) for d in sample.image.shape[:2])
    def shard(self, start: int, stop: int) -> Dataset:
        """Samples start..stop-1 (in order) as a dataset of the same labels, for sharded evaluation.

        The default skips the first `start` samples while iterating (decoding them); datasets that list their
        files slice the list instead."""
        if not 0 <= start <= stop <= len(self):
            raise DatasetError(f"{self.name}: shard {start}..{stop} outside 0..{len(self)}")
        return _Slice(self, start, stop)


class _Slice(Dataset):
    """`Dataset.shard`'s generic form: a contiguous window of another dataset."""

    def __init__(self, base: Dataset, start: int, stop: int) -> None:
        self.base, self.start, self.stop = base, start, stop
        self.name, self.task, self.num_classes, self.ignore_index = base.name, base.task, base.num_classes, base.ignore_index

    def __len__(self) -> int:
        return self.stop - self.start

    def names(self) -> list[str]:
        return self.base.names()[self.start:self.stop]

    def __iter__(self) -> Iterator[Sample]:
        return itertools.islice(iter(self.base), self.start, self.stop)


def _sliced(ds: Dataset, start: int, stop: int) -> Dataset:
    """A copy of a file-listing dataset (`_items`) with its list cut to start..stop-1."""
    if not 0 <= start <= stop <= len(ds):
        raise DatasetError(f"{ds.name}: shard {start}..{stop} outside 0..{len(ds)}")
    part = copy.copy(ds)
    part._items = ds._items[start:stop]
    return part


def read_rgb(path: Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB (grey is replicated, alpha dropped); DatasetError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: scale to 8 bits like cv2 does
                arr = np.asarray(im, dtype=np.uint32) >> 8
                arr = arr.astype(np.uint8)
                return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr[..., :3]
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"{path}: cannot read image ({exc.__class__.__name__}: {str(exc)[:120]})") from None


def read_image_size(path: Path) -> tuple[int, int]:
    """An image file's (H, W) from its header (PIL's `Image.open` does not decode); DatasetError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"{path}: cannot read image ({exc.__class__.__name__}: {str(exc)[:120]})") from None
    return int(h), int(w)


def read_label(path: Path) -> np.ndarray:
    """A label PNG's raw pixel values (palette indices for VOC, ids for Cityscapes) as an HxW array."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA"):
                raise DatasetError(
                    f"{path}: label is an {im.mode} colour image; expected class indices "
                    "(a palette or greyscale PNG, as VOC SegmentationClass / Cityscapes labelIds ship)"
                )
            if im.mode == "LA":
                im = im.convert("L")
            arr = np.array(im)
    except FileNotFoundError:
        raise DatasetError(f"{path}: label file missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"{path}: cannot read label ({exc.__class__.__name__}: {str(exc)[:120]})") from None
    if arr.ndim != 2:
        raise DatasetError(f"{path}: label has shape {arr.shape}; expected a single-channel HxW map")
    return arr


def _check_same_size(image: np.ndarray, label: np.ndarray, image_path: Path | None, label_path: Path | None) -> None:
    if image.shape[:2] != label.shape[:2]:
        ih, iw = image.shape[:2]
        lh, lw = label.shape[:2]
        raise DatasetError(
            f"{label_path}: label is {lw}x{lh} (WxH) but its image {image_path} is {iw}x{ih}; "
            "labels must have their image's size"
        )


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: missing folder ({what})")
    return path


def _read_list(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{path}: missing {what}")
    names = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise DatasetError(f"{path}: {what} lists no samples")
    return names


def _limit(items: list, limit: int | None) -> list:
    if limit is not None:
        if limit <= 0:
            raise DatasetError(f"--limit must be positive, got {limit}")
        return items[:limit]
    return items


class _PairDataset(Dataset):
    """A dataset of (name, image path, label path) triples; subclasses map raw labels."""

    def __init__(self, items: list[tuple[str, Path, Path]]) -> None:
        for name, img, lab in items:
            if not img.is_file():
                raise DatasetError(f"{img}: image file missing (listed as '{name}')")
            if not lab.is_file():
                raise DatasetError(f"{lab}: label file missing for image {img}")
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return [n for n, _, _ in self._items]

    def map_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return raw

    def image_sizes(self) -> Iterator[tuple[str, tuple[int, int]]]:
        for name, img_path, _ in self._items:
            yield name, read_image_size(img_path)
    def shard(self, start: int, stop: int) -> Dataset:
        return _sliced(self, start, stop)

    def __iter__(self) -> Iterator[Sample]:
        for name, img_path, lab_path in self._items:
            image = read_rgb(img_path)
            label = self.map_label(read_label(lab_path), lab_path)
            _check_same_size(image, label, img_path, lab_path)
            yield Sample(name, image, label, img_path, lab_path)


def find_voc_root(root: Path) -> Path:
    """ROOT itself, ROOT/VOC2012 or ROOT/VOCdevkit/VOC2012: whichever holds JPEGImages."""
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    if not root.is_dir():
        raise DatasetError(f"{root}: data root does not exist")
    raise DatasetError(
        f"{root}: not a VOC2012 folder: expected JPEGImages/, SegmentationClass/ and "
        "ImageSets/Segmentation/val.txt here (or under VOC2012/ or VOCdevkit/VOC2012/)"
    )


@register_dataset
class VOC2012(_PairDataset):
    """PASCAL VOC 2012 segmentation (21 classes, 255 = void); also reads the synthetic set's layout."""

    name = "voc2012"
    summary = "PASCAL VOC 2012 val segmentation (JPEGImages, SegmentationClass, ImageSets/Segmentation/val.txt)"
    task = "segmentation"
    num_classes = 21
    ignore_index = 255

    def __init__(self, root: str | Path, split: str = "val", limit: int | None = None) -> None:
        base = find_voc_root(Path(root))
        images = _require_dir(base / "JPEGImages", "VOC images")
        labels = _require_dir(base / "SegmentationClass", "VOC class labels")
        ids = _limit(_read_list(base / "ImageSets" / "Segmentation" / f"{split}.txt", f"{split} split list"), limit)
        items = []
        for i in ids:
            img = images / f"{i}.jpg"
            if not img.is_file() and (images / f"{i}.png").is_file():
                img = images / f"{i}.png"
            items.append((i, img, labels / f"{i}.png"))
        self.root = base
        super().__init__(items)


@register_dataset
class ImageNetVal(Dataset):
    """ImageNet val: images + val_label.txt (``name label`` per line, 1000 classes, no offset)."""

    name = "imagenet"
    summary = "ImageNet val classification (images + val_label.txt)"
    task = "classification"
    num_classes = 1000
    ignore_index = None

    def __init__(self, root: str | Path, limit: int | None = None, label_file: str = "val_label.txt") -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: data root does not exist")
        labels_path = root / label_file
        lines = _read_list(labels_path, f"{label_file} (lines '<image name> <label>')")
        image_dir = root / "val" if (root / "val").is_dir() else root
        items: list[tuple[str, Path, int]] = []
        for lineno, line in enumerate(_limit(lines, limit), 1):
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DatasetError(f"{labels_path}: line {lineno}: expected '<image name> <label>', got {line!r}")
            fname, lab = parts[0], int(parts[1])
            path = image_dir / fname
            if not Path(fname).suffix:
                path = next((image_dir / (fname + ext) for ext in (".JPEG", ".jpg", ".jpeg", ".png")
                             if (image_dir / (fname + ext)).is_file()), image_dir / (fname + ".JPEG"))
            if not path.is_file():
                raise DatasetError(f"{path}: image file missing (listed in {labels_path} line {lineno})")
            items.append((Path(fname).stem, path, lab))
        self._items = items
        self.root = root

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return [n for n, _, _ in self._items]

    def __iter__(self) -> Iterator[Sample]:
        for name, path, lab in self._items:
            yield Sample(name, read_rgb(path), lab, path, None)

    def image_sizes(self) -> Iterator[tuple[str, tuple[int, int]]]:
        for name, path, _ in self._items:
            yield name, read_image_size(path)
    def shard(self, start: int, stop: int) -> Dataset:
        return _sliced(self, start, stop)


@register_dataset
class Cityscapes(_PairDataset):
    """Cityscapes fine val (19 train classes; void -> -1 via SegmenTron's `_key`)."""

    name = "cityscapes"
    summary = "Cityscapes fine val (leftImg8bit/val, gtFine/val labelIds -> trainIds)"
    task = "segmentation"
    num_classes = 19
    ignore_index = -1

    def __init__(self, root: str | Path, split: str = "val", limit: int | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: data root does not exist")
        img_root = _require_dir(root / "leftImg8bit" / split, "Cityscapes images, leftImg8bit/<split>/<city>/")
        gt_root = _require_dir(root / "gtFine" / split, "Cityscapes labels, gtFine/<split>/<city>/")
        images = sorted(img_root.glob("*/*_leftImg8bit.png"))
        if not images:
            raise DatasetError(f"{img_root}: no <city>/*_leftImg8bit.png images")
        items = []
        for img in _limit(images, limit):
            prefix = img.name[: -len("_leftImg8bit.png")]
            items.append((img.stem, img, gt_root / img.parent.name / f"{prefix}_gtFine_labelIds.png"))
        self.root = root
        super().__init__(items)

    def map_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return labelids_to_trainids(raw)


def labelids_to_trainids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes labelIds -> trainIds exactly as SegmenTron's `_class_to_index` (void -> -1).

    SegmenTron asserts every value is a known id; here values outside 0..33 are treated as void too.
    """
    ids = label_ids.astype(np.int32)
    out = np.full(ids.shape, -1, dtype=np.int16)
    known = (ids >= 0) & (ids <= 33)
    out[known] = CITYSCAPES_KEY[ids[known] + 1]
    return out


@register_dataset
class DSB2018(_PairDataset):
    """Data Science Bowl 2018 nuclei at 96x96 (binary; masks 0/255 -> 0/1)."""

    name = "dsb2018"
    summary = "Data Science Bowl 2018 nuclei (dsb2018_96/images, masks/0, val_ids.txt)"
    task = "binary-segmentation"
    num_classes = 1
    ignore_index = None

    def __init__(self, root: str | Path, limit: int | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: data root does not exist")
        base = root if (root / "images").is_dir() and root.name == "dsb2018_96" else root / "dsb2018_96"
        images = _require_dir(base / "images", "DSB2018 images, dsb2018_96/images/<id>.png")
        masks = _require_dir(base / "masks" / "0", "DSB2018 masks, dsb2018_96/masks/0/<id>.png")
        candidates = [root / "val_ids.txt", base / "val_ids.txt"]
        if base == root:
            candidates.append(root.parent / "val_ids.txt")
        ids_file = next((p for p in candidates if p.is_file()), None)
        if ids_file is None:
            raise DatasetError(f"{candidates[0]}: missing val_ids.txt (the validation ids, one per line; also looked "
                               f"in {', '.join(str(p.parent) for p in candidates[1:])})")
        ids = _limit(_read_list(ids_file, "val_ids.txt"), limit)
        self.root = base
        super().__init__([(i, images / f"{i}.png", masks / f"{i}.png") for i in ids])

    def map_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        # upstream: mask.astype(float32) / 255, then target > 0.5
        return (raw.astype(np.float32) / 255.0 > 0.5).astype(np.uint8)

from __future__ import annotations

import numpy as np
from PIL import Image

from onnxforge.evaluate.catalog import open_dataset
from onnxforge.evaluate.synthetic import (
    EVAL_SEED, TRAIN_SEED, SyntheticDataset, generate_sample, voc_palette, write_synthetic,
)


def test_deterministic_and_seed_dependent():
    a_img, a_lab = generate_sample(3, (24, 40), 5, seed=7)
    b_img, b_lab = generate_sample(3, (24, 40), 5, seed=7)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, _ = generate_sample(4, (24, 40), 5, seed=7)
    d_img, _ = generate_sample(3, (24, 40), 5, seed=8)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_img, d_img)
    assert TRAIN_SEED != EVAL_SEED


def test_any_size_and_classes_with_void_band():
    img, lab = generate_sample(0, (17, 33), 3, seed=1)
    assert img.shape == (17, 33, 3) and img.dtype == np.uint8 and lab.shape == (17, 33)
    labels = set()
    for i in range(12):
        _, lab = generate_sample(i, (48, 64), 4, seed=2)
        labels |= set(np.unique(lab).tolist())
    assert labels == {0, 1, 2, 3, 255}
    _, lab = generate_sample(0, (48, 64), 4, seed=2, void=0)
    assert 255 not in lab


def test_class_dependent_colour_makes_it_learnable():
    # the mean hue of each class differs: a colour-only oracle already separates most pixels
    sums = {}
    for i in range(20):
        img, lab = generate_sample(i, (48, 64), 4, seed=3, void=0)
        for c in range(1, 4):
            m = lab == c
            if m.any():
                sums.setdefault(c, []).append(img[m].mean(axis=0))
    means = {c: np.mean(v, axis=0) for c, v in sums.items()}
    assert len(means) == 3
    for a in means:
        for b in means:
            if a < b:
                assert np.abs(means[a] - means[b]).max() > 25


def test_write_then_read_equals_in_memory(tmp_path):
    root = write_synthetic(tmp_path / "syn", n=3, size=(20, 30), classes=4, seed=5)
    with Image.open(root / "SegmentationClass" / "synth_00001.png") as im:
        assert im.mode == "P" and im.getpalette()[:9] == voc_palette()[:9]
    disk = list(open_dataset("synthetic", root))
    mem = list(SyntheticDataset(3, (20, 30), 4, seed=5))
    assert [s.name for s in disk] == [s.name for s in mem]
    for d, m in zip(disk, mem):
        np.testing.assert_array_equal(d.image, m.image)
        np.testing.assert_array_equal(d.label, m.label)
    ds = open_dataset("synthetic", root, limit=2)
    assert len(ds) == 2 and ds.num_classes == 4


def test_in_memory_open_and_limit():
    ds = open_dataset("synthetic", None, limit=5, size=(16, 16), classes=3, seed=0)
    assert len(ds) == 5 and ds.names()[0] == "synth_00000"
    assert next(iter(ds)).image.shape == (16, 16, 3)

"""Each dataset loader on a tiny dataset in its real on-disk layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnxforge.errors import DatasetError
from onnxforge.evaluate import datasets as dsmod
from onnxforge.evaluate.catalog import open_dataset
from onnxforge.evaluate.datasets import DSB2018, VOC2012, Cityscapes, ImageNetVal, labelids_to_trainids
from tests.evaluate.builders import write_cityscapes, write_dsb, write_imagenet, write_png, write_voc


def test_voc_reads_palette_indices_void_and_odd_sizes(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    ids = write_voc(root, [(5, 7), (6, 3)], classes=21)
    for base in (root, tmp_path, tmp_path / "VOCdevkit"):  # the folder itself or a parent
        ds = open_dataset("voc2012", base)
        assert ds.names() == ids and len(ds) == 2
    samples = list(ds)
    assert samples[0].image.shape == (5, 7, 3) and samples[0].image.dtype == np.uint8
    assert samples[1].label.shape == (6, 3)
    with Image.open(root / "SegmentationClass" / f"{ids[0]}.png") as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(samples[0].label, np.array(im))
    assert (samples[0].label[0] == 255).all() and samples[0].label[1:].max() < 21
    assert len(open_dataset("voc2012", root, limit=1)) == 1


def test_voc_bad_layouts_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        VOC2012(tmp_path / "nope")
    with pytest.raises(DatasetError, match="not a VOC2012 folder"):
        VOC2012(tmp_path)
    ids = write_voc(tmp_path, [(4, 4), (4, 4)])
    (tmp_path / "SegmentationClass" / f"{ids[1]}.png").unlink()
    with pytest.raises(DatasetError) as info:
        VOC2012(tmp_path)
    assert str(info.value) == (f"{tmp_path / 'SegmentationClass' / (ids[1] + '.png')}: label file missing for image "
                               f"{tmp_path / 'JPEGImages' / (ids[1] + '.jpg')}")
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DatasetError, match="val.txt: missing val split list"):
        VOC2012(tmp_path)


def test_voc_label_of_wrong_size_or_colour_is_an_error(tmp_path):
    ids = write_voc(tmp_path, [(4, 5), (4, 5)])
    write_png(tmp_path / "SegmentationClass" / f"{ids[1]}.png", np.zeros((3, 5), np.uint8), palette=True)
    it = iter(VOC2012(tmp_path))
    next(it)  # the first sample is fine: errors surface where they are, without reading everything first
    with pytest.raises(DatasetError) as info:
        next(it)
    assert f"{ids[1]}.png: label is 5x3 (WxH) but its image" in str(info.value) and "is 5x4" in str(info.value)
    write_png(tmp_path / "SegmentationClass" / f"{ids[1]}.png", np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(DatasetError, match="label is an RGB colour image; expected class indices"):
        list(VOC2012(tmp_path))


def test_missing_image_is_named(tmp_path):
    ids = write_voc(tmp_path, [(4, 4)])
    (tmp_path / "JPEGImages" / f"{ids[0]}.jpg").unlink()
    with pytest.raises(DatasetError, match=rf"{ids[0]}\.jpg: image file missing"):
        VOC2012(tmp_path)


def test_corrupt_image_is_named(tmp_path):
    ids = write_voc(tmp_path, [(4, 4)])
    (tmp_path / "JPEGImages" / f"{ids[0]}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=rf"{ids[0]}\.jpg: cannot read image"):
        list(VOC2012(tmp_path))


def test_iteration_is_lazy(tmp_path, monkeypatch):
    write_voc(tmp_path, [(4, 4)] * 3)
    calls = []
    real = dsmod.read_rgb
    monkeypatch.setattr(dsmod, "read_rgb", lambda p: calls.append(p) or real(p))
    ds = VOC2012(tmp_path)
    ds.names()
    it = iter(ds)
    assert calls == []
    next(it)
    assert len(calls) == 1


def test_cityscapes_labelids_to_segmentron_trainids(tmp_path):
    stems = write_cityscapes(tmp_path, size=(4, 8))
    ds = Cityscapes(tmp_path)
    assert ds.names() == stems and ds.ignore_index == -1
    s = next(iter(ds))
    raw = np.array(Image.open(tmp_path / "gtFine" / "val" / "aachen" / "aachen_000000_000000_gtFine_labelIds.png"))
    lut = {0: -1, 1: -1, 4: -1, 7: 0, 8: 1, 11: 2, 26: 13, 33: 18}
    np.testing.assert_array_equal(s.label, np.vectorize(lut.get)(raw))
    ids = np.arange(34)
    train = labelids_to_trainids(ids)
    assert train.tolist() == [-1] * 7 + [0, 1, -1, -1, 2, 3, 4, -1, -1, -1, 5, -1, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                        -1, -1, 16, 17, 18]
    assert labelids_to_trainids(np.array([255, 40], np.uint8)).tolist() == [-1, -1]


def test_cityscapes_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match="leftImg8bit/val: missing folder"):
        Cityscapes(tmp_path)
    write_cityscapes(tmp_path)
    (tmp_path / "gtFine" / "val" / "bonn" / "bonn_000000_000001_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetError, match="bonn_000000_000001_gtFine_labelIds.png: label file missing for image"):
        Cityscapes(tmp_path)


def test_dsb2018_binary_masks_and_val_ids(tmp_path):
    write_dsb(tmp_path, ["b", "a"], size=(6, 5))
    ds = DSB2018(tmp_path)
    assert ds.names() == ["b", "a"]  # val_ids.txt order
    s = next(iter(ds))
    raw = np.array(Image.open(tmp_path / "dsb2018_96" / "masks" / "0" / "b.png"))
    np.testing.assert_array_equal(s.label, (raw > 127).astype(np.uint8))
    assert set(np.unique(s.label)) <= {0, 1}
    assert len(DSB2018(tmp_path / "dsb2018_96")) == 2  # the inner folder works too
    (tmp_path / "dsb2018_96" / "masks" / "0" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"masks/0/a\.png: label file missing"):
        DSB2018(tmp_path)
    (tmp_path / "val_ids.txt").unlink()
    with pytest.raises(DatasetError, match="val_ids.txt: missing"):
        DSB2018(tmp_path)


def test_imagenet_val_labels(tmp_path):
    names = write_imagenet(tmp_path, [3, 0, 999], [(5, 7), (8, 4), (6, 6)])
    ds = ImageNetVal(tmp_path)
    samples = list(ds)
    assert [s.label for s in samples] == [3, 0, 999]
    assert [s.name for s in samples] == [n.split(".")[0] for n in names]
    assert samples[1].image.shape == (8, 4, 3)
    (tmp_path / "val_label.txt").write_text(f"{names[0]} 3\nbroken line here\n")
    with pytest.raises(DatasetError, match="line 2: expected '<image name> <label>'"):
        ImageNetVal(tmp_path)
    (tmp_path / "val_label.txt").write_text("ILSVRC2012_val_00000042.JPEG 1\n")
    with pytest.raises(DatasetError, match="ILSVRC2012_val_00000042.JPEG: image file missing"):
        ImageNetVal(tmp_path)


def test_unknown_dataset_and_missing_root():
    with pytest.raises(DatasetError, match="unknown dataset 'coco'; known datasets: voc2012, imagenet"):
        open_dataset("coco", ".")
    with pytest.raises(DatasetError, match="dataset cityscapes needs --data-root"):
        open_dataset("cityscapes", None)

"""Every preprocessing policy against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.errors import EvaluationError
from onnxforge.evaluate.datasets import Sample
from onnxforge.evaluate.preprocess import (
    keep_ratio_size, longest_max_size, prepare, resize_short_size,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _const(h, w, rgb, label=None):
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rgb
    return Sample("s", img, label if label is not None else np.zeros((h, w), np.uint8))


def test_full_is_rgb_over_255_then_mean_std():
    s = _const(2, 3, (255, 0, 128))
    p = prepare("full", s, (2, 3), MEAN, STD)
    assert p.input.shape == (3, 2, 3) and p.input.dtype == np.float32
    assert p.input[0, 0, 0] == pytest.approx((1.0 - 0.485) / 0.229, rel=1e-6)
    assert p.input[1, 1, 2] == pytest.approx((0.0 - 0.456) / 0.224, rel=1e-6)
    assert p.input[2, 0, 1] == pytest.approx((128 / 255 - 0.406) / 0.225, rel=1e-6)
    assert p.target is s.label and p.geometry.metric_space == "original"
    with pytest.raises(EvaluationError, match="image is 3x2 \\(WxH\\) but the model input is 4x2"):
        prepare("full", s, (2, 4), MEAN, STD)


def test_longest_pad_resizes_pads_with_mean_and_labels_255():
    img = np.zeros((2, 4, 3), np.uint8)
    img[:, :, 0] = [[0, 100, 200, 250], [0, 100, 200, 250]]
    lab = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.uint8)
    p = prepare("longest-pad", Sample("s", img, lab), (8, 8), MEAN, STD)
    g = p.geometry
    assert (g.resized, g.pad, g.metric_space) == ((4, 8), (2, 0, 2, 0), "canvas")  # scale 2, top = (8-4)//2
    np.testing.assert_allclose(p.input[:, :2], 0.0, atol=1e-6)  # the pad is the mean colour -> 0
    np.testing.assert_allclose(p.input[:, 6:], 0.0, atol=1e-6)
    # red row, linear x2 of [0,100,200,250]: src -.25->0, .25, .75, 1.25, 1.75, 2.25, 2.75, 3.25->3
    red = np.array([0, 25, 75, 125, 175, 212.5, 237.5, 250])
    np.testing.assert_allclose(p.input[0, 3], (red - 0.485 * 255) / (0.229 * 255), rtol=1e-5)
    assert p.target.shape == (8, 8)
    assert (p.target[:2] == 255).all() and (p.target[6:] == 255).all()
    np.testing.assert_array_equal(p.target[2:6], [[1, 1, 2, 2, 3, 3, 4, 4]] * 2 + [[5, 5, 6, 6, 7, 7, 8, 8]] * 2)


def test_longest_pad_sizes_and_odd_padding():
    assert longest_max_size(375, 500, 500) == (375, 500)
    assert longest_max_size(3, 5, 8) == (5, 8)  # 3 * 1.6 = 4.8 -> 5
    assert longest_max_size(5, 2, 8) == (8, 3)  # 2 * 1.6 = 3.2 -> 3
    p = prepare("longest-pad", _const(3, 8, (10, 20, 30)), (8, 8), MEAN, STD)
    assert p.geometry.pad == (2, 0, 3, 0)  # the odd remainder goes to the bottom


def test_keep_ratio_pad_fp16_mean_std_rgb_and_zero_pad():
    s = _const(4, 2, (200, 100, 50))
    p = prepare("keep-ratio-pad", s, (8, 8), (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    g = p.geometry
    assert (g.resized, g.pad, g.metric_space) == ((8, 4), (0, 2, 0, 2), "original")
    # float16(123.675) = 123.6875, float16(58.395) = 58.40625 ...
    assert p.input[0, 0, 2] == pytest.approx((200 - 123.6875) / 58.40625, rel=1e-6)
    assert p.input[1, 5, 3] == pytest.approx((100 - 116.25) / 57.125, rel=1e-6)
    assert p.input[2, 7, 5] == pytest.approx((50 - 103.5) / 57.375, rel=1e-6)
    assert (p.input[:, :, :2] == 0).all() and (p.input[:, :, 6:] == 0).all()  # zero pad after normalising
    same = prepare("keep-ratio-pad", s, (8, 8), MEAN, STD)  # [0,1] units are accepted too
    assert same.input[0, 0, 2] == pytest.approx(p.input[0, 0, 2], rel=1e-6)
    assert keep_ratio_size(375, 500, (500, 500)) == (375, 500)
    # 333 * (500/333) is 499.99999999999994 in floats: the guide's np.floor gives 499, and so does this
    assert keep_ratio_size(333, 250, (500, 500)) == (499, 375)


def test_resize_crop_centre_crop_without_resize():
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    p = prepare("resize-crop", Sample("s", img, 7), (2, 2), MEAN, STD, resize_short=4)
    assert p.geometry.crop == (1, 2)  # round((4-2)/2), round((6-2)/2)
    crop = img[1:3, 2:4].astype(np.float32) / 255
    np.testing.assert_allclose(p.input, ((crop - MEAN) / STD).transpose(2, 0, 1), rtol=1e-5)
    assert p.target == 7
    assert resize_short_size(375, 500, 256) == (256, 341)
    assert resize_short_size(500, 333, 256) == (384, 256)


def test_resize_crop_uses_pil_bilinear():
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    p = prepare("resize-crop", Sample("s", img, 0), (4, 4), MEAN, STD, resize_short=6)
    ref = np.asarray(Image.fromarray(img).resize((8, 6), Image.BILINEAR))[1:5, 2:6].astype(np.float32) / 255
    np.testing.assert_allclose(p.input, ((ref - MEAN) / STD).transpose(2, 0, 1), rtol=1e-5)


def test_resize_bgr_double_scale_applies_r_stats_to_b():
    s = _const(2, 2, (10, 20, 30), label=np.array([[0, 1], [1, 1]], np.uint8))
    p = prepare("resize-bgr-double-scale", s, (2, 2), MEAN, STD)
    # channel 0 is B (=30) normalised with the R statistics, then divided by 255 again
    assert p.input[0, 0, 0] == pytest.approx((30 - 0.485 * 255) / (0.229 * 255) / 255, rel=1e-6)
    assert p.input[2, 1, 1] == pytest.approx((10 - 0.406 * 255) / (0.225 * 255) / 255, rel=1e-6)
    big = prepare("resize-bgr-double-scale", s, (4, 4), MEAN, STD)
    assert big.target.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]


def test_unknown_policy():
    with pytest.raises(EvaluationError, match="unknown preprocessing policy 'squash'"):
        prepare("squash", _const(2, 2, (0, 0, 0)), (2, 2))

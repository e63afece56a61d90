from __future__ import annotations

import numpy as np
import pytest

from onnxforge.evaluate.imageops import nearest_indices, resize_linear, resize_nearest


def test_linear_half_pixel_by_hand():
    x = np.array([[0.0, 100.0]], np.float32)
    # src = (d + .5) * .5 - .5 = -.25 (clamped to 0), .25, .75, 1.25 (last pixel repeated)
    np.testing.assert_allclose(resize_linear(x, (1, 4)), [[0, 25, 75, 100]])
    y = np.array([[0.0], [40.0], [80.0]], np.float32)
    np.testing.assert_allclose(resize_linear(y, (2, 1))[:, 0], [10, 70])  # src .25 and 1.75


def test_uint8_rounds_and_saturates():
    x = np.array([[0, 101]], np.uint8)
    out = resize_linear(x, (1, 4))
    assert out.dtype == np.uint8 and out.tolist() == [[0, 25, 76, 101]]


def test_nearest_floor_by_hand():
    assert nearest_indices(2, 4).tolist() == [0, 0, 1, 1]
    assert nearest_indices(376, 375)[:3].tolist() == [0, 1, 2]
    assert nearest_indices(5, 3).tolist() == [0, 1, 3]  # floor(i * 5/3)
    lab = np.array([[1, 2], [3, 255]], np.uint8)
    out = resize_nearest(lab, (4, 3))
    assert out.dtype == np.uint8 and out.tolist() == [[1, 1, 2], [1, 1, 2], [3, 3, 255], [3, 3, 255]]


def test_matches_torch_interpolate():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 11)).astype(np.float32)
    for size in ((13, 29), (4, 5), (7, 20)):
        ref = F.interpolate(torch.from_numpy(x)[None], size=size, mode="bilinear", align_corners=False)[0].numpy()
        np.testing.assert_allclose(resize_linear(x, size, axes=(1, 2)), ref, rtol=1e-5, atol=1e-5)
        ref_n = F.interpolate(torch.from_numpy(x)[None], size=size, mode="nearest")[0].numpy()
        np.testing.assert_array_equal(resize_nearest(x, size, axes=(1, 2)), ref_n)

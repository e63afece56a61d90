"""Every legitimate output form becomes the right prediction in the metric's space."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.errors import EvaluationError
from onnxforge.evaluate.imageops import resize_linear
from onnxforge.evaluate.postprocess import (
    binary_map, classification_logits, guide_uncrop, label_map, prediction_for, split_batch, upsample_argmax,
)
from onnxforge.evaluate.preprocess import Geometry


def test_full_resolution_logits_fp32_and_fp16():
    logits = np.zeros((3, 2, 2), np.float32)
    logits[1, 0, 0] = logits[2, 1, 1] = 5
    expected = [[1, 0], [0, 2]]
    assert label_map(logits, (2, 2), 3).tolist() == expected
    assert label_map(logits.astype(np.float16), (2, 2), 3).tolist() == expected


def test_reduced_resolution_logits_are_upsampled_bilinear_before_argmax():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 5, 7)).astype(np.float32)
    expected = np.argmax(resize_linear(logits, (37, 300), axes=(1, 2)), axis=0)
    np.testing.assert_array_equal(upsample_argmax(logits, (37, 300)), expected)
    np.testing.assert_array_equal(upsample_argmax(logits, (600, 7)), np.argmax(resize_linear(logits, (600, 7), axes=(1, 2)), axis=0))


def test_integer_label_maps_any_layout_resized_nearest():
    lab = np.array([[0, 1], [2, 3]], np.int64)
    assert label_map(lab[None], (4, 4), 4).tolist() == [[0, 0, 1, 1]] * 2 + [[2, 2, 3, 3]] * 2  # (1, h, w)
    assert label_map(lab.astype(np.int32), (2, 2), 4).tolist() == lab.tolist()  # (h, w)


def test_split_batch_handles_mmseg_1xNxHxW():
    out = np.arange(2 * 3 * 3).reshape(1, 2, 3, 3)
    assert split_batch(out, 2).shape == (2, 3, 3)
    assert split_batch(np.zeros((2, 5, 3, 3), np.float32), 2).shape == (2, 5, 3, 3)
    with pytest.raises(EvaluationError, match="expected the batch \\(4\\) on axis 0"):
        split_batch(np.zeros((2, 5)), 4)


def test_binary_and_classification_forms():
    logit = np.array([[[-1.0, 0.2], [0.0, 3.0]]], np.float32)  # (1, h, w)
    assert binary_map(logit, (2, 2), 0.0).tolist() == [[0, 1], [0, 1]]
    assert binary_map(logit, (2, 2), 0.5).tolist() == [[0, 0], [0, 1]]
    assert binary_map(logit, (4, 4), 0.0).shape == (4, 4)
    assert classification_logits(np.arange(5.0)).tolist() == [0, 1, 2, 3, 4]
    assert classification_logits(np.arange(5.0).reshape(5, 1, 1)).shape == (5,)
    with pytest.raises(EvaluationError, match="classification output must be"):
        classification_logits(np.zeros((5, 2)))


def test_guide_uncrop_odd_padding_by_hand():
    # original 3 rows x 8 cols in an 8x8 canvas: scale 1, pad_top = (8 - 3) // 2 = 2,
    # the guide crops rows [2 : 8-2] (4 rows, one too many) then nearest 4 -> 3: rows 2, 3, 4
    canvas = np.arange(64).reshape(8, 8)
    g = Geometry("keep-ratio-pad", (3, 8), (3, 8), (8, 8), (2, 0, 3, 0))
    np.testing.assert_array_equal(guide_uncrop(canvas, g), canvas[2:5])
    # original 4x2 -> resized 8x4 with pad_left 2: crop cols [2:6], nearest 8x4 -> 4x2 picks rows 0,2,4,6 cols 2,4
    g = Geometry("keep-ratio-pad", (4, 2), (8, 4), (8, 8), (0, 2, 0, 2))
    np.testing.assert_array_equal(guide_uncrop(canvas, g), canvas[[0, 2, 4, 6]][:, [2, 4]])


def test_prediction_for_dispatches_by_policy():
    g = Geometry("keep-ratio-pad", (4, 2), (8, 4), (8, 8), (0, 2, 0, 2))
    logits = np.zeros((2, 8, 8), np.float32)
    logits[1, :, 4:] = 1
    assert prediction_for(logits, g, "segmentation", 2, (4, 2)).tolist() == [[0, 1]] * 4
    g2 = Geometry("longest-pad", (2, 4), (4, 8), (8, 8), (2, 0, 2, 0), metric_space="canvas")
    assert prediction_for(np.zeros((3, 2, 2), np.float32), g2, "segmentation", 3, (8, 8)).shape == (8, 8)
    assert prediction_for(np.arange(4.0), g2, "classification", 4, None).shape == (4,)


def test_argmax0_matches_numpy_including_ties():
    from onnxforge.evaluate.postprocess import argmax0

    x = np.random.default_rng(1).integers(0, 3, (6, 9, 11)).astype(np.float16)
    np.testing.assert_array_equal(argmax0(x), np.argmax(x, axis=0))

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxforge.evaluate.agreement import (
    Agreement, abs_errors, cosine_similarity, miou_against, pixel_agreement, top1_agreement,
)


def test_pairwise_by_hand():
    a = np.array([[0, 1], [1, 2]])
    b = np.array([[0, 1], [2, 2]])
    assert pixel_agreement(a, b) == 0.75
    # class 0: 1/1, class 1: 1/2, class 2: 1/2
    assert miou_against(a, b, 3) == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert miou_against(a, b, 4) == pytest.approx((1 + 0.5 + 0.5) / 3)  # absent class skipped
    assert top1_agreement(np.array([[1, 2], [3, 0]]), np.array([[0, 5], [1, 2]])) == 0.5
    assert abs_errors(np.array([1.0, 2.0]), np.array([1.5, 1.0])) == (1.0, 0.75)
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    assert cosine_similarity(np.zeros(3), np.zeros(3)) == 1.0


def test_streaming_equals_pairwise():
    rng = np.random.default_rng(0)
    acc = Agreement(3)
    xs, ys = [], []
    for _ in range(3):
        x = rng.standard_normal((3, 4, 5)).astype(np.float32)
        y = (x + rng.standard_normal(x.shape) * 0.1).astype(np.float32)
        acc.update_labels(x.argmax(0), y.argmax(0))
        acc.update_raw(x, y)
        xs.append(x)
        ys.append(y)
    X, Y = np.stack(xs), np.stack(ys)
    r = acc.result()
    assert r["pixel_agreement"] == pytest.approx(pixel_agreement(X.argmax(1), Y.argmax(1)))
    assert r["miou_vs_reference"] == pytest.approx(miou_against(X.argmax(1), Y.argmax(1), 3))
    assert (r["max_abs_error"], r["mean_abs_error"]) == pytest.approx(abs_errors(X, Y))
    assert r["cosine_similarity"] == pytest.approx(cosine_similarity(X, Y))


def test_raw_errors_are_left_out_when_forms_differ():
    acc = Agreement(2)
    acc.update_labels(np.zeros((2, 2), int), np.zeros((2, 2), int))
    acc.update_raw(np.zeros((1, 2, 2), np.int64), np.zeros((2, 2, 2), np.float32))
    assert acc.result() == {"pixel_agreement": 1.0, "miou_vs_reference": 1.0}
    cls = Agreement()
    cls.update_logits(np.array([0.0, 1.0]), np.array([2.0, 1.0]))
    cls.update_logits(np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    assert cls.result() == {"top1_agreement": 0.5}

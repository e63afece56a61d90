"""Every metric against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.errors import EvaluationError
from onnxforge.evaluate.metrics import (
    SEGMENTRON_EPS, BinaryIoU, DensetorchMIoU, MmsegMIoU, SegmentronMIoU, TopK, make_metric,
)

PRED = np.array([[0, 1], [2, 2]])


def test_segmentron_ignores_minus_one_and_takes_plain_mean():
    m = SegmentronMIoU(3)
    m.update(PRED, np.array([[0, 1], [1, -1]]))
    # valid: 3 px, correct 2; inter [1,1,0], union [1,2,1] -> IoU [1, .5, 0]
    r = m.result()
    assert r["pixAcc"] == pytest.approx(2 / 3)
    assert r["mIoU"] == pytest.approx((1 + 0.5 + 0) / 3)
    m4 = SegmentronMIoU(4)  # a class absent everywhere counts as IoU 0 (plain mean, not nanmean)
    m4.update(PRED, np.array([[0, 1], [1, -1]]))
    assert m4.result()["mIoU"] == pytest.approx(1.5 / 4)
    assert m4.per_class()[3] == 0.0


def test_segmentron_sums_over_the_dataset():
    m = SegmentronMIoU(2)
    m.update(np.zeros((2, 2), int), np.zeros((2, 2), int))
    m.update(np.ones((2, 2), int), np.array([[1, 0], [0, 0]]))
    # inter [4, 1]; pred area [4, 4]; label area [7, 1] -> union [7, 4]
    assert m.result()["mIoU"] == pytest.approx((4 / (7 + SEGMENTRON_EPS) + 1 / (4 + SEGMENTRON_EPS)) / 2)
    assert m.result()["pixAcc"] == pytest.approx(5 / 8)


def test_mmseg_ignores_255_and_takes_nanmean():
    m = MmsegMIoU(4, ignore_index=255)
    m.update(PRED, np.array([[0, 1], [1, 255]]))
    r = m.result()
    # class 3 has no union -> nan -> skipped; classes 0..2: 1, .5, 0
    assert r["mIoU"] == pytest.approx(0.5)
    assert r["pixAcc"] == pytest.approx(2 / 3)  # aAcc = sum(inter) / sum(label area)
    assert m.per_class() == [1.0, 0.5, 0.0, None]


def test_mmseg_undefined_is_none():
    m = MmsegMIoU(2)
    m.update(np.zeros((1, 2), int), np.full((1, 2), 255))
    assert m.result() == {"mIoU": None, "pixAcc": None}


def test_densetorch_placeholder_two_is_left_out():
    m = DensetorchMIoU(4)
    m.update(PRED, np.array([[0, 1], [1, 255]]))
    # cm rows = gt: (0,0), (1,1), (1,2); pi [1,1,1,0] gi [1,2,0,0] ii [1,1,0,0] -> IU [1, .5, 0, 2]
    assert m.iou().tolist() == [1.0, 0.5, 0.0, 2.0]
    assert m.result()["mIoU"] == pytest.approx(0.5)
    assert m.result()["pixAcc"] == pytest.approx(2 / 3)
    assert m.per_class() == [1.0, 0.5, 0.0, None]


def test_the_three_mious_differ_where_the_upstreams_do():
    pred = np.array([[0, 0, 1, 1]])
    gt = np.array([[0, 0, 0, 1]])
    seg, mm, dt = SegmentronMIoU(3), MmsegMIoU(3), DensetorchMIoU(3)
    for m in (seg, mm, dt):
        m.update(pred, gt)
    # class 0: 2/3, class 1: 1/2, class 2 absent
    assert seg.result()["mIoU"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert mm.result()["mIoU"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert dt.result()["mIoU"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_topk():
    m = TopK()
    logits = np.array([0.1, 0.5, 0.2, 0.9, 0.3, 0.0, 0.05])  # rank: 3, 1, 4, 2, 0, 6, 5
    m.update(logits, 3)  # top-1 hit
    m.update(logits, 0)  # 5th: top-5 hit only
    m.update(logits, 5)  # last: miss
    assert m.result() == {"top1": pytest.approx(1 / 3), "top5": pytest.approx(2 / 3)}


def test_binary_iou_is_per_image_mean_with_smoothing():
    m = BinaryIoU()
    m.update(np.array([[1, 0], [1, 1]]), np.array([[1, 1], [0, 1]]))  # inter 2, union 4
    m.update(np.zeros((2, 2)), np.zeros((2, 2)))  # empty vs empty: 1e-5 / 1e-5 = 1
    assert m.result()["IoU"] == pytest.approx(((2 + 1e-5) / (4 + 1e-5) + 1.0) / 2)


def test_make_metric_and_shape_check():
    assert isinstance(make_metric("miou-mmseg", 21, None), MmsegMIoU)
    assert make_metric("miou-mmseg", 21, None).ignore_index == 255
    with pytest.raises(EvaluationError, match="unknown metric 'dice'"):
        make_metric("dice", 2)
    with pytest.raises(EvaluationError, match="does not match the label"):
        MmsegMIoU(2).update(np.zeros((2, 2)), np.zeros((3, 2)))


def test_per_image_contributions_give_the_same_result():
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 4, (5, 6)), np.where(rng.random((5, 6)) < 0.2, 255, rng.integers(0, 4, (5, 6)))) for _ in range(3)]
    for name in ("miou-densetorch", "miou-mmseg"):
        m = make_metric(name, 4, 255)
        m.keep_per_image()
        for p, t in pairs:
            m.update(p, t)
        assert m.per_image().shape == (3, 4, 4) and m.per_image().sum() == sum(int((t != 255).sum()) for _, t in pairs)
        assert m.result_from(m.per_image()) == pytest.approx(m.result())
        one = make_metric(name, 4, 255)
        one.update(*pairs[1])
        assert m.result_from(m.per_image()[[1]]) == pytest.approx(one.result())
    assert make_metric("topk", 4).per_image() is None  # nothing kept unless asked

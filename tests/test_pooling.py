"""onnxforge.pooling: adaptive windows, regularity, the mmcv emulation, averaging matrices (hand-computed)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge import pooling


def test_windows_down_and_up():
    assert pooling.adaptive_windows(32, 3) == [(0, 11), (10, 22), (21, 32)]
    # pooling up 5 -> 7: windows overlap and repeat
    assert pooling.adaptive_windows(5, 7) == [(0, 1), (0, 2), (1, 3), (2, 3), (2, 4), (3, 5), (4, 5)]
    assert pooling.describe_windows(5, 2) == "[0,3) [2,5)"


@pytest.mark.parametrize(("n", "m", "regular"), [(64, 2, (32, 32)), (63, 2, (32, 31)), (32, 3, None), (8, 1, (8, 8)), (5, 7, None), (5, 5, (1, 1))])
def test_regular_kernel_stride(n, m, regular):
    assert pooling.regular_kernel_stride(n, m) == regular
    if regular is not None:
        assert pooling.is_adaptive(n, m, *regular)


def test_emulation_exists_only_pooling_down():
    assert pooling.emulated_kernel_stride(32, 3) == (12, 10)
    assert pooling.emulated_windows(32, 3) == [(0, 12), (10, 22), (20, 32)]
    assert pooling.can_emulate(5, 5) and not pooling.can_emulate(5, 7)
    assert pooling.emulation_is_exact(5, 7) is False
    with pytest.raises(ValueError, match="cannot pool 5 -> 7"):
        pooling.emulated_kernel_stride(5, 7)
    with pytest.raises(ValueError, match="positive sizes"):
        pooling.adaptive_windows(0, 3)


def test_averaging_matrix_and_reference():
    a = pooling.averaging_matrix(5, 7, np.float64)
    assert a.shape == (7, 5)
    np.testing.assert_allclose(a.sum(axis=1), np.ones(7))
    np.testing.assert_allclose(a[1], [0.5, 0.5, 0, 0, 0])
    x = np.arange(2 * 5 * 4, dtype=np.float32).reshape(1, 2, 5, 4)
    y = pooling.adaptive_avg_pool_reference(x, (2, 1))
    # windows over 5 -> 2: [0,3) and [2,5); over 4 -> 1: everything
    np.testing.assert_allclose(y[0, 0, :, 0], [x[0, 0, 0:3].mean(), x[0, 0, 2:5].mean()])

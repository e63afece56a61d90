"""Static AIPP from a preset's normalisation: the cfg text, and its arithmetic checked on CPU against the float pipeline."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from onnxforge.backends.cann.aipp import aipp_for, prepend_aipp
from onnxforge.errors import BackendError
from onnxforge.evaluate.datasets import Sample
from onnxforge.evaluate.preprocess import IMAGENET_MEAN, IMAGENET_STD, prepare_full
from tests.evaluate.builders import seg_model


def _run(model, feed):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: feed})[0]


def test_cfg_text_holds_the_documented_fields():
    text = aipp_for("full", IMAGENET_MEAN, IMAGENET_STD, (16, 32)).text()
    assert text.startswith("aipp_op {") and text.rstrip().endswith("}")
    for line in ("aipp_mode: static", "input_format: RGB888_U8", "src_image_size_w: 32", "src_image_size_h: 16",
                 "mean_chn_0: 0", f"min_chn_0: {255 * 0.485!r}", f"var_reci_chn_2: {1 / (255 * 0.225)!r}"):
        assert line in text


@pytest.mark.parametrize("mean, std", [(IMAGENET_MEAN, IMAGENET_STD), ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))])
def test_model_with_aipp_prepended_matches_the_float_pipeline(mean, std):
    model = seg_model(classes=3, size=(8, 8))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    float_in = prepare_full(Sample("s", image, 0), (8, 8), mean, std).input[None]
    cfg = aipp_for("full", mean, std, (8, 8))
    np.testing.assert_allclose(cfg.apply(image[None]), float_in, rtol=1e-5, atol=1e-5)
    expected = _run(model, float_in.astype(np.float32))
    got = _run(prepend_aipp(model, cfg), image[None])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_preprocessing_aipp_cannot_express_is_refused():
    for policy in ("keep-ratio-pad", "longest-pad", "resize-bgr-double-scale"):
        with pytest.raises(BackendError, match=f"preprocessing '{policy}' cannot be expressed in static AIPP"):
            aipp_for(policy, IMAGENET_MEAN, IMAGENET_STD, (8, 8))

"""Gears from the data (`evaluate.gears`) and the evaluator's routing of each image to the smallest gear holding it."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.errors import DatasetError, EvaluationError
from onnxforge.evaluate import gears as gears_mod
from onnxforge.evaluate.evaluator import evaluate
from onnxforge.evaluate.gears import analyse_shapes, batch_for_gear, compare_policies, propose_gears
from onnxforge.evaluate.preprocess import prepare_gear, route_gear
from onnxforge.evaluate.datasets import Sample
from tests.evaluate.builders import rand_image, write_png, write_voc
from tests.evaluate.test_evaluator import CITY_SPEC, TRAIN_TO_ID, _norm01, oracle

# 5 squares, one tall, one wide: with K=2 the best pair is {100x100, 200x200} (gear pixels 5e4 + 2*4e4 = 13e4,
# against 14e4 for {100x200, 200x100} and 16e4 for {200x100, 200x200}; the others do not cover)
SIZES = [(100, 100)] * 5 + [(200, 100), (100, 200)]
IMAGE_PIXELS = 5 * 1e4 + 2 * 2e4


def test_route_gear_picks_the_smallest_holding():
    gears = ((512, 512), (1024, 2048), (512, 1024))
    assert route_gear((500, 375), gears) == (512, 512)
    assert route_gear((500, 600), gears) == (512, 1024)
    assert route_gear((600, 600), gears) == (1024, 2048)
    assert route_gear((1100, 10), gears) is None


def test_exact_search_on_a_hand_computed_case():
    p = propose_gears(SIZES, max_gears=2, multiple=1)
    assert p.method.startswith("exact")
    assert p.sizes == ((100, 100), (200, 200))
    assert p.padded_fraction == pytest.approx((13e4 - IMAGE_PIXELS) / 13e4)
    assert [g.images for g in p.gears] == [5, 2]
    assert p.gears[0].padded_fraction == 0.0 and p.gears[1].padded_fraction == pytest.approx(0.5)
    assert p.batch == 4  # the busiest gear takes 5 images; 16 x 200x200 fits the pixel budget
    one = propose_gears(SIZES, max_gears=1, multiple=1)
    assert one.sizes == ((200, 200),)
    three = propose_gears(SIZES, max_gears=3, multiple=1)
    assert set(three.sizes) == {(100, 100), (200, 100), (100, 200)} and three.padded_fraction == 0.0
    # more gears than sizes: only gears that take images are proposed
    assert len(propose_gears(SIZES, max_gears=8, multiple=1).gears) == 3


def test_greedy_with_swaps_when_exhaustive_is_too_big(monkeypatch):
    monkeypatch.setattr(gears_mod, "EXACT_LIMIT", 0)
    p = propose_gears(SIZES, max_gears=3, multiple=1)
    assert p.method.startswith("greedy")
    # greedy keeps the bounding 200x200 gear; a swap replaces it once the tall and wide gears cover everything
    assert set(p.sizes) == {(100, 100), (200, 100), (100, 200)} and p.padded_fraction == 0.0
    two = propose_gears(SIZES, max_gears=2, multiple=1)
    assert two.sizes == ((100, 100), (200, 200))


def test_thinned_candidates_are_said(monkeypatch):
    monkeypatch.setattr(gears_mod, "MAX_SIDE_CANDIDATES", 2)
    p = propose_gears([(h, h) for h in (10, 20, 30, 40)], max_gears=2, multiple=1)
    assert "thinned to 2 heights x 2 widths" in p.method
    assert max(p.sizes) == (40, 40)  # the largest side is always kept: every image stays covered


def test_multiple_rounds_candidates_and_counts_the_rounding_as_padding():
    p = propose_gears([(500, 375)] * 3, max_gears=2, multiple=32)
    assert p.sizes == ((512, 384),)
    assert p.padded_fraction == pytest.approx(1 - 500 * 375 / (512 * 384))


@pytest.mark.parametrize("bad", [dict(max_gears=0), dict(max_gears=101), dict(multiple=0)])
def test_bad_search_options(bad):
    with pytest.raises(EvaluationError):
        propose_gears(SIZES, **{"max_gears": 2, "multiple": 1, **bad})


def test_batch_suggestion_bounded_by_images_and_pixels():
    assert batch_for_gear(512, 512, 100) == 16
    assert batch_for_gear(512, 512, 3) == 2
    assert batch_for_gear(1024, 2048, 100) == 2  # 2 * 2 Mpx within 16 * 512 * 512
    assert batch_for_gear(4096, 4096, 100) == 1


# ------------------------------------------------------------------------------------------ datasets
VOC_SIZES = [(40, 60), (40, 60), (60, 40), (100, 150)]


def test_analyse_shapes_reads_headers_only(tmp_path, monkeypatch):
    write_voc(tmp_path, VOC_SIZES)
    import onnxforge.evaluate.datasets as datasets

    def no_decode(path):
        raise AssertionError(f"decoded {path}")

    monkeypatch.setattr(datasets, "read_rgb", no_decode)
    monkeypatch.setattr(datasets, "read_label", no_decode)
    report = analyse_shapes("voc2012", tmp_path, None, max_gears=3, multiple=8)
    assert report.images == 4 and report.policy == "full"
    assert report.sizes[0] == ((40, 60), 2)
    assert report.quantiles["height"]["max"] == 100 and report.quantiles["width"]["min"] == 40
    assert report.proposal.sizes == ((40, 64), (64, 40), (104, 152))
    assert report.compile_line("m.onnx") == "onnxforge compile m.onnx --dynamic-image-sizes 40x64,64x40,104x152"
    d = report.to_dict()
    assert d["gears"][0]["images"] == 2 and d["compile_args"].startswith("--dynamic-image-sizes")


def test_fixed_size_preset_needs_one_gear(tmp_path):
    write_voc(tmp_path, VOC_SIZES)
    report = analyse_shapes("voc2012", tmp_path, "refinenet")
    from onnxforge.frontends import get_spec

    spec = get_spec("refinenet").eval
    assert report.proposal.fixed and report.proposal.sizes == (tuple(spec.input_size),)
    assert "one gear suffices" in report.compile_line() and "one gear suffices" in report.notes[0]


def test_analyse_shapes_bad_dataset(tmp_path):
    with pytest.raises(DatasetError):
        analyse_shapes("voc2012", tmp_path / "missing")


# ------------------------------------------------------------------------------------------- routing
def _city_mixed(tmp_path, sizes):
    root = tmp_path / "cityscapes"
    for k, size in enumerate(sizes):
        prefix = f"aachen_000000_{k:06d}"
        img = rand_image(*size, 40 + k)
        write_png(root / "leftImg8bit" / "val" / "aachen" / f"{prefix}_leftImg8bit.png", img)
        ids = TRAIN_TO_ID[_norm01(img).argmax(-1)]
        ids[-1, :3] = 0  # void
        write_png(root / "gtFine" / "val" / "aachen" / f"{prefix}_gtFine_labelIds.png", ids)
    return root


CITY_SIZES = [(8, 16), (16, 16), (12, 24), (8, 16)]
DYNAMIC = oracle(19, ("H", "W"), batch="N")


def test_prepare_gear_pads_bottom_right_with_the_mean():
    img = rand_image(5, 7, 1)
    p = prepare_gear(Sample("s", img, 0), ((8, 8), (16, 16)), "pad", CITY_SPEC.mean, CITY_SPEC.std)
    assert p.input.shape == (3, 8, 8) and p.geometry.pad == (0, 0, 3, 1) and p.geometry.canvas == (8, 8)
    assert np.allclose(p.input[:, :5, :7], _norm01(img).transpose(2, 0, 1))
    assert not p.input[:, 5:, :].any() and not p.input[:, :, 7:].any()
    r = prepare_gear(Sample("s", img, 0), ((8, 8), (16, 16)), "resize", CITY_SPEC.mean, CITY_SPEC.std)
    assert r.input.shape == (3, 8, 8) and r.geometry.pad == (0, 0, 0, 0) and r.geometry.resized == (8, 8)
    with pytest.raises(EvaluationError, match="larger than every gear"):
        prepare_gear(Sample("s", rand_image(9, 9, 0), 0), ((8, 8),), "pad")


def test_evaluate_routes_each_image_to_its_gear_pad_is_exact(tmp_path):
    root = _city_mixed(tmp_path, CITY_SIZES)
    r = evaluate(DYNAMIC, "cityscapes", root, preset=CITY_SPEC, gears=("8x16", "16x32"), gear_policy="pad")
    assert r.images == 4
    assert r.metrics["pixAcc"] == pytest.approx(1.0) and r.metrics["mIoU"] == pytest.approx(3 / 19)  # 3 of 19 classes
    assert any("8x16: 2 images, 16x32: 2 images" in n for n in r.notes)


def test_pad_against_resize_on_the_data(tmp_path):
    root = _city_mixed(tmp_path, CITY_SIZES)
    results = compare_policies(DYNAMIC, "cityscapes", root, ("8x16", "16x32"), CITY_SPEC)
    assert set(results) == {"pad", "resize"}
    assert results["pad"].metrics["pixAcc"] == pytest.approx(1.0)
    # resizing 16x16 and 12x24 images to 16x32 and the prediction back changes labels of random pixels
    assert results["resize"].metrics["pixAcc"] < results["pad"].metrics["pixAcc"]


def test_gear_errors(tmp_path):
    root = _city_mixed(tmp_path, CITY_SIZES)
    with pytest.raises(EvaluationError, match=r"larger than every gear \(8x16,16x16\)"):
        evaluate(DYNAMIC, "cityscapes", root, preset=CITY_SPEC, gears=("8x16", "16x16"))
    with pytest.raises(EvaluationError, match="exported at 8x16, which the gears 16x32 do not include"):
        evaluate(oracle(19, (8, 16)), "cityscapes", root, preset=CITY_SPEC, gears=("16x32",))
    with pytest.raises(EvaluationError, match="static 8x16 input"):
        evaluate(oracle(19, (8, 16)), "cityscapes", root, preset=CITY_SPEC, gears=("8x16", "16x32"))
    with pytest.raises(EvaluationError, match="unknown policy"):
        evaluate(DYNAMIC, "cityscapes", root, preset=CITY_SPEC, gears=("16x32",), gear_policy="stretch")
    with pytest.raises(EvaluationError, match="given twice"):
        evaluate(DYNAMIC, "cityscapes", root, preset=CITY_SPEC, gears=("16x32", "16x32"))


def test_gears_refused_for_a_fixed_size_preset(tmp_path):
    from tests.evaluate.test_evaluator import REFINE_SPEC

    write_voc(tmp_path, [(6, 8)], classes=21)
    with pytest.raises(EvaluationError, match="one gear suffices"):
        evaluate(oracle(21, ("H", "W")), "voc2012", tmp_path, preset=REFINE_SPEC, gears=("8x8", "16x16"))


def test_gears_and_policy_are_part_of_the_cache_key(tmp_path):
    from onnxforge.evaluate.cache import EvalCache

    root = _city_mixed(tmp_path, CITY_SIZES)
    cache = EvalCache(tmp_path / "c")
    runs = [dict(gears=("8x16", "16x32"), gear_policy="pad"), dict(gears=("8x16", "16x32"), gear_policy="resize"),
            dict(gears=("16x32",), gear_policy="pad"), dict(gears=("8x16", "16x32"), gear_policy="pad")]
    for kw in runs:
        evaluate(DYNAMIC, "cityscapes", root, preset=CITY_SPEC, cache=cache, **kw)
    assert (cache.stats.lookups, cache.stats.hits) == (4, 1)  # only the repeated first run is reused

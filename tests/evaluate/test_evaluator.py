"""Each preset end to end with onnxruntime on tiny models and tiny datasets in the real layouts.

The models are "oracles": a 1x1 convolution whose logits are the normalised input channels, so the
prediction is the argmax of the preprocessed pixel. Writing the labels from that argmax (computed here
by hand from the decoded image) makes every expected metric known exactly.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnxforge.errors import EvaluationError
from onnxforge.evaluate.evaluator import evaluate
from onnxforge.frontends.base import EvalSpec
from onnxforge.numerics import run_model
from tests.evaluate.builders import cls_model, rand_image, save, seg_model, write_png

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def oracle(classes: int, size: tuple[int, int], batch=1, output: str = "logits", extra_outputs: int = 0,
           channel_weights=None) -> onnx.ModelProto:
    """1x1 conv: class c < 3 scores input channel c (or `channel_weights`), classes >= 3 never win."""
    w = np.zeros((classes, 3, 1, 1), np.float32)
    b = np.zeros(classes, np.float32)
    if channel_weights is not None:
        w[:, :, 0, 0] = channel_weights
    else:
        for c in range(min(3, classes)):
            w[c, c] = 1.0
        b[3:] = -1e4
    nodes = [helper.make_node("Conv", ["image", "W", "B"], ["conv"])]
    h, wd = size
    if output == "labels":
        nodes.append(helper.make_node("ArgMax", ["conv"], ["out"], axis=1, keepdims=1))
        outs = [helper.make_tensor_value_info("out", TensorProto.INT64, [batch, 1, h, wd])]
    elif output == "fp16":
        nodes.append(helper.make_node("Cast", ["conv"], ["out"], to=TensorProto.FLOAT16))
        outs = [helper.make_tensor_value_info("out", TensorProto.FLOAT16, [batch, classes, h, wd])]
    else:
        nodes.append(helper.make_node("Identity", ["conv"], ["out"]))
        outs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, classes, h, wd])]
    for k in range(extra_outputs):
        nodes.append(helper.make_node("Neg", ["conv"], [f"aux{k}"]))
        outs.append(helper.make_tensor_value_info(f"aux{k}", TensorProto.FLOAT, [batch, classes, h, wd]))
    g = helper.make_graph(nodes, "oracle", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, h, wd])],
                          outs, [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _norm01(img):
    return (img.astype(np.float32) / 255 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)


# ---------------------------------------------------------------------------------------------- fastscnn
CITY_SPEC = EvalSpec(task="segmentation", num_classes=19, dataset="cityscapes", input_size=(8, 16), preprocess="full",
                     mean=MEAN, std=STD, metric="miou-segmentron", ignore_index=-1, output_layout="logits-nchw")
TRAIN_TO_ID = np.array([7, 8, 11], np.uint8)


@pytest.fixture
def city(tmp_path):
    root = tmp_path / "cityscapes"
    stems = []
    for k, city_name in enumerate(("aachen", "bonn", "koeln")):
        prefix = f"{city_name}_000000_{k:06d}"
        img = rand_image(8, 16, k)
        write_png(root / "leftImg8bit" / "val" / city_name / f"{prefix}_leftImg8bit.png", img)
        ids = TRAIN_TO_ID[_norm01(img).argmax(-1)]
        ids[0, :5] = 0  # void (-> -1)
        write_png(root / "gtFine" / "val" / city_name / f"{prefix}_gtFine_labelIds.png", ids)
        stems.append(f"{prefix}_leftImg8bit")
    return root, stems


@pytest.mark.parametrize("output,extra", [("logits", 0), ("fp16", 2), ("labels", 0)])
def test_fastscnn_preset_segmentron(city, output, extra):
    root, _ = city
    r = evaluate(oracle(19, (8, 16), output=output, extra_outputs=extra), "cityscapes", root, preset=CITY_SPEC)
    assert r.images == 3 and r.metric == "miou-segmentron"
    assert r.metrics["pixAcc"] == pytest.approx(1.0)
    assert r.metrics["mIoU"] == pytest.approx(3 / 19)  # plain mean over all 19 classes
    assert r.per_class_iou[:3] == pytest.approx([1, 1, 1]) and r.per_class_iou[3] == 0.0


def test_batches_pad_and_drop(city):
    root, _ = city
    one = evaluate(oracle(19, (8, 16)), "cityscapes", root, preset=CITY_SPEC)
    two = evaluate(oracle(19, (8, 16), batch=2), "cityscapes", root, preset=CITY_SPEC)  # 3 images: last batch padded
    dyn = evaluate(oracle(19, (8, 16), batch="N"), "cityscapes", root, preset=CITY_SPEC, batch_size=2)
    assert two.batch_size == 2 and dyn.batch_size == 2 and two.images == dyn.images == 3
    assert two.metrics == one.metrics == dyn.metrics
    with pytest.raises(EvaluationError, match="batch is fixed at 2; --batch-size 4 does not match"):
        evaluate(oracle(19, (8, 16), batch=2), "cityscapes", root, preset=CITY_SPEC, batch_size=4)


def test_progress_and_limit(city):
    root, _ = city
    calls = []
    r = evaluate(oracle(19, (8, 16)), "cityscapes", root, preset=CITY_SPEC, limit=2, progress=lambda d, t: calls.append((d, t)))
    assert r.images == 2 and calls == [(1, 2), (2, 2)]
    assert r.total_s >= r.inference_s > 0 and r.overhead_s >= 0


def test_model_not_matching_the_preset(city, tmp_path):
    root, _ = city
    with pytest.raises(EvaluationError, match=r"input 'image' is 8x8 \(HxW\) but preset custom evaluates at 8x16"):
        evaluate(oracle(19, (8, 8)), "cityscapes", root, preset=CITY_SPEC)
    with pytest.raises(EvaluationError, match="output 'out' has 5 channels; preset custom expects 19 class logits"):
        evaluate(oracle(5, (8, 16)), "cityscapes", root, preset=CITY_SPEC)
    from tests.evaluate.builders import write_voc

    write_voc(tmp_path / "voc", [(8, 16)])
    with pytest.raises(EvaluationError, match="preset custom evaluates on cityscapes, not voc2012"):
        evaluate(oracle(19, (8, 16)), "voc2012", tmp_path / "voc", preset=CITY_SPEC)
    with pytest.raises(EvaluationError, match="dataset voc2012 needs --preset"):
        evaluate(oracle(19, (8, 16)), "voc2012", tmp_path / "voc")
    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "two",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 16]) for n in "ab"],
                          [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 3, 8, 16])])
    with pytest.raises(EvaluationError, match="evaluate feeds one image input; the model has inputs: a, b"):
        evaluate(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), "cityscapes", root, preset=CITY_SPEC)
    spec_full_wrong = EvalSpec(**{**CITY_SPEC.__dict__, "input_size": (4, 8)})
    with pytest.raises(EvaluationError, match=r"image is 16x8 \(WxH\) but the model input is 8x4"):
        evaluate(oracle(19, (4, 8)), "cityscapes", root, preset=spec_full_wrong)


def test_reference_agreement(city):
    root, _ = city
    r = evaluate(oracle(19, (8, 16)), "cityscapes", root, preset=CITY_SPEC, reference=oracle(19, (8, 16), output="fp16"))
    a = r.agreement
    assert a["pixel_agreement"] == pytest.approx(1.0, abs=0.02) and a["miou_vs_reference"] > 0.9
    assert 0 < a["max_abs_error"] < 1e-2 and a["cosine_similarity"] == pytest.approx(1.0, abs=1e-5)
    same = evaluate(oracle(19, (8, 16)), "cityscapes", root, preset=CITY_SPEC, reference=oracle(19, (8, 16), batch=2))
    assert same.agreement["max_abs_error"] == 0.0 and same.agreement["pixel_agreement"] == 1.0


# ------------------------------------------------------------------------------------------------ pspnet
PSP_SPEC = EvalSpec(task="segmentation", num_classes=21, dataset="voc2012", input_size=(8, 8), preprocess="keep-ratio-pad",
                    mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), metric="miou-mmseg", ignore_index=255,
                    output_layout="labels")


def _write_voc_oracle(root, sizes, norm):
    ids = []
    for k, (h, w) in enumerate(sizes):
        name = f"2008_{k:06d}"
        path = root / "JPEGImages" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rand_image(h, w, 10 + k)).save(path, quality=95)
        decoded = np.asarray(Image.open(path).convert("RGB"))
        lab = norm(decoded).argmax(-1).astype(np.uint8)
        lab[-1, :] = 255
        write_png(root / "SegmentationClass" / f"{name}.png", lab, palette=True)
        ids.append(name)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return ids


def test_pspnet_preset_keep_ratio_pad_mmseg(tmp_path):
    mean16 = np.array([123.6875, 116.25, 103.5])  # float16 of the mmseg mean/std, as the guide casts them
    std16 = np.array([58.40625, 57.125, 57.375])
    _write_voc_oracle(tmp_path / "VOC2012", [(6, 8), (5, 8), (8, 7)], lambda img: (img - mean16) / std16)
    r = evaluate(oracle(21, (8, 8), output="labels"), "voc2012", tmp_path, preset=PSP_SPEC)
    assert r.images == 3
    assert r.metrics == {"mIoU": pytest.approx(1.0), "pixAcc": pytest.approx(1.0)}  # nanmean over present classes
    assert r.per_class_iou[3:] == [None] * 18


# --------------------------------------------------------------------------------------------- refinenet
REFINE_SPEC = EvalSpec(task="segmentation", num_classes=21, dataset="voc2012", input_size=(8, 8), preprocess="longest-pad",
                       mean=MEAN, std=STD, metric="miou-densetorch", ignore_index=255, output_layout="logits-nchw")


def test_refinenet_preset_longest_pad_densetorch(tmp_path):
    _write_voc_oracle(tmp_path, [(6, 8), (8, 5)], _norm01)
    r = evaluate(oracle(21, (8, 8)), "voc2012", tmp_path, preset=REFINE_SPEC)
    assert r.metrics == {"mIoU": pytest.approx(1.0), "pixAcc": pytest.approx(1.0)}


def test_reduced_resolution_logits_are_upsampled(tmp_path):
    _write_voc_oracle(tmp_path, [(6, 8), (8, 5)], _norm01)
    small = seg_model(classes=21, size=(8, 8), out_size=(2, 2), input_name="image")
    r = evaluate(small, "voc2012", tmp_path, preset=REFINE_SPEC)
    assert 0.0 <= r.metrics["mIoU"] <= 1.0
    from onnxforge.evaluate.datasets import VOC2012
    from onnxforge.evaluate.metrics import DensetorchMIoU
    from onnxforge.evaluate.postprocess import upsample_argmax
    from onnxforge.evaluate.preprocess import prepare

    m = DensetorchMIoU(21)
    for s in VOC2012(tmp_path):
        p = prepare("longest-pad", s, (8, 8), MEAN, STD)
        out = run_model(small, {"image": p.input[None]})["logits"][0]
        m.update(upsample_argmax(out, (8, 8)), p.target)
    assert r.metrics["mIoU"] == pytest.approx(m.result()["mIoU"])


# ------------------------------------------------------------------------------------------------ vovnet
VOV_SPEC = EvalSpec(task="classification", num_classes=7, dataset="imagenet", input_size=(8, 8), preprocess="resize-crop",
                    mean=MEAN, std=STD, metric="topk", ignore_index=None, output_layout="logits-nc", resize_short=8)


def test_vovnet_preset_resize_crop_topk(tmp_path):
    model = cls_model(classes=7, size=(8, 8))
    w = numpy_helper.to_array(model.graph.initializer[0])
    (tmp_path / "val").mkdir()
    lines = []
    for k, rank in enumerate((0, 4, 6)):  # top-1 hit, 5th (top-5 hit only), last (miss)
        name = f"ILSVRC2012_val_{k + 1:08d}.JPEG"
        Image.fromarray(rand_image(8, 10, 20 + k)).save(tmp_path / "val" / name, format="JPEG", quality=95)
        img = np.asarray(Image.open(tmp_path / "val" / name).convert("RGB"))
        crop = img[:, 1:9]  # short side already 8: no resize; left = round((10 - 8) / 2)
        logits = w @ _norm01(crop).mean(axis=(0, 1))
        lines.append(f"{name} {int(np.argsort(-logits)[rank])}\n")
    (tmp_path / "val_label.txt").write_text("".join(lines))
    r = evaluate(model, "imagenet", tmp_path, preset=VOV_SPEC)
    assert r.metrics == {"top1": pytest.approx(1 / 3), "top5": pytest.approx(2 / 3)}
    assert r.per_class_iou is None


# ------------------------------------------------------------------------------------------------ unetpp
UNET_SPEC = EvalSpec(task="binary-segmentation", num_classes=1, dataset="dsb2018", input_size=(16, 16),
                     preprocess="resize-bgr-double-scale", mean=MEAN, std=STD, metric="binary-iou", ignore_index=None,
                     output_layout="logits-nchw", threshold=0.0)


def test_unetpp_preset_bgr_double_scale_binary_iou(tmp_path):
    # logit = normalised channel 0, which is B after the BGR read: positive where B > 0.485 * 255
    model = oracle(1, (16, 16), channel_weights=np.array([[1.0, 0.0, 0.0]]))
    base = tmp_path / "dsb2018_96"
    ious = []
    for k in range(3):
        img = rand_image(16, 16, 30 + k)
        write_png(base / "images" / f"id{k}.png", img)
        pred = img[..., 2] > 123.675
        target = pred.copy()
        if k == 2:
            target[:4, :4] = ~target[:4, :4]
        write_png(base / "masks" / "0" / f"id{k}.png", target.astype(np.uint8) * 255)
        ious.append(((pred & target).sum() + 1e-5) / ((pred | target).sum() + 1e-5))
    (tmp_path / "val_ids.txt").write_text("id0\nid1\nid2\n")
    r = evaluate(model, "dsb2018", tmp_path, preset=UNET_SPEC)
    assert ious[0] == ious[1] == 1.0 and ious[2] < 1.0
    assert r.metrics == {"IoU": pytest.approx(np.mean(ious))}


# -------------------------------------------------------------------------------------------- predictions
def _write_predictions(directory, model, root, stems, index, cast):
    from onnxforge.evaluate.datasets import Cityscapes
    from onnxforge.evaluate.preprocess import prepare

    directory.mkdir()
    for s in Cityscapes(root):
        p = prepare("full", s, (8, 16), MEAN, STD)
        out = next(iter(run_model(model, {"image": p.input[None]}).values()))
        cast(out).tofile(directory / f"{s.name}_{index}.bin")


def test_predictions_from_ais_bench_fp16_and_benchmark_int32(city, tmp_path):
    root, stems = city
    model = oracle(19, (8, 16))
    ran = evaluate(model, "cityscapes", root, preset=CITY_SPEC)
    _write_predictions(tmp_path / "ais", model, root, stems, 0, lambda o: o.astype(np.float16))  # --output_type=FP16
    r = evaluate(model, "cityscapes", root, preset=CITY_SPEC, predictions=tmp_path / "ais")
    assert r.metrics == ran.metrics and r.backend == "predictions (ais_bench)" and r.inference_s == 0.0
    labels = oracle(19, (8, 16), output="labels")
    _write_predictions(tmp_path / "bench", labels, root, stems, 1, lambda o: o.astype(np.int32))  # atc: int64 -> int32
    r = evaluate(labels, "cityscapes", root, preset=CITY_SPEC, predictions=tmp_path / "bench")
    assert r.metrics == ran.metrics and r.backend == "predictions (benchmark)"


def test_predictions_missing_or_wrong_files(city, tmp_path):
    root, stems = city
    model = oracle(19, (8, 16))
    _write_predictions(tmp_path / "p", model, root, stems, 0, lambda o: o)
    (tmp_path / "p" / f"{stems[1]}_0.bin").unlink()
    with pytest.raises(EvaluationError) as info:
        evaluate(model, "cityscapes", root, preset=CITY_SPEC, predictions=tmp_path / "p")
    assert str(info.value).startswith(f"{tmp_path / 'p' / (stems[1] + '_0.bin')}: prediction file missing for image '{stems[1]}'")
    (tmp_path / "p" / f"{stems[1]}_0.bin").write_bytes(b"\0" * 7)
    with pytest.raises(EvaluationError, match=rf"{stems[1]}_0.bin: 7 bytes does not fit output 'out'"):
        evaluate(model, "cityscapes", root, preset=CITY_SPEC, predictions=tmp_path / "p")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="no prediction files"):
        evaluate(model, "cityscapes", root, preset=CITY_SPEC, predictions=tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- synthetic
def test_synthetic_without_preset_in_memory_and_on_disk(tmp_path):
    from onnxforge.evaluate.synthetic import write_synthetic

    model = seg_model(classes=4, size=(16, 24))
    r = evaluate(model, "synthetic", None, limit=3)
    assert r.images == 3 and r.preset is None and r.metric == "miou-mmseg"
    assert set(r.metrics) == {"mIoU", "pixAcc"} and 0 <= r.metrics["pixAcc"] <= 1
    write_synthetic(tmp_path / "syn", 3, (16, 24), 4, seed=1)  # EVAL_SEED: the same pixels as in memory
    assert evaluate(model, "synthetic", tmp_path / "syn").metrics == r.metrics
    labels = seg_model(classes=4, size=(16, 24), labels=True)
    with pytest.raises(EvaluationError, match="cannot tell the number of classes"):
        evaluate(labels, "synthetic", None, limit=2)
    assert evaluate(labels, "synthetic", None, limit=3, num_classes=4).metrics == r.metrics
    assert evaluate(labels, "synthetic", tmp_path / "syn").metrics == r.metrics  # classes from synthetic.json
    with pytest.raises(EvaluationError, match="predicts 5 classes but the synthetic set"):
        evaluate(seg_model(classes=5, size=(16, 24)), "synthetic", tmp_path / "syn")


def test_model_from_a_file_path(tmp_path, city):
    root, _ = city
    path = save(oracle(19, (8, 16)), tmp_path / "oracle.onnx")
    r = evaluate(path, "cityscapes", root, preset=CITY_SPEC)
    assert r.model == str(path) and r.metrics["pixAcc"] == pytest.approx(1.0)
    d = r.to_dict()
    assert set(d) >= {"metrics", "dataset", "preset", "backend", "images", "timings", "per_class_iou", "agreement"}


def test_ais_bench_backend_end_to_end_with_fakes(city, tmp_path, monkeypatch):
    from tests.backends.fakes import install_fake_ais_bench, install_fake_atc, path_with

    root, _ = city
    install_fake_atc(tmp_path / "bin", tmp_path / "argv.txt")
    monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
    install_fake_ais_bench(monkeypatch)
    path = save(oracle(19, (8, 16), output="fp16"), tmp_path / "m.onnx")
    ran = evaluate(path, "cityscapes", root, preset=CITY_SPEC)
    r = evaluate(path, "cityscapes", root, preset=CITY_SPEC, backend="ais_bench")
    assert r.metrics == ran.metrics and r.inference_s == pytest.approx(3 * 0.0015)
    assert "--output_type=FP16" in (tmp_path / "argv.txt").read_text()
    om = tmp_path / "m.om"
    om.write_bytes(path.read_bytes())
    assert evaluate(om, "cityscapes", root, preset=CITY_SPEC, backend="ais_bench").metrics == ran.metrics
    with pytest.raises(EvaluationError, match=r"an \.om model is compiled for ais_bench / atc, not onnxruntime: use --backend ais_bench"):
        evaluate(om, "cityscapes", root, preset=CITY_SPEC)


def test_dynamic_height_width_feeds_whole_images_one_at_a_time(tmp_path):
    from tests.evaluate.builders import write_cityscapes

    write_cityscapes(tmp_path, size=(6, 10))
    model = oracle(19, (8, 16))
    for vi in list(model.graph.input) + list(model.graph.output):
        for i, name in ((0, "N"), (2, "H"), (3, "W")):
            vi.type.tensor_type.shape.dim[i].dim_param = name
    r = evaluate(model, "cityscapes", tmp_path, preset=CITY_SPEC, batch_size=4)
    assert r.images == 2 and r.batch_size == 1

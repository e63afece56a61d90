"""Planning once and scoring many models gives what `evaluate` gives for each; per-image contributions add up.

Also every seed task on synthetic data: a vovnet39-like classifier (input ``image``, output ``class``,
(N, 1000) logits), a unetpp-like binary segmenter (``actual_input_1`` -> ``output1``, (N, 1, H, W)
logits), and multi-class segmentation, with and without a preset.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxforge.errors import EvaluationError
from onnxforge.evaluate.evaluator import ModelRunner, PredictionFolder, evaluate, plan_evaluation, score
from onnxforge.evaluate.metrics import MmsegMIoU, SegmentronMIoU
from onnxforge.evaluate.synthetic import SyntheticDataset, task_label
from onnxforge.numerics import run_model
from tests.evaluate.builders import cls_model, save, seg_model
from tests.evaluate.test_evaluator import CITY_SPEC, city, oracle  # noqa: F401  (fixture)


def _renamed(model: onnx.ModelProto, inp: str, out: str, graph_name: str = "main_graph") -> onnx.ModelProto:
    """The model with the seed exports' tensor names and torch's graph name."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    old_in, old_out = m.graph.input[0].name, m.graph.output[0].name
    for node in m.graph.node:
        node.input[:] = [inp if n == old_in else n for n in node.input]
        node.output[:] = [out if n == old_out else n for n in node.output]
    m.graph.input[0].name, m.graph.output[0].name, m.graph.name = inp, out, graph_name
    onnx.checker.check_model(m)
    return m


def vovnet_like(size=(32, 32), seed=0) -> onnx.ModelProto:
    return _renamed(cls_model(classes=1000, size=size, seed=seed), "image", "class")


def unetpp_like(size=(16, 16), bias=0.0) -> onnx.ModelProto:
    """1x1 conv: logit = B channel of the (normalised) input + bias, (N, 1, H, W)."""
    w = np.array([[[[0.0]], [[0.0]], [[1.0]]]], np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["actual_input_1", "W", "B"], ["output1"])], "main_graph",
                          [helper.make_tensor_value_info("actual_input_1", TensorProto.FLOAT, [1, 3, *size])],
                          [helper.make_tensor_value_info("output1", TensorProto.FLOAT, [1, 1, *size])],
                          [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([bias], np.float32), "B")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


# ------------------------------------------------------------------------------------ plan / score
def test_one_plan_scores_many_models_as_evaluate_does(city):  # noqa: F811
    root, _ = city
    models = [oracle(19, (8, 16)), oracle(19, (8, 16), output="fp16", extra_outputs=1), oracle(19, (8, 16), output="labels"),
              seg_model(classes=19, size=(8, 16)), oracle(19, (8, 16), batch=2)]
    plan = plan_evaluation(models[0], "cityscapes", root, preset=CITY_SPEC)
    for model in models:
        with ModelRunner(model) as source:
            planned = score(plan, source)
        single = evaluate(model, "cityscapes", root, preset=CITY_SPEC)
        assert planned.metrics == single.metrics and planned.per_class_iou == single.per_class_iou
        assert (planned.images, planned.batch_size, planned.notes) == (single.images, single.batch_size, single.notes)
    with ModelRunner(oracle(19, (8, 8))) as other:
        with pytest.raises(EvaluationError, match=r"^oracle: input 'image' is 8x8 \(HxW\) but this evaluation was planned at 8x16"):
            score(plan, other)


def test_score_with_reference_and_a_predictions_folder(city, tmp_path):  # noqa: F811
    from tests.evaluate.test_evaluator import _write_predictions

    root, stems = city
    model, ref = oracle(19, (8, 16)), oracle(19, (8, 16), output="fp16")
    plan = plan_evaluation(model, "cityscapes", root, preset=CITY_SPEC)
    with ModelRunner(model) as source, ModelRunner(ref) as reference:
        planned = score(plan, source, reference=reference)
    assert planned.agreement == evaluate(model, "cityscapes", root, preset=CITY_SPEC, reference=ref).agreement
    _write_predictions(tmp_path / "ais", model, root, stems, 0, lambda o: o)
    folder = PredictionFolder(tmp_path / "ais", model)
    from_folder = score(plan, folder)
    assert from_folder.metrics == planned.metrics and from_folder.backend == "predictions (ais_bench)"
    assert from_folder.predictions == str(tmp_path / "ais") and from_folder.inference_s == 0.0


def test_per_image_confusions_add_up_to_the_metric(city):  # noqa: F811
    root, _ = city
    model = seg_model(classes=19, size=(8, 16))
    r = evaluate(model, "cityscapes", root, preset=CITY_SPEC, per_image=True, reference=oracle(19, (8, 16)))
    pi = r.per_image
    assert pi.kind == "confusion" and pi.values.shape == (3, 19, 19) and len(pi.names) == 3
    total = pi.values.sum(axis=0)
    inter = np.diag(total)
    union = total.sum(0) + total.sum(1) - inter
    assert r.metrics["mIoU"] == pytest.approx(float(np.mean(inter / (2.220446049250313e-16 + union))))
    assert pi.agreement.shape == (3,) and pi.agreement.mean() == pytest.approx(r.agreement["pixel_agreement"])
    assert evaluate(model, "cityscapes", root, preset=CITY_SPEC).per_image is None  # off by default


# ------------------------------------------------------------------------------- synthetic, every task
def test_vovnet_like_classifier_on_synthetic_labels_and_agreement(tmp_path):
    model, ref = vovnet_like(), vovnet_like(seed=1)
    r = evaluate(model, "synthetic", None, limit=6, reference=ref, per_image=True)
    assert r.task == "classification" and r.metric == "topk" and set(r.metrics) == {"top1", "top5"}
    assert (r.dataset_classes, r.model_classes) == (255, 1000)  # fewer labelled classes than the model predicts
    assert 0.0 <= r.agreement["top1_agreement"] <= 1.0
    assert evaluate(model, "synthetic", None, limit=6, reference=model).agreement["top1_agreement"] == 1.0
    # the labels are the class covering the most object pixels of the generated scene
    labels = [s.label for s in SyntheticDataset(6, (32, 32), 255, task="classification")]
    logits = [run_model(model, {"image": p[None]})["class"][0] for p in _normalised(SyntheticDataset(6, (32, 32), 255))]
    assert r.metrics["top1"] == pytest.approx(np.mean([int(np.argmax(lg) == lab) for lg, lab in zip(logits, labels)]))
    assert r.per_image.kind == "hits" and r.per_image.values.shape == (6, 2) and r.per_image.keys == ("top1", "top5")
    assert r.per_image.values[:, 0].mean() == pytest.approx(r.metrics["top1"])
    path = save(model, tmp_path / "vovnet39.onnx")
    with_preset = evaluate(path, "synthetic", None, limit=2, preset=_vov_spec())
    assert with_preset.preset == "custom" and with_preset.model == str(path)


def _vov_spec():
    from onnxforge.frontends.base import EvalSpec

    return EvalSpec(task="classification", num_classes=1000, dataset="imagenet", input_size=(224, 224),
                    preprocess="resize-crop", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), metric="topk",
                    ignore_index=None, output_layout="logits-nc", resize_short=40)


def _normalised(ds):
    from onnxforge.evaluate.preprocess import prepare

    return [prepare("full", s, s.image.shape[:2]).input for s in ds]


def test_unetpp_like_binary_segmenter_on_synthetic_data():
    model = unetpp_like()
    r = evaluate(model, "synthetic", None, limit=4, per_image=True)
    assert r.task == "binary-segmentation" and r.metric == "binary-iou" and (r.dataset_classes, r.model_classes) == (1, 1)
    ious = []
    for s, x in zip(SyntheticDataset(4, (16, 16), 6, void=0, task="binary-segmentation"), _normalised(SyntheticDataset(4, (16, 16), 6, void=0))):
        pred = x[2] > 0  # the logit is the normalised B channel
        t = s.label > 0
        ious.append(((pred & t).sum() + 1e-5) / ((pred | t).sum() + 1e-5))
    assert r.metrics["IoU"] == pytest.approx(float(np.mean(ious)))
    assert r.per_image.kind == "score" and r.per_image.values == pytest.approx(ious)
    never = evaluate(unetpp_like(bias=-1e4), "synthetic", None, limit=4, reference=model)
    assert never.metrics["IoU"] < r.metrics["IoU"] and never.agreement["pixel_agreement"] < 1.0


def test_unetpp_preset_on_synthetic_uses_its_preprocessing():
    from onnxforge.evaluate.preprocess import prepare
    from onnxforge.frontends import get_spec

    spec = get_spec("unetpp").eval
    r = evaluate(unetpp_like(), "synthetic", None, limit=3, preset="unetpp")  # 16x16, not the preset's 96x96: allowed
    assert r.preset == "unetpp" and r.metric == "binary-iou" and r.task == "binary-segmentation"
    ious = []
    for s in SyntheticDataset(3, (16, 16), 6, void=0, task="binary-segmentation"):
        x = prepare(spec.preprocess, s, (16, 16), spec.mean, spec.std).input  # BGR order, then a further /255
        pred, t = x[2] > 0, s.label > 0
        ious.append(((pred & t).sum() + 1e-5) / ((pred | t).sum() + 1e-5))
    assert r.metrics["IoU"] == pytest.approx(float(np.mean(ious)))


def test_segmentation_preset_on_synthetic_scores_with_its_void_label():
    model = seg_model(classes=19, size=(16, 32))
    r = evaluate(model, "synthetic", None, limit=3, preset="fastscnn", per_image=True)  # segmentron: void is -1
    m = SegmentronMIoU(19)
    for s, x in zip(SyntheticDataset(3, (16, 32), 19), _normalised(SyntheticDataset(3, (16, 32), 19))):
        out = run_model(model, {"image": x[None]})["logits"][0]
        m.update(out.argmax(0), task_label(s.label, "segmentation", 19, -1))
    assert r.metrics == pytest.approx(m.result()) and r.dataset_classes == r.model_classes == 19
    generic = evaluate(model, "synthetic", None, limit=3)
    g = MmsegMIoU(19)
    for s, x in zip(SyntheticDataset(3, (16, 32), 19), _normalised(SyntheticDataset(3, (16, 32), 19))):
        g.update(run_model(model, {"image": x[None]})["logits"][0].argmax(0), s.label)
    assert generic.metrics == pytest.approx(g.result())


def test_label_map_needs_num_classes_and_the_error_names_the_model_file(tmp_path):
    labels = save(seg_model(classes=4, size=(16, 24), labels=True), tmp_path / "unet_labels.onnx")
    with pytest.raises(EvaluationError) as info:
        evaluate(labels, "synthetic", None, limit=2)
    assert str(info.value).startswith(f"{labels}: cannot tell the number of classes from output 'labels'")
    assert "--num-classes" in str(info.value)
    proto = onnx.load(str(labels))
    with pytest.raises(EvaluationError, match="^stage-3: cannot tell"):
        evaluate(proto, "synthetic", None, limit=2, model_label="stage-3")
    logits = seg_model(classes=4, size=(16, 24))
    assert evaluate(labels, "synthetic", None, limit=3, num_classes=4).metrics == evaluate(logits, "synthetic", None, limit=3).metrics


@pytest.mark.parametrize("make,kwargs", [
    (lambda: seg_model(classes=19, size=(16, 32)), {"preset": "fastscnn"}),  # segmentron
    (lambda: seg_model(classes=5, size=(16, 32)), {}),  # mmseg
    (lambda: vovnet_like(), {}),  # topk
    (lambda: unetpp_like(), {}),  # binary-iou
])
def test_per_image_contributions_recompute_the_metric_on_any_selection(make, kwargs):
    model = make()
    r = evaluate(model, "synthetic", None, limit=4, per_image=True, **kwargs)
    assert r.per_image.metrics_of(range(4)) == pytest.approx(r.metrics)
    assert r.per_image.metrics_of([0, 1]) == pytest.approx(evaluate(model, "synthetic", None, limit=2, **kwargs).metrics)
    twice = r.per_image.metrics_of([2, 2])  # a resample with repeats scores like that image alone
    alone = r.per_image.metrics_of([2])
    assert twice == pytest.approx(alone)

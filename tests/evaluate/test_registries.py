"""Dataset and metric registries: names, help texts and errors come from what registered itself."""

from __future__ import annotations

import pytest

from onnxforge.errors import DatasetError, EvaluationError
from onnxforge.evaluate import catalog
from onnxforge.evaluate.datasets import DSB2018, VOC2012, Cityscapes, Dataset, ImageNetVal
from onnxforge.evaluate.metrics import BinaryIoU, DensetorchMIoU, MmsegMIoU, SegmentronMIoU, TopK, make_metric, metric_keys
from onnxforge.evaluate.registry import DATASETS, METRICS, Registry
from onnxforge.evaluate.synthetic import SyntheticDataset


def test_every_builtin_dataset_and_metric_registered_itself():
    assert catalog.dataset_names() == ("voc2012", "imagenet", "cityscapes", "dsb2018", "synthetic")
    assert [catalog.dataset_class(n) for n in catalog.dataset_names()] == [VOC2012, ImageNetVal, Cityscapes, DSB2018,
                                                                         SyntheticDataset]
    assert catalog.metric_names() == ("miou-segmentron", "miou-mmseg", "miou-densetorch", "topk", "binary-iou")
    assert [METRICS.get(n) for n in catalog.metric_names()] == [SegmentronMIoU, MmsegMIoU, DensetorchMIoU, TopK, BinaryIoU]
    assert all(DATASETS.summaries().values()) and all(METRICS.summaries().values())  # every one has a help line
    assert metric_keys("topk") == ("top1", "top5") and metric_keys("binary-iou") == ("IoU",)


def test_unknown_names_list_the_known_ones_in_one_line():
    with pytest.raises(DatasetError) as info:
        catalog.open_dataset("coco", ".")
    assert str(info.value) == f"unknown dataset 'coco'; known datasets: {', '.join(catalog.dataset_names())}"
    with pytest.raises(EvaluationError) as info:
        make_metric("dice", 2)
    assert str(info.value) == f"unknown metric 'dice'; known metrics: {', '.join(catalog.metric_names())}"


def test_a_registered_dataset_is_opened_listed_and_helped(tmp_path):
    reg = Registry("dataset", DatasetError)

    @reg.register
    class Tiny(Dataset):
        name = "tiny"
        summary = "a tiny set"

        def __init__(self, root, limit=None):
            self.root = root

        def __len__(self):
            return 0

        def names(self):
            return []

        def __iter__(self):
            return iter(())

    assert reg.names() == ("tiny",) and reg.help() == "tiny" and reg.summaries() == {"tiny": "a tiny set"}
    assert reg.get("tiny").open(tmp_path).root == tmp_path
    with pytest.raises(DatasetError, match="dataset tiny needs --data-root"):
        reg.get("tiny").open(None)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(type("Other", (Tiny,), {"name": "tiny"}))
    with pytest.raises(ValueError, match="needs a non-empty `name`"):
        reg.register(type("Nameless", (), {}))


def test_cli_help_lists_the_registered_datasets(cli):
    from onnxforge.cli import evaluate_cmd

    assert evaluate_cmd.DATASETS_HELP == catalog.dataset_help()  # generated, not written out
    proc = cli("evaluate", "--help")
    assert proc.returncode == 0, proc.stderr
    assert all(name in proc.stdout for name in catalog.dataset_names()) and "--num-classes" in proc.stdout

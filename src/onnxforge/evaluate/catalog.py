"""Every built-in dataset and metric, registered: look names up here (not in the modules that define them).

Importing this module imports `datasets`, `synthetic` and `metrics`, whose classes register themselves
(`onnxforge.evaluate.registry`). Nothing below imports this module back, so there is no cycle: adding a
dataset is a class with ``@register_dataset`` in a module imported here.
"""

from __future__ import annotations

from pathlib import Path

import onnxforge.evaluate.metrics  # noqa: F401  (registers the metrics)
import onnxforge.evaluate.synthetic  # noqa: F401  (registers synthetic)
from onnxforge.evaluate.datasets import Dataset  # registers voc2012, imagenet, cityscapes, dsb2018
from onnxforge.evaluate.registry import DATASETS, METRICS


def dataset_names() -> tuple[str, ...]:
    """The registered dataset names, in registration order."""
    return DATASETS.names()


def metric_names() -> tuple[str, ...]:
    """The registered metric names, in registration order."""
    return METRICS.names()


def dataset_help(sep: str = " | ") -> str:
    """The dataset names for CLI help (``voc2012 | imagenet | ...``)."""
    return DATASETS.help(sep)


def dataset_class(name: str) -> type[Dataset]:
    """The class registered as `name`; DatasetError listing the known datasets otherwise."""
    return DATASETS.get(name)


def open_dataset(name: str, root: str | Path | None, limit: int | None = None, **options) -> Dataset:
    """The dataset `name` read from `root` (layouts: `onnxforge.evaluate.datasets`).

    ``synthetic`` without a root is generated in memory (options: size, classes, seed, count, task,
    ignore_index; see `synthetic.open_synthetic`).

    Raises:
        DatasetError: unknown name (listing the known ones), a missing root, or a wrong layout.
    """
    return DATASETS.get(name).open(root, limit=limit, **options)

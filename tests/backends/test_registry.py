from __future__ import annotations

import pytest

from onnxforge.backends import backend_names, get_backend
from onnxforge.errors import BackendError


def test_names_and_lookup():
    assert backend_names() == ["ais_bench", "atc", "onnxruntime"]
    assert get_backend("onnxruntime").name == "onnxruntime"
    assert get_backend("atc", soc_version="Ascend910").soc_version == "Ascend910"


def test_unknown_backend_is_one_line_listing_names():
    with pytest.raises(BackendError) as info:
        get_backend("tensorrt")
    msg = str(info.value)
    assert "\n" not in msg
    assert "unknown backend 'tensorrt'" in msg and "ais_bench, atc, onnxruntime" in msg

"""The backend registry and specs: names, canonical round trip, one-line errors with columns, laziness."""

from __future__ import annotations

import subprocess
import sys

import pytest

from onnxforge.backends import backend_class, backend_help, backend_names, get_backend, parse_backend
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


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("onnxruntime", "onnxruntime"),
        ("onnxruntime{device=cuda,threads=2}", "onnxruntime{device=cuda,threads=2}"),
        (" onnxruntime { threads = 2 , device = cuda } ", "onnxruntime{device=cuda,threads=2}"),  # declaration order
        ("onnxruntime{threads=0,spin=false}", "onnxruntime{spin=false}"),  # defaults are dropped
        ("atc{soc_version=Ascend310P3}", "atc"),
        ("atc{soc_version=Ascend910,max_opset=18,extra_ops=Einsum|NonZero}",
         "atc{soc_version=Ascend910,max_opset=18,extra_ops=Einsum|NonZero}"),
        ('atc{extra_args="--precision_mode=allow_fp32_to_fp16|--op_select_implmode=high_precision"}',
         "atc{extra_args=--precision_mode=allow_fp32_to_fp16|--op_select_implmode=high_precision}"),
        ('atc{extra_args="--out_nodes=a:0,b:0"}', 'atc{extra_args="--out_nodes=a:0,b:0"}'),  # a comma needs quotes
        ("ais_bench{device_id=3,timeout_s=60}", "ais_bench{device_id=3,timeout_s=60.0}"),
    ],
)
def test_spec_round_trip(text, canonical):
    backend = parse_backend(text)
    assert str(backend) == canonical
    assert str(parse_backend(canonical)) == canonical
    assert parse_backend(canonical) == backend


def test_spec_values_are_typed():
    be = parse_backend("onnxruntime{threads=2,optimize=false}")
    assert be.options.threads == 2 and be.options.optimize is False
    atc = parse_backend("atc{extra_ops=Einsum|NonZero,timeout_s=none}")
    assert atc.options.extra_ops == ("Einsum", "NonZero") and atc.options.timeout_s is None
    assert atc.artifact_suffix == ".om" and be.artifact_suffix is None


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("onnxrt", ["backend spec 'onnxrt' column 1", "unknown backend 'onnxrt'", "known backends: ais_bench, atc, onnxruntime"]),
        ("onnxruntime{thread=2}", ["column 13", "backend 'onnxruntime' has no option 'thread'", "threads, inter_op_threads"]),
        ("onnxruntime{threads=two}", ["column 13", "option 'onnxruntime.threads'", "expected an integer, got 'two'"]),
        ("onnxruntime{device=npu}", ["column 13", "expected one of cpu, cuda, tensorrt, cann, auto, got 'npu'"]),
        ("onnxruntime{threads=-1}", ["column 1", "'threads' must be a non-negative integer, got -1"]),
        ("onnxruntime{threads=2", ["column 22", "expected ',' or '}'"]),
        ("onnxruntime{threads=1,threads=2}", ["column 23", "given twice"]),
        ("onnxruntime,atc", ["column 12", "unexpected ','"]),
        ("atc{min_opset=14}", ["min_opset 14 is above max_opset 13"]),
        ("", ["empty backend spec"]),
    ],
)
def test_spec_errors_are_one_line_with_column(text, fragments):
    with pytest.raises(BackendError) as info:
        parse_backend(text)
    msg = str(info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_overrides_fill_and_conflicts_are_errors():
    assert str(parse_backend("onnxruntime{device=cpu}", {"threads": 2, "device": None})) == "onnxruntime{threads=2}"
    assert str(parse_backend("onnxruntime{threads=2}", {"threads": 2})) == "onnxruntime{threads=2}"  # same value: fine
    with pytest.raises(BackendError) as info:
        parse_backend("onnxruntime{threads=4}", {"threads": 2}, flags={"threads": "--threads"})
    assert str(info.value) == "--threads 2 contradicts threads=4 in backend spec 'onnxruntime{threads=4}'; give it once"
    with pytest.raises(BackendError, match=r"--device cuda does not apply to backend 'atc' \(its options: soc_version"):
        parse_backend("atc", {"device": "cuda"}, flags={"device": "--device"})
    with pytest.raises(BackendError, match="has no option 'colour'"):
        get_backend("onnxruntime", colour="red")


def test_options_are_frozen_and_with_options_copies():
    be = parse_backend("onnxruntime{threads=2}")
    other = be.with_options(spin=False)
    assert str(be) == "onnxruntime{threads=2}" and str(other) == "onnxruntime{threads=2,spin=false}"
    assert str(be.interleaved()) == "onnxruntime{threads=2,spin=false}"
    assert parse_backend("atc").interleaved() == parse_backend("atc")
    with pytest.raises(Exception):
        be.options.threads = 3  # type: ignore[misc]


def test_help_has_one_line_per_backend_with_its_options():
    lines = backend_help().splitlines()
    assert [ln.split(":", 1)[0] for ln in lines] == backend_names()
    for line, name in zip(lines, backend_names()):
        cls = backend_class(name)
        assert cls.summary in line
        for f in cls.Options.__dataclass_fields__:
            assert f"{f}=" in line
    assert "device=cpu|cuda|tensorrt|cann|auto (default cpu)" in lines[2]


def test_importing_backends_imports_no_backend_module():
    code = (
        "import sys, onnxforge.backends as b\n"
        "b.backend_names(); b.parse_backend\n"
        "bad = [m for m in ('onnxruntime', 'onnxforge.backends.onnxruntime', 'onnxforge.backends.ascend') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "b.backend_class('atc')\n"
        "assert 'onnxforge.backends.ascend' in sys.modules and 'onnxruntime' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr

"""Model loading and saving: clear errors, atomic writes, never overwriting the input."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxforge.errors import ModelLoadError, OutputPathError
from onnxforge.modelio import check_output_path, load_model, save_model, staging_dir, write_text_atomic
from tests.passes.helpers import parse

MODEL = """
g (float[1,4] x) => (float[1,4] y) {
  y = Relu(x)
}"""


def test_round_trip(tmp_path):
    path = save_model(parse(MODEL), tmp_path / "m.onnx")
    assert [n.op_type for n in load_model(path).graph.node] == ["Relu"]


@pytest.mark.parametrize(
    "content, fragment",
    [(b"", "empty file"), (b"this is not a model at all" * 10, "not"), (None, "no such file")],
)
def test_bad_files(tmp_path, content, fragment):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=fragment):
        load_model(path)


def test_truncated_model(tmp_path):
    model = parse(MODEL)
    model.graph.initializer.append(numpy_helper.from_array(np.ones((64, 64), np.float32), "w"))
    data = model.SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="cut.onnx"):
        load_model(path)


def test_external_data_loads_and_missing_external_data_is_reported(tmp_path):
    model = parse(MODEL)
    model.graph.initializer.append(numpy_helper.from_array(np.ones((256, 256), np.float32), "w"))
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    assert numpy_helper.to_array(load_model(path).graph.initializer[0]).shape == (256, 256)
    os.remove(tmp_path / "ext.data")
    with pytest.raises(ModelLoadError, match="external data"):
        load_model(path)


def test_external_data_over_two_gib_is_refused(tmp_path):
    model = parse(MODEL)
    tensor = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[2**29 + 1])
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "big.data"), ("offset", "0"), ("length", str(4 * (2**29 + 1)))):
        tensor.external_data.add(key=key, value=value)
    model.graph.initializer.append(tensor)
    path = tmp_path / "big.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match="over 2 GiB"):
        load_model(path)


def test_output_path_checks(tmp_path):
    inp = save_model(parse(MODEL), tmp_path / "in.onnx")
    with pytest.raises(OutputPathError, match="is the input model"):
        check_output_path(inp, tmp_path / "." / "in.onnx")
    with pytest.raises(OutputPathError, match="does not exist"):
        check_output_path(inp, tmp_path / "nodir" / "out.onnx")
    link = tmp_path / "link.onnx"
    link.symlink_to(inp)
    with pytest.raises(OutputPathError, match="is the input model"):
        check_output_path(inp, link)


def test_failed_save_leaves_existing_file_untouched(tmp_path, monkeypatch):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_model(parse(MODEL), target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_new_files_honour_the_umask(tmp_path, umask):
    model = save_model(parse(MODEL), tmp_path / "m.onnx")
    write_text_atomic(tmp_path / "r.json", "{}")
    assert _mode(model) == 0o666 & ~umask
    assert _mode(tmp_path / "r.json") == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "r.json"]  # no temporary left


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    save_model(parse(MODEL), target)
    assert _mode(target) == 0o640 and load_model(target).graph.node[0].op_type == "Relu"


def test_staging_dir_honours_the_umask_and_swaps_in_on_success(tmp_path, umask):
    target = tmp_path / "report"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with staging_dir(target) as stage:
        assert stage.parent == tmp_path and stage != target
        write_text_atomic(stage / "new.txt", "new")
        assert (target / "old.txt").exists()  # nothing replaced before the block ends
    assert _mode(target) == 0o777 & ~umask
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_staging_dir_leaves_the_old_directory_untouched_on_failure(tmp_path, exc):
    target = tmp_path / "report"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(type(exc)):
        with staging_dir(target) as stage:
            (stage / "half.txt").write_text("half")
            raise exc
    assert [p.name for p in tmp_path.iterdir()] == ["report"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]


def test_staging_dir_refuses_a_file_target(tmp_path):
    (tmp_path / "report").write_text("x")
    with pytest.raises(OutputPathError, match="not a directory"):
        with staging_dir(tmp_path / "report"):
            pass
    with pytest.raises(OutputPathError, match="does not exist"):
        with staging_dir(tmp_path / "nodir" / "report"):
            pass

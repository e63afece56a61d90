"""The atc backend: exact command lines (recording fake atc), pre-checks, failures, missing atc."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from onnxforge.backends.ascend import ATC_MISSING, AtcBackend, check_model_for_atc, plan_atc, summarize_atc_failure
from onnxforge.errors import BackendError, BackendUnavailable
from tests.backends.fakes import install_fake_atc, path_with
from tests.evaluate.builders import save, seg_model


@pytest.fixture
def fake_atc(tmp_path, monkeypatch):
    record = tmp_path / "argv.txt"
    install_fake_atc(tmp_path / "bin", record)
    monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
    return record


def _with_pipeline(model: onnx.ModelProto, pipeline: str) -> onnx.ModelProto:
    helper.set_model_props(model, {"onnxforge.pipeline": pipeline})
    return model


def test_plain_command_line(tmp_path, fake_atc):
    src = save(seg_model(classes=19, size=(16, 32)), tmp_path / "fastscnn.onnx")
    result = AtcBackend(soc_version="Ascend310P3").compile_full(src, tmp_path / "fast.om")
    argv = fake_atc.read_text().split("\n")[:-1]
    assert argv == [
        "--framework=5",
        f"--model={src}",
        f"--output={tmp_path / 'fast'}",  # no .om: atc appends it
        "--input_shape=image:1,3,16,32",
        "--soc_version=Ascend310P3",
        "--input_format=NCHW",
        "--log=error",
    ]
    assert result.om_path == tmp_path / "fast.om" and result.om_path.is_file()
    assert result.log_path.is_file() and "ATC run success" in result.log_path.read_text()


def test_fp16_output_and_input_flags_follow_the_graph(tmp_path, fake_atc):
    model = _with_pipeline(seg_model(classes=3, size=(8, 8), fp16_out=True, fp16_in=True, input_name="input"),
                           "simplify,fp16-input,fp16-output")
    src = save(model, tmp_path / "m.onnx")
    out = AtcBackend(soc_version="Ascend310").compile(src, tmp_path / "m_fp16")
    argv = fake_atc.read_text().split("\n")[:-1]
    assert argv[3:] == [
        "--input_shape=input:1,3,8,8", "--soc_version=Ascend310", "--output_type=FP16",
        "--input_fp16_nodes=input", "--input_format=NCHW", "--log=error",
    ]
    assert out == tmp_path / "m_fp16.om"


def test_graph_is_the_source_of_truth_over_recorded_pipeline(tmp_path, caplog):
    model = _with_pipeline(seg_model(classes=3, size=(8, 8)), "simplify,fp16-output")
    plan = plan_atc(model, tmp_path / "m.onnx", tmp_path / "m.om")
    assert "--output_type=FP16" not in plan.command
    assert plan.pipeline == "simplify,fp16-output"
    assert any("following the graph" in n for n in plan.notes)
    plan = plan_atc(seg_model(classes=3, size=(8, 8), fp16_out=True), tmp_path / "m.onnx", tmp_path / "m")
    assert "--output_type=FP16" in plan.command and plan.pipeline is None


def test_pipeline_options_with_commas_are_parsed(tmp_path):
    model = _with_pipeline(seg_model(classes=3, size=(8, 8), fp16_out=True), "resize-nearest{nodes=a|b,exclude=c},fp16-output")
    assert plan_atc(model, "m.onnx", "m").notes == ()


def test_multiple_inputs_are_joined_with_semicolons(tmp_path):
    g = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])], "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT16, [1, 3, 4, 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT16, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT16, [1, 3, 4, 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])
    cmd = plan_atc(model, "m.onnx", "m").command
    assert "--input_shape=a:1,3,4,4;b:1,3,4,4" in cmd and "--input_fp16_nodes=a;b" in cmd


def test_opset_outside_atc_range_is_rejected_before_running(tmp_path, fake_atc):
    src = save(seg_model(opset=17), tmp_path / "m.onnx")
    with pytest.raises(BackendError) as info:
        AtcBackend().compile(src, tmp_path / "m.om")
    msg = str(info.value)
    assert "ai.onnx opset 17 is outside what atc accepts (9..13)" in msg and "target-opset" in msg
    assert not fake_atc.exists()  # atc never ran
    assert AtcBackend(max_opset=18).compile(src, tmp_path / "m.om").is_file()


def test_unsupported_ops_and_dynamic_inputs_are_named():
    g = helper.make_graph(
        [helper.make_node("Einsum", ["x", "x"], ["y"], equation="ij,ij->ij", name="ein_1"),
         helper.make_node("MyOp", ["y"], ["z"], domain="com.example", name="custom_7")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 12), helper.make_opsetid("com.example", 1)])
    problems = check_model_for_atc(model)
    assert "op Einsum is not supported by atc (1 node, first: ein_1)" in problems
    assert "op com.example::MyOp is not supported by atc (1 node, first: custom_7)" in problems
    assert any("input 'x' has dynamic shape" in p for p in problems)
    assert check_model_for_atc(model, extra_ops={"Einsum"})[0].startswith("op com.example::MyOp")


def test_seed_model_ops_are_accepted():
    ops = ["Conv", "BatchNormalization", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "Resize",
           "Concat", "Add", "Mul", "ArgMax", "Softmax", "Gemm", "Flatten", "Reshape", "Shape", "Gather", "Slice",
           "Cast", "Constant", "ReduceMean", "GatherND", "Unsqueeze", "Squeeze", "Sigmoid", "Pad", "Transpose"]
    from onnxforge.backends.ascend import ATC_ONNX_OPS

    assert set(ops) <= ATC_ONNX_OPS


def test_failing_atc_reports_its_error_code_and_log(tmp_path, monkeypatch):
    install_fake_atc(tmp_path / "bin", tmp_path / "argv.txt", fail=True)
    monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
    src = save(seg_model(), tmp_path / "m.onnx")
    with pytest.raises(BackendError) as info:
        AtcBackend(soc_version="Ascend999").compile(src, tmp_path / "m.om")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{src}: atc failed (exit 1): E10001: Value [Ascend999] for parameter [--soc_version] is invalid")
    assert f"full log: {tmp_path / 'm.atc.log'}" in msg
    assert "ATC run failed" in (tmp_path / "m.atc.log").read_text()
    assert not (tmp_path / "m.om").exists()


def test_summarize_without_error_code():
    assert summarize_atc_failure("foo\nATC run failed, Please check the detail log\nbar") == "ATC run failed, Please check the detail log"
    assert summarize_atc_failure("something\nlast words\n") == "last words"
    assert summarize_atc_failure("") == "no output"


def test_missing_atc_says_exactly_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    src = save(seg_model(), tmp_path / "m.onnx")
    with pytest.raises(BackendUnavailable) as info:
        AtcBackend().compile(src, tmp_path / "m.om")
    assert str(info.value) == ATC_MISSING
    assert ATC_MISSING == ("atc not found on PATH: install the CANN toolkit and run "
                           "'source /usr/local/Ascend/ascend-toolkit/set_env.sh'")


def test_in_memory_model_is_saved_for_atc(tmp_path, fake_atc):
    om = AtcBackend().compile(seg_model(), tmp_path / "mem.om")
    model_arg = next(a for a in fake_atc.read_text().split("\n") if a.startswith("--model="))
    assert model_arg.endswith("model.onnx") and om.is_file()
    assert onnx.load_model_from_string(om.read_bytes()).graph.name == "tiny_seg"

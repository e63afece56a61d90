"""Many devices with ais_bench: the work split as ais_bench splits it, one `python -m ais_bench` per device
(a recording fake on the children's PYTHONPATH, over onnxruntime), outputs in ais_bench's layout, read back."""

from __future__ import annotations

import json

import pytest

from onnxforge.backends import get_backend
from onnxforge.backends.ascend import split_work
from onnxforge.errors import BackendError, BackendUnavailable, EvaluationError
from onnxforge.evaluate.evaluator import evaluate
from tests.backends.fakes import install_fake_ais_bench_cli, install_fake_atc, path_with
from tests.conftest import assert_one_line_error, run_cli
from tests.evaluate.builders import save, seg_model

IMAGES = 5


@pytest.fixture
def ascend(tmp_path, monkeypatch):
    """A fake atc on PATH and a fake ais_bench command line; returns the argv record folder."""
    install_fake_atc(tmp_path / "bin", tmp_path / "atc_argv.txt")
    monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
    return install_fake_ais_bench_cli(monkeypatch, tmp_path)


@pytest.fixture
def model(tmp_path):
    return save(seg_model(classes=4, size=(8, 12)), tmp_path / "m.onnx")


def _argv(record, device):
    return json.loads((record / f"device{device}.argv").read_text())


def test_split_is_ais_bench_s_contiguous_chunks():
    names = [f"img{i}" for i in range(5)]
    assert split_work(names, (0, 1)) == {0: names[:3], 1: names[3:]}
    assert split_work(names, (3, 1, 2)) == {3: names[:2], 1: names[2:4], 2: names[4:]}
    assert split_work(names[:1], (0, 1)) == {0: names[:1], 1: []}


def test_each_device_runs_its_share_with_the_exact_argv(ascend, model, tmp_path):
    out = tmp_path / "kept"
    be = get_backend(f"ais_bench{{devices=2|0,ais_bench_output={out}}}")
    result = evaluate(model, "synthetic", None, backend=be, limit=IMAGES)
    (root,) = (out / "output").iterdir()  # OUT/TS, TS as ais_bench stamps its runs
    assert result.devices["root"] == str(root)
    names = sorted(p.stem for p in (out / "input").rglob("*.bin"))
    assert len(names) == IMAGES
    chunks = {d: sorted(p.stem for p in (out / "input" / f"device{d}").iterdir()) for d in (2, 0)}
    assert chunks[2] + chunks[0] == names and (len(chunks[2]), len(chunks[0])) == (3, 2)  # device 2 first: the given order
    for d in (2, 0):
        assert _argv(ascend, d) == ["--model", str(out / "model.om"), "--input", str(out / "input" / f"device{d}"),
                                    "--output", str(out / "output"), "--output_dirname", f"{root.name}/device{d}",
                                    "--outfmt", "BIN", "--device", str(d)]
        assert sorted(p.name for p in (root / f"device{d}").iterdir()) == [f"{n}_0.bin" for n in chunks[d]]
        assert (root / f"device{d}_summary.json").is_file()
    # the sum of the devices' throughputs as their summaries report them (fake: 2.0 + 0.5 * device ms per image)
    assert result.devices["throughput"] == pytest.approx(1000 / 3.0 + 1000 / 2.0)
    assert result.compiled["tool"] == "atc" and result.backend == str(be)
    assert any("ais_bench throughput 833.3 images/s (the sum of 2 devices' summaries)" in n for n in result.notes)


def test_merged_results_equal_one_devices_and_onnxruntime_s(ascend, model):
    split = evaluate(model, "synthetic", None, backend="ais_bench{devices=0|1|3}", limit=IMAGES)
    one = evaluate(model, "synthetic", None, backend="ais_bench{devices=0}", limit=IMAGES)
    ref = evaluate(model, "synthetic", None, backend="onnxruntime", limit=IMAGES)
    assert split.metrics == one.metrics == ref.metrics
    assert split.images == one.images == IMAGES
    assert [d["device"] for d in split.devices["devices"]] == [0, 1, 3]


def test_predictions_read_back_every_level_of_the_layout(ascend, model, tmp_path):
    out = tmp_path / "kept"
    ref = evaluate(model, "synthetic", None, backend=f"ais_bench{{devices=0|1,ais_bench_output={out}}}", limit=IMAGES)
    (root,) = (out / "output").iterdir()
    for folder in (out / "output", root, root / "device0"):
        got = evaluate(model, "synthetic", None, predictions=folder, limit=IMAGES if folder != root / "device0" else 3)
        if folder != root / "device0":
            assert got.metrics == ref.metrics, folder
    (out / "output" / "2020_01_01-00_00_00").mkdir()  # a second run in the same --output folder
    with pytest.raises(EvaluationError, match="holds 2 ais_bench runs"):
        evaluate(model, "synthetic", None, predictions=out / "output", limit=IMAGES)


def test_duplicate_devices_are_one_error_line_and_nothing_is_written(ascend, model, tmp_path):
    with pytest.raises(BackendError, match="device 1 is given twice"):
        get_backend("ais_bench{devices=1|0|1}")
    out = tmp_path / "r.json"
    proc = run_cli("evaluate", model, "--dataset", "synthetic", "--backend", "ais_bench", "--device", "0,1,1",
                   "--json", out, "--limit", "2")
    assert_one_line_error(proc, "device 1 is given twice (0,1,1)")
    assert not out.exists() and not list(tmp_path.glob("**/device*"))


def test_cli_device_list_splits_evaluate_and_bench(ascend, model, tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli("evaluate", model, "--dataset", "synthetic", "--backend", "ais_bench", "--device", "0,1",
                   "--json", out, "--limit", "3")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert [d["device"] for d in data["devices"]["devices"]] == [0, 1] and data["backend"] == "ais_bench{devices=0|1}"
    bench = tmp_path / "b.json"
    proc = run_cli("bench", model, "--backend", "ais_bench", "--device", "0,1", "--batch-sizes", "1", "--iters", "4",
                   "--warmup", "2", "--json", bench)
    assert proc.returncode == 0, proc.stderr
    (rec,) = json.loads(bench.read_text())["records"]
    assert rec["throughput"] == pytest.approx(1000 / 2.0 + 1000 / 2.5) and rec["devices"] == [0, 1]
    assert rec["p50_ms"] == pytest.approx(2.25)  # both devices' compute times together
    argv = _argv(ascend, 1)
    assert argv[argv.index("--loop") + 1] == "4" and argv[argv.index("--warmup_count") + 1] == "2" and "--input" not in argv


def test_a_failing_device_is_one_backend_error_naming_it(tmp_path, monkeypatch, model):
    install_fake_atc(tmp_path / "bin", tmp_path / "atc_argv.txt")
    monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
    install_fake_ais_bench_cli(monkeypatch, tmp_path, fail_device=1)
    with pytest.raises(BackendError, match=r"ais_bench on device 1 failed \(exit 1\): E19999: open device 1 failed; log: "):
        evaluate(model, "synthetic", None, backend="ais_bench{devices=0|1}", limit=IMAGES)


def test_without_ais_bench_a_devices_run_is_unavailable(tmp_path, monkeypatch, model):
    install_fake_atc(tmp_path / "bin", tmp_path / "atc_argv.txt")
    monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
    with pytest.raises(BackendUnavailable, match=r"needs .python -m ais_bench. in this interpreter .*, and the ais_bench package is not installed"):
        evaluate(model, "synthetic", None, backend="ais_bench{devices=0|1}", limit=IMAGES)


def test_report_splits_every_stages_evaluation_and_records_it(ascend, tmp_path):
    from onnxforge.evaluate.ab import DataSource, run_report
    from onnxforge.modelio import save_model
    from tests.evaluate.test_report import FAST, fake_candidates, fake_clock, tiny_segmenter

    model = save_model(tiny_segmenter(), tmp_path / "tiny.onnx")
    result = run_report(model, "simplify", tmp_path / "r", DataSource("synthetic", None, None, 3),
                        backend="ais_bench{devices=0|1,cann=8.0}", timing=FAST, clock=fake_clock(),
                        candidates_factory=fake_candidates())
    report = json.loads(result.files["json"].read_text())
    runs = {r["stage"]: r for r in report["device_runs"]}
    assert {"baseline", "1-simplify"} <= set(runs)
    for r in runs.values():
        assert [d["device"] for d in r["devices"]] == [0, 1] and r["throughput"] == pytest.approx(1000 / 2.0 + 1000 / 2.5)
        assert r["devices"][1]["command"][-2:] == ["--device", "1"]
    assert {c["stage"] for c in report["compile_commands"]} >= {"baseline", "1-simplify"}


def test_report_cli_device_flag_fills_devices(ascend, tmp_path):
    from onnxforge.modelio import save_model
    from tests.evaluate.test_report import tiny_segmenter

    model = save_model(tiny_segmenter(), tmp_path / "tiny.onnx")
    proc = run_cli("report", model, "--passes", "simplify", "--synthetic", "2", "--backend", "ais_bench{cann=8.0}",
                   "--device", "0,0", "-o", tmp_path / "r")
    assert_one_line_error(proc, "device 0 is given twice")
    assert not (tmp_path / "r").exists()


def test_missing_tools_write_nothing_into_the_kept_folder(tmp_path, monkeypatch, model):
    out = tmp_path / "kept"
    install_fake_ais_bench_cli(monkeypatch, tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no atc
    with pytest.raises(BackendUnavailable, match="atc not found"):
        evaluate(model, "synthetic", None, backend=f"ais_bench{{devices=0|1,ais_bench_output={out}}}", limit=IMAGES)
    assert not (out / "input").exists() and not (out / "output").exists()


def test_fewer_images_than_devices_runs_only_the_devices_with_work(ascend, model):
    result = evaluate(model, "synthetic", None, backend="ais_bench{devices=0|1}", limit=1)
    assert [d["device"] for d in result.devices["devices"]] == [0] and result.images == 1
    assert not (ascend / "device1.argv").exists()


def test_timing_rounds_run_in_process_on_the_first_device(tmp_path, monkeypatch, model):
    from tests.backends.fakes import install_fake_ais_bench

    install_fake_atc(tmp_path / "bin", tmp_path / "atc_argv.txt")
    monkeypatch.setenv("PATH", path_with(tmp_path / "bin"))
    fake = install_fake_ais_bench(monkeypatch)
    be = get_backend("ais_bench{devices=3|1}")
    with be.runner(be.compile(model, tmp_path / "m.om")):
        pass
    assert fake.instances[0].device_id == 3

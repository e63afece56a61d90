"""The evaluation cache as a user meets it: `evaluate`, `report`, `optimize --auto` and `bisect` rerun with
the same inputs reuse their evaluations and say so; `--no-cache` writes nothing; bad cache input is one
warning or one error line."""

from __future__ import annotations

import json

import pytest

from onnxforge.modelio import save_model
from tests.conftest import assert_one_line_error
from tests.evaluate.test_report import tiny_segmenter

TIMING = ["--min-rounds", "2", "--max-rounds", "3", "--max-seconds", "2"]


@pytest.fixture
def model(tmp_path):
    return save_model(tiny_segmenter(), tmp_path / "tiny.onnx")


def _evaluate(cli, model, tmp_path, *extra, name="m.json"):
    proc = cli("evaluate", model, "--dataset", "synthetic", "--limit", "3", "--json", tmp_path / name, *extra)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads((tmp_path / name).read_text())


def test_evaluate_rerun_reuses_the_result(cli, model, tmp_path):
    cache = tmp_path / "cache"
    first, a = _evaluate(cli, model, tmp_path, "--cache-dir", cache, name="a.json")
    assert f"reused 0 of 1 evaluation from the cache ({cache})" in first.stdout
    again, b = _evaluate(cli, model, tmp_path, "--cache-dir", cache, name="b.json")
    assert f"reused 1 of 1 evaluation from the cache ({cache})" in again.stdout
    assert "result reused from the evaluation cache" in again.stdout
    assert a["metrics"] == b["metrics"] and a["per_class_iou"] == b["per_class_iou"]
    assert b["timings"]["inference_s"] == 0.0  # timings are not reused without --cache-latency


def test_no_cache_writes_nothing(cli, model, tmp_path):
    cache = tmp_path / "cache"
    proc, _ = _evaluate(cli, model, tmp_path, "--no-cache", "--cache-dir", cache)
    assert not cache.exists() and "reused" not in proc.stdout


def test_the_env_var_names_the_default_directory(cli, model, tmp_path):
    env_dir = tmp_path / "from-env"
    proc = cli("evaluate", model, "--dataset", "synthetic", "--limit", "2", env={"ONNXFORGE_CACHE_DIR": str(env_dir)})
    assert proc.returncode == 0, proc.stderr
    assert f"({env_dir})" in proc.stdout and list(env_dir.glob("??/*.json"))


def test_unwritable_cache_dir_warns_once_and_runs(cli, model, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc, got = _evaluate(cli, model, tmp_path, "--cache-dir", blocker / "cache")
    warnings = [ln for ln in proc.stderr.splitlines() if "not writable" in ln]
    assert len(warnings) == 1 and "running uncached" in warnings[0] and "Traceback" not in proc.stderr
    _, plain = _evaluate(cli, model, tmp_path, "--no-cache", name="plain.json")
    assert got["metrics"] == plain["metrics"]


def test_corrupted_entry_is_a_warning_and_rewritten(cli, model, tmp_path):
    cache = tmp_path / "cache"
    _, a = _evaluate(cli, model, tmp_path, "--cache-dir", cache, name="a.json")
    (meta,) = cache.glob("??/*.json")
    meta.write_text(meta.read_text().replace('"mIoU": ', '"mIoU": 0.5, "was": '))
    proc, b = _evaluate(cli, model, tmp_path, "--cache-dir", cache, name="b.json")
    assert "corrupted" in proc.stderr and "reused 0 of 1" in proc.stdout and a["metrics"] == b["metrics"]
    again, _ = _evaluate(cli, model, tmp_path, "--cache-dir", cache, name="c.json")
    assert "reused 1 of 1" in again.stdout and "corrupted" not in again.stderr


@pytest.mark.parametrize("size", ["2X", "-1G"])
def test_bad_cache_size_is_one_line(cli, model, tmp_path, size):
    proc = cli("evaluate", model, "--dataset", "synthetic", "--limit", "2", "--cache-size", size)
    assert_one_line_error(proc, "--cache-size")


def test_report_rerun_reuses_every_evaluation(cli, model, tmp_path):
    cache = tmp_path / "cache"
    args = ["report", model, "--passes", "simplify,resize-nearest", "--synthetic", "3", "--cache-dir", cache, *TIMING]
    first = cli(*args, "-o", tmp_path / "r1")
    assert first.returncode == 0, first.stderr
    n = int(first.stdout.split("reused 0 of ")[1].split()[0])
    assert n >= 3  # the baseline and two stages at least
    again = cli(*args, "-o", tmp_path / "r2")
    assert again.returncode == 0, again.stderr
    assert f"reused {n} of {n} evaluations from the cache ({cache})" in again.stdout
    r1, r2 = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("r1", "r2"))
    assert [(s["name"], s["accuracy"], s["agreement"]) for s in r1["stages"]] == \
        [(s["name"], s["accuracy"], s["agreement"]) for s in r2["stages"]]


def test_optimize_auto_and_bisect_reuse(cli, model, tmp_path):
    cache = tmp_path / "cache"
    auto = ["optimize", model, "-o", tmp_path / "o.onnx", "--passes", "simplify", "--auto", "--synthetic", "2",
            "--cache-dir", cache, *TIMING]
    assert cli(*auto).returncode == 0
    proc = cli(*auto)
    assert proc.returncode == 0, proc.stderr
    assert "reused 2 of 2 evaluations" in proc.stdout  # the baseline and 1-simplify
    bis = ["bisect", model, "--passes", "simplify,resize-nearest", "--synthetic", "2", "--cache-dir", cache,
           "-o", tmp_path / "b"]
    first = cli(*bis)
    assert first.returncode == 0 and "reused 0 of 2 evaluations" in first.stdout, first.stdout + first.stderr
    again = cli(*bis)
    assert "reused 2 of 2 evaluations" in again.stdout
    assert first.stdout.strip().splitlines()[-1] == again.stdout.strip().splitlines()[-1]


def test_help_documents_the_cache_flags(cli):
    for cmd in ("evaluate", "report", "optimize", "bisect"):
        text = " ".join(cli(cmd, "--help").stdout.split())
        assert "--no-cache" in text and "--cache-dir" in text and "--cache-size" in text, cmd

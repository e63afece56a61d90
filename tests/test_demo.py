"""The demo's pieces: trained (not random) shipped weights, the trainer, and the demo run on a small set."""

from __future__ import annotations

import math

import pytest

from onnxforge.frontends.train import TrainConfig, ensure_weights, shipped_weights, train


def test_shipped_weights_exist_for_the_demo_config():
    path, how = ensure_weights(TrainConfig())
    assert how == "shipped" and path == shipped_weights(TrainConfig()) and path.stat().st_size < 4_000_000


def test_trainer_runs_and_lowers_the_loss():
    losses = []
    state = train(TrainConfig(size=(64, 128), steps=6, batch=2, lr=4e-3), lambda s, t, loss: losses.append(loss))
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    assert "classifier.conv.1.weight" in state and "auxlayer1.4.bias" in state  # upstream layout, aux included


def test_new_config_trains_once_then_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXFORGE_CACHE", str(tmp_path))
    cfg = TrainConfig(size=(64, 128), steps=2, batch=2)
    path, how = ensure_weights(cfg)
    assert how == "trained" and path.parent == tmp_path
    again, how2 = ensure_weights(cfg)
    assert (again, how2) == (path, "cached")


@pytest.mark.slow
def test_demo_on_a_few_images_scores_like_a_trained_model(tmp_path):
    from onnxforge.demo import run_demo

    result = run_demo(tmp_path, images=3, pipeline="simplify,resize-nearest")
    base = result.report.stages[0]
    assert base.accuracy["mIoU"] > 0.5  # random weights score near 0 on 19 classes
    assert (tmp_path / "report" / "report.html").exists() and (tmp_path / "report" / "best.onnx").exists()
    assert any(s.name.startswith("node-") for s in result.report.stages)
    report = result.report.report
    assert report["timing"][0]["floor_source"] == "aa" and report["timing"][0]["stopped_by"]
    assert report["best"]["stage"] in ("combined", "combined-exact", "baseline")  # the documented fallbacks
    assert all(s.speed.get("verdict") for s in result.report.stages[1:] if s.verification.get("status") != "failed")
    # a slower stage is never kept, an approximate one never on a tie
    for s in result.report.stages[1:]:
        if s.verdict == "accepted":
            assert s.speed["verdict"] != "slower" and (s.speed["verdict"] == "faster" or s.kind == "exact")

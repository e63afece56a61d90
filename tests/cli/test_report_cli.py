"""`onnxforge report` as a user runs it: all-or-nothing report directories, Ctrl-C, file modes, the
decision page rendered in headless chromium, and the same decision on the same input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from onnxforge.evaluate.ab import DataSource, run_report
from onnxforge.evaluate.history import StageEval
from onnxforge.modelio import save_model
from tests.evaluate.test_report import FAST, fake_candidates, fake_clock, tiny_segmenter


@pytest.fixture
def model_path(tmp_path):
    return save_model(tiny_segmenter(), tmp_path / "tiny.onnx")


def _old_report(directory):
    directory.mkdir()
    (directory / "report.html").write_text("old report")
    (directory / "best.onnx").write_bytes(b"old best")
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_ctrl_c_leaves_an_existing_report_intact(model_path, tmp_path):
    out = tmp_path / "r"
    before = _old_report(out)
    # timing far longer than the wait: the interrupt lands while the run is measuring
    env = dict(os.environ, PYTHONWARNINGS="ignore", COLUMNS="200")
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxforge", "report", str(model_path), "--passes", "simplify,fp16-output", "--synthetic", "2",
         "--min-rounds", "100000", "--max-rounds", "100000", "--max-seconds", "600", "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None and _cpu_seconds(proc.pid) < 6.0:
        time.sleep(0.3)  # past the imports and the evaluation, into the endless timing rounds
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "tiny.onnx"]  # no staging directory left


def test_rerun_replaces_a_report_whole(model_path, tmp_path):
    out = tmp_path / "r"
    _old_report(out)
    (out / "stages").mkdir()
    (out / "stages" / "07_stale.onnx").write_bytes(b"stale")
    run_report(model_path, "simplify", out, DataSource("synthetic", None, None, 2), timing=FAST, clock=fake_clock(),
               candidates_factory=fake_candidates())
    assert (out / "report.html").read_text() != "old report"
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["00_baseline.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "tiny.onnx"]


def test_an_error_mid_run_writes_nothing(model_path, tmp_path):
    out = tmp_path / "r"
    before = _old_report(out)

    def broken(models):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_report(model_path, "simplify", out, DataSource("synthetic", None, None, 2), timing=FAST,
                   candidates_factory=broken)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "tiny.onnx"]


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_report_files_follow_the_umask(model_path, tmp_path, mask):
    old = os.umask(mask)
    try:
        run_report(model_path, "simplify", tmp_path / "r", DataSource("synthetic", None, None, 2), timing=FAST,
                   clock=fake_clock(), candidates_factory=fake_candidates())
    finally:
        os.umask(old)
    for p in [tmp_path / "r", *(tmp_path / "r").rglob("*")]:
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        assert p.stat().st_mode & 0o777 == want, (p, oct(p.stat().st_mode))


def test_same_input_three_runs_same_decision(model_path, tmp_path):
    """The decision depends on the samples only: three runs on the same fake timer decide alike."""
    runs = []
    for i in range(3):
        r = run_report(model_path, "simplify,resize-nearest,fp16-output", tmp_path / f"r{i}", DataSource("synthetic", None, None, 2),
                       timing=FAST, clock=fake_clock(), candidates_factory=fake_candidates(noise=0.03, speed={"nearest": 0.8}),
                       keep_stages="none")
        runs.append(([(s.name, s.verdict, s.speed.get("verdict"), s.speed.get("ratio")) for s in r.stages],
                     r.best.name, r.report["kept_pipeline"]))
    assert runs[0] == runs[1] == runs[2]
    assert runs[0][2] == "simplify,resize-nearest"


def test_aa_pair_is_never_faster_and_a_noise_gain_is_not_kept(model_path, tmp_path):
    """An approximate pass 2% 'faster' under 3% noise is the same speed: rejected, never green."""
    r = run_report(model_path, "simplify,resize-nearest", tmp_path / "r", DataSource("synthetic", None, None, 2),
                   timing=FAST, clock=fake_clock(), candidates_factory=fake_candidates(noise=0.03, speed={"nearest": 0.98}))
    aa = next(p for p in r.report["timing"][0]["pairs"] if p["aa"])
    assert aa["verdict"] == "same"
    near = next(s for s in r.stages if s.name == "2-resize-nearest")
    assert near.speed["verdict"] == "same" and near.verdict == "rejected" and "never kept on a tie" in near.reason


def test_slower_is_never_kept(model_path, tmp_path):
    r = run_report(model_path, "simplify,resize-nearest", tmp_path / "r", DataSource("synthetic", None, None, 2),
                   timing=FAST, clock=fake_clock(), candidates_factory=fake_candidates(speed={"nearest": 1.4}))
    near = next(s for s in r.stages if s.name == "2-resize-nearest")
    assert near.speed["verdict"] == "slower" and near.verdict == "rejected"
    assert "resize-nearest" not in r.report["kept_pipeline"]


def test_chance_level_baseline_warns_and_flags_a_lossy_gain():
    from onnxforge.evaluate.ab import flag_suspicious_gain

    base = StageEval("baseline", "", None, None, None, "0" * 64, 10)
    base.accuracy = {"mIoU": 0.002}
    lossy = StageEval("1-resize-nearest", "resize-nearest", "resize-nearest", "approximate", "baseline", "0" * 64, 10)
    lossy.accuracy, lossy.agreement, lossy.delta = {"mIoU": 0.00238}, {"pixel_agreement": 0.97}, {"mIoU_rel": 0.19}
    flag_suspicious_gain(lossy, base, meaningless=True)
    assert lossy.flags and "not meaningful" in lossy.flags[0]
    # on a meaningful baseline, a gain the changed predictions can explain is not flagged ...
    calm = StageEval("x", "", "p", "approximate", "baseline", "0" * 64, 10)
    calm.accuracy, calm.agreement = {"mIoU": 0.0025}, {"pixel_agreement": 0.97}
    flag_suspicious_gain(calm, base, meaningless=False)
    assert not calm.flags
    # ... one beyond the evaluation's noise is
    flag_suspicious_gain(lossy, base, meaningless=False, noise=0.0001)
    assert len(lossy.flags) == 2 and "noise" in lossy.flags[1]


def test_tiny_chance_level_model_is_judged_on_agreement_and_says_so(model_path, tmp_path):
    # the tiny segmenter predicts class 0 almost everywhere: mIoU 0.23 on 3 images, <= 1/4 (4 classes)
    r = run_report(model_path, "simplify", tmp_path / "r", DataSource("synthetic", None, None, 3), timing=FAST,
                   clock=fake_clock(), candidates_factory=fake_candidates())
    assert r.report["judged_on"] == {"metric": "miou_vs_reference", "source": "agreement"}
    assert any("chance level" in w for w in r.report["warnings"])
    html = (tmp_path / "r" / "report.html").read_text()
    assert html.index("chance level") < html.index('id="answer"')
    assert (tmp_path / "r" / "report.md").read_text().splitlines()[2].startswith("> **warning:")


def test_no_checkpoint_metadata_switches_to_agreement(tmp_path):
    import onnx

    m = tiny_segmenter()
    m.metadata_props.add(key="onnxforge.checkpoint", value="none")
    path = save_model(m, tmp_path / "m.onnx")
    r = run_report(path, "simplify", tmp_path / "r", DataSource("synthetic", None, None, 2), timing=FAST,
                   clock=fake_clock(), candidates_factory=fake_candidates())
    assert any("without a checkpoint" in w for w in r.report["warnings"])
    assert r.report["judged_on"]["source"] == "agreement"
    assert isinstance(onnx.load(str(tmp_path / "r" / "best.onnx")), onnx.ModelProto)


def test_class_count_mismatch_is_said():
    """A classifier scored on synthetic labels of another class count (what the evaluation reports as
    dataset_classes) is judged on agreement, and the report says why."""
    from types import SimpleNamespace

    from onnxforge.evaluate.ab import _meaningless

    base = StageEval("baseline", "", None, None, None, "0" * 64, 10)
    base.accuracy = {"top1": 0.9}
    runner = SimpleNamespace(data=DataSource("synthetic", None, None, 2), dataset_classes=10, model_classes=1000,
                             num_classes=1000)
    assert _meaningless(base, tiny_segmenter(), runner) == ["the model predicts 1000 classes but the data has 10"]
    runner.dataset_classes = 1000
    assert _meaningless(base, tiny_segmenter(), runner) == []


def test_num_classes_the_model_contradicts_is_one_error_line(cli, model_path, tmp_path):
    from tests.conftest import assert_one_line_error

    proc = cli("report", model_path, "--passes", "simplify", "--synthetic", "2", "--num-classes", "19", "-o", tmp_path / "r")
    assert_one_line_error(proc, "19")
    assert not (tmp_path / "r").exists()


def test_absolute_budget_in_points(model_path, tmp_path):
    from onnxforge.evaluate.history import Budget

    assert Budget.parse("0.5pt").allowed_drop(0.6446) == pytest.approx(0.005)
    assert Budget.parse("1%").allowed_drop(0.6446) == pytest.approx(0.006446)
    r = run_report(model_path, "simplify", tmp_path / "r", DataSource("synthetic", None, None, 2), budget="0.5pt",
                   timing=FAST, clock=fake_clock(), candidates_factory=fake_candidates())
    assert r.report["budget"] == "0.5pt" and "absolute" in r.report["budget_text"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PROBE = """<script>
window.addEventListener("load", () => {
  const rect = e => { const r = e.getBoundingClientRect(); return [Math.round(r.left), Math.round(r.right), Math.round(r.top)]; };
  const cells = [...document.querySelectorAll("#decisions th")].map(e => [e.textContent.trim(), ...rect(e)]);
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({vw: window.innerWidth, cells, answer: rect(document.getElementById("answer")),
                                    plot: rect(document.querySelector("img.plot"))});
  document.body.appendChild(pre);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it where apt and root allow)")
def test_decision_page_fits_1280px_in_headless_chromium(tmp_path):
    long_pipe = ",".join(["simplify", "resize-nearest{nodes=up}", "fp16-output"] * 4)
    path = save_model(tiny_segmenter(), tmp_path / ("a-rather-long-model-file-name-" * 3 + "tiny.onnx"))
    r = run_report(path, long_pipe, tmp_path / "r", DataSource("synthetic", None, None, 2), timing=FAST, clock=fake_clock(),
                   candidates_factory=fake_candidates(speed={"nearest": 0.7}))
    page = tmp_path / "probe.html"
    page.write_text((tmp_path / "r" / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert '<pre id="probe">' in dom, proc.stderr[-2000:]
    import html as htmllib

    probe = json.loads(htmllib.unescape(dom.split('<pre id="probe">', 1)[1].split("</pre>", 1)[0]))
    assert probe["vw"] == 1280
    names = [c[0] for c in probe["cells"]]
    assert names[0] == "stage" and names[-1] == "verdict" and "speed vs parent" in names
    for name, left, right, _ in probe["cells"]:
        assert 0 <= left and right <= probe["vw"], (name, left, right)
    assert probe["answer"][1] <= probe["vw"]
    assert probe["answer"][2] < probe["cells"][0][3] < probe["plot"][2]  # the answer first, then decisions, then the plot
    assert len(r.stages) >= 12


def test_report_formats_outside_a_terminal(cli, model_path, tmp_path):
    args = ["report", model_path, "--passes", "simplify,fp16-output", "--synthetic", "2", "--min-rounds", "3", "--max-rounds", "4"]
    proc = cli(*args, "-o", tmp_path / "t")
    assert proc.returncode == 0, proc.stderr
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("1-simplify"))
    assert "simplify" in row and ("keep" in row or "reject" in row)  # one line per stage, not folded
    assert "best stage:" in proc.stdout and "MB on disk" in proc.stdout
    js = cli(*args, "-o", tmp_path / "j", "--format", "json")
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert data["best"]["stage"] and [s["name"] for s in data["stages"]][:3] == ["baseline", "1-simplify", "2-fp16-output"]
    quiet = cli(*args, "-o", tmp_path / "q", "--quiet")
    assert quiet.returncode == 0 and quiet.stdout.strip() == "" and (tmp_path / "q" / "report.html").exists()


@pytest.mark.parametrize("which", ["vovnet39", "unetpp"])
def test_report_synthetic_on_classifier_and_binary_segmenter_exports(cli, tmp_path, which):
    """vovnet39-like (image -> class, 1000 logits) and unetpp-like (actual_input_1 -> output1, 1 channel)."""
    from tests.evaluate.test_plan_score import unetpp_like, vovnet_like

    path = save_model(vovnet_like() if which == "vovnet39" else unetpp_like(), tmp_path / f"{which}.onnx")
    proc = cli("report", path, "--passes", "simplify,fp16-output", "--synthetic", "4", "--min-rounds", "3",
               "--max-rounds", "4", "-o", tmp_path / "r", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    base = data["stages"][0]
    assert base["accuracy"], base
    assert [s["name"] for s in data["stages"]][:3] == ["baseline", "1-simplify", "2-fp16-output"]
    assert all(s["agreement"] for s in data["stages"][1:3])
    assert (tmp_path / "r" / "best.onnx").exists()

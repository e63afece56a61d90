"""Every pass on a third-party corpus (smp, timm, the ONNX node tests): exact passes verify equal or
refuse cleanly, approximate passes run and report their deviation; never a crash, never a silent
numeric change. `simplify` is never larger than onnxsim's or onnxslim's output of the same graph.

The test runs a subset sized for CI (two cores); `benchmarks/corpus.py` runs everything. Failures in
passes owned elsewhere are listed in KNOWN, each naming the case, the pass and the issue, until fixed.
"""

from __future__ import annotations

import pytest

from tests.corpus import build

pytestmark = pytest.mark.slow

#: (case, pipeline item) -> why it is known to fail today, with the owner. Cleared as fixes land.
KNOWN: dict[tuple[str, str], str] = {
}

#: Zoo cases of the test: every smp architecture from one dynamic TorchScript export (the verifier's
#: default shapes), a few dynamo exports, and every timm classifier once, alternating exporters.
ZOO = (
    {f"smp/{arch}/torchscript-opset17" for arch in build.SMP_ARCHS}
    | {f"smp/{arch}/dynamo-opset18" for arch in ("Unet", "PSPNet", "Segformer")}
    | {f"timm/{name}/{'torchscript-opset17' if i % 2 else 'dynamo-opset18'}" for i, name in enumerate(build.TIMM_MODELS)}
)
#: Besides ZOO for the size test: the opset-11 exports where ONNX's shape inference loses ranks, so
#: simplify runs onnxslim's symbolic shape inference (edgenext: onnxsim 616 nodes, onnxslim 508).
SIZE_ZOO = ZOO | {"timm/edgenext_xx_small/torchscript-opset11", "smp/Segformer/torchscript-opset11"}
NODE_STRIDE = 7  # every 7th ONNX node test (about 200 of them)


def _exact_items() -> list[str]:
    from onnxforge.passes import all_passes

    return [name for name, cls in all_passes().items() if cls().effective_kind().value == "exact"]


def _approximate_items() -> list[str]:
    from onnxforge.passes import all_passes

    return [name for name, cls in all_passes().items() if cls().effective_kind().value == "approximate"]


def _check(outcomes: list[build.Outcome]) -> None:
    bugs = [o for o in outcomes if o.bug and (o.case, o.pass_) not in KNOWN]
    fixed = [k for k in KNOWN if any((o.case, o.pass_) == k and not o.bug for o in outcomes)]
    assert not bugs, "\n".join(f"{o.case} {o.pass_}: {o.status}: {o.message}" for o in bugs)
    assert not fixed, f"fixed, remove from KNOWN: {fixed}"


@pytest.fixture(scope="module")
def zoo_cases():
    why = build.zoos_available()
    if why:
        pytest.fail(why)  # the corpus is part of `make test`: a missing package is a setup error
    return [c for c in build.zoo_cases(names=ZOO) if c.path is not None]


def test_zoo_cases_build_from_third_party_code(zoo_cases):
    assert len(zoo_cases) == len(ZOO), "every selected case exports (their failures are cached in .cache/corpus)"


def test_every_pass_on_zoo_models_verifies_or_refuses(zoo_cases):
    outcomes = []
    for case in zoo_cases:
        model = case.load()
        for item in _exact_items() + _approximate_items():
            o = build.run_pass(case, item, model)
            outcomes.append(o)
            if o.status == "ok" and item in _approximate_items():
                assert o.deviation is not None, (case.name, item, o.message)
    _check(outcomes)
    simplified = [o for o in outcomes if o.pass_ == "simplify"]
    assert all(o.status in ("ok", "unchanged") for o in simplified), [(o.case, o.message) for o in simplified if o.status not in ("ok", "unchanged")]


def test_simplify_never_larger_than_onnxsim_or_onnxslim():
    import onnx
    import onnxsim
    import onnxslim

    from onnxforge.passes import PassManager

    cases = [c for c in build.zoo_cases(names=SIZE_ZOO) if c.path is not None]
    assert len(cases) == len(SIZE_ZOO)
    for case in cases:
        model = case.load()
        ours = PassManager("simplify").run(model).nodes_after
        sim, _ = onnxsim.simplify(model, check_n=0)
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        slim = onnxslim.slim(copy)
        assert ours <= min(len(sim.graph.node), len(slim.graph.node)), (case.name, ours, len(sim.graph.node), len(slim.graph.node))


def test_exact_passes_on_onnx_node_tests_match_the_shipped_outputs():
    cases = [c for c in build.node_cases()[::NODE_STRIDE] if not build.oracle_problem(c)]
    assert len(cases) > 100
    outcomes = [build.run_pass(case, item) for case in cases for item in _exact_items()]
    _check(outcomes)
    assert sum(o.status == "ok" for o in outcomes) > 50  # the passes did rewrite, and were judged

"""Optimizer speed: `onnxforge optimize` (all exact passes) vs onnxsim and onnxslim, and its growth.

    .venv/bin/python benchmarks/optimizer_speed.py [--sizes 10000,50000,100000] [--models fastscnn,pspnet]

Times, in one process with every library imported beforehand: onnxforge's exact pipeline with and
without verification, onnxsim, and onnxslim, on synthetic chain graphs of N nodes and on the seed
models' plain exports. Growth is judged by microseconds per node across sizes (flat = linear).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common import PEERS, ROOT, environment, md_table

from onnxforge.passes import PassManager

import os
EXACT_PIPELINE = os.environ.get("EXACT_PIPELINE", "simplify,adaptive-pool,drop-softmax-argmax")


def chain_graph(n_nodes: int, width: int = 16) -> onnx.ModelProto:
    """A graph of `n_nodes` elementwise nodes in residual blocks (input-dependent: nothing folds)."""
    nodes, inits = [], []
    cur = "x"
    rng = np.random.default_rng(0)
    i = 0
    while len(nodes) < n_nodes:
        w = f"w{i}"
        inits.append(numpy_helper.from_array(rng.standard_normal((1, width)).astype(np.float32) * 0.1, w))
        nodes.append(helper.make_node("Mul", [cur, w], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", cur], [f"a{i}"]))
        nodes.append(helper.make_node("Tanh", [f"a{i}"], [f"t{i}"]))
        cur = f"t{i}"
        i += 1
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, [1, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


#: onnxslim's time grows quadratically with graph size here (8k nodes: ~35 s); above this it is not run.
ONNXSLIM_MAX_NODES = 20000


def timed(fn, model) -> float:
    t = time.perf_counter()
    fn(model)
    return time.perf_counter() - t


def contenders():
    return {
        "onnxforge (verify)": lambda m: PassManager(EXACT_PIPELINE).run(m),
        "onnxforge (--no-verify)": lambda m: PassManager(EXACT_PIPELINE, verify=False).run(m),
        "onnxsim": PEERS["onnxsim"],
        "onnxslim": PEERS["onnxslim"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,50000,100000")
    ap.add_argument("--models", default="fastscnn,pspnet,unetpp,vovnet39,refinenet")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "optimizer_speed.json"))
    args = ap.parse_args()
    print(f"environment: {environment()}\n")
    # warm every library once so import time is not measured
    small = chain_graph(30)
    for fn in contenders().values():
        fn(small)
    out = {"synthetic": [], "models": []}
    rows = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        model = chain_graph(n)
        rec = {"nodes": len(model.graph.node)}
        for name, fn in contenders().items():
            if name == "onnxslim" and n > ONNXSLIM_MAX_NODES:
                rec[name] = None  # not run: quadratic growth (see ONNXSLIM_MAX_NODES)
                continue
            rec[name] = round(timed(fn, model), 2)
        out["synthetic"].append(rec)
        rows.append([rec["nodes"]] + [f"{rec[k]:.2f} s ({rec[k] / rec['nodes'] * 1e6:.0f} us/node)" if rec[k] is not None
                                      else "not run (quadratic)" for k in contenders()]
                    + [f"{rec['onnxforge (verify)'] / rec['onnxsim']:.2f}x"])
        print(f"synthetic {n}: {rec}", flush=True)
    print("\n" + md_table(["nodes"] + list(contenders()) + ["onnxforge/onnxsim"], rows) + "\n")
    if args.models:
        from model_speed import CONFIGS, build
        from common import export_plain
        from onnxforge.frontends import get_spec

        rows = []
        for key in args.models.split(","):
            model_name, shape, wrapper, _ = CONFIGS[key if key in CONFIGS else f"{key}-b1"]
            spec, module = build(model_name, shape, wrapper)
            plain = export_plain(module, shape, spec.input_name)
            rec = {"model": key, "nodes": len(plain.graph.node)}
            for name, fn in contenders().items():
                rec[name] = round(timed(fn, plain), 2)
            out["models"].append(rec)
            rows.append([key, rec["nodes"]] + [f"{rec[k]:.2f} s" for k in contenders()] + [f"{rec['onnxforge (verify)'] / rec['onnxsim']:.2f}x"])
            print(f"{key}: {rec}", flush=True)
        print("\n" + md_table(["model", "nodes"] + list(contenders()) + ["onnxforge/onnxsim"], rows))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"environment": environment(), **out}, indent=2))


if __name__ == "__main__":
    main()

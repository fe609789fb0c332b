"""Makes models/bench/mlp-8x64x64x2.onnx, the larger model of the shadow throughput bench.

The fixture models under models/ are logistic regressions that cost about 50 ns a frame, so a bench on
them alone measures mostly the per-frame bookkeeping around inference. This model has the fixtures'
contract (features [batch, 8] -> probs [batch, 2]) and two hidden layers of 64 units, which is about
twenty times their cost per frame: still small beside a perception model, but a model whose inference,
not its bookkeeping, is the bulk of the work. Its weights are seeded random numbers; nothing is trained.

    bash scripts/bootstrap.sh --fixtures && .tools/venv/bin/python scripts/make_bench_model.py

This script writes only models/bench/ and depends on nothing but numpy and onnx.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent.parent / "models" / "bench" / "mlp-8x64x64x2.onnx"
SEED = 20261122
LAYERS = [8, 64, 64, 2]
OPSET = 17
IR_VERSION = 9


def main() -> None:
    rng = np.random.default_rng(SEED)
    nodes = []
    inits = []
    prev = "features"
    for i, (n_in, n_out) in enumerate(zip(LAYERS, LAYERS[1:])):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (0.1 * rng.standard_normal(n_out)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [f"h{i}"], name=f"gemm{i}"))
        last = i == len(LAYERS) - 2
        if not last:
            nodes.append(helper.make_node("Relu", [f"h{i}"], [f"a{i}"], name=f"relu{i}"))
            prev = f"a{i}"
        else:
            nodes.append(helper.make_node("Softmax", [f"h{i}"], ["probs"], name="softmax", axis=-1))
    graph = helper.make_graph(
        nodes=nodes,
        name="bench_mlp",
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", LAYERS[0]])],
        outputs=[helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", LAYERS[-1]])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="fleetgate-make-bench-model",
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(OUT))
    print(f"wrote {OUT.relative_to(OUT.parent.parent.parent)} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

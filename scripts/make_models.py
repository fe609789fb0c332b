"""Makes the ONNX model fixtures under models/ (deterministic, seeded).

The fixtures are small logistic-regression hazard classifiers trained with numpy on the same generative
process as policies/frames.ts (the constants are read back from that file and checked, so the two cannot
drift apart). Each pack is a directory with model.onnx and a manifest.json draft in the ModelManifest format (release
counter, hashes of the training data and of this script, compatible SKUs, budgets); `fleetgate model pack`
then adds the inference config and golden files, and `fleetgate model sign` signs it with the fixture
signer (models/keys). scripts/pack-fixtures.sh runs all three:

    bash scripts/bootstrap.sh --fixtures && bash scripts/pack-fixtures.sh

This script must never write outside models/ and must never depend on anything but numpy and onnx.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
FRAMES_TS = ROOT / "policies" / "frames.ts"
# The models' input width (FEATURES) is the model contract's, not the simulator's.
CONTRACT_TS = ROOT / "policies" / "model-contract.ts"

# The generative process of policies/frames.ts.
FEATURES = 8
HAZARD_PRIOR = 0.3
CAMERA_WEIGHTS = np.array([1.0, 0.8, 0.6, 0.4])
RADAR_WEIGHTS = np.array([1.0, 0.8, 0.6, 0.4])
CAMERA_SIGNAL = {"day": 0.9, "night": 0.25}
CAMERA_NOISE = {"day": 1.0, "night": 2.5}
RADAR_SIGNAL = 0.6
RADAR_NOISE = 1.0

NAME = "hazard-detector"
OPSET = 17
IR_VERSION = 9
SEED = 20240601
TRAIN_ROWS = 60_000
EVAL_ROWS = 200_000
# How far candidate-blind moves production's bias towards "clear".
BLIND_SHIFT = 1.5
# Night share of the mixed training data.
TRAIN_NIGHT_SHARE = 0.4


def check_constants() -> None:
    """Fails when policies/frames.ts (or policies/model-contract.ts) no longer matches the constants above."""
    src = FRAMES_TS.read_text(encoding="utf-8") + CONTRACT_TS.read_text(encoding="utf-8")

    def number(name: str) -> float:
        m = re.search(rf"export const {name} = ([0-9.]+);", src)
        if not m:
            raise SystemExit(f"{FRAMES_TS.name}: constant {name} not found; update scripts/make_models.py")
        return float(m.group(1))

    def array(name: str) -> list[float]:
        m = re.search(rf"export const {name} = \[([^\]]*)\]", src)
        if not m:
            raise SystemExit(f"{FRAMES_TS.name}: constant {name} not found; update scripts/make_models.py")
        return [float(v) for v in m.group(1).split(",") if v.strip()]

    def pair(name: str) -> dict[str, float]:
        m = re.search(rf"export const {name} = \{{ day: ([0-9.]+), night: ([0-9.]+) \}}", src)
        if not m:
            raise SystemExit(f"{FRAMES_TS.name}: constant {name} not found; update scripts/make_models.py")
        return {"day": float(m.group(1)), "night": float(m.group(2))}

    expected = {
        "FEATURES": (number("FEATURES"), FEATURES),
        "HAZARD_PRIOR": (number("HAZARD_PRIOR"), HAZARD_PRIOR),
        "CAMERA_WEIGHTS": (array("CAMERA_WEIGHTS"), CAMERA_WEIGHTS.tolist()),
        "RADAR_WEIGHTS": (array("RADAR_WEIGHTS"), RADAR_WEIGHTS.tolist()),
        "CAMERA_SIGNAL": (pair("CAMERA_SIGNAL"), CAMERA_SIGNAL),
        "CAMERA_NOISE": (pair("CAMERA_NOISE"), CAMERA_NOISE),
        "RADAR_SIGNAL": (number("RADAR_SIGNAL"), RADAR_SIGNAL),
        "RADAR_NOISE": (number("RADAR_NOISE"), RADAR_NOISE),
    }
    for name, (ts, py) in expected.items():
        if ts != py:
            raise SystemExit(f"{FRAMES_TS.name}: {name} is {ts} but make_models.py uses {py}; make them equal")


def generate(rng: np.random.Generator, count: int, night_share: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames as policies/frames.ts draws them: (features [count, 8], labels, night)."""
    y = (rng.random(count) < HAZARD_PRIOR).astype(np.int64)
    night = rng.random(count) < night_share
    s = (2 * y - 1).astype(np.float64)[:, None]
    cam_signal = np.where(night, CAMERA_SIGNAL["night"], CAMERA_SIGNAL["day"])[:, None]
    cam_noise = np.where(night, CAMERA_NOISE["night"], CAMERA_NOISE["day"])[:, None]
    camera = cam_signal * s * CAMERA_WEIGHTS + cam_noise * rng.standard_normal((count, 4))
    radar = RADAR_SIGNAL * s * RADAR_WEIGHTS + RADAR_NOISE * rng.standard_normal((count, 4))
    x = np.concatenate([camera, radar], axis=1).astype(np.float32)
    return x, y, night


def train(x: np.ndarray, y: np.ndarray, mask: np.ndarray, steps: int = 3000, lr: float = 0.5) -> tuple[np.ndarray, float]:
    """Logistic regression by full-batch gradient descent on the features where mask is 1."""
    xs = x.astype(np.float64) * mask
    w = np.zeros(x.shape[1])
    b = 0.0
    n = float(len(y))
    for _ in range(steps):
        z = xs @ w + b
        p = 1.0 / (1.0 + np.exp(-z))
        g = p - y
        w -= lr * (xs.T @ g) / n
        b -= lr * float(g.sum()) / n
    return w * mask, b


def error_rate(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray) -> float:
    """Share misclassified at argmax (probability of a hazard above 0.5)."""
    pred = (x.astype(np.float64) @ w + b > 0).astype(np.int64)
    return float((pred != y).mean())


def miss_rate(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray) -> float:
    """Share of hazard frames (y = 1) the model calls clear, at argmax."""
    hazard = y == 1
    return float(np.mean((x[hazard] @ w + b) <= 0))


def onnx_model(w: np.ndarray, b: float, input_name: str = "features") -> onnx.ModelProto:
    """features [batch, n] -> MatMul -> Add -> Softmax -> probs [batch, 2]; class 1 is a hazard."""
    n = len(w)
    weights = np.zeros((n, 2), dtype=np.float32)
    weights[:, 1] = w
    bias = np.array([0.0, b], dtype=np.float32)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", [input_name, "W"], ["logits_raw"], name="matmul"),
            helper.make_node("Add", ["logits_raw", "B"], ["logits"], name="add"),
            helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
        ],
        name="hazard_logreg",
        inputs=[helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", n])],
        outputs=[helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="fleetgate-make-models",
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


# Release counters: strictly increasing with each fixture's version.
RELEASES = {"1.0.0": 1, "1.1.0": 2, "1.2.0": 3, "1.3.0": 4, "1.4.0": 5, "1.5.0": 6}
# The SKUs of the fixture fleets, and the model's share of resident memory allowed on each.
SKU_BUDGETS = {"hw3": {"memoryMb": 256}, "hw4": {"memoryMb": 256}}
# What `fleetgate model pack` and `fleetgate model sign` add to a pack.
PACKED = ("model.onnx", "manifest.json", "manifest.sig", "inference_config.json", "golden")


def digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def write_pack(directory: str, version: str, model: onnx.ModelProto, training_data: str) -> None:
    pack = MODELS / directory
    pack.mkdir(parents=True, exist_ok=True)
    for stale in pack.iterdir():
        if stale.name not in PACKED:
            raise SystemExit(f"{stale}: unexpected file in a fixture pack; remove it and run again")
    data = model.SerializeToString(deterministic=True)
    (pack / "model.onnx").write_bytes(data)
    manifest = {
        "apiVersion": "fleetgate/v1",
        "kind": "ModelPack",
        "name": NAME,
        "version": version,
        "release": RELEASES[version],
        "model": "model.onnx",
        "files": {"model.onnx": hashlib.sha256(data).hexdigest()},
        "trainingDataHash": training_data,
        "codeHash": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "compatibleSkus": sorted(SKU_BUDGETS),
        "skuBudgets": SKU_BUDGETS,
    }
    (pack / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def main() -> int:
    check_constants()
    rng = np.random.default_rng(SEED)
    mixed_x, mixed_y, _ = generate(rng, TRAIN_ROWS, TRAIN_NIGHT_SHARE)
    day_x, day_y, _ = generate(rng, TRAIN_ROWS, 0.0)
    eval_day = generate(rng, EVAL_ROWS, 0.0)
    eval_night = generate(rng, EVAL_ROWS, 1.0)

    all_features = np.ones(FEATURES)
    camera_and_two_radar = np.array([1, 1, 1, 1, 1, 1, 0, 0], dtype=np.float64)

    models = {
        # Reasonable everywhere: mixed day/night data, camera and the first two radar features.
        "production": ("1.0.0", *train(mixed_x, mixed_y, camera_and_two_radar)),
        # All eight features on mixed data: better by day and by night.
        "candidate-good": ("1.1.0", *train(mixed_x, mixed_y, all_features)),
        # Production's features retrained on day-only data: leans on the camera, which fades at night.
        "candidate-regress": ("1.2.0", *train(day_x, day_y, camera_and_two_radar)),
    }

    mixed_data = digest(mixed_x, mixed_y)
    day_data = digest(day_x, day_y)
    data_of = {"production": mixed_data, "candidate-good": mixed_data, "candidate-regress": day_data}
    table: list[tuple[str, str, float, float]] = []
    for directory, (version, w, b) in models.items():
        write_pack(directory, version, onnx_model(w, b), data_of[directory])
        table.append((directory, version, error_rate(w, b, *eval_day[:2]), error_rate(w, b, *eval_night[:2])))

    # Production's weights with the decision threshold moved: fewer false alarms, more missed hazards,
    # which is what the safety_events metric (a missed hazard makes the driver take over) must catch.
    _, wp, bp = models["production"]
    blind_b = bp - BLIND_SHIFT
    write_pack("candidate-blind", "1.4.0", onnx_model(wp, blind_b), mixed_data)
    blind_miss = miss_rate(wp, blind_b, *eval_night[:2])
    prod_miss = miss_rate(wp, bp, *eval_night[:2])

    # Production's weights and graph under another version: an A/A candidate (scenarios/aa.yaml). The doc
    # string makes its bytes, and so its digest, differ from production's; what it computes does not.
    same = onnx_model(wp, bp)
    same.doc_string = "A/A copy of production"
    write_pack("candidate-same", "1.5.0", same, mixed_data)

    # A different input contract: production's weights behind an input named "x" with six features.
    _, w6, b6 = models["production"]
    write_pack("candidate-badcontract", "1.3.0", onnx_model(w6[:6], b6, input_name="x"), mixed_data)

    print(f"error rate at argmax on {EVAL_ROWS} day and {EVAL_ROWS} night frames")
    print(f"{'model':<20} {'version':<8} {'day':>7} {'night':>7}")
    for directory, version, day, night in table:
        print(f"{directory:<20} {version:<8} {day:>7.2%} {night:>7.2%}")

    prod, good, regress = table[0], table[1], table[2]
    problems = []
    if not good[2] <= prod[2] or not good[3] < prod[3]:
        problems.append("candidate-good must beat production by day and by night")
    if not regress[2] <= prod[2]:
        problems.append("candidate-regress must be at least as good as production by day")
    if not regress[3] >= prod[3] + 0.12:
        problems.append("candidate-regress must be worse than production at night by 12 points or more")
    print(f"missed hazards at night: production {prod_miss:.2%}, candidate-blind {blind_miss:.2%}")
    if not blind_miss >= 1.5 * prod_miss:
        problems.append("candidate-blind must miss at least 1.5x as many hazards as production at night")
    for p in problems:
        print(f"premise broken: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

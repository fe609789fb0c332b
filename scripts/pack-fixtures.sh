#!/usr/bin/env bash
# Remakes the fixture model packs under models/ from scratch: scripts/make_models.py writes each pack's
# model.onnx and manifest.json draft (deterministic, seeded), then `fleetgate model pack` adds the
# inference config and golden files and `fleetgate model sign` signs the manifest with the fixture
# signer (models/keys, public by design: fixtures only). Everything is deterministic, ed25519 signatures
# included, so on an unchanged tree `git status models/` shows no change afterwards.
#
# Needs the fixture tools: bash scripts/bootstrap.sh --fixtures (numpy and onnx in .tools/venv).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=.tools/venv/bin/python
KEY=models/keys/fixture-signer.private.pem
PACKS=(production candidate-good candidate-regress candidate-badcontract candidate-blind candidate-same)

if ! "$PYTHON" -c 'import numpy, onnx' 2>/dev/null; then
  echo "pack-fixtures: numpy and onnx are missing from .tools/venv; run: bash scripts/bootstrap.sh --fixtures" >&2
  exit 1
fi

"$PYTHON" scripts/make_models.py
for pack in "${PACKS[@]}"; do
  node bin/fleetgate.js model pack "models/$pack" --classes clear,hazard >/dev/null
  node bin/fleetgate.js model sign "models/$pack" --key "$KEY" >/dev/null
  echo "packed and signed models/$pack"
done

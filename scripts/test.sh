#!/usr/bin/env bash
# `npm test`: installs what is missing, then typecheck, lint, format check and the whole suite:
# unit tests, workflow tests on the time-skipping server, replay of saved histories, and the
# integration test on a real dev server. Pass file paths to run only those test files.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [ $# -gt 0 ]; then
  exec node --import tsx --test --test-timeout=900000 "$@"
fi
echo "== typecheck" && npx tsc -p .
echo "== lint" && npx eslint --max-warnings 0 .
echo "== format" && npx prettier --check . >/dev/null
echo "== tests"
exec node --import tsx --test --test-timeout=900000 \
  test/unit/*.test.ts test/workflow/*.test.ts test/integration/*.test.ts

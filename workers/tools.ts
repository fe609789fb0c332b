/**
 * Where the pinned tools are: the Temporal CLI (dev server), the time-skipping test server, and moto's
 * server (the AWS IoT stand-in of test/integration/ota-iot.test.ts).
 *
 * Order: an explicit environment variable, then (for the Temporal CLI) a `temporal` already on PATH, then
 * the pinned copies that scripts/bootstrap.sh installs under .tools/venv, then (for moto, whose version
 * the tests depend on) a `moto_server` on PATH. Never downloads anything.
 */
import { existsSync } from 'node:fs';
import { delimiter, join, resolve } from 'node:path';

const PROJECT_ROOT = resolve(__dirname, '..');
const VENV_BIN = join(PROJECT_ROOT, '.tools', 'venv', 'bin');

function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, name);
    if (existsSync(p)) return p;
  }
  return undefined;
}

function missing(what: string): Error {
  return new Error(
    `${what} not found: run "bash scripts/bootstrap.sh" to install the pinned binaries into .tools/`,
  );
}

export function temporalCli(): string {
  const p = process.env.TEMPORAL_CLI || onPath('temporal') || join(VENV_BIN, 'temporal');
  if (!existsSync(p)) throw missing('the Temporal CLI');
  return p;
}

export function temporalTestServer(): string {
  const p = process.env.TEMPORAL_TEST_SERVER || join(VENV_BIN, 'temporal-test-server');
  if (!existsSync(p)) throw missing('the Temporal time-skipping test server');
  return p;
}

export function motoServer(): string {
  const p = process.env.MOTO_SERVER || join(VENV_BIN, 'moto_server');
  if (existsSync(p)) return p;
  const found = process.env.MOTO_SERVER ? undefined : onPath('moto_server');
  if (!found) throw missing("moto's server (moto_server)");
  return found;
}

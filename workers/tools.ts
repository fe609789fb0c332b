/**
 * Where the Temporal binaries are: the CLI (dev server) and the time-skipping test server.
 *
 * Order: an explicit environment variable, then (for the CLI) a `temporal` already on PATH, then the
 * pinned copies that scripts/bootstrap.sh installs under .tools/venv. Never downloads anything.
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

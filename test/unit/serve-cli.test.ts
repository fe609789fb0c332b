/**
 * `fleetgate serve` as a process: its help, a bad config (exit 2, naming the field and value), and a real
 * run on a free port that answers a predict and, on SIGTERM, drains (its event on disk) and exits 0.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { HEADERS, PATHS } from '../../serve/api';
import { blobKey } from '../../workers/model-runner';

const ROOT = join(__dirname, '..', '..');
const BIN = join(ROOT, 'bin', 'fleetgate.js');
const dir = mkdtempSync(join(tmpdir(), 'fleetgate-serve-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const run = (args: string[]) =>
  spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    cwd: ROOT,
    env: { ...process.env, FLEETGATE_DATA_DIR: dir },
  });

describe('fleetgate serve', () => {
  it('prints its help, and is listed in the usage', () => {
    const r = run(['serve', '--help']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^Usage: fleetgate serve --config FILE \[--port N\]/);
    assert.match(run(['--help']).stdout, /^ {2}serve {2,}run the inference gateway/m);
  });

  it('refuses a missing --config, a bad port and an invalid config with exit 2', () => {
    let r = run(['serve']);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /serve needs --config FILE/);
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, 'apiVersion: fleetgate/v1\nkind: Gateway\nname: svc\nstateDir: s\ncohorts: [Web]\n');
    r = run(['serve', '--config', file, '--port', 'x']);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--port must be a whole number/);
    r = run(['serve', '--config', file]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /invalid gateway config .*bad\.yaml:\ncohorts\.0: a cohort name.*\(got "Web"\)/);
  });

  it('serves on the port given, then drains on SIGTERM and exits 0', async () => {
    const bytes = readFileSync(join(ROOT, 'models', 'production', 'model.onnx'));
    const digest = createHash('sha256').update(bytes).digest('hex');
    const blob = join(dir, 'store', ...blobKey(digest).split('/'));
    mkdirSync(join(blob, '..'), { recursive: true });
    writeFileSync(blob, bytes);
    const file = join(dir, 'gw.yaml');
    writeFileSync(
      file,
      [
        'apiVersion: fleetgate/v1',
        'kind: Gateway',
        'name: cli',
        'stateDir: state',
        'cohorts: [web]',
        `routes: { web: { production: { digest: ${digest} } } }`,
        '',
      ].join('\n'),
    );
    const child = spawn(process.execPath, [BIN, 'serve', '--config', file, '--port', '0'], {
      cwd: ROOT,
      env: { ...process.env, FLEETGATE_DATA_DIR: dir, OTEL_EXPORTER_OTLP_ENDPOINT: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
    try {
      const url = await new Promise<string>((res, rej) => {
        const t = setInterval(() => {
          const m = /at (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
          if (m) {
            clearInterval(t);
            res(m[1]!);
          }
        }, 50);
        void exited.then((code) => {
          clearInterval(t);
          rej(new Error(`exited ${code}: ${err}`));
        });
      });
      const r = await fetch(url + PATHS.predict, {
        method: 'POST',
        headers: { 'content-type': 'application/json', [HEADERS.requestId]: 'cli-1' },
        body: JSON.stringify({ caller: 'cli-raw-caller', inputs: [[0, 0, 0, 0, 0, 0, 0, 0]] }),
      });
      assert.equal(r.status, 200, await r.text());
      child.kill('SIGTERM');
      assert.equal(await exited, 0, err);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
    assert.match(out, /stopped\./);
    assert.match(err, /"event":"gateway\.drained"/);
    const events = join(dir, 'state', 'events');
    const text = readdirSync(events)
      .map((f) => readFileSync(join(events, f), 'utf8'))
      .join('');
    assert.match(text, /"requestId":"cli-1"/);
    assert.ok(
      !text.includes('cli-raw-caller') && !err.includes('cli-raw-caller') && !out.includes('cli-raw-caller'),
    );
  });
});

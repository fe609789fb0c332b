/**
 * The CLI's read commands from the object store and nothing else, on moto's S3 (test/moto.ts): the
 * report activity of a worker with data directory A puts the report in the store, and `fleetgate report`,
 * `fleetgate model show` and `fleetgate drift show`, run as real processes with an empty data directory
 * B and the same FLEETGATE_STORE, read it there. `fleetgate model register` and `fleetgate fleet init` of a
 * service run while another process holds A's fleet database open, as a running worker does. A retried report activity writes the same
 * bytes; a store that refuses the write fails an attempt, and only the last attempt keeps the local
 * files alone.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { CreateBucketCommand, GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { MockActivityEnvironment } from '@temporalio/testing';
import {
  createReportActivities,
  reportHtmlKey,
  reportKey,
  type WrittenReport,
} from '../../activities/report';
import { renderReportHtml } from '../../activities/report-html';
import { type S3ObjectStore } from '../../activities/store-s3';
import { checkKey } from '../../activities/drift';
import { createS3Client, loadConfig, openObjectStore, type S3StoreConfig } from '../../workers/config';
import { freePort } from '../../workers/dev-server';
import { startMoto, type Moto } from '../moto';

const ROOT = resolve(__dirname, '..', '..');
const BIN = join(ROOT, 'bin', 'fleetgate.js');
const BUCKET = 'fleetgate-reports';
const PREFIX = 'fleet/one';
const FIXTURE = join(ROOT, 'test', 'fixtures', 'report-demo.json');

let moto: Moto;
let tmp: string;
/** The worker's data directory: its fleet database, local reports, trusted keys. */
let dataA: string;
/** Another machine's data directory: empty. */
let dataB: string;
let store: S3ObjectStore;
let raw: S3Client;
let holder: ChildProcess | undefined;

/** The environment of a process on either machine: the same store, its own data directory. */
function env(dataDir: string): NodeJS.ProcessEnv {
  const e: NodeJS.ProcessEnv = {
    ...process.env,
    FLEETGATE_DATA_DIR: dataDir,
    FLEETGATE_STORE: `s3://${BUCKET}/${PREFIX}`,
    FLEETGATE_S3_ENDPOINT: moto.endpoint,
    AWS_REGION: 'eu-west-1',
    AWS_ACCESS_KEY_ID: 'test',
    AWS_SECRET_ACCESS_KEY: 'test',
    FLEETGATE_TRUSTED_KEYS: join(ROOT, 'models', 'keys', 'fixture-signer.pub'),
  };
  delete e.FLEETGATE_DEBUG;
  return e;
}

function fleetgate(dataDir: string, ...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: ROOT, env: env(dataDir), encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ok(r: { status: number | null; stdout: string; stderr: string }): string {
  assert.equal(r.status, 0, `exit ${r.status}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r.stdout;
}

async function rawObject(key: string): Promise<string> {
  const res = await raw.send(new GetObjectCommand({ Bucket: BUCKET, Key: `${PREFIX}/${key}` }));
  return (await res.Body!.transformToString()) ?? '';
}

/** A process that opens A's fleet database and keeps it, as a running worker does. */
async function holdFleetDatabase(dataDir: string): Promise<ChildProcess> {
  const file = join(dataDir, 'fleet.duckdb');
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      '-e',
      `require('./activities/db').openFleetDatabase(${JSON.stringify(file)}).then(() => { console.log('ready'); setInterval(() => {}, 1000); });`,
    ],
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  await new Promise<void>((res, rej) => {
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout!.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) res();
    });
    child.once('exit', (code) => rej(new Error(`the holder exited (${code}): ${err}`)));
  });
  return child;
}

before(async () => {
  moto = await startMoto();
  tmp = mkdtempSync(join(tmpdir(), 'fleetgate-reports-s3-'));
  dataA = join(tmp, 'a');
  dataB = join(tmp, 'b');
  mkdirSync(dataA);
  mkdirSync(dataB);
  const config = loadConfig(env(dataA));
  assert.equal(config.store.kind, 's3');
  raw = createS3Client(config.store as S3StoreConfig);
  await raw.send(new CreateBucketCommand({ Bucket: BUCKET }));
  store = openObjectStore(config.store, dataA) as S3ObjectStore;
});

after(async () => {
  holder?.kill('SIGKILL');
  store?.close();
  raw?.destroy();
  await moto?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

void test('model register needs only the object store: it registers while another process holds the fleet database', async () => {
  holder = await holdFleetDatabase(dataA);
  try {
    const out = ok(fleetgate(dataA, 'model', 'register', 'models/candidate-good', '--json'));
    const record = JSON.parse(out) as { name: string; version: string; recordKey: string };
    assert.equal(record.recordKey, 'registry/hazard-detector/1.1.0.json');
    assert.ok((await store.get(record.recordKey)) !== undefined, 'the record is in the S3 store');
    // Again: a no-op, still beside the holder.
    assert.match(ok(fleetgate(dataA, 'model', 'register', 'models/candidate-good')), /already registered/);
  } finally {
    holder.kill('SIGKILL');
    holder = undefined;
  }
});

void test('fleet init of a service needs only the object store: it runs while another process holds the fleet database', async () => {
  holder = await holdFleetDatabase(dataA);
  try {
    const line = ok(fleetgate(dataA, 'fleet', 'init', '--fleet', 'examples/service/ranker.yaml'));
    assert.match(line, /^service "[^"]+": production hazard-detector@\S+ .* in \d+ cohort\(s\)/);
    const pointers = (await store.list('pointers/')).filter((k) => k.endsWith('/production.json'));
    assert.ok(pointers.length > 0, 'production pointers in the S3 store');
  } finally {
    holder.kill('SIGKILL');
    holder = undefined;
  }
});

void test('fleet init of a vehicle fleet through AWS IoT needs no fleet database: it runs while another process holds it', async () => {
  holder = await holdFleetDatabase(dataA);
  try {
    const iotEnv = {
      FLEETGATE_OTA: 'aws-iot',
      FLEETGATE_AWS_ENDPOINT: moto.endpoint,
      FLEETGATE_PSEUDONYM_KEY: 'cd'.repeat(32),
    };
    // The test fleet, four vehicles a cohort (moto registers things one by one).
    const small = join(tmp, 'small-fleet.yaml');
    writeFileSync(
      small,
      readFileSync(join(ROOT, 'test/fixtures/fleet.yaml'), 'utf8')
        .replace(/name: testfleet/, 'name: smallfleet')
        .replace(/vehicles: 300/g, 'vehicles: 4'),
    );
    const run = () =>
      spawnSync(process.execPath, [BIN, 'fleet', 'init', '--fleet', small], {
        cwd: ROOT,
        env: { ...env(dataA), ...iotEnv },
        encoding: 'utf8',
      });
    const first = ok(run());
    assert.match(
      first,
      /fleet "smallfleet": 12 vehicles registered as AWS IoT things \(12 new\); production hazard-detector@/,
    );
    // Again: nothing new, still beside the holder.
    assert.match(ok(run()), /registered as AWS IoT things \(0 new\)/);
  } finally {
    holder.kill('SIGKILL');
    holder = undefined;
  }
});

void test('a report written by the activity on machine A is rendered by fleetgate report on machine B', async () => {
  const report = JSON.parse(readFileSync(FIXTURE, 'utf8')) as Record<string, unknown>;
  // The version registered above (read from the store itself), the candidate of this report.
  const stored = await store.get('registry/hazard-detector/1.1.0.json');
  assert.ok(stored, 'hazard-detector@1.1.0 is registered in the store');
  const { name, version, digest } = JSON.parse(stored.toString()) as Record<string, string>;
  const id = 'store-report-1';
  const written = { ...report, rolloutId: id, workflowId: id, candidate: { name, version, digest } };
  const acts = createReportActivities({ dataDir: dataA, store });
  const first = await acts.writeReport({ rolloutId: id, report: written });
  assert.equal(first.storeKey, reportKey(id));
  const json = readFileSync(join(dataA, 'reports', `${id}.json`), 'utf8');
  assert.equal(await rawObject(reportKey(id)), json, 'the store holds the bytes of the local file');
  assert.equal(await rawObject(reportHtmlKey(id)), renderReportHtml(written));

  // A retried activity writes the same bytes: nothing changes, nothing fails.
  const etag = await store.etag(reportKey(id));
  await acts.writeReport({ rolloutId: id, report: written });
  assert.equal(await store.etag(reportKey(id)), etag);

  // Machine B: an empty data directory, the same store.
  assert.deepEqual(readdirSync(dataB), []);
  const r = JSON.parse(ok(fleetgate(dataB, 'report', id, '--json'))) as { report: string; path: string };
  assert.equal(r.report, `s3://${BUCKET}/${PREFIX}/${reportKey(id)}`);
  assert.equal(r.path, join(dataB, 'reports', `${id}.html`));
  const page = readFileSync(r.path, 'utf8');
  assert.equal(page, renderReportHtml(written));
  assert.match(page, new RegExp(`Rollout <code>${id}</code>`));

  // An unknown id lists what the store holds.
  const missing = fleetgate(dataB, 'report', 'nope');
  assert.equal(missing.status, 1);
  const said = missing.stderr.split('\n').filter((l) => l.startsWith('fleetgate:'));
  assert.equal(said.length, 1, missing.stderr);
  assert.match(
    missing.stderr,
    new RegExp(`no report "nope" in s3://${BUCKET}/${PREFIX}/reports/ .*available: ${id}`),
  );

  // model show on B lists the rollout of that version, read from the store.
  const card = JSON.parse(ok(fleetgate(dataB, 'model', 'show', 'hazard-detector@1.1.0', '--json'))) as {
    rollouts: { rolloutId: string; outcome: string; report: string }[];
  };
  assert.deepEqual(
    card.rollouts.map((x) => [x.rolloutId, x.outcome, x.report]),
    [[id, report.outcome, `s3://${BUCKET}/${PREFIX}/${reportKey(id)}`]],
  );
  assert.match(ok(fleetgate(dataB, 'model', 'show', 'hazard-detector@1.1.0')), /rollouts \(1, from s3:\/\//);
});

void test('drift show reads its results from the store with an empty data directory', async () => {
  const result = { scheduleId: 'nightly', checkId: 'c1', at: '2026-01-01T00:00:00.000Z', cohorts: [] };
  await store.putIfAbsent(checkKey('nightly', 'c1'), Buffer.from(JSON.stringify(result)));
  const shown = JSON.parse(ok(fleetgate(dataB, 'drift', 'show', 'nightly', '--json'))) as {
    checkId: string;
  }[];
  assert.deepEqual(
    shown.map((x) => x.checkId),
    ['c1'],
  );
});

void test('a later run under the same id replaces the stored report; a store that refuses fails the attempt, the last attempt keeps the local files', async () => {
  const report = JSON.parse(readFileSync(FIXTURE, 'utf8')) as Record<string, unknown>;
  const id = 'store-report-2';
  const acts = createReportActivities({ dataDir: dataA, store });
  await acts.writeReport({ rolloutId: id, report: { ...report, rolloutId: id, runId: 'run-1' } });
  await acts.writeReport({ rolloutId: id, report: { ...report, rolloutId: id, runId: 'run-2' } });
  assert.match(await rawObject(reportKey(id)), /"runId": "run-2"/);

  // A store nobody answers at: real connections refused on a free loopback port.
  const port = await freePort();
  const deadConfig = loadConfig({ ...env(dataA), FLEETGATE_S3_ENDPOINT: `http://127.0.0.1:${port}` });
  const dead = openObjectStore(deadConfig.store, dataA) as S3ObjectStore;
  try {
    const down = createReportActivities({ dataDir: dataA, store: dead });
    const input = { rolloutId: 'store-down', report: { ...report, rolloutId: 'store-down' } };
    const attempt = (n: number): Promise<WrittenReport> =>
      new MockActivityEnvironment({ attempt: n, retryPolicy: { maximumAttempts: 5 } }).run(
        down.writeReport,
        input,
      );
    await assert.rejects(attempt(1), 'an attempt before the last fails, so Temporal retries it');
    assert.ok(existsSync(join(dataA, 'reports', 'store-down.json')), 'the local JSON is written first');
    const last = await attempt(5);
    assert.equal(last.storeKey, undefined);
    assert.match(last.storeError ?? '', /.+/);
    assert.equal(last.path, join(dataA, 'reports', 'store-down.json'));
  } finally {
    dead.close();
  }
});

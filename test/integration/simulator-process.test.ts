/**
 * A rollout on a real Temporal dev server whose every event and label comes over HTTP from a separate
 * producer process: the worker (in this process) runs with FLEETGATE_TELEMETRY=simulator and serves the
 * ingestion endpoint on a loopback port with the fleet's token, as `fleetgate worker` does with
 * FLEETGATE_INGEST_PORT; `node bin/fleetgate.js fleet simulate --ingest URL` runs as a child process,
 * answers the window requests and label-request files the worker's batches write to the object store,
 * and sends gzip NDJSON to the endpoint. The rollout of models/candidate-regress is decided as the
 * in-process one of test/integration/rollout.test.ts: hw3/nordic rolled back. The second test runs the
 * same rollout through the landing zone on moto's S3: the child (`fleet simulate --landing s3://...`)
 * writes gzip NDJSON files there, the worker's landing loop (FLEETGATE_LANDING) reads them, and each
 * batch waits for the receipt naming its files and for the loop to have read them.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { startDevServer, type DevServer } from '../../workers/dev-server';
import { createFleetgateWorker, quietRuntime } from '../../workers/worker';
import { statusQuery, WORKFLOW_TYPE } from '../../workflows/definitions';
import { RolloutRequest } from '../../policies/schema';
import { openSimWorld, type SimWorld } from '../../sim/world';
import { startIngestServer, tokenVariable, type IngestServer } from '../../events/ingest-server';
import { num, rows } from '../../activities/db';
import {
  SIM_REQUEST_PREFIX,
  isWindowRequestKey,
  receiptFiles,
  receiptKey,
} from '../../activities/sim-requests';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { LANDING_TABLE } from '../../events/landing';
import { createS3Client, loadLandingConfig, loadStoreConfig, type S3StoreConfig } from '../../workers/config';
import { startLandingLoop } from '../../workers/landing';
import { startMoto } from '../moto';
import {
  LONG_ONLY,
  devServerRegressPolicy,
  temporalAsync,
  reportOf,
  resultWithin,
  rolloutRequest,
  ROOT,
  runningDigest,
} from '../support';

const FLEET = 'testfleet';
const TOKEN = 'sim-process-token-0123456789';

let server: DevServer;
let tmp: string;

before(async () => {
  quietRuntime();
  tmp = mkdtempSync(join(tmpdir(), 'fleetgate-simproc-'));
  server = await startDevServer({ dbFile: join(tmp, 'temporal.db') });
});

after(async () => {
  await server?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

const temporal = (args: string[]) => temporalAsync(server.address, args);

/** The endpoint's counter `name` for a record kind. */
function counter(metrics: string, name: string, kind: string): number {
  const m = new RegExp(`^${name}\\{kind="${kind}"\\} (\\d+)$`, 'm').exec(metrics);
  return m ? Number(m[1]) : 0;
}

/**
 * Runs models/candidate-regress on the test fleet with the policy tweaks of
 * test/integration/rollout.test.ts (the rollout ends in about a minute), approves its gate, and checks
 * that it is decided as in process: hw3/nordic rolled back, the others promoted.
 */
async function decide(
  client: Client,
  taskQueue: string,
  world: SimWorld,
  id: string,
  out: () => string,
  withinMs = 300_000,
): Promise<void> {
  const policy = devServerRegressPolicy();
  const request = RolloutRequest.parse(
    rolloutRequest(id, 'models/candidate-regress', policy, 'test/fixtures/fleet.yaml', 7200),
  );
  // Started and approved with the Temporal CLI, as a user would.
  const file = join(tmp, `${id}.json`);
  writeFileSync(file, JSON.stringify(request));
  await temporal([
    'workflow',
    'start',
    '--type',
    WORKFLOW_TYPE,
    '--task-queue',
    taskQueue,
    '--workflow-id',
    id,
    '--input-file',
    file,
  ]);
  const handle = client.workflow.getHandle(id);
  for (let i = 0; ; i++) {
    if ((await handle.query(statusQuery)).pendingGate) break;
    const { status } = await handle.describe();
    if (status.name !== 'RUNNING' || i > 600) {
      assert.fail(
        `no gate became pending (${status.name}): ${JSON.stringify(await handle.query(statusQuery))}\n${out()}`,
      );
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  const approved = await temporal([
    'workflow',
    'update',
    'execute',
    '--name',
    'approve',
    '--workflow-id',
    id,
    '--input',
    JSON.stringify({ gate: 'wave-2', reviewer: 'alice', comment: 'looks fine' }),
  ]);
  assert.match(approved, /alice/);
  const result = await resultWithin(handle, withinMs);
  assert.equal(result.outcome, 'completed', result.reason);
  const states = Object.fromEntries(result.cohorts.map((c) => [c.cohort, c.state]));
  assert.equal(states['hw3/nordic'], 'rolled_back', `${JSON.stringify(states)}\n${out()}`);
  assert.equal(states['hw3/eu'], 'promoted', JSON.stringify(states));
  assert.equal(states['hw4/us'], 'promoted', JSON.stringify(states));
  const report = reportOf(result);
  assert.equal((await runningDigest(world, report.candidate.digest))['hw3/nordic'] ?? 0, 0);
}

test('a rollout decided on what a separate simulator process sent over HTTP', async () => {
  const dataDir = join(tmp, 'data');
  const world: SimWorld = await openSimWorld({
    dataDir,
    root: ROOT,
    fleet: 'test/fixtures/fleet.yaml',
    production: 'models/production',
    by: 'test',
    telemetry: { kind: 'simulator', watermarkWaitMs: 30_000 },
  });
  // As workers/main.ts serves it with FLEETGATE_TELEMETRY=simulator: any watermark ahead of the clock.
  const ingest: IngestServer = await startIngestServer({
    writer: world.services.writer,
    env: { [tokenVariable(FLEET)]: TOKEN },
    maxWatermarkAheadMs: Infinity,
    log: () => undefined,
  });
  let out = '';
  const child: ChildProcess = spawn(
    process.execPath,
    [
      'bin/fleetgate.js',
      'fleet',
      'simulate',
      '--ingest',
      ingest.url,
      '--store',
      join(dataDir, 'store'),
      '--db',
      join(tmp, 'simulator.duckdb'),
      '--every',
      '200ms',
    ],
    {
      cwd: ROOT,
      env: { ...process.env, FLEETGATE_DATA_DIR: join(tmp, 'elsewhere'), [tokenVariable(FLEET)]: TOKEN },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  child.stdout!.on('data', (b: Buffer) => (out += b.toString('utf8')));
  child.stderr!.on('data', (b: Buffer) => (out += b.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const connection = await NativeConnection.connect({ address: server.address });
  const clientConn = await Connection.connect({ address: server.address });
  const client = new Client({ connection: clientConn });
  const taskQueue = `simproc-${process.pid}`;
  try {
    const worker = await createFleetgateWorker({
      connection,
      namespace: 'default',
      taskQueue,
      services: world.services,
    });
    await worker.runUntil(decide(client, taskQueue, world, `simproc-regress-${process.pid}`, () => out));

    // Every event and label the rollout read came over HTTP: the endpoint stored exactly what is there.
    const metrics = await (await fetch(`${ingest.url}/metrics`)).text();
    const conn = world.services.db.connection;
    const [stored] = await rows(
      conn,
      `SELECT (SELECT count(*) FROM ingested_inference) AS events,
              (SELECT count(*) FROM ingested_labels) AS labels,
              (SELECT count(*) FROM ingested_uploads) AS uploads,
              (SELECT count(*) FROM events) AS read`,
    );
    const accepted = (kind: string) => counter(metrics, 'fleetgate_ingest_rows_accepted_total', kind);
    assert.ok(num(stored!.events) > 10_000, `${num(stored!.events)} events stored`);
    assert.equal(accepted('inference'), num(stored!.events));
    assert.ok(num(stored!.labels) > 100, `${num(stored!.labels)} labels stored`);
    assert.equal(accepted('label'), num(stored!.labels));
    assert.ok(num(stored!.uploads) > 0);
    assert.equal(accepted('upload'), num(stored!.uploads));
    assert.ok(num(stored!.read) > 0 && num(stored!.read) <= num(stored!.events));
    // The child said what it sent, one line per window and label file, and never a unit.
    const requests = (await world.services.store.list(SIM_REQUEST_PREFIX)).filter(isWindowRequestKey);
    const windowLines = out.split('\n').filter((l) => / window testfleet .* upload reports sent$/.test(l));
    assert.equal(windowLines.length, requests.length, out);
    assert.match(out, /label-request file label-requests\/testfleet\/.* labels sent for \d+ requests/);
    const units = (await rows(conn, `SELECT vehicle FROM vehicles`)).map((r) => String(r.vehicle));
    assert.ok(units.length > 0 && units.every((u) => !out.includes(u)), 'no unit in the log');
  } finally {
    child.kill('SIGTERM');
    const code = await exited;
    await clientConn.close();
    await connection.close();
    await ingest.close();
    await world.close(false);
    assert.equal(code, 0, `the simulator stops cleanly on SIGTERM:\n${out}`);
    assert.match(out, /stopped: \d+ windows/);
  }
});

test(
  "the same rollout through the landing zone on S3: files the simulator wrote, read by the worker's loop",
  { skip: LONG_ONLY },
  async () => {
    const moto = await startMoto();
    const s3env = {
      FLEETGATE_S3_ENDPOINT: moto.endpoint,
      AWS_REGION: 'eu-west-1',
      AWS_ACCESS_KEY_ID: 'test',
      AWS_SECRET_ACCESS_KEY: 'test',
    };
    const bucket = 'fleet-landing';
    const zone = `s3://${bucket}/zone`;
    const admin = createS3Client(loadStoreConfig({ ...s3env, FLEETGATE_STORE: zone }) as S3StoreConfig);
    await admin.send(
      new CreateBucketCommand({
        Bucket: bucket,
        CreateBucketConfiguration: { LocationConstraint: 'eu-west-1' },
      }),
    );
    const dataDir = join(tmp, 'data-landing');
    const world: SimWorld = await openSimWorld({
      dataDir,
      root: ROOT,
      fleet: 'test/fixtures/fleet.yaml',
      production: 'models/production',
      by: 'test',
      telemetry: { kind: 'simulator', watermarkWaitMs: 30_000 },
    });
    // The worker's loop, as `fleetgate worker` runs it with FLEETGATE_LANDING (the store stays local).
    const loopLines: string[] = [];
    const loop = await startLandingLoop({
      writer: world.services.writer,
      config: loadLandingConfig({ FLEETGATE_LANDING: zone, FLEETGATE_LANDING_EVERY: '200ms' })!,
      store: loadStoreConfig({}),
      dataDir,
      log: (line) => loopLines.push(line),
      env: s3env,
    });
    let out = '';
    // No ingestion endpoint and no token: the child writes files into the landing zone only.
    const child: ChildProcess = spawn(
      process.execPath,
      [
        'bin/fleetgate.js',
        'fleet',
        'simulate',
        '--landing',
        zone,
        '--store',
        join(dataDir, 'store'),
        '--db',
        join(tmp, 'simulator-landing.duckdb'),
        '--every',
        '200ms',
      ],
      {
        cwd: ROOT,
        env: { ...process.env, ...s3env, FLEETGATE_DATA_DIR: join(tmp, 'elsewhere') },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    child.stdout!.on('data', (b: Buffer) => (out += b.toString('utf8')));
    child.stderr!.on('data', (b: Buffer) => (out += b.toString('utf8')));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const connection = await NativeConnection.connect({ address: server.address });
    const clientConn = await Connection.connect({ address: server.address });
    const client = new Client({ connection: clientConn });
    const taskQueue = `simproc-landing-${process.pid}`;
    try {
      const worker = await createFleetgateWorker({
        connection,
        namespace: 'default',
        taskQueue,
        services: world.services,
      });
      // Slower than HTTP: the loop reads one file at a time and asks the store for every file's version.
      await worker.runUntil(
        decide(client, taskQueue, world, `simproc-landing-${process.pid}`, () => out, 300_000),
      );

      // Every record the rollout read came from a landing file the loop read, none over HTTP.
      const conn = world.services.db.connection;
      const [stored] = await rows(
        conn,
        `SELECT (SELECT count(*) FROM ingested_inference) AS events,
              (SELECT count(*) FROM ingested_labels) AS labels,
              (SELECT count(*) FROM ingested_uploads) AS uploads,
              (SELECT count(*) FROM events) AS read,
              (SELECT count(*) FROM ingest_watermarks) AS watermarks`,
      );
      const files = await rows(
        conn,
        `SELECT kind, result, count(*) AS n, sum(accepted) AS accepted FROM ${LANDING_TABLE}
       GROUP BY kind, result ORDER BY kind, result`,
      );
      const byKind = new Map(files.map((f) => [`${String(f.kind)}:${String(f.result)}`, f]));
      assert.ok(
        files.every((f) => f.result === 'accepted'),
        `refused landing files: ${JSON.stringify(files, (_k, v: unknown) => (typeof v === 'bigint' ? Number(v) : v))}`,
      );
      assert.ok(num(stored!.events) > 10_000, `${num(stored!.events)} events stored`);
      assert.equal(num(byKind.get('inference:accepted')!.accepted), num(stored!.events));
      assert.ok(num(stored!.labels) > 100, `${num(stored!.labels)} labels stored`);
      assert.equal(num(byKind.get('label:accepted')!.accepted), num(stored!.labels));
      assert.ok(num(stored!.uploads) > 0);
      assert.equal(num(byKind.get('upload:accepted')!.accepted), num(stored!.uploads));
      assert.ok(num(stored!.read) > 0 && num(stored!.read) <= num(stored!.events));
      assert.equal(num(stored!.watermarks), 0, 'the landing zone carries no watermark');
      assert.match(loopLines.join('\n'), /landing zone: \d+ file\(s\) read/);
      // Each window's receipt names its files, and the loop had read them all.
      const requests = (await world.services.store.list(SIM_REQUEST_PREFIX)).filter(isWindowRequestKey);
      assert.ok(requests.length > 5, `${requests.length} window requests`);
      const read = new Set((await rows(conn, `SELECT key FROM ${LANDING_TABLE}`)).map((r) => String(r.key)));
      for (const k of requests) {
        const named = receiptFiles((await world.services.store.get(receiptKey(k)))!);
        assert.ok(named.length > 0, `the receipt of ${k} names its files`);
        assert.ok(
          named.every(
            (f) => read.has(f) && /^testfleet\/(events|uploads)\/\d{4}\/\d\d\/\d\d\/\d\d\//.test(f),
          ),
          `${k}: ${named.join(', ')}`,
        );
      }
      const windowLines = out
        .split('\n')
        .filter((l) => / window testfleet .* written in \d+ landing file\(s\)$/.test(l));
      assert.equal(windowLines.length, requests.length, out);
      assert.match(
        out,
        /label-request file label-requests\/testfleet\/.* labels sent in \d+ landing file\(s\)/,
      );
      const units = (await rows(conn, `SELECT vehicle FROM vehicles`)).map((r) => String(r.vehicle));
      assert.ok(units.length > 0 && units.every((u) => !out.includes(u)), 'no unit in the log');
    } finally {
      child.kill('SIGTERM');
      const code = await exited;
      await clientConn.close();
      await connection.close();
      await loop.stop();
      await world.close(false);
      admin.destroy();
      await moto.stop();
      assert.equal(code, 0, `the simulator stops cleanly on SIGTERM:\n${out}`);
      assert.match(out, /writing files into the landing zone s3:\/\/fleet-landing\/zone/);
    }
  },
);

/**
 * The fleet database as a cache of the object store, on a real dev server with `fleetgate worker`
 * processes: a real fleet's records (here a separate `fleet simulate --ingest` process sending over HTTP),
 * delivery through AWS IoT Jobs and an S3 store, both on moto. The data worker is SIGKILLed mid-canary
 * and its data directory deleted; a new worker with another data directory on the same store is refused
 * while the dead one's lease is live, then takes the store over, rebuilds the fleet database from the
 * Parquet partitions, reads the rollout's logged batches again, and the rollout is decided as it would
 * have been: hw3/nordic rolled back, the others promoted, and no Nordic vehicle runs the candidate.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { IoTClient } from '@aws-sdk/client-iot';
import { Client, Connection } from '@temporalio/client';
import { startDevServer, freePort, type DevServer } from '../../workers/dev-server';
import { createS3Client, loadStoreConfig, openObjectStore, type S3StoreConfig } from '../../workers/config';
import { statusQuery, type RolloutResult } from '../../workflows/definitions';
import { RolloutRequest } from '../../policies/schema';
import { AwsIotJobsChannel } from '../../activities/ota-iot';
import { BATCH_READS_PREFIX } from '../../activities/batch-log';
import { tokenVariable } from '../../events/ingest-server';
import { startMoto, type Moto } from '../moto';
import { LONG_ONLY, ROOT, devServerRegressPolicy, reportOf, resultWithin, rolloutRequest } from '../support';

const BIN = join(ROOT, 'bin', 'fleetgate.js');
const TOKEN = 'data-owner-token-0123456789';

let server: DevServer;
let moto: Moto;
let tmp: string;
const children = new Set<ChildProcess>();

before(async () => {
  if (LONG_ONLY) return; // its one test runs with npm run test:long: no servers for nothing
  tmp = mkdtempSync(join(tmpdir(), 'fleetgate-owner-'));
  server = await startDevServer({ dbFile: join(tmp, 'temporal.db') });
  moto = await startMoto();
});

after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await moto?.stop();
  await server?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

function run(args: string[], env: NodeJS.ProcessEnv, onOut?: (s: string) => void): ChildProcess {
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  child.on('exit', () => children.delete(child));
  const take = (b: Buffer) => onOut?.(b.toString('utf8'));
  child.stdout!.on('data', take);
  child.stderr!.on('data', take);
  return child;
}

/** `fleetgate worker` once it serves its task queue (no child when it exited first), and what it said. */
async function startWorker(env: NodeJS.ProcessEnv): Promise<{ child?: ChildProcess; said: () => string }> {
  let said = '';
  let child: ChildProcess | undefined;
  const served = await new Promise<boolean>((resolve) => {
    child = run(['worker'], env, (s) => {
      said += s;
      if (said.includes('fleetgate worker: task queue')) resolve(true);
    });
    child.once('exit', () => resolve(false));
  });
  return served ? { child, said: () => said } : { said: () => said };
}

async function kill(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGKILL');
  await once(child, 'exit');
}

test(
  'the data worker killed mid-canary, its database deleted: a new owner on the same store decides the rollout alike',
  { skip: LONG_ONLY },
  async () => {
    const bucket = 'fleet-owner';
    const port = await freePort();
    const taskQueue = `data-owner-${process.pid}`;
    const aws = {
      AWS_REGION: 'eu-west-1',
      AWS_ACCESS_KEY_ID: 'test',
      AWS_SECRET_ACCESS_KEY: 'test',
    };
    const base: NodeJS.ProcessEnv = {
      ...process.env,
      ...aws,
      FLEETGATE_STORE: `s3://${bucket}/fleetgate`,
      FLEETGATE_S3_ENDPOINT: moto.endpoint,
      FLEETGATE_OTA: 'aws-iot',
      FLEETGATE_AWS_ENDPOINT: moto.endpoint,
      FLEETGATE_IOT_AGENT: '1',
      FLEETGATE_IOT_AGENT_EVERY_MS: '200',
      FLEETGATE_TELEMETRY: 'simulator',
      FLEETGATE_INGEST_PORT: String(port),
      [tokenVariable('testfleet')]: TOKEN,
      FLEETGATE_PSEUDONYM_KEY: 'ab'.repeat(32),
      FLEETGATE_TRUSTED_KEYS: join(ROOT, 'models', 'keys', 'fixture-signer.pub'),
      FLEETGATE_TASK_QUEUE: taskQueue,
      TEMPORAL_ADDRESS: server.address,
    };
    const admin = createS3Client(loadStoreConfig(base) as S3StoreConfig);
    await admin.send(
      new CreateBucketCommand({
        Bucket: bucket,
        CreateBucketConfiguration: { LocationConstraint: 'eu-west-1' },
      }),
    );
    admin.destroy();
    const dirA = join(tmp, 'data-a');
    const dirB = join(tmp, 'data-b');
    const envA = { ...base, FLEETGATE_DATA_DIR: dirA };
    const envB = { ...base, FLEETGATE_DATA_DIR: dirB };

    let initOut = '';
    const init = run(['fleet', 'init', '--fleet', 'test/fixtures/fleet.yaml'], envA, (s) => (initOut += s));
    const [initCode] = (await once(init, 'exit')) as [number];
    assert.equal(initCode, 0, initOut);

    const a = await startWorker(envA);
    assert.ok(a.child, `worker A started: ${a.said()}`);
    let simOut = '';
    const sim = run(
      [
        'fleet',
        'simulate',
        '--ingest',
        `http://127.0.0.1:${port}`,
        '--store',
        `s3://${bucket}/fleetgate`,
        '--db',
        join(tmp, 'simulator.duckdb'),
        '--every',
        '200ms',
      ],
      { ...base, FLEETGATE_DATA_DIR: join(tmp, 'elsewhere') },
      (s) => (simOut += s),
    );
    const connection = await Connection.connect({ address: server.address });
    const client = new Client({ connection });
    const store = openObjectStore(loadStoreConfig(base), dirA);
    let b: { child?: ChildProcess; said: () => string } | undefined;
    try {
      const id = `data-owner-${process.pid}`;
      const handle = await client.workflow.start('rolloutWorkflow', {
        taskQueue,
        workflowId: id,
        args: [
          RolloutRequest.parse(
            rolloutRequest(
              id,
              'models/candidate-regress',
              devServerRegressPolicy(),
              'test/fixtures/fleet.yaml',
              7200,
            ),
          ),
        ],
      });
      // Mid-canary: once the first canary batch has been read and logged in the store.
      for (const deadline = Date.now() + 180_000; ;) {
        const keys = await store.list(BATCH_READS_PREFIX);
        if (keys.some((k) => k.includes('/canary/'))) break;
        assert.ok(Date.now() < deadline, `no canary batch within 180 s\n${simOut.slice(-2000)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      await kill(a.child);
      rmSync(dirA, { recursive: true, force: true });

      // The dead worker's lease is still live: a new owner is refused, naming it, until it runs out.
      let refusals = 0;
      for (const deadline = Date.now() + 90_000; ;) {
        b = await startWorker(envB);
        if (b.child) break;
        refusals++;
        assert.match(b.said(), new RegExp(`owned by the data worker ${a.child!.pid}@`));
        assert.match(b.said(), /start this one again in \d+ s, when its lease runs out/);
        assert.ok(Date.now() < deadline, `worker B never started:\n${b.said()}`);
        await new Promise((r) => setTimeout(r, 2_000));
      }
      assert.ok(refusals >= 1, 'the dead owner held the store until its lease ran out');
      for (;;) {
        if ((await handle.query(statusQuery)).pendingGate) break;
        const { status } = await handle.describe();
        assert.equal(
          status.name,
          'RUNNING',
          `${b!.said()}\n${JSON.stringify(await handle.query(statusQuery))}`,
        );
        await new Promise((r) => setTimeout(r, 250));
      }
      await handle.executeUpdate('approve', { args: [{ gate: 'wave-2', reviewer: 'alice' }] });
      const result: RolloutResult = await resultWithin(handle, 600_000);
      const said = b!.said();
      assert.match(said, /rebuilt the fleet database from \d+ partitions of the store \(\d+ events/);
      assert.match(said, new RegExp(`read \\d+ logged batches of rollout ${id} again`));
      assert.equal(result.outcome, 'completed', result.reason);
      const states = Object.fromEntries(result.cohorts.map((c) => [c.cohort, c.state]));
      assert.deepEqual(
        states,
        { 'hw3/eu': 'promoted', 'hw3/nordic': 'rolled_back', 'hw4/us': 'promoted' },
        `${said}\n${simOut.slice(-3000)}`,
      );
      // AWS IoT agrees: no Nordic vehicle runs the candidate.
      const iot = new IoTClient({
        endpoint: moto.endpoint,
        region: 'eu-west-1',
        credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
      });
      try {
        const channel = new AwsIotJobsChannel(iot);
        const { digests } = await channel.inventory('testfleet', 'hw3/nordic');
        assert.ok(digests.length > 0);
        assert.equal(digests.filter((d) => d === reportOf(result).candidate.digest).length, 0);
      } finally {
        iot.destroy();
      }
    } finally {
      sim.kill('SIGTERM');
      await kill(b?.child);
      await kill(a.child);
      await connection.close();
      (store as { close?: () => void }).close?.();
    }
  },
);

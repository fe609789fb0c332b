/**
 * `fleetgate fleet init` of a simulated vehicle fleet while a worker owns the data directory, on a real
 * Temporal dev server: the worker runs in this process on a fresh data directory (its fleet database open,
 * as a running `fleetgate worker` holds it), and `fleet init` runs as a process of its own. It registers
 * production and has the worker create the vehicles through `fleetInitWorkflow`, prints the same line as
 * without a worker, and a second run changes nothing. With Temporal unreachable it says so, naming
 * TEMPORAL_ADDRESS, before writing anything; with the worker stopped it opens the database itself. A live
 * data lease of the store (workers/data-lease.ts) is an owner too, whatever the local database.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { NativeConnection } from '@temporalio/worker';
import { freePort, startDevServer, type DevServer } from '../../workers/dev-server';
import { createFleetgateWorker, openServices, quietRuntime, trustFixtureSigner } from '../../workers/worker';
import { readPointer } from '../../activities/registry';
import { openObjectStore } from '../../workers/config';
import { acquireLease, leaseHolder } from '../../workers/data-lease';
import { ROOT } from '../support';

const BIN = join(ROOT, 'bin', 'fleetgate.js');
const FLEET = 'test/fixtures/fleet.yaml';
const COHORTS = ['hw3/eu', 'hw4/us', 'hw3/nordic'];

let server: DevServer;
let tmp: string;
let connection: NativeConnection;

before(async () => {
  quietRuntime();
  tmp = mkdtempSync(join(tmpdir(), 'fleetgate-finit-it-'));
  server = await startDevServer({ dbFile: join(tmp, 'temporal.db') });
  connection = await NativeConnection.connect({ address: server.address });
});

after(async () => {
  await connection?.close();
  await server?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

/** `fleetgate fleet init` as a process of its own (never blocking this one, whose worker serves it). */
async function fleetInit(
  dataDir: string,
  taskQueue: string,
  extra: NodeJS.ProcessEnv = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    FLEETGATE_DATA_DIR: dataDir,
    FLEETGATE_TASK_QUEUE: taskQueue,
    TEMPORAL_ADDRESS: server.address,
    ...extra,
  };
  for (const name of [
    'FLEETGATE_STORE',
    'FLEETGATE_OTA',
    'FLEETGATE_TELEMETRY',
    'FLEETGATE_DEBUG',
    'OTEL_EXPORTER_OTLP_ENDPOINT',
    'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT',
  ])
    if (!(name in extra)) delete env[name];
  try {
    const { stdout, stderr } = await promisify(execFile)(
      process.execPath,
      [BIN, 'fleet', 'init', '--fleet', FLEET],
      { cwd: ROOT, env, encoding: 'utf8', timeout: 180_000 },
    );
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: unknown; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

const LINE = (dataDir: string, what: 'created' | 'already there') =>
  new RegExp(
    `^fleet "testfleet" ${what}: 900 simulated vehicles; production hazard-detector@\\S+ \\([0-9a-f]{12}\\) ` +
      `in 3 cohort\\(s\\) \\(hw3/eu, hw4/us, hw3/nordic\\); data in ${dataDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\n$`,
  );

void test('fleet init of a simulated fleet while a worker owns the data directory: the worker creates it, once', async () => {
  const dataDir = join(tmp, 'owned');
  const taskQueue = `finit-${process.pid}`;
  trustFixtureSigner(dataDir);
  const services = await openServices(dataDir, ROOT, { kind: 'simulated' });
  let closed = false;
  try {
    const worker = await createFleetgateWorker({ connection, namespace: 'default', taskQueue, services });
    await worker.runUntil(async () => {
      const first = await fleetInit(dataDir, taskQueue);
      assert.equal(first.code, 0, first.stderr);
      assert.match(first.stdout, LINE(dataDir, 'created'));
      assert.match(first.stderr, /the worker on task queue "finit-\d+" creates the fleet/);

      // The owner's database holds the fleet: every cohort's vehicles, by pseudonym, on its production.
      const reader = await services.db.connection.runAndReadAll(
        `SELECT cohort, CAST(count(*) AS INTEGER) AS n, min(slot_a) AS lo, max(slot_a) AS hi,
                CAST(count(*) FILTER (WHERE vehicle LIKE 'testfleet-%') AS INTEGER) AS raw
         FROM vehicles WHERE fleet = 'testfleet' GROUP BY cohort ORDER BY cohort`,
      );
      const rows = reader.getRowObjectsJson() as unknown as {
        cohort: string;
        n: number;
        lo: string;
        hi: string;
        raw: number;
      }[];
      assert.deepEqual(rows.map((r) => r.cohort).sort(), [...COHORTS].sort());
      for (const r of rows) {
        const { pointer } = await readPointer(services.store, r.cohort, 'production');
        assert.equal(r.n, 300, r.cohort);
        assert.equal(r.lo, pointer?.digest, `${r.cohort} runs its production`);
        assert.equal(r.hi, pointer?.digest, `${r.cohort} runs its production`);
        assert.equal(r.raw, 0, 'vehicles are pseudonyms');
      }

      const second = await fleetInit(dataDir, taskQueue);
      assert.equal(second.code, 0, second.stderr);
      assert.match(second.stdout, LINE(dataDir, 'already there'));
      const [count] = (
        await services.db.connection.runAndReadAll(
          `SELECT CAST(count(*) AS INTEGER) AS n FROM vehicles WHERE fleet = 'testfleet'`,
        )
      ).getRowObjectsJson() as unknown as { n: number }[];
      assert.equal(count?.n, 900, 'the second init added no vehicle');
    });
    await services.close();
    closed = true;

    // No owner any more: fleet init opens the database itself, as before.
    const alone = await fleetInit(dataDir, taskQueue);
    assert.equal(alone.code, 0, alone.stderr);
    assert.match(alone.stdout, LINE(dataDir, 'already there'));
    assert.doesNotMatch(alone.stderr, /creates the fleet/);
  } finally {
    if (!closed) await services.close();
  }
});

void test('fleet init of a simulated fleet while another process owns the data directory and Temporal does not answer, or no worker serves the task queue: it says so (naming TEMPORAL_ADDRESS) and writes nothing', async () => {
  const dataDir = join(tmp, 'unreachable');
  const taskQueue = `finit-unreachable-${process.pid}`;
  trustFixtureSigner(dataDir);
  // This process holds the fleet database open, as a running worker does.
  const services = await openServices(dataDir, ROOT, { kind: 'simulated' });
  try {
    const port = await freePort();
    const unreachable = await fleetInit(dataDir, taskQueue, { TEMPORAL_ADDRESS: `127.0.0.1:${port}` });
    assert.equal(unreachable.code, 1, unreachable.stderr);
    assert.equal(unreachable.stdout, '');
    assert.equal(unreachable.stderr.trim().split('\n').length, 1, unreachable.stderr);
    assert.match(unreachable.stderr, new RegExp(`open in another process \\(PID ${process.pid}\\)`));
    assert.match(unreachable.stderr, new RegExp(`127\\.0\\.0\\.1:${port} \\(TEMPORAL_ADDRESS\\)`));
    assert.match(unreachable.stderr, /Set TEMPORAL_ADDRESS to the server that worker uses/);

    // Temporal answers but no worker serves the task queue: nothing would create the fleet, it says so.
    const unserved = await fleetInit(dataDir, taskQueue);
    assert.equal(unserved.code, 1, unserved.stderr);
    assert.equal(unserved.stderr.trim().split('\n').length, 1, unserved.stderr);
    assert.match(
      unserved.stderr,
      /no worker serves task queue "finit-unreachable-\d+" .*nobody polls its activities/,
    );
    assert.match(
      unserved.stderr,
      /start "fleetgate worker" with this FLEETGATE_DATA_DIR and FLEETGATE_TASK_QUEUE/,
    );
    for (const c of COHORTS) {
      assert.equal((await readPointer(services.store, c, 'production')).pointer, null, 'nothing registered');
    }
  } finally {
    await services.close();
  }
});

void test("fleet init of a simulated fleet while a data worker holds the store's lease goes through that worker, not the local database", async () => {
  const dataDir = join(tmp, 'leased');
  trustFixtureSigner(dataDir);
  // A live data worker of the store (workers/data-lease.ts), on another data directory: the local fleet
  // database is free, but it is not the owner's.
  const store = openObjectStore({ kind: 'local' }, dataDir);
  const holder = leaseHolder('0123456789ab'.repeat(2), 4242, 'host-b');
  await acquireLease(store, holder);
  const port = await freePort();
  const r = await fleetInit(dataDir, `finit-leased-${process.pid}`, {
    TEMPORAL_ADDRESS: `127.0.0.1:${port}`,
  });
  assert.equal(r.code, 1, r.stdout + r.stderr);
  assert.match(
    r.stderr,
    /the data worker 4242@host-b dir=0123456789ab holds the store's lease \(owner\/lease\.json\)/,
  );
  assert.match(r.stderr, new RegExp(`127\\.0\\.0\\.1:${port} \\(TEMPORAL_ADDRESS\\)`));
  assert.equal(existsSync(join(dataDir, 'fleet.duckdb')), false, 'the local database was not opened');
});

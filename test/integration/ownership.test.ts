/**
 * One data store per task queue, on a real Temporal dev server: worker A runs in this process on a real
 * world (DuckDB, local store); worker B is a real `fleetgate worker` process with a data directory of its
 * own. B is refused before it polls A's task queue (exit 1, one `fleetgate: ...` line naming A); B on
 * another queue, or A restarted on its own store, is fine; when A and B do get to poll one queue (B first,
 * then A), both stop within seconds instead of splitting the activities; FLEETGATE_SHARED_QUEUE=1
 * lets the operator who knows better through, with a note.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NativeConnection, type Worker } from '@temporalio/worker';
import { startDevServer, type DevServer } from '../../workers/dev-server';
import { createFleetgateWorker, quietRuntime } from '../../workers/worker';
import { TaskQueueOwnerError, describePollers, type OwnershipOptions } from '../../workers/ownership';
import { ROOT, makeWorld, type World } from '../support';

let server: DevServer;
let tmp: string;
let connection: NativeConnection;
let worldA: World;
/** Every `fleetgate worker` started, killed after the tests if one is still running (a failed test). */
const children: ChildProcess[] = [];

before(async () => {
  quietRuntime();
  tmp = mkdtempSync(join(tmpdir(), 'fleetgate-owner-it-'));
  server = await startDevServer({ dbFile: join(tmp, 'temporal.db') });
  connection = await NativeConnection.connect({ address: server.address });
  worldA = await makeWorld();
});

after(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await connection?.close();
  await worldA?.close();
  await server?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `p`'s value, or undefined when it has not settled within `ms`. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), ms)));
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Waits until the server lists a poller of `taskQueue`'s activities that `match`es; returns its identity. */
async function polling(taskQueue: string, match: (identity: string) => boolean): Promise<string> {
  for (let i = 0; ; i++) {
    const pollers = await describePollers(connection, 'default', taskQueue);
    const found = pollers.find((p) => p.kind === 'activity' && match(p.identity));
    if (found) return found.identity;
    if (i > 600) assert.fail(`nobody polled ${taskQueue} as expected: ${JSON.stringify(pollers)}`);
    await sleep(100);
  }
}

function workerA(taskQueue: string, ownership: OwnershipOptions = {}): Promise<Worker> {
  return createFleetgateWorker({
    connection,
    namespace: 'default',
    taskQueue,
    services: worldA.services,
    ownership,
  });
}

interface Cli {
  child: ChildProcess;
  stderr(): string;
  /** Exit code and stderr once it ended. */
  exited: Promise<{ code: number | null; stderr: string }>;
}

/** `fleetgate worker` in a process of its own, on the data directory `dataDir` and task queue `taskQueue`. */
function cliWorker(dataDir: string, taskQueue: string, extra: NodeJS.ProcessEnv = {}): Cli {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    TEMPORAL_ADDRESS: server.address,
    FLEETGATE_DATA_DIR: dataDir,
    FLEETGATE_TASK_QUEUE: taskQueue,
    ...extra,
  };
  for (const name of [
    'FLEETGATE_STORE',
    'FLEETGATE_OTA',
    'OTEL_EXPORTER_OTLP_ENDPOINT',
    'FLEETGATE_WEBHOOK_URL',
  ])
    delete env[name];
  if (!extra.FLEETGATE_SHARED_QUEUE) delete env.FLEETGATE_SHARED_QUEUE;
  const child = spawn(process.execPath, [join(ROOT, 'bin', 'fleetgate.js'), 'worker'], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  children.push(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; stderr: string }>((done) =>
    child.on('exit', (code) => done({ code, stderr })),
  );
  return { child, stderr: () => stderr, exited };
}

/** Stops a `fleetgate worker` as Ctrl-C would, and returns how it ended. */
async function stop(cli: Cli): Promise<{ code: number | null; stderr: string }> {
  if (cli.child.exitCode === null) cli.child.kill('SIGINT');
  return cli.exited;
}

const STORE_OF = (identity: string) => identity.split(' store=')[1];

test('a worker with another data directory is refused on a served task queue; same store or another queue is fine', async () => {
  const queue = `owner-${process.pid}`;
  const a = await workerA(queue);
  const identityA = a.options.identity!;
  await a.runUntil(async () => {
    await polling(queue, (id) => id === identityA);

    const b = cliWorker(join(tmp, 'b'), queue);
    const refused = await within(b.exited, 30_000);
    if (!refused) {
      await stop(b);
      assert.fail(`worker B still served A's task queue after 30 s: ${b.stderr()}`);
    }
    assert.match(identityA, /^fleetgate\/\d+@\S+ store=[0-9a-f]{12}$/);
    assert.equal(refused.code, 1, refused.stderr);
    const lines = refused.stderr.trim().split('\n');
    assert.equal(lines.length, 1, refused.stderr);
    assert.match(lines[0]!, new RegExp(`^fleetgate: refusing to start: task queue "${queue}" is served by `));
    assert.ok(lines[0]!.includes(`${identityA} (workflows and activities, last seen `), lines[0]);
    assert.match(lines[0]!, /Stop that worker, or point this one at the same data directory/);
    assert.match(lines[0]!, /start this one again in \d+ s/);
    assert.match(lines[0]!, /FLEETGATE_SHARED_QUEUE=1 skips this check/);

    // B's data directory on a queue of its own is fine.
    const own = cliWorker(join(tmp, 'b'), `${queue}-b`);
    const identityB = await polling(`${queue}-b`, (id) => id.startsWith('fleetgate/'));
    assert.notEqual(STORE_OF(identityB), STORE_OF(identityA));
    const ended = await stop(own);
    assert.equal(ended.code, 0, ended.stderr);
    assert.match(
      ended.stderr,
      new RegExp(`task queue "${queue}-b" .*identity ${identityB.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`),
    );
  });

  // A restarted on its own store while its last polls are still listed (as after a crash or an upgrade):
  // not refused. Then the operator who knows better: B through the override, with a note.
  // Its next looks come later than this test lasts: it would (rightly) stop for B, which has the override
  // and it has not.
  const again = await workerA(queue, { firstRecheckMs: 600_000, recheckEveryMs: 600_000 });
  assert.equal(again.options.identity!.split(' store=')[1], STORE_OF(identityA));
  await again.runUntil(async () => {
    await polling(queue, (id) => id === again.options.identity);
    const forced = cliWorker(join(tmp, 'b'), queue, { FLEETGATE_SHARED_QUEUE: '1' });
    await polling(queue, (id) => id.startsWith('fleetgate/') && STORE_OF(id) !== STORE_OF(identityA));
    const forcedEnd = await stop(forced);
    assert.equal(forcedEnd.code, 0, forcedEnd.stderr);
    assert.match(
      forcedEnd.stderr,
      new RegExp(
        `fleetgate: note: FLEETGATE_SHARED_QUEUE=1: task queue "${queue}" is served without checking`,
      ),
    );
  });
});

test('two workers with different stores polling one queue both stop within seconds, naming each other', async () => {
  const queue = `owner-race-${process.pid}`;
  // A is created (and checked) while nobody polls; B then starts and polls first; A then runs too.
  const a = await workerA(queue, { firstRecheckMs: 500, recheckEveryMs: 500 });
  const b = cliWorker(join(tmp, 'race-b'), queue);
  let identityB: string;
  try {
    identityB = await polling(queue, (id) => id.startsWith('fleetgate/'));
  } catch (err) {
    await a.runUntil(Promise.resolve()); // a worker never run keeps the connection held
    await stop(b);
    throw err;
  }
  const started = Date.now();
  const run = a.run().then(
    () => 'stopped without an error',
    (err: unknown) => err,
  );
  const first = await within(run, 30_000);
  if (first === undefined) {
    a.shutdown();
    await run;
    await stop(b);
    assert.fail('worker A still served the queue 30 s after another store polled it');
  }
  const err = first as Error;
  assert.ok(err instanceof TaskQueueOwnerError, String(err));
  assert.match(err.message, new RegExp(`^stopped polling: task queue "${queue}" is served by `));
  assert.ok(err.message.includes(identityB), err.message);

  // B looks again 5 s after it started (the CLI's timing) and stops too, naming A.
  const bEnd = await within(b.exited, 30_000);
  if (!bEnd) {
    await stop(b);
    assert.fail('worker B still served the queue 30 s after worker A polled it');
  }
  assert.equal(bEnd.code, 1, bEnd.stderr);
  const last = bEnd.stderr.trim().split('\n').at(-1)!;
  assert.match(last, new RegExp(`^fleetgate: stopped polling: task queue "${queue}" is served by `));
  assert.ok(last.includes(a.options.identity!), last);
  assert.ok(Date.now() - started < 30_000);
});

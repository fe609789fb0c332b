/**
 * Faults of the processes, on a real dev server with `fleetgate worker` processes: a worker SIGKILLed
 * while an activity runs on it. Its activity is noticed dead by its heartbeat timeout (seconds, not the
 * five minutes of its start-to-close timeout) and retried on the next worker; `fleetgate status` says
 * what the rollout waits on even when no worker answers; an abort sent meanwhile does not wait for the
 * dead activity, and leaves no vehicle on the candidate.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { DuckDBInstance } from '@duckdb/node-api';
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import { startDevServer, type DevServer } from '../../workers/dev-server';
import { quietRuntime } from '../../workers/worker';
import { abortUpdate, type RolloutResult } from '../../workflows/definitions';
import { RolloutRequest } from '../../policies/schema';
import { LONG_ONLY, ROOT, loadPolicy, resultWithin, rolloutRequest } from '../support';

const BIN = join(ROOT, 'bin', 'fleetgate.js');
const FLEET = 'test/fixtures/fleet.yaml';

let server: DevServer;
let tmp: string;
let client: Client;
let connection: Connection;
const children = new Set<ChildProcess>();

before(async () => {
  quietRuntime();
  tmp = mkdtempSync(join(tmpdir(), 'fleetgate-faults-'));
  server = await startDevServer({ dbFile: join(tmp, 'temporal.db') });
  connection = await Connection.connect({ address: server.address });
  client = new Client({ connection });
});

after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await connection?.close();
  await server?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

function envFor(dataDir: string, taskQueue: string): NodeJS.ProcessEnv {
  return {
    ...process.env,
    FLEETGATE_DATA_DIR: dataDir,
    FLEETGATE_TASK_QUEUE: taskQueue,
    TEMPORAL_ADDRESS: server.address,
  };
}

/** Runs one `fleetgate` command to its end; its exit code and output. */
async function fleetgate(
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [BIN, ...args], {
      cwd: ROOT,
      env,
      encoding: 'utf8',
      timeout: 120_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** A data directory with the fixture signer trusted and the test fleet initialised. */
async function dataDir(name: string, taskQueue: string): Promise<string> {
  const dir = join(tmp, name);
  const env = envFor(dir, taskQueue);
  for (const args of [
    ['model', 'trust', 'add', 'models/keys/fixture-signer.pub'],
    ['fleet', 'init', '--fleet', FLEET],
  ]) {
    const r = await fleetgate(args, env);
    assert.equal(r.code, 0, `fleetgate ${args.join(' ')}: ${r.stderr}`);
  }
  return dir;
}

/** `fleetgate worker` as a process of its own, once it has said it serves its task queue. */
async function startWorker(env: NodeJS.ProcessEnv): Promise<ChildProcess> {
  const child = spawn(process.execPath, [BIN, 'worker'], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  children.add(child);
  child.on('exit', () => children.delete(child));
  let said = '';
  await new Promise<void>((resolve, reject) => {
    child.stderr!.on('data', (d: Buffer) => {
      said += d.toString();
      if (said.includes('fleetgate worker: task queue')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`the worker exited (${code}) before serving: ${said}`)));
  });
  return child;
}

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGKILL');
  await once(child, 'exit');
}

function request(id: string, candidate: string, manyWaves = false) {
  const policy = loadPolicy('examples/demo-policy.yaml');
  policy.shadow!.duration = '3s';
  delete policy.shadow!.classGates;
  policy.waves = manyWaves
    ? [1, 2, 4, 8, 16, 32, 48, 64].map((percent) => ({ percent, hold: '1s', looks: 1 }))
    : [
        { percent: 5, hold: '8s', looks: 2 },
        { percent: 50, hold: '8s', looks: 2 },
      ];
  policy.labelWait = { coverage: 0.9, poll: '2s', timeout: '20s' };
  policy.analysis.escalation = { timeout: '10s' };
  return RolloutRequest.parse(rolloutRequest(id, candidate, policy, FLEET, 7200));
}

/**
 * Waits until one of `types` is running on a worker, then SIGKILLs `worker` at once. Returns the
 * activity that was in flight when it died (the server still shows it started, attempt 1), or undefined
 * when it finished first.
 */
async function killDuring(
  handle: WorkflowHandle,
  worker: ChildProcess,
  types: string[],
): Promise<string | undefined> {
  for (const deadline = Date.now() + 90_000; Date.now() < deadline;) {
    const { raw } = await handle.describe();
    const running = (raw.pendingActivities ?? []).find(
      (a) => types.includes(a.activityType?.name ?? '') && a.state === 2 && (a.attempt ?? 1) === 1,
    );
    if (running) {
      await kill(worker);
      const after = (await handle.describe()).raw.pendingActivities ?? [];
      const still = after.find((a) => a.activityId === running.activityId && a.state === 2);
      return still ? running.activityType!.name! : undefined;
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.fail(`none of ${types.join(', ')} ran within 90 s`);
}

/** Vehicles of the fleet database in `dir` whose active slot runs `digest` (read once no worker has it open). */
async function onCandidate(dir: string, digest: string): Promise<number> {
  const db = await DuckDBInstance.create(join(dir, 'fleet.duckdb'));
  const conn = await db.connect();
  try {
    const reader = await conn.runAndReadAll(
      `SELECT CAST(count(*) AS INTEGER) AS n FROM vehicles
       WHERE (CASE WHEN active = 'a' THEN slot_a ELSE slot_b END) = '${digest}'`,
    );
    return Number(reader.getRowObjectsJson()[0]!.n);
  } finally {
    conn.closeSync();
    db.closeSync();
  }
}

/** Starts the rollout and kills `worker` while a canary look's activity runs on it (retrying with a new worker when the kill missed). */
async function rolloutWithKilledWorker(
  id: string,
  candidate: string,
  env: NodeJS.ProcessEnv,
  taskQueue: string,
  types = ['collectTelemetry', 'analyze'],
): Promise<{ handle: WorkflowHandle; killed: string }> {
  let worker = await startWorker(env);
  const handle = await client.workflow.start('rolloutWorkflow', {
    taskQueue,
    workflowId: id,
    args: [request(id, candidate, types.includes('deliverWave'))],
  });
  for (let tries = 0; tries < 5; tries++) {
    const killed = await killDuring(handle, worker, types);
    if (killed) return { handle, killed };
    worker = await startWorker(env); // the activity ended before the kill: try the next one
  }
  assert.fail('no kill landed while a look ran, in 5 tries');
}

test(
  'a worker killed mid-look: status names the activity in flight, the next worker retries it after the heartbeat timeout, the rollout completes',
  { skip: LONG_ONLY },
  async () => {
    const taskQueue = `faults-retry-${process.pid}`;
    const dir = await dataDir('retry', taskQueue);
    const env = envFor(dir, taskQueue);
    const id = `faults-retry-${process.pid}`;
    const { handle, killed } = await rolloutWithKilledWorker(id, 'models/candidate-good', env, taskQueue);

    // No worker is alive: the status query cannot be answered, but the server's view says why it waits.
    const status = await fleetgate(['status', id], env);
    assert.equal(status.code, 1);
    assert.match(status.stderr, /no answer from rollout/);
    assert.match(status.stderr, new RegExp(`in flight: activity ${killed} started, attempt 1`));

    const next = await startWorker(env);
    try {
      // Its start-to-close timeout is 5 minutes: a retry that comes within this bound came from the
      // heartbeat timeout.
      const result: RolloutResult = await resultWithin(handle, 150_000);
      assert.equal(result.outcome, 'completed', result.reason);
      const retried = (await handle.fetchHistory()).events!.filter(
        (e) =>
          e.activityTaskStartedEventAttributes && (e.activityTaskStartedEventAttributes.attempt ?? 1) > 1,
      );
      assert.ok(retried.length > 0, 'the killed activity was retried');
      const lastFailure = retried.map(
        (e) => e.activityTaskStartedEventAttributes!.lastFailure?.message ?? '',
      );
      assert.ok(
        lastFailure.some((m) => /heartbeat/i.test(m)),
        `a retry follows a heartbeat timeout: ${lastFailure.join('; ')}`,
      );
    } finally {
      await kill(next);
    }
  },
);

test(
  'an abort sent while an activity hangs on a dead worker does not wait for it, and every change is compensated',
  { skip: LONG_ONLY },
  async () => {
    const taskQueue = `faults-abort-${process.pid}`;
    const dir = await dataDir('abort', taskQueue);
    const env = envFor(dir, taskQueue);
    const id = `faults-abort-${process.pid}`;
    const { handle } = await rolloutWithKilledWorker(id, 'models/candidate-good', env, taskQueue);
    const next = await startWorker(env);
    let result: RolloutResult;
    try {
      // The dead activity's start-to-close timeout is 5 minutes; the abort cancels what only reads without
      // waiting for it (it waits at most for the workflow's tasks to move off the dead worker's queue).
      const receipt = await Promise.race([
        handle.executeUpdate(abortUpdate, { args: [{ reason: 'chaos drill', by: 'ops' }] }),
        new Promise<never>((_, reject) =>
          setTimeout(() => reject(new Error('the abort still waits after 60 s')), 60_000),
        ),
      ]);
      assert.equal(receipt.outcome, 'aborted');
      assert.ok(receipt.compensations > 0, 'the delivered wave and the candidate pointers were compensated');
      result = (await handle.result()) as RolloutResult;
      assert.equal(result.outcome, 'aborted');
    } finally {
      await kill(next);
    }
    const report = JSON.parse(readFileSync(result.reportPath!, 'utf8')) as { candidate: { digest: string } };
    assert.equal(await onCandidate(dir, report.candidate.digest), 0, 'no vehicle runs the candidate');
  },
);

test(
  'an abort sent while a delivery hangs on a dead worker cancels it: the delivery is not retried, nothing stays installed',
  { skip: LONG_ONLY },
  async () => {
    const taskQueue = `faults-deliver-${process.pid}`;
    const dir = await dataDir('deliver', taskQueue);
    const env = envFor(dir, taskQueue);
    const id = `faults-deliver-${process.pid}`;
    const { handle } = await rolloutWithKilledWorker(id, 'models/candidate-good', env, taskQueue, [
      'deliverWave',
    ]);
    const next = await startWorker(env);
    let result: RolloutResult;
    try {
      // A delivery used to be non-cancellable: the abort waited out its 5-minute start-to-close timeout, then
      // its retry delivered the wave, then it was reverted. Now the abort cancels it; its worker being dead,
      // it ends at its heartbeat timeout (20 s) and is not retried.
      const receipt = await Promise.race([
        handle.executeUpdate(abortUpdate, { args: [{ reason: 'chaos drill', by: 'ops' }] }),
        new Promise<never>((_, reject) =>
          setTimeout(() => reject(new Error('the abort still waits after 90 s')), 90_000),
        ),
      ]);
      assert.equal(receipt.outcome, 'aborted');
      result = (await handle.result()) as RolloutResult;
    } finally {
      await kill(next);
    }
    // No activity ran a second attempt: the delivery on the dead worker was not retried after the abort.
    const retried = (await handle.fetchHistory()).events!.filter(
      (e) => (e.activityTaskStartedEventAttributes?.attempt ?? 1) > 1,
    );
    assert.equal(retried.length, 0, 'the cancelled delivery was not retried');
    const report = JSON.parse(readFileSync(result.reportPath!, 'utf8')) as { candidate: { digest: string } };
    assert.equal(await onCandidate(dir, report.candidate.digest), 0, 'no vehicle runs the candidate');
  },
);

test('workflow workers on two processes serve one rollout beside the owner of the data; a second owner is refused', async () => {
  const taskQueue = `faults-roles-${process.pid}`;
  const dir = await dataDir('roles', taskQueue);
  const env = envFor(dir, taskQueue);
  const data = await startWorker({ ...env, FLEETGATE_WORKER_ROLE: 'activities' });
  const workflows = { ...env, FLEETGATE_WORKER_ROLE: 'workflows' };
  let first: ChildProcess | undefined;
  let second: ChildProcess | undefined;
  try {
    // Another owner of the same data directory: refused with the holder's PID, not DuckDB's lock error.
    const refused = await fleetgate(['worker'], { ...env, FLEETGATE_WORKER_ROLE: 'activities' });
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, new RegExp(`open in another process \\(PID ${data.pid}\\)`));
    assert.doesNotMatch(refused.stderr, /Could not set lock/);

    first = await startWorker(workflows);
    const id = `faults-roles-${process.pid}`;
    const handle = await client.workflow.start('rolloutWorkflow', {
      taskQueue,
      workflowId: id,
      args: [request(id, 'models/candidate-good')],
    });
    // The workflow worker dies once the canary has begun; another one takes the rollout over.
    for (const deadline = Date.now() + 90_000; ;) {
      const { raw } = await handle.describe();
      if ((raw.pendingActivities ?? []).some((a) => a.activityType?.name === 'collectTelemetry')) break;
      assert.ok(Date.now() < deadline, 'the canary did not begin within 90 s');
      await new Promise((r) => setTimeout(r, 50));
    }
    await kill(first);
    second = await startWorker(workflows);
    const result: RolloutResult = await resultWithin(handle, 150_000);
    assert.equal(result.outcome, 'completed', result.reason);

    const events = (await handle.fetchHistory()).events!;
    const workflowIdentities = new Set(
      events.flatMap((e) =>
        e.workflowTaskStartedEventAttributes ? [e.workflowTaskStartedEventAttributes.identity!] : [],
      ),
    );
    assert.ok(
      [first.pid, second.pid].every((pid) =>
        [...workflowIdentities].some((i) => i.startsWith(`fleetgate/${pid}@`)),
      ),
      `both workflow workers ran the rollout's workflow tasks: ${[...workflowIdentities].join(', ')}`,
    );
    assert.ok(
      [...workflowIdentities].every((i) => i.endsWith(' workflows')),
      'no other worker ran a workflow task',
    );
    const activityIdentities = new Set(
      events.flatMap((e) =>
        e.activityTaskStartedEventAttributes ? [e.activityTaskStartedEventAttributes.identity!] : [],
      ),
    );
    assert.equal(activityIdentities.size, 1, [...activityIdentities].join(', '));
    assert.match([...activityIdentities][0]!, new RegExp(`^fleetgate/${data.pid}@.* store=[0-9a-f]{12}$`));
  } finally {
    if (first) await kill(first);
    if (second) await kill(second);
    await kill(data);
  }
});

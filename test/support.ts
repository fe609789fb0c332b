/**
 * Shared set-up of the workflow and integration tests: a fresh data directory with a registry whose
 * production pointers are seeded, a simulated fleet, and helpers to read the fleet's delivery log.
 * Everything is real: onnxruntime, DuckDB, the object store; only the directory is temporary.
 */
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import YAML from 'yaml';
import type { WorkflowHandle } from '@temporalio/client';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { after, before } from 'node:test';
import { Worker, type WorkflowBundle } from '@temporalio/worker';
import { historyToJSON } from '@temporalio/common/lib/proto-utils';
import { openSimWorld } from '../sim/world';
import { createActivities, quietRuntime, type Services } from '../workers/worker';
import { temporalCli, temporalTestServer } from '../workers/tools';
import { getWorkflowBundle } from '../workers/bundle';
import { WORKFLOW_TYPE, statusQuery, type RolloutResult } from '../workflows/definitions';
import type { MetricResult } from '../policies/decide';
import type { PolicyInput, RolloutRequestInput } from '../policies/schema';

export const ROOT = resolve(__dirname, '..');

export interface World {
  dataDir: string;
  services: Services;
  cohorts: string[];
  productionDigest: string;
  close(): Promise<void>;
}

/** A data directory with production registered for every cohort of `fleet` and the fleet initialised. */
export async function makeWorld(fleet = 'test/fixtures/fleet.yaml'): Promise<World> {
  const dataDir = mkdtempSync(join(tmpdir(), 'fleetgate-test-'));
  return openSimWorld({ dataDir, root: ROOT, fleet, production: 'models/production', by: 'test' });
}

export function loadPolicy(file: string): PolicyInput {
  return YAML.parse(readFileSync(join(ROOT, file), 'utf8')) as PolicyInput;
}

/**
 * examples/demo-policy.yaml, shortened for a candidate-regress rollout on a dev server at 7200x that ends
 * in about a minute: a 3 s shadow, three 6 s waves of two looks with a one-reviewer gate "wave-2" on the
 * second. At 7200x the shadow's labels would already show the night recall drop and reject hw3/nordic at
 * the shadow's class gates (that path is tested in test/workflow/shadow.test.ts), so they are off: the
 * regression is followed through every phase to its rollback in the canary. Data too thin to decide holds
 * its cohorts after 10 s instead of waiting a day for the reviewers.
 */
export function devServerRegressPolicy(): PolicyInput {
  const policy = loadPolicy('examples/demo-policy.yaml');
  policy.shadow!.duration = '3s';
  delete policy.shadow!.classGates;
  policy.waves = [
    { percent: 5, hold: '6s', looks: 2 },
    { percent: 25, hold: '6s', looks: 2, approval: { gate: 'wave-2', required: 1, timeout: '10m' } },
    { percent: 50, hold: '6s', looks: 2 },
  ];
  policy.labelWait = { coverage: 0.9, poll: '2s', timeout: '20s' };
  policy.analysis.escalation = { timeout: '10s' };
  return policy;
}

/**
 * Runs the Temporal CLI against `address` without blocking this process's event loop (a worker under
 * test may run here too, and the CLI's update waits for it); its standard output.
 */
export async function temporalAsync(address: string, args: string[]): Promise<string> {
  const { stdout } = await promisify(execFile)(temporalCli(), [...args, '--address', address], {
    encoding: 'utf8',
  });
  return stdout;
}

export function rolloutRequest(
  rolloutId: string,
  candidate: string,
  policy: PolicyInput,
  fleet = 'test/fixtures/fleet.yaml',
  timeScale = 1,
): RolloutRequestInput {
  return {
    rolloutId,
    candidate: { pack: candidate },
    fleet: { manifest: fleet, timeScale },
    policy,
    requestedBy: 'test',
  };
}

export async function query<T = Record<string, unknown>>(w: World, sql: string): Promise<T[]> {
  const reader = await w.services.db.connection.runAndReadAll(sql);
  return reader.getRowObjectsJson() as unknown as T[];
}

/** Rows of the OTA delivery log: one per (job, op, cohort) with the number of vehicles touched. */
export async function otaOps(w: World) {
  return query<{ job_id: string; op: string; cohort: string; vehicles: number }>(
    w,
    'SELECT job_id, op, cohort, CAST(vehicles AS INTEGER) AS vehicles FROM ota_ops ORDER BY seq',
  );
}

/** Vehicles per cohort whose active slot runs `digest`. */
export async function runningDigest(w: World, digest: string): Promise<Record<string, number>> {
  const rows = await query<{ cohort: string; n: number }>(
    w,
    `SELECT cohort, CAST(count(*) AS INTEGER) AS n FROM vehicles
     WHERE (CASE WHEN active = 'a' THEN slot_a ELSE slot_b END) = '${digest}' GROUP BY cohort`,
  );
  return Object.fromEntries(rows.map((r) => [r.cohort, r.n]));
}

/** Saves a workflow's history for the replay test when FLEETGATE_RECORD_HISTORIES is set. */
export async function maybeSaveHistory(name: string, handle: WorkflowHandle): Promise<void> {
  if (!process.env.FLEETGATE_RECORD_HISTORIES) return;
  const history = await handle.fetchHistory();
  const dir = join(ROOT, 'test', 'histories');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, `${name}.json`), historyToJSON(history));
}

let taskQueues = 0;
/** Workflow ids started through `startRollout`, per task queue. */
const started = new Map<string, string[]>();

/** Runs `fn` with a worker serving `world` on a task queue of its own in the test environment `env`. */
export async function withWorker<T>(
  env: TestWorkflowEnvironment,
  bundle: WorkflowBundle,
  world: World,
  fn: (taskQueue: string) => Promise<T>,
): Promise<T> {
  const taskQueue = `wf-test-${process.pid}-${++taskQueues}`;
  const worker = await Worker.create({
    connection: env.nativeConnection,
    taskQueue,
    workflowBundle: bundle,
    activities: createActivities(world.services),
  });
  try {
    return await worker.runUntil(fn(taskQueue));
  } catch (err) {
    // A failed test must not leave its rollout running: the time-skipping server would stop skipping
    // time for the next test while that rollout waits for a worker that is gone.
    for (const id of started.get(taskQueue) ?? []) {
      await env.client.workflow
        .getHandle(id)
        .terminate('the test failed')
        .catch(() => undefined); // already finished
    }
    throw err;
  } finally {
    started.delete(taskQueue);
  }
}

/** Starts a rollout on `taskQueue`, its workflow id being the rollout id. */
export function startRollout(env: TestWorkflowEnvironment, taskQueue: string, req: RolloutRequestInput) {
  started.set(taskQueue, [...(started.get(taskQueue) ?? []), req.rolloutId]);
  return env.client.workflow.start(WORKFLOW_TYPE, { taskQueue, workflowId: req.rolloutId, args: [req] });
}

/**
 * The time-skipping test server and the workflow bundle of a test file: started before its tests,
 * torn down after them. Read `env` and `bundle` inside tests, once `before` has run.
 */
export function timeSkippingServer(): { env: TestWorkflowEnvironment; bundle: WorkflowBundle } {
  const server = {} as { env: TestWorkflowEnvironment; bundle: WorkflowBundle };
  before(async () => {
    quietRuntime();
    server.env = await TestWorkflowEnvironment.createTimeSkipping({
      server: { executable: { type: 'existing-path', path: temporalTestServer() } },
    });
    server.bundle = await getWorkflowBundle();
  });
  after(async () => {
    await server.env?.teardown();
  });
  return server;
}

/** One entry of a rollout's decision log, as its report file holds it. */
export interface ReportEntry {
  phase: string;
  action: string;
  cohort?: string;
  wave?: number;
  reason: string;
  dataAsOf?: string;
  metrics?: MetricResult[];
}

/** The report file an ended rollout wrote: its decision log and the candidate it rolled out. */
export function reportOf(result: RolloutResult): { decisions: ReportEntry[]; candidate: { digest: string } } {
  return JSON.parse(readFileSync(result.reportPath!, 'utf8'));
}

/** Runs one rollout of `pack` under `policy` on `world` to its end on the test server, and returns its result. */
export function runRollout(
  server: { env: TestWorkflowEnvironment; bundle: WorkflowBundle },
  world: World,
  id: string,
  pack: string,
  policy: PolicyInput,
  fleet?: string,
): Promise<RolloutResult> {
  return withWorker(server.env, server.bundle, world, async (tq) => {
    const handle = await startRollout(server.env, tq, rolloutRequest(id, pack, policy, fleet));
    return handle.result();
  });
}

/**
 * The result of a rollout on a real-time server, or, when it has not ended within `limitMs`, a failure
 * that says where it stands (its status and pending gate) after terminating it: a test on the dev server
 * never waits out a real-time gate (a day-long escalation, say) or the runner's file timeout.
 */
export async function resultWithin(handle: WorkflowHandle, limitMs: number): Promise<RolloutResult> {
  let timer: NodeJS.Timeout | undefined;
  const stuck = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      void (async () => {
        const status = await handle.query(statusQuery).catch((err: unknown) => String(err));
        reject(
          new Error(
            `rollout ${handle.workflowId} did not end within ${limitMs / 1000}s: ${JSON.stringify(status)}`,
          ),
        );
        await handle.terminate('the test timed out').catch(() => undefined);
      })();
    }, limitMs);
  });
  try {
    return (await Promise.race([handle.result(), stuck])) as RolloutResult;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The `skip` option of a test that runs with `npm run test:long` only (FLEETGATE_LONG=1), so that
 * `npm test` stays within its time on a 2-core machine: the reason says where it runs.
 */
export const LONG_ONLY: string | false =
  process.env.FLEETGATE_LONG === '1' ? false : 'a long test: it runs with npm run test:long';

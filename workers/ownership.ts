/**
 * One data store per task queue. A rollout's activities run on whichever worker of its task queue polls
 * first; two workers on one queue with different data directories (their own DuckDB fleet databases,
 * local stores or key files) would each run part of them and diverge without a word. So every data
 * directory gets a stable random identity (`<dataDir>/store-id`, created once, mode 0600), a worker's
 * Temporal identity names its store (`fleetgate/<pid>@<host> store=<12 hex>`), and before it polls, then
 * every 30 s while it runs, the worker asks the server who else polls its task queue: a poller seen in
 * the last 2 minutes that names another store makes it refuse to start, or stop, with a message that
 * names that poller and what to do. FLEETGATE_SHARED_QUEUE=1 skips the check for an operator who
 * knows the stores are one.
 *
 * A poller that names no store (an older fleetgate worker, another program) is not refused, since nothing
 * says which store it has and refusing it would block every upgrade from an older worker for two
 * minutes; when it polls for activities, a note names it, once. This module only reads the server's list
 * of pollers and its own identity file: it must never stop another process, and it must never write
 * anything but `<dataDir>/store-id` (which holds no secret: only a random name for the directory).
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { NativeConnection, Worker, WorkerOptions, WorkerPlugin } from '@temporalio/worker';
import { optionalTsToMs } from '@temporalio/common/lib/time';
import type { ObjectStore } from '../activities/deps';
import { S3ObjectStore } from '../activities/store-s3';
import { SHARED_QUEUE_ENV, allowSharedQueue } from './config';
import { createOnce } from './secrets';

/** A poller last seen longer ago than this has stopped (the server lists pollers for a few minutes). */
export const RECENT_MS = 120_000;
/** How often a running worker looks again, and how soon after it starts (two workers starting at once). */
export const RECHECK_EVERY_MS = 30_000;
export const FIRST_RECHECK_MS = 5_000;

/** Path of a data directory's identity file. */
export function storeIdPath(dataDir: string): string {
  return join(dataDir, 'store-id');
}

/**
 * The data directory's random identity (32 hex digits), from `<dataDir>/store-id`, created on first use:
 * written whole under a private name, then linked into place, so that exactly one process creates it and
 * nobody reads it half written.
 */
export function dataDirId(dataDir: string): string {
  const file = storeIdPath(dataDir);
  mkdirSync(dataDir, { recursive: true });
  createOnce(file, () => `${randomBytes(16).toString('hex')}\n`);
  const id = readFileSync(file, 'utf8').trim();
  if (!/^[0-9a-f]{32}$/.test(id)) {
    throw new Error(
      `the data directory's identity file ${file} does not hold 32 lowercase hex digits (it holds ${id.length} characters); ` +
        'delete it and a new identity is made at the next start (other workers then see this one as a new store)',
    );
  }
  return id;
}

/** Where the registry's objects are: "local" (the data directory's `store/`) or "s3://BUCKET/PREFIX". */
export function storeLocation(store: ObjectStore): string {
  return store instanceof S3ObjectStore ? `s3://${store.bucket}/${store.prefix}` : 'local';
}

/**
 * The store id of a data directory and its registry store: 12 hex digits, stable across restarts. When
 * the fleet database is a cache of an S3 store (`owner: 'store'`, workers/data-lease.ts) any data
 * directory on it is the same store, so the id names the object store alone.
 */
export function storeId(
  dataDir: string,
  store: ObjectStore,
  owner: 'directory' | 'store' = 'directory',
): string {
  return createHash('sha256')
    .update(
      owner === 'store'
        ? `object-store\n${storeLocation(store)}`
        : `${dataDirId(dataDir)}\n${storeLocation(store)}`,
    )
    .digest('hex')
    .slice(0, 12);
}

/** The Temporal identity of a worker on store `id` (the SDK's default is `<pid>@<host>`). */
export function workerIdentity(id: string, pid = process.pid, host = hostname()): string {
  return `fleetgate/${pid}@${host} store=${id}`;
}

/** The store id an identity names, or undefined (the Temporal CLI, an older worker, another program). */
export function storeOfIdentity(identity: string): string | undefined {
  return /(?:^|\s)store=([0-9a-f]{12})(?:\s|$)/.exec(identity)?.[1];
}

/** One entry of DescribeTaskQueue's pollers. */
export interface Poller {
  identity: string;
  /** When the server last saw it poll; undefined when the server does not say. */
  lastAccessMs?: number;
  kind: 'workflow' | 'activity';
}

/** A note about a poller that names no store: `poller` is its identity, `text` what to say. */
export interface OwnershipNote {
  poller: string;
  text: string;
}

export type OwnershipDecision = { ok: true; notes: OwnershipNote[] } | { ok: false; message: string };

/**
 * Whether a worker on store `own` may serve `taskQueue`, given the queue's pollers at `nowMs`: refused
 * when a poller seen within `recentMs` names another store; a recent activity poller naming no store is
 * a note. Pure: the message names each foreign poller, when it was last seen and what to do.
 */
export function decideOwnership(input: {
  taskQueue: string;
  own: string;
  pollers: Poller[];
  nowMs: number;
  recentMs?: number;
}): OwnershipDecision {
  const recentMs = input.recentMs ?? RECENT_MS;
  const seen = new Map<string, { kinds: Set<string>; lastMs?: number }>();
  for (const p of input.pollers) {
    const entry = seen.get(p.identity) ?? { kinds: new Set<string>() };
    entry.kinds.add(p.kind);
    if (p.lastAccessMs !== undefined) entry.lastMs = Math.max(entry.lastMs ?? -Infinity, p.lastAccessMs);
    seen.set(p.identity, entry);
  }
  const foreign: string[] = [];
  const notes: OwnershipNote[] = [];
  let waitMs = 0;
  for (const [identity, { kinds, lastMs }] of seen) {
    const ageMs = lastMs === undefined ? undefined : Math.max(0, input.nowMs - lastMs);
    if (ageMs !== undefined && ageMs > recentMs) continue;
    const when =
      ageMs === undefined ? 'last seen at an unknown time' : `last seen ${Math.round(ageMs / 1000)} s ago`;
    const what =
      kinds.size === 2 ? 'workflows and activities' : kinds.has('activity') ? 'activities' : 'workflows';
    const store = storeOfIdentity(identity);
    if (store === input.own) continue;
    if (store === undefined) {
      if (kinds.has('activity')) {
        notes.push({
          poller: identity,
          text:
            `task queue "${input.taskQueue}" is also polled for activities by ${identity} (${when}), which does ` +
            'not name its data store: if it is a fleetgate worker with another data directory, stop it, or the ' +
            "two split rollouts' activities between their stores",
        });
      }
      continue;
    }
    foreign.push(`${identity} (${what}, ${when})`);
    waitMs = Math.max(waitMs, ageMs === undefined ? recentMs : recentMs - ageMs);
  }
  if (foreign.length === 0) return { ok: true, notes };
  const them = foreign.length === 1 ? 'that worker' : 'those workers';
  return {
    ok: false,
    message:
      `task queue "${input.taskQueue}" is served by ${foreign.join(', ')} on another data store than this ` +
      `worker's (store=${input.own}); two stores on one queue split a rollout's activities between them. ` +
      `Stop ${them}, or point this one at the same data directory and FLEETGATE_STORE; if it has stopped, ` +
      `start this one again in ${Math.ceil(waitMs / 1000)} s (the server lists a poller for a while after ` +
      `its last poll). ${SHARED_QUEUE_ENV}=1 skips this check, for stores known to be one`,
  };
}

/** A worker refused its task queue: another data store serves it. */
export class TaskQueueOwnerError extends Error {
  override name = 'TaskQueueOwnerError';
}

function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0]!;
}

/** gRPC status of a method the server does not have. */
const GRPC_UNIMPLEMENTED = 12;
const TASK_QUEUE_KIND_NORMAL = 1;
const TASK_QUEUE_TYPE = { workflow: 1, activity: 2 } as const;

/** The pollers of `taskQueue`'s workflow and activity queues, as the server lists them. */
export async function describePollers(
  connection: Pick<NativeConnection, 'workflowService'>,
  namespace: string,
  taskQueue: string,
): Promise<Poller[]> {
  const lists = await Promise.all(
    (['workflow', 'activity'] as const).map(async (kind) => {
      const res = await connection.workflowService.describeTaskQueue({
        namespace,
        taskQueue: { name: taskQueue, kind: TASK_QUEUE_KIND_NORMAL },
        taskQueueType: TASK_QUEUE_TYPE[kind],
      });
      return (res.pollers ?? []).map((p): Poller => ({
        identity: p.identity ?? '',
        kind,
        ...(p.lastAccessTime ? { lastAccessMs: optionalTsToMs(p.lastAccessTime) } : {}),
      }));
    }),
  );
  return lists.flat();
}

export interface OwnershipOptions {
  /** Where FLEETGATE_SHARED_QUEUE is read (default process.env). */
  env?: NodeJS.ProcessEnv;
  recheckEveryMs?: number;
  firstRecheckMs?: number;
  recentMs?: number;
  /** Where notes go (default stderr, one `fleetgate: note: ...` line each). */
  log?: (line: string) => void;
}

/**
 * The worker plugin that keeps a task queue to one data store: it names the store in the worker's
 * identity, refuses to create the worker when another store serves the queue, and, while the worker runs,
 * stops it (its `run()` then rejects with a TaskQueueOwnerError) as soon as another store shows up.
 * One plugin per worker.
 */
export function taskQueueOwnership(
  services: { dataDir: string; store: ObjectStore; owner?: 'directory' | 'store' },
  options: OwnershipOptions = {},
): WorkerPlugin {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  // Each poller that names no store is noted once, not at every look.
  const noted = new Set<string>();
  const note = (notes: OwnershipNote[]) => {
    for (const n of notes) {
      if (noted.has(n.poller)) continue;
      noted.add(n.poller);
      log(`fleetgate: note: ${n.text}`);
    }
  };
  let check: (() => Promise<OwnershipDecision>) | undefined;
  return {
    name: 'fleetgate-task-queue-ownership',
    async configureWorker(opts: WorkerOptions): Promise<WorkerOptions> {
      const own = storeId(services.dataDir, services.store, services.owner);
      const identity = opts.identity ? `${opts.identity} store=${own}` : workerIdentity(own);
      if (allowSharedQueue(options.env)) {
        log(
          `fleetgate: note: ${SHARED_QUEUE_ENV}=1: task queue "${opts.taskQueue}" is served without ` +
            'checking that its other workers use this data store',
        );
        return { ...opts, identity };
      }
      const connection = opts.connection;
      if (!connection)
        throw new Error("the task queue check needs the worker's connection (WorkerOptions.connection)");
      const namespace = opts.namespace ?? 'default';
      check = async () =>
        decideOwnership({
          taskQueue: opts.taskQueue,
          own,
          pollers: await describePollers(connection, namespace, opts.taskQueue),
          nowMs: Date.now(),
          recentMs: options.recentMs,
        });
      let decision: OwnershipDecision;
      try {
        decision = await check();
      } catch (err) {
        if ((err as { code?: unknown }).code === GRPC_UNIMPLEMENTED) {
          // A server that keeps no list of pollers (the time-skipping test server): nothing to look
          // at, now or later.
          check = undefined;
          log(
            `fleetgate: note: the server does not list task queue "${opts.taskQueue}"'s pollers; ` +
              'the check that one data store serves it is skipped',
          );
          return { ...opts, identity };
        }
        // Without the list (no permission, say) nothing says the queue is this store's alone.
        throw new TaskQueueOwnerError(
          `refusing to start: could not ask the server who polls task queue "${opts.taskQueue}" ` +
            `(${firstLine(err)}); let this worker's credentials describe task queues, or set ` +
            `${SHARED_QUEUE_ENV}=1 to start without the check that one data store serves it`,
          { cause: err },
        );
      }
      if (!decision.ok) throw new TaskQueueOwnerError(`refusing to start: ${decision.message}`);
      note(decision.notes);
      return { ...opts, identity };
    },
    async runWorker(worker: Worker, next: (w: Worker) => Promise<void>): Promise<void> {
      const recheck = check;
      if (!recheck) return next(worker);
      let refusal: TaskQueueOwnerError | undefined;
      let timer: NodeJS.Timeout | undefined;
      let done = false;
      const schedule = (ms: number) => {
        timer = setTimeout(() => void look(), ms);
        timer.unref();
      };
      const look = async () => {
        let decision: OwnershipDecision;
        try {
          decision = await recheck();
        } catch {
          // The server did not answer: the worker's own polls meet the same trouble; look again later.
          if (!done) schedule(options.recheckEveryMs ?? RECHECK_EVERY_MS);
          return;
        }
        if (done) return;
        if (decision.ok) {
          note(decision.notes);
          schedule(options.recheckEveryMs ?? RECHECK_EVERY_MS);
          return;
        }
        refusal = new TaskQueueOwnerError(`stopped polling: ${decision.message}`);
        if (worker.getState() === 'RUNNING') worker.shutdown();
      };
      schedule(options.firstRecheckMs ?? FIRST_RECHECK_MS);
      try {
        await next(worker);
      } finally {
        done = true;
        clearTimeout(timer);
      }
      if (refusal) throw refusal;
    },
  };
}

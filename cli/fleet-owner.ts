/**
 * `fleetgate fleet init` of a simulated vehicle fleet while another process owns the data: a worker
 * holds the data directory's fleet database (one process opens a DuckDB file) or the store's data lease
 * (workers/data-lease.ts). `fleet init` then registers production in the registry itself, as it does for
 * a service, and has the owner create the vehicles: it starts `fleetInitWorkflow` (workflows/fleet-init.ts)
 * on the task queue, whose activity runs on the worker that holds the database, and waits for its result.
 *
 * Before anything is written it checks that Temporal answers and that a worker of this data store polls
 * the task queue, and says what to do when not; after, that the worker that ran the activity is of this
 * data store. It must never open the fleet database, and never print a vehicle id or a secret.
 */
import { Client, Connection, WorkflowFailedError } from '@temporalio/client';
import type { FleetManifest } from '../policies/schema';
import type { FleetInitResult } from '../activities/fleet-init';
import type { ModelRecord } from '../activities/contracts';
import { DatabaseLocked } from '../activities/db';
import { bootstrapProduction } from '../activities/registry';
import { storeDriftReferences } from '../activities/drift';
import { connectionOptions, openObjectStore, type Config } from '../workers/config';
import { LEASE_KEY, liveLease } from '../workers/data-lease';
import { RECENT_MS, describePollers, storeId, storeOfIdentity, type Poller } from '../workers/ownership';
import { featureSource } from '../workers/worker';
import { FLEET_INIT_WORKFLOW_TYPE, fleetInitWorkflowId } from '../workflows/fleet-init';
import { withRegistry } from './model';
import { causeMessage } from './progress';

/** How long the whole init may take on the owner before the workflow ends (it takes seconds). */
const INIT_TIMEOUT = '15m';

/** The CLI's error type, handed in by cli/main.ts (exit code 1, its message alone). */
type CliErrorClass = new (message: string) => Error;

/** Who owns the data, in words for the messages; undefined when nobody is seen. */
export type DataOwner = string;

/** The live holder of the store's data lease, when a data worker holds it. */
export async function leaseOwner(config: Config): Promise<DataOwner | undefined> {
  const store = openObjectStore(config.store, config.dataDir);
  try {
    const lease = await liveLease(store);
    return lease ? `the data worker ${lease.holder} holds the store's lease (${LEASE_KEY})` : undefined;
  } finally {
    const closable = store as { close?: () => unknown };
    if (typeof closable.close === 'function') closable.close();
  }
}

/** The process that holds the fleet database open, when `err` says another one does. */
export function lockOwner(err: unknown): DataOwner | undefined {
  if (!(err instanceof DatabaseLocked)) return undefined;
  return `the data directory's fleet database is open in another process${err.pid === undefined ? '' : ` (PID ${err.pid})`}`;
}

/**
 * Registers production for every cohort and has the owner of the data create the simulated fleet through
 * `fleetInitWorkflow` on the task queue. Returns what the owner did and the production record.
 */
export async function initThroughOwner(opts: {
  config: Config;
  owner: DataOwner;
  manifestPath: string;
  manifest: FleetManifest;
  packDir: string;
  by: string;
  CliError: CliErrorClass;
  log?: (line: string) => void;
}): Promise<{ fleet: FleetInitResult; production: ModelRecord }> {
  const { config, owner, manifest, CliError } = opts;
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const taskQueue = config.taskQueue;
  const conn = connectionOptions(config);
  let connection: Connection;
  try {
    connection = await Connection.connect({ ...conn, connectTimeout: 5000 });
  } catch (err) {
    throw new CliError(
      `${owner}; fleet init has the worker that owns the data create the fleet through Temporal, which does not answer at ` +
        `${conn.address} (TEMPORAL_ADDRESS${config.address ? '' : ' is unset: the default'}): ${causeMessage(err)}. ` +
        `Set TEMPORAL_ADDRESS to the server that worker uses (it names it when it starts: "fleetgate worker: ` +
        `task queue ... on ADDRESS"), or stop that worker and run fleet init again`,
    );
  }
  try {
    const store = openObjectStore(config.store, config.dataDir);
    const own = [storeId(config.dataDir, store, 'directory'), storeId(config.dataDir, store, 'store')];
    (store as { close?: () => unknown }).close?.();
    await checkPollers({ connection, config, owner, own, CliError });

    const production = await withRegistry(async (deps) => {
      const prod = await bootstrapProduction(
        deps,
        opts.packDir,
        manifest.cohorts.map((c) => c.name),
        opts.by,
      );
      // The drift checks' reference (fleetgate drift), stored beside production's record as it is registered.
      await storeDriftReferences(deps.store, prod, manifest, featureSource());
      return prod;
    }, config);

    const client = new Client({ connection, namespace: config.namespace });
    const workflowId = fleetInitWorkflowId(taskQueue, manifest.name);
    log(
      `fleetgate: ${owner}: the worker on task queue "${taskQueue}" creates the fleet (workflow ${workflowId})`,
    );
    const handle = await client.workflow.start(FLEET_INIT_WORKFLOW_TYPE, {
      taskQueue,
      workflowId,
      args: [{ manifest: opts.manifestPath }],
      // Inits of one fleet started at once share a run; a later one starts a new run, which finds the fleet.
      workflowIdConflictPolicy: 'USE_EXISTING',
      workflowExecutionTimeout: INIT_TIMEOUT,
    });
    let fleet: FleetInitResult;
    try {
      fleet = (await handle.result()) as FleetInitResult;
    } catch (err) {
      if (!(err instanceof WorkflowFailedError)) throw err;
      throw new CliError(
        `the worker on task queue "${taskQueue}" did not create fleet "${manifest.name}" (workflow ${workflowId}): ` +
          `${causeMessage(err)}; production is registered, and fleet init is safe to run again`,
      );
    }
    if (!own.includes(fleet.store)) {
      throw new CliError(
        `fleet "${fleet.fleet}" was created by a worker of task queue "${taskQueue}" on another data store ` +
          `(store=${fleet.store}) than this data directory's (store=${own[0]}): run fleet init with that ` +
          `worker's FLEETGATE_DATA_DIR and FLEETGATE_STORE, and give each data store its own FLEETGATE_TASK_QUEUE`,
      );
    }
    if (fleet.fleet !== manifest.name) {
      throw new CliError(
        `the worker read ${opts.manifestPath} as fleet "${fleet.fleet}", not "${manifest.name}": its copy of the ` +
          `manifest differs from this one; run fleet init in the worker's directory, or give both the same file`,
      );
    }
    return { fleet, production };
  } finally {
    await connection.close();
  }
}

/**
 * Refuses, before anything is written, when no worker of this data store would take the init: nobody
 * polls the task queue's workflows or activities, or only workers of other stores poll its activities.
 * A server that does not list pollers (or refuses to) is not checked; the result's store still is.
 */
async function checkPollers(opts: {
  connection: Connection;
  config: Config;
  owner: DataOwner;
  own: string[];
  CliError: CliErrorClass;
}): Promise<void> {
  const { config, owner, own, CliError } = opts;
  const taskQueue = config.taskQueue;
  let pollers: Poller[];
  try {
    pollers = await describePollers(opts.connection, config.namespace, taskQueue);
  } catch {
    return;
  }
  const now = Date.now();
  const recent = pollers.filter((p) => p.lastAccessMs === undefined || now - p.lastAccessMs <= RECENT_MS);
  const activities = recent.filter((p) => p.kind === 'activity');
  const ours = activities.some((p) => own.includes(storeOfIdentity(p.identity) ?? ''));
  const unnamed = activities.some((p) => storeOfIdentity(p.identity) === undefined);
  const address = connectionOptions(config).address;
  if (activities.length === 0 || !recent.some((p) => p.kind === 'workflow')) {
    throw new CliError(
      `${owner}, but no worker serves task queue "${taskQueue}" on ${address} ` +
        `(${activities.length === 0 ? 'nobody polls its activities' : 'nobody polls its workflows'}), so none ` +
        `would create the fleet: start "fleetgate worker" with this FLEETGATE_DATA_DIR and FLEETGATE_TASK_QUEUE ` +
        `(or set them, and TEMPORAL_ADDRESS, to the running worker's), or stop the process that holds the ` +
        `database and run fleet init again`,
    );
  }
  if (!ours && !unnamed) {
    const others = [...new Set(activities.map((p) => p.identity))].join(', ');
    throw new CliError(
      `${owner}, but task queue "${taskQueue}" is served by ${others}, on another data store than this data ` +
        `directory's (store=${own[0]}): set FLEETGATE_TASK_QUEUE to the queue of the worker that owns this ` +
        `data directory, or FLEETGATE_DATA_DIR and FLEETGATE_STORE to that worker's`,
    );
  }
}

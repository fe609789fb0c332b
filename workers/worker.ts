/**
 * The composition root: builds the stores, the model runner, the DuckDB database and the pseudonym key
 * from configuration, hands them to the activity factories and creates the worker. Nothing else in
 * fleetgate constructs clients or stores.
 */
import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { type NativeConnection, Runtime, Worker, type WorkflowBundle } from '@temporalio/worker';
import { LocalObjectStore } from '../activities/store';
import { createRegistryActivities } from '../activities/registry';
import { createInferenceActivities } from '../activities/inference';
import { createFleetActivities } from '../activities/fleet';
import { createLabelActivities } from '../activities/labels';
import { createAnalysisActivities } from '../activities/analysis';
import { createReportActivities } from '../activities/report';
import { openFleetDatabase } from '../activities/db';
import { SimulatedOta } from '../sim/ota';
import { OnnxModelRunner, blobKey } from './model-runner';
import { loadPseudonymKey } from './secrets';
import { getWorkflowBundle } from './bundle';

export interface Services {
  dataDir: string;
  root: string;
  store: LocalObjectStore;
  runner: OnnxModelRunner;
  db: Awaited<ReturnType<typeof openFleetDatabase>>;
  key: Buffer;
  close(): Promise<void>;
}

/** Opens everything the activities need, under one data directory. */
export async function openServices(dataDir: string, root: string): Promise<Services> {
  mkdirSync(dataDir, { recursive: true });
  const store = new LocalObjectStore(join(dataDir, 'store'));
  const runner = new OnnxModelRunner((digest) => store.get(blobKey(digest)));
  const db = await openFleetDatabase(join(dataDir, 'fleet.duckdb'));
  const key = loadPseudonymKey(dataDir);
  return {
    dataDir,
    root,
    store,
    runner,
    db,
    key,
    async close() {
      await runner.close();
      db.connection.closeSync();
      db.instance.closeSync();
    },
  };
}

export function createActivities(s: Services) {
  return {
    ...createRegistryActivities({ store: s.store, runner: s.runner, root: s.root }),
    ...createInferenceActivities({ runner: s.runner }),
    ...createFleetActivities({
      conn: s.db.connection,
      ota: new SimulatedOta(s.db.connection),
      runner: s.runner,
      key: s.key,
      root: s.root,
    }),
    ...createLabelActivities({ conn: s.db.connection }),
    ...createAnalysisActivities({ conn: s.db.connection }),
    ...createReportActivities({ dataDir: s.dataDir }),
  };
}
export type Activities = ReturnType<typeof createActivities>;

let runtimeInstalled = false;
/** Keeps the SDK's own logging to warnings, so progress views stay readable. */
export function quietRuntime(): void {
  if (runtimeInstalled) return;
  runtimeInstalled = true;
  try {
    Runtime.install({ logger: new (require('@temporalio/worker').DefaultLogger)('WARN') });
  } catch {
    // A runtime already exists in this process; keep it.
  }
}

export async function createFleetgateWorker(opts: {
  connection: NativeConnection;
  namespace: string;
  taskQueue: string;
  services: Services;
  activities?: object;
  workflowBundle?: WorkflowBundle;
}): Promise<Worker> {
  return Worker.create({
    connection: opts.connection,
    namespace: opts.namespace,
    taskQueue: opts.taskQueue,
    workflowBundle: opts.workflowBundle ?? (await getWorkflowBundle()),
    activities: opts.activities ?? createActivities(opts.services),
    maxConcurrentActivityTaskExecutions: 4,
  });
}

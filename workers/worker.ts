/**
 * The composition root: builds the stores, the model runner, the DuckDB database, the pseudonym key, the
 * over-the-air channel (the simulated fleet, or AWS IoT Jobs with its `IoTClient`), the drift checks'
 * feature source and a service's callers (the simulated fleet's and users') and the notifications'
 * webhook from configuration, hands them to the activity factories and creates the worker. Nothing else
 * in fleetgate constructs clients or stores.
 */
import { delimiter, join, resolve } from 'node:path';
import { copyFileSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { type NativeConnection, Runtime, Worker, type WorkflowBundle } from '@temporalio/worker';
import { IoTClient } from '@aws-sdk/client-iot';
import { S3ObjectStore } from '../activities/store-s3';
import { createRegistryActivities } from '../activities/registry';
import { createInferenceActivities } from '../activities/inference';
import { createFleetActivities } from '../activities/fleet';
import { createFleetInitActivities } from '../activities/fleet-init';
import { WORKFLOW_TRACING_MODULES, type WorkerTracingOptions } from './tracing';
import { type GatewayAllow, createServiceActivities, dispatchFleetActivities } from '../activities/service';
import { createLabelActivities } from '../activities/labels';
import { createAnalysisActivities } from '../activities/analysis';
import { createReportActivities } from '../activities/report';
import { type WebhookConfig, createNotifyActivities } from '../activities/notify';
import { createDriftActivities, type FeatureSource } from '../activities/drift';
import { openFleetDatabase } from '../activities/db';
import type { CallerLoad, ObjectStore, OtaChannel, TelemetryFeed } from '../activities/deps';
import { AwsIotJobsChannel } from '../activities/ota-iot';
import { SimulatedOta } from '../sim/ota';
import { SimulatedFleetFeed } from '../sim/producer';
import { simulatedFeatures } from '../sim/features';
import { simulatedCallers } from '../sim/users';
import { EventWriter } from '../events/writer';
import { storeRollouts } from '../events/rollouts';
import { listPartitions, rebuildFromStore } from '../events/rebuild';
import { batchRestorer } from '../activities/batch-log';
import { StoreLabelQueue } from '../activities/label-queue';
import { SimulatorFeed } from '../activities/sim-requests';
import {
  type AwsIotConfig,
  type OtaConfig,
  loadGatewayAllow,
  loadOtaConfig,
  loadTelemetryConfig,
  type TelemetryConfig,
  loadStoreConfig,
  loadWebhookConfig,
  openObjectStore,
} from './config';
import { OnnxModelRunner, blobKey } from './model-runner';
import { loadPseudonymKey } from './secrets';
import { type TrustStore, loadTrust } from '../activities/pack';
import { getWorkflowBundle } from './bundle';
import { hostname } from 'node:os';
import { heartbeating } from '../activities/heartbeat';
import { type OwnershipOptions, dataDirId, storeId, taskQueueOwnership } from './ownership';
import { type DataOwnerError, acquireLease, holderDir, keepLease, leaseHolder } from './data-lease';

export interface Services {
  dataDir: string;
  root: string;
  /** The registry's object store, as configured (FLEETGATE_STORE: the data directory or S3). */
  store: ObjectStore;
  runner: OnnxModelRunner;
  db: Awaited<ReturnType<typeof openFleetDatabase>>;
  key: Buffer;
  /** Over-the-air delivery, as configured (FLEETGATE_OTA). */
  ota: OtaChannel;
  /** The one writer of ingested records (events/writer.ts), on the fleet database. */
  writer: EventWriter;
  /**
   * What owns the fleet database: its data directory, or the object store when the database is a cache
   * of it (a real fleet's records kept as partitions, delivery through AWS IoT, an S3 store): a new data
   * directory on that store rebuilds it, and one data worker at a time holds the store's lease
   * (workers/data-lease.ts).
   */
  owner: 'directory' | 'store';
  /**
   * The store's lease, when this process took it (`openServices(..., { lease: onLost })`), renewed until
   * `close()`.
   */
  lease?: { holder: string; stop: () => void };
  /** Where the records that decide a rollout come from, as configured (FLEETGATE_TELEMETRY). */
  telemetry: TelemetryConfig;
  /**
   * The in-process simulated fleet and labeler (FLEETGATE_TELEMETRY=simulated), or the label requests as
   * files in the object store for the labelers of a real fleet (activities/label-queue.ts), with window
   * requests for the simulated fleet in a process of its own (=simulator, activities/sim-requests.ts).
   */
  feed: TelemetryFeed;
  /** Signer keys the registry trusts: FLEETGATE_TRUSTED_KEYS and `<dataDir>/trusted-keys/*.pub`. */
  trust: TrustStore;
  /** The AWS IoT client when delivery goes through AWS IoT Jobs. */
  iot?: IoTClient;
  /** Where notifications go (FLEETGATE_WEBHOOK_URL/_SECRET); none: the notify activity sends nothing. */
  webhook?: WebhookConfig;
  /** The inference gateways a service's rollout may call (FLEETGATE_GATEWAY_ALLOW). */
  gateways: GatewayAllow;
  /** Where the drift checks' features come from: the simulated fleet's (sim/features.ts). */
  features: FeatureSource;
  /** The callers a service's rollout sends through its gateway: the simulated users (sim/users.ts). */
  callers: CallerLoad;
  close(): Promise<void>;
}

/**
 * Opens everything the activities need, under one data directory. The OTA channel follows `ota`
 * (default: the environment, see workers/config.ts): the simulated fleet in the DuckDB file, or AWS IoT
 * Jobs.
 */
export async function openServices(
  dataDir: string,
  root: string,
  ota: OtaConfig = loadOtaConfig(),
  telemetry: TelemetryConfig = loadTelemetryConfig(),
  log: (line: string) => void = (line) => process.stderr.write(`${line}\n`),
  options: { lease?: (lost: DataOwnerError) => void } = {},
): Promise<Services> {
  const webhook = loadWebhookConfig();
  const gateways = loadGatewayAllow();
  mkdirSync(dataDir, { recursive: true });
  const store = openObjectStore(loadStoreConfig(), dataDir);
  const runner = new OnnxModelRunner((digest) => store.get(blobKey(digest)));
  const dbFile = join(dataDir, 'fleet.duckdb');
  const owner: Services['owner'] =
    telemetry.kind !== 'simulated' && ota.kind === 'aws-iot' && store instanceof S3ObjectStore
      ? 'store'
      : 'directory';
  let lease: Services['lease'];
  if (owner === 'store' && options.lease) {
    // One data worker per store (workers/data-lease.ts), taken before the database is opened: a database
    // left by an earlier turn of this directory is kept only when no other directory owned the store
    // since; otherwise it lacks what the other one ingested and read, and is rebuilt.
    const holder = leaseHolder(dataDirId(dataDir));
    const taken = await acquireLease(store, holder);
    // Renewed from now on, through a long rebuild too; `onLost` is told when another worker took it.
    lease = { holder, stop: keepLease(store, holder, taken.etag, options.lease) };
    if (
      taken.previous !== undefined &&
      holderDir(taken.previous) !== holderDir(holder) &&
      existsSync(dbFile)
    ) {
      rmSync(dbFile, { force: true });
      rmSync(`${dbFile}.wal`, { force: true });
      log(
        `fleetgate: ${taken.previous} owned the store since this data directory did: its fleet database is rebuilt`,
      );
    }
  }
  // The fleet database of a real fleet is a cache of the object store: a new data directory on the same
  // store starts from the Parquet partitions of what was ingested (events/rebuild.ts).
  if (telemetry.kind !== 'simulated' && !existsSync(dbFile)) {
    const { partitions } = await listPartitions(store);
    if (partitions.length > 0) {
      const r = await rebuildFromStore(store, dbFile, { cacheDir: dataDir });
      const count = (o: Record<string, number>) => Object.values(o).reduce((a, b) => a + b, 0);
      log(
        `fleetgate: rebuilt the fleet database from ${count(r.partitions)} partitions of the store ` +
          `(${r.rows.inference} events, ${r.rows.label} labels, ${r.rows.upload} upload reports)`,
      );
    }
  }
  const db = await openFleetDatabase(dbFile);
  const key = loadPseudonymKey(dataDir);
  const trust = await loadTrust(trustedKeyPaths(dataDir));
  let iot: IoTClient | undefined;
  let channel: OtaChannel;
  let writer: EventWriter | undefined;
  let feed: TelemetryFeed | undefined;
  try {
    if (ota.kind === 'aws-iot') {
      iot = createIotClient(ota);
      channel = new AwsIotJobsChannel(iot, ota.settings);
    } else {
      channel = new SimulatedOta(db.connection);
    }
    // What fleets send is also kept as Parquet partitions in the object store (events/partitions.ts), from
    // which `fleetgate events rebuild` recreates it; the simulated fleet's records are made again from
    // their seed, so they are not.
    writer = await EventWriter.attach(
      db.instance,
      telemetry.kind === 'simulated' ? {} : { store, rollouts: storeRollouts(store) },
    );
    feed =
      telemetry.kind === 'simulated'
        ? await SimulatedFleetFeed.create({ conn: db.connection, ota: channel, runner, writer, key })
        : telemetry.kind === 'simulator'
          ? new SimulatorFeed({
              store,
              conn: db.connection,
              ota: channel,
              key,
              watermarkWaitMs: telemetry.watermarkWaitMs,
            })
          : new StoreLabelQueue(store);
  } catch (err) {
    iot?.destroy();
    await writer?.close();
    db.connection.closeSync();
    db.instance.closeSync();
    throw err;
  }
  const events = writer!;
  return {
    dataDir,
    root,
    store,
    runner,
    db,
    key,
    ota: channel,
    writer: events,
    owner,
    ...(lease ? { lease } : {}),
    telemetry,
    feed: feed!,
    trust,
    gateways,
    features: featureSource(),
    callers: simulatedCallers,
    ...(iot ? { iot } : {}),
    ...(webhook ? { webhook } : {}),
    async close() {
      lease?.stop();
      await runner.close();
      if (store instanceof S3ObjectStore) store.close();
      iot?.destroy();
      await events.close();
      db.connection.closeSync();
      db.instance.closeSync();
    },
  };
}

/**
 * Where the registry's trusted signer keys are: each path of FLEETGATE_TRUSTED_KEYS (files or directories
 * of `*.pub`, separated by the platform's path delimiter), then `<dataDir>/trusted-keys/`.
 */
export function trustedKeyPaths(dataDir: string, env: NodeJS.ProcessEnv = process.env): string[] {
  const listed = (env.FLEETGATE_TRUSTED_KEYS ?? '').split(delimiter).filter((p) => p !== '');
  return [...listed.map((p) => resolve(p)), join(dataDir, 'trusted-keys')];
}

/** The fixture packs' signer (models/keys), public by design: demos, simulations and tests trust it. */
export const FIXTURE_SIGNER = join('models', 'keys', 'fixture-signer.pub');

/** Makes a data directory's registry trust the fixture signer; never use it for a real registry. */
export function trustFixtureSigner(dataDir: string): void {
  const dir = join(dataDir, 'trusted-keys');
  mkdirSync(dir, { recursive: true });
  copyFileSync(join(__dirname, '..', FIXTURE_SIGNER), join(dir, 'fixture-signer.pub'));
}

/** Where drift checks' features come from: the simulated fleet's (sim/features.ts), for every caller. */
export function featureSource(): FeatureSource {
  return simulatedFeatures;
}

/** The AWS IoT client of the configuration: its endpoint (e.g. moto), region and credentials. */
export function createIotClient(config: AwsIotConfig): IoTClient {
  return new IoTClient({
    endpoint: config.endpoint,
    region: config.region,
    credentials: config.credentials,
  });
}

/**
 * Every activity of a worker, each heartbeating while it runs, so a worker that dies is noticed within
 * the heartbeat timeout and an abort reaches what is running (activities/heartbeat.ts).
 */
export function createActivities(s: Services) {
  const fleetDeps = { conn: s.db.connection, runner: s.runner, key: s.key, root: s.root, store: s.store };
  // A real fleet's batch reads are logged in the store, and read again by a worker whose database was
  // rebuilt (activities/batch-log.ts) before any activity of the rollout reads the database.
  const cache = s.telemetry.kind !== 'simulated';
  const restoring = cache
    ? restoreFirst(batchRestorer(s.db.connection, s.store, (line) => process.stderr.write(`${line}\n`)))
    : <T>(a: T) => a;
  return heartbeating({
    ...createRegistryActivities(s),
    ...createInferenceActivities({ runner: s.runner, store: s.store }),
    ...restoring(
      dispatchFleetActivities(
        s.root,
        createFleetActivities({
          ...fleetDeps,
          ota: s.ota,
          feed: s.feed,
          watermarkWaitMs: s.telemetry.watermarkWaitMs,
          ...(cache ? { batchLog: s.store } : {}),
        }),
        createServiceActivities({ ...fleetDeps, gateways: s.gateways, callers: s.callers }),
      ),
    ),
    ...restoring(createLabelActivities({ conn: s.db.connection })),
    ...restoring(createAnalysisActivities({ conn: s.db.connection })),
    ...createReportActivities({ dataDir: s.dataDir, store: s.store }),
    ...createNotifyActivities({ webhook: s.webhook }),
    ...createDriftActivities({ store: s.store, root: s.root, features: s.features }),
    // `fleet init` of a simulated fleet while this worker owns the fleet database (workflows/fleet-init.ts).
    ...createFleetInitActivities({
      conn: s.db.connection,
      key: s.key,
      root: s.root,
      store: s.store,
      storeId: storeId(s.dataDir, s.store, s.owner),
      vehiclesInDatabase: s.ota instanceof SimulatedOta,
    }),
  });
}
export type Activities = ReturnType<typeof createActivities>;

/** Each activity of `activities` whose input names a rollout first has `restore` run for it. */
function restoreFirst(restore: (rolloutId: string) => Promise<void>) {
  return <T extends object>(activities: T): T =>
    Object.fromEntries(
      Object.entries(activities).map(([name, fn]) => [
        name,
        typeof fn !== 'function'
          ? fn
          : async (...args: unknown[]) => {
              const rolloutId = (args[0] as { rolloutId?: unknown } | undefined)?.rolloutId;
              if (typeof rolloutId === 'string') await restore(rolloutId);
              return (fn as (...a: unknown[]) => unknown)(...args);
            },
      ]),
    ) as T;
}

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
  /** OpenTelemetry: workflows and activities traced (workers/tracing.ts). */
  tracing?: WorkerTracingOptions;
  /** The check that one data store serves the task queue (workers/ownership.ts): its timings, its env. */
  ownership?: OwnershipOptions;
  /** Whether it also serves the workflows (default true; false: the activities only, FLEETGATE_WORKER_ROLE=activities). */
  workflows?: boolean;
}): Promise<Worker> {
  return Worker.create({
    connection: opts.connection,
    namespace: opts.namespace,
    taskQueue: opts.taskQueue,
    ...(opts.workflows === false
      ? {}
      : {
          workflowBundle:
            opts.workflowBundle ??
            (await getWorkflowBundle(opts.tracing ? { interceptorModules: WORKFLOW_TRACING_MODULES } : {})),
        }),
    activities: opts.activities ?? createActivities(opts.services),
    maxConcurrentActivityTaskExecutions: 4,
    ...opts.tracing,
    // Refuses the task queue (or stops polling it) when a worker with another data store serves it.
    plugins: [taskQueueOwnership(opts.services, opts.ownership)],
  });
}

/**
 * A worker that serves the workflows of a task queue and no activity (FLEETGATE_WORKER_ROLE=workflows):
 * it opens no data directory and polls no activity task, so any number of them serve the rollouts of a
 * queue beside the worker that owns the data and runs the activities. A workflow's state is its history:
 * one that dies mid-rollout is replaced by any other. Its identity names its role, and no store.
 */
export async function createWorkflowWorker(opts: {
  connection: NativeConnection;
  namespace: string;
  taskQueue: string;
  tracing?: WorkerTracingOptions;
}): Promise<Worker> {
  return Worker.create({
    connection: opts.connection,
    namespace: opts.namespace,
    taskQueue: opts.taskQueue,
    identity: `fleetgate/${process.pid}@${hostname()} workflows`,
    workflowBundle: await getWorkflowBundle(
      opts.tracing ? { interceptorModules: WORKFLOW_TRACING_MODULES } : {},
    ),
    ...opts.tracing,
  });
}

/**
 * What the integration tests on a real Temporal dev server share: one dev server for a test file
 * (`useDevServer`), a worker with the real activities and a client on it for one test
 * (`withDevWorker`), and the short gated policy the rollout tests run (`shortGatedPolicy`).
 */
import { after, before } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { startDevServer, type DevServer } from '../../workers/dev-server';
import { createFleetgateWorker, quietRuntime } from '../../workers/worker';
import { loadPolicy, type World } from '../support';

/** The dev server of a test file and the temporary folder that holds its database. */
export interface DevEnv {
  readonly server: DevServer;
  readonly tmp: string;
}

/**
 * Registers a `before` that quiets the Temporal runtime, makes a temporary folder named from `prefix`
 * and starts a dev server with its database there, and an `after` that stops the server and removes
 * the folder. The getters are for the tests and hooks, which run once the server is up.
 */
export function useDevServer(prefix: string): DevEnv {
  let server: DevServer | undefined;
  let tmp: string | undefined;
  before(async () => {
    quietRuntime();
    tmp = mkdtempSync(join(tmpdir(), prefix));
    server = await startDevServer({ dbFile: join(tmp, 'temporal.db') });
  });
  after(async () => {
    await server?.stop();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });
  return {
    get server(): DevServer {
      if (!server) throw new Error('the dev server is not started yet');
      return server;
    },
    get tmp(): string {
      if (!tmp) throw new Error('the temporary folder is not made yet');
      return tmp;
    },
  };
}

/** What `withDevWorker` gives its function: a client on the dev server and the worker's task queue. */
export interface DevWorker {
  client: Client;
  taskQueue: string;
}

/**
 * Connects to `server`, creates a fleetgate worker on the task queue `${taskQueuePrefix}-${pid}` in
 * the default namespace with `world`'s services, and runs it until `fn` is done. The connections and
 * `world` are always closed at the end, after the worker has shut down.
 */
export async function withDevWorker<T>(
  server: DevServer,
  world: World,
  taskQueuePrefix: string,
  fn: (worker: DevWorker) => Promise<T>,
): Promise<T> {
  let connection: NativeConnection | undefined;
  let clientConn: Connection | undefined;
  try {
    connection = await NativeConnection.connect({ address: server.address });
    clientConn = await Connection.connect({ address: server.address });
    const client = new Client({ connection: clientConn });
    const taskQueue = `${taskQueuePrefix}-${process.pid}`;
    const worker = await createFleetgateWorker({
      connection,
      namespace: 'default',
      taskQueue,
      services: world.services,
    });
    return await worker.runUntil(() => fn({ client, taskQueue }));
  } finally {
    await clientConn?.close();
    await connection?.close();
    await world.close();
  }
}

/**
 * examples/demo-policy.yaml made short: a 3-second shadow without its class gates, waves of 5, 25
 * and 50 percent (as many as `holds` has), each held as long as `holds` says with `looks` looks, an
 * approval gate "wave-2" before the second, and `labelWait` (by default coverage 0.9, polled every
 * 2s, for 20s at the most).
 *
 * The class gates are off because these tests follow a rollout through its canary: at 7200x the
 * shadow's labels would already show candidate-regress's night recall drop and reject hw3/nordic at
 * the shadow's class gates (that path is tested in test/workflow/shadow.test.ts).
 */
export function shortGatedPolicy(opts: {
  holds: string[];
  looks?: number;
  labelWait?: { coverage: number; poll: string; timeout: string };
}) {
  const { holds, looks = 2, labelWait = { coverage: 0.9, poll: '2s', timeout: '20s' } } = opts;
  const percents = [5, 25, 50];
  if (holds.length < 1 || holds.length > percents.length)
    throw new Error(`shortGatedPolicy: 1 to ${percents.length} holds, not ${holds.length}`);
  const policy = loadPolicy('examples/demo-policy.yaml');
  policy.shadow!.duration = '3s';
  delete policy.shadow!.classGates;
  policy.waves = holds.map((hold, i) => ({
    percent: percents[i]!,
    hold,
    looks,
    ...(i === 1 ? { approval: { gate: 'wave-2', required: 1, timeout: '10m' } } : {}),
  }));
  policy.labelWait = labelWait;
  return policy;
}

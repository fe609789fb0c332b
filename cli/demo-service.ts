/**
 * The demo's second rollout: the same workflow rolls models/candidate-good out to a service behind the
 * inference gateway (docs/serving.md). The gateway runs in the demo's process on a free loopback port,
 * with the demo's data directory (object store, pseudonym key); its state (routes, event log) is reset
 * with the simulated world. The service manifest is examples/service/ranker.yaml with the gateway's URL.
 *
 * It must close the gateway it started, on success, on error and on interruption, and never prints a
 * raw caller id (the population's callers are known to the gateway by their pseudonyms only).
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { WorkflowIdReusePolicy } from '@temporalio/common';
import YAML from 'yaml';
import { startRolloutWorkflow } from '../activities/controls';
import { initService } from '../activities/service';
import { loadServiceManifest } from '../fleet/manifest';
import { parseGatewayConfig } from '../serve/config';
import { startGateway, type Gateway } from '../serve/gateway';
import type { Services } from '../workers/worker';
import type { RolloutResult, RolloutStatus } from '../workflows/definitions';
import { CliError, displayPath, prepareRolloutRequest, timestamp } from './main';
import { ProgressView, watch } from './progress';

export const SERVICE_MANIFEST = 'examples/service/ranker.yaml';
export const SERVICE_POLICY = 'examples/service/policy.yaml';
export const SERVICE_CANDIDATE = 'models/candidate-good';
export const SERVICE_TIME_SCALE = 3600;

/** Where the demo's gateway keeps its routes and event log: reset by each demo. */
export function gatewayStateDir(dataDir: string): string {
  return join(dataDir, 'demo-gateway');
}

export interface ServiceDemo {
  result: RolloutResult;
  gatewayUrl: string;
  /** The gateway's routes once the rollout ended, one line per cohort. */
  routes: string[];
}

/**
 * Starts the gateway, registers production for the service's cohorts, runs the service rollout to its
 * end (gates approved by `onStatus`, as in the vehicle rollout) and closes the gateway.
 */
export async function runServiceDemo(ctx: {
  client: Client;
  services: Services;
  taskQueue: string;
  production: string;
  signal: AbortSignal;
  say: (line: string) => void;
  onStatus: (handle: WorkflowHandle, view: ProgressView) => (status: RolloutStatus) => Promise<void>;
}): Promise<ServiceDemo> {
  const { services } = ctx;
  const manifest = loadServiceManifest(resolve(services.root, SERVICE_MANIFEST));
  const tokenEnv = manifest.gateway.tokenEnv;
  // The admin token the worker's activities send and the gateway checks: one for this process.
  if (!process.env[tokenEnv]) process.env[tokenEnv] = randomBytes(32).toString('hex');
  const stateDir = gatewayStateDir(services.dataDir);
  rmSync(stateDir, { recursive: true, force: true });
  const config = parseGatewayConfig(
    {
      apiVersion: 'fleetgate/v1',
      kind: 'Gateway',
      name: 'ranker',
      listen: { host: '127.0.0.1', port: 0 },
      stateDir,
      cohorts: manifest.cohorts.map((c) => c.name),
      adminTokenEnv: tokenEnv,
      // The demo's users are simulated: their requests carry their simulated time.
      acceptSimTime: true,
    },
    services.dataDir,
  );
  let gateway: Gateway | undefined;
  try {
    const prod = await initService(services, SERVICE_MANIFEST, ctx.production, 'demo');
    gateway = await startGateway(config, {
      store: services.store,
      key: services.key,
      runner: services.runner,
      log: () => undefined,
    });
    // The worker reads manifests only inside its directory: the data directory's copy when it is there.
    const rel = relative(services.root, services.dataDir);
    const inRoot = !rel.startsWith('..') && !isAbsolute(rel);
    const serviceFile = join(
      inRoot ? services.dataDir : join(services.root, '.fleetgate'),
      'demo-service.yaml',
    );
    mkdirSync(dirname(serviceFile), { recursive: true });
    writeFileSync(
      serviceFile,
      YAML.stringify({ ...manifest, gateway: { ...manifest.gateway, url: gateway.url } }),
    );
    ctx.say(
      `service "ranker": gateway at ${gateway.url}, cohorts ${prod.cohorts.join(', ')} on production ` +
        `${prod.production.name}@${prod.production.version}; ${SERVICE_MANIFEST} with that URL in ${displayPath(serviceFile)}`,
    );
    const check = prepareRolloutRequest({
      policy: SERVICE_POLICY,
      candidate: SERVICE_CANDIDATE,
      fleet: serviceFile,
      id: `demo-service-${timestamp(new Date(), '-')}`,
      timeScale: SERVICE_TIME_SCALE,
      requestedBy: 'demo',
    });
    if (!check.ok)
      throw new CliError(
        `invalid policy ${SERVICE_POLICY}:\n${check.problems.map((l) => `  ${l}`).join('\n')}`,
      );
    const { handle } = await startRolloutWorkflow(ctx.client, {
      taskQueue: ctx.taskQueue,
      workflowId: check.request.rolloutId,
      workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
      args: [check.request],
    });
    ctx.say(
      `started service rollout ${handle.workflowId}: ${SERVICE_CANDIDATE} with ${SERVICE_POLICY}, ` +
        `time x${SERVICE_TIME_SCALE}; waves are routing weights, a rollback sets the weight to 0`,
    );
    const view = new ProgressView(process.stdout);
    const result = await watch(handle, { view, signal: ctx.signal, onStatus: ctx.onStatus(handle, view) });
    const routes = Object.entries(gateway.routes()).map(
      ([cohort, r]) =>
        `${cohort}: production ${r.production.digest.slice(0, 12)}` +
        (r.candidate ? `, candidate ${r.candidate.digest.slice(0, 12)} at ${r.weight}%` : ', no candidate'),
    );
    return { result, gatewayUrl: gateway.url, routes };
  } finally {
    await gateway?.close();
  }
}

/**
 * `fleetgate worker`: a long-running worker process for a Temporal server or cluster, configured from
 * the environment (see workers/config.ts). Stops cleanly on SIGINT/SIGTERM.
 */
import { NativeConnection } from '@temporalio/worker';
import { connectionOptions, loadConfig, type Config } from './config';
import { IotDeviceAgent, startAgentLoop } from '../sim/iot-agent';
import { createFleetgateWorker, createWorkflowWorker, openServices } from './worker';
import { endpointFromEnv } from '../serve/tracing';
import { workerTracingOptions } from './tracing';
import { startIngestServer, type IngestServer } from '../events/ingest-server';
import { startLandingLoop, type LandingLoop } from './landing';
import type { DataOwnerError } from './data-lease';

export async function runWorker(): Promise<void> {
  const config = loadConfig();
  if (config.role === 'workflows') return runWorkflowWorker(config);
  let worker: Awaited<ReturnType<typeof createFleetgateWorker>> | undefined;
  let leaseLost: DataOwnerError | undefined;
  // One data worker per object store whose database is a cache of it (workers/data-lease.ts): one that
  // finds its lease taken stops serving.
  const services = await openServices(config.dataDir, config.root, undefined, undefined, undefined, {
    lease: (err) => {
      leaseLost = err;
      console.error(`fleetgate worker: ${err.message}`);
      if (worker?.getState() === 'RUNNING') worker.shutdown();
    },
  });
  const connection = await NativeConnection.connect(connectionOptions(config));
  // Traces of the workflows and activities, when an OTLP endpoint is configured.
  const endpoint = endpointFromEnv();
  const tracing = endpoint ? await workerTracingOptions(endpoint, 'fleetgate-worker') : undefined;
  try {
    // Refused (TaskQueueOwnerError) when a worker with another data store serves the task queue.
    worker = await createFleetgateWorker({
      connection,
      namespace: config.namespace,
      taskQueue: config.taskQueue,
      services,
      tracing: tracing?.options,
      workflows: config.role === 'all',
    });
  } catch (err) {
    await tracing?.shutdown();
    await connection.close();
    await services.close();
    throw err;
  }
  console.error(
    `fleetgate worker: task queue "${config.taskQueue}" on ${connectionOptions(config).address}, data in ${config.dataDir}, ` +
      `identity ${worker.options.identity}${config.role === 'activities' ? ', activities only' : ''}`,
  );
  const ota = config.ota;
  const agent =
    ota.kind === 'aws-iot' && ota.agent && services.iot
      ? startAgentLoop(new IotDeviceAgent(services.iot), ota.agent.everyMs, (err) =>
          console.error(
            `fleetgate worker: the vehicle agent's pass failed (${(err as Error).message}); retrying`,
          ),
        )
      : undefined;
  if (agent) console.error('fleetgate worker: playing the vehicles of the fleet registered in AWS IoT');
  // The ingestion endpoint on the fleet database this worker owns (one process opens a DuckDB file).
  let ingest: IngestServer | undefined;
  if (config.ingest) {
    try {
      ingest = await startIngestServer({
        writer: services.writer,
        host: config.ingest.host,
        port: config.ingest.port,
        log: (line) => console.error(JSON.stringify({ ingest: line })),
        // The simulated fleet's time runs ahead of the clock by its rollout's time scale.
        ...(services.telemetry.kind === 'simulator' ? { maxWatermarkAheadMs: Infinity } : {}),
      });
    } catch (err) {
      await agent?.stop();
      await tracing?.shutdown();
      await connection.close();
      await services.close();
      throw err;
    }
    console.error(`fleetgate worker: ingestion endpoint on ${ingest.url} (docs/events.md)`);
  }
  // The landing zone, read into the same database.
  let landing: LandingLoop | undefined;
  if (config.landing) {
    try {
      landing = await startLandingLoop({
        writer: services.writer,
        config: config.landing,
        store: config.store,
        dataDir: config.dataDir,
        log: (line) => console.error(`fleetgate worker: ${line}`),
      });
    } catch (err) {
      await ingest?.close();
      await agent?.stop();
      await tracing?.shutdown();
      await connection.close();
      await services.close();
      throw err;
    }
    console.error(
      `fleetgate worker: reading the landing zone ${config.landing.location || '(the whole store)'} every ${config.landing.everyMs} ms`,
    );
  }
  try {
    // Rejects with a TaskQueueOwnerError when another data store shows up on the task queue.
    // A lease lost while the worker was being made: it never polls.
    if (!leaseLost) await worker.run();
    if (leaseLost) throw leaseLost;
  } finally {
    await landing?.stop();
    await ingest?.close();
    await agent?.stop();
    await tracing?.shutdown();
    await connection.close();
    await services.close();
  }
}

if (require.main === module) {
  runWorker().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

/** FLEETGATE_WORKER_ROLE=workflows: the workflows of the task queue, no activity and no data directory. */
async function runWorkflowWorker(config: Config): Promise<void> {
  const connection = await NativeConnection.connect(connectionOptions(config));
  const endpoint = endpointFromEnv();
  const tracing = endpoint ? await workerTracingOptions(endpoint, 'fleetgate-worker') : undefined;
  try {
    const worker = await createWorkflowWorker({
      connection,
      namespace: config.namespace,
      taskQueue: config.taskQueue,
      tracing: tracing?.options,
    });
    console.error(
      `fleetgate worker: task queue "${config.taskQueue}" on ${connectionOptions(config).address}, workflows only ` +
        `(no data directory), identity ${worker.options.identity}`,
    );
    await worker.run();
  } finally {
    await tracing?.shutdown();
    await connection.close();
  }
}

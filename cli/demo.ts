/**
 * `fleetgate demo`: the whole system in one process and its simulated fleet in another, in about three
 * minutes. It resets the simulated world, starts a Temporal dev server (unless TEMPORAL_ADDRESS is set)
 * and a worker whose batches read only what the fleet sent (FLEETGATE_TELEMETRY=simulator semantics),
 * serves the ingestion endpoint on a loopback port with a token made for the run, and starts the
 * simulated fleet as its own process (`fleetgate fleet simulate --ingest URL`, cli/demo-fleet.ts), which
 * sends each window's events and the labels asked for over HTTP. It rolls
 * models/candidate-regress out to the demo fleet with examples/demo-policy.yaml at 600x fleet time,
 * approves its gate as "alice", says how many events and labels came over HTTP, stops the fleet's
 * process, then rolls models/candidate-good out to a service behind an inference
 * gateway started in this process (cli/demo-service.ts), and ends with a summary of each: outcome,
 * decision and headline per cohort, report, history length, Web UI link, the gateway's routes.
 *
 * It must stop what it started (worker, services, endpoint, the fleet's process, dev server, gateway) on
 * success, on error and on Ctrl-C; it deletes only the simulated world (<data dir>/store,
 * <data dir>/fleet.duckdb*, <data dir>/simulator.duckdb*, the demo gateway's state), never reports or
 * the Temporal history; and it never prints a raw vehicle or caller id or the fleet's token.
 */
import { readdirSync, rmSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import { WorkflowIdReusePolicy } from '@temporalio/common';
import { NativeConnection, type Worker } from '@temporalio/worker';
import {
  approveUpdate,
  WORKFLOW_TYPE,
  type RolloutResult,
  type RolloutStatus,
} from '../workflows/definitions';
import { connectionOptions, loadConfig } from '../workers/config';
import { startRolloutWorkflow } from '../activities/controls';
import { startDevServer, type DevServer } from '../workers/dev-server';
import { temporalCli } from '../workers/tools';
import {
  createFleetgateWorker,
  openServices,
  quietRuntime,
  trustFixtureSigner,
  type Services,
} from '../workers/worker';
import { bootstrapProduction } from '../activities/registry';
import { initSimFleet } from '../activities/fleet';
import { loadFleetManifest } from '../fleet/manifest';
import {
  CliError,
  defaultRequester,
  displayPath,
  prepareRolloutRequest,
  shellQuote,
  timestamp,
} from './main';
import { causeMessage, ProgressView, renderResult, watch, WatchInterrupted } from './progress';
import { runServiceDemo, type ServiceDemo } from './demo-service';
import { startDemoFleet, type DemoFleet } from './demo-fleet';

const POLICY = 'examples/demo-policy.yaml';
const FLEET = 'sim/fleets/demo.yaml';
const PRODUCTION = 'models/production';
const CANDIDATE = 'models/candidate-regress';
const TIME_SCALE = 600;
const REVIEWER = 'alice';
/** How long a batch waits for the fleet's process to send its window. */
const WINDOW_WAIT_MS = 60_000;

function say(line: string): void {
  process.stdout.write(`demo: ${line}\n`);
}

/** Deletes the simulated world of earlier demos; keeps reports, secrets and the Temporal history. */
function resetWorld(dataDir: string): void {
  rmSync(join(dataDir, 'store'), { recursive: true, force: true });
  let names: string[] = [];
  try {
    names = readdirSync(dataDir);
  } catch {
    // No data directory yet: nothing to reset.
  }
  for (const name of names) {
    if (name.startsWith('fleet.duckdb') || name.startsWith('simulator.duckdb')) {
      rmSync(join(dataDir, name), { force: true });
    }
  }
  say(
    `reset the simulated world in ${displayPath(dataDir)} (store, fleet.duckdb, simulator.duckdb); reports and temporal.db are kept`,
  );
}

/**
 * Ends demo rollouts an earlier, interrupted demo left running in this data directory's history: they
 * would act on the world just reset. Only used with the dev server the demo owns.
 */
async function endLeftovers(client: Client): Promise<void> {
  const ids: string[] = [];
  for await (const wf of client.workflow.list({
    query: `WorkflowType = '${WORKFLOW_TYPE}' AND ExecutionStatus = 'Running'`,
  })) {
    if (wf.workflowId.startsWith('demo-')) ids.push(wf.workflowId);
  }
  for (const id of ids) {
    await client.workflow
      .getHandle(id)
      .terminate('superseded by a new demo run (the simulated world was reset)');
  }
  if (ids.length > 0)
    say(`ended ${ids.length} demo rollout(s) left running by an earlier demo: ${ids.join(', ')}`);
}

export async function runDemo(): Promise<number> {
  const config = loadConfig();
  const started = Date.now();
  const interrupt = new AbortController();
  // Ends the watch of the vehicle rollout when the demo stops for any reason (no watch left waiting).
  const watchStop = new AbortController();
  let server: DevServer | undefined;
  let services: Services | undefined;
  let sender: DemoFleet | undefined;
  let workerConn: NativeConnection | undefined;
  let clientConn: Connection | undefined;
  let rollout: Promise<RolloutResult> | undefined;
  let received: { events: number; labels: number; uploads: number } | undefined;
  let both: Promise<{ vehicles: RolloutResult; secondsVehicles: number; service: ServiceDemo }> | undefined;

  let signals = 0;
  const onSignal = () => {
    signals++;
    if (signals === 1) {
      process.stderr.write('\ndemo: stopping (Ctrl-C again to force)\n');
      interrupt.abort();
      return;
    }
    server?.process.kill('SIGKILL');
    sender?.kill();
    process.exit(130);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // Output closed (e.g. piped into `head`): stop as on Ctrl-C rather than die with the server running.
  const onOutputError = () => interrupt.abort();
  process.stdout.on('error', onOutputError);
  // Last resort when the process exits without the cleanup below (an uncaught error): no orphan server.
  const onExit = () => {
    if (server && server.process.exitCode === null) server.process.kill('SIGKILL');
    sender?.kill();
  };
  process.on('exit', onExit);
  const check = () => {
    if (interrupt.signal.aborted) throw new WatchInterrupted();
  };

  try {
    resetWorld(config.dataDir);
    // The demo's packs are the fixtures, signed by the fixture signer (models/keys): its registry trusts it.
    trustFixtureSigner(config.dataDir);

    let address = config.address;
    if (!address) {
      server = await startDevServer({
        dbFile: join(config.dataDir, 'temporal.db'),
        port: 7233,
        uiPort: 8233,
        ui: true,
        namespace: config.namespace,
      });
      address = server.address;
      say(
        `Temporal dev server on ${address} (history in ${displayPath(join(config.dataDir, 'temporal.db'))})`,
      );
    } else {
      say(`using the Temporal server at ${address} (TEMPORAL_ADDRESS)`);
    }
    check();

    quietRuntime();
    // The vehicle rollout reads only what the fleet's own process sent (FLEETGATE_TELEMETRY=simulator).
    services = await openServices(config.dataDir, config.root, undefined, {
      kind: 'simulator',
      watermarkWaitMs: WINDOW_WAIT_MS,
    });
    const manifest = loadFleetManifest(FLEET);
    const cohorts = manifest.cohorts.map((c) => c.name);
    const prod = await bootstrapProduction(services, PRODUCTION, cohorts, 'demo');
    const fleet = await initSimFleet(
      { conn: services.db.connection, key: services.key, root: services.root },
      FLEET,
      Object.fromEntries(cohorts.map((c) => [c, prod.digest])),
    );
    say(
      `fleet "${fleet.fleet}": ${fleet.vehicles} simulated vehicles in ${cohorts.length} cohorts ` +
        `(${cohorts.join(', ')}), all on production ${prod.name}@${prod.version}`,
    );
    check();
    sender = await startDemoFleet({
      writer: services.writer,
      fleet: fleet.fleet,
      dataDir: config.dataDir,
      root: config.root,
    });
    say(
      `the fleet sends its events and labels over HTTP to the ingestion endpoint ${sender.url} ` +
        `(fleetgate fleet simulate --ingest, PID ${sender.pid}, log ${displayPath(sender.logFile)})`,
    );
    const fleetDied = sender.died;

    clientConn = await Connection.connect(connectionOptions(config, address));
    const client = new Client({ connection: clientConn, namespace: config.namespace });
    if (server) await endLeftovers(client);

    const check_ = prepareRolloutRequest({
      policy: POLICY,
      candidate: CANDIDATE,
      fleet: FLEET,
      id: `demo-${timestamp(new Date(), '-')}`,
      timeScale: TIME_SCALE,
      requestedBy: defaultRequester(),
    });
    if (!check_.ok)
      throw new CliError(`invalid policy ${POLICY}:\n${check_.problems.map((l) => `  ${l}`).join('\n')}`);
    const request = check_.request;
    const id = request.rolloutId;

    // Created last, so that nothing between its creation and `runUntil` can leave it unstarted.
    workerConn = await NativeConnection.connect(connectionOptions(config, address));
    const worker: Worker = await createFleetgateWorker({
      connection: workerConn,
      namespace: config.namespace,
      taskQueue: config.taskQueue,
      services,
    });
    rollout = (async () => {
      check();
      // With FleetgatePhase set, the rollout keeps its search attributes up to date as it moves.
      const { handle } = await startRolloutWorkflow(client, {
        taskQueue: config.taskQueue,
        workflowId: id,
        workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
        args: [request],
      });
      say(`started rollout ${id}: ${CANDIDATE} with ${POLICY}, fleet time x${TIME_SCALE}`);
      const view = new ProgressView(process.stdout);
      return watch(handle, {
        view,
        signal: AbortSignal.any([interrupt.signal, watchStop.signal]),
        onStatus: approver(handle, view),
      });
    })();
    // Then the same workflow on a service: the gateway's routing weights instead of over-the-air waves.
    both = Promise.race([rollout, fleetDied]).then(async (vehicles) => {
      const secondsVehicles = Math.round((Date.now() - started) / 1000);
      received = await sender!.received();
      // The service rollout does not need the fleet's process.
      await sender!.stop();
      check();
      process.stdout.write('\n');
      const service = await runServiceDemo({
        client,
        services: services!,
        taskQueue: config.taskQueue,
        production: PRODUCTION,
        signal: interrupt.signal,
        say,
        onStatus: approver,
      });
      return { vehicles, secondsVehicles, service };
    });
    // Ctrl-C also stops the worker (the SDK listens for it); the watch still gets time to end its calls.
    const {
      vehicles: result,
      secondsVehicles,
      service,
    } = await worker.runUntil(both, {
      promiseCompletionTimeout: '15s',
    });

    const history = await client.workflow.getHandle(id).fetchHistory();
    summary(result, {
      historyEvents: history.events?.length ?? 0,
      uiUrl: server?.uiUrl,
      namespace: config.namespace,
      address,
      ownServer: Boolean(server),
      seconds: secondsVehicles,
      ...(received ? { received } : {}),
    });
    serviceSummary(service, Math.round((Date.now() - started) / 1000) - secondsVehicles);
    return result.outcome === 'completed' && service.result.outcome === 'completed' ? 0 : 1;
  } catch (err) {
    if (interrupt.signal.aborted) {
      process.stderr.write(
        'demo: interrupted; a started rollout stays in the history and resumes when a worker runs ' +
          '("npx fleetgate server" and "npx fleetgate worker")\n',
      );
      return 130;
    }
    throw new CliError(`demo failed: ${causeMessage(err)}`);
  } finally {
    await stopAll([
      // No client call may still be under way when its connection closes.
      () => watchStop.abort(),
      () => rollout?.catch(() => undefined),
      () => both?.catch(() => undefined),
      () => clientConn?.close(),
      () => workerConn?.close(),
      () => sender?.close(),
      () => services?.close(),
      () => server?.stop(),
    ]);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.off('exit', onExit);
    process.stdout.off('error', onOutputError);
  }
}

/**
 * Approves every gate the rollout opens, once, as the demo's reviewer. An escalation (data that could
 * not decide) is approved too, after its evidence is shown, so that the demo ends; a real reviewer
 * reads the evidence with `fleetgate status` first and may reject instead.
 */
function approver(handle: WorkflowHandle, view: ProgressView): (status: RolloutStatus) => Promise<void> {
  const done = new Set<string>();
  return async (status) => {
    const gate = status.pendingGate;
    const key = `${gate?.gate}|${gate?.openedAt}`;
    if (!gate || done.has(key) || gate.approvals.includes(REVIEWER)) return;
    done.add(key);
    for (const line of gate.evidence ?? []) view.note(`demo: escalated, ${line}`);
    view.note(
      `demo: gate "${gate.gate}" is pending; approving as ${REVIEWER}, the same as: ` +
        `npx fleetgate approve ${shellQuote(handle.workflowId)} --gate ${shellQuote(gate.gate)} --reviewer ${REVIEWER}`,
    );
    const receipt = await handle.executeUpdate(approveUpdate, {
      args: [{ gate: gate.gate, reviewer: REVIEWER, comment: 'approved by the demo' }],
    });
    view.note(
      `demo: ${REVIEWER} approved gate "${receipt.gate}" (${receipt.approvals.length}/${receipt.required})` +
        (receipt.open ? '; the gate is open' : ''),
    );
  };
}

function summary(
  result: RolloutResult,
  ctx: {
    historyEvents: number;
    uiUrl?: string;
    namespace: string;
    address: string;
    ownServer: boolean;
    seconds: number;
    received?: { events: number; labels: number; uploads: number };
  },
): void {
  const color = Boolean(process.stdout.isTTY) && !process.env.NO_COLOR;
  const id = result.rolloutId;
  const out: string[] = ['', `── summary of ${id} (${ctx.seconds} s) ──`];
  out.push(renderResult({ ...result, reportPath: undefined }, { color }));
  if (result.reportPath) out.push(`report   ${displayPath(result.reportPath)}`);
  out.push(`history  ${ctx.historyEvents} events`);
  if (ctx.received) {
    out.push(
      `fleet    ${ctx.received.events} events, ${ctx.received.labels} labels and ${ctx.received.uploads} upload ` +
        `reports came over HTTP from the fleet's process (stored by the endpoint)`,
    );
  }
  const ns = encodeURIComponent(ctx.namespace);
  if (ctx.uiUrl) out.push(`web UI   ${ctx.uiUrl}/namespaces/${ns}/workflows/${encodeURIComponent(id)}`);
  const addr = ctx.ownServer ? '127.0.0.1:7233' : ctx.address;
  const temporal = temporalCommand();
  out.push('look again later:');
  if (ctx.ownServer) out.push('  npx fleetgate server        (keeps running; then, in another terminal:)');
  out.push(`  ${temporal} workflow list --address ${addr}`);
  out.push(`  ${temporal} workflow show --workflow-id ${shellQuote(id)} --address ${addr}`);
  out.push(`  ${temporal} workflow list --query 'FleetgateOutcome="completed"' --address ${addr}`);
  out.push('  npx fleetgate ui            (the status page, with every rollout of this server)');
  process.stdout.write(out.join('\n') + '\n');
}

/** The service rollout's part of the summary: its outcome per cohort and the gateway's routes after it. */
function serviceSummary(service: ServiceDemo, seconds: number): void {
  const color = Boolean(process.stdout.isTTY) && !process.env.NO_COLOR;
  const out: string[] = ['', `── summary of ${service.result.rolloutId} (${seconds} s) ──`];
  out.push(renderResult({ ...service.result, reportPath: undefined }, { color }));
  if (service.result.reportPath) out.push(`report   ${displayPath(service.result.reportPath)}`);
  out.push(`gateway  ${service.gatewayUrl} (stopped), routes at the end:`);
  for (const line of service.routes) out.push(`  ${line}`);
  process.stdout.write(out.join('\n') + '\n');
}

/** How to call the Temporal CLI here: `temporal` when on PATH, else the pinned copy under .tools/. */
function temporalCommand(): string {
  try {
    const p = temporalCli();
    return p.startsWith(process.cwd()) ? displayPath(p) : basename(p);
  } catch {
    return 'temporal';
  }
}

/** Runs every stop step, each even when an earlier one failed; reports failures in one line each. */
async function stopAll(steps: (() => unknown)[]): Promise<void> {
  for (const step of steps) {
    try {
      await step();
    } catch (err) {
      process.stderr.write(`demo: while stopping: ${causeMessage(err)}\n`);
    }
  }
}

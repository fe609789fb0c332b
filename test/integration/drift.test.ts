/**
 * Drift checks on a real Temporal dev server with the real activities and worker: the schedule that
 * `fleetgate drift schedule` makes (overlap skip, a catch-up window of one interval) is created, then
 * updated in place; triggering it runs a drift check whose result is stored under the schedule. Its
 * policy's action "hold" finds the running rollout through the server's visibility (the real list
 * query) and pauses it with the rollout's own pause update.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { startDevServer, type DevServer } from '../../workers/dev-server';
import { createFleetgateWorker, quietRuntime } from '../../workers/worker';
import { readDriftCheck, recentDriftChecks, RUNNING_ROLLOUTS } from '../../activities/drift';
import { driftRequest, driftScheduleOptions, upsertDriftSchedule } from '../../cli/drift';
import type { DriftCheckOutcome } from '../../workflows/drift';
import { statusQuery, WORKFLOW_TYPE } from '../../workflows/definitions';
import { loadPolicy, makeWorld, rolloutRequest, type World } from '../support';

const FLEET = 'test/fixtures/fleet-drift.yaml';
let server: DevServer;
let tmp: string;

before(async () => {
  quietRuntime();
  tmp = mkdtempSync(join(tmpdir(), 'fleetgate-it-drift-'));
  server = await startDevServer({ dbFile: join(tmp, 'temporal.db') });
});

after(async () => {
  await server?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

/** Waits, without a deadline of its own (the test runner's timeout bounds it), until `probe` says yes. */
async function until<T>(probe: () => Promise<T | undefined>): Promise<T> {
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 200));
  }
}

test('a drift schedule skips overlaps, catches up one interval, and its triggered check holds the drifted rollout', async () => {
  const world: World = await makeWorld(FLEET);
  const connection = await NativeConnection.connect({ address: server.address });
  const clientConn = await Connection.connect({ address: server.address });
  const client = new Client({ connection: clientConn });
  const taskQueue = `it-drift-${process.pid}`;
  const scheduleId = `it-drift-${process.pid}`;
  const rolloutId = `it-drift-rollout-${process.pid}`;
  try {
    const worker = await createFleetgateWorker({
      connection,
      namespace: 'default',
      taskQueue,
      services: world.services,
    });
    await worker.runUntil(async () => {
      // A rollout of hw3/eu and hw4/us, waiting in its long shadow when the check comes.
      const policy = loadPolicy('examples/demo-policy.yaml');
      policy.cohorts = ['hw3/eu', 'hw4/us'];
      policy.shadow!.duration = '30d';
      const rollout = await client.workflow.start(WORKFLOW_TYPE, {
        taskQueue,
        workflowId: rolloutId,
        args: [rolloutRequest(rolloutId, 'models/candidate-good', policy, FLEET, 1)],
      });
      await until(async () => {
        for await (const wf of client.workflow.list({ query: RUNNING_ROLLOUTS }))
          if (wf.workflowId === rolloutId) return true;
        return undefined;
      });

      // 10^6 fleet seconds a second: the manifest's drift, two hours after fleet init, has come by the check.
      const request = driftRequest({ fleet: FLEET, id: scheduleId, timeScale: '1000000' });
      request.policy = { action: 'hold' };
      const hour = 3_600_000;
      assert.equal(
        await upsertDriftSchedule(client, driftScheduleOptions(request, hour, taskQueue)),
        'created',
      );
      const handle = client.schedule.getHandle(scheduleId);
      let described = await handle.describe();
      assert.equal(described.policies.overlap, 'SKIP');
      assert.equal(described.policies.catchupWindow, hour);
      // Scheduling again updates the same schedule: a new interval and a catch-up window to match.
      assert.equal(
        await upsertDriftSchedule(client, driftScheduleOptions(request, 2 * hour, taskQueue)),
        'updated',
      );
      described = await handle.describe();
      assert.equal(described.policies.overlap, 'SKIP');
      assert.equal(described.policies.catchupWindow, 2 * hour);
      assert.deepEqual(
        described.spec.intervals?.map((i) => Number(i.every)),
        [2 * hour],
      );
      assert.equal(described.action.workflowType, 'driftCheckWorkflow');

      await handle.trigger();
      const action = await until(async () => (await handle.describe()).info.recentActions.at(-1));
      const checkId = action.action.workflow.workflowId;
      const outcome: DriftCheckOutcome = await client.workflow.getHandle(checkId).result();
      assert.equal(outcome.scheduleId, scheduleId);
      assert.equal(outcome.checkId, checkId);
      assert.deepEqual(Object.fromEntries(outcome.cohorts.map((c) => [c.cohort, c.verdict])), {
        'hw3/eu': 'ok',
        'hw4/us': 'drift',
        'hw3/nordic': 'ok',
      });
      const stored = await readDriftCheck(world.services.store, outcome.resultKey);
      assert.equal(stored?.checkId, checkId);
      assert.deepEqual(
        (await recentDriftChecks(world.services.store, scheduleId)).map((r) => r.checkId),
        [checkId],
      );

      assert.deepEqual(outcome.held, { paused: [rolloutId], refused: [] });
      const status = await rollout.query(statusQuery);
      assert.equal(status.paused?.by, 'drift-check');
      assert.match(status.paused?.reason ?? '', /hw4\/us/);
      await rollout.terminate('the test is over');
      await handle.delete();
    });
  } finally {
    await client.workflow
      .getHandle(rolloutId)
      .terminate('the test is over')
      .catch(() => undefined);
    await clientConn.close();
    await connection.close();
    await world.close();
  }
});

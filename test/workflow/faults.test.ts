/**
 * rolloutWorkflow under faults the real stack reaches only slowly, on the time-skipping server with the
 * real activities: a compensation whose dependency stays down longer than its retries (the revert of a
 * wave failing, as a gateway down for minutes makes it), and a second rollout started on cohorts that
 * another rollout holds.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ApplicationFailure } from '@temporalio/common';
import { Worker } from '@temporalio/worker';
import { statusQuery, type RolloutResult } from '../../workflows/definitions';
import { ErrorType } from '../../errors';
import { createActivities } from '../../workers/worker';
import { readPointer } from '../../activities/registry';
import {
  loadPolicy,
  makeWorld,
  rolloutRequest,
  runningDigest,
  startRollout,
  timeSkippingServer,
  withWorker,
  type ReportEntry,
  type World,
} from '../support';

const server = timeSkippingServer();
const week = () => loadPolicy('test/fixtures/policy-week.yaml');

/** A worker whose `revertWave` fails its first `failures` calls (the dependency down), then works. */
async function withFlakyRevert<T>(
  world: World,
  failures: number,
  fn: (taskQueue: string, calls: () => number) => Promise<T>,
): Promise<T> {
  const real = createActivities(world.services);
  let calls = 0;
  const taskQueue = `faults-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  const worker = await Worker.create({
    connection: server.env.nativeConnection,
    taskQueue,
    workflowBundle: server.bundle,
    activities: {
      ...real,
      async revertWave(input: Parameters<typeof real.revertWave>[0]) {
        if (++calls <= failures) {
          throw ApplicationFailure.create({
            type: ErrorType.Unavailable,
            message: `gateway at 127.0.0.1 refused the connection (call ${calls})`,
          });
        }
        return real.revertWave(input);
      },
    },
  });
  return worker.runUntil(fn(taskQueue, () => calls));
}

describe('faults (time-skipping)', () => {
  test('a revert that fails longer than its retries is tried again in rounds until it is done; the rollout ends only then', async () => {
    const world = await makeWorld();
    try {
      // 12 failures: two whole rounds of 5 attempts and two attempts of the third.
      const { result, calls } = await withFlakyRevert(world, 12, async (tq, calls) => {
        const handle = await startRollout(
          server.env,
          tq,
          rolloutRequest(`flaky-revert`, 'models/candidate-regress', week()),
        );
        return { result: (await handle.result()) as RolloutResult, calls: calls() };
      });
      assert.ok(calls > 12, `the revert was called again after its failures (${calls} calls)`);
      assert.equal(result.outcome, 'completed', result.reason);
      const nordic = result.cohorts.find((c) => c.cohort === 'hw3/nordic')!;
      assert.equal(nordic.state, 'rolled_back');
      const report = JSON.parse(readFileSync(result.reportPath!, 'utf8')) as {
        decisions: ReportEntry[];
        candidate: { digest: string };
      };
      const retries = report.decisions.filter((d) => d.action === 'compensation-retry');
      assert.ok(retries.length >= 1, 'the failing compensation is in the decision log');
      assert.match(retries[0]!.reason, /revert of wave \d+ in hw3\/nordic failed \(round 1/);
      assert.match(retries[0]!.reason, /refused the connection/);
      const done = report.decisions.find((d) => d.action === 'compensation-done');
      assert.match(done?.reason ?? '', /done after 3 rounds/);
      // The fleet agrees: no Nordic vehicle runs the candidate.
      assert.equal((await runningDigest(world, report.candidate.digest))['hw3/nordic'] ?? 0, 0);
    } finally {
      await world.close();
    }
  });

  test('a rollout on cohorts another rollout holds ends rejected with its report, and leaves the other alone', async () => {
    const world = await makeWorld();
    try {
      await withWorker(server.env, server.bundle, world, async (tq) => {
        const first = await startRollout(
          server.env,
          tq,
          rolloutRequest(`holder`, 'models/candidate-good', week()),
        );
        // Wait until the first rollout holds its cohorts (its candidate pointers set at register).
        for (let i = 0; (await first.query(statusQuery)).phase === 'register'; i++) {
          assert.ok(i < 400, 'the first rollout left register');
          await new Promise((r) => setTimeout(r, 25));
        }
        // The same model, and another one: both refused, neither takes or clears the first one's cohorts.
        for (const [n, pack] of ['models/candidate-good', 'models/candidate-regress'].entries()) {
          const second = await startRollout(server.env, tq, rolloutRequest(`latecomer-${n}`, pack, week()));
          const r = (await second.result()) as RolloutResult;
          assert.equal(r.outcome, 'rejected', r.reason);
          assert.equal(r.rejectedAt, 'register');
          assert.match(r.reason, new RegExp(`is taken by rollout holder`));
          assert.match(r.reason, new RegExp(`fleetgate abort holder`));
          assert.ok(r.reportPath, 'a rejected rollout has its report');
          const report = JSON.parse(readFileSync(r.reportPath, 'utf8')) as { decisions: ReportEntry[] };
          assert.ok(report.decisions.some((d) => d.action === 'rejected'));
          for (const cohort of world.cohorts) {
            const { pointer } = await readPointer(world.services.store, cohort, 'candidate');
            assert.equal(pointer?.rolloutId, `holder`, `${cohort} still held by the first`);
          }
        }
        const r = (await first.result()) as RolloutResult;
        assert.equal(r.outcome, 'completed', r.reason);
        // The good candidate is decided on its own data: promoted, or held where the budget ran out
        // before non-inferiority was shown (the draw depends on the start time); never rolled back.
        assert.ok(
          r.cohorts.every((c) => c.state === 'promoted' || c.state === 'held'),
          JSON.stringify(r.cohorts),
        );
      });
    } finally {
      await world.close();
    }
  });
});

/**
 * The shadow phase inside rolloutWorkflow, on the time-skipping server with the real activities and the
 * vehicles' upload filter: a candidate that misses hazards is stopped by the per-class recall gate before
 * any vehicle gets it, a good candidate passes the same gates, and a candidate whose vehicles blow their
 * upload budget is stopped at the first budget check instead of at the end of the shadow.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { RolloutResult } from '../../workflows/definitions';
import {
  loadPolicy,
  makeWorld,
  otaOps,
  query,
  reportOf,
  runRollout,
  timeSkippingServer,
  type World,
} from '../support';
import type { PolicyInput } from '../../policies/schema';

const server = timeSkippingServer();

const decisions = (result: RolloutResult) => reportOf(result).decisions;

/** The week policy with the upload filter and class gates on. */
function filtered(): PolicyInput {
  const policy = loadPolicy('test/fixtures/policy-week.yaml');
  policy.shadow = {
    ...policy.shadow!,
    sample: 0.2,
    uploadBudget: { perVehiclePerDay: 400, maxOverBudgetShare: 0.05 },
    classGates: { maxRecallDrop: 0.1, maxPrecisionDrop: 0.1, minLabeled: 30 },
  };
  return policy;
}

const run = (world: World, id: string, pack: string, policy: PolicyInput) =>
  runRollout(server, world, id, pack, policy);

describe('shadow with the upload filter in rolloutWorkflow (time-skipping)', () => {
  test('a candidate that misses hazards fails the class recall gate; no vehicle gets it', async () => {
    const world = await makeWorld();
    try {
      const result = await run(world, `shadow-blind`, 'models/candidate-blind', filtered());
      assert.equal(result.outcome, 'rejected', result.reason);
      assert.equal(result.rejectedAt, 'shadow');
      const fails = decisions(result).filter((d) => d.action === 'shadow-fail');
      assert.deepEqual(fails.map((d) => d.cohort).sort(), [...world.cohorts].sort());
      for (const d of fails) {
        assert.match(d.reason, /class 1 recall [\d.]+% against production's [\d.]+% \(drop/, d.reason);
      }
      assert.ok(!(await otaOps(world)).some((o) => o.op === 'deliver'), 'nothing was delivered');
    } finally {
      await world.close();
    }
  });

  test('a good candidate passes the same gates, judged on weighted estimates', async () => {
    const world = await makeWorld();
    try {
      const result = await run(world, `shadow-good`, 'models/candidate-good', filtered());
      const passes = decisions(result).filter((d) => d.action === 'shadow-pass');
      assert.deepEqual(passes.map((d) => d.cohort).sort(), [...world.cohorts].sort(), result.reason);
      for (const d of passes) assert.match(d.reason, /Shadow passed: \d+ events \(\d+ uploaded\)/);
      assert.equal(result.outcome, 'completed', result.reason);
    } finally {
      await world.close();
    }
  });

  test('vehicles that blow their upload budget stop the shadow at the first check', async () => {
    const world = await makeWorld();
    try {
      const policy = filtered();
      policy.shadow!.uploadBudget = { perVehiclePerDay: 12, maxOverBudgetShare: 0.05 };
      const result = await run(world, `shadow-budget`, 'models/candidate-good', policy);
      assert.equal(result.outcome, 'rejected', result.reason);
      assert.equal(result.rejectedAt, 'shadow');
      const fails = decisions(result).filter((d) => d.action === 'shadow-fail');
      assert.equal(fails.length, world.cohorts.length);
      const checks = new Set(fails.map((d) => d.dataAsOf));
      assert.equal(checks.size, 1, 'every cohort stopped at the same check');
      for (const d of fails)
        assert.match(d.reason, /^Shadow stopped: upload budget exceeded on \d+(\.\d+)?% of vehicle-windows/);
      // Stopped after the first of four 6-hour windows, not at the end of the day of shadow.
      const windows = await query<{ n: unknown }>(
        world,
        `SELECT count(DISTINCT batch_id) AS n FROM shadow_edge WHERE rollout_id = '${result.rolloutId}'`,
      );
      assert.equal(Number(windows[0]!.n), 1);
      assert.ok(!(await otaOps(world)).some((o) => o.op === 'deliver'), 'nothing was delivered');
    } finally {
      await world.close();
    }
  });
});

/**
 * The decision engine inside rolloutWorkflow, on the time-skipping server with the real activities:
 * data that cannot decide is escalated to the reviewers (approved: promoted; unanswered: held, never
 * promoted), a policy that asks for fleet-wide rollback gets it, and a group-sequential design decides
 * the looks when the policy chooses one.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { WorkflowUpdateFailedError } from '@temporalio/client';
import { approveUpdate, statusQuery, type RolloutResult } from '../../workflows/definitions';
import {
  loadPolicy,
  makeWorld,
  maybeSaveHistory,
  reportOf,
  otaOps,
  rolloutRequest,
  runningDigest,
  runRollout,
  startRollout,
  timeSkippingServer,
  withWorker,
  type World,
} from '../support';
import type { PolicyInput } from '../../policies/schema';

const server = timeSkippingServer();

const week = (): PolicyInput => loadPolicy('test/fixtures/policy-week.yaml');

/** More labels per arm than the fleet can give: every look is short of data, so the engine cannot decide. */
function undecidable(): PolicyInput {
  const policy = week();
  policy.analysis!.minLabeledPerArm = 1_000_000;
  policy.analysis!.maxExtraLooks = 0;
  policy.analysis!.escalation = { required: 1, timeout: '2d' };
  return policy;
}

const run = (world: World, id: string, pack: string, policy: PolicyInput, fleet?: string) =>
  runRollout(server, world, id, pack, policy, fleet);

describe('decision engine in rolloutWorkflow (time-skipping)', () => {
  test('data that cannot decide is escalated; an allowed reviewer approves with the evidence in front of them', async () => {
    const world = await makeWorld();
    try {
      const result = await withWorker(server.env, server.bundle, world, async (tq) => {
        const handle = await startRollout(
          server.env,
          tq,
          rolloutRequest(`escalate`, 'models/candidate-good', undecidable()),
        );
        // Every escalation (a wave that ended short of data, or the final analysis) is approved by alice.
        const gates: string[][] = [];
        for (let i = 0; i < 400; i++) {
          const s = await handle.query(statusQuery);
          if (s.phase === 'done') break;
          const gate = s.pendingGate;
          if (gate?.kind !== 'escalation' || gate.approvals.length > 0) {
            await server.env.sleep('2h');
            continue;
          }
          assert.equal(gate.evidence!.length, gate.cohorts!.length);
          for (const c of s.cohorts) {
            assert.equal(
              c.state === 'escalated',
              gate.cohorts!.includes(c.cohort),
              `${c.cohort} is ${c.state}`,
            );
          }
          if (gates.length === 0) {
            await assert.rejects(
              handle.executeUpdate(approveUpdate, { args: [{ gate: 'escalation', reviewer: 'mallory' }] }),
              (e: Error) =>
                e instanceof WorkflowUpdateFailedError && /not allowed/.test(String(e.cause?.message)),
            );
          }
          gates.push(gate.cohorts!);
          await handle.executeUpdate(approveUpdate, {
            args: [{ gate: 'escalation', reviewer: 'alice', comment: 'margin too strict' }],
          });
        }
        // Each wave ends short of data (escalated, approved: the cohorts go on), then the final analysis.
        assert.equal(gates.length, 4, JSON.stringify(gates));
        for (const g of gates) assert.deepEqual([...g].sort(), [...world.cohorts].sort());
        const r: RolloutResult = await handle.result();
        await maybeSaveHistory('escalate', handle);
        return r;
      });
      assert.equal(result.outcome, 'completed', result.reason);
      for (const c of result.cohorts) assert.equal(c.state, 'promoted', `${c.cohort}: ${c.headline}`);
      const report = reportOf(result);
      const escalated = report.decisions.filter((d) => d.action === 'escalate' && d.phase === 'analysis');
      assert.equal(escalated.length, world.cohorts.length);
      assert.ok(escalated.every((d) => /inconclusive or missing data never promotes/.test(d.reason)));
      const promoted = report.decisions.filter((d) => d.action === 'promoted');
      assert.ok(promoted.every((d) => /Approved by the reviewers \(alice\)/.test(d.reason)));
    } finally {
      await world.close();
    }
  });

  test('an escalation nobody answers leaves every cohort held and the fleet as it was', async () => {
    const world = await makeWorld();
    try {
      const result = await run(world, `unanswered`, 'models/candidate-good', undecidable());
      assert.equal(result.outcome, 'completed', result.reason);
      for (const c of result.cohorts) assert.equal(c.state, 'held', `${c.cohort}: ${c.headline}`);
      const report = reportOf(result);
      const held = report.decisions.filter((d) => d.action === 'withdraw');
      assert.equal(held.length, world.cohorts.length);
      assert.ok(
        held.every((d) => /escalation unanswered after 2d .*never promoted by default/.test(d.reason)),
      );
      assert.deepEqual(await runningDigest(world, report.candidate.digest), {});
      const prod = await world.services.store.get(`pointers/${world.cohorts[0]}/production.json`);
      assert.equal(JSON.parse(prod!.toString()).digest, world.productionDigest, 'production unchanged');
    } finally {
      await world.close();
    }
  });

  test('a policy with rollbackScope fleet rolls back every cohort when one shows harm', async () => {
    const world = await makeWorld();
    try {
      const policy = week();
      policy.analysis!.rollbackScope = 'fleet';
      const result = await run(world, `fleetwide`, 'models/candidate-regress', policy);
      assert.equal(result.outcome, 'completed', result.reason);
      for (const c of result.cohorts) assert.equal(c.state, 'rolled_back', `${c.cohort}: ${c.headline}`);
      const report = reportOf(result);
      const fleet = report.decisions.find((d) => d.action === 'fleet-rollback');
      assert.ok(fleet, 'the fleet-wide decision is in the log');
      assert.match(fleet.reason, /rolls back the whole fleet on harm in any cohort \(harm in hw3\/nordic\)/);
      assert.deepEqual(await runningDigest(world, report.candidate.digest), {});
    } finally {
      await world.close();
    }
  });

  test('safety events alone, without waiting for labels, roll back a candidate that misses hazards', async () => {
    const world = await makeWorld();
    try {
      const policy = week();
      policy.analysis!.metrics = [{ name: 'safety_events', kind: 'rate', margin: 0.5 }];
      // candidate-blind: production's weights with a threshold that calls more hazards clear.
      const result = await run(world, `safety`, 'models/candidate-blind', policy);
      assert.equal(result.outcome, 'completed', result.reason);
      const harmed = result.cohorts.filter((c) =>
        c.metrics?.some((m) => m.metric === 'safety_events' && m.verdict === 'harm'),
      );
      assert.ok(harmed.length >= 1, JSON.stringify(result.cohorts.map((c) => [c.cohort, c.headline])));
      for (const c of harmed) {
        assert.equal(c.state, 'rolled_back', c.headline);
        const m = c.metrics!.find((x) => x.metric === 'safety_events')!;
        assert.equal(m.test, 'exact-poisson');
        assert.ok(m.ci[0] > 0 && m.lambda > 1, `rate ratio ${m.lambda}, interval ${m.ci.join(', ')}`);
        // Harm is proven against the harm threshold (ratio 1); the posterior is about the margin (ratio
        // 1.5), which a proven harm need not pass: it is reported beside the test, as a probability.
        const p = m.probAboveMargin;
        assert.ok(p !== undefined && p > 0 && p < 1, `posterior P(ratio > 1.5) ${p}`);
      }
      const report = reportOf(result);
      const rollback = report.decisions.find(
        (d) => d.action === 'rollback' && d.cohort === harmed[0]!.cohort,
      )!;
      assert.match(rollback.reason, /safety_events .* per vehicle-hour .* exact interval/);
      assert.deepEqual(
        await runningDigest(world, report.candidate.digest),
        {},
        'no vehicle keeps the candidate',
      );
    } finally {
      await world.close();
    }
  });

  test('a SKU that fails the bench leaves only its own cohorts out; the others roll out', async () => {
    const fleet = 'test/fixtures/fleet-slow-hw4.yaml';
    const world = await makeWorld(fleet);
    try {
      const result = await run(world, `halfslow`, 'models/candidate-good', week(), fleet);
      assert.equal(result.outcome, 'completed', result.reason);
      const byCohort = Object.fromEntries(result.cohorts.map((c) => [c.cohort, c]));
      assert.equal(
        byCohort['hw4/us']!.state,
        'rejected',
        JSON.stringify(reportOf(result).decisions.filter((d) => d.phase === 'bench')),
      );
      assert.match(byCohort['hw4/us']!.headline!, /bench failed on hw4/);
      for (const c of ['hw3/eu', 'hw3/nordic']) assert.equal(byCohort[c]!.state, 'promoted', c);
      const ops = await otaOps(world);
      assert.ok(ops.length > 0 && ops.every((o) => o.cohort !== 'hw4/us'), 'nothing delivered to hw4/us');
      const report = reportOf(result);
      assert.ok(report.decisions.some((d) => d.action === 'rejected' && d.cohort === 'hw4/us'));
    } finally {
      await world.close();
    }
  });

  test("installs failing on one SKU abort and revert that cohort's wave; the other cohorts go on", async () => {
    const fleet = 'test/fixtures/fleet-flaky-hw4.yaml';
    const world = await makeWorld(fleet);
    try {
      const result = await run(world, `flaky`, 'models/candidate-good', week(), fleet);
      assert.equal(result.outcome, 'completed', result.reason);
      const byCohort = Object.fromEntries(result.cohorts.map((c) => [c.cohort, c]));
      assert.equal(byCohort['hw4/us']!.state, 'rolled_back');
      assert.equal(byCohort['hw4/us']!.wave, 1, 'stopped at its first wave');
      for (const c of ['hw3/eu', 'hw3/nordic']) assert.equal(byCohort[c]!.state, 'promoted', c);
      const report = reportOf(result);
      const deliver = report.decisions.find((d) => d.action === 'deliver')!;
      assert.match(deliver.reason, /installs: hw4\/us \d+ failed and \d+ deferred of \d+/);
      const abort = report.decisions.find((d) => d.action === 'rollback' && d.cohort === 'hw4/us')!;
      assert.match(
        abort.reason,
        /wave 1 aborted in hw4\/us: \d+ of \d+ installs failed on hw4 .* above delivery\.maxFailureShare 10\.0%/,
      );
      const running = await runningDigest(world, report.candidate.digest);
      assert.equal(running['hw4/us'] ?? 0, 0, 'no hw4/us vehicle keeps the candidate');
      // Reverted only in hw4/us; a revert is logged when the wave had installed any vehicle there (all of
      // its dozen targets can fail at 80%, for about 7% of rollout ids, and then there is nothing to undo).
      const installed = Number(/hw4\/us (\d+)/.exec(deliver.reason)?.[1] ?? NaN);
      assert.ok(Number.isInteger(installed), deliver.reason);
      const reverts = (await otaOps(world)).filter((o) => o.op === 'revert');
      assert.ok(
        reverts.every((o) => o.cohort === 'hw4/us'),
        JSON.stringify(reverts),
      );
      if (installed > 0) assert.ok(reverts.length > 0, `the ${installed} hw4/us installs were reverted`);
    } finally {
      await world.close();
    }
  });

  test('a group-sequential design decides the looks: the night regression crosses its O-F boundary', async () => {
    const world = await makeWorld();
    try {
      const policy = week();
      policy.analysis!.design = 'ld-obf';
      policy.analysis!.plannedPerArm = 3000;
      const result = await run(world, `gsd`, 'models/candidate-regress', policy);
      assert.equal(result.outcome, 'completed', result.reason);
      const byCohort = Object.fromEntries(result.cohorts.map((c) => [c.cohort, c]));
      assert.equal(byCohort['hw3/nordic']!.state, 'rolled_back');
      const harm = byCohort['hw3/nordic']!.metrics!.find((m) => m.metric === 'error_rate')!;
      assert.equal(harm.test, 'ld-obf');
      assert.equal(harm.verdict, 'harm');
      assert.ok(harm.lambda >= harm.boundary, `Z ${harm.lambda} crosses ${harm.boundary}`);
      for (const c of ['hw3/eu', 'hw4/us']) assert.notEqual(byCohort[c]!.state, 'rolled_back', c);
      const looks = reportOf(result).decisions.filter((d) => d.metrics && d.cohort === 'hw3/eu');
      const bounds = looks.map((d) => d.metrics!.find((m) => m.metric === 'error_rate')!.boundary);
      const tested = bounds.filter((b) => b > 1 && b < 100);
      assert.ok(tested.length >= 3, `group-sequential boundaries at the looks: ${bounds.join(', ')}`);
      assert.ok(tested[0]! > tested[tested.length - 1]!, `O-F boundaries fall: ${tested.join(', ')}`);
    } finally {
      await world.close();
    }
  });

  test('a wave is extended until the candidate has driven its minimum exposure; a cohort that cannot is held', async () => {
    const world = await makeWorld();
    try {
      const policy = week();
      // Wave 2 (25% of each cohort for 6 hours) can never reach this: it is extended by the allowed
      // extra looks, each adding exposure, and then every cohort is held.
      policy.waves![1]!.minExposure = 1_000_000;
      const result = await run(world, `exposure`, 'models/candidate-good', policy);
      assert.equal(result.outcome, 'completed', result.reason);
      for (const c of result.cohorts) assert.equal(c.state, 'held', `${c.cohort}: ${c.headline}`);
      const entries = reportOf(result).decisions;
      const extended = entries.filter(
        (d) => d.action === 'extend' && /candidate exposure below/.test(d.reason),
      );
      assert.equal(extended.length, 2, JSON.stringify(extended));
      const hours = extended.map((d) => Number(/hw3\/eu \(([\d.]+)\)/.exec(d.reason)![1]));
      assert.ok(extended.every((d) => d.wave === 2));
      assert.ok(hours[1]! > hours[0]!, `each extra look adds exposure: ${hours.join(' -> ')}`);
      const held = entries.filter((d) => d.action === 'withdraw');
      assert.equal(held.length, world.cohorts.length);
      for (const d of held)
        assert.match(
          d.reason,
          /wave 2: the candidate drove [\d.]+ vehicle-hours .* below the wave's minExposure of 1000000, after 2 extra looks/,
        );
      assert.ok(!entries.some((d) => d.wave === 3), 'wave 3 is never delivered');
      assert.deepEqual(await runningDigest(world, reportOf(result).candidate.digest), {});
    } finally {
      await world.close();
    }
  });
});

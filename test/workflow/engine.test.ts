/**
 * The decision engine inside rolloutWorkflow, on the time-skipping server with the real activities:
 * data that cannot decide is escalated to the reviewers (approved: promoted; unanswered: held, never
 * promoted), a policy that asks for fleet-wide rollback gets it, and a group-sequential design decides
 * the looks when the policy chooses one.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import type { WorkflowBundle } from '@temporalio/worker';
import { WorkflowUpdateFailedError } from '@temporalio/client';
import { readFileSync } from 'node:fs';
import { temporalTestServer } from '../../workers/tools';
import { getWorkflowBundle } from '../../workers/bundle';
import { quietRuntime } from '../../workers/worker';
import { approveUpdate, statusQuery, type RolloutResult } from '../../workflows/definitions';
import type { MetricResult } from '../../policies/decide';
import {
  loadPolicy,
  makeWorld,
  maybeSaveHistory,
  rolloutRequest,
  runningDigest,
  startRollout,
  withWorker,
  type World,
} from '../support';
import type { PolicyInput } from '../../policies/schema';

let env: TestWorkflowEnvironment;
let bundle: WorkflowBundle;

before(async () => {
  quietRuntime();
  env = await TestWorkflowEnvironment.createTimeSkipping({
    server: { executable: { type: 'existing-path', path: temporalTestServer() } },
  });
  bundle = await getWorkflowBundle();
});

after(async () => {
  await env?.teardown();
});

const week = (): PolicyInput => loadPolicy('test/fixtures/policy-week.yaml');

interface Entry {
  action: string;
  cohort?: string;
  reason: string;
  metrics?: MetricResult[];
}

function reportOf(result: RolloutResult): { decisions: Entry[]; candidate: { digest: string } } {
  return JSON.parse(readFileSync(result.reportPath!, 'utf8'));
}

/** A margin no candidate can be shown to stay within: every cohort ends inconclusive. */
function undecidable(): PolicyInput {
  const policy = week();
  policy.analysis!.metrics = [
    { name: 'error_rate', kind: 'binary', margin: 0.0001 },
    { name: 'latency_ms', kind: 'continuous', margin: 0.5, harmThreshold: 0.5 },
  ];
  policy.analysis!.escalation = { required: 1, timeout: '2d' };
  return policy;
}

async function run(world: World, id: string, pack: string, policy: PolicyInput): Promise<RolloutResult> {
  return withWorker(env, bundle, world, async (tq) => {
    const handle = await startRollout(env, tq, rolloutRequest(id, pack, policy));
    return handle.result();
  });
}

describe('decision engine in rolloutWorkflow (time-skipping)', () => {
  test('inconclusive data is escalated; an allowed reviewer approves with the evidence in front of them', async () => {
    const world = await makeWorld();
    try {
      const result = await withWorker(env, bundle, world, async (tq) => {
        const handle = await startRollout(
          env,
          tq,
          rolloutRequest(`escalate-${process.pid}`, 'models/candidate-good', undecidable()),
        );
        let gate;
        for (let i = 0; i < 200 && !gate; i++) {
          const s = await handle.query(statusQuery);
          if (s.pendingGate?.kind === 'escalation') gate = s.pendingGate;
          else await env.sleep('2h');
        }
        assert.ok(gate, 'an escalation gate opens');
        assert.deepEqual([...gate.cohorts!].sort(), [...world.cohorts].sort());
        assert.equal(gate.evidence!.length, world.cohorts.length);
        assert.match(gate.evidence![0]!, /error_rate .* → inconclusive/);
        const s = await handle.query(statusQuery);
        for (const c of s.cohorts) assert.equal(c.state, 'escalated');
        await assert.rejects(
          handle.executeUpdate(approveUpdate, { args: [{ gate: 'escalation', reviewer: 'mallory' }] }),
          (e: Error) =>
            e instanceof WorkflowUpdateFailedError && /not allowed/.test(String(e.cause?.message)),
        );
        await handle.executeUpdate(approveUpdate, {
          args: [{ gate: 'escalation', reviewer: 'alice', comment: 'margin too strict' }],
        });
        const r: RolloutResult = await handle.result();
        await maybeSaveHistory('escalate', handle);
        return r;
      });
      assert.equal(result.outcome, 'completed', result.reason);
      for (const c of result.cohorts) assert.equal(c.state, 'promoted', `${c.cohort}: ${c.headline}`);
      const report = reportOf(result);
      const escalated = report.decisions.filter((d) => d.action === 'escalate');
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
      const result = await run(world, `unanswered-${process.pid}`, 'models/candidate-good', undecidable());
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
      const result = await run(world, `fleetwide-${process.pid}`, 'models/candidate-regress', policy);
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

  test('a group-sequential design decides the looks: the night regression crosses its O-F boundary', async () => {
    const world = await makeWorld();
    try {
      const policy = week();
      policy.analysis!.design = 'ld-obf';
      policy.analysis!.plannedPerArm = 3000;
      const result = await run(world, `gsd-${process.pid}`, 'models/candidate-regress', policy);
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
});

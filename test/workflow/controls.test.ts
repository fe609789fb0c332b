/**
 * Reviewer quorum gates and operator controls of rolloutWorkflow on the time-skipping test server with
 * the real activities: a two-person gate that refuses the initiator, a second approval by the same
 * reviewer, an unknown reviewer, the wrong gate and a stale digest (each with its reason and without a
 * trace in history); a gate left unanswered holds; a promotion gate; pause holds a rollout until it is
 * resumed; an emergency rollback of one cohort compensates it while the others are promoted (one of an
 * unknown cohort, `constructor` and `__proto__` included, is refused); malformed
 * update payloads (wrong types, not an object, unknown fields, 3 MB texts) are refused as non-retryable
 * InvalidInput before any check of the rollout's state, and leave nothing in history.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { WorkflowUpdateFailedError, type WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { CliError, update, type Session } from '../../cli/main';
import { loadConfig } from '../../workers/config';
import {
  abortUpdate,
  approveUpdate,
  pauseUpdate,
  rejectUpdate,
  resumeUpdate,
  rollbackCohortUpdate,
  statusQuery,
  type RolloutResult,
  type RolloutStatus,
} from '../../workflows/definitions';
import {
  loadPolicy,
  makeWorld,
  maybeSaveHistory,
  otaOps,
  reportOf,
  rolloutRequest,
  runningDigest,
  startRollout,
  timeSkippingServer,
  withWorker,
} from '../support';
import type { PolicyInput } from '../../policies/schema';

const server = timeSkippingServer();

/** The week policy with holds long enough that candidate-good is promoted in every cohort. */
function policy(): PolicyInput {
  const p = loadPolicy('test/fixtures/policy-week.yaml');
  for (const w of p.waves!) w.hold = '12h';
  return p;
}

/** Lets test time pass, an hour at a time, until `until` holds for the status. */
async function waitFor(
  handle: WorkflowHandle,
  until: (s: RolloutStatus) => boolean,
  what: string,
): Promise<RolloutStatus> {
  for (let i = 0; i < 400; i++) {
    const s = await handle.query(statusQuery);
    if (until(s)) return s;
    if (s.phase === 'done') break;
    await server.env.sleep('1h');
  }
  assert.fail(`never ${what}: ${JSON.stringify(await handle.query(statusQuery))}`);
}

/** Asserts that an update is refused by its validator with a message matching `why`. */
async function refused(p: Promise<unknown>, why: RegExp): Promise<void> {
  await assert.rejects(p, (e: Error) => {
    assert.ok(e instanceof WorkflowUpdateFailedError, `refused by the validator, not ${e.name}`);
    assert.match(String(e.cause?.message), why);
    return true;
  });
}

/** Asserts a non-retryable refusal of the given failure type whose message (the caller's text) matches `why`. */
async function refusedAs(p: Promise<unknown>, type: 'InvalidInput' | 'Refused', why: RegExp): Promise<void> {
  await assert.rejects(p, (e: Error) => {
    assert.ok(
      e instanceof WorkflowUpdateFailedError,
      `refused by the validator, not ${e.name}: ${e.message}`,
    );
    const cause = e.cause;
    assert.ok(cause instanceof ApplicationFailure, `an ApplicationFailure, not ${String(cause)}`);
    assert.equal(cause.type, type, cause.message);
    assert.equal(cause.nonRetryable, true, 'a refusal is not retryable');
    assert.match(cause.message, why);
    assert.ok(cause.message.length < 1000, `a short message, never the payload: ${cause.message.length}`);
    return true;
  });
}

/** The updates accepted into a workflow's history, by name. */
async function acceptedUpdates(handle: WorkflowHandle): Promise<string[]> {
  const history = await handle.fetchHistory();
  return history
    .events!.filter((e) => e.workflowExecutionUpdateAcceptedEventAttributes)
    .map((e) => e.workflowExecutionUpdateAcceptedEventAttributes!.acceptedRequest!.input!.name!);
}

describe('quorum gates and operator controls (time-skipping)', () => {
  test('a two-person gate refuses the initiator, a second approval, strangers, the wrong gate and a stale digest; two reviewers open it; the promotion gate shows the evidence', async () => {
    const world = await makeWorld();
    try {
      const p = policy();
      p.reviewers = ['alice', 'bob', 'carol'];
      p.waves![1] = {
        ...p.waves![1]!,
        approval: { gate: 'wave-2', required: 2, timeout: '7d', excludeInitiator: true },
      };
      p.promotion = { approval: { gate: 'promote', required: 1, timeout: '3d', excludeInitiator: true } };
      const req = {
        ...rolloutRequest(`quorum`, 'models/candidate-good', p),
        requestedBy: 'alice',
      };
      await withWorker(server.env, server.bundle, world, async (tq) => {
        const handle = await startRollout(server.env, tq, req);
        const approve = (a: { gate: string; reviewer: string; digest?: string }) =>
          handle.executeUpdate(approveUpdate, { args: [a] });
        await refused(approve({ gate: 'wave-2', reviewer: 'bob' }), /no gate is pending/);

        const s = await waitFor(handle, (x) => x.pendingGate?.gate === 'wave-2', 'waited at gate wave-2');
        const g = s.pendingGate!;
        assert.equal(g.kind, 'wave');
        assert.deepEqual(g.reviewers, ['bob', 'carol'], 'the initiator is not among who may approve');
        assert.equal(g.digest, s.candidate!.digest);
        assert.deepEqual([...g.cohorts!].sort(), [...world.cohorts].sort());
        assert.equal(g.evidence!.length, world.cohorts.length);
        assert.ok(
          g.evidence!.every((e) => /error_rate|latency_ms/.test(e)),
          g.evidence!.join(' | '),
        );
        const digest = g.digest!;
        const stale = (digest.startsWith('0') ? '1' : '0') + digest.slice(1, 16);

        await refused(
          approve({ gate: 'wave-2', reviewer: 'alice' }),
          /started this rollout.*excludes its initiator/,
        );
        await refused(
          approve({ gate: 'wave-2', reviewer: 'mallory' }),
          /not allowed to approve.*alice, bob, carol/,
        );
        await refused(
          approve({ gate: 'wave-9', reviewer: 'bob' }),
          /not pending; the pending gate is "wave-2"/,
        );
        await refused(approve({ gate: 'wave-2', reviewer: 'bob', digest: stale }), /is stale/);
        await refused(
          approve({ gate: 'wave-2', reviewer: 'bob', digest: digest.slice(0, 8) }),
          /at least its first 12/,
        );
        await refused(
          handle.executeUpdate(rejectUpdate, {
            args: [{ gate: 'wave-2', reviewer: 'bob', reason: 'x', digest: stale }],
          }),
          /is stale/,
        );
        const r1 = await approve({ gate: 'wave-2', reviewer: 'bob', digest: digest.slice(0, 12) });
        assert.deepEqual(r1, { gate: 'wave-2', approvals: ['bob'], required: 2, open: false });
        await refused(approve({ gate: 'wave-2', reviewer: 'bob' }), /already approved.*\(carol\)/);
        assert.equal((await handle.query(statusQuery)).wave, 1, 'one approval of two keeps the gate shut');
        const r2 = await approve({ gate: 'wave-2', reviewer: 'carol', digest });
        assert.equal(r2.open, true);

        const pg = await waitFor(
          handle,
          (x) => x.pendingGate?.gate === 'promote',
          'waited at the promotion gate',
        );
        const gate = pg.pendingGate!;
        assert.equal(gate.kind, 'promotion');
        assert.ok(gate.cohorts!.length > 0);
        assert.equal(gate.evidence!.length, gate.cohorts!.length);
        assert.ok(
          pg.cohorts.every((c) => c.state !== 'promoted'),
          'nothing promoted before the gate opens',
        );
        await refused(approve({ gate: 'promote', reviewer: 'alice' }), /excludes its initiator/);
        await approve({ gate: 'promote', reviewer: 'bob', digest: digest.slice(0, 20) });

        const result: RolloutResult = await handle.result();
        assert.equal(result.outcome, 'completed', result.reason);
        const promoted = result.cohorts.filter((c) => c.state === 'promoted').map((c) => c.cohort);
        assert.deepEqual(promoted.sort(), [...gate.cohorts!].sort());
        const accepted = await acceptedUpdates(handle);
        assert.deepEqual(accepted, ['approve', 'approve', 'approve'], 'only the three valid approvals');
        const history = JSON.stringify(await handle.fetchHistory());
        assert.ok(!history.includes('mallory') && !history.includes(stale), 'refusals leave no trace');
        const report = reportOf(result);
        const passed = report.decisions.filter((d) => d.action === 'gate-passed');
        assert.equal(passed.length, 2);
        for (const d of passed) {
          const ev = (d as { evidence?: string[] }).evidence;
          assert.ok(ev && ev.length > 0, `gate-passed carries its evidence: ${d.reason}`);
          assert.match(d.reason, /evidence: /);
        }
        assert.match(passed[0]!.reason, /approved by bob, carol/);
        assert.ok(
          report.decisions
            .filter((d) => d.action === 'promoted')
            .every((d) => /Promotion approved by bob/.test(d.reason)),
        );
      });
    } finally {
      await world.close();
    }
  });

  test('a wave gate nobody answers holds its cohorts: compensated, never promoted', async () => {
    const world = await makeWorld();
    try {
      const p = policy();
      p.waves![1] = { ...p.waves![1]!, approval: { gate: 'wave-2', required: 2, timeout: '1d' } };
      const result = await withWorker(server.env, server.bundle, world, async (tq) => {
        const handle = await startRollout(
          server.env,
          tq,
          rolloutRequest(`unanswered-gate`, 'models/candidate-good', p),
        );
        return (await handle.result()) as RolloutResult;
      });
      assert.equal(result.outcome, 'completed', result.reason);
      for (const c of result.cohorts) assert.equal(c.state, 'held', `${c.cohort}: ${c.headline}`);
      const report = reportOf(result);
      const held = report.decisions.filter((d) => d.action === 'withdraw');
      assert.equal(held.length, world.cohorts.length);
      assert.ok(held.every((d) => /gate "wave-2" timed out after 1d with 0\/2 approval/.test(d.reason)));
      assert.ok(
        !report.decisions.some((d) => d.action === 'deliver' && d.wave === 2),
        'wave 2 never delivered',
      );
      assert.deepEqual(await runningDigest(world, report.candidate.digest), {});
      const prod = await world.services.store.get(`pointers/${world.cohorts[0]}/production.json`);
      assert.equal(JSON.parse(prod!.toString()).digest, world.productionDigest, 'production unchanged');
    } finally {
      await world.close();
    }
  });

  test('pause holds the rollout until it is resumed; an emergency rollback compensates one cohort while the others are promoted', async () => {
    const world = await makeWorld();
    try {
      await withWorker(server.env, server.bundle, world, async (tq) => {
        const handle = await startRollout(
          server.env,
          tq,
          rolloutRequest(`controls`, 'models/candidate-good', policy()),
        );
        await refused(handle.executeUpdate(resumeUpdate, { args: [{ by: 'ops' }] }), /not paused/);
        await waitFor(handle, (s) => s.wave === 1, 'reached wave 1');
        await refused(
          handle.executeUpdate(pauseUpdate, { args: [{ by: 'ops', reason: ' ' }] }),
          /needs a reason/,
        );
        const receipt = await handle.executeUpdate(pauseUpdate, {
          args: [{ by: 'ops', reason: 'sensor recall under investigation' }],
        });
        assert.equal(receipt.paused, true);
        await refused(
          handle.executeUpdate(pauseUpdate, { args: [{ by: 'drift-check', reason: 'again' }] }),
          /already paused by ops/,
        );
        const jobs = new Set((await otaOps(world)).map((o) => o.job_id)).size;
        await server.env.sleep('3d');
        const held = await handle.query(statusQuery);
        assert.equal(held.wave, 1, 'no wave delivered while paused, three days after wave 1');
        assert.equal(held.paused?.by, 'ops');
        assert.equal(held.paused?.reason, 'sensor recall under investigation');
        assert.equal(
          new Set((await otaOps(world)).map((o) => o.job_id)).size,
          jobs,
          'no OTA job while paused',
        );
        const pausedAt = held.recentDecisions.find((d) => d.action === 'pause')!.seq;
        assert.ok(
          !held.recentDecisions.some(
            (d) => d.seq > pausedAt && (d.action === 'deliver' || d.look !== undefined),
          ),
          'nothing delivered or decided while paused',
        );
        await handle.executeUpdate(resumeUpdate, { args: [{ by: 'ops', reason: 'cleared' }] });
        assert.equal((await handle.query(statusQuery)).paused, undefined);

        await refused(
          handle.executeUpdate(rollbackCohortUpdate, {
            args: [{ cohort: 'hw9/mars', by: 'ops', reason: 'x' }],
          }),
          /not in this rollout; its cohorts are: .*hw3\/nordic/,
        );
        // Names every plain object inherits are unknown cohorts too, refused before history.
        for (const cohort of ['constructor', '__proto__', 'toString', 'hasOwnProperty']) {
          await refused(
            handle.executeUpdate(rollbackCohortUpdate, { args: [{ cohort, by: 'ops', reason: 'x' }] }),
            new RegExp(`^cohort "${cohort}" is not in this rollout; its cohorts are: .*hw3/nordic`),
          );
        }
        const rb = await handle.executeUpdate(rollbackCohortUpdate, {
          args: [{ cohort: 'hw3/nordic', by: 'ops', reason: 'field reports of missed pedestrians' }],
        });
        assert.equal(rb.state, 'rolled_back');
        assert.ok(rb.compensations >= 2, `wave 1 and the candidate pointer: ${rb.compensations}`);
        await refused(
          handle.executeUpdate(rollbackCohortUpdate, {
            args: [{ cohort: 'hw3/nordic', by: 'ops', reason: 'x' }],
          }),
          /already rolled_back/,
        );
        const result: RolloutResult = await handle.result();
        await maybeSaveHistory('controls', handle);
        assert.equal(result.outcome, 'completed', result.reason);
        const states = Object.fromEntries(result.cohorts.map((c) => [c.cohort, c.state]));
        assert.equal(states['hw3/nordic'], 'rolled_back');
        for (const c of world.cohorts.filter((x) => x !== 'hw3/nordic'))
          assert.equal(states[c], 'promoted', `${c}: ${JSON.stringify(result.cohorts)}`);
        assert.deepEqual(await acceptedUpdates(handle), ['pause', 'resume', 'rollbackCohort']);

        const report = reportOf(result) as ReturnType<typeof reportOf> & {
          compensations: { kind: string; wave?: number; cohorts: string[] }[];
        };
        const nordic = report.compensations.filter((c) => c.cohorts.includes('hw3/nordic'));
        assert.deepEqual(
          nordic.map((c) => `${c.kind}${c.wave ?? ''}`),
          ['revertWave1', 'clearCandidatePointer'],
        );
        assert.equal((await runningDigest(world, report.candidate.digest))['hw3/nordic'] ?? 0, 0);
        const reverts = (await otaOps(world)).filter((o) => o.op === 'revert');
        assert.ok(reverts.length > 0 && reverts.every((o) => o.cohort === 'hw3/nordic'));
        const rolledBackAt = report.decisions.find((d) => d.action === 'rollback')!;
        const later = report.decisions.slice(report.decisions.indexOf(rolledBackAt) + 1);
        assert.ok(
          !later.some((d) => d.action === 'deliver' && /hw3\/nordic/.test(d.reason)),
          'nothing delivered to the rolled-back cohort after its rollback',
        );
        const lines = report.decisions.filter((d) => (d as { by?: string }).by === 'ops');
        assert.deepEqual(
          lines.map((d) => `${d.action} ${(d as { by?: string }).by}`),
          ['pause ops', 'resume ops', 'rollback ops'],
        );
        assert.match(lines[2]!.reason, /emergency rollback of hw3\/nordic by ops: field reports/);
      });
    } finally {
      await world.close();
    }
  });
  test('a pause in the shadow holds its judgement; a cohort rolled back there stops collecting and gets no wave', async () => {
    const world = await makeWorld();
    try {
      await withWorker(server.env, server.bundle, world, async (tq) => {
        const handle = await startRollout(
          server.env,
          tq,
          rolloutRequest(`controls-shadow`, 'models/candidate-good', policy()),
        );
        await waitFor(handle, (s) => s.phase === 'shadow', 'reached the shadow');
        await handle.executeUpdate(pauseUpdate, { args: [{ by: 'ops', reason: 'bench rig recalibration' }] });
        const rb = await handle.executeUpdate(rollbackCohortUpdate, {
          args: [{ cohort: 'hw3/nordic', by: 'ops', reason: 'map data withdrawn in the region' }],
        });
        assert.equal(rb.state, 'rolled_back');
        await server.env.sleep('3d');
        const held = await handle.query(statusQuery);
        assert.equal(held.phase, 'shadow', 'still in the shadow three days into a one-day shadow');
        assert.equal(held.wave, 0);
        assert.ok(
          !held.recentDecisions.some((d) => d.action === 'shadow-pass' || d.action === 'shadow-fail'),
          'no shadow verdict while paused',
        );
        await handle.executeUpdate(resumeUpdate, { args: [{ by: 'ops' }] });
        const after = await waitFor(handle, (s) => s.wave >= 1, 'reached wave 1 after the resume');
        const verdicts = after.recentDecisions.filter((d) => d.action === 'shadow-pass');
        assert.deepEqual(
          verdicts.map((d) => d.cohort).sort(),
          world.cohorts.filter((c) => c !== 'hw3/nordic').sort(),
          'the shadow judges the cohorts still in it, not the rolled-back one',
        );
        const nordic = after.cohorts.find((c) => c.cohort === 'hw3/nordic')!;
        assert.equal(nordic.state, 'rolled_back');
        assert.equal(nordic.wave, 0, 'no wave delivered to the rolled-back cohort');
        const deliveries = (await otaOps(world)).filter((o) => o.op !== 'revert');
        assert.ok(deliveries.length > 0 && deliveries.every((o) => o.cohort !== 'hw3/nordic'));
        await handle.executeUpdate(abortUpdate, { args: [{ by: 'ops', reason: 'end of the test' }] });
        const result: RolloutResult = await handle.result();
        assert.equal(result.outcome, 'aborted');
        assert.equal(result.cohorts.find((c) => c.cohort === 'hw3/nordic')!.state, 'rolled_back');
      });
    } finally {
      await world.close();
    }
  });
  test('malformed update payloads are refused as non-retryable InvalidInput before any state check, leave nothing in history, and the rollout goes on', async () => {
    const world = await makeWorld();
    try {
      const p = policy();
      p.waves![1] = { ...p.waves![1]!, approval: { gate: 'wave-2', required: 1, timeout: '7d' } };
      await withWorker(server.env, server.bundle, world, async (tq) => {
        const handle = await startRollout(
          server.env,
          tq,
          rolloutRequest(`payloads`, 'models/candidate-good', p),
        );
        const send = (u: typeof approveUpdate | typeof pauseUpdate, arg: unknown) =>
          handle.executeUpdate(u as typeof approveUpdate, { args: [arg as never] });
        const big = 'x'.repeat(3 * 1024 * 1024);
        // No gate is pending yet: the payload's shape is what is refused, in the caller's terms.
        await refusedAs(
          send(approveUpdate, { gate: 1, reviewer: [] }),
          'InvalidInput',
          /^approve: "gate" must be a string, the gate's name as status shows it \(got 1\); "reviewer" must be a string, the reviewer's name as the policy lists it \(got \[\]\)$/,
        );
        await refusedAs(
          send(approveUpdate, 'x'),
          'InvalidInput',
          /^approve: the input must be a JSON object such as \{"gate":"wave-2","reviewer":"alice"\} \(got "x"\)$/,
        );
        await refusedAs(
          send(pauseUpdate, { by: 'ops', reason: 'recall', until: 'monday' }),
          'InvalidInput',
          /^pause: unknown field "until"; the fields are by, reason$/,
        );
        await refusedAs(
          handle.executeUpdate(abortUpdate, { args: [{ by: 'ops', reason: big }] }),
          'InvalidInput',
          /^abort: "reason" has 3,145,728 characters; at most 2,000: shorten it$/,
        );
        await refusedAs(
          handle.executeUpdate(resumeUpdate, { args: [{ by: 'ops\u001b[2J' }] }),
          'InvalidInput',
          /^resume: "by" must not contain control characters/,
        );
        await refusedAs(
          handle.executeUpdate(pauseUpdate, { args: [{ by: 'ops\u202egnp.exe', reason: 'x' }] }),
          'InvalidInput',
          /^pause: "by" must not contain control characters \(newlines, tabs, escapes\) or bidi overrides/,
        );
        await refusedAs(
          send(rollbackCohortUpdate as never, { cohort: 5, by: 'ops', reason: 'x' }),
          'InvalidInput',
          /^rollbackCohort: "cohort" must be a string, the cohort's name as status shows it \(got 5\)$/,
        );
        // The CLI prints the same text as `fleetgate: refused: <why>` (exit 1).
        const session = {
          client: server.env.client,
          config: loadConfig({}),
          address: 'test',
        } as unknown as Session;
        await assert.rejects(
          update(session, handle.workflowId, 30_000, (h) =>
            h.executeUpdate(approveUpdate, { args: [{ gate: 1 } as never] }),
          ),
          (e: Error) =>
            e instanceof CliError &&
            e.exitCode === 1 &&
            /^refused: approve: "gate" must be a string, .* \(got 1\); "reviewer" is missing: give the reviewer's name as the policy lists it$/.test(
              e.message,
            ),
        );

        await waitFor(handle, (x) => x.pendingGate?.gate === 'wave-2', 'waited at gate wave-2');
        await refusedAs(
          send(approveUpdate, { gate: 'wave-2', reviewer: 'alice', comment: big }),
          'InvalidInput',
          /^approve: "comment" has 3,145,728 characters; at most 2,000: shorten it$/,
        );
        await refusedAs(
          send(approveUpdate, { gate: 1, reviewer: [] }),
          'InvalidInput',
          /^approve: "gate" must be a string/,
        );
        // A refusal by the rollout's state is not retryable either.
        await refusedAs(
          send(approveUpdate, { gate: 'wave-9', reviewer: 'alice' }),
          'Refused',
          /^gate "wave-9" is not pending; the pending gate is "wave-2"/,
        );
        const receipt = await handle.executeUpdate(approveUpdate, {
          args: [{ gate: 'wave-2', reviewer: 'alice', comment: 'c'.repeat(2000) }],
        });
        assert.equal(receipt.open, true);
        const result: RolloutResult = await handle.result();
        assert.equal(result.outcome, 'completed', result.reason);
        assert.ok(
          result.cohorts.every((c) => c.state === 'promoted' || c.state === 'held'),
          JSON.stringify(result.cohorts),
        );
        assert.deepEqual(await acceptedUpdates(handle), ['approve'], 'only the valid approval');
        const history = JSON.stringify(await handle.fetchHistory());
        assert.ok(history.length < 1_000_000, `no 3 MB text in history (${history.length} characters)`);
        assert.ok(!history.includes('monday') && !history.includes('x'.repeat(3000)));
      });
    } finally {
      await world.close();
    }
  });
});

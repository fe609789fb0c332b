/**
 * `fleetgate gate show`'s rendering (renderGate), the progress view's paused state and gate quorum, and
 * the pause and resume notifications' text: pure functions.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { metricLine, renderGate } from '../../cli/gate';
import { ProgressView, renderStatus } from '../../cli/progress';
import { notificationText } from '../../activities/notify';
import type { MetricResult } from '../../policies/decide';
import type { RolloutStatus } from '../../workflows/definitions';

const DIGEST = 'ab12cd34ef56'.repeat(5) + 'abcd';

const errorRate: MetricResult = {
  metric: 'error_rate',
  nCandidate: 412,
  nProduction: 3980,
  candidate: 0.081,
  production: 0.085,
  estimate: -0.004,
  lambda: 0.31,
  boundary: 40,
  pValue: 1,
  ci: [-0.031, 0.012],
  margin: 0.02,
  verdict: 'noninferior',
  test: 'msprt',
};
const latency: MetricResult = {
  ...errorRate,
  metric: 'latency_ms',
  estimate: 0.12,
  ci: [-0.2, 0.44],
  margin: 0.5,
  lambda: 1.7,
};

const status: RolloutStatus = {
  rolloutId: 'week-good-1',
  phase: 'canary',
  wave: 1,
  waves: 3,
  look: 3,
  candidate: { name: 'hazard-net', version: '1.1.0', digest: DIGEST },
  cohorts: [
    {
      cohort: 'hw3/eu',
      state: 'canary',
      wave: 1,
      vehicles: 15,
      headline: 'error_rate Δ=-0.004 [-0.031, +0.012] Λ=0.3 < 40, upper +0.012 < margin 0.020 → noninferior',
      metrics: [errorRate, latency],
    },
    { cohort: 'hw4/us', state: 'canary', wave: 1, vehicles: 15 },
    { cohort: 'hw3/nordic', state: 'rolled_back', wave: 1, vehicles: 0, metrics: [errorRate] },
  ],
  pendingGate: {
    gate: 'wave-2',
    kind: 'wave',
    wave: 2,
    cohorts: ['hw3/eu', 'hw4/us'],
    evidence: ['hw3/eu: error_rate Δ=-0.004 … → noninferior', 'hw4/us: no look yet'],
    required: 2,
    approvals: ['bob'],
    reviewers: ['bob', 'carol'],
    excludeInitiator: true,
    digest: DIGEST,
    openedAt: '2026-01-01T06:00:00.000Z',
    deadline: '2026-01-08T06:00:00.000Z',
  },
  paused: { by: 'ops', reason: 'sensor recall under investigation', since: '2026-01-01T07:00:00.000Z' },
  recentDecisions: [],
  benches: [],
  simNow: '2026-01-01T07:30:00.000Z',
};

void test('gate show prints kind, wave, cohorts, evidence, statistics, quorum, deadline and the digest', () => {
  const text = renderGate(status);
  assert.match(text, /^gate "wave-2" of week-good-1: wave gate before wave 2$/m);
  assert.match(text, new RegExp(`^digest\\s+${DIGEST}$`, 'm'));
  assert.match(text, /^approvals\s+1\/2 from distinct reviewers \(bob\)$/m);
  assert.match(text, /^may approve carol \(the initiator is excluded\)$/m);
  assert.match(text, /^deadline\s+2026-01-08T06:00:00\.000Z$/m);
  assert.match(text, /^ {2}hw4\/us: no look yet$/m);
  assert.match(text, /^ {2}hw3\/eu \(canary, wave 1\/3, 15 on candidate\)$/m);
  assert.match(
    text,
    /^ {4}error_rate noninferior: estimate -0\.004 CI \[-0\.031, 0\.012\] margin 0\.02; Λ 0\.31 boundary 40 \(n 412\/3980\)$/m,
  );
  assert.match(text, /^ {4}latency_ms noninferior: estimate \+0\.12 .* Λ 1\.7 boundary 40/m);
  assert.match(text, /^ {4}no look yet$/m, 'a cohort without metrics says so');
  assert.ok(!text.includes('hw3/nordic'), 'only the cohorts the gate is about');
  assert.match(text, /fleetgate approve week-good-1 --gate wave-2 --reviewer NAME --digest ab12cd34ef56$/m);
  assert.match(text, /^paused\s+by ops since 2026-01-01T07:00:00\.000Z: sensor recall/m);
});

void test('gate show without a pending gate says so', () => {
  const text = renderGate({ ...status, pendingGate: undefined });
  assert.equal(text, 'rollout week-good-1: no gate is pending (phase canary, wave 1/3)');
});

void test('a promotion gate names the cohorts about to be promoted', () => {
  const text = renderGate({
    ...status,
    pendingGate: { ...status.pendingGate!, gate: 'promote', kind: 'promotion', cohorts: ['hw3/eu'] },
  });
  assert.match(text, /promotion gate before the final promotion/);
  assert.ok(!text.includes('hw4/us ('), 'a cohort not about to be promoted is not listed');
});

void test('other tests than mSPRT name their statistic', () => {
  assert.match(
    metricLine({ ...errorRate, test: 'ld-obf', lambda: 2.5, boundary: 2.8 }),
    /; Z 2\.5 boundary 2\.8/,
  );
  assert.match(metricLine({ ...errorRate, test: 'exact-poisson' }), /; rate ratio 0\.31/);
});

void test('the progress view shows the pause and the quorum of the pending gate', () => {
  const text = renderStatus(status, { color: false });
  assert.match(text, /paused by ops since 2026-01-01 07:00Z: sensor recall under investigation/);
  assert.match(
    text,
    /gate "wave-2" pending before wave 2: 1\/2 approval\(s\) \(bob\) from distinct reviewers; may approve: carol, initiator excluded/,
  );
  assert.match(text, /digest ab12cd34ef56/);
  assert.match(text, /hw3\/eu\s+canary\s+1\/3\s+15\s+error_rate Δ=-0\.004 .* Λ=0\.3 < 40/);

  const lines: string[] = [];
  const view = new ProgressView({ write: (s: string) => lines.push(s) }, { live: false });
  view.update(status);
  view.update({ ...status, paused: undefined });
  const out = lines.join('');
  assert.match(out, /^paused by ops since .*: sensor recall/m);
  assert.match(out, /^resumed$/m);
});

void test('pause and resume notifications say what happened', () => {
  const base = { rolloutId: 'r1', phase: 'canary', at: '2026-01-01T00:00:00.000Z', idempotencyKey: 'r1/7' };
  assert.equal(
    notificationText({ ...base, event: 'paused', wave: 2, reason: 'paused by ops: sensor recall' }),
    'fleetgate r1: paused by an operator (wave 2): paused by ops: sensor recall',
  );
  assert.match(
    notificationText({ ...base, event: 'resumed', reason: 'resumed by ops' }),
    /^fleetgate r1: resumed: /,
  );
});

/**
 * Tables for policies/decide: metric verdicts, cohort actions at every kind of look, the running
 * minimum of p-values, the shadow gate and headlines.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ArmStats, CohortStats } from '../../activities/contracts';
import {
  decideLook,
  decideShadow,
  evaluateMetrics,
  headline,
  type CohortAction,
  type CohortDecision,
  type LookContext,
  type MetricResult,
  type SequentialState,
} from '../../policies/decide';
import { Policy, type PolicyInput } from '../../policies/schema';

const base: PolicyInput = {
  apiVersion: 'fleetgate/v1',
  kind: 'RolloutPolicy',
  name: 'decide-test',
  shadow: { share: 0.1, duration: '1h', maxDisagreement: 0.05, maxLatencyRatio: 1.5, minEvents: 200 },
  waves: [{ percent: 5, hold: '1h' }],
  labelWait: { coverage: 0.8, timeout: '6h' },
  analysis: {
    alpha: 0.05,
    mixtureSd: 0.05,
    minLabeledPerArm: 100,
    maxExtraLooks: 2,
    metrics: [
      { name: 'error_rate', kind: 'binary', margin: 0.02 },
      { name: 'latency_ms', kind: 'continuous', margin: 5 },
    ],
  },
};
const policy = Policy.parse(base);

/** An arm with `labeled` labels at error rate `rate` and `n` latency samples of the given mean and sd. */
function arm(labeled: number, rate: number, latency: { n: number; mean: number; sd: number }): ArmStats {
  const { n, mean, sd } = latency;
  return {
    events: Math.max(labeled, n) * 2,
    labeled,
    errors: Math.round(labeled * rate),
    latency: { n, sum: n * mean, sumSq: n > 0 ? (n - 1) * sd * sd + n * mean * mean : 0 },
  };
}
const lat = (n: number, mean = 50, sd = 10) => ({ n, mean, sd });

function cohort(name: string, candidate: ArmStats, production: ArmStats): CohortStats {
  return { cohort: name, candidate, production };
}

// Data shapes used by the tables.
const same = cohort('a', arm(1000, 0.1, lat(1000)), arm(1000, 0.1, lat(1000)));
const errorHarm = cohort('a', arm(1000, 0.2, lat(1000)), arm(1000, 0.1, lat(1000)));
const latencyHarm = cohort('a', arm(1000, 0.1, lat(1000, 60)), arm(1000, 0.1, lat(1000, 50)));
const fewLabels = cohort('a', arm(40, 0.1, lat(1000)), arm(120, 0.1, lat(1000)));
const fewLabelsButHarm = cohort('a', arm(40, 0.1, lat(1000, 60)), arm(120, 0.1, lat(1000, 50)));
const bigAndSame = cohort('a', arm(10_000, 0.1, lat(10_000)), arm(10_000, 0.1, lat(10_000)));
const empty = cohort('a', arm(0, 0, lat(0)), arm(0, 0, lat(0)));
const constantLatency = cohort('a', arm(1000, 0.1, lat(1000, 50, 0)), arm(1000, 0.1, lat(1000, 50, 0)));

const mid: LookContext = { stage: 'canary', isLastLookOfWave: false, extraLooksUsed: 0 };
const last = (extraLooksUsed = 0): LookContext => ({
  stage: 'canary',
  isLastLookOfWave: true,
  extraLooksUsed,
});
const final: LookContext = { stage: 'final', isLastLookOfWave: true, extraLooksUsed: 0 };

void test('metric verdicts', () => {
  const rows: {
    name: string;
    stats: CohortStats;
    error: MetricResult['verdict'];
    latency: MetricResult['verdict'];
  }[] = [
    { name: 'equal arms, 1000 each', stats: same, error: 'inconclusive', latency: 'noninferior' },
    { name: 'error rate 10% -> 20%', stats: errorHarm, error: 'harm', latency: 'noninferior' },
    { name: 'latency 50 -> 60 ms', stats: latencyHarm, error: 'inconclusive', latency: 'harm' },
    { name: 'too few labels', stats: fewLabels, error: 'insufficient', latency: 'noninferior' },
    { name: 'equal arms, 10000 each', stats: bigAndSame, error: 'noninferior', latency: 'noninferior' },
    { name: 'no data', stats: empty, error: 'insufficient', latency: 'insufficient' },
    { name: 'constant latency', stats: constantLatency, error: 'inconclusive', latency: 'insufficient' },
  ];
  for (const r of rows) {
    const { metrics } = evaluateMetrics(policy, r.stats, { minP: {} });
    assert.deepEqual(
      metrics.map((m) => [m.metric, m.verdict]),
      [
        ['error_rate', r.error],
        ['latency_ms', r.latency],
      ],
      r.name,
    );
    for (const m of metrics) {
      assert.equal(m.boundary, 40, `${r.name}: boundary is 1/(0.05/2)`);
      assert.deepEqual(
        JSON.parse(JSON.stringify(m)),
        m,
        `${r.name}: ${m.metric} is finite and survives JSON`,
      );
      if (m.verdict === 'harm') assert.ok(m.ci[0] > 0 && m.lambda >= m.boundary && m.estimate > 0);
      if (m.verdict === 'noninferior') assert.ok(m.ci[1] < m.margin);
      if (m.verdict === 'inconclusive')
        assert.ok(m.ci[0] <= 0 && m.ci[1] >= m.margin && m.lambda < m.boundary);
    }
  }
  const [error] = evaluateMetrics(policy, errorHarm, { minP: {} }).metrics;
  assert.ok(error);
  assert.equal(error.nCandidate, 1000);
  assert.equal(error.candidate, 0.2);
  assert.equal(error.production, 0.1);
  assert.ok(Math.abs(error.estimate - 0.1) < 1e-12);
  const noData = evaluateMetrics(policy, empty, { minP: {} }).metrics;
  assert.ok(
    noData.every((m) => m.candidate === 0 && m.production === 0 && m.estimate === 0 && m.pValue === 1),
  );
});

void test('cohort actions', () => {
  const rows: {
    name: string;
    ctx: LookContext;
    stats: CohortStats;
    action: CohortAction;
    mentions: string[];
  }[] = [
    {
      name: 'harm mid-wave',
      ctx: mid,
      stats: errorHarm,
      action: 'rollback',
      mentions: ['Rolling back', 'error_rate'],
    },
    {
      name: 'latency harm at wave end',
      ctx: last(),
      stats: latencyHarm,
      action: 'rollback',
      mentions: ['latency_ms'],
    },
    {
      name: 'harm beats insufficient',
      ctx: last(),
      stats: fewLabelsButHarm,
      action: 'rollback',
      mentions: ['latency_ms'],
    },
    { name: 'harm at final', ctx: final, stats: errorHarm, action: 'rollback', mentions: ['Δ=+0.100'] },
    { name: 'no harm mid-wave', ctx: mid, stats: same, action: 'continue', mentions: ['wave continues'] },
    {
      name: 'insufficient mid-wave',
      ctx: mid,
      stats: fewLabels,
      action: 'continue',
      mentions: ['insufficient'],
    },
    { name: 'wave complete', ctx: last(), stats: same, action: 'continue', mentions: ['advancing'] },
    {
      name: 'insufficient at wave end',
      ctx: last(0),
      stats: fewLabels,
      action: 'extend',
      mentions: ['40 candidate and 120 production labeled events, 100 needed', 'extra look 1 of 2'],
    },
    {
      name: 'insufficient, one extra look used',
      ctx: last(1),
      stats: fewLabels,
      action: 'extend',
      mentions: ['2 of 2'],
    },
    {
      name: 'insufficient, extra looks used up',
      ctx: last(2),
      stats: fewLabels,
      action: 'hold',
      mentions: ['holding'],
    },
    {
      name: 'no data at wave end',
      ctx: last(2),
      stats: empty,
      action: 'hold',
      mentions: ['latency samples'],
    },
    {
      name: 'final, all non-inferior',
      ctx: final,
      stats: bigAndSame,
      action: 'promote',
      mentions: ['non-inferior'],
    },
    {
      name: 'final, inconclusive',
      ctx: final,
      stats: same,
      action: 'hold',
      mentions: ['error_rate', 'inconclusive'],
    },
    {
      name: 'final, insufficient',
      ctx: final,
      stats: fewLabels,
      action: 'hold',
      mentions: ['never promotes'],
    },
    { name: 'final, no data', ctx: final, stats: empty, action: 'hold', mentions: ['insufficient'] },
    {
      name: 'final, no variance',
      ctx: final,
      stats: constantLatency,
      action: 'hold',
      mentions: ['no variance'],
    },
  ];
  for (const r of rows) {
    const { decisions } = decideLook(policy, r.ctx, [r.stats], { minP: {} });
    assert.equal(decisions.length, 1);
    const d = decisions[0]!;
    assert.equal(d.action, r.action, `${r.name}: ${d.reason}`);
    assert.equal(d.cohort, 'a');
    for (const text of r.mentions)
      assert.ok(d.reason.includes(text), `${r.name}: "${d.reason}" mentions "${text}"`);
    assert.ok(!/NaN|undefined|Infinity/.test(d.reason), `${r.name}: ${d.reason}`);
  }
});

void test('a harm threshold tolerates proven but small harm', () => {
  // The demo policy's latency metric: margin 0.5 ms, harm only when the interval lies above 0.5 ms.
  const tolerant = Policy.parse({
    ...base,
    analysis: {
      ...base.analysis,
      metrics: [
        { name: 'error_rate', kind: 'binary', margin: 0.02 },
        { name: 'latency_ms', kind: 'continuous', margin: 0.5, harmThreshold: 0.5 },
      ],
    },
  });
  // 100000 samples per arm, sd 10 ms: the 97.5% confidence sequence is about ±0.16 ms.
  const slower = (ms: number): CohortStats =>
    cohort('a', arm(10_000, 0.1, lat(100_000, 50 + ms)), arm(10_000, 0.1, lat(100_000, 50)));
  const rows: { name: string; ms: number; verdict: MetricResult['verdict']; action: CohortAction }[] = [
    {
      name: '+0.3 ms: proven, below the threshold and the margin',
      ms: 0.3,
      verdict: 'noninferior',
      action: 'promote',
    },
    { name: '+0.6 ms: proven, straddles the threshold', ms: 0.6, verdict: 'inconclusive', action: 'hold' },
    { name: '+1 ms: above the threshold', ms: 1, verdict: 'harm', action: 'rollback' },
  ];
  for (const r of rows) {
    const { decisions } = decideLook(tolerant, final, [slower(r.ms)], { minP: {} });
    const d = decisions[0]!;
    const latency = d.metrics[1]!;
    assert.ok(latency.lambda >= latency.boundary, `${r.name}: the difference is significant`);
    assert.equal(latency.verdict, r.verdict, r.name);
    assert.equal(d.action, r.action, `${r.name}: ${d.reason}`);
    if (r.verdict === 'harm') assert.ok(d.reason.includes('above the harm threshold 0.50'), d.reason);
  }
});

void test('without extra looks a wave that ends short of data holds at once', () => {
  const strict = Policy.parse({ ...base, analysis: { ...base.analysis, maxExtraLooks: 0 } });
  const { decisions } = decideLook(strict, last(0), [fewLabels], { minP: {} });
  assert.equal(decisions[0]?.action, 'hold');
});

void test('several cohorts are decided independently and the input state is not changed', () => {
  const state: SequentialState = Object.freeze({
    minP: Object.freeze({ 'b|error_rate': 0.5 }),
  }) as SequentialState;
  const { decisions, state: next } = decideLook(
    policy,
    mid,
    [
      { ...errorHarm, cohort: 'a' },
      { ...same, cohort: 'b' },
    ],
    state,
  );
  assert.deepEqual(
    decisions.map((d) => [d.cohort, d.action]),
    [
      ['a', 'rollback'],
      ['b', 'continue'],
    ],
  );
  assert.deepEqual(state, { minP: { 'b|error_rate': 0.5 } });
  assert.deepEqual(Object.keys(next.minP).sort(), [
    'a|error_rate',
    'a|latency_ms',
    'b|error_rate',
    'b|latency_ms',
  ]);
  assert.ok(next.minP['a|error_rate']! < 1e-6);
  assert.ok(next.minP['b|error_rate']! <= 0.5);
});

void test('the p-value is the running minimum over looks and never increases', () => {
  // Cumulative counts per look: an early scare (candidate errors run high), then the arms even out.
  const looks: [number, number, number][] = [
    // [labeled per arm, candidate errors, production errors]
    [50, 10, 5],
    [200, 34, 18],
    [400, 52, 38],
    [800, 85, 82],
    [1600, 160, 163],
    [3200, 318, 322],
  ];
  let state: SequentialState = { minP: {} };
  let previous = 1;
  const seen: number[] = [];
  for (const [n, xc, xp] of looks) {
    const stats = cohort(
      'a',
      { events: 2 * n, labeled: n, errors: xc, latency: { n: 0, sum: 0, sumSq: 0 } },
      { events: 2 * n, labeled: n, errors: xp, latency: { n: 0, sum: 0, sumSq: 0 } },
    );
    const out = evaluateMetrics(policy, stats, state);
    const error = out.metrics[0]!;
    assert.ok(error.pValue <= previous, `look n=${n}: ${error.pValue} > ${previous}`);
    assert.equal(out.state.minP['a|error_rate'] ?? 1, error.pValue);
    previous = error.pValue;
    seen.push(error.pValue);
    state = out.state;
  }
  assert.equal(seen[0], 1, 'the first look has too few labels and leaves p at 1');
  assert.ok(seen[1]! < 1, 'the scare lowers p');
  assert.equal(seen.at(-1), seen[2], 'once the arms even out, the minimum stays where the scare left it');
});

void test('decideShadow', () => {
  const shadow = (
    events: number,
    disagreements: number,
    candMs: number,
    prodMs: number,
    n = 500,
  ): CohortStats => ({
    cohort: 'a',
    candidate: arm(0, 0, lat(n, candMs)),
    production: arm(0, 0, lat(n, prodMs)),
    paired: { events, disagreements },
  });
  const rows: { name: string; stats: CohortStats; passed: boolean; ratio: number; mentions: string }[] = [
    { name: 'passes', stats: shadow(1000, 20, 60, 50), passed: true, ratio: 1.2, mentions: 'Shadow passed' },
    {
      name: 'at the limits',
      stats: shadow(200, 10, 75, 50),
      passed: true,
      ratio: 1.5,
      mentions: 'Shadow passed',
    },
    {
      name: 'too few events',
      stats: shadow(150, 0, 50, 50),
      passed: false,
      ratio: 1,
      mentions: 'insufficient shadow data: 150 paired events, 200 needed',
    },
    {
      name: 'disagrees',
      stats: shadow(1000, 80, 50, 50),
      passed: false,
      ratio: 1,
      mentions: 'disagree on 8%',
    },
    { name: 'slow', stats: shadow(1000, 0, 80, 50), passed: false, ratio: 1.6, mentions: '1.60× production' },
    {
      name: 'no paired data',
      stats: { ...shadow(0, 0, 50, 50), paired: undefined },
      passed: false,
      ratio: 1,
      mentions: 'insufficient shadow data',
    },
    {
      name: 'no latency',
      stats: shadow(1000, 0, 50, 50, 0),
      passed: false,
      ratio: 0,
      mentions: 'no latency samples',
    },
  ];
  const verdicts = decideShadow(
    policy,
    rows.map((r) => r.stats),
  );
  rows.forEach((r, i) => {
    const v = verdicts[i]!;
    assert.equal(v.passed, r.passed, `${r.name}: ${v.reason}`);
    assert.ok(Math.abs(v.latencyRatio - r.ratio) < 1e-12, `${r.name}: ratio ${v.latencyRatio}`);
    assert.ok(v.reason.includes(r.mentions), `${r.name}: "${v.reason}" mentions "${r.mentions}"`);
    assert.deepEqual(JSON.parse(JSON.stringify(v)), v, `${r.name}: finite`);
  });
  assert.equal(verdicts[0]?.events, 1000);
  assert.equal(verdicts[0]?.disagreement, 0.02);
});

void test('headline', () => {
  const metric = (m: Partial<MetricResult>): MetricResult => ({
    metric: 'error_rate',
    nCandidate: 1000,
    nProduction: 1000,
    candidate: 0.242,
    production: 0.1,
    estimate: 0.142,
    lambda: 3.2e5,
    boundary: 40,
    pValue: 1 / 3.2e5,
    ci: [0.09, 0.194],
    margin: 0.02,
    verdict: 'harm',
    ...m,
  });
  const decision = (action: CohortAction, metrics: MetricResult[]): CohortDecision => ({
    cohort: 'a',
    action,
    reason: '',
    metrics,
  });
  const rows: { name: string; d: CohortDecision; want: string }[] = [
    {
      name: 'harm',
      d: decision('rollback', [metric({}), metric({ metric: 'latency_ms', verdict: 'noninferior' })]),
      want: 'error_rate Δ=+0.142 [+0.090, +0.194] Λ=3.2e5 ≥ 40 → harm',
    },
    {
      name: 'the harm with the largest Λ decides',
      d: decision('rollback', [
        metric({ lambda: 50 }),
        metric({ metric: 'latency_ms', estimate: 9.5, ci: [3.25, 15.75], lambda: 1234.5, margin: 5 }),
      ]),
      want: 'latency_ms Δ=+9.50 [+3.25, +15.75] Λ=1235 ≥ 40 → harm',
    },
    {
      name: 'insufficient',
      d: decision('extend', [
        metric({ verdict: 'noninferior', lambda: 0.5, ci: [-0.01, 0.01] }),
        metric({ metric: 'latency_ms', verdict: 'insufficient', nCandidate: 40, nProduction: 120 }),
      ]),
      want: 'latency_ms n=40/120 → insufficient',
    },
    {
      name: 'inconclusive',
      d: decision('hold', [
        metric({ estimate: 0.01, ci: [-0.03, 0.05], lambda: 0.52, verdict: 'inconclusive' }),
      ]),
      want: 'error_rate Δ=+0.010 [-0.030, +0.050] Λ=0.52 < 40, upper +0.050 ≥ margin 0.020 → inconclusive',
    },
    {
      name: 'promote: the metric closest to its margin',
      d: decision('promote', [
        metric({ estimate: 0, ci: [-0.015, 0.015], lambda: 0.0041, verdict: 'noninferior' }),
        metric({
          metric: 'latency_ms',
          estimate: 0.1,
          ci: [-0.5, 0.7],
          lambda: 0.2,
          margin: 5,
          verdict: 'noninferior',
        }),
      ]),
      want: 'error_rate Δ=+0.000 [-0.015, +0.015] Λ=4.1e-3 < 40, upper +0.015 < margin 0.020 → noninferior',
    },
  ];
  for (const r of rows) assert.equal(headline(r.d), r.want, r.name);

  // Headlines of real decisions are one line without NaN.
  for (const stats of [errorHarm, same, fewLabels, bigAndSame, empty]) {
    const { decisions } = decideLook(policy, final, [stats], { minP: {} });
    const line = headline(decisions[0]!);
    assert.ok(!line.includes('\n') && !/NaN|undefined|Infinity/.test(line), line);
  }
});

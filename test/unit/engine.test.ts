/**
 * policies/engine: multiplicity (Holm within a cohort, α across cohorts), gatekeeping of success
 * metrics, escalation instead of promotion on inconclusive data, fleet-wide rollback rules, the
 * stratified pooled estimate, the exact test of safety events, log-scale latency, group-sequential
 * designs, and an A/A simulation of the whole engine's false-alarm rate over many looks.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ArmStats, CohortStats } from '../../activities/contracts';
import { engineLook, familyLevel } from '../../policies/engine';
import type { LookContext, MetricResult, SequentialState } from '../../policies/decide';
import { msprt } from '../../policies/stats';
import { gaussian, makeRng } from '../../policies/rng';
import { boundaries } from '../../policies/gsd';
import { Policy, formatIssues, type PolicyInput } from '../../policies/schema';

function policyWith(analysis: Partial<NonNullable<PolicyInput['analysis']>>): Policy {
  return Policy.parse({
    apiVersion: 'fleetgate/v1',
    kind: 'RolloutPolicy',
    name: 'engine-test',
    reviewers: ['alice'],
    shadow: { share: 0.1, duration: '1h', maxDisagreement: 0.05 },
    waves: [{ percent: 5, hold: '1h' }],
    labelWait: { coverage: 0.8, timeout: '6h' },
    analysis: {
      alpha: 0.05,
      mixtureSd: 0.05,
      minLabeledPerArm: 100,
      maxExtraLooks: 1,
      metrics: [
        { name: 'error_rate', kind: 'binary', margin: 0.02 },
        { name: 'latency_ms', kind: 'continuous', margin: 5 },
      ],
      ...analysis,
    },
  });
}

interface ArmSpec {
  labeled?: number;
  rate?: number;
  n?: number;
  mean?: number;
  sd?: number;
  safety?: [number, number];
}

function arm({ labeled = 2000, rate = 0.1, n = 2000, mean = 50, sd = 10, safety }: ArmSpec): ArmStats {
  const lm = Math.log(mean);
  const lsd = sd / mean;
  return {
    events: Math.max(labeled, n),
    labeled,
    errors: Math.round(labeled * rate),
    latency: { n, sum: n * mean, sumSq: (n - 1) * sd * sd + n * mean * mean },
    logLatency: { n, sum: n * lm, sumSq: (n - 1) * lsd * lsd + n * lm * lm },
    ...(safety ? { safety: { events: safety[0], exposureHours: safety[1] } } : {}),
  };
}

function cohort(name: string, candidate: ArmSpec, production: ArmSpec = {}): CohortStats {
  return { cohort: name, candidate: arm(candidate), production: arm(production) };
}

const canary: LookContext = { stage: 'canary', isLastLookOfWave: false, extraLooksUsed: 0 };
const endOfWave = (extraLooksUsed = 0): LookContext => ({
  stage: 'canary',
  isLastLookOfWave: true,
  extraLooksUsed,
});
const final: LookContext = { stage: 'final', isLastLookOfWave: true, extraLooksUsed: 0 };
const fresh = (): SequentialState => ({ minP: {} });

function metric(ms: MetricResult[], name: MetricResult['metric']): MetricResult {
  return ms.find((m) => m.metric === name)!;
}

test('the policy schema names the field, the value and the fix for engine settings', () => {
  const bad = (analysis: Record<string, unknown>) => {
    const input = {
      apiVersion: 'fleetgate/v1',
      kind: 'RolloutPolicy',
      name: 'x',
      shadow: { share: 0.1, duration: '1h', maxDisagreement: 0.05 },
      waves: [{ percent: 5, hold: '1h' }],
      labelWait: { coverage: 0.8, timeout: '6h' },
      analysis,
    };
    const r = Policy.safeParse(input);
    assert.equal(r.success, false);
    return formatIssues(r.error!, input);
  };
  assert.match(
    bad({ metrics: [{ name: 'safety_events', kind: 'binary', margin: 0.2 }] }),
    /analysis\.metrics\.0\.kind: metric "safety_events" is of kind "rate"; write kind: rate \(got "binary"\)/,
  );
  assert.match(
    bad({ design: 'ld-obf', metrics: [{ name: 'error_rate', kind: 'binary', margin: 0.02 }] }),
    /analysis\.plannedPerArm: design "ld-obf" needs plannedPerArm/,
  );
  assert.match(
    bad({
      metrics: [
        { name: 'error_rate', kind: 'binary', margin: 0.02 },
        { name: 'error_rate', kind: 'binary', margin: 0.01 },
      ],
    }),
    /analysis\.metrics\.1\.name: metric "error_rate" is listed twice/,
  );
  assert.match(
    bad({ metrics: [{ name: 'error_rate', kind: 'binary', margin: 0.02, role: 'success' }] }),
    /at least one metric must be a guardrail/,
  );
  assert.match(
    bad({ metrics: [{ name: 'error_rate', kind: 'binary', margin: 0.02, scale: 'log' }] }),
    /scale "log" applies to latency_ms only/,
  );
});

test('α is split across the cohorts and the pooled test unless the policy says per cohort', () => {
  assert.equal(familyLevel(policyWith({}), 3), 0.05 / 4);
  assert.equal(familyLevel(policyWith({}), 1), 0.05);
  assert.equal(familyLevel(policyWith({ familywise: 'per-cohort' }), 3), 0.05);
  const { decisions } = engineLook(policyWith({}), canary, [cohort('a', {}), cohort('b', {})], fresh(), 3);
  for (const d of decisions) for (const m of d.metrics) assert.equal(m.level, 0.05 / 4);
});

test("Holm: once one guardrail is proven harmful the next is tested at the family's full level", () => {
  const policy = policyWith({ familywise: 'per-cohort' });
  const alpha = 0.05;
  // Latency difference whose interval excludes 0 at α but not at α/2: Bonferroni would miss it.
  const variance = (100 / 2000) * 2;
  const half = (a: number) => {
    const [lo, hi] = msprt({ estimate: 0, variance, tau: 5, alpha: a }).ci;
    return (hi - lo) / 2;
  };
  const delta = (half(alpha) + half(alpha / 2)) / 2;
  const stats = cohort('a', { rate: 0.2, mean: 50 + delta }, { rate: 0.1, mean: 50 });
  const { decisions } = engineLook(policy, canary, [stats], fresh(), 1);
  const [d] = decisions;
  assert.equal(d!.action, 'rollback');
  const err = metric(d!.metrics, 'error_rate');
  const lat = metric(d!.metrics, 'latency_ms');
  assert.equal(err.verdict, 'harm');
  assert.equal(err.level, alpha / 2, 'the stronger harm is tested first, at α/2');
  assert.equal(lat.verdict, 'harm');
  assert.equal(lat.level, alpha, 'then the second at α');
  assert.ok(lat.ci[0] > 0);
  // Without the first rejection the same latency difference is not harm at α/2.
  const alone = engineLook(policy, canary, [cohort('a', { mean: 50 + delta }, { mean: 50 })], fresh(), 1);
  const latAlone = metric(alone.decisions[0]!.metrics, 'latency_ms');
  assert.notEqual(latAlone.verdict, 'harm');
  assert.match(latAlone.note!, /harm is not proven at its Holm level/);
});

test('success metrics are gated behind the guardrails and Holm among themselves', () => {
  const policy = policyWith({
    familywise: 'per-cohort',
    requireImprovement: true,
    metrics: [
      { name: 'latency_ms', kind: 'continuous', margin: 5 },
      { name: 'error_rate', kind: 'binary', margin: 0.02, role: 'success' },
    ],
  });
  // Lower error, latency not shown within margin (few samples): the gate stays shut.
  const shut = engineLook(
    policy,
    final,
    [cohort('a', { rate: 0.05, n: 120, sd: 40 }, { n: 120, sd: 40 })],
    fresh(),
    1,
  );
  assert.equal(metric(shut.decisions[0]!.metrics, 'latency_ms').verdict, 'inconclusive');
  assert.equal(metric(shut.decisions[0]!.metrics, 'error_rate').verdict, 'untested');
  assert.equal(shut.decisions[0]!.action, 'escalate');
  // Latency non-inferior: the gate opens and the lower error is shown.
  const open = engineLook(policy, final, [cohort('a', { rate: 0.05 })], fresh(), 1);
  assert.equal(metric(open.decisions[0]!.metrics, 'latency_ms').verdict, 'noninferior');
  assert.equal(metric(open.decisions[0]!.metrics, 'error_rate').verdict, 'improved');
  assert.equal(open.decisions[0]!.action, 'promote');
  // Same error rate: non-inferior but no improvement, and the policy requires one.
  const flat = engineLook(policy, final, [cohort('a', {})], fresh(), 1);
  assert.equal(metric(flat.decisions[0]!.metrics, 'error_rate').verdict, 'not-improved');
  assert.equal(flat.decisions[0]!.action, 'escalate');
  assert.match(flat.decisions[0]!.reason, /requires an improvement/);
});

test('inconclusive or missing data escalates; it never promotes', () => {
  const policy = policyWith({});
  const inconclusive = engineLook(
    policy,
    final,
    [cohort('a', { labeled: 150 }, { labeled: 150 })],
    fresh(),
    1,
  );
  assert.equal(inconclusive.decisions[0]!.action, 'escalate');
  assert.match(inconclusive.decisions[0]!.reason, /never promotes/);
  const missing = engineLook(policy, final, [cohort('a', { labeled: 20 }, { labeled: 20 })], fresh(), 1);
  assert.equal(metric(missing.decisions[0]!.metrics, 'error_rate').verdict, 'insufficient');
  assert.equal(missing.decisions[0]!.action, 'escalate');
  const few = [cohort('a', { labeled: 20 }, { labeled: 20 })];
  assert.equal(engineLook(policy, endOfWave(0), few, fresh(), 1).decisions[0]!.action, 'extend');
  assert.equal(engineLook(policy, endOfWave(1), few, fresh(), 1).decisions[0]!.action, 'escalate');
  assert.equal(engineLook(policy, canary, few, fresh(), 1).decisions[0]!.action, 'continue');
  const rare = engineLook(
    policy,
    canary,
    [cohort('a', { labeled: 300, rate: 0.06 }, { labeled: 300, rate: 0.02 })],
    fresh(),
    1,
  );
  const p = metric(rare.decisions[0]!.metrics, 'error_rate').probAboveMargin!;
  assert.ok(p > 0.8 && p < 1, `few errors: the Beta-Binomial P(Δ > margin) = ${p} is reported`);
  assert.match(rare.decisions[0]!.reason, /posterior P\(Δ > margin\) = 0\.\d{3}/);
  const plenty = [cohort('a', { labeled: 8000 }, { labeled: 8000 })];
  assert.equal(engineLook(policy, final, plenty, fresh(), 1).decisions[0]!.action, 'promote');
});

test('harm in one cohort rolls back that cohort only; in two, the fleet; with rollbackScope fleet, always', () => {
  const harm = { rate: 0.25 };
  const one = [cohort('a', harm), cohort('b', {}), cohort('c', {})];
  const local = engineLook(policyWith({}), canary, one, fresh(), 3);
  assert.deepEqual(
    local.decisions.map((d) => d.action),
    ['rollback', 'continue', 'continue'],
  );
  assert.equal(local.fleet.action, 'none');

  const two = [cohort('a', harm), cohort('b', harm), cohort('c', {})];
  const wide = engineLook(policyWith({}), canary, two, fresh(), 3);
  assert.equal(wide.fleet.action, 'rollback');
  assert.ok(wide.decisions.every((d) => d.action === 'rollback'));
  assert.match(wide.decisions[2]!.reason, /Harm in 2 cohorts \(a, b\) reaches fleetWideHarmCohorts 2/);

  const scoped = engineLook(policyWith({ rollbackScope: 'fleet' }), canary, one, fresh(), 3);
  assert.ok(scoped.decisions.every((d) => d.action === 'rollback'));
  assert.match(scoped.fleet.reason, /whole fleet on harm in any cohort \(harm in a\)/);
});

test('harm spread thinly over every cohort is caught by the stratified pooled estimate', () => {
  // +2.5 points of error in each of four cohorts: no cohort alone proves it at α/5, the pooled test does.
  const cohorts = ['a', 'b', 'c', 'd'].map((c) => cohort(c, { rate: 0.125 }, { rate: 0.1 }));
  const r = engineLook(policyWith({}), canary, cohorts, fresh(), 4);
  for (const d of r.decisions) {
    assert.notEqual(metric(d.metrics, 'error_rate').verdict, 'harm', `${d.cohort} alone is not proven`);
  }
  assert.equal(r.fleet.action, 'rollback');
  assert.match(r.fleet.reason, /Harm spread over the fleet/);
  assert.ok(r.decisions.every((d) => d.action === 'rollback'));
  const pooled = metric(r.fleet.pooled, 'error_rate');
  assert.ok(Math.abs(pooled.estimate - 0.025) < 1e-3, `pooled Δ ${pooled.estimate}`);
  assert.ok(Math.abs(pooled.candidate - 0.125) < 1e-9 && Math.abs(pooled.production - 0.1) < 1e-9);
});

test("unequal allocation across cohorts cannot make a neutral candidate look harmful (Simpson's paradox)", () => {
  // Equal error rates within each cohort; the candidate mostly in the cohort where both err more.
  const night = cohort('night', { labeled: 4000, rate: 0.3 }, { labeled: 400, rate: 0.3 });
  const day = cohort('day', { labeled: 400, rate: 0.05 }, { labeled: 4000, rate: 0.05 });
  const crude = (0.3 * 4000 + 0.05 * 400) / 4400 - (0.3 * 400 + 0.05 * 4000) / 4400;
  assert.ok(crude > 0.2, `the crude difference is large: ${crude}`);
  const r = engineLook(policyWith({}), canary, [night, day], fresh(), 2);
  const pooled = metric(r.fleet.pooled, 'error_rate');
  assert.ok(Math.abs(pooled.estimate) < 1e-9, `stratified Δ ${pooled.estimate}`);
  assert.notEqual(pooled.verdict, 'harm');
  assert.equal(r.fleet.action, 'none');
});

test('safety events: the exact rate-ratio test at α·6/(π²k²) per look, with the posterior beside it', () => {
  const policy = policyWith({
    familywise: 'per-cohort',
    metrics: [{ name: 'safety_events', kind: 'rate', margin: 0.2 }],
  });
  const worse = cohort('a', { safety: [40, 1000] }, { safety: [10, 1000] });
  const first = engineLook(policy, canary, [worse], fresh(), 1);
  const m = metric(first.decisions[0]!.metrics, 'safety_events');
  assert.equal(m.test, 'exact-poisson');
  assert.equal(m.verdict, 'harm');
  assert.ok(Math.abs(m.estimate - 3) < 1e-12, 'rate ratio 4, reported as ratio − 1');
  assert.ok(m.probAboveMargin! > 0.99);
  assert.equal(first.decisions[0]!.action, 'rollback');

  // The same counts at a later look are tested at a smaller level: the interval widens.
  let state = fresh();
  const same = cohort('a', { safety: [18, 1000] }, { safety: [8, 1000] });
  const widths: number[] = [];
  for (let k = 1; k <= 3; k++) {
    const r = engineLook(policy, canary, [same], state, 1);
    state = r.state;
    const s = metric(r.decisions[0]!.metrics, 'safety_events');
    widths.push(s.ci[0]);
    assert.match(s.note!, new RegExp(`look ${k} at`));
  }
  assert.ok(widths[0]! > widths[1]! && widths[1]! > widths[2]!, `lower ends fall: ${widths.join(', ')}`);

  // Equal rates over much exposure: non-inferior within 20%; no exposure: insufficient.
  const equal = cohort('a', { safety: [2000, 1e5] }, { safety: [2000, 1e5] });
  const ni = engineLook(policy, final, [equal], fresh(), 1);
  assert.equal(metric(ni.decisions[0]!.metrics, 'safety_events').verdict, 'noninferior');
  assert.equal(ni.decisions[0]!.action, 'promote');
  const none = engineLook(policy, final, [cohort('a', {})], fresh(), 1);
  assert.equal(metric(none.decisions[0]!.metrics, 'safety_events').verdict, 'insufficient');
});

test('log-scale latency compares geometric means, with a relative margin', () => {
  const policy = policyWith({
    familywise: 'per-cohort',
    metrics: [{ name: 'latency_ms', kind: 'continuous', margin: 0.05, scale: 'log' }],
  });
  const slower = cohort('a', { mean: 60, sd: 6 }, { mean: 50, sd: 5 });
  const r = engineLook(policy, canary, [slower], fresh(), 1);
  const m = metric(r.decisions[0]!.metrics, 'latency_ms');
  assert.equal(m.scale, 'log');
  assert.ok(Math.abs(m.estimate - 0.2) < 1e-9, `60/50 − 1 = ${m.estimate}`);
  assert.ok(Math.abs(m.candidate - 60) < 1e-9 && Math.abs(m.production - 50) < 1e-9);
  assert.equal(m.verdict, 'harm');
  const same = engineLook(policy, final, [cohort('a', { mean: 50, sd: 5 }, { mean: 50, sd: 5 })], fresh(), 1);
  assert.equal(metric(same.decisions[0]!.metrics, 'latency_ms').verdict, 'noninferior');
});

test('group-sequential design: the boundary of each look comes from the observed information fractions', () => {
  const policy = policyWith({ familywise: 'per-cohort', design: 'ld-obf', plannedPerArm: 4000 });
  let state = fresh();
  const seen: number[] = [];
  for (const labeled of [1000, 2000, 2000, 3000]) {
    const r = engineLook(policy, canary, [cohort('a', { labeled }, { labeled })], state, 1);
    state = r.state;
    const m = metric(r.decisions[0]!.metrics, 'error_rate');
    assert.equal(m.test, 'ld-obf');
    seen.push(m.boundary);
  }
  assert.deepEqual(state.info!['a'], [0.25, 0.5, 0.75], 'a look without new information adds no fraction');
  // Non-inferiority is tested at the family's level, alpha, on the same information fractions.
  const expected = boundaries({ design: 'ld-obf', looks: 3, alpha: 0.05, sides: 1, info: [0.25, 0.5, 0.75] });
  assert.ok(Math.abs(seen[3]! - expected.boundaries[2]!) < 1e-12);
  assert.equal(seen[1], seen[2], 'the repeated look reuses its boundary');
  assert.ok(seen[0]! > seen[1]! && seen[1]! > seen[3]!, `O-F boundaries fall: ${seen.join(', ')}`);
});

/** A/A: both arms from the same distributions, three cohorts, two metrics, ten looks. */
function aaFalseAlarms(policy: Policy, runs: number, seed: number): { engine: number; naive: number } {
  const r = makeRng(seed);
  const perLook = 150;
  let engine = 0;
  let naive = 0;
  for (let run = 0; run < runs; run++) {
    const arms = new Map<string, ArmStats>();
    let state = fresh();
    let alarmed = false;
    let naiveAlarm = false;
    for (let look = 1; look <= 10; look++) {
      const stats: CohortStats[] = [];
      for (const c of ['a', 'b', 'c']) {
        for (const side of ['candidate', 'production']) {
          const key = `${c}|${side}`;
          const s = arms.get(key) ?? {
            events: 0,
            labeled: 0,
            errors: 0,
            latency: { n: 0, sum: 0, sumSq: 0 },
          };
          for (let i = 0; i < perLook; i++) {
            s.labeled++;
            if (r() < 0.1) s.errors++;
            const x = 50 + 10 * gaussian(r);
            s.latency.n++;
            s.latency.sum += x;
            s.latency.sumSq += x * x;
          }
          s.events = s.labeled;
          arms.set(key, s);
        }
        const cand = arms.get(`${c}|candidate`)!;
        const prod = arms.get(`${c}|production`)!;
        stats.push({
          cohort: c,
          candidate: structuredClone(cand),
          production: structuredClone(prod),
        });
        // The naive repeated test: a one-sided z-test on the error rate at α at every look.
        const p1 = cand.errors / cand.labeled;
        const p0 = prod.errors / prod.labeled;
        const z = (p1 - p0) / Math.sqrt((p1 * (1 - p1)) / cand.labeled + (p0 * (1 - p0)) / prod.labeled);
        if (z > 1.6449) naiveAlarm = true;
      }
      const out = engineLook(policy, canary, stats, state, 3);
      state = out.state;
      if (out.decisions.some((d) => d.action === 'rollback')) alarmed = true;
    }
    if (alarmed) engine++;
    if (naiveAlarm) naive++;
  }
  return { engine: engine / runs, naive: naive / runs };
}

test('A/A over ten looks, three cohorts and two metrics: the engine keeps false rollbacks within α', () => {
  for (const [policy, runs] of [
    [policyWith({ maxExtraLooks: 0 }), 300],
    [policyWith({ design: 'ld-obf', plannedPerArm: 1500, maxExtraLooks: 0 }), 120],
  ] as const) {
    const se = Math.sqrt((0.05 * 0.95) / runs);
    const { engine, naive } = aaFalseAlarms(policy, runs, 20261121);
    assert.ok(engine <= 0.05 + 2 * se, `${policy.analysis.design}: false rollbacks ${engine}`);
    assert.ok(naive > 0.2, `the naive repeated z-test alarms in ${naive} of A/A runs`);
  }
});

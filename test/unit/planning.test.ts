/**
 * Tables for policies/planning: sample sizes and power against published examples (R's
 * `power.prop.test`, the normal formula for means, van Belle's rule for Poisson rates), seeded
 * simulations of the power they promise, and rollout plans of the demo fleet and policy.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import YAML from 'yaml';
import { makeRng } from '../../policies/rng';
import { FleetManifest, Policy } from '../../policies/schema';
import { minimumDetectableEffect, planRollout, power, sampleSize } from '../../policies/planning';
import { diffOfProportions, msprt } from '../../policies/stats';
import { normalQuantile } from '../../policies/special';

const ROOT = join(__dirname, '..', '..');

function close(actual: number, expected: number, tol: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: got ${actual}, expected ${expected} (±${tol})`);
}

function load<T>(schema: { parse(x: unknown): T }, file: string): T {
  return schema.parse(YAML.parse(readFileSync(join(ROOT, file), 'utf8')));
}

function binomial(rng: () => number, n: number, p: number): number {
  let x = 0;
  for (let i = 0; i < n; i++) if (rng() < p) x++;
  return x;
}

void test('sample size for two proportions: the pooled formula of power.prop.test, and unpooled', () => {
  // R documentation: power.prop.test(p1 = .50, p2 = .75, power = .90) => n = 76.7, and
  // power.prop.test(n = 50, p1 = .50, p2 = .75) => power = 0.740.
  const r = sampleSize({ kind: 'proportion', baseline: 0.5, mde: 0.25, alpha: 0.05, power: 0.9 })!;
  close(r.exact, 76.7, 0.05, 'n for .50 vs .75 at power .90');
  assert.equal(r.nPerArm, 77);
  close(
    power({ kind: 'proportion', baseline: 0.5, mde: 0.25, alpha: 0.05, nPerArm: 50 })!,
    0.74,
    5e-4,
    'power',
  );

  // 10% vs 15%, α = 0.05 two-sided, power 0.8: 685.6 → 686 pooled, 682.9 → 683 unpooled.
  const pooled = sampleSize({ kind: 'proportion', baseline: 0.1, mde: 0.05, alpha: 0.05, power: 0.8 })!;
  const unpooled = sampleSize({
    kind: 'proportion',
    baseline: 0.1,
    mde: 0.05,
    alpha: 0.05,
    power: 0.8,
    variance: 'unpooled',
  })!;
  close(pooled.exact, 685.6, 0.05, 'pooled');
  assert.equal(pooled.nPerArm, 686);
  close(unpooled.exact, 682.85, 0.05, 'unpooled');
  assert.equal(unpooled.nPerArm, 683);
  // A harm of −5 points needs the same n as +5 points from 15%.
  const down = sampleSize({ kind: 'proportion', baseline: 0.15, mde: -0.05, alpha: 0.05, power: 0.8 })!;
  close(down.exact, pooled.exact, 1e-9, 'symmetric in the two arms');

  // A seeded simulation of the pooled two-sided z-test at n = 686 per arm has power about 0.8.
  const rng = makeRng('power-prop');
  const runs = 3000;
  const z = normalQuantile(0.975);
  let rejected = 0;
  for (let i = 0; i < runs; i++) {
    const x1 = binomial(rng, 686, 0.1);
    const x2 = binomial(rng, 686, 0.15);
    const bar = (x1 + x2) / (2 * 686);
    const stat = (x2 - x1) / 686 / Math.sqrt((2 * bar * (1 - bar)) / 686);
    if (Math.abs(stat) > z) rejected++;
  }
  close(rejected / runs, 0.8, 3 * Math.sqrt((0.8 * 0.2) / runs) + 0.01, 'simulated power at n = 686');
});

void test('sample size for means and rates; power inverts sample size', () => {
  // n = 2 (z_{0.975} + z_{0.8})² σ² / Δ² = 62.79 → 63 for σ = 1, Δ = 0.5.
  const mean = sampleSize({ kind: 'mean', baseline: 0, mde: 0.5, sd: 1, alpha: 0.05, power: 0.8 })!;
  close(mean.exact, 62.79, 0.005, 'means, two-sided');
  assert.equal(mean.nPerArm, 63);
  const oneSided = sampleSize({
    kind: 'mean',
    baseline: 0,
    mde: 0.5,
    sd: 1,
    alpha: 0.05,
    power: 0.8,
    sides: 1,
  })!;
  close(oneSided.exact, 2 * (1.6448536269514722 + 0.8416212335729143) ** 2 * 4, 1e-9, 'means, one-sided');
  assert.equal(oneSided.nPerArm, 50);

  // Rates: van Belle's rule of thumb n = 4 / (√λ₁ − √λ₂)² rounds (z_{0.975} + z_{0.8})² = 7.85 up to 8.
  const rate = sampleSize({ kind: 'rate', baseline: 0.01, mde: 0.01, alpha: 0.05, power: 0.8 })!;
  const rule = 4 / (Math.sqrt(0.02) - Math.sqrt(0.01)) ** 2;
  close(rate.exact / rule, 7.84887 / 8, 1e-4, 'exposure against the rule of thumb');
  assert.equal(rate.nPerArm, rate.exact, 'exposure is not rounded');
  close(rate.expectedEvents![0], 0.01 * rate.exact, 1e-9, 'expected baseline events');
  close(rate.expectedEvents![1], 0.02 * rate.exact, 1e-9, 'expected candidate events');

  const designs = [
    { kind: 'proportion', baseline: 0.02, mde: 0.01, alpha: 0.01, sides: 1 },
    { kind: 'proportion', baseline: 0.3, mde: -0.1, alpha: 0.05, variance: 'unpooled' },
    { kind: 'mean', baseline: 12, mde: 0.7, sd: 3, alpha: 0.025 },
    { kind: 'rate', baseline: 2e-4, mde: 1e-4, alpha: 0.05, sides: 1 },
  ] as const;
  for (const d of designs) {
    for (const target of [0.5, 0.8, 0.95]) {
      const n = sampleSize({ ...d, power: target })!;
      close(power({ ...d, nPerArm: n.exact })!, target, 1e-9, `${d.kind}: power at the exact n`);
      if (d.kind !== 'rate') {
        assert.ok(power({ ...d, nPerArm: n.nPerArm })! >= target, `${d.kind}: rounded n reaches the power`);
        assert.ok(power({ ...d, nPerArm: n.nPerArm - 1 })! < target, `${d.kind}: one fewer does not`);
      }
    }
  }
  assert.equal(
    sampleSize({ kind: 'mean', baseline: 0, mde: 0.5, alpha: 0.05, power: 0.8 }),
    undefined,
    'no sd',
  );
  assert.equal(
    sampleSize({ kind: 'proportion', baseline: 0.98, mde: 0.05, alpha: 0.05, power: 0.8 }),
    undefined,
  );
  assert.equal(sampleSize({ kind: 'rate', baseline: 1, mde: 0, alpha: 0.05, power: 0.8 }), undefined);
  assert.equal(power({ kind: 'rate', baseline: 1, mde: 1, alpha: 1.5, nPerArm: 10 }), undefined);
});

void test('minimum detectable effect: the gate reaches the wanted power at its mde (seeded simulation)', () => {
  const nCandidate = 5184;
  const nProduction = 14256;
  const args = { nCandidate, nProduction, baseline: 0.1, alpha: 0.025, power: 0.8, tau: 0.05 };
  const { mde, mdeFixedSample } = minimumDetectableEffect(args);
  assert.ok(mde !== null && mdeFixedSample !== null);
  assert.ok(mdeFixedSample < mde, 'the always-valid test pays for looking any time');
  const rng = makeRng('mde-gate');
  const runs = 600;
  let harm = 0;
  for (let i = 0; i < runs; i++) {
    const cand = { x: binomial(rng, nCandidate, 0.1 + mde), n: nCandidate };
    const prod = { x: binomial(rng, nProduction, 0.1), n: nProduction };
    const diff = diffOfProportions(cand, prod)!;
    const t = msprt({ estimate: diff.estimate, variance: diff.variance, tau: 0.05, alpha: 0.025 });
    if (t.ci[0] > 0) harm++;
  }
  close(harm / runs, 0.8, 3 * Math.sqrt((0.8 * 0.2) / runs) + 0.01, 'simulated power of the gate at the mde');
  // More labels detect smaller harms.
  const more = minimumDetectableEffect({ ...args, nCandidate: 4 * nCandidate, nProduction: 4 * nProduction });
  assert.ok(more.mde! < mde);
  assert.deepEqual(minimumDetectableEffect({ ...args, nCandidate: 0 }), { mde: null, mdeFixedSample: null });
});

void test('planRollout: the demo policy on the demo fleet', () => {
  const fleet = load(FleetManifest, 'sim/fleets/demo.yaml');
  const shipped = load(Policy, 'examples/demo-policy.yaml');
  // The shipped demo policy can detect its own margin: no warnings.
  const demo = planRollout({ policy: shipped, fleet, timeScale: 600 });
  assert.deepEqual(demo.warnings, []);
  assert.ok(demo.cohorts.every((c) => c.detectable === true));
  // With 12 s holds it could not. The demo runs the simulated fleet 600x faster than the policy's
  // clock: 12 s holds are 2 h of driving.
  const policy = { ...shipped, waves: shipped.waves.map((w) => ({ ...w, hold: '12s' })) };
  const plan = planRollout({ policy, fleet, timeScale: 600 });
  assert.deepEqual(JSON.parse(JSON.stringify(plan)), plan, 'JSON-able');
  assert.deepEqual(
    plan.cohorts.map((c) => c.cohort),
    ['hw3/eu', 'hw4/us', 'hw3/nordic'],
  );
  assert.equal(plan.assumptions.labeledPerVehicleHour, 9); // 30 events × 0.3 labeled
  assert.equal(plan.assumptions.alphaPerMetric, 0.05 / 4 / 2); // α over 3 cohorts + pooled, Holm's first of 2
  for (const c of plan.cohorts) {
    // 400 vehicles: 20, 100, 200 on the candidate, 2 h each, 9 labels per vehicle-hour.
    assert.deepEqual(
      c.waves.map((w) => [w.hours, w.candidate, w.production]),
      [
        [2, 360, 6840],
        [2, 2160, 12240],
        [2, 5760, 15840],
      ],
    );
    assert.deepEqual(c.labeledPerArm, { candidate: 5184, production: 14256 }); // × coverage 0.9
    assert.ok(c.mde !== null && Number.isFinite(c.mde) && c.mde > 0 && c.mde < 0.05, `finite mde ${c.mde}`);
    assert.ok(c.mdeFixedSample! < c.mde, 'one fixed-sample look would detect less');
    // The demo's 2-point margin is just below what 6 h of the demo fleet can detect with the mSPRT.
    assert.equal(c.margin, 0.02);
    close(c.mde, 0.0245, 5e-4, 'mde');
    assert.equal(c.detectable, false);
    assert.ok(c.holdScaleNeeded! > 1 && c.holdScaleNeeded! < 2, `hold scale ${c.holdScaleNeeded}`);
  }
  assert.equal(plan.warnings.length, 3);
  for (const w of plan.warnings)
    assert.match(w, /cannot detect the error_rate margin 0\.02 .* longer would be needed/);

  // Holds scaled as the warning says make the margin detectable.
  const scale = plan.cohorts[0]!.holdScaleNeeded!;
  const longer = planRollout({ policy, fleet, timeScale: 600 * scale });
  assert.ok(longer.cohorts.every((c) => c.detectable === true));
  assert.deepEqual(longer.warnings, []);

  // Read on the policy's own clock (timeScale 1) the holds are seconds: nothing is detectable.
  const realTime = planRollout({ policy, fleet });
  assert.ok(realTime.cohorts.every((c) => c.detectable === false));
  assert.ok(realTime.warnings.some((w) => /below minLabeledPerArm 100/.test(w)));

  // The week-long policy detects its 1-point margin on the same fleet, without warnings.
  const week = planRollout({ policy: load(Policy, 'examples/week-policy.yaml'), fleet });
  assert.deepEqual(week.warnings, []);
  assert.ok(week.cohorts.every((c) => c.detectable === true && c.mde! <= 0.01));
});

void test('planRollout: a daily label budget below the canary sample caps the labels it plans with', () => {
  const fleet = load(FleetManifest, 'sim/fleets/demo.yaml');
  const shipped = load(Policy, 'examples/demo-policy.yaml');
  // 1,200 vehicles × 30 events × 0.3 × 24 h = 259,200 sample labels a day asked for.
  const budgeted = { ...shipped, labelWait: { ...shipped.labelWait, dailyBudget: 25_920 } };
  const plan = planRollout({ policy: budgeted, fleet, timeScale: 600 });
  close(plan.assumptions.labeledPerVehicleHour, 0.9, 1e-9, 'a tenth of 9 labels per vehicle-hour');
  assert.ok(
    plan.warnings.some((w) =>
      /labelWait\.dailyBudget 25920 is below the about 259200 sample labels a day .* counts 10% of them/.test(
        w,
      ),
    ),
    plan.warnings.join('\n'),
  );
  const free = planRollout({ policy: shipped, fleet, timeScale: 600 });
  for (const [i, c] of plan.cohorts.entries()) {
    close(c.labeledPerArm.candidate, free.cohorts[i]!.labeledPerArm.candidate / 10, 1e-6, 'candidate labels');
    assert.ok(c.mde! > free.cohorts[i]!.mde!, 'fewer labels detect only larger harms');
  }
  // A budget above the demand changes nothing.
  const ample = { ...shipped, labelWait: { ...shipped.labelWait, dailyBudget: 1_000_000 } };
  assert.deepEqual(planRollout({ policy: ample, fleet, timeScale: 600 }), free);
});

void test('planRollout: a tiny fleet cannot detect the margin; unknown cohorts and missing metrics are named', () => {
  const fleet = FleetManifest.parse({
    apiVersion: 'fleetgate/v1',
    kind: 'Fleet',
    name: 'tiny',
    skus: [{ name: 'hw3', speedFactor: 10, latencyBudgetMs: 10 }],
    cohorts: [{ name: 'hw3/eu', sku: 'hw3', region: 'eu', vehicles: 10, nightShare: 0.1 }],
    eventsPerVehicleHour: 2,
    labels: { rate: 0.05, delay: '2h' },
  });
  const policy = load(Policy, 'examples/demo-policy.yaml');
  const plan = planRollout({ policy, fleet, timeScale: 600 });
  const [c] = plan.cohorts;
  assert.equal(c!.detectable, false);
  assert.ok(c!.labeledPerArm.candidate < 100);
  assert.ok(plan.warnings.some((w) => /^hw3\/eu: wave 1 \(5%\) ends with about 0 labels/.test(w)));
  assert.ok(plan.warnings.some((w) => /^hw3\/eu: cannot detect the error_rate margin 0\.02/.test(w)));

  const scoped = Policy.parse({
    ...YAML.parse(readFileSync(join(ROOT, 'examples/demo-policy.yaml'), 'utf8')),
    cohorts: ['hw3/eu', 'hw9/mars'],
    analysis: { metrics: [{ name: 'latency_ms', kind: 'continuous', margin: 0.5 }] },
  });
  const other = planRollout({ policy: scoped, fleet, timeScale: 600 });
  assert.deepEqual(
    other.cohorts.map((x) => [x.cohort, x.margin, x.detectable]),
    [['hw3/eu', null, null]],
  );
  assert.ok(
    other.warnings.includes('the policy has no error_rate metric: no minimum detectable effect is planned'),
  );
  assert.ok(other.warnings.includes('cohort hw9/mars of policy demo is not in fleet tiny'));
});

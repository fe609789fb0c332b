/**
 * Tables for policies/stats: summaries, differences, the mSPRT against values worked out by hand, its
 * duality with the confidence sequence, and seeded simulations of false alarms and power.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeRng } from '../../policies/rng';
import {
  diffOfMeans,
  diffOfProportions,
  erfc,
  fixedZTest,
  meanVar,
  msprt,
  normalCdf,
  proportion,
  type Difference,
} from '../../policies/stats';

function close(actual: number, expected: number, tol: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: got ${actual}, expected ${expected} (±${tol})`);
}

function binomial(rand: () => number, n: number, p: number): number {
  let x = 0;
  for (let i = 0; i < n; i++) if (rand() < p) x++;
  return x;
}

/** Standard normal by Box-Muller. */
function gaussian(rand: () => number): number {
  const u = 1 - rand();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
}

void test('proportion and meanVar', () => {
  const proportions: [number, number, number][] = [
    [0, 0, 0],
    [3, 0, 0],
    [0, 10, 0],
    [3, 10, 0.3],
    [10, 10, 1],
  ];
  for (const [x, n, want] of proportions) assert.equal(proportion(x, n), want, `proportion(${x}, ${n})`);

  const moments: { name: string; n: number; sum: number; sumSq: number; mean: number; variance: number }[] = [
    { name: 'empty', n: 0, sum: 0, sumSq: 0, mean: 0, variance: 0 },
    { name: 'one value', n: 1, sum: 7, sumSq: 49, mean: 7, variance: 0 },
    // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, squared deviations sum to 32, unbiased variance 32/7
    { name: 'eight values', n: 8, sum: 40, sumSq: 232, mean: 5, variance: 32 / 7 },
    { name: 'constant', n: 4, sum: 12, sumSq: 36, mean: 3, variance: 0 },
    // rounding makes sumSq - sum²/n slightly negative: clamped to 0
    { name: 'rounding', n: 3, sum: 0.3, sumSq: 0.03 - 1e-18, mean: 0.1, variance: 0 },
  ];
  for (const c of moments) {
    const r = meanVar(c);
    close(r.mean, c.mean, 1e-12, `${c.name} mean`);
    close(r.variance, c.variance, 1e-12, `${c.name} variance`);
    assert.ok(r.variance >= 0, `${c.name} variance is not negative`);
  }
});

void test('differences: values, continuity floor, and undefined when not computable', () => {
  const pv = (x: number, n: number): number => {
    const p = (x + 0.5) / (n + 1);
    return (p * (1 - p)) / n;
  };
  const rows: {
    name: string;
    got: Difference | undefined;
    want: Difference | undefined;
  }[] = [
    {
      name: 'proportions 20% vs 10%',
      got: diffOfProportions({ x: 200, n: 1000 }, { x: 100, n: 1000 }),
      want: { estimate: 0.1, variance: pv(200, 1000) + pv(100, 1000) },
    },
    {
      name: 'no errors on either arm: the floor keeps the variance positive',
      got: diffOfProportions({ x: 0, n: 100 }, { x: 0, n: 100 }),
      want: { estimate: 0, variance: (2 * ((0.5 / 101) * (1 - 0.5 / 101))) / 100 },
    },
    {
      name: 'all errors on both arms',
      got: diffOfProportions({ x: 50, n: 50 }, { x: 50, n: 50 }),
      want: { estimate: 0, variance: 2 * pv(50, 50) },
    },
    {
      name: 'proportions, empty candidate',
      got: diffOfProportions({ x: 0, n: 0 }, { x: 5, n: 50 }),
      want: undefined,
    },
    {
      name: 'proportions, empty production',
      got: diffOfProportions({ x: 5, n: 50 }, { x: 0, n: 0 }),
      want: undefined,
    },
    {
      // candidate: n=4 mean 3 variance 10/3 (values 1,2,4,5); production: n=3 mean 1 variance 1 (0,1,2)
      name: 'means, Welch variance',
      got: diffOfMeans({ n: 4, sum: 12, sumSq: 46 }, { n: 3, sum: 3, sumSq: 5 }),
      want: { estimate: 2, variance: 10 / 3 / 4 + 1 / 3 },
    },
    {
      name: 'means, one arm constant',
      got: diffOfMeans({ n: 4, sum: 12, sumSq: 36 }, { n: 3, sum: 3, sumSq: 5 }),
      want: { estimate: 2, variance: 1 / 3 },
    },
    {
      name: 'means, both arms constant',
      got: diffOfMeans({ n: 4, sum: 12, sumSq: 36 }, { n: 3, sum: 3, sumSq: 3 }),
      want: undefined,
    },
    {
      name: 'means, one sample',
      got: diffOfMeans({ n: 1, sum: 5, sumSq: 25 }, { n: 3, sum: 3, sumSq: 5 }),
      want: undefined,
    },
    {
      name: 'means, empty',
      got: diffOfMeans({ n: 0, sum: 0, sumSq: 0 }, { n: 0, sum: 0, sumSq: 0 }),
      want: undefined,
    },
  ];
  for (const r of rows) {
    if (r.want === undefined) {
      assert.equal(r.got, undefined, r.name);
      continue;
    }
    assert.ok(r.got, `${r.name}: defined`);
    close(r.got.estimate, r.want.estimate, 1e-12, `${r.name} estimate`);
    close(r.got.variance, r.want.variance, 1e-15, `${r.name} variance`);
  }
});

void test('msprt matches hand-computed Λ and confidence sequences', () => {
  const rows: {
    name: string;
    estimate: number;
    variance: number;
    tau: number;
    theta0?: number;
    alpha: number;
    logLambda: number;
    half: number;
  }[] = [
    {
      // V = τ² = 1e-4: Λ = sqrt(1/2) · exp(1e-4 · 9e-4 / (2 · 1e-4 · 2e-4)) = sqrt(1/2) · e^2.25
      name: 'V equals τ²',
      estimate: 0.03,
      variance: 1e-4,
      tau: 0.01,
      alpha: 0.05,
      logLambda: 0.5 * Math.log(0.5) + 2.25,
      // half² = 2 · 1e-4 · 2e-4 / 1e-4 · (log 20 + ½ log 2)
      half: Math.sqrt(4e-4 * (Math.log(20) + 0.5 * Math.log(2))),
    },
    {
      // no effect: Λ = sqrt(V/(V+τ²)) = sqrt(1/5)
      name: 'estimate at the null',
      estimate: 0,
      variance: 1e-4,
      tau: 0.02,
      alpha: 0.05,
      logLambda: 0.5 * Math.log(1 / 5),
      half: Math.sqrt(((2 * 1e-4 * 5e-4) / 4e-4) * (Math.log(20) + 0.5 * Math.log(5))),
    },
    {
      // V = 4e-4, τ² = 25e-4, V + τ² = 29e-4
      name: 'negative estimate',
      estimate: -0.05,
      variance: 4e-4,
      tau: 0.05,
      alpha: 0.025,
      logLambda: 0.5 * Math.log(4 / 29) + (25e-4 * 25e-4) / (2 * 4e-4 * 29e-4),
      half: Math.sqrt(((2 * 4e-4 * 29e-4) / 25e-4) * (Math.log(40) + 0.5 * Math.log(29 / 4))),
    },
    {
      name: 'shifted null',
      estimate: 0.13,
      theta0: 0.1,
      variance: 1e-4,
      tau: 0.01,
      alpha: 0.05,
      logLambda: 0.5 * Math.log(0.5) + 2.25,
      half: Math.sqrt(4e-4 * (Math.log(20) + 0.5 * Math.log(2))),
    },
    {
      // latency-like units: V = 0.5 ms², τ = 5 ms, Δ = 2 ms
      name: 'milliseconds',
      estimate: 2,
      variance: 0.5,
      tau: 5,
      alpha: 0.025,
      logLambda: 0.5 * Math.log(0.5 / 25.5) + (25 * 4) / (2 * 0.5 * 25.5),
      half: Math.sqrt(((2 * 0.5 * 25.5) / 25) * (Math.log(40) + 0.5 * Math.log(25.5 / 0.5))),
    },
  ];
  for (const r of rows) {
    const got = msprt({
      estimate: r.estimate,
      variance: r.variance,
      tau: r.tau,
      theta0: r.theta0,
      alpha: r.alpha,
    });
    close(got.logLambda, r.logLambda, 1e-9, `${r.name} logLambda`);
    close(got.lambda, Math.exp(r.logLambda), 1e-9 * Math.exp(r.logLambda), `${r.name} lambda`);
    close(got.pValue, Math.min(1, Math.exp(-r.logLambda)), 1e-12, `${r.name} pValue`);
    assert.equal(got.boundary, 1 / r.alpha, `${r.name} boundary`);
    close(got.ci[0], r.estimate - r.half, 1e-12, `${r.name} ci lower`);
    close(got.ci[1], r.estimate + r.half, 1e-12, `${r.name} ci upper`);
  }
  // Spot value of the first row: Λ = 0.7071068 · 9.4877358 = 6.7087.
  close(
    msprt({ estimate: 0.03, variance: 1e-4, tau: 0.01, alpha: 0.05 }).lambda,
    6.7087,
    1e-3,
    'Λ spot value',
  );
});

void test('the confidence sequence contains θ0 iff Λ < 1/α', () => {
  const rand = makeRng(7);
  let rejected = 0;
  for (let i = 0; i < 2000; i++) {
    const variance = 10 ** (-6 + 5 * rand());
    const tau = 10 ** (-3 + 3 * rand());
    const alpha = [0.05, 0.025, 0.01, 0.05 / 3][i % 4]!;
    const theta0 = rand() < 0.5 ? 0 : rand() - 0.5;
    const estimate = theta0 + gaussian(rand) * Math.sqrt(variance) * 4;
    const r = msprt({ estimate, variance, tau, theta0, alpha });
    const contains = r.ci[0] <= theta0 && theta0 <= r.ci[1];
    assert.equal(contains, r.lambda < r.boundary, `row ${i}: Λ=${r.lambda} ci=${r.ci} θ0=${theta0}`);
    if (!contains) rejected++;
  }
  assert.ok(rejected > 100 && rejected < 1900, `both outcomes occur (rejected ${rejected})`);
});

void test('msprt edge cases never give NaN', () => {
  const rows: { name: string; estimate: number; variance: number; tau: number }[] = [
    { name: 'zero variance', estimate: 0.1, variance: 0, tau: 0.05 },
    { name: 'negative variance', estimate: 0.1, variance: -1, tau: 0.05 },
    { name: 'NaN variance', estimate: 0.1, variance: NaN, tau: 0.05 },
    { name: 'zero tau', estimate: 0.1, variance: 1e-4, tau: 0 },
    { name: 'NaN estimate', estimate: NaN, variance: 1e-4, tau: 0.05 },
  ];
  for (const r of rows) {
    const got = msprt({ ...r, alpha: 0.05 });
    assert.deepEqual(
      got,
      { logLambda: 0, lambda: 1, boundary: 20, pValue: 1, ci: [-Infinity, Infinity] },
      `${r.name}: no evidence`,
    );
  }
  // Overwhelming evidence: Λ overflows to Infinity, log Λ stays finite, p = 0.
  const huge = msprt({ estimate: 1, variance: 1e-6, tau: 1, alpha: 0.05 });
  assert.ok(Number.isFinite(huge.logLambda) && huge.logLambda > 4e5, `logLambda ${huge.logLambda}`);
  assert.equal(huge.lambda, Infinity);
  assert.equal(huge.pValue, 0);
  assert.ok(huge.ci.every(Number.isFinite));
  const extreme = msprt({ estimate: 1e200, variance: 1e-300, tau: 1, alpha: 0.05 });
  assert.ok(Number.isFinite(extreme.logLambda), 'logLambda clamped');
  assert.equal(extreme.pValue, 0);
  // Tiny τ relative to V: Λ → 1 from below, accurately.
  const tiny = msprt({ estimate: 0, variance: 1, tau: 1e-9, alpha: 0.05 });
  close(tiny.logLambda, -0.5e-18, 1e-30, 'tiny τ logLambda');
  // Empty arms feed no estimate in the first place.
  assert.equal(diffOfProportions({ x: 0, n: 0 }, { x: 0, n: 0 }), undefined);
});

void test('normal tail and fixed z-test', () => {
  const rows: [number, number][] = [
    [0, 0.5],
    [1, 0.15865525393145707],
    [1.6448536269514722, 0.05],
    [1.959963984540054, 0.025],
    [2.5758293035489004, 0.005],
    [-1.959963984540054, 0.975],
    [4, 3.167124183311998e-5],
  ];
  for (const [z, p] of rows) {
    close(fixedZTest(z, 1), p, 1.2e-7 * Math.max(p, 1e-3), `P(Z ≥ ${z})`);
    close(fixedZTest(z * 0.01, 1e-4), p, 1.2e-7 * Math.max(p, 1e-3), `P(Z ≥ ${z}) scaled`);
    close(normalCdf(-z), p, 1.2e-7, `Φ(${-z})`);
  }
  close(erfc(0), 1, 1e-7, 'erfc(0)');
  close(erfc(1), 0.15729920705028513, 1.2e-7 * 0.16, 'erfc(1)');
  close(erfc(-1), 2 - 0.15729920705028513, 1e-7, 'erfc(-1)');
  assert.equal(fixedZTest(0.1, 0), 1, 'no variance: no evidence');
});

void test('A/A: mSPRT keeps false alarms at or below α over 10 looks; repeated z-tests do not', () => {
  const rand = makeRng(20240601);
  const experiments = 2000;
  const looks = 10;
  const perLook = 100;
  const alpha = 0.05;
  const tau = 0.05;
  const p = 0.1;
  let msprtHarm = 0;
  let msprtAny = 0;
  let naive = 0;
  let naiveFirstLook = 0;
  for (let e = 0; e < experiments; e++) {
    let xc = 0;
    let xp = 0;
    let n = 0;
    let harm = false;
    let any = false;
    let z = false;
    for (let k = 0; k < looks; k++) {
      xc += binomial(rand, perLook, p);
      xp += binomial(rand, perLook, p);
      n += perLook;
      const d = diffOfProportions({ x: xc, n }, { x: xp, n })!;
      const r = msprt({ estimate: d.estimate, variance: d.variance, tau, alpha });
      if (r.ci[0] > 0) harm = true;
      if (r.pValue <= alpha) any = true;
      const zp = fixedZTest(d.estimate, d.variance);
      if (zp <= alpha) {
        z = true;
        if (k === 0) naiveFirstLook++;
      }
    }
    if (harm) msprtHarm++;
    if (any) msprtAny++;
    if (z) naive++;
  }
  const rate = (x: number): number => x / experiments;
  assert.ok(rate(msprtHarm) <= alpha, `mSPRT harm alarms ${rate(msprtHarm)}`);
  assert.ok(rate(msprtAny) <= alpha, `mSPRT two-sided alarms ${rate(msprtAny)}`);
  // One look of the z-test is roughly at level α; ten looks are far above it.
  assert.ok(
    rate(naiveFirstLook) > 0.03 && rate(naiveFirstLook) < 0.07,
    `z-test, first look ${rate(naiveFirstLook)}`,
  );
  assert.ok(rate(naive) > 2 * alpha, `repeated z-tests ${rate(naive)}`);
});

void test('A/A on latency: mSPRT with τ = margin keeps false alarms at or below α', () => {
  const rand = makeRng(99);
  const experiments = 1000;
  const looks = 10;
  const perLook = 50;
  const alpha = 0.025;
  let alarms = 0;
  for (let e = 0; e < experiments; e++) {
    const c = { n: 0, sum: 0, sumSq: 0 };
    const p = { n: 0, sum: 0, sumSq: 0 };
    let alarm = false;
    for (let k = 0; k < looks; k++) {
      for (let i = 0; i < perLook; i++) {
        for (const arm of [c, p]) {
          const v = 40 + 8 * gaussian(rand);
          arm.n++;
          arm.sum += v;
          arm.sumSq += v * v;
        }
      }
      const d = diffOfMeans(c, p)!;
      if (msprt({ estimate: d.estimate, variance: d.variance, tau: 5, alpha }).pValue <= alpha) alarm = true;
    }
    if (alarm) alarms++;
  }
  assert.ok(alarms / experiments <= alpha, `latency alarms ${alarms / experiments}`);
});

void test('power: a 10-point error-rate regression with 1000 labeled per arm is detected', () => {
  const rand = makeRng(4242);
  const experiments = 300;
  const alpha = 0.05 / 2; // two metrics under Bonferroni
  let atOnce = 0;
  let sequential = 0;
  for (let e = 0; e < experiments; e++) {
    const xc = binomial(rand, 1000, 0.2);
    const xp = binomial(rand, 1000, 0.1);
    const d = diffOfProportions({ x: xc, n: 1000 }, { x: xp, n: 1000 })!;
    if (msprt({ estimate: d.estimate, variance: d.variance, tau: 0.05, alpha }).ci[0] > 0) atOnce++;

    let c = 0;
    let p = 0;
    for (let k = 1; k <= 10; k++) {
      c += binomial(rand, 100, 0.2);
      p += binomial(rand, 100, 0.1);
      const s = diffOfProportions({ x: c, n: 100 * k }, { x: p, n: 100 * k })!;
      if (msprt({ estimate: s.estimate, variance: s.variance, tau: 0.05, alpha }).ci[0] > 0) {
        sequential++;
        break;
      }
    }
  }
  assert.ok(atOnce / experiments >= 0.99, `detected at one look: ${atOnce / experiments}`);
  assert.ok(sequential / experiments >= 0.99, `detected within 10 looks: ${sequential / experiments}`);
});

/**
 * Tables for policies/special, policies/rates and policies/bayes: special functions against closed
 * forms and published values, the exact rate-ratio test against R's `poisson.test` worked example, and
 * the Bayesian posteriors against exact sums and seeded Monte Carlo.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { gaussian, makeRng, poisson } from '../../policies/rng';
import {
  betaQuantile,
  binomialCdf,
  binomialPmf,
  binomialSf,
  gammaQuantile,
  logBeta,
  logGamma,
  normalQuantile,
  regularizedBeta,
  regularizedGammaP,
  regularizedGammaQ,
  standardNormalCdf,
} from '../../policies/special';
import { rateRatioTest, UNBOUNDED } from '../../policies/rates';
import { betaBinomial, gammaPoissonRateRatio } from '../../policies/bayes';

function close(actual: number, expected: number, tol: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: got ${actual}, expected ${expected} (±${tol})`);
}

function relClose(actual: number, expected: number, rel: number, what: string): void {
  close(actual, expected, rel * Math.abs(expected), what);
}

/** Gamma(shape, 1) draw: Marsaglia-Tsang, with the shape < 1 boost. */
function gammaDraw(rng: () => number, shape: number): number {
  if (shape < 1) return gammaDraw(rng, shape + 1) * Math.pow(1 - rng(), 1 / shape);
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    const z = gaussian(rng);
    const v = Math.pow(1 + c * z, 3);
    if (v <= 0) continue;
    const u = 1 - rng();
    if (Math.log(u) < 0.5 * z * z + d - d * v + d * Math.log(v)) return d * v;
  }
}

function betaDraw(rng: () => number, a: number, b: number): number {
  const x = gammaDraw(rng, a);
  return x / (x + gammaDraw(rng, b));
}

/** P(p_B > p_A) for independent Beta posteriors with integer a_B (Evan Miller's closed form). */
function probBBeatsA(aA: number, bA: number, aB: number, bB: number): number {
  let total = 0;
  for (let i = 0; i < aB; i++) {
    total += Math.exp(logBeta(aA + i, bA + bB) - Math.log(bB + i) - logBeta(1 + i, bB) - logBeta(aA, bA));
  }
  return total;
}

void test('log-gamma against exact values', () => {
  const rows: [number, number][] = [
    [1, 0],
    [2, 0],
    [5, Math.log(24)],
    [10, Math.log(362880)],
    [0.5, 0.5 * Math.log(Math.PI)],
    [1.5, Math.log(Math.sqrt(Math.PI) / 2)],
    [-0.5, Math.log(2 * Math.sqrt(Math.PI))], // |Γ(−½)| = 2√π
    [100, 359.1342053695754], // log(99!)
    [1e-8, 18.420680738180209], // ≈ −log(1e-8) − γ·1e-8
  ];
  for (const [x, want] of rows)
    close(logGamma(x), want, 1e-12 * Math.max(1, Math.abs(want)), `logGamma(${x})`);
  assert.ok(Number.isNaN(logGamma(0)) && Number.isNaN(logGamma(-3)), 'poles give NaN');
});

void test('regularized incomplete beta against closed forms and symmetry', () => {
  close(regularizedBeta(0.4, 2, 3), 1 - (0.6 ** 4 + 4 * 0.4 * 0.6 ** 3), 1e-14, 'I_0.4(2,3) = 0.5248');
  for (const x of [1e-6, 0.01, 0.3, 0.5, 0.77, 0.999]) {
    close(regularizedBeta(x, 1, 7), 1 - (1 - x) ** 7, 1e-13, `I_${x}(1,7)`);
    close(regularizedBeta(x, 3.5, 1), x ** 3.5, 1e-13, `I_${x}(3.5,1)`);
    close(regularizedBeta(x, 2.5, 40) + regularizedBeta(1 - x, 40, 2.5), 1, 1e-13, `symmetry at ${x}`);
  }
  close(regularizedBeta(0.5, 1e4, 1e4), 0.5, 1e-10, 'I_½(a, a) = ½ for large a');
  // I_½(½, ½) = 2/π · asin(√½) = ½; I_x(½, ½) = 2/π · asin(√x).
  close(regularizedBeta(0.25, 0.5, 0.5), (2 / Math.PI) * Math.asin(0.5), 1e-13, 'arcsine law');
  assert.equal(regularizedBeta(0, 2, 3), 0);
  assert.equal(regularizedBeta(1, 2, 3), 1);
});

void test('regularized incomplete gamma, chi-square table and the normal distribution', () => {
  for (const x of [0.01, 0.5, 1, 3, 10, 40]) {
    close(regularizedGammaP(1, x), 1 - Math.exp(-x), 1e-14, `P(1, ${x})`);
    // P(3, x) = 1 − e^{−x}(1 + x + x²/2)
    close(regularizedGammaQ(3, x), Math.exp(-x) * (1 + x + (x * x) / 2), 1e-14, `Q(3, ${x})`);
  }
  // Chi-square quantiles (χ²_k = Gamma(k/2, rate ½)), from standard tables.
  close(gammaQuantile(0.95, 0.5, 0.5), 3.841458820694124, 1e-9, 'χ²₁ 0.95');
  close(gammaQuantile(0.95, 5, 0.5), 18.307038053275146, 1e-9, 'χ²₁₀ 0.95');
  close(gammaQuantile(0.01, 5, 0.5), 2.558212160865372, 1e-9, 'χ²₁₀ 0.01');
  for (const [p, shape] of [
    [1e-8, 0.3],
    [0.2, 2],
    [0.999999, 50],
    [0.5, 1e5],
  ] as const) {
    relClose(
      regularizedGammaP(shape, gammaQuantile(p, shape)),
      p,
      1e-9,
      `gamma quantile round trip ${p}, ${shape}`,
    );
  }

  const quantiles: [number, number][] = [
    [0.5, 0],
    [0.8, 0.8416212335729143],
    [0.975, 1.959963984540054],
    [0.995, 2.5758293035489004],
    [0.025, -1.959963984540054],
    [1e-10, -6.361340902404056],
  ];
  for (const [p, z] of quantiles) close(normalQuantile(p), z, 1e-12, `Φ⁻¹(${p})`);
  close(standardNormalCdf(-5), 2.866515718791939e-7, 1e-20, 'Φ(−5)');
  close(standardNormalCdf(1.959963984540054), 0.975, 1e-15, 'Φ(1.96)');
  for (let p = 1e-12; p < 1; p = p < 0.01 ? p * 10 : p + 0.0625) {
    relClose(standardNormalCdf(normalQuantile(p)), p, 1e-12, `Φ(Φ⁻¹(${p}))`);
  }
});

void test('beta quantiles and the binomial distribution', () => {
  for (const p of [1e-9, 0.025, 0.5, 0.975, 0.999]) {
    close(betaQuantile(p, 1, 10), 1 - (1 - p) ** (1 / 10), 1e-13, `Beta(1,10) quantile ${p}`);
    close(betaQuantile(p, 4, 1), p ** (1 / 4), 1e-13, `Beta(4,1) quantile ${p}`);
    for (const [a, b] of [
      [0.5, 0.5],
      [11, 22],
      [3, 3000],
      [2e4, 3e4],
    ] as const) {
      relClose(regularizedBeta(betaQuantile(p, a, b), a, b), p, 1e-9, `Beta(${a},${b}) round trip ${p}`);
    }
  }
  // Clopper-Pearson for 0 of 10: the two-sided 95% upper bound is 1 − 0.025^(1/10).
  close(betaQuantile(0.975, 1, 10), 1 - 0.025 ** 0.1, 1e-13, '0/10 upper bound');

  for (const [n, p] of [
    [10, 0.3],
    [32, 0.2099],
    [200, 0.01],
  ] as const) {
    let cdf = 0;
    for (let k = 0; k <= n; k++) {
      cdf += binomialPmf(k, n, p);
      close(binomialCdf(k, n, p), cdf, 1e-12, `P(X ≤ ${k}), n=${n}`);
      close(binomialSf(k + 1, n, p), 1 - cdf, 1e-12, `P(X ≥ ${k + 1}), n=${n}`);
    }
  }
});

void test("rate ratio: R's poisson.test worked example", () => {
  // R: poisson.test(c(11, 6+8+7), c(800, 1083+1050+878)) prints count1 = 11, expected count1 = 6.7174,
  // p-value = 0.07967, 95 percent confidence interval 0.8584264 4.2772659, rate ratio 1.971488.
  const r = rateRatioTest({
    events: [11, 6 + 8 + 7],
    exposure: [800, 1083 + 1050 + 878],
    twoSided: 'minlike',
  })!;
  close(r.rateRatio!, 1.971488, 1e-6, 'rate ratio');
  close(r.expected, 6.7174, 1e-4, 'expected count1');
  close(r.p, 0.07967, 1e-5, 'p-value (minimum likelihood, as R)');
  close(r.ci[0], 0.8584264, 1e-6, 'lower 95%');
  close(r.ci[1], 4.2772659, 1e-6, 'upper 95%');

  // The default doubles the smaller tail: 2 P(X ≥ 11) at π0 = 800/3811, the test the interval inverts.
  const central = rateRatioTest({ events: [11, 21], exposure: [800, 3011] })!;
  const pi0 = 800 / 3811;
  let upper = 0;
  for (let k = 11; k <= 32; k++) upper += binomialPmf(k, 32, pi0);
  close(central.p, 2 * upper, 1e-12, 'central two-sided p');
  close(central.p, 0.112, 5e-4, 'central two-sided p ≈ 0.112');
  assert.deepEqual(central.ci, r.ci);

  const harm = rateRatioTest({ events: [11, 21], exposure: [800, 3011], sides: 1 })!;
  close(harm.p, upper, 1e-12, 'one-sided harm p = P(X ≥ 11)');
  assert.equal(harm.ci[1], UNBOUNDED);
  assert.ok(harm.ci[0] > r.ci[0] && harm.ci[0] < 1, 'one-sided lower bound is tighter and below 1');
});

void test('rate ratio: the interval inverts the test, and non-inferiority is its one-sided dual', () => {
  const t: [number, number] = [1200, 2500];
  for (let x1 = 0; x1 <= 12; x1++) {
    for (const x2 of [0, 1, 5, 17]) {
      const r = rateRatioTest({ events: [x1, x2], exposure: t })!;
      assert.ok(r.ci[0] <= r.ci[1], `ordered interval at ${x1}/${x2}`);
      for (const r0 of [0.2, 0.5, 1, 1.5, 3, 8]) {
        const atR0 = rateRatioTest({ events: [x1, x2], exposure: t, nullRatio: r0 })!;
        const excluded = r0 < r.ci[0] || r0 > r.ci[1];
        if (Math.abs(atR0.p - 0.05) > 1e-9) {
          assert.equal(excluded, atR0.p < 0.05, `CI excludes ${r0} iff p < α, at ${x1}/${x2}`);
        }
      }
      for (const margin of [0, 0.5, 2]) {
        const ni = rateRatioTest({
          events: [x1, x2],
          exposure: t,
          nonInferiorityMargin: margin,
        })!.nonInferiority!;
        assert.equal(ni.bound, 1 + margin);
        if (Math.abs(ni.p - 0.05) > 1e-9) {
          assert.equal(ni.noninferior, ni.upper < ni.bound, `non-inferior iff upper < 1 + m, at ${x1}/${x2}`);
        }
      }
    }
  }
});

void test('rate ratio: zero counts give finite, documented ends; invalid input gives undefined', () => {
  const none = rateRatioTest({ events: [0, 0], exposure: [10, 10], nonInferiorityMargin: 0.5 })!;
  assert.equal(none.rateRatio, null);
  assert.deepEqual(none.ci, [0, UNBOUNDED]);
  assert.equal(none.p, 1);
  assert.equal(none.nonInferiority!.noninferior, false, 'no data never shows non-inferiority');

  const noCandidate = rateRatioTest({ events: [0, 9], exposure: [100, 100] })!;
  assert.equal(noCandidate.rateRatio, 0);
  assert.equal(noCandidate.ci[0], 0);
  // 0 of 9: π_hi = 1 − 0.025^(1/9), R = π/(1 − π) with equal exposures.
  const piHi = 1 - 0.025 ** (1 / 9);
  close(noCandidate.ci[1], piHi / (1 - piHi), 1e-12, 'upper end with x1 = 0');

  const noProduction = rateRatioTest({ events: [6, 0], exposure: [100, 100] })!;
  assert.equal(noProduction.rateRatio, UNBOUNDED);
  assert.equal(noProduction.ci[1], UNBOUNDED);
  assert.ok(noProduction.ci[0] > 1, 'six events against none: lower end above 1');

  for (const r of [none, noCandidate, noProduction]) {
    assert.deepEqual(JSON.parse(JSON.stringify(r)), r, 'survives JSON unchanged');
  }
  const invalid = [
    rateRatioTest({ events: [-1, 3], exposure: [1, 1] }),
    rateRatioTest({ events: [1.5, 3], exposure: [1, 1] }),
    rateRatioTest({ events: [1, 3], exposure: [0, 1] }),
    rateRatioTest({ events: [1, 3], exposure: [1, Infinity] }),
    rateRatioTest({ events: [1, 3], exposure: [1, 1], alpha: 0 }),
    rateRatioTest({ events: [1, 3], exposure: [1, 1], nonInferiorityMargin: -0.1 }),
  ];
  for (const r of invalid) assert.equal(r, undefined);
});

void test('rate ratio: false alarms stay below α in a seeded A/A simulation', () => {
  const rng = makeRng('rates-aa');
  const runs = 3000;
  let central = 0;
  let harm = 0;
  for (let i = 0; i < runs; i++) {
    const x1 = poisson(rng, 4);
    const x2 = poisson(rng, 12);
    if (rateRatioTest({ events: [x1, x2], exposure: [100, 300] })!.p < 0.05) central++;
    if (rateRatioTest({ events: [x1, x2], exposure: [100, 300], sides: 1 })!.p < 0.05) harm++;
  }
  // The exact conditional test is conservative: at most α plus Monte Carlo error.
  assert.ok(central / runs <= 0.05 + 3 * Math.sqrt((0.05 * 0.95) / runs), `two-sided ${central / runs}`);
  assert.ok(harm / runs <= 0.05 + 3 * Math.sqrt((0.05 * 0.95) / runs), `one-sided ${harm / runs}`);
});

void test('Gamma-Poisson: exact ratio probabilities agree with their quantiles and a seeded Monte Carlo', () => {
  const input = {
    events: [11, 21] as [number, number],
    exposure: [800, 3011] as [number, number],
    margin: 0.5,
  };
  const r = gammaPoissonRateRatio(input)!;
  assert.deepEqual(r.posterior[0], { shape: 11.5, rate: 800, mean: 11.5 / 800 });
  // The probability at the median is ½ and at the interval's ends 0.975 and 0.025.
  const at = (ratio: number): number =>
    gammaPoissonRateRatio({ ...input, margin: ratio - 1 })!.probAboveMargin;
  close(at(r.median), 0.5, 1e-10, 'P(ρ > median)');
  close(at(r.ci[0]), 0.975, 1e-10, 'P(ρ > lower)');
  close(at(r.ci[1]), 0.025, 1e-10, 'P(ρ > upper)');

  const rng = makeRng('gamma-poisson');
  const draws = 100_000;
  let above = 0;
  let harm = 0;
  for (let i = 0; i < draws; i++) {
    const l1 = gammaDraw(rng, 11.5) / 800;
    const l2 = gammaDraw(rng, 21.5) / 3011;
    if (l1 / l2 > 1.5) above++;
    if (l1 > l2) harm++;
  }
  const se = (p: number): number => Math.sqrt((p * (1 - p)) / draws);
  close(r.probAboveMargin, above / draws, 4 * se(r.probAboveMargin), 'P(ρ > 1.5) against Monte Carlo');
  close(r.probHarm, harm / draws, 4 * se(r.probHarm), 'P(ρ > 1) against Monte Carlo');

  // No events at all: the posterior ratio is symmetric about 1 on the log scale with equal exposures.
  const flat = gammaPoissonRateRatio({ events: [0, 0], exposure: [50, 50] })!;
  close(flat.probHarm, 0.5, 1e-12, 'no data, equal exposure');
  close(flat.ci[0] * flat.ci[1], 1, 1e-9, 'log-symmetric interval');
  assert.deepEqual(JSON.parse(JSON.stringify(flat)), flat);
  assert.equal(gammaPoissonRateRatio({ events: [1, 1], exposure: [0, 1] }), undefined);
  assert.equal(
    gammaPoissonRateRatio({ events: [1, 1], exposure: [1, 1], prior: { shape: 0, rate: 1 } }),
    undefined,
  );
});

void test('Beta-Binomial: quadrature against the exact sum and a seeded Monte Carlo', () => {
  const cases: { x: [number, number]; n: [number, number] }[] = [
    { x: [30, 20], n: [200, 200] },
    { x: [5200, 5000], n: [50_000, 50_000] },
    { x: [0, 3], n: [10, 100_000] },
    { x: [7, 0], n: [7, 3] },
  ];
  for (const c of cases) {
    const r = betaBinomial({ successes: c.x, trials: c.n })!;
    const [p1, p2] = r.posterior;
    // P(p₁ > p₂) with candidate as "B" in the closed form.
    const exact = probBBeatsA(p2.a, p2.b, p1.a, p1.b);
    close(r.probHarm, exact, 1e-8, `P(p1 > p2) for ${c.x}/${c.n}`);
    close(p1.mean, (c.x[0] + 1) / (c.n[0] + 2), 1e-15, 'posterior mean');
  }

  const input = {
    successes: [30, 20] as [number, number],
    trials: [200, 200] as [number, number],
    margin: 0.02,
  };
  const r = betaBinomial(input)!;
  const rng = makeRng('beta-binomial');
  const draws = 100_000;
  let above = 0;
  for (let i = 0; i < draws; i++) if (betaDraw(rng, 31, 171) - betaDraw(rng, 21, 181) > 0.02) above++;
  const mc = above / draws;
  close(
    r.probAboveMargin,
    mc,
    4 * Math.sqrt((mc * (1 - mc)) / draws),
    'P(p1 − p2 > 0.02) against Monte Carlo',
  );

  // The credible interval of the difference inverts the same probability.
  const at = (d: number): number => betaBinomial({ ...input, margin: d })!.probAboveMargin;
  close(at(r.difference.ci[0]), 0.975, 1e-7, 'P(diff > lower)');
  close(at(r.difference.ci[1]), 0.025, 1e-7, 'P(diff > upper)');
  close(r.difference.mean, 31 / 202 - 21 / 202, 1e-15, 'mean difference');
  assert.deepEqual(betaBinomial(input), r, 'deterministic');
  assert.deepEqual(JSON.parse(JSON.stringify(r)), r);

  assert.equal(betaBinomial({ successes: [3, 1], trials: [2, 5] }), undefined);
  assert.equal(betaBinomial({ successes: [1, 1], trials: [5, 5], margin: 1 }), undefined);
});

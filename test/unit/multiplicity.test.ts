/**
 * Tables for policies/multiplicity and policies/cmh: Holm and Bonferroni on a textbook example, serial
 * gatekeeping, Holm across cohorts and metrics, the Mantel-Haenszel example of R's `mantelhaen.test`
 * documentation, a published Mantel-Haenszel risk difference, and Simpson's paradox.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeRng } from '../../policies/rng';
import {
  bonferroni,
  familywiseAcrossCohorts,
  hierarchicalGatekeeping,
  holm,
} from '../../policies/multiplicity';
import { chiSquare1Sf, cmhTest, pooledRiskDifference, type Stratum } from '../../policies/cmh';

function close(actual: number | undefined, expected: number, tol: number, what: string): void {
  assert.ok(
    actual !== undefined && Math.abs(actual - expected) <= tol,
    `${what}: got ${actual}, expected ${expected} (±${tol})`,
  );
}

/** A stratum from the four cells: candidate errors a, correct b; production errors c, correct d. */
function table(a: number, b: number, c: number, d: number, name?: string): Stratum {
  return { ...(name ? { name } : {}), candidate: { x: a, n: a + b }, production: { x: c, n: c + d } };
}

void test('Holm and Bonferroni on the four-hypothesis example of the Holm-Bonferroni method', () => {
  // Four nulls at α = 0.05 with raw p-values 0.01, 0.04, 0.03, 0.005: Holm rejects H1 and H4 and stops
  // at 0.03 > 0.05/2. Adjusted: sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, max(0.04·1, 0.06).
  const p = [0.01, 0.04, 0.03, 0.005];
  const h = holm(p, 0.05);
  assert.deepEqual(h.rejected, [true, false, false, true]);
  const want = [0.03, 0.06, 0.06, 0.02];
  h.adjusted.forEach((a, i) => close(a, want[i]!, 1e-12, `holm adjusted H${i + 1}`));

  const b = bonferroni(p, 0.05);
  assert.deepEqual(b.rejected, [true, false, false, true]);
  [0.04, 0.16, 0.12, 0.02].forEach((w, i) => close(b.adjusted[i], w, 1e-12, `bonferroni adjusted H${i + 1}`));
});

void test('Holm: more rejections than Bonferroni, monotone adjusted values capped at 1, odd inputs', () => {
  const cases: { name: string; p: number[]; alpha: number; holm: boolean[]; adjusted: number[] }[] = [
    // Bonferroni: 0.03, 0.039, 0.06 rejects two; Holm: 0.03, 0.03 (max), 0.03 (max) rejects all three
    {
      name: 'step-down gains',
      p: [0.01, 0.013, 0.02],
      alpha: 0.05,
      holm: [true, true, true],
      adjusted: [0.03, 0.03, 0.03],
    },
    {
      name: 'capped at 1',
      p: [0.5, 0.6, 0.9],
      alpha: 0.05,
      holm: [false, false, false],
      adjusted: [1, 1, 1],
    },
    { name: 'ties', p: [0.02, 0.02], alpha: 0.05, holm: [true, true], adjusted: [0.04, 0.04] },
    { name: 'one hypothesis', p: [0.05], alpha: 0.05, holm: [true], adjusted: [0.05] },
    { name: 'empty', p: [], alpha: 0.05, holm: [], adjusted: [] },
    // NaN counts as no evidence, out-of-range values are clamped
    {
      name: 'NaN and range',
      p: [NaN, -0.1, 1.5],
      alpha: 0.05,
      holm: [false, true, false],
      adjusted: [1, 0, 1],
    },
  ];
  for (const c of cases) {
    const r = holm(c.p, c.alpha);
    assert.deepEqual(r.rejected, c.holm, `${c.name} rejected`);
    r.adjusted.forEach((a, i) => close(a, c.adjusted[i]!, 1e-12, `${c.name} adjusted ${i}`));
  }
  assert.deepEqual(bonferroni([0.01, 0.013, 0.02], 0.05).rejected, [true, true, false]);

  // Property: adjusted values follow the order of the raw ones, lie in [0, 1], and Holm rejects at
  // least what Bonferroni rejects.
  const rand = makeRng('holm-monotone');
  for (let run = 0; run < 200; run++) {
    const p = Array.from({ length: 1 + Math.floor(rand() * 8) }, () => rand() * rand());
    const h = holm(p, 0.05);
    const b = bonferroni(p, 0.05);
    for (let i = 0; i < p.length; i++) {
      assert.ok(h.adjusted[i]! >= 0 && h.adjusted[i]! <= 1);
      assert.ok(h.adjusted[i]! >= p[i]!, 'adjusted ≥ raw');
      assert.ok(h.adjusted[i]! <= b.adjusted[i]!, 'Holm adjusted ≤ Bonferroni adjusted');
      assert.equal(h.rejected[i], h.adjusted[i]! <= 0.05);
      for (let j = 0; j < p.length; j++) {
        if (p[i]! <= p[j]!) assert.ok(h.adjusted[i]! <= h.adjusted[j]!, 'monotone');
      }
    }
  }
});

void test('Holm keeps the family-wise false-alarm rate under the global null (seeded)', () => {
  const rand = makeRng('holm-fwer');
  const runs = 4000;
  let alarms = 0;
  for (let run = 0; run < runs; run++) {
    const p = Array.from({ length: 6 }, () => rand());
    if (holm(p, 0.05).rejected.some((r) => r)) alarms++;
  }
  // independent uniforms: P(min ≤ α/6) = 1 − (1 − α/6)^6 ≈ 0.0489
  assert.ok(alarms / runs <= 0.06, `false-alarm rate ${alarms / runs}`);
});

void test('serial gatekeeping: a family is tested only when every hypothesis before it was rejected', () => {
  const alpha = 0.05;
  const cases: {
    name: string;
    families: { name: string; pValues: number[]; alpha?: number }[];
    tested: boolean[];
    rejected: boolean[][];
  }[] = [
    {
      name: 'guardrails all shown non-inferior: success metrics tested at the full α',
      families: [
        { name: 'guardrails', pValues: [0.001, 0.01] },
        { name: 'success', pValues: [0.04] },
      ],
      tested: [true, true],
      rejected: [[true, true], [true]],
    },
    {
      name: 'one guardrail not shown: success metrics not tested, however small their p',
      families: [
        { name: 'guardrails', pValues: [0.001, 0.2] },
        { name: 'success', pValues: [0.0001] },
      ],
      tested: [true, false],
      rejected: [[true, false], [false]],
    },
    {
      name: 'three families, the chain stops at the second',
      families: [
        { name: 'f1', pValues: [0.01] },
        { name: 'f2', pValues: [0.02, 0.03] },
        { name: 'f3', pValues: [0.001] },
      ],
      // f2: Holm 0.02·2 = 0.04, max(0.03, 0.04) = 0.04: both rejected; f3 tested
      tested: [true, true, true],
      rejected: [[true], [true, true], [true]],
    },
    {
      name: 'Holm inside a family stops the gate',
      families: [
        { name: 'f1', pValues: [0.03, 0.04] }, // 0.03·2 = 0.06 > α: nothing rejected
        { name: 'f2', pValues: [0.001] },
      ],
      tested: [true, false],
      rejected: [[false, false], [false]],
    },
    {
      name: 'an empty family passes the gate on',
      families: [
        { name: 'empty', pValues: [] },
        { name: 'f2', pValues: [0.01] },
      ],
      tested: [true, true],
      rejected: [[], [true]],
    },
    {
      name: 'a family with its own, stricter level',
      families: [
        { name: 'f1', pValues: [0.02], alpha: 0.01 },
        { name: 'f2', pValues: [0.001] },
      ],
      tested: [true, false],
      rejected: [[false], [false]],
    },
  ];
  for (const c of cases) {
    const r = hierarchicalGatekeeping(c.families, alpha);
    assert.deepEqual(
      r.map((f) => f.tested),
      c.tested,
      `${c.name}: tested`,
    );
    assert.deepEqual(
      r.map((f) => f.rejected),
      c.rejected,
      `${c.name}: rejected`,
    );
    assert.deepEqual(
      r.map((f) => f.name),
      c.families.map((f) => f.name),
    );
  }

  // Adjusted p-values carry the largest earlier one: rejected exactly when adjusted ≤ α.
  const rand = makeRng('gatekeeping');
  for (let run = 0; run < 300; run++) {
    const families = Array.from({ length: 1 + Math.floor(rand() * 3) }, (_, k) => ({
      name: `f${k}`,
      pValues: Array.from({ length: 1 + Math.floor(rand() * 3) }, () => rand() * rand() * 0.2),
    }));
    const r = hierarchicalGatekeeping(families, alpha);
    let carried = 0;
    for (const f of r) {
      f.adjusted.forEach((a, i) => {
        assert.equal(f.rejected[i], a <= alpha, `run ${run} ${f.name}[${i}]`);
        assert.ok(a >= carried);
      });
      carried = Math.max(carried, ...f.adjusted);
    }
  }
  const [first, second] = hierarchicalGatekeeping(
    [
      { name: 'guardrails', pValues: [0.001, 0.2] },
      { name: 'success', pValues: [0.0001] },
    ],
    alpha,
  );
  close(first!.adjusted[1], 0.2, 1e-12, 'guardrail adjusted');
  close(second!.adjusted[0], 0.2, 1e-12, 'success adjusted carries the guardrail');
  assert.equal(second!.allRejected, false);
});

void test('familywiseAcrossCohorts: one family over every cohort and metric', () => {
  const p = {
    'hw3/eu': { error_rate: 0.004, latency_ms: 0.3 },
    'hw3/nordic': { error_rate: 0.01, latency_ms: 0.02 },
  };
  // m = 4. Holm: 0.004·4 = 0.016, 0.01·3 = 0.03, 0.02·2 = 0.04, max(0.3, 0.04) = 0.3.
  const h = familywiseAcrossCohorts(p, 0.05, 'holm');
  assert.equal(h.m, 4);
  assert.deepEqual(Object.keys(h.results), ['hw3/eu', 'hw3/nordic']);
  const eu = h.results['hw3/eu']!;
  const nordic = h.results['hw3/nordic']!;
  close(eu.error_rate!.adjusted, 0.016, 1e-12, 'eu error_rate');
  close(nordic.error_rate!.adjusted, 0.03, 1e-12, 'nordic error_rate');
  close(nordic.latency_ms!.adjusted, 0.04, 1e-12, 'nordic latency');
  close(eu.latency_ms!.adjusted, 0.3, 1e-12, 'eu latency');
  assert.deepEqual(
    [
      eu.error_rate!.rejected,
      eu.latency_ms!.rejected,
      nordic.error_rate!.rejected,
      nordic.latency_ms!.rejected,
    ],
    [true, false, true, true],
  );
  assert.equal(eu.error_rate!.p, 0.004);

  // Bonferroni: 0.016, 1, 0.04, 0.08: the nordic latency is no longer rejected.
  const b = familywiseAcrossCohorts(p, 0.05, 'bonferroni');
  assert.equal(b.results['hw3/nordic']!.latency_ms!.rejected, false);
  assert.equal(b.results['hw3/nordic']!.error_rate!.rejected, true);
  assert.deepEqual(familywiseAcrossCohorts({ empty: {} }, 0.05, 'holm'), { m: 0, results: { empty: {} } });
});

void test('CMH: the penicillin and rabbits example of R mantelhaen.test (Agresti)', () => {
  // R's documentation example: five penicillin levels; rows Delay None / 1.5h, columns Cured / Died.
  // "Candidate" is immediate injection, the counted event "cured". Published output of
  // mantelhaen.test(Rabbits): Mantel-Haenszel X-squared = 3.9286, df = 1, p-value = 0.04747, common
  // odds ratio 7, 95 percent confidence interval 1.026713 47.725133.
  const rabbits = [
    table(0, 6, 0, 5, '1/8'),
    table(3, 3, 0, 6, '1/4'),
    table(6, 0, 2, 4, '1/2'),
    table(5, 1, 6, 0, '1'),
    table(2, 0, 5, 0, '4'),
  ];
  const r = cmhTest(rabbits);
  close(r.statistic, 3.9286, 5e-4, 'X-squared');
  close(r.pValue, 0.04747, 5e-4, 'p-value');
  close(r.oddsRatio, 7, 5e-4, 'common odds ratio');
  close(r.oddsRatioCi?.[0], 1.026713, 5e-4, 'odds ratio CI low');
  close(r.oddsRatioCi?.[1], 47.725133, 5e-4, 'odds ratio CI high');
  assert.equal(r.continuityCorrection, true);
  assert.equal(r.strata, 5);
  assert.equal(r.delta, 3);
  // Without the correction: (Σ(a − E))² / ΣV = 9 / ΣV, with ΣV = 9 / 5.657…; larger statistic, smaller p
  const plain = cmhTest(rabbits, { continuityCorrection: false });
  assert.ok(plain.statistic > r.statistic && plain.pValue < r.pValue);
  close(plain.statistic * ((3 - 0.5) / 3) ** 2, r.statistic, 1e-12, 'correction shrinks |Δ| by ½');
});

void test('Mantel-Haenszel risk difference: Doll and Hill 1950 as published with the contingencytables package', () => {
  // Smoking and lung cancer, stratified by sex (Fagerland, Lydersen and Laake, "Statistical Analysis of
  // Contingency Tables", chapter 10; the package's tests): MH estimate of the common odds ratio 4.5239;
  // "Wald CI (MH): deltahat = 0.3294 (95% CI 0.2281 to 0.4307)" with the Greenland-Robins variance.
  // Rows smokers / non-smokers, columns cases / controls.
  const doll = [table(647, 622, 2, 27, 'male'), table(41, 28, 19, 32, 'female')];
  const rd = pooledRiskDifference(doll, { variance: 'greenland-robins' });
  assert.ok(rd);
  close(rd.estimate, 0.3294, 5e-4, 'deltahat');
  close(rd.ci[0], 0.2281, 5e-4, 'CI low');
  close(rd.ci[1], 0.4307, 5e-4, 'CI high');
  assert.equal(rd.varianceMethod, 'greenland-robins');
  close(cmhTest(doll).oddsRatio, 4.5239, 5e-4, 'MH odds ratio');

  // Sato's variance: same estimate; checked against the formula worked by hand for one stratum, where
  // both variances reduce to p1q1/n1 + p2q2/n2.
  const sato = pooledRiskDifference(doll);
  assert.ok(sato);
  assert.equal(sato.varianceMethod, 'sato');
  close(sato.estimate, rd.estimate, 1e-12, 'same estimate');
  const one = [table(30, 70, 20, 180)];
  const want = (0.3 * 0.7) / 100 + (0.1 * 0.9) / 200;
  close(pooledRiskDifference(one)!.variance, want, 1e-12, 'sato, one stratum');
  close(
    pooledRiskDifference(one, { variance: 'greenland-robins' })!.variance,
    want,
    1e-12,
    'GR, one stratum',
  );
});

void test("Simpson's paradox: better in every cohort, worse in the naive pool; the MH estimate has the right sign", () => {
  // Day cohort: easy frames, 1% vs 2% errors, but the candidate got 10% of its traffic.
  // Night cohort: hard frames, 20% vs 25%, and the candidate got 90%.
  const strata = [table(10, 990, 180, 8820, 'day'), table(1800, 7200, 250, 750, 'night')];
  for (const s of strata) assert.ok(s.candidate.x / s.candidate.n < s.production.x / s.production.n);
  const rd = pooledRiskDifference(strata);
  assert.ok(rd);
  // naive: 1810/10000 − 430/10000 = +0.138, the candidate looks far worse
  close(rd.crude, 0.138, 1e-12, 'crude difference');
  // weights 1000·9000/10000 = 900 in both strata: (−0.01 − 0.05)/2 = −0.03
  close(rd.estimate, -0.03, 1e-12, 'MH common difference');
  assert.ok(rd.ci[1] < 0, `CI ${rd.ci} lies below 0`);
  assert.ok(rd.pValue < 0.05);
  assert.deepEqual(
    rd.strata.map((s) => s.name),
    ['day', 'night'],
  );
  const cmh = cmhTest(strata);
  assert.ok(cmh.delta < 0, 'fewer candidate errors than expected under H0');
  assert.ok(cmh.oddsRatio! < 1 && cmh.oddsRatioCi![1] < 1);
  assert.ok(cmh.pValue < 0.05);
});

void test('CMH edge cases: empty or degenerate strata carry no evidence and no NaN', () => {
  const none = cmhTest([]);
  assert.deepEqual(
    { statistic: none.statistic, pValue: none.pValue, or: none.oddsRatio, strata: none.strata },
    { statistic: 0, pValue: 1, or: undefined, strata: 0 },
  );
  const bad: Stratum[] = [
    { candidate: { x: 0, n: 0 }, production: { x: 3, n: 10 } },
    { candidate: { x: 5, n: 4 }, production: { x: 1, n: 10 } },
    { candidate: { x: NaN, n: 10 }, production: { x: 1, n: 10 } },
  ];
  assert.equal(cmhTest(bad).strata, 0);
  assert.equal(pooledRiskDifference(bad), undefined);
  // no errors anywhere: nothing to estimate a variance from
  assert.equal(pooledRiskDifference([table(0, 100, 0, 100)]), undefined);
  const allErrors = cmhTest([table(0, 100, 0, 100)]);
  assert.equal(allErrors.pValue, 1);
  assert.equal(allErrors.oddsRatio, undefined);
  for (const v of [chiSquare1Sf(0), chiSquare1Sf(-1), chiSquare1Sf(NaN)]) assert.equal(v, 1);
  close(chiSquare1Sf(3.841459), 0.05, 1e-7, 'χ²₁ 95% point');
  close(chiSquare1Sf(6.634897), 0.01, 1e-7, 'χ²₁ 99% point');
});

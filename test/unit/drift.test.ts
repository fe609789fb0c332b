/**
 * Tables for policies/drift (PSI, KS with its p-value, Jensen-Shannon, quantile bins) against values
 * worked out by hand and known identities, for the judge's verdicts and reason lines, and for the drift
 * section of the policy schema.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { gaussian, makeRng } from '../../policies/rng';
import {
  binCounts,
  featureDrift,
  jsDivergence,
  judgeDrift,
  kolmogorovQ,
  ksBinned,
  ksPValue,
  ksSamples,
  psi,
  quantileEdges,
  type FeatureDriftStats,
} from '../../policies/drift';
import { DriftPolicy } from '../../policies/drift-schema';
import { Policy, formatIssues } from '../../policies/schema';
import { loadPolicy } from '../support';

function close(actual: number, expected: number, tol: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: got ${actual}, expected ${expected} (±${tol})`);
}

describe('statistics of two histograms', () => {
  const cases: { name: string; ref: number[]; cur: number[]; psi: number; js: number; ks: number }[] = [
    // p = (.5, .5), q = (.25, .75): PSI = -.25 ln .5 + .25 ln 1.5 = .25 ln 3; M = (.375, .625).
    {
      name: 'half/half against quarter/three quarters',
      ref: [50, 50],
      cur: [25, 75],
      psi: 0.25 * Math.log(3),
      js:
        0.5 * (0.5 * Math.log2(0.5 / 0.375) + 0.5 * Math.log2(0.5 / 0.625)) +
        0.5 * (0.25 * Math.log2(0.25 / 0.375) + 0.75 * Math.log2(0.75 / 0.625)),
      ks: 0.25,
    },
    { name: 'same shares, other sizes', ref: [10, 20, 30, 40], cur: [1, 2, 3, 4], psi: 0, js: 0, ks: 0 },
    // Disjoint support: JS is its bound, 1 bit; KS is 1; PSI uses the floor 1e-4 for the empty bins.
    {
      name: 'disjoint',
      ref: [10, 0],
      cur: [0, 10],
      psi: 2 * (1 - 1e-4) * Math.log(1 / 1e-4),
      js: 1,
      ks: 1,
    },
    // Three bins: p = (.2, .3, .5), q = (.3, .3, .4); cumulative .2/.3, .5/.6, 1/1.
    {
      name: 'three bins',
      ref: [20, 30, 50],
      cur: [30, 30, 40],
      psi: 0.1 * Math.log(1.5) + 0 + -0.1 * Math.log(0.8),
      js: (() => {
        const p = [0.2, 0.3, 0.5];
        const q = [0.3, 0.3, 0.4];
        let s = 0;
        for (let i = 0; i < 3; i++) {
          const m = (p[i]! + q[i]!) / 2;
          s += 0.5 * p[i]! * Math.log2(p[i]! / m) + 0.5 * q[i]! * Math.log2(q[i]! / m);
        }
        return s;
      })(),
      ks: 0.1,
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      close(psi(c.ref, c.cur), c.psi, 1e-12, 'psi');
      close(jsDivergence(c.ref, c.cur), c.js, 1e-12, 'js');
      close(ksBinned(c.ref, c.cur), c.ks, 1e-12, 'ks');
    });
  }

  test('identities: a histogram against itself is 0; PSI, JS and KS are symmetric; JS ≤ 1 bit', () => {
    const rng = makeRng('drift-identities');
    for (let t = 0; t < 200; t++) {
      const bins = 2 + Math.floor(rng() * 12);
      const a = Array.from({ length: bins }, () => 1 + Math.floor(rng() * 100));
      const b = Array.from({ length: bins }, () => 1 + Math.floor(rng() * 100));
      assert.equal(psi(a, a), 0);
      assert.equal(jsDivergence(a, a), 0);
      assert.equal(ksBinned(a, a), 0);
      close(psi(a, b), psi(b, a), 1e-12, 'psi symmetric');
      close(jsDivergence(a, b), jsDivergence(b, a), 1e-12, 'js symmetric');
      close(ksBinned(a, b), ksBinned(b, a), 1e-12, 'ks symmetric');
      const js = jsDivergence(a, b);
      assert.ok(js >= 0 && js <= 1, `js ${js}`);
      assert.ok(psi(a, b) >= 0);
      // JS in nats is at most PSI / 4 (JS ≤ J / 4 for the symmetric Kullback-Leibler J = PSI).
      assert.ok(js * Math.LN2 <= psi(a, b) / 4 + 1e-12, `js ${js} psi ${psi(a, b)}`);
    }
  });

  test('empty histograms give 0, mismatched or negative bins are refused', () => {
    assert.equal(psi([0, 0], [1, 2]), 0);
    assert.equal(jsDivergence([1, 2], [0, 0]), 0);
    assert.throws(() => psi([1, 2], [1, 2, 3]), /same bins \(reference 2, current 3\)/);
    assert.throws(() => ksBinned([1, -1], [1, 2]), /≥ 0 \(got -1\)/);
  });
});

describe('Kolmogorov-Smirnov', () => {
  // Critical values of the Kolmogorov distribution (the asymptotic two-sample table): P(K > λ).
  const table: [number, number][] = [
    [1.0727, 0.2],
    [1.2238, 0.1],
    [1.3581, 0.05],
    [1.4802, 0.025],
    [1.6276, 0.01],
    [1.9495, 0.001],
  ];
  for (const [lambda, p] of table) {
    test(`Q(${lambda}) = ${p}`, () => close(kolmogorovQ(lambda), p, 2e-4, `Q(${lambda})`));
  }

  test('both series agree where they meet, and Q falls from 1 to 0', () => {
    for (const lambda of [0.8, 1.0, 1.17, 1.19, 1.3]) {
      const c = (Math.PI * Math.PI) / (8 * lambda * lambda);
      let small = 0;
      for (let k = 1; k <= 20; k++) small += Math.exp(-(2 * k - 1) * (2 * k - 1) * c);
      let large = 0;
      for (let k = 1; k <= 50; k++) large += (k % 2 ? 2 : -2) * Math.exp(-2 * k * k * lambda * lambda);
      close(1 - (Math.sqrt(2 * Math.PI) / lambda) * small, large, 1e-10, `series at ${lambda}`);
      close(kolmogorovQ(lambda), large, 1e-10, `Q(${lambda})`);
    }
    assert.equal(kolmogorovQ(0), 1);
    close(kolmogorovQ(0.2), 1, 1e-12, 'Q(0.2)');
    assert.ok(kolmogorovQ(4) < 1e-12);
  });

  test('p-value of D with n = m = 200 (sqrt(nm/(n+m)) = 10): D = 0.13581 is the 5% point', () => {
    close(ksPValue(0.13581, 200, 200), 0.05, 2e-4, 'p');
    assert.equal(ksPValue(0, 200, 200), 1);
  });

  test('raw samples: identical samples give 0, disjoint give 1, a hand-counted case', () => {
    assert.equal(ksSamples([3, 1, 2, 2], [2, 1, 3, 2]), 0);
    assert.equal(ksSamples([1, 2, 3], [4, 5, 6]), 1);
    // F_a(2) = 2/4, F_b(2) = 0.
    assert.equal(ksSamples([1, 2, 3, 4], [3, 4, 5, 6]), 0.5);
    // F_a(1) = 1/2, F_b(1) = 1/3 ... largest gap at x = 2: 1 vs 1/3.
    close(ksSamples([1, 2], [1, 3, 4]), 2 / 3, 1e-12, 'ks');
  });

  test('the binned statistic never exceeds the statistic of the raw samples', () => {
    const rng = makeRng('ks-binned');
    for (let t = 0; t < 20; t++) {
      const a = Array.from({ length: 500 }, () => gaussian(rng));
      const shift = rng();
      const b = Array.from({ length: 400 }, () => shift + gaussian(rng));
      const edges = quantileEdges(a, 10);
      const dBinned = ksBinned(binCounts(a, edges), binCounts(b, edges));
      assert.ok(dBinned <= ksSamples(a, b) + 1e-12, `${dBinned} > ${ksSamples(a, b)}`);
    }
  });
});

describe('quantile bins', () => {
  test('quartiles of 1..100 (type-7) and 25 values in each bin', () => {
    const values = Array.from({ length: 100 }, (_, i) => i + 1);
    assert.deepEqual(quantileEdges(values, 4), [25.75, 50.5, 75.25]);
    assert.deepEqual(binCounts(values, quantileEdges(values, 4)), [25, 25, 25, 25]);
  });
  test('a value on an edge falls in the bin below it; ties collapse edges', () => {
    assert.deepEqual(binCounts([1, 2, 3], [2]), [2, 1]);
    assert.deepEqual(quantileEdges([5, 5, 5, 5, 9], 4), [5]);
    assert.throws(() => quantileEdges([], 4), /at least one value/);
  });
  test('a seeded normal sample against its own reference bins: PSI near 0, far from a shifted one', () => {
    const rng = makeRng('bins');
    const ref = Array.from({ length: 10_000 }, () => gaussian(rng));
    const edges = quantileEdges(ref, 10);
    const refBins = { feature: 'x', edges, counts: binCounts(ref, edges) };
    const same = featureDrift(
      'c',
      refBins,
      binCounts(
        Array.from({ length: 5000 }, () => gaussian(rng)),
        edges,
      ),
    );
    const wider = featureDrift(
      'c',
      refBins,
      binCounts(
        Array.from({ length: 5000 }, () => 2 * gaussian(rng)),
        edges,
      ),
    );
    assert.ok(same.psi < 0.02, `same ${same.psi}`);
    assert.ok(same.ksPValue > 0.01, `same p ${same.ksPValue}`);
    assert.ok(wider.psi > 0.25, `wider ${wider.psi}`);
    assert.equal(same.n, 10_000);
    assert.equal(same.m, 5000);
  });
});

describe('judgeDrift', () => {
  const policy = DriftPolicy.parse({});
  const base: FeatureDriftStats = {
    cohort: 'hw3/eu',
    feature: 'camera0',
    n: 10_000,
    m: 5000,
    psi: 0.01,
    ks: 0.02,
    ksPValue: 0.5,
    js: 0.002,
  };
  const cases: { name: string; s: Partial<FeatureDriftStats>; verdict: string; reason: RegExp }[] = [
    {
      name: 'all small',
      s: {},
      verdict: 'ok',
      reason: /camera0 of cohort hw3\/eu: psi 0\.01 < warn threshold 0\.1/,
    },
    { name: 'psi at warn', s: { psi: 0.1 }, verdict: 'warn', reason: /psi 0\.1 ≥ warn threshold 0\.1$/ },
    {
      name: 'psi above drift',
      s: { psi: 0.3 },
      verdict: 'drift',
      reason: /psi 0\.3 ≥ drift threshold 0\.25$/,
    },
    {
      name: 'ks at drift and significant',
      s: { ks: 0.25, ksPValue: 1e-9 },
      verdict: 'drift',
      reason: /ks 0\.25 \(p=1\.00e-9, alpha 0\.01\) ≥ drift threshold 0\.2$/,
    },
    {
      name: 'ks large but not significant',
      s: { ks: 0.25, ksPValue: 0.2 },
      verdict: 'ok',
      reason: /psi 0\.01 </,
    },
    { name: 'js at warn', s: { js: 0.03 }, verdict: 'warn', reason: /js 0\.03 bits ≥ warn threshold 0\.02$/ },
    {
      name: 'the highest level wins: psi warn, js drift',
      s: { psi: 0.12, js: 0.06 },
      verdict: 'drift',
      reason: /js 0\.06 bits ≥ drift threshold 0\.05$/,
    },
    {
      name: 'equal levels: the first statistic names it',
      s: { psi: 0.3, js: 0.06 },
      verdict: 'drift',
      reason: /psi 0\.3 ≥ drift/,
    },
    {
      name: 'too few frames',
      s: { m: 50 },
      verdict: 'warn',
      reason: /only 50 current frames, fewer than minSamples 200/,
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const [cohort] = judgeDrift(policy, [{ ...base, ...c.s }]);
      assert.equal(cohort!.verdict, c.verdict);
      assert.match(cohort!.features[0]!.reason, c.reason);
    });
  }

  test('a cohort takes its worst feature; cohorts keep their order', () => {
    const out = judgeDrift(policy, [
      { ...base, cohort: 'b', feature: 'camera0' },
      { ...base, cohort: 'a', feature: 'camera0', psi: 0.15 },
      { ...base, cohort: 'a', feature: 'radar0', psi: 0.5 },
      { ...base, cohort: 'a', feature: 'radar1', psi: 0.6 },
      { ...base, cohort: 'b', feature: 'radar0' },
    ]);
    assert.deepEqual(
      out.map((c) => [c.cohort, c.verdict, c.features.map((f) => f.verdict)]),
      [
        ['b', 'ok', ['ok', 'ok']],
        ['a', 'drift', ['warn', 'drift', 'drift']],
      ],
    );
    assert.match(out[1]!.reason, /radar0 of cohort a: psi 0\.5/);
  });
});

describe('the drift section of a policy', () => {
  test('defaults', () => {
    const p = DriftPolicy.parse({});
    assert.equal(p.action, 'alert');
    assert.deepEqual(p.psi, { warn: 0.1, drift: 0.25 });
    assert.deepEqual(p.ks, { warn: 0.1, drift: 0.2, alpha: 0.01 });
    assert.equal(p.sampleSize, 5000);
  });
  const bad: { name: string; drift: unknown; line: RegExp }[] = [
    {
      name: 'drift not above warn',
      drift: { psi: { warn: 0.3, drift: 0.2 } },
      line: /^policy\.drift\.psi\.drift: the drift threshold must be above the warn threshold 0\.3.* \(got 0\.2\)$/m,
    },
    {
      name: 'unknown action',
      drift: { action: 'rollback' },
      line: /^policy\.drift\.action: "alert" \(notify only\) or "hold".* \(got "rollback"\)$/m,
    },
    {
      name: 'unknown feature',
      drift: { features: ['lidar0'] },
      line: /^policy\.drift\.features\.0: one of camera0.* \(got "lidar0"\)$/m,
    },
    {
      name: 'tiny sample',
      drift: { sampleSize: 10 },
      line: /^policy\.drift\.sampleSize: at least 100 frames.* \(got 10\)$/m,
    },
    { name: 'unknown field', drift: { tresholds: 1 }, line: /^policy\.drift: .*tresholds/m },
  ];
  for (const b of bad) {
    test(`refused: ${b.name}`, () => {
      const raw = { ...loadPolicy('examples/demo-policy.yaml'), drift: b.drift };
      const r = Policy.safeParse(raw);
      assert.ok(!r.success);
      assert.match(formatIssues(r.error, raw, 'policy'), b.line);
    });
  }
  test('a policy without a drift section parses as before (no drift key added)', () => {
    const p = Policy.parse(loadPolicy('examples/demo-policy.yaml'));
    assert.equal('drift' in p, false);
  });
});

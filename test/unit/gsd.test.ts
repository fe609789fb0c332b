/**
 * Tables for policies/gsd: group-sequential boundaries against published values (Jennison & Turnbull,
 * ldbounds, gsDesign) to three decimals, alpha spending at planned and unplanned looks, power against
 * published inflation factors, and seeded Monte Carlo checks of the rejection rate, power, expected
 * information and a futility rule; up to MAX_LOOKS looks against a finer grid, and the looks a rollout
 * produces: past full information, repeated information, a tiny first look.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { gaussian, makeRng } from '../../policies/rng';
import {
  MAX_LOOKS,
  MIN_INFO_STEP,
  UNBOUNDED,
  boundaries,
  crossingProbabilities,
  nextBoundary,
  normalCdf,
  normalQuantile,
  normalTail,
  normalTailQuantile,
  spend,
  type Design,
  type Sides,
  type SpendingDesign,
} from '../../policies/gsd';

function close(actual: number, expected: number, tol: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: got ${actual}, expected ${expected} (±${tol})`);
}

function closeAll(actual: number[], expected: number[], tol: number, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  expected.forEach((e, i) => close(actual[i]!, e, tol, `${what}[${i}]`));
}

/** Rejection rate, power and mean stopping information of a design by simulating the score process. */
function simulate(
  seed: string,
  runs: number,
  bounds: number[],
  info: number[],
  drift: number,
  sides: Sides,
  futility?: number[],
): { upper: number; lower: number; meanInfo: number } {
  const rng = makeRng(seed);
  let upper = 0;
  let lower = 0;
  let infoSum = 0;
  for (let r = 0; r < runs; r++) {
    let s = 0;
    let prev = 0;
    let stopAt = info[info.length - 1]!;
    for (let k = 0; k < info.length; k++) {
      const t = info[k]!;
      const dt = t - prev;
      s += drift * dt + Math.sqrt(dt) * gaussian(rng);
      prev = t;
      const z = s / Math.sqrt(t);
      const b = bounds[k]!;
      if (z >= b) {
        upper++;
        stopAt = t;
        break;
      }
      if (sides === 2 && z <= -b) {
        lower++;
        stopAt = t;
        break;
      }
      if (futility && k < info.length - 1 && z <= futility[k]!) {
        lower++;
        stopAt = t;
        break;
      }
    }
    infoSum += stopAt;
  }
  return { upper: upper / runs, lower: lower / runs, meanInfo: infoSum / runs };
}

test('normal distribution: tails, cdf and quantiles to near double precision', () => {
  const rows: [number, number][] = [
    [0, 0.5],
    [0.5, 0.3085375387259869],
    [1.96, 0.024997895148220435],
    [3, 0.0013498980316300946],
    [5, 2.866515718791939e-7],
    [10, 7.619853024160527e-24],
  ];
  for (const [x, tail] of rows) {
    close(normalTail(x) / tail, 1, 1e-13, `Φ̄(${x}) relative`);
    close(normalCdf(-x) / tail, 1, 1e-13, `Φ(${-x}) relative`);
  }
  close(normalQuantile(0.975), 1.959963984540054, 1e-12, 'Φ⁻¹(0.975)');
  close(normalQuantile(0.5), 0, 1e-14, 'Φ⁻¹(0.5)');
  close(normalQuantile(0.1), -1.2815515655446004, 1e-12, 'Φ⁻¹(0.1)');
  close(normalTailQuantile(1e-10), 6.361340902404056, 1e-10, 'Φ̄⁻¹(1e-10)');
  for (const q of [1e-300, 1e-20, 1e-9, 0.00625, 0.02425, 0.3, 0.5, 0.8, 0.999]) {
    close(normalTail(normalTailQuantile(q)) / q, 1, 1e-12, `Φ̄(Φ̄⁻¹(${q}))`);
  }
  assert.equal(normalTailQuantile(0), Infinity);
  assert.equal(normalTailQuantile(1), -Infinity);
});

test('Pocock constants, two-sided α = 0.05 (Jennison & Turnbull Table 2.1)', () => {
  const published: [number, number][] = [
    [2, 2.178],
    [3, 2.289],
    [4, 2.361],
    [5, 2.413],
  ];
  for (const [K, c] of published) {
    const d = boundaries({ design: 'pocock', looks: K, alpha: 0.05, sides: 2 });
    d.boundaries.forEach((b, k) => close(b, c, 6e-4, `Pocock K=${K} look ${k + 1}`));
  }
});

test("O'Brien-Fleming constants, two-sided α = 0.05 (Jennison & Turnbull Table 2.3)", () => {
  const published: [number, number][] = [
    [2, 1.977],
    [3, 2.004],
    [4, 2.024],
    [5, 2.04],
  ];
  for (const [K, C] of published) {
    const d = boundaries({ design: 'obf', looks: K, alpha: 0.05, sides: 2 });
    close(d.boundaries[K - 1]!, C, 6e-4, `OBF K=${K} final`);
    d.boundaries.forEach((b, k) => close(b, d.boundaries[K - 1]! * Math.sqrt(K / (k + 1)), 1e-12, 'C√(K/k)'));
  }
});

test('Lan-DeMets spending, two-sided α = 0.05, K = 5 equally spaced (ldbounds, gsDesign)', () => {
  const rows: [SpendingDesign, number[]][] = [
    ['ld-obf', [4.877, 3.357, 2.68, 2.29, 2.031]],
    ['ld-pocock', [2.438, 2.427, 2.41, 2.397, 2.386]],
  ];
  for (const [design, published] of rows) {
    const d = boundaries({ design, looks: 5, alpha: 0.05, sides: 2 });
    closeAll(d.boundaries, published, 6e-4, design);
    // Each look spends exactly α(t_k) − α(t_{k−1}).
    d.info.forEach((t, k) => close(d.cumulativeAlpha[k]!, spend(design, 0.05, t, 2), 1e-9, `${design} α(t)`));
  }
  // gsDesign's one-sided design at α = 0.025 has the same upper boundaries to three decimals: the
  // lower side of the symmetric two-sided design removes almost no upper-crossing paths.
  const oneSided = boundaries({ design: 'ld-obf', looks: 5, alpha: 0.025, sides: 1 });
  closeAll(oneSided.boundaries, [4.877, 3.357, 2.68, 2.29, 2.031], 6e-4, 'ld-obf one-sided α=0.025');
});

test('cumulative α ends at α for every design, number of looks and side', () => {
  for (const design of ['pocock', 'obf', 'ld-obf', 'ld-pocock'] as const) {
    for (const sides of [1, 2] as const) {
      for (const looks of [1, 3, 8]) {
        for (const alpha of [0.01, 0.05, 0.1]) {
          const d = boundaries({ design, looks, alpha, sides });
          const cum = d.cumulativeAlpha;
          close(cum[cum.length - 1]!, alpha, 1e-4, `${design} sides=${sides} K=${looks} α=${alpha}`);
          for (let k = 1; k < cum.length; k++) assert.ok(cum[k]! >= cum[k - 1]!, 'cumulative α grows');
          assert.ok(d.boundaries.every((b) => Number.isFinite(b) && b > 0));
        }
      }
    }
  }
});

test('one look is the fixed-sample test', () => {
  for (const design of ['pocock', 'obf', 'ld-obf', 'ld-pocock'] as const) {
    close(boundaries({ design, looks: 1, alpha: 0.05, sides: 2 }).boundaries[0]!, 1.959964, 1e-5, design);
    close(boundaries({ design, looks: 1, alpha: 0.05, sides: 1 }).boundaries[0]!, 1.644854, 1e-5, design);
  }
});

test('spending functions: conventions of gsDesign sfLDOF/sfLDPocock and ldbounds', () => {
  // One-sided α: ld-obf α(t) = 2 − 2Φ(Φ⁻¹(1 − α/2)/√t); ld-pocock α(t) = α ln(1 + (e − 1)t).
  close(spend('ld-obf', 0.025, 0.5), 2 * normalTail(normalQuantile(1 - 0.0125) / Math.SQRT1_2), 1e-15, 'obf');
  close(spend('ld-obf', 0.025, 0.5), 0.001525, 1e-6, 'obf t=0.5');
  close(spend('ld-pocock', 0.025, 0.5), 0.025 * Math.log(1 + (Math.E - 1) / 2), 1e-15, 'pocock t=0.5');
  // Two-sided: α/2 per side with the one-sided function, both sides added.
  close(spend('ld-obf', 0.05, 0.2, 2), 2 * spend('ld-obf', 0.025, 0.2), 1e-18, 'two-sided');
  for (const design of ['ld-obf', 'ld-pocock'] as const) {
    assert.equal(spend(design, 0.05, 0), 0);
    close(spend(design, 0.05, 1), 0.05, 1e-15, `${design} α(1)`);
    close(spend(design, 0.05, 1.7, 2), 0.05, 1e-15, `${design} capped beyond t = 1`);
    let last = 0;
    for (let t = 0.05; t <= 1; t += 0.05) {
      const a = spend(design, 0.05, t);
      assert.ok(a > last, `${design} increasing at ${t}`);
      last = a;
    }
  }
  assert.throws(() => spend('pocock' as unknown as 'ld-obf', 0.05, 0.5), RangeError);
});

test('unplanned looks: nextBoundary spends α(tNow) − α(tPrev) given the boundaries used', () => {
  const spec = { design: 'ld-obf', alpha: 0.05, sides: 2 } as const;
  const info = [0.3, 0.55, 1.0];
  const past: number[] = [];
  const bounds: number[] = [];
  let cumulative = 0;
  for (const t of info) {
    const next = nextBoundary(spec, past, bounds, t);
    close(
      next.spent,
      spend('ld-obf', 0.05, t, 2) - spend('ld-obf', 0.05, past.at(-1) ?? 0, 2),
      1e-15,
      'spent',
    );
    cumulative = next.cumulativeAlpha;
    close(cumulative, spend('ld-obf', 0.05, t, 2), 1e-9, `cumulative at t=${t}`);
    past.push(t);
    bounds.push(next.boundary);
  }
  close(cumulative, 0.05, 1e-9, 'final cumulative α');
  // The same schedule planned in advance gives the same boundaries.
  const planned = boundaries({ design: 'ld-obf', looks: 3, alpha: 0.05, sides: 2, info });
  closeAll(bounds, planned.boundaries, 1e-9, 'planned vs unplanned');

  // A look added between planned ones, after boundaries computed for another schedule: the new look
  // spends its own increment, and the last look still brings the total to α.
  const first = boundaries({ design: 'ld-pocock', looks: 4, alpha: 0.05, sides: 1 }).boundaries;
  const spec1 = { design: 'ld-pocock', alpha: 0.05, sides: 1 } as const;
  const extra = nextBoundary(spec1, [0.25, 0.5], [first[0]!, first[1]!], 0.6);
  const last = nextBoundary(spec1, [0.25, 0.5, 0.6], [first[0]!, first[1]!, extra.boundary], 1);
  close(last.cumulativeAlpha, 0.05, 1e-9, 'extra look');

  // A look past full information has nothing left to spend: a finite stand-in, never Infinity.
  const over = nextBoundary(spec, info, bounds, 1.2);
  assert.equal(over.boundary, UNBOUNDED);
  assert.equal(over.spent, 0);
  close(over.cumulativeAlpha, 0.05, 1e-9, 'overrun');
  assert.doesNotThrow(() => JSON.stringify(over));
  assert.ok(Number.isFinite(over.boundary));
  // Overrunning the last planned look spends the remainder there.
  const late = nextBoundary(spec, [0.3, 0.55], [bounds[0]!, bounds[1]!], 1.15);
  close(late.cumulativeAlpha, 0.05, 1e-9, 'late final look');
});

test('power matches the inflation factors of Jennison & Turnbull Tables 2.2 and 2.4', () => {
  // Maximum information R × fixed-sample information gives the stated power at the design effect:
  // drift (z_{α/2} + z_β)·√R on the Z scale at t = 1.
  const zA = normalQuantile(0.975);
  const rows: [Design, number, number, number][] = [
    ['pocock', 2, 0.8, 1.11],
    ['pocock', 5, 0.8, 1.229],
    ['pocock', 5, 0.9, 1.207],
    ['obf', 2, 0.8, 1.008],
    ['obf', 5, 0.8, 1.028],
    ['obf', 5, 0.9, 1.026],
  ];
  for (const [design, K, power, R] of rows) {
    const d = boundaries({ design, looks: K, alpha: 0.05, sides: 2 });
    const drift = (zA + normalQuantile(power)) * Math.sqrt(R);
    const p = crossingProbabilities(d.boundaries, d.info, drift, { sides: 2 });
    close(p.upperTotal + p.lowerTotal, power, 1e-3, `${design} K=${K} power ${power}`);
  }
  // One look: the fixed-sample power.
  const one = crossingProbabilities([1.959964], [1], 1.959964 + 0.841621);
  close(one.upperTotal, 0.8, 1e-6, 'fixed-sample power');
  // Under H0 the crossing probabilities are the design's α, per look.
  const d = boundaries({ design: 'ld-obf', looks: 5, alpha: 0.05, sides: 2 });
  const h0 = crossingProbabilities(d.boundaries, d.info, 0, { sides: 2 });
  h0.upper.forEach((u, k) => {
    const inc = d.cumulativeAlpha[k]! - (k > 0 ? d.cumulativeAlpha[k - 1]! : 0);
    close(u + h0.lower[k]!, inc, 1e-12, `look ${k + 1}`);
    close(u, h0.lower[k]!, 1e-12, 'symmetric');
  });
});

test('Monte Carlo: ld-obf K = 5 rejects at rate α under H0, and power and E[information] agree', () => {
  const d = boundaries({ design: 'ld-obf', looks: 5, alpha: 0.05, sides: 2 });
  const runs = 20_000;
  const h0 = simulate('gsd-h0', runs, d.boundaries, d.info, 0, 2);
  close(h0.upper + h0.lower, 0.05, 0.006, 'rejection rate under H0');

  const drift = 2.8; // about 80% power
  const exact = crossingProbabilities(d.boundaries, d.info, drift, { sides: 2 });
  const h1 = simulate('gsd-h1', runs, d.boundaries, d.info, drift, 2);
  close(h1.upper, exact.upperTotal, 0.012, 'power');
  close(h1.meanInfo, exact.expectedInfo, 0.008, 'expected information at stopping');
  assert.ok(exact.expectedInfo < 1 && exact.expectedInfo > 0.6, 'stopping early saves information');
});

test('non-binding futility: lowers α and power by the computed amounts', () => {
  const d = boundaries({ design: 'ld-obf', looks: 4, alpha: 0.025, sides: 1 });
  const futility = [0, 0, 0]; // stop at an interim look when the effect is not even in the right direction
  const drift = normalQuantile(0.975) + normalQuantile(0.9); // 90% power for a fixed sample of this size
  const without0 = crossingProbabilities(d.boundaries, d.info, 0);
  const with0 = crossingProbabilities(d.boundaries, d.info, 0, { futility });
  const without1 = crossingProbabilities(d.boundaries, d.info, drift);
  const with1 = crossingProbabilities(d.boundaries, d.info, drift, { futility });
  close(without0.upperTotal, 0.025, 1e-9, 'α without futility');
  assert.ok(with0.upperTotal < without0.upperTotal, 'futility only lowers α');
  assert.ok(with1.upperTotal < without1.upperTotal, 'and costs power');
  assert.ok(with0.expectedInfo < 0.75, 'under H0 most tests stop early');
  // The futility stops and rejections together never exceed 1.
  assert.ok(with0.upperTotal + with0.lowerTotal <= 1 + 1e-12);
  const mc0 = simulate('gsd-fut0', 20_000, d.boundaries, d.info, 0, 1, futility);
  close(mc0.upper, with0.upperTotal, 0.004, 'MC α with futility');
  close(mc0.lower, with0.lowerTotal, 0.012, 'MC futility stops under H0');
  const mc1 = simulate('gsd-fut1', 20_000, d.boundaries, d.info, drift, 1, futility);
  close(mc1.upper, with1.upperTotal, 0.01, 'MC power with futility');
  close(mc1.meanInfo, with1.expectedInfo, 0.008, 'MC E[information] with futility');
  assert.throws(() => crossingProbabilities(d.boundaries, d.info, 0, { sides: 2, futility }), RangeError);
});

test('unequally spaced planned looks', () => {
  const info = [0.2, 0.5, 0.9, 1];
  for (const design of ['pocock', 'obf', 'ld-obf', 'ld-pocock'] as const) {
    const d = boundaries({ design, looks: 4, alpha: 0.05, sides: 2, info });
    close(d.cumulativeAlpha[3]!, 0.05, 1e-9, design);
    const exact = crossingProbabilities(d.boundaries, info, 0, { sides: 2 });
    close(exact.upperTotal + exact.lowerTotal, 0.05, 1e-9, `${design} crossing`);
  }
  const obf = boundaries({ design: 'obf', looks: 4, alpha: 0.05, sides: 2, info }).boundaries;
  close(obf[0]! / obf[3]!, Math.sqrt(1 / 0.2), 1e-12, 'OBF shape C/√t');
});

test('invalid designs are refused; results are JSON-safe and deterministic', () => {
  const ok = { design: 'ld-obf', looks: 3, alpha: 0.05, sides: 2 } as const;
  assert.throws(() => boundaries({ ...ok, alpha: 0 }), RangeError);
  assert.throws(() => boundaries({ ...ok, alpha: 1 }), RangeError);
  assert.throws(() => boundaries({ ...ok, looks: 0 }), RangeError);
  assert.throws(() => boundaries({ ...ok, looks: 2.5 }), RangeError);
  assert.throws(() => boundaries({ ...ok, sides: 3 as Sides }), RangeError);
  assert.throws(() => boundaries({ ...ok, info: [0.5, 0.4, 1] }), RangeError);
  assert.throws(() => boundaries({ ...ok, info: [0.5, 1] }), RangeError);
  assert.throws(() => boundaries({ ...ok, design: 'wald' as Design }), RangeError);
  assert.throws(() => nextBoundary(ok, [0.5], [], 1), RangeError);
  assert.throws(() => nextBoundary(ok, [0.5, 0.4], [2.9, 2.9], 1), /look 2 has 0.4, less than look 1's 0.5/);
  assert.throws(() => crossingProbabilities([2, 2], [0.5], 0), RangeError);
  assert.throws(() => crossingProbabilities([2, 2], [0.5, 1], NaN), RangeError);
  const a = boundaries({ ...ok, info: [0.5, 1, 1.5] });
  assert.equal(a.boundaries[2], UNBOUNDED, 'nothing left to spend after t = 1');
  assert.deepEqual(JSON.parse(JSON.stringify(a)), a);
  assert.deepEqual(boundaries({ ...ok, info: [0.5, 1, 1.5] }), a);
});

test('100 and MAX_LOOKS looks: α is spent exactly and boundaries agree with a grid four times finer', () => {
  const fine = { resolution: 12 };
  for (const design of ['ld-obf', 'ld-pocock', 'pocock'] as const) {
    const d = boundaries({ design, looks: 100, alpha: 0.025, sides: 1 });
    assert.equal(d.boundaries.length, 100);
    close(d.cumulativeAlpha[99]!, 0.025, 1e-6, `${design} cumulative α`);
    const reference = boundaries({ design, looks: 100, alpha: 0.025, sides: 1 }, fine);
    closeAll(d.boundaries, reference.boundaries, 1e-4, `${design} against resolution 12`);
    // Independently of how the boundaries were solved: integrating them on the finer grid gives α.
    const exact = crossingProbabilities(d.boundaries, d.info, 0, {}, fine);
    close(exact.upperTotal, 0.025, 1e-6, `${design} crossing on the finer grid`);
  }
  // The first ld-obf looks spend far less than anything before them (α(0.01) ≈ 1e-111 and
  // α(0.02) ≈ 1e-56), so there b_k = Φ̄⁻¹(α(t_k) − α(t_{k−1})) exactly: a check of the far tail that
  // needs no grid. (A grid that stops ~15 standard deviations out, like Jennison & Turnbull's at r = 20,
  // puts b_2 at 15.68.)
  const obf = boundaries({ design: 'ld-obf', looks: 100, alpha: 0.025, sides: 1 }).boundaries;
  const a1 = spend('ld-obf', 0.025, 0.01);
  const a2 = spend('ld-obf', 0.025, 0.02);
  close(obf[0]!, normalTailQuantile(a1), 1e-9, 'b_1');
  close(obf[1]!, normalTailQuantile(a2 - a1), 1e-4, 'b_2');
  close(obf[1]!, 15.8055, 1e-4, 'b_2 value');
  for (let k = 1; k < 100; k++) assert.ok(obf[k]! < obf[k - 1]!, 'ld-obf boundaries fall');

  const most = boundaries({ design: 'ld-obf', looks: MAX_LOOKS, alpha: 0.05, sides: 2 });
  close(most.cumulativeAlpha[MAX_LOOKS - 1]!, 0.05, 1e-6, 'MAX_LOOKS two-sided');
  assert.ok(most.boundaries.every((b) => Number.isFinite(b) && b > 0 && b < UNBOUNDED));
  assert.throws(
    () => boundaries({ design: 'ld-obf', looks: MAX_LOOKS + 1, alpha: 0.05, sides: 2 }),
    /1 to 200/,
  );
});

test('information beyond full: the first look at or past t = 1 spends the rest, later looks are UNBOUNDED', () => {
  const cases: { info: number[]; finite: number }[] = [
    { info: [0.5, 1, 1.5], finite: 2 },
    { info: [0.5, 1.2, 1.5, 2], finite: 2 },
    { info: [0.3, 0.6, 0.9, 1.05, 1.3], finite: 4 },
    { info: [1.5, 2], finite: 1 },
  ];
  for (const { info, finite } of cases) {
    for (const design of ['ld-obf', 'ld-pocock'] as const) {
      for (const sides of [1, 2] as const) {
        const what = `${design} sides=${sides} [${info.join(', ')}]`;
        const d = boundaries({ design, looks: info.length, alpha: 0.05, sides, info });
        d.boundaries.forEach((b, k) => {
          assert.ok(!Number.isNaN(b), `${what}: look ${k + 1} is NaN`);
          if (k < finite) assert.ok(b > 0 && b < UNBOUNDED, `${what}: look ${k + 1} can reject`);
          else assert.equal(b, UNBOUNDED, `${what}: look ${k + 1} spends nothing`);
        });
        d.cumulativeAlpha.slice(finite - 1).forEach((c) => close(c, 0.05, 1e-9, `${what} cumulative α`));
        const exact = crossingProbabilities(d.boundaries, info, 0, { sides });
        close(exact.upperTotal + exact.lowerTotal, 0.05, 1e-9, `${what} crossing`);
      }
    }
  }
  // A single look past full information is the fixed-sample test.
  const late = boundaries({ design: 'ld-obf', looks: 2, alpha: 0.05, sides: 2, info: [1.5, 2] });
  close(late.boundaries[0]!, 1.959964, 1e-5, 'fixed-sample boundary');
});

test('repeated information: a look that adds less than MIN_INFO_STEP is UNBOUNDED and spends nothing', () => {
  const base = boundaries({ design: 'ld-obf', looks: 3, alpha: 0.05, sides: 2, info: [0.25, 0.5, 1] });
  const repeats: number[][] = [
    [0.25, 0.5, 0.5, 1],
    [0.25, 0.5, 0.5 * (1 + MIN_INFO_STEP / 2), 1],
    [0.25, 0.5, 0.5, 0.5, 1],
    // Small steps that together stay under MIN_INFO_STEP of the last look that was not a repeat.
    [0.25, 0.5, 0.5 * (1 + 0.4 * MIN_INFO_STEP), 0.5 * (1 + 0.8 * MIN_INFO_STEP), 1],
  ];
  for (const info of repeats) {
    const d = boundaries({ design: 'ld-obf', looks: info.length, alpha: 0.05, sides: 2, info });
    const kept = d.boundaries.filter((b) => b < UNBOUNDED);
    // A repeat changes nothing for the other looks: its spending is left to the next one.
    closeAll(kept, base.boundaries, 1e-12, `[${info.join(', ')}] other looks`);
    for (let k = 2; k < info.length - 1; k++) {
      assert.equal(d.boundaries[k], UNBOUNDED, `look ${k + 1} repeats`);
      assert.equal(d.cumulativeAlpha[k], d.cumulativeAlpha[1], 'spends nothing');
    }
    close(d.cumulativeAlpha.at(-1)!, 0.05, 1e-9, 'α is all spent');
    const exact = crossingProbabilities(d.boundaries, info, 0, { sides: 2 });
    close(exact.upperTotal + exact.lowerTotal, 0.05, 1e-9, 'crossing');
  }
  // Small steps that add up to more than MIN_INFO_STEP: the look that crosses it is a look again.
  const creep = [0.25, 0.5, 0.5 * (1 + 0.6 * MIN_INFO_STEP), 0.5 * (1 + 1.2 * MIN_INFO_STEP), 1];
  const crept = boundaries({ design: 'ld-obf', looks: 5, alpha: 0.05, sides: 2, info: creep });
  assert.equal(crept.boundaries[2], UNBOUNDED);
  assert.ok(crept.boundaries[3]! < UNBOUNDED, 'the fourth look adds 1.2 steps over the second');
  close(crept.cumulativeAlpha[4]!, 0.05, 1e-9, 'creeping looks');
  // Just over the step is a look of its own.
  const apart = [0.25, 0.5, 0.5 * (1 + 2 * MIN_INFO_STEP), 1];
  const own = boundaries({ design: 'ld-obf', looks: 4, alpha: 0.05, sides: 2, info: apart });
  assert.ok(own.boundaries.every((b) => Number.isFinite(b) && b < UNBOUNDED));
  close(own.cumulativeAlpha[3]!, 0.05, 1e-9, 'close looks');

  const spec = { design: 'ld-obf', alpha: 0.05, sides: 2 } as const;
  const again = nextBoundary(spec, [0.25, 0.5], base.boundaries.slice(0, 2), 0.5);
  assert.deepEqual(again, { boundary: UNBOUNDED, spent: 0, cumulativeAlpha: base.cumulativeAlpha[1] });
  const after = nextBoundary(spec, [0.25, 0.5, 0.5], [...base.boundaries.slice(0, 2), UNBOUNDED], 1);
  close(after.boundary, base.boundaries[2]!, 1e-12, 'the look after a repeat');

  const refusals: { run: () => unknown; says: RegExp }[] = [
    {
      run: () => boundaries({ design: 'ld-obf', looks: 3, alpha: 0.05, sides: 2, info: [0.5, 0.4, 1] }),
      says: /must not decrease: look 2 has 0.4, less than look 1's 0.5/,
    },
    {
      run: () => boundaries({ design: 'pocock', looks: 3, alpha: 0.05, sides: 2, info: [0.5, 0.5, 1] }),
      says: /pocock needs looks that each add information: look 2 at 0.5 repeats look 1/,
    },
    {
      run: () => crossingProbabilities([3, 2.5, 2], [0.5, 0.5, 1], 0),
      says: /boundary 2 must be UNBOUNDED: look 2 at 0.5 repeats look 1/,
    },
    {
      run: () => nextBoundary(spec, [0.5, 0.5], [2.9, 2.9], 1),
      says: /past boundary 2 must be UNBOUNDED/,
    },
  ];
  for (const { run, says } of refusals)
    assert.throws(run, (e: unknown) => e instanceof RangeError && says.test(e.message));
});

test('a first look at tiny information (t = 1e-4)', () => {
  for (const sides of [1, 2] as const) {
    // ld-obf spends 2Φ̄(z/√t) = 0 in double precision: that look cannot reject, and the rest are the
    // design without it.
    const tiny = boundaries({ design: 'ld-obf', looks: 3, alpha: 0.05, sides, info: [1e-4, 0.5, 1] });
    const without = boundaries({ design: 'ld-obf', looks: 2, alpha: 0.05, sides, info: [0.5, 1] });
    assert.equal(tiny.boundaries[0], UNBOUNDED);
    assert.equal(tiny.cumulativeAlpha[0], 0);
    closeAll(tiny.boundaries.slice(1), without.boundaries, 1e-12, `ld-obf sides=${sides}`);
    // ld-pocock spends α·ln(1 + (e − 1)·1e-4) ≈ 8.6e-6 at once: the fixed-sample boundary for that.
    const pocock = boundaries({ design: 'ld-pocock', looks: 3, alpha: 0.05, sides, info: [1e-4, 0.5, 1] });
    const first = spend('ld-pocock', 0.05, 1e-4, sides);
    close(pocock.boundaries[0]!, normalTailQuantile(first / sides), 1e-9, `ld-pocock sides=${sides} first`);
    close(pocock.cumulativeAlpha[2]!, 0.05, 1e-9, 'ld-pocock cumulative α');
    const exact = crossingProbabilities(pocock.boundaries, pocock.info, 0, { sides });
    close(exact.upperTotal + exact.lowerTotal, 0.05, 1e-9, 'ld-pocock crossing');
  }
  // Tiny looks in a row, then a rollout's usual ones: every look valid, α spent exactly.
  const info = [1e-4, 2e-4, 5e-4, 0.01, 0.02, ...Array.from({ length: 20 }, (_, k) => 0.05 * (k + 1))];
  for (const design of ['ld-obf', 'ld-pocock'] as const) {
    const d = boundaries({ design, looks: info.length, alpha: 0.025, sides: 1, info });
    assert.ok(
      d.boundaries.every((b) => !Number.isNaN(b) && b > 0),
      design,
    );
    close(d.cumulativeAlpha.at(-1)!, 0.025, 1e-9, `${design} cumulative α`);
    const exact = crossingProbabilities(d.boundaries, info, 0, {}, { resolution: 12 });
    close(exact.upperTotal, 0.025, 1e-6, `${design} crossing on a finer grid`);
  }
});

/**
 * Service SLO metrics: request_error_rate and the tail-latency tests latency_p95 / latency_p99.
 *
 * The engine on constructed statistics (harm, non-inferiority, missing data, results of older analyses,
 * the pooled fleet-wide test, engine 1, the headline), existing metrics decided exactly as before, and
 * the analysis activity on a real in-memory DuckDB: failed requests counted per arm through every path
 * of a canary look, and each arm's quantiles and exceedance counts against production's quantile.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { DuckDBConnection } from '@duckdb/node-api';
import {
  canaryFull,
  canaryLook,
  createAnalysisActivities,
  eventsSide,
  recordBatchStats,
} from '../../activities/analysis';
import type { ArmStats, CohortStats, LatencyTail } from '../../activities/contracts';
import { num, openFleetDatabase, rows, transaction } from '../../activities/db';
import { renderReportHtml } from '../../activities/report-html';
import type { FleetDatabase } from '../../activities/db';
import { decideLook, headline, type LookContext, type MetricResult } from '../../policies/decide';
import { engineLook } from '../../policies/engine';
import { Policy, TAIL_QUANTILES, formatIssues, type PolicyInput } from '../../policies/schema';
import { normalQuantile } from '../../policies/normal';
import { gaussian, makeRng } from '../../policies/rng';

type MetricInput = NonNullable<PolicyInput['analysis']>['metrics'][number];

function policyWith(
  metrics: MetricInput[],
  analysis: Partial<NonNullable<PolicyInput['analysis']>> = {},
): Policy {
  return Policy.parse({
    apiVersion: 'fleetgate/v1',
    kind: 'RolloutPolicy',
    name: 'service-test',
    reviewers: ['alice'],
    shadow: { share: 0.1, duration: '1h', maxDisagreement: 0.05 },
    waves: [{ percent: 5, hold: '1h' }],
    labelWait: { coverage: 0.8, timeout: '6h' },
    analysis: { alpha: 0.05, mixtureSd: 0.05, minLabeledPerArm: 100, maxExtraLooks: 1, metrics, ...analysis },
  });
}

/** An arm of `n` requests: `failed` of them failed; of the others, `above` share above production's quantiles. */
interface ArmSpec {
  n?: number;
  failed?: number;
  /** Share of latency samples above production's p95 and p99. */
  above95?: number;
  above99?: number;
  p95Ms?: number;
  p99Ms?: number;
  /** Without `failed` and `latencyTail`, as analyses recorded before them. */
  old?: boolean;
}

function arm({
  n = 2000,
  failed = 0,
  above95 = 0.05,
  above99 = 0.01,
  p95Ms = 1.2,
  p99Ms = 2,
  old,
}: ArmSpec): ArmStats {
  const ok = n - failed;
  const base: ArmStats = {
    events: n,
    labeled: 1000,
    errors: 100,
    latency: { n: ok, sum: ok * 0.8, sumSq: ok * (0.8 * 0.8 + 0.04) },
    logLatency: { n: ok, sum: ok * Math.log(0.8), sumSq: ok * (Math.log(0.8) ** 2 + 0.06) },
    safety: { events: 0, exposureHours: 0 },
  };
  if (old) return base;
  const tail: LatencyTail = {
    n: ok,
    p95: { ms: p95Ms, above: Math.round(ok * above95) },
    p99: { ms: p99Ms, above: Math.round(ok * above99) },
  };
  return { ...base, failed, latencyTail: tail };
}

function cohort(name: string, candidate: ArmSpec, production: ArmSpec = {}): CohortStats {
  return { cohort: name, candidate: arm(candidate), production: arm(production) };
}

const canary: LookContext = { stage: 'canary', isLastLookOfWave: false, extraLooksUsed: 0 };
const final: LookContext = { stage: 'final', isLastLookOfWave: true, extraLooksUsed: 0 };

function metric(ms: MetricResult[], name: MetricResult['metric']): MetricResult {
  const m = ms.find((x) => x.metric === name);
  assert.ok(m, `no ${name} among ${ms.map((x) => x.metric).join(', ')}`);
  return m;
}

describe('service metrics in the policy', () => {
  it('are declared binary, with their margins absolute', () => {
    const p = policyWith([
      { name: 'request_error_rate', kind: 'binary', margin: 0.01 },
      { name: 'latency_p95', kind: 'binary', margin: 0.02 },
      { name: 'latency_p99', kind: 'binary', margin: 0.01, harmThreshold: 0.005 },
    ]);
    assert.deepEqual(
      p.analysis.metrics.map((m) => [m.name, m.kind, m.role, m.scale]),
      [
        ['request_error_rate', 'binary', 'guardrail', 'linear'],
        ['latency_p95', 'binary', 'guardrail', 'linear'],
        ['latency_p99', 'binary', 'guardrail', 'linear'],
      ],
    );
  });

  it('refuse another kind or the log scale, naming the fix', () => {
    const refused = (m: Record<string, unknown>) => {
      const r = Policy.safeParse(policyWith([{ name: 'error_rate', kind: 'binary', margin: 0.01 }]));
      assert.ok(r.success);
      const input = { ...r.data, analysis: { ...r.data.analysis, metrics: [m] } };
      const bad = Policy.safeParse(input);
      assert.ok(!bad.success);
      return formatIssues(bad.error, input);
    };
    assert.match(
      refused({ name: 'latency_p99', kind: 'continuous', margin: 0.01 }),
      /analysis\.metrics\.0\.kind.*metric "latency_p99" is of kind "binary"; write kind: binary/,
    );
    assert.match(
      refused({ name: 'latency_p95', kind: 'binary', scale: 'log', margin: 0.01 }),
      /scale "log" applies to latency_ms only; remove it from "latency_p95"/,
    );
  });
});

describe('the engine on service metrics', () => {
  const tails = policyWith([
    { name: 'request_error_rate', kind: 'binary', margin: 0.01 },
    { name: 'latency_p95', kind: 'binary', margin: 0.02 },
    { name: 'latency_p99', kind: 'binary', margin: 0.01 },
  ]);

  it('proves harm for a candidate with 30% of its requests above production p95 against 5%', () => {
    const stats = [cohort('svc', { above95: 0.3, above99: 0.1, p95Ms: 4.1, p99Ms: 6 })];
    const look = engineLook(tails, canary, stats, { minP: {} }, 1);
    const d = look.decisions[0]!;
    assert.equal(d.action, 'rollback');
    const p95 = metric(d.metrics, 'latency_p95');
    assert.equal(p95.verdict, 'harm');
    assert.equal(p95.nCandidate, 2000);
    assert.equal(p95.candidate, 0.3);
    assert.equal(p95.production, 0.05);
    assert.ok(Math.abs(p95.estimate - 0.25) < 1e-12, `estimate ${p95.estimate}`);
    assert.ok(p95.ci[0] > 0.15 && p95.ci[1] < 0.35, `ci ${p95.ci.join(', ')}`);
    assert.deepEqual(p95.quantileMs, { candidate: 4.1, production: 1.2 });
    assert.equal(metric(d.metrics, 'latency_p99').verdict, 'harm');
    assert.equal(metric(d.metrics, 'request_error_rate').verdict, 'noninferior');
    // People read both arms' quantile in ms, then the share tested.
    assert.match(
      d.reason,
      /latency_p95 4\.1 ms vs 1\.2 ms, share above production's p95 0\.300 vs 0\.050 \(n=2000\/2000\): Δ=\+0\.250/,
    );
    const line = headline(d);
    assert.match(
      line,
      /^latency_p9[59] [\d.]+ ms vs [\d.]+ ms, share above production's p9[59] Δ=\+0\.\d{3} \[\+0\.\d{3}, \+0\.\d{3}\] Λ=.* → harm$/,
    );
  });

  it('finds equal tails non-inferior and promotes at the final analysis', () => {
    const same = { n: 10_000, above95: 0.05, above99: 0.01, failed: 10 };
    const look = engineLook(tails, final, [cohort('svc', same, same)], { minP: {} }, 1);
    const d = look.decisions[0]!;
    for (const name of ['request_error_rate', 'latency_p95', 'latency_p99'] as const) {
      const m = metric(d.metrics, name);
      assert.equal(m.verdict, 'noninferior', `${name}: ${m.ci.join(', ')}`);
      assert.equal(m.estimate, 0);
      assert.ok(m.ci[1] < m.margin);
    }
    assert.equal(d.action, 'promote');
    assert.match(headline(d), /ms vs .* ms, share above production's p9[59] Δ=\+0\.000 .* → noninferior$/);
  });

  it('proves harm for 5% failed requests against 0.1%, with the posterior beside it', () => {
    const look = engineLook(tails, canary, [cohort('svc', { failed: 100 }, { failed: 2 })], { minP: {} }, 1);
    const d = look.decisions[0]!;
    const m = metric(d.metrics, 'request_error_rate');
    assert.equal(m.verdict, 'harm');
    assert.equal(m.nCandidate, 2000);
    assert.equal(m.candidate, 0.05);
    assert.equal(m.production, 0.001);
    assert.ok(m.ci[0] > 0.02, `ci ${m.ci.join(', ')}`);
    assert.ok(m.probAboveMargin !== undefined && m.probAboveMargin > 0.99);
    assert.equal(m.quantileMs, undefined);
    assert.equal(d.action, 'rollback');
    assert.match(d.reason, /request_error_rate 0\.050 vs 0\.001 \(n=2000\/2000\): Δ=\+0\.049/);
  });

  it('reads analyses recorded before the service statistics as no data: insufficient, never a crash', () => {
    const look = engineLook(tails, canary, [cohort('svc', { old: true }, { old: true })], { minP: {} }, 1);
    const d = look.decisions[0]!;
    assert.equal(metric(d.metrics, 'latency_p95').verdict, 'insufficient');
    assert.match(metric(d.metrics, 'latency_p95').note ?? '', /0 candidate and 0 production latency samples/);
    // Old stats count every event as a request that did not fail: a test on what is known.
    assert.equal(metric(d.metrics, 'request_error_rate').verdict, 'noninferior');
    const empty = engineLook(tails, canary, [cohort('svc', { n: 50 }, { n: 50 })], { minP: {} }, 1);
    assert.match(
      metric(empty.decisions[0]!.metrics, 'request_error_rate').note ?? '',
      /50 candidate and 50 production requests, 100 needed per arm/,
    );
    assert.match(headline(empty.decisions[0]!), /n=50\/50 → insufficient$/);
  });

  it('pools the tails over cohorts, each against its own production quantile, without quantiles', () => {
    const stats = [
      cohort('a', { above95: 0.07, p95Ms: 3 }, { p95Ms: 2 }),
      cohort('b', { above95: 0.07, p95Ms: 30 }, { p95Ms: 20 }),
      cohort('c', { above95: 0.07, p95Ms: 300 }, { p95Ms: 200 }),
    ];
    const p = policyWith([{ name: 'latency_p95', kind: 'binary', margin: 0.01 }]);
    const look = engineLook(p, canary, stats, { minP: {} }, 3);
    const pooled = metric(look.fleet.pooled, 'latency_p95');
    assert.ok(Math.abs(pooled.estimate - 0.02) < 1e-9, `pooled ${pooled.estimate}`);
    assert.ok(Math.abs(pooled.candidate - 0.07) < 1e-9 && Math.abs(pooled.production - 0.05) < 1e-9);
    assert.equal(pooled.quantileMs, undefined);
    assert.equal(pooled.verdict, 'harm');
    assert.equal(look.fleet.action, 'rollback');
    assert.match(look.fleet.reason, /latency_p95 share above production's p95 0\.070 vs 0\.050/);
    assert.ok(!JSON.stringify(look).includes('null'), 'no NaN or Infinity in the look');
  });

  it('leaves the existing metrics exactly as they were decided', () => {
    const existing = policyWith([
      { name: 'error_rate', kind: 'binary', margin: 0.02 },
      { name: 'latency_ms', kind: 'continuous', margin: 5 },
    ]);
    const old = [cohort('a', { old: true }, { old: true }), cohort('b', { old: true }, { old: true })];
    // The same statistics with the service fields added: many failed requests, a slow tail.
    const tail = arm({ above95: 0.4, above99: 0.2, p95Ms: 9 }).latencyTail!;
    const now = old.map((s) => ({
      ...s,
      candidate: { ...s.candidate, failed: 40, latencyTail: tail },
      production: { ...s.production, failed: 0, latencyTail: arm({}).latencyTail! },
    }));
    for (const ctx of [canary, final]) {
      assert.deepEqual(
        engineLook(existing, ctx, now, { minP: {} }, 2),
        engineLook(existing, ctx, old, { minP: {} }, 2),
      );
      assert.deepEqual(
        decideLook(existing, ctx, now, { minP: {} }),
        decideLook(existing, ctx, old, { minP: {} }),
      );
    }
  });

  it('engine 1 tests them as differences of proportions too', () => {
    const { decisions } = decideLook(
      tails,
      canary,
      [cohort('svc', { above95: 0.3, failed: 100 }, { failed: 2 })],
      {
        minP: {},
      },
    );
    const d = decisions[0]!;
    assert.equal(metric(d.metrics, 'latency_p95').verdict, 'harm');
    assert.equal(metric(d.metrics, 'request_error_rate').verdict, 'harm');
    assert.equal(d.action, 'rollback');
  });
});

/** The q-quantile of sorted values, interpolated as DuckDB's quantile_cont does. */
function quantileCont(sorted: readonly number[], q: number): number {
  const h = (sorted.length - 1) * q;
  const lo = Math.floor(h);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo]! + (h - lo) * (sorted[hi]! - sorted[lo]!);
}

/** The tails of two arms' latency samples so far, as the analysis computes them. */
function tailsOf(candidate: readonly number[], production: readonly number[]): [LatencyTail, LatencyTail] {
  const sc = [...candidate].sort((a, b) => a - b);
  const sp = [...production].sort((a, b) => a - b);
  const of = (own: number[], all: readonly number[]): LatencyTail => {
    const at = (q: number) => ({
      ms: quantileCont(own, q),
      above: all.filter((x) => x > quantileCont(sp, q)).length,
    });
    return { n: all.length, p95: at(TAIL_QUANTILES.latency_p95), p99: at(TAIL_QUANTILES.latency_p99) };
  };
  return [of(sc, candidate), of(sp, production)];
}

/**
 * Share of seeded runs in which `hit` holds at any of `looks` looks of `perLook` lognormal latencies
 * (σ 0.5 on the log scale) per arm, the candidate's scaled by `slowdown`.
 */
function tailRuns(
  policy: Policy,
  o: { runs: number; slowdown: number; seed: number; perLook: number; ctx: LookContext },
  hit: (d: ReturnType<typeof engineLook>['decisions'][number]) => boolean,
): number {
  const rng = makeRng(o.seed);
  let hits = 0;
  for (let r = 0; r < o.runs; r++) {
    const c: number[] = [];
    const p: number[] = [];
    let state = { minP: {} } as Parameters<typeof engineLook>[3];
    for (let k = 0; k < 10; k++) {
      for (let i = 0; i < o.perLook; i++) {
        c.push(o.slowdown * Math.exp(0.5 * gaussian(rng)));
        p.push(Math.exp(0.5 * gaussian(rng)));
      }
      const [tc, tp] = tailsOf(c, p);
      const stats: CohortStats = {
        cohort: 'svc',
        candidate: { ...arm({ n: c.length }), latencyTail: tc },
        production: { ...arm({ n: p.length }), latencyTail: tp },
      };
      const look = engineLook(policy, o.ctx, [stats], state, 1);
      state = look.state;
      if (hit(look.decisions[0]!)) {
        hits++;
        break;
      }
    }
  }
  return hits / o.runs;
}

describe('the tail tests over ten looks, T re-estimated at each', () => {
  const policy = policyWith([
    { name: 'latency_p95', kind: 'binary', margin: 0.02 },
    { name: 'latency_p99', kind: 'binary', margin: 0.01 },
  ]);
  const rollback = (d: { action: string }) => d.action === 'rollback';
  const within = (rate: number, runs: number) => rate <= 0.05 + 2 * Math.sqrt((0.05 * 0.95) / runs);

  it('keep false rollbacks within α when the candidate is as fast (A/A)', () => {
    const o = { runs: 200, slowdown: 1, seed: 20261204, perLook: 300, ctx: canary };
    const rate = tailRuns(policy, o, rollback);
    assert.ok(within(rate, o.runs), `false rollbacks in ${rate} of A/A runs`);
  });

  it('keep false non-inferiority within α for a candidate exactly at the p95 margin', () => {
    // Slower by the log-scale shift that puts 7% of its latencies above production's p95.
    const slowdown = Math.exp(0.5 * (normalQuantile(0.95) - normalQuantile(0.93)));
    const p95 = policyWith([{ name: 'latency_p95', kind: 'binary', margin: 0.02 }]);
    const o = { runs: 100, slowdown, seed: 20261206, perLook: 1000, ctx: final };
    const rate = tailRuns(p95, o, (d) => metric(d.metrics, 'latency_p95').verdict === 'noninferior');
    assert.ok(within(rate, o.runs), `non-inferior at the margin in ${rate} of runs`);
    // Equal tails are shown non-inferior, and promoted, in most runs: the test is not vacuous.
    const power = tailRuns(p95, { ...o, runs: 20, slowdown: 1 }, (d) => d.action === 'promote');
    assert.ok(power >= 0.8, `equal tails promoted in only ${power} of runs`);
  });

  it('catch a candidate 30% slower', () => {
    const rate = tailRuns(
      policy,
      { runs: 40, slowdown: 1.3, seed: 20261205, perLook: 300, ctx: canary },
      rollback,
    );
    assert.ok(rate >= 0.9, `a 30% slower candidate rolled back in only ${rate} of runs`);
  });
});

describe('the report', () => {
  it("shows a tail metric's shares with each arm's quantile in ms, and request_error_rate like error_rate", () => {
    const p = policyWith([
      { name: 'request_error_rate', kind: 'binary', margin: 0.01 },
      { name: 'latency_p95', kind: 'binary', margin: 0.02 },
    ]);
    const d = engineLook(
      p,
      canary,
      [cohort('svc', { above95: 0.3, p95Ms: 4.1, failed: 100 }, { failed: 2 })],
      { minP: {} },
      1,
    ).decisions[0]!;
    const html = renderReportHtml({
      rolloutId: 'svc-report',
      policy: p,
      cohorts: [{ cohort: 'svc', state: 'rolled-back', headline: headline(d) }],
      decisions: [
        {
          seq: 1,
          phase: 'canary',
          wave: 1,
          look: 1,
          cohort: 'svc',
          action: d.action,
          reason: d.reason,
          metrics: d.metrics,
        },
      ],
    });
    for (const name of ['request_error_rate', 'latency_p95']) {
      assert.match(html, new RegExp(`<svg class="chart" data-cohort="svc" data-metric="${name}"`));
    }
    assert.match(html, /<td class="n">0\.3 \(p95 4\.1 ms\)<\/td><td class="n">0\.0501 \(p95 1\.2 ms\)<\/td>/);
    assert.match(html, /difference of the shares above production&#39;s p95, candidate − production/);
    assert.match(html, /<td class="n">0\.05<\/td><td class="n">0\.001<\/td>/);
    assert.match(html, /latency_p95 4\.1 ms vs 1\.2 ms, share above production&#39;s p95 Δ=\+0\.250/);
  });
});

// ---- the analysis activity on a real DuckDB -------------------------------------------------------

interface Ev {
  id: string;
  cohort: string;
  ts: number;
  arm: 'candidate' | 'production';
  /** The acting model's latency; undefined with `failed`. */
  lat?: number;
  failed?: boolean;
  batch?: string;
}

async function insertEvents(conn: DuckDBConnection, rollout: string, events: Ev[]): Promise<void> {
  // Literals of the test's own values (ids and numbers it chose), so one statement inserts them all.
  const lit = (v: string | number | boolean | undefined) =>
    v === undefined ? 'NULL' : typeof v === 'string' ? `'${v}'` : String(v);
  const values = events.map((e) => {
    const cand = e.arm === 'candidate';
    const pred = e.failed ? undefined : 1;
    return [
      `${rollout}.${e.id}`,
      rollout,
      e.batch ?? 'b',
      'canary',
      e.cohort,
      'pseudonym',
      e.ts,
      e.arm,
      cand ? pred : undefined,
      cand ? undefined : pred,
      cand ? e.lat : undefined,
      cand ? undefined : e.lat,
      0.01,
      e.failed ?? false,
    ]
      .map(lit)
      .join(', ');
  });
  await conn.run(
    `INSERT INTO events (event_id, rollout_id, batch_id, phase, cohort, vehicle, ts_ms, arm,
                         pred_candidate, pred_production, lat_candidate, lat_production, exposure_h, failed)
     VALUES (${values.join('), (')})`,
  );
}

/**
 * Cohort `svc` before ts 1000: production's latencies 1..100 ms, the candidate's 11..110 ms; 5 failed
 * candidate requests and 1 failed production one. Events at 1000 and later are beyond the looks; cohort
 * `cold` has candidate events only.
 */
function serviceLog(batch?: string): Ev[] {
  const out: Ev[] = [];
  for (let i = 1; i <= 100; i++) {
    out.push({ id: `p${i}`, cohort: 'svc', ts: i * 9, arm: 'production', lat: i, batch });
    out.push({ id: `c${i}`, cohort: 'svc', ts: i * 9 + 1, arm: 'candidate', lat: i + 10, batch });
  }
  for (let i = 0; i < 5; i++)
    out.push({ id: `cf${i}`, cohort: 'svc', ts: 100 + i, arm: 'candidate', failed: true, batch });
  out.push({ id: 'pf', cohort: 'svc', ts: 300, arm: 'production', failed: true, batch });
  out.push({ id: 'late', cohort: 'svc', ts: 1000, arm: 'candidate', lat: 10_000, batch });
  out.push({ id: 'late-f', cohort: 'svc', ts: 1001, arm: 'production', failed: true, batch });
  for (let i = 0; i < 3; i++)
    out.push({ id: `k${i}`, cohort: 'cold', ts: 50 + i, arm: 'candidate', lat: 5 + i, batch });
  return out;
}

function close(actual: number, expected: number, what: string): void {
  assert.ok(
    Math.abs(actual - expected) <= 1e-9 * Math.max(1, Math.abs(expected)),
    `${what}: ${actual} != ${expected}`,
  );
}

describe('the analysis activity on service events', () => {
  let db: FleetDatabase;
  before(async () => {
    db = await openFleetDatabase(':memory:');
  });
  after(async () => {
    await db.close();
  });

  it("counts failed requests and reads each arm's quantiles and its events above production's", async () => {
    const R = 'svc-1';
    await insertEvents(db.connection, R, serviceLog());
    const analysis = createAnalysisActivities({ conn: db.connection });
    const [svc, cold] = await analysis.analyze({
      rolloutId: R,
      phase: 'canary',
      cohorts: ['svc', 'cold'],
      asOfMs: 1000,
    });
    const { candidate: c, production: p } = svc!;
    assert.equal(c.events, 105);
    assert.equal(c.failed, 5);
    assert.equal(p.events, 101);
    assert.equal(p.failed, 1);
    assert.equal(c.latency.n, 100);
    // quantile_cont over 1..100: 1 + q·99; production's p95 95.05 and p99 99.01 are the thresholds.
    assert.equal(p.latencyTail!.n, 100);
    close(p.latencyTail!.p95.ms, 95.05, 'production p95');
    close(p.latencyTail!.p99.ms, 99.01, 'production p99');
    close(c.latencyTail!.p95.ms, 105.05, 'candidate p95');
    close(c.latencyTail!.p99.ms, 109.01, 'candidate p99');
    assert.equal(c.latencyTail!.n, 100);
    assert.equal(p.latencyTail!.p95.above, 5); // 96..100
    assert.equal(p.latencyTail!.p99.above, 1); // 100
    assert.equal(c.latencyTail!.p95.above, 15); // 96..110
    assert.equal(c.latencyTail!.p99.above, 11); // 100..110
    // A cohort without production latency: the candidate's own quantiles, nothing above a threshold.
    assert.equal(cold!.production.latencyTail, undefined);
    assert.equal(cold!.candidate.latencyTail!.n, 3);
    close(cold!.candidate.latencyTail!.p95.ms, 6.9, 'cold p95');
    assert.equal(cold!.candidate.latencyTail!.p95.above, 0);
    assert.equal(cold!.production.failed, undefined); // no events: an empty arm

    // The engine reads these statistics: the candidate's share above production's p95 is 0.15 vs 0.05.
    const p95 = policyWith([{ name: 'latency_p95', kind: 'binary', margin: 0.02 }], { minLabeledPerArm: 50 });
    const m = metric(engineLook(p95, canary, [svc!], { minP: {} }, 1).decisions[0]!.metrics, 'latency_p95');
    assert.equal(m.candidate, 0.15);
    assert.equal(m.production, 0.05);
    close(m.quantileMs!.candidate, 105.05, 'quantileMs');

    // A later look sees the later events; the same look again gives the same numbers.
    const [later] = await analysis.analyze({ rolloutId: R, phase: 'canary', cohorts: ['svc'], asOfMs: 2000 });
    assert.equal(later!.candidate.events, 106);
    assert.equal(later!.production.failed, 2);
    assert.equal(later!.candidate.latencyTail!.p95.above, 16);
    const [again] = await analysis.analyze({
      rolloutId: R,
      phase: 'canary',
      cohorts: ['svc', 'svc'],
      asOfMs: 1000,
    });
    assert.deepEqual(again, svc);
  });

  it('counts failed requests the same from batch statistics, the event scan and the full query', async () => {
    const R = 'svc-2';
    const batch = `${R}:canary:0-2000`;
    await transaction(db.connection, async () => {
      await insertEvents(db.connection, R, serviceLog(batch));
      await recordBatchStats(db.connection, {
        batchId: batch,
        rolloutId: R,
        phase: 'canary',
        fromMs: 0,
        toMs: 2000,
      });
    });
    const failedOf = (found: Record<string, unknown>[]) =>
      Object.fromEntries(found.map((r) => [`${String(r.cohort)}|${String(r.arm)}`, num(r.failed)]));
    const [stored] = await rows(
      db.connection,
      `SELECT sum(failed) AS f FROM batch_stats WHERE batch_id = $b`,
      { b: batch },
    );
    assert.equal(num(stored?.f), 7);
    // A first look covering the whole batch sums its stored statistics.
    const whole = await eventsSide(db.connection, { rollout: R, prev: Number.MIN_SAFE_INTEGER, asof: 2000 });
    assert.equal(whole.source, 'batch_stats');
    const full = await canaryFull(db.connection, R, 2000);
    assert.deepEqual(failedOf(full), { 'svc|candidate': 5, 'svc|production': 2, 'cold|candidate': 0 });
    assert.deepEqual(failedOf(await canaryLook(db.connection, R, 2000)), failedOf(full));
    // A look earlier than the latest stored one is answered by the full query.
    const early = failedOf(await canaryLook(db.connection, R, 500));
    assert.deepEqual(early, { 'svc|candidate': 5, 'svc|production': 1, 'cold|candidate': 0 });
    // Looks that cut the batch read its events inside each window; their sum is the same.
    const R3 = 'svc-3';
    const cut = `${R3}:canary:0-2000`;
    await transaction(db.connection, async () => {
      await insertEvents(db.connection, R3, serviceLog(cut));
      await recordBatchStats(db.connection, {
        batchId: cut,
        rolloutId: R3,
        phase: 'canary',
        fromMs: 0,
        toMs: 2000,
      });
    });
    assert.equal(
      (await eventsSide(db.connection, { rollout: R3, prev: 200, asof: 1000 })).source,
      'batch_stats',
    );
    await canaryLook(db.connection, R3, 200);
    await canaryLook(db.connection, R3, 1000);
    assert.deepEqual(failedOf(await canaryLook(db.connection, R3, 2000)), failedOf(full));
  });
});

describe('the look statistics of an older database', () => {
  it('gain the failed column on open; rows without it read as no failures', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fleetgate-svc-'));
    try {
      const path = join(dir, 'fleet.duckdb');
      const old = await openFleetDatabase(path);
      await insertEvents(
        old.connection,
        'r',
        serviceLog().filter((e) => !e.failed),
      );
      await canaryLook(old.connection, 'r', 1000);
      await old.connection.run(
        'ALTER TABLE look_stats DROP COLUMN failed; ALTER TABLE batch_stats DROP COLUMN failed',
      );
      await old.close();
      const db = await openFleetDatabase(path);
      try {
        const cols = await rows(
          db.connection,
          `SELECT table_name FROM duckdb_columns() WHERE column_name = 'failed' ORDER BY table_name`,
        );
        assert.deepEqual(
          cols.map((r) => r.table_name),
          ['batch_stats', 'events', 'look_stats'],
        );
        const analysis = createAnalysisActivities({ conn: db.connection });
        const [svc] = await analysis.analyze({
          rolloutId: 'r',
          phase: 'canary',
          cohorts: ['svc'],
          asOfMs: 2000,
        });
        assert.equal(svc!.candidate.failed, 0);
        assert.equal(svc!.candidate.events, 101);
        assert.equal(svc!.candidate.latencyTail!.p95.above, 16);
      } finally {
        await db.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/**
 * The shadow's upload filter on the vehicles (sim/edge.ts), the analysis that weights its uploads, and
 * the shadow gates (policies/shadow.ts): every priority event is uploaded, the per-vehicle budget holds,
 * weighted estimates are unbiased where unweighted ones are not, and a cohort is stopped or failed for
 * the reasons a fleet team relies on. The activity tests run real onnxruntime sessions on a real DuckDB.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { DuckDBConnection } from '@duckdb/node-api';
import { createAnalysisActivities } from '../../activities/analysis';
import type { ClassStats, CohortStats, ShadowEstimates } from '../../activities/contracts';
import { num, openFleetDatabase, rows } from '../../activities/db';
import type { FleetDatabase } from '../../activities/db';
import { createFleetActivities, initSimFleet } from '../../activities/fleet';
import { emptyArm } from '../../activities/analysis';
import { Policy } from '../../policies/schema';
import { checkShadowBudget, judgeShadow } from '../../policies/shadow';
import { edgeFilter, windowBudget } from '../../sim/edge';
import type { EdgeEvents } from '../../sim/edge';
import { makeRng } from '../../policies/rng';
import type { EventWriter } from '../../events/writer';
import { OnnxModelRunner } from '../../workers/model-runner';
import { loadPseudonymKey } from '../../workers/secrets';
import { simulatedFleet, T0 } from '../feed-support';

const ROOT = resolve(__dirname, '..', '..');
const HOUR = 3_600_000;

/** n events over `vehicles` vehicles: every `disagreeEvery`-th disagrees, every `lowEvery`-th is unsure. */
function events(n: number, vehicles: number, disagreeEvery: number, lowEvery: number): EdgeEvents {
  const rng = makeRng('edge-events');
  const e: EdgeEvents = {
    n,
    vehicles,
    vehicle: new Uint32Array(n),
    predCandidate: new Uint8Array(n),
    predProduction: new Uint8Array(n),
    confCandidate: new Float32Array(n).fill(0.9),
    confProduction: new Float32Array(n).fill(0.9),
  };
  for (let i = 0; i < n; i++) {
    e.vehicle[i] = Math.floor(rng() * vehicles);
    if (i % disagreeEvery === 0) e.predCandidate[i] = 1;
    if (i % lowEvery === 0) e.confProduction[i] = 0.55;
  }
  return e;
}

void describe('the vehicles’ upload filter', () => {
  void it('uploads everything with weight 1 when the sample is 1 and there is no budget', () => {
    const ev = events(2000, 50, 7, 11);
    const r = edgeFilter(ev, { sample: 1, lowConfidence: 0.6, budget: null }, makeRng(1));
    assert.equal(r.counters.uploaded, 2000);
    assert.ok(r.keep.every((k) => k === 1));
    assert.ok(r.weight.every((w) => w === 1));
    assert.equal(r.counters.disagreements, Math.ceil(2000 / 7));
    assert.equal(r.counters.overBudget, 0);
    assert.equal(r.counters.vehicles, 50);
  });

  void it('keeps every disagreement and low-confidence event and samples the rest', () => {
    const ev = events(20_000, 200, 10, 13);
    const r = edgeFilter(ev, { sample: 0.1, lowConfidence: 0.6, budget: null }, makeRng(2));
    let ordinaryKept = 0;
    let ordinary = 0;
    for (let i = 0; i < ev.n; i++) {
      if (i % 10 === 0 || i % 13 === 0) {
        assert.equal(r.keep[i], 1, `priority event ${i} must be uploaded`);
        assert.equal(r.weight[i], 1);
      } else {
        ordinary++;
        if (r.keep[i]) {
          ordinaryKept++;
          assert.equal(r.weight[i], 10);
        } else assert.equal(r.weight[i], 0);
      }
    }
    const share = ordinaryKept / ordinary;
    assert.ok(Math.abs(share - 0.1) < 0.01, `sampled share ${share}`);
    assert.equal(r.counters.priority, ev.n - ordinary);
  });

  void it('never uploads more than the budget from one vehicle, and stays unbiased when it caps', () => {
    const ev = events(10_000, 40, 3, 1_000_000);
    const budget = 100;
    let estimate = 0;
    const runs = 200;
    for (let s = 0; s < runs; s++) {
      const r = edgeFilter(ev, { sample: 0.5, lowConfidence: 0.6, budget }, makeRng(`cap-${s}`));
      const perVehicle = new Uint32Array(ev.vehicles);
      let weighted = 0;
      for (let i = 0; i < ev.n; i++) {
        if (!r.keep[i]) continue;
        perVehicle[ev.vehicle[i]!]!++;
        if (ev.predCandidate[i] !== ev.predProduction[i]) weighted += r.weight[i]!;
      }
      assert.ok(Math.max(...perVehicle) <= budget);
      assert.ok(r.counters.overBudget > 0, 'some vehicles must hit the budget');
      assert.equal(
        r.counters.uploaded,
        perVehicle.reduce((a, b) => a + b, 0),
      );
      estimate += weighted / runs;
    }
    const truth = Math.ceil(ev.n / 3);
    assert.ok(Math.abs(estimate - truth) / truth < 0.02, `weighted disagreements ${estimate} vs ${truth}`);
  });

  void it('refuses a sample or budget out of range', () => {
    const ev = events(10, 2, 2, 2);
    assert.throws(
      () => edgeFilter(ev, { sample: 0, lowConfidence: 0.6, budget: null }, makeRng(1)),
      /sample/,
    );
    assert.throws(() => edgeFilter(ev, { sample: 0.5, lowConfidence: 0.6, budget: 0 }, makeRng(1)), /budget/);
  });

  void it('scales the daily budget to the window', () => {
    assert.equal(windowBudget(240, 6 * HOUR), 60);
    assert.equal(windowBudget(10, HOUR), 1);
  });
});

function policy(shadow: Record<string, unknown>): Policy {
  return Policy.parse({
    apiVersion: 'fleetgate/v1',
    kind: 'RolloutPolicy',
    name: 'p',
    shadow: { share: 0.1, duration: '1d', maxDisagreement: 0.3, minEvents: 100, ...shadow },
    waves: [{ percent: 5, hold: '1h', looks: 1 }],
    labelWait: { coverage: 0.9, timeout: '1d' },
    analysis: { metrics: [{ name: 'error_rate', kind: 'binary', margin: 0.02 }] },
  });
}

function cls(c: number, recall: [number, number], precision: [number, number], n = 200): ClassStats {
  return {
    cls: c,
    labeled: n,
    predicted: { candidate: n, production: n },
    recall: { candidate: recall[0], production: recall[1], se: 0.02 },
    precision: { candidate: precision[0], production: precision[1], se: 0.02 },
  };
}

function stats(cohort: string, shadow: Partial<ShadowEstimates> & { classes?: ClassStats[] }): CohortStats {
  return {
    cohort,
    candidate: emptyArm(),
    production: emptyArm(),
    paired: { events: 500, disagreements: 50 },
    shadow: {
      edge: {
        vehicles: 100,
        evaluated: 5000,
        priority: 600,
        disagreements: 250,
        uploaded: 1000,
        overBudget: 0,
      },
      estimated: { events: 5000, disagreement: 0.05, latencyMs: { candidate: 10, production: 10 } },
      classes: [],
      ...shadow,
    },
  };
}

void describe('the shadow gates', () => {
  void it('passes a cohort within every gate, and fails one on a class whose recall drops', () => {
    const p = policy({ classGates: { maxRecallDrop: 0.05 } });
    const [ok, bad] = judgeShadow(p, [
      stats('a', { classes: [cls(0, [0.9, 0.91], [0.8, 0.8]), cls(1, [0.8, 0.82], [0.7, 0.7])] }),
      stats('b', { classes: [cls(0, [0.9, 0.9], [0.8, 0.8]), cls(1, [0.55, 0.8], [0.7, 0.7])] }),
    ]);
    assert.equal(ok!.passed, true, ok!.reason);
    assert.equal(ok!.events, 5000);
    assert.equal(bad!.passed, false);
    assert.match(bad!.reason, /class 1 recall 55\.0% against production's 80\.0% \(drop 25\.0/);
  });

  void it('fails on a precision drop, and leaves a class with too few labels unjudged', () => {
    const p = policy({ classGates: { maxPrecisionDrop: 0.05, minLabeled: 50 } });
    const [v] = judgeShadow(p, [
      stats('a', { classes: [cls(0, [0.9, 0.9], [0.6, 0.8]), cls(1, [0.1, 0.9], [0.1, 0.9], 20)] }),
    ]);
    assert.equal(v!.passed, false);
    assert.match(v!.reason, /class 0 precision/);
    assert.doesNotMatch(v!.reason, /class 1 recall 10/);
    assert.match(v!.reason, /class 1 recall not judged \(20 labeled < 50\)/);
  });

  void it('does not fail a class on a drop its few labels cannot show, and says so', () => {
    const p = policy({ classGates: { maxRecallDrop: 0.05 } });
    const noisy = cls(1, [0.7, 0.8], [0.7, 0.7], 40);
    noisy.recall.se = 0.1;
    const [v] = judgeShadow(p, [stats('a', { classes: [cls(0, [0.9, 0.9], [0.8, 0.8]), noisy] })]);
    assert.equal(v!.passed, true, v!.reason);
    assert.match(
      v!.reason,
      /class 1 recall 70\.0% against production's 80\.0% \(drop 10\.0 points, 95% lower bound -6\.4, 40 labeled\): above the 5\.0-point limit but not shown to be/,
    );
  });

  void it('judges the weighted disagreement, not the share among uploads', () => {
    const p = policy({});
    // Uploads are mostly disagreements (50%), but over every event the estimate is 5%.
    const [v] = judgeShadow(p, [stats('a', {})]);
    assert.equal(v!.passed, true, v!.reason);
    assert.equal(v!.disagreement, 0.05);
    const [w] = judgeShadow(p, [
      stats('a', {
        estimated: { events: 5000, disagreement: 0.4, latencyMs: { candidate: 10, production: 10 } },
      }),
    ]);
    assert.equal(w!.passed, false);
    assert.match(w!.reason, /estimated 40% of events, above 30%/);
  });

  void it('stops and rejects a cohort whose vehicles hit their budget, and stops collecting at the cap', () => {
    const p = policy({ uploadBudget: { perVehiclePerDay: 50, maxOverBudgetShare: 0.05, perCohort: 900 } });
    const edge = (overBudget: number, uploaded: number) => ({
      vehicles: 100,
      evaluated: 5000,
      priority: 600,
      disagreements: 250,
      uploaded,
      overBudget,
    });
    const checks = checkShadowBudget(p, [
      stats('over', { edge: edge(20, 500) }),
      stats('capped', { edge: edge(1, 950) }),
      stats('fine', { edge: edge(5, 500) }),
    ]);
    assert.deepEqual(
      checks.map((c) => c.action),
      ['reject', 'enough', 'continue'],
    );
    assert.match(checks[0]!.reason, /upload budget exceeded on 20% of vehicle-windows \(20\/100\), above 5%/);
    const [final] = judgeShadow(p, [stats('over', { edge: edge(20, 500) })]);
    assert.equal(final!.passed, false);
  });
});

void describe('the shadow activity with the upload filter', () => {
  let dir: string;
  let db: FleetDatabase;
  let conn: DuckDBConnection;
  let runner: OnnxModelRunner;
  let writer: EventWriter;
  let fleet: ReturnType<typeof createFleetActivities>;
  let analysis: ReturnType<typeof createAnalysisActivities>;
  const pack = (name: string) => {
    const bytes = readFileSync(join(ROOT, 'models', name, 'model.onnx'));
    return { bytes, digest: createHash('sha256').update(bytes).digest('hex') };
  };
  const production = pack('production');
  const candidate = pack('candidate-regress');
  const COHORT = 'hw3/eu';

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fleetgate-edge-'));
    writeFileSync(
      join(dir, 'fleet.yaml'),
      `apiVersion: fleetgate/v1
kind: Fleet
name: edgefleet
seed: 3
skus: [{ name: hw3, speedFactor: 10, latencyBudgetMs: 50 }]
cohorts: [{ name: ${COHORT}, sku: hw3, region: eu, vehicles: 1000, nightShare: 0.5 }]
eventsPerVehicleHour: 20
labels: { rate: 0.5, delay: 1h }
`,
    );
    const key = loadPseudonymKey(dir, {});
    db = await openFleetDatabase(join(dir, 'fleet.duckdb'));
    conn = db.connection;
    const blobs = new Map([production, candidate].map((m) => [m.digest, m.bytes]));
    runner = new OnnxModelRunner(async (digest) => blobs.get(digest));
    await initSimFleet({ conn, key, root: dir }, 'fleet.yaml', { [COHORT]: production.digest });
    const sim = await simulatedFleet(db, runner, key);
    writer = sim.writer;
    fleet = createFleetActivities({ conn, ota: sim.ota, runner, key, root: dir, feed: sim.feed });
    analysis = createAnalysisActivities({ conn });
  });

  after(async () => {
    await runner.close();
    await writer.close();
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const shadow = (
    rolloutId: string,
    edge?: { sample: number; lowConfidence: number; perVehiclePerDay?: number },
  ) =>
    fleet.runShadow({
      rolloutId,
      manifest: 'fleet.yaml',
      candidateDigest: candidate.digest,
      cohorts: [COHORT],
      share: 1,
      fromMs: T0,
      toMs: T0 + 6 * HOUR,
      ...(edge ? { edge } : {}),
    });

  void it('logs only the uploads, with counters that add up, and writes them once', async () => {
    const edge = { sample: 0.05, lowConfidence: 0.6, perVehiclePerDay: 400 };
    const first = await shadow('filtered', edge);
    const again = await shadow('filtered', edge);
    assert.deepEqual(again, { ...first, written: false });
    const [c] = await rows(conn, `SELECT * FROM shadow_edge WHERE rollout_id = 'filtered'`);
    assert.equal(num(c!.uploaded), first.events);
    assert.ok(
      num(c!.evaluated) > 3 * first.events,
      `${num(c!.evaluated)} evaluated, ${first.events} uploaded`,
    );
    // Every disagreement was uploaded with weight 1 (no vehicle reached 100 uploads in 6 hours).
    assert.equal(num(c!.over_budget), 0);
    const [d] = await rows(
      conn,
      `SELECT count(*) AS n, min(weight) AS lo, max(weight) AS hi FROM events
       WHERE rollout_id = 'filtered' AND pred_candidate <> pred_production`,
    );
    assert.equal(num(d!.n), num(c!.disagreements));
    assert.deepEqual([num(d!.lo), num(d!.hi)], [1, 1]);
  });

  void it('estimates the disagreement over every event, where the share among uploads is far off', async () => {
    const [s] = await analysis.analyze({
      rolloutId: 'filtered',
      phase: 'shadow',
      cohorts: [COHORT],
      asOfMs: T0 + 6 * HOUR,
    });
    const exact = s!.shadow!.edge.disagreements / s!.shadow!.edge.evaluated;
    const naive = s!.paired!.disagreements / s!.paired!.events;
    const est = s!.shadow!.estimated;
    assert.ok(
      Math.abs(est.disagreement - exact) < 0.15 * exact,
      `weighted ${est.disagreement} vs exact ${exact}`,
    );
    assert.ok(naive > 2 * exact, `the share among uploads (${naive}) is inflated against ${exact}`);
    assert.ok(Math.abs(est.events / s!.shadow!.edge.evaluated - 1) < 0.05);
  });

  void it('estimates class recall from labeled uploads like an unfiltered shadow does', async () => {
    await shadow('unfiltered');
    const asOf = T0 + 12 * HOUR;
    const [f] = await analysis.analyze({
      rolloutId: 'filtered',
      phase: 'shadow',
      cohorts: [COHORT],
      asOfMs: asOf,
    });
    const [u] = await analysis.analyze({
      rolloutId: 'unfiltered',
      phase: 'shadow',
      cohorts: [COHORT],
      asOfMs: asOf,
    });
    for (const c of [0, 1]) {
      const a = f!.shadow!.classes.find((x) => x.cls === c)!;
      const b = u!.shadow!.classes.find((x) => x.cls === c)!;
      assert.ok(a.labeled > 100 && b.labeled > 100);
      for (const m of ['candidate', 'production'] as const) {
        const gap = Math.abs(a.recall[m] - b.recall[m]);
        assert.ok(gap < 0.06, `class ${c} ${m} recall ${a.recall[m]} (filtered) vs ${b.recall[m]}`);
      }
    }
  });

  void it('gives the recall difference a standard error that matches its spread over repeated shadows', async () => {
    const diffs: number[] = [];
    const ses: number[] = [];
    for (let r = 0; r < 12; r++) {
      const id = `spread-${r}`;
      await fleet.runShadow({
        rolloutId: id,
        manifest: 'fleet.yaml',
        candidateDigest: candidate.digest,
        cohorts: [COHORT],
        share: 1,
        fromMs: T0,
        toMs: T0 + 2 * HOUR,
        edge: { sample: 0.2, lowConfidence: 0.6 },
      });
      const [s] = await analysis.analyze({
        rolloutId: id,
        phase: 'shadow',
        cohorts: [COHORT],
        asOfMs: T0 + 8 * HOUR,
      });
      const c = s!.shadow!.classes.find((x) => x.cls === 1)!;
      diffs.push(c.recall.candidate - c.recall.production);
      ses.push(c.recall.se);
    }
    const mean = diffs.reduce((a, b) => a + b, 0) / diffs.length;
    const sd = Math.sqrt(diffs.reduce((a, d) => a + (d - mean) ** 2, 0) / (diffs.length - 1));
    const se = ses.reduce((a, b) => a + b, 0) / ses.length;
    // 12 draws estimate a standard deviation within about ±40% (chi-square, 11 degrees of freedom).
    assert.ok(sd / se > 0.55 && sd / se < 1.6, `spread ${sd.toFixed(4)} against reported ${se.toFixed(4)}`);
  });

  void it('refuses an upload filter out of range, naming the field', async () => {
    await assert.rejects(
      shadow('bad', { sample: 1.5, lowConfidence: 0.6 }),
      /edge\.sample must be in \(0, 1\] \(got 1\.5\)/,
    );
    await assert.rejects(
      shadow('bad', { sample: 0.5, lowConfidence: 0.6, perVehiclePerDay: 2.5 }),
      /edge\.perVehiclePerDay must be a whole number/,
    );
  });
});

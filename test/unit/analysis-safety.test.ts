/**
 * Safety events, exposure and log latency in the analysis activity, against a real DuckDB: exact counts
 * on a small hand-made event log, incremental canary looks equal to the full query on every field while
 * labels arrive late, looks that never see a label before it arrives, and the simulated fleet flagging
 * the missed hazards of a candidate that misses more of them (the fixture models, real onnxruntime).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { DuckDBConnection } from '@duckdb/node-api';
import { canaryFull, canaryLook, createAnalysisActivities, eventsSide } from '../../activities/analysis';
import type { ArmStats, CohortStats } from '../../activities/contracts';
import { num, openFleetDatabase, rows } from '../../activities/db';
import type { FleetDatabase, Row } from '../../activities/db';
import { createFleetActivities, initSimFleet } from '../../activities/fleet';
import { ingestArrivedLabels } from '../../activities/labels';
import { makeRng } from '../../policies/rng';
import type { EventWriter } from '../../events/writer';
import { OnnxModelRunner } from '../../workers/model-runner';
import { loadPseudonymKey } from '../../workers/secrets';
import { simulatedFleet, T0 } from '../feed-support';

const ROOT = resolve(__dirname, '..', '..');
const HOUR = 3_600_000;

/** One hand-made event; `safety` and `exposure` as the fleet would write them. */
interface Ev {
  id: string;
  phase?: 'canary' | 'shadow';
  cohort: string;
  ts: number;
  arm: 'candidate' | 'production' | 'shadow';
  predC?: number;
  predP?: number;
  latC?: number;
  latP?: number;
  safetyC?: boolean;
  safetyP?: boolean;
  exposure: number;
}

async function insertEvents(conn: DuckDBConnection, rollout: string, events: Ev[]): Promise<void> {
  // Literals of a test's own values (ids and numbers it chose), so one statement inserts them all.
  const lit = (v: string | number | boolean | undefined) =>
    v === undefined ? 'NULL' : typeof v === 'string' ? `'${v}'` : String(v);
  const values = events.map((e) =>
    [
      e.id,
      rollout,
      'b',
      e.phase ?? 'canary',
      e.cohort,
      'pseudonym',
      e.ts,
      e.arm,
      e.predC,
      e.predP,
      e.latC,
      e.latP,
      e.safetyC,
      e.safetyP,
      e.exposure,
    ]
      .map(lit)
      .join(', '),
  );
  await conn.run(
    `INSERT INTO events (event_id, rollout_id, batch_id, phase, cohort, vehicle, ts_ms, arm,
                         pred_candidate, pred_production, lat_candidate, lat_production,
                         safety_candidate, safety_production, exposure_h)
     VALUES (${values.join('), (')})`,
  );
}

/** Queues a label with the simulated labeler: requested at the event, back at `availableAt`. */
async function queueLabel(
  conn: DuckDBConnection,
  rollout: string,
  id: string,
  ts: number,
  label: number,
  availableAt: number,
): Promise<void> {
  await conn.run(`INSERT INTO sim_truth VALUES ($id, $label::UTINYINT, $at)`, { id, label, at: availableAt });
  await conn.run(`INSERT INTO label_requests VALUES ($id, $rollout, $ts, 'sample', 1)`, { id, rollout, ts });
}

function close(actual: number, expected: number, what: string): void {
  assert.ok(
    Math.abs(actual - expected) <= 1e-9 * Math.max(1, Math.abs(expected)),
    `${what}: ${actual} != ${expected}`,
  );
}

/** Every statistic of two arms equal: counts exactly, sums up to the order they were added in. */
function sameArm(a: ArmStats, b: ArmStats, what: string): void {
  assert.equal(a.events, b.events, `${what} events`);
  assert.equal(a.labeled, b.labeled, `${what} labeled`);
  assert.equal(a.errors, b.errors, `${what} errors`);
  assert.equal(a.latency.n, b.latency.n, `${what} latency.n`);
  assert.equal(a.logLatency!.n, b.logLatency!.n, `${what} logLatency.n`);
  assert.equal(a.safety!.events, b.safety!.events, `${what} safety.events`);
  close(a.latency.sum, b.latency.sum, `${what} latency.sum`);
  close(a.latency.sumSq, b.latency.sumSq, `${what} latency.sumSq`);
  close(a.logLatency!.sum, b.logLatency!.sum, `${what} logLatency.sum`);
  close(a.logLatency!.sumSq, b.logLatency!.sumSq, `${what} logLatency.sumSq`);
  close(a.safety!.exposureHours, b.safety!.exposureHours, `${what} exposureHours`);
}

/** Rows of canaryLook / canaryFull as arm statistics by "cohort|arm". */
function byArm(found: Row[]): Map<string, ArmStats> {
  return new Map(
    found.map((r) => [
      `${String(r.cohort)}|${String(r.arm)}`,
      {
        events: num(r.events),
        labeled: num(r.labeled),
        errors: num(r.errors),
        latency: { n: num(r.lat_n), sum: num(r.lat_sum), sumSq: num(r.lat_sumsq) },
        logLatency: { n: num(r.loglat_n), sum: num(r.loglat_sum), sumSq: num(r.loglat_sumsq) },
        safety: { events: num(r.safety_events), exposureHours: num(r.exposure_h) },
      },
    ]),
  );
}

function sameLooks(a: Row[], b: Row[], what: string): void {
  const [x, y] = [byArm(a), byArm(b)];
  assert.deepEqual([...x.keys()].sort(), [...y.keys()].sort(), what);
  for (const [k, arm] of x) sameArm(arm, y.get(k)!, `${what} ${k}`);
}

function cohortOf(stats: CohortStats[], cohort: string): CohortStats {
  const found = stats.find((s) => s.cohort === cohort);
  assert.ok(found, `no statistics for ${cohort}`);
  return found;
}

const LN2 = Math.log(2);
const LN3 = Math.log(3);

void describe('safety events, exposure and log latency on a hand-made event log', () => {
  let db: FleetDatabase;
  let conn: DuckDBConnection;
  let analysis: ReturnType<typeof createAnalysisActivities>;
  const R = 'hand';
  // Exposure 0.25 vehicle-hours per event (4 events per vehicle-hour): sums of it are exact.
  const X = 0.25;

  before(async () => {
    db = await openFleetDatabase(':memory:');
    conn = db.connection;
    analysis = createAnalysisActivities({ conn });
    await insertEvents(conn, R, [
      // Cohort x, candidate arm: two missed hazards out of three events.
      { id: 'c1', cohort: 'x', ts: 0, arm: 'candidate', predC: 0, latC: 2, safetyC: true, exposure: X },
      { id: 'c2', cohort: 'x', ts: 10, arm: 'candidate', predC: 1, latC: 4, safetyC: false, exposure: X },
      { id: 'c3', cohort: 'x', ts: 20, arm: 'candidate', predC: 0, latC: 8, safetyC: true, exposure: X },
      // Cohort x, production arm: none missed.
      { id: 'p1', cohort: 'x', ts: 5, arm: 'production', predP: 0, latP: 1, safetyP: false, exposure: X },
      { id: 'p2', cohort: 'x', ts: 15, arm: 'production', predP: 1, latP: 3, safetyP: false, exposure: X },
      // Cohort y, production arm: one missed, and a zero latency, which has no log.
      { id: 'p3', cohort: 'y', ts: 30, arm: 'production', predP: 0, latP: 2, safetyP: true, exposure: X },
      { id: 'p4', cohort: 'y', ts: 40, arm: 'production', predP: 1, latP: 0, safetyP: false, exposure: X },
      // An event at the look's moment is not seen by it.
      { id: 'late', cohort: 'x', ts: 100, arm: 'candidate', predC: 0, latC: 2, safetyC: true, exposure: X },
      // Shadow: both models on the same three events.
      ...[
        { id: 's1', predC: 0, predP: 1, latC: 2, latP: 3, safetyC: true, safetyP: false },
        { id: 's2', predC: 0, predP: 0, latC: 4, latP: 6, safetyC: true, safetyP: true },
        { id: 's3', predC: 1, predP: 1, latC: 1, latP: 1, safetyC: false, safetyP: false },
      ].map((e, i) => ({
        ...e,
        phase: 'shadow' as const,
        cohort: 'x',
        ts: i,
        arm: 'shadow' as const,
        exposure: X,
      })),
    ]);
  });

  after(async () => {
    await db.close();
  });

  void it('counts safety events and exposure per canary arm, for the acting model only', async () => {
    const stats = await analysis.analyze({
      rolloutId: R,
      phase: 'canary',
      cohorts: ['x', 'y', 'z'],
      asOfMs: 100,
    });
    const x = cohortOf(stats, 'x');
    const y = cohortOf(stats, 'y');
    assert.deepEqual(x.candidate.safety, { events: 2, exposureHours: 0.75 });
    assert.deepEqual(x.production.safety, { events: 0, exposureHours: 0.5 });
    assert.deepEqual(y.candidate.safety, { events: 0, exposureHours: 0 });
    assert.deepEqual(y.production.safety, { events: 1, exposureHours: 0.5 });
    assert.deepEqual(cohortOf(stats, 'z').candidate.safety, { events: 0, exposureHours: 0 });
    // An earlier look sees only the events before it.
    const early = await analysis.analyze({ rolloutId: R, phase: 'canary', cohorts: ['x'], asOfMs: 12 });
    assert.deepEqual(cohortOf(early, 'x').candidate.safety, { events: 1, exposureHours: 0.5 });
    assert.deepEqual(cohortOf(early, 'x').production.safety, { events: 0, exposureHours: 0.25 });
  });

  void it('sums ln(latency) and its square per arm; a zero latency is left out of the log moments', async () => {
    const stats = await analysis.analyze({ rolloutId: R, phase: 'canary', cohorts: ['x', 'y'], asOfMs: 100 });
    const x = cohortOf(stats, 'x');
    const y = cohortOf(stats, 'y');
    // ln 2 + ln 4 + ln 8 = 6 ln 2; (ln 2)² + (2 ln 2)² + (3 ln 2)² = 14 (ln 2)².
    assert.equal(x.candidate.logLatency!.n, 3);
    close(x.candidate.logLatency!.sum, 6 * LN2, 'x candidate log sum');
    close(x.candidate.logLatency!.sumSq, 14 * LN2 * LN2, 'x candidate log sumSq');
    assert.equal(x.production.logLatency!.n, 2);
    close(x.production.logLatency!.sum, LN3, 'x production log sum');
    close(x.production.logLatency!.sumSq, LN3 * LN3, 'x production log sumSq');
    assert.equal(y.production.latency.n, 2);
    assert.equal(y.production.logLatency!.n, 1);
    close(y.production.logLatency!.sum, LN2, 'y production log sum');
    assert.deepEqual(y.candidate.logLatency, { n: 0, sum: 0, sumSq: 0 });
  });

  void it('counts shadow safety events from each model on the same events', async () => {
    const [x] = await analysis.analyze({ rolloutId: R, phase: 'shadow', cohorts: ['x'], asOfMs: 100 });
    assert.deepEqual(x!.candidate.safety, { events: 2, exposureHours: 0.75 });
    assert.deepEqual(x!.production.safety, { events: 1, exposureHours: 0.75 });
    assert.equal(x!.candidate.logLatency!.n, 3);
    close(x!.candidate.logLatency!.sum, 3 * LN2, 'shadow candidate log sum');
    close(x!.candidate.logLatency!.sumSq, 5 * LN2 * LN2, 'shadow candidate log sumSq');
    close(x!.production.logLatency!.sum, LN3 + Math.log(6), 'shadow production log sum');
    assert.deepEqual(x!.paired, { events: 3, disagreements: 1 });
  });
});

void describe('incremental canary looks with late labels', () => {
  let db: FleetDatabase;
  let conn: DuckDBConnection;
  const R = 'late';

  before(async () => {
    db = await openFleetDatabase(':memory:');
    conn = db.connection;
  });

  after(async () => {
    await db.close();
  });

  void it('never sees a label before it arrives, even when it is already in the labels table', async () => {
    await insertEvents(conn, 'one', [
      { id: 'o1', cohort: 'x', ts: 10, arm: 'candidate', predC: 0, latC: 2, safetyC: true, exposure: 0.5 },
    ]);
    await queueLabel(conn, 'one', 'o1', 10, 1, 500);
    assert.equal(await ingestArrivedLabels(conn, 'one', 400), 0, 'not arrived by 400');
    assert.equal(await ingestArrivedLabels(conn, 'one', 1000), 1);
    const [atLabeled] = await rows(
      conn,
      `SELECT arrived_at_ms, cohort, arm, phase, ts_ms, err_candidate FROM labels`,
    );
    assert.deepEqual(
      { ...atLabeled, arrived_at_ms: num(atLabeled!.arrived_at_ms), ts_ms: num(atLabeled!.ts_ms) },
      { arrived_at_ms: 500, cohort: 'x', arm: 'candidate', phase: 'canary', ts_ms: 10, err_candidate: true },
    );
    const before = byArm(await canaryLook(conn, 'one', 400)).get('x|candidate')!;
    assert.equal(before.events, 1);
    assert.equal(before.labeled, 0, 'the label had not arrived at 400');
    assert.deepEqual(
      before.safety,
      { events: 1, exposureHours: 0.5 },
      'safety is known at once, without labels',
    );
    sameLooks(await canaryLook(conn, 'one', 400), await canaryFull(conn, 'one', 400), 'as of 400');
    const later = byArm(await canaryLook(conn, 'one', 500)).get('x|candidate')!;
    assert.deepEqual([later.labeled, later.errors], [1, 1]);
    sameLooks(await canaryLook(conn, 'one', 500), await canaryFull(conn, 'one', 500), 'as of 500');
  });

  void it('adds up to the full query on every field across looks while labels arrive', async () => {
    // 3000 canary events over 10 hours in two cohorts, every third labeled 1-5 hours after its event.
    const rng = makeRng('analysis-safety|late');
    const events: Ev[] = [];
    for (let i = 0; i < 3000; i++) {
      const ts = Math.floor(rng() * 10 * HOUR);
      const candidate = rng() < 0.3;
      const truth = rng() < 0.3 ? 1 : 0;
      const pred = rng() < 0.8 ? truth : 1 - truth;
      const lat = Math.exp(1 + 0.5 * rng());
      const safety = truth === 1 && pred === 0;
      events.push({
        id: `e${i}`,
        cohort: i % 2 === 0 ? 'x' : 'y',
        ts,
        arm: candidate ? 'candidate' : 'production',
        ...(candidate
          ? { predC: pred, latC: lat, safetyC: safety }
          : { predP: pred, latP: lat, safetyP: safety }),
        exposure: 0.05,
      });
      if (i % 3 === 0) await queueLabel(conn, R, `e${i}`, ts, truth, ts + Math.round((1 + 4 * rng()) * HOUR));
    }
    await insertEvents(conn, R, events);
    let withNewLabels = 0;
    let previousLabeled = 0;
    for (let t = 1; t <= 16; t++) {
      const asOf = t * HOUR;
      await ingestArrivedLabels(conn, R, asOf);
      const look = await canaryLook(conn, R, asOf);
      sameLooks(look, await canaryFull(conn, R, asOf), `look ${t}`);
      sameLooks(await canaryLook(conn, R, asOf), look, `repeated look ${t}`);
      const labeled = [...byArm(look).values()].reduce((n, a) => n + a.labeled, 0);
      if (labeled > previousLabeled) withNewLabels++;
      previousLabeled = labeled;
    }
    assert.ok(withNewLabels >= 5, `labels arrived over ${withNewLabels} looks`);
    assert.equal(previousLabeled, 1000, 'every label has arrived by the last look');
    // A look earlier than the latest stored one is answered in full and equal too.
    sameLooks(await canaryLook(conn, R, 3.5 * HOUR), await canaryFull(conn, R, 3.5 * HOUR), 'earlier look');
    const all = byArm(await canaryFull(conn, R, 16 * HOUR));
    const safety = [...all.values()].reduce((n, a) => n + a.safety!.events, 0);
    assert.equal(safety, events.filter((e) => e.safetyC === true || e.safetyP === true).length);
  });
});

void describe('safety events in the simulated fleet', () => {
  const FLEET = 'safetyfleet';
  const MANIFEST = `apiVersion: fleetgate/v1
kind: Fleet
name: ${FLEET}
seed: 11
skus:
  - { name: hw3, speedFactor: 40, latencyBudgetMs: 50 }
cohorts:
  - { name: day, sku: hw3, region: eu, vehicles: 300, nightShare: 0.05 }
  - { name: night, sku: hw3, region: nordic, vehicles: 300, nightShare: 0.9 }
eventsPerVehicleHour: 16
labels: { rate: 0.1, delay: 1h }
`;
  let dir: string;
  let db: FleetDatabase;
  let conn: DuckDBConnection;
  let runner: OnnxModelRunner;
  const model = (pack: string) => {
    const bytes = readFileSync(join(ROOT, 'models', pack, 'model.onnx'));
    return { bytes, digest: createHash('sha256').update(bytes).digest('hex') };
  };
  const production = model('production');
  const candidate = model('candidate-regress');
  let writer: EventWriter;
  let fleet: ReturnType<typeof createFleetActivities>;
  let analysis: ReturnType<typeof createAnalysisActivities>;
  const base = { rolloutId: 'sim', manifest: 'fleet.yaml', cohorts: ['day', 'night'] };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fleetgate-safety-'));
    writeFileSync(join(dir, 'fleet.yaml'), MANIFEST);
    const key = loadPseudonymKey(dir, {});
    db = await openFleetDatabase(join(dir, 'fleet.duckdb'));
    conn = db.connection;
    const blobs = new Map([production, candidate].map((m) => [m.digest, m.bytes]));
    runner = new OnnxModelRunner(async (digest) => blobs.get(digest));
    const sim = await simulatedFleet(db, runner, key);
    writer = sim.writer;
    fleet = createFleetActivities({ conn, ota: sim.ota, runner, key, root: dir, feed: sim.feed });
    analysis = createAnalysisActivities({ conn });
    await initSimFleet({ conn, key, root: dir }, 'fleet.yaml', {
      day: production.digest,
      night: production.digest,
    });
  });

  after(async () => {
    await runner.close();
    await writer.close();
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  void it('flags exactly the missed hazards, with 1 / eventsPerVehicleHour of exposure each', async () => {
    await fleet.runShadow({
      ...base,
      candidateDigest: candidate.digest,
      share: 1,
      fromMs: T0,
      toMs: T0 + HOUR,
    });
    const [check] = await rows(
      conn,
      `SELECT count(*) FILTER (WHERE e.safety_candidate IS DISTINCT FROM (t.truth = 1 AND e.pred_candidate = 0)) AS bad_c,
              count(*) FILTER (WHERE e.safety_production IS DISTINCT FROM (t.truth = 1 AND e.pred_production = 0)) AS bad_p,
              count(*) FILTER (WHERE e.exposure_h <> 1 / 16) AS bad_x, count(*) AS n
       FROM events e JOIN sim_labeler t USING (event_id) WHERE e.phase = 'shadow'`,
    );
    assert.deepEqual([num(check!.bad_c), num(check!.bad_p), num(check!.bad_x)], [0, 0, 0]);
    assert.ok(num(check!.n) > 5000, `${num(check!.n)} events`);

    const stats = await analysis.analyze({ ...base, phase: 'shadow', asOfMs: T0 + HOUR });
    const night = cohortOf(stats, 'night');
    const day = cohortOf(stats, 'day');
    // The regressing candidate leans on the camera, which fades at night: by day it misses about half
    // the hazards production misses, at night about as many (on the same frames, paired).
    const missed = (s: CohortStats) => s.candidate.safety!.events / s.production.safety!.events;
    assert.ok(night.candidate.safety!.events > 0 && day.production.safety!.events > 0);
    assert.ok(
      missed(night) > 1.5 * missed(day),
      JSON.stringify({
        night: [night.candidate.safety, night.production.safety],
        day: [day.candidate.safety, day.production.safety],
      }),
    );
    for (const s of stats) {
      for (const arm of [s.candidate, s.production])
        close(arm.safety!.exposureHours, arm.events / 16, 'exposure');
    }
  });

  void it('logs the acting model’s safety events in canary, and log-latency sums equal a direct computation', async () => {
    await fleet.deliverWave({ ...base, wave: 1, percent: 50, digest: candidate.digest });
    await fleet.collectTelemetry({
      ...base,
      candidateDigest: candidate.digest,
      fromMs: T0 + HOUR,
      toMs: T0 + 2 * HOUR,
    });
    const stats = await analysis.analyze({ ...base, phase: 'canary', asOfMs: T0 + 2 * HOUR });
    const raw = await rows(
      conn,
      `SELECT cohort, arm, lat_candidate, lat_production, safety_candidate, safety_production
       FROM events WHERE rollout_id = 'sim' AND phase = 'canary'`,
    );
    for (const s of stats) {
      for (const armName of ['candidate', 'production'] as const) {
        const mine = raw.filter((r) => r.cohort === s.cohort && r.arm === armName);
        const lat = mine.map((r) => Number(armName === 'candidate' ? r.lat_candidate : r.lat_production));
        const logs = lat.map(Math.log);
        const arm = s[armName];
        assert.ok(mine.length > 0, `${s.cohort} ${armName} has events`);
        assert.equal(arm.logLatency!.n, lat.length);
        close(
          arm.logLatency!.sum,
          logs.reduce((a, b) => a + b, 0),
          `${s.cohort} ${armName} log sum`,
        );
        close(
          arm.logLatency!.sumSq,
          logs.reduce((a, b) => a + b * b, 0),
          `${s.cohort} ${armName} log sumSq`,
        );
        const missed = mine.filter(
          (r) => (armName === 'candidate' ? r.safety_candidate : r.safety_production) === true,
        );
        assert.equal(arm.safety!.events, missed.length);
        close(arm.safety!.exposureHours, mine.length / 16, `${s.cohort} ${armName} exposure`);
        // The model that did not act has no safety flag on the event.
        const other = mine.filter(
          (r) => (armName === 'candidate' ? r.safety_production : r.safety_candidate) !== null,
        );
        assert.equal(other.length, 0);
      }
    }
    assert.ok(cohortOf(stats, 'night').candidate.safety!.events > 0);
    sameLooks(
      await canaryLook(conn, 'sim', T0 + 2 * HOUR),
      await canaryFull(conn, 'sim', T0 + 2 * HOUR),
      'simulated',
    );
  });
});

void describe('a fleet database from before safety and log latency', () => {
  void it('gets the new columns, labels get their look columns, and stale stored looks are dropped; looks read its events', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fleetgate-migrate-'));
    const file = join(dir, 'fleet.duckdb');
    try {
      // The tables as they were, with one canary event, its label and one stored look.
      const old = await openFleetDatabase(join(dir, 'scratch.duckdb'));
      await old.connection.run(`
        ATTACH '${file}' AS old;
        CREATE TABLE old.events (
          event_id VARCHAR PRIMARY KEY, rollout_id VARCHAR NOT NULL, batch_id VARCHAR NOT NULL,
          phase VARCHAR NOT NULL, cohort VARCHAR NOT NULL, vehicle VARCHAR NOT NULL, ts_ms BIGINT NOT NULL,
          arm VARCHAR NOT NULL, pred_candidate UTINYINT, pred_production UTINYINT, conf_candidate FLOAT,
          conf_production FLOAT, lat_candidate DOUBLE, lat_production DOUBLE);
        CREATE TABLE old.labels (
          event_id VARCHAR PRIMARY KEY, rollout_id VARCHAR NOT NULL, label UTINYINT NOT NULL,
          arrived_at_ms BIGINT NOT NULL);
        CREATE TABLE old.look_stats (
          rollout_id VARCHAR NOT NULL, phase VARCHAR NOT NULL, as_of_ms BIGINT NOT NULL, cohort VARCHAR NOT NULL,
          arm VARCHAR NOT NULL, events BIGINT NOT NULL, labeled BIGINT NOT NULL, errors BIGINT NOT NULL,
          lat_n BIGINT NOT NULL, lat_sum DOUBLE NOT NULL, lat_sumsq DOUBLE NOT NULL,
          PRIMARY KEY (rollout_id, phase, as_of_ms, cohort, arm));
        CREATE TABLE old.looks (rollout_id VARCHAR NOT NULL, phase VARCHAR NOT NULL, as_of_ms BIGINT NOT NULL,
          PRIMARY KEY (rollout_id, phase, as_of_ms));
        INSERT INTO old.events VALUES ('e1', 'r', 'b', 'canary', 'x', 'p', 10, 'candidate', 0, NULL, 0.9, NULL, 2, NULL);
        INSERT INTO old.labels VALUES ('e1', 'r', 1, 50);
        INSERT INTO old.look_stats VALUES ('r', 'canary', 100, 'x', 'candidate', 1, 1, 1, 1, 2, 4);
        INSERT INTO old.looks VALUES ('r', 'canary', 100);
        DETACH old;`);
      await old.close();
      const db = await openFleetDatabase(file);
      try {
        const conn = db.connection;
        const [label] = await rows(
          conn,
          `SELECT phase, cohort, arm, ts_ms, err_candidate, err_production FROM labels`,
        );
        assert.deepEqual(
          { ...label, ts_ms: num(label!.ts_ms) },
          {
            phase: 'canary',
            cohort: 'x',
            arm: 'candidate',
            ts_ms: 10,
            err_candidate: true,
            err_production: null,
          },
        );
        assert.equal(num((await rows(conn, `SELECT count(*) AS n FROM looks`))[0]!.n), 0);
        // Batches from before have no statistics: a look over their events reads the events.
        assert.equal(num((await rows(conn, `SELECT count(*) AS n FROM batch_stats`))[0]!.n), 0);
        const side = await eventsSide(conn, { rollout: 'r', prev: Number.MIN_SAFE_INTEGER, asof: 100 });
        assert.equal(side.source, 'events');
        // The look is recomputed from the event log: the old event has no safety flag or exposure.
        const look = byArm(await canaryLook(conn, 'r', 100)).get('x|candidate')!;
        assert.deepEqual([look.events, look.labeled, look.errors, look.logLatency!.n], [1, 1, 1, 1]);
        assert.deepEqual(look.safety, { events: 0, exposureHours: 0 });
        sameLooks(await canaryLook(conn, 'r', 100), await canaryFull(conn, 'r', 100), 'migrated');
      } finally {
        await db.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

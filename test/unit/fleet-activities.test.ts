/**
 * The fleet, label and analysis activities against a real DuckDB file and real onnxruntime sessions of
 * the fixture models: over-the-air jobs and their compensations are idempotent, event batches are
 * written once, labels arrive only after their delay, and the analysis returns per-cohort sufficient
 * statistics that add up to the event log. Nothing here may leave a raw vehicle id in any table.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { DuckDBConnection } from '@duckdb/node-api';
import { canaryFull, canaryLook, createAnalysisActivities, eventsSide } from '../../activities/analysis';
import { num, openFleetDatabase, rows } from '../../activities/db';
import type { FleetDatabase } from '../../activities/db';
import { INSTALL, type OtaChannel } from '../../activities/deps';
import { createFleetActivities, initSimFleet } from '../../activities/fleet';
import type { BatchResult } from '../../activities/contracts';
import type { WindowResult } from '../../activities/telemetry';
import { createLabelActivities, ingestArrivedLabels } from '../../activities/labels';
import { parseDuration } from '../../policies/duration';
import { loadFleetManifest } from '../../fleet/manifest';
import { pseudonym } from '../../fleet/pseudonym';
import { simVehicles } from '../../sim/fleet';
import { targetCount, waveTargets } from '../../fleet/assignment';
import { SimulatedOta } from '../../sim/ota';
import type { EventWriter } from '../../events/writer';
import { OnnxModelRunner } from '../../workers/model-runner';
import { loadPseudonymKey } from '../../workers/secrets';
import { simulatedFleet, T0 } from '../feed-support';

const ROOT = resolve(__dirname, '..', '..');
const HOUR = 3_600_000;
const FLEET = 'unitfleet';
const A = 'hw3/eu';
const B = 'hw4/nordic';
const SIZES = { [A]: 2500, [B]: 400 } as const;

const MANIFEST = `apiVersion: fleetgate/v1
kind: Fleet
name: ${FLEET}
seed: 5
skus:
  - { name: hw3, speedFactor: 40, latencyBudgetMs: 50 }
  - { name: hw4, speedFactor: 15, latencyBudgetMs: 50 }
cohorts:
  - { name: ${A}, sku: hw3, region: eu, vehicles: ${SIZES[A]}, nightShare: 0.1 }
  - { name: ${B}, sku: hw4, region: nordic, vehicles: ${SIZES[B]}, nightShare: 0.8 }
eventsPerVehicleHour: 20
labels: { rate: 0.2, delay: 2h }
`;
const DELAY = parseDuration('2h')!;

function model(pack: string): { bytes: Buffer; digest: string } {
  const bytes = readFileSync(join(ROOT, 'models', pack, 'model.onnx'));
  return { bytes, digest: createHash('sha256').update(bytes).digest('hex') };
}

async function one(conn: DuckDBConnection, sql: string, params: (string | number)[] = []): Promise<number> {
  const [row] = await rows(conn, sql, params);
  return num(row ? Object.values(row)[0] : 0);
}

/** What a batch took late and left out (a batch's result carries them beside BatchResult's fields). */
function readOf(result: BatchResult): Pick<WindowResult, 'late' | 'mismatched'> {
  const { late, mismatched } = result as WindowResult;
  return { late, mismatched };
}

function errorType(err: unknown): string | undefined {
  return (err as { type?: string }).type;
}

void describe('fleet, label and analysis activities', () => {
  let dir: string;
  let db: FleetDatabase;
  let conn: DuckDBConnection;
  let runner: OnnxModelRunner;
  let key: Buffer;
  let writer: EventWriter;
  let fleet: ReturnType<typeof createFleetActivities>;
  let labels: ReturnType<typeof createLabelActivities>;
  let analysis: ReturnType<typeof createAnalysisActivities>;
  const production = model('production');
  const candidate = model('candidate-regress');
  const base = { manifest: 'fleet.yaml' };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fleetgate-fleet-'));
    writeFileSync(join(dir, 'fleet.yaml'), MANIFEST);
    key = loadPseudonymKey(dir, {});
    db = await openFleetDatabase(join(dir, 'fleet.duckdb'));
    conn = db.connection;
    const blobs = new Map([production, candidate].map((m) => [m.digest, m.bytes]));
    runner = new OnnxModelRunner(async (digest) => blobs.get(digest));
    const sim = await simulatedFleet(db, runner, key);
    writer = sim.writer;
    fleet = createFleetActivities({ conn, ota: sim.ota, runner, key, root: dir, feed: sim.feed });
    labels = createLabelActivities({ conn });
    analysis = createAnalysisActivities({ conn });
  });

  after(async () => {
    await runner.close();
    await writer.close();
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  void it('refuses to describe a fleet that was never initialised', async () => {
    await assert.rejects(fleet.describeFleet({ rolloutId: 'r0', ...base }), (err) => {
      assert.equal(errorType(err), 'NotFound');
      assert.match((err as Error).message, /initialise the simulated fleet/);
      return true;
    });
  });

  void it('initialises the simulated fleet once, with production in slot A', async () => {
    const prod = { [A]: production.digest, [B]: production.digest };
    const first = await initSimFleet({ conn, key, root: dir }, 'fleet.yaml', prod);
    assert.deepEqual(first, { fleet: FLEET, vehicles: SIZES[A] + SIZES[B], created: true });
    const second = await initSimFleet({ conn, key, root: dir }, 'fleet.yaml', prod);
    assert.deepEqual(second, { fleet: FLEET, vehicles: SIZES[A] + SIZES[B], created: false });
    assert.equal(
      await one(conn, `SELECT count(*) FROM vehicles WHERE slot_a = ? AND active = 'a'`, [production.digest]),
      2900,
    );
    const summary = await fleet.describeFleet({ rolloutId: 'r0', ...base });
    assert.equal(summary.name, FLEET);
    assert.deepEqual(
      summary.cohorts.map((c) => c.name),
      [A, B],
    );
  });

  void it('writes a shadow batch once, with both models on the same events', async () => {
    const input = {
      rolloutId: 'r1',
      ...base,
      candidateDigest: candidate.digest,
      cohorts: [A, B],
      share: 0.5,
      fromMs: T0,
      toMs: T0 + HOUR,
    };
    const first = await fleet.runShadow(input);
    assert.equal(first.written, true);
    assert.equal(first.batchId, `r1:shadow:${T0}-${T0 + HOUR}`);
    assert.deepEqual(readOf(first), { late: 0, mismatched: 0 });
    const expected = 0.5 * (SIZES[A] + SIZES[B]) * 20;
    assert.ok(Math.abs(first.events - expected) < 5 * Math.sqrt(expected), `${first.events} events`);
    const second = await fleet.runShadow(input);
    assert.deepEqual(second, { ...first, written: false });
    assert.equal(
      await one(conn, `SELECT count(*) FROM events WHERE batch_id = ?`, [first.batchId]),
      first.events,
    );
    assert.equal(
      await one(
        conn,
        `SELECT count(*) FROM events WHERE batch_id = ? AND arm = 'shadow'
         AND pred_candidate IS NOT NULL AND pred_production IS NOT NULL
         AND lat_candidate > 0 AND lat_production > 0 AND ts_ms >= ? AND ts_ms < ?`,
        [first.batchId, T0, T0 + HOUR],
      ),
      first.events,
    );
    // Only the shadow share of each cohort produced events.
    assert.equal(
      await one(conn, `SELECT count(DISTINCT vehicle) <= ? FROM events WHERE batch_id = ? AND cohort = ?`, [
        0.5 * SIZES[A],
        first.batchId,
        A,
      ]),
      1,
    );
    // Every disagreement and every low-confidence event is requested in a priority tier.
    assert.equal(
      await one(
        conn,
        `SELECT count(*) FROM events e LEFT JOIN label_requests r USING (event_id)
         WHERE e.batch_id = ? AND (e.pred_candidate <> e.pred_production OR least(e.conf_candidate, e.conf_production) < 0.6)
           AND (r.reason IS NULL OR r.reason NOT IN ('disagreement', 'rare', 'low_confidence'))`,
        [first.batchId],
      ),
      0,
    );
    assert.ok((await one(conn, `SELECT count(*) FROM label_requests WHERE reason = 'sample'`)) > 0);
    // Its statistics were written with it, once: per cohort, one row per model, over all its events.
    const stats = await rows(
      conn,
      `SELECT s.cohort, s.arm, s.events, s.lat_n, s.min_ts_ms, s.max_ts_ms, e.n, e.lo, e.hi
       FROM batch_stats s
       JOIN (SELECT cohort, count(*) AS n, min(ts_ms) AS lo, max(ts_ms) AS hi FROM events
             WHERE batch_id = $batch GROUP BY cohort) e USING (cohort)
       WHERE s.batch_id = $batch ORDER BY s.cohort, s.arm`,
      { batch: first.batchId },
    );
    assert.deepEqual(
      stats.map((r) => [r.cohort, r.arm]),
      [
        [A, 'candidate'],
        [A, 'production'],
        [B, 'candidate'],
        [B, 'production'],
      ],
    );
    for (const r of stats) assert.deepEqual([num(r.events), num(r.lat_n)], [num(r.n), num(r.n)]);
    const batchLo = Math.min(...stats.map((r) => num(r.lo)));
    const batchHi = Math.max(...stats.map((r) => num(r.hi)));
    for (const r of stats) assert.deepEqual([num(r.min_ts_ms), num(r.max_ts_ms)], [batchLo, batchHi]);
  });

  void it('delivers a wave once: a retry returns the recorded result and logs nothing new', async () => {
    const input = { rolloutId: 'r1', ...base, wave: 1, percent: 5, cohorts: [A], digest: candidate.digest };
    const first = await fleet.deliverWave(input);
    assert.deepEqual(first, { jobId: 'r1-w1', vehicles: { [A]: Math.ceil(0.05 * SIZES[A]) } });
    const second = await fleet.deliverWave(input);
    assert.deepEqual(second, first);
    const ops = await rows(conn, `SELECT op, cohort, vehicles FROM ota_ops WHERE job_id = 'r1-w1'`);
    assert.deepEqual(ops, [{ op: 'deliver', cohort: A, vehicles: 125 }]);
    // A/B slots: the candidate went into slot B, which is now active; production stays in slot A.
    assert.equal(
      await one(conn, `SELECT count(*) FROM vehicles WHERE slot_b = ? AND active = 'b' AND slot_a = ?`, [
        candidate.digest,
        production.digest,
      ]),
      125,
    );
  });

  void it('grows a wave monotonically: earlier vehicles stay, only new ones are delivered to', async () => {
    const input = {
      rolloutId: 'r1',
      ...base,
      wave: 2,
      percent: 25,
      cohorts: [A, B],
      digest: candidate.digest,
    };
    const result = await fleet.deliverWave(input);
    assert.deepEqual(result.vehicles, { [A]: 625, [B]: 100 });
    assert.equal(
      await one(conn, `SELECT count(*) FROM ota_targets WHERE job_id = 'r1-w2' AND cohort = ?`, [A]),
      500,
    );
    const wave1 = await rows(conn, `SELECT vehicle FROM ota_targets WHERE job_id = 'r1-w1'`);
    const running = new Set(
      (
        await rows(conn, `SELECT vehicle FROM vehicles WHERE active = 'b' AND slot_b = ?`, [candidate.digest])
      ).map((r) => String(r.vehicle)),
    );
    for (const r of wave1) assert.ok(running.has(String(r.vehicle)));
    const pseudonymsA = (await rows(conn, `SELECT vehicle FROM vehicles WHERE cohort = ?`, [A])).map((r) =>
      String(r.vehicle),
    );
    assert.deepEqual(
      new Set(waveTargets(pseudonymsA, key, 'r1', 25)),
      new Set([...running].filter((v) => pseudonymsA.includes(v))),
    );
  });

  void it('reverts a wave once per cohort: a second revert reverts nothing and logs nothing', async () => {
    const input = { rolloutId: 'r1', ...base, wave: 2, cohorts: [A] };
    assert.deepEqual(await fleet.revertWave(input), { reverted: 500 });
    assert.deepEqual(await fleet.revertWave(input), { reverted: 0 });
    const reverts = await rows(conn, `SELECT job_id, cohort, vehicles FROM ota_ops WHERE op = 'revert'`);
    assert.deepEqual(reverts, [{ job_id: 'r1-w2', cohort: A, vehicles: 500 }]);
    const byCohort = await rows(
      conn,
      `SELECT cohort, count(*) AS n FROM vehicles
       WHERE (CASE active WHEN 'a' THEN slot_a ELSE slot_b END) = ? GROUP BY cohort ORDER BY cohort`,
      [candidate.digest],
    );
    assert.deepEqual(
      byCohort.map((r) => [r.cohort, num(r.n)]),
      [
        [A, 125],
        [B, 100],
      ],
    );
    assert.deepEqual(await fleet.revertWave({ rolloutId: 'r1', ...base, wave: 9, cohorts: [A] }), {
      reverted: 0,
    });
  });

  void it('promotes a cohort to every vehicle, once', async () => {
    const input = { rolloutId: 'r1', ...base, cohort: B, digest: candidate.digest };
    assert.deepEqual(await fleet.promoteCohort(input), { vehicles: SIZES[B] });
    assert.deepEqual(await fleet.promoteCohort(input), { vehicles: SIZES[B] });
    const ops = await rows(conn, `SELECT op, vehicles FROM ota_ops WHERE job_id = 'r1-promote-${B}'`);
    assert.deepEqual(ops, [{ op: 'promote', vehicles: SIZES[B] - 100 }]);
    assert.equal(
      await one(
        conn,
        `SELECT count(*) FROM vehicles WHERE cohort = ? AND (CASE active WHEN 'a' THEN slot_a ELSE slot_b END) = ?`,
        [B, candidate.digest],
      ),
      SIZES[B],
    );
  });

  void it('writes a canary batch once, filling only the acting model', async () => {
    const input = {
      rolloutId: 'r1',
      ...base,
      candidateDigest: candidate.digest,
      cohorts: [A, B],
      fromMs: T0 + HOUR,
      toMs: T0 + 2 * HOUR,
    };
    const first = await fleet.collectTelemetry(input);
    assert.deepEqual(readOf(first), { late: 0, mismatched: 0 });
    assert.equal(first.written, true);
    const expected = (SIZES[A] + SIZES[B]) * 20;
    assert.ok(Math.abs(first.events - expected) < 5 * Math.sqrt(expected), `${first.events} events`);
    assert.deepEqual(await fleet.collectTelemetry(input), { ...first, written: false });
    // Its statistics per (cohort, arm), written with it and not again by the retry, add up to it.
    const [stats] = await rows(
      conn,
      `SELECT sum(events) AS n, count(*) AS groups, min(min_ts_ms) AS lo, max(max_ts_ms) AS hi,
              count(DISTINCT (min_ts_ms, max_ts_ms)) AS ranges
       FROM batch_stats WHERE batch_id = ? AND phase = 'canary'`,
      [first.batchId],
    );
    assert.equal(num(stats!.n), first.events);
    assert.equal(
      num(stats!.groups),
      await one(conn, `SELECT count(DISTINCT (cohort, arm)) FROM events WHERE batch_id = ?`, [first.batchId]),
    );
    assert.equal(num(stats!.ranges), 1);
    assert.ok(num(stats!.lo) >= T0 + HOUR && num(stats!.hi) < T0 + 2 * HOUR);
    const arms = await rows(
      conn,
      `SELECT cohort, arm,
              count(*) FILTER (WHERE arm = 'candidate' AND (pred_production IS NOT NULL OR conf_production IS NOT NULL OR lat_production IS NOT NULL OR pred_candidate IS NULL)) AS bad_c,
              count(*) FILTER (WHERE arm = 'production' AND (pred_candidate IS NOT NULL OR conf_candidate IS NOT NULL OR lat_candidate IS NOT NULL OR pred_production IS NULL)) AS bad_p,
              count(DISTINCT vehicle) AS vehicles
       FROM events WHERE batch_id = ? GROUP BY cohort, arm ORDER BY cohort, arm`,
      [first.batchId],
    );
    for (const r of arms) assert.equal(num(r.bad_c) + num(r.bad_p), 0);
    // Cohort B was promoted: all of it is in the candidate arm; A runs 5% candidate.
    assert.deepEqual(
      arms.filter((r) => r.cohort === B).map((r) => r.arm),
      ['candidate'],
    );
    const aCandidate = arms.find((r) => r.cohort === A && r.arm === 'candidate');
    assert.ok(aCandidate && num(aCandidate.vehicles) <= 125);
    // The canary only samples: a labels.rate share, seeded.
    const sampled = await one(
      conn,
      `SELECT avg(CASE WHEN r.event_id IS NULL THEN 0 ELSE 1 END) FROM events e
       LEFT JOIN label_requests r USING (event_id) WHERE e.batch_id = ?`,
      [first.batchId],
    );
    assert.ok(Math.abs(sampled - 0.2) < 0.02, `sampled ${sampled}`);
  });

  void it('lets labels arrive only after their delay, so coverage grows with time', async () => {
    const looks = [HOUR, 2 * HOUR, 3 * HOUR, 4 * HOUR, 5 * HOUR, 2 * HOUR + 2 * DELAY];
    const coverage: number[] = [];
    for (const at of looks) {
      const asOfMs = T0 + at;
      const c = await labels.labelCoverage({ rolloutId: 'r1', asOfMs });
      assert.equal(await one(conn, `SELECT count(*) FROM labels WHERE arrived_at_ms > ?`, [asOfMs]), 0);
      coverage.push(c.coverage);
      if (at >= 2 * HOUR) assert.ok(c.requested > 0);
    }
    assert.equal(coverage[0], 0, 'no label can arrive within the first hour when the delay is at least 1h');
    for (let i = 2; i < looks.length; i++) assert.ok(coverage[i]! >= coverage[i - 1]!, coverage.join(' '));
    assert.ok(coverage[3]! > coverage[1]!);
    assert.equal(coverage.at(-1), 1);
    assert.equal(
      await one(
        conn,
        `SELECT count(*) FROM labels l JOIN events e USING (event_id) JOIN label_requests r USING (event_id)
         WHERE l.arrived_at_ms < greatest(e.ts_ms, r.requested_at_ms) + ? * 0.5`,
        [DELAY],
      ),
      0,
    );
    assert.equal(
      await one(conn, `SELECT count(*) FROM labels l JOIN label_requests r USING (event_id)`),
      await one(conn, `SELECT count(*) FROM labels`),
    );
  });

  void it('reduces canary events to per-cohort statistics that add up to the event log', async () => {
    const asOfMs = T0 + 2 * HOUR + 2 * DELAY;
    const stats = await analysis.analyze({
      rolloutId: 'r1',
      phase: 'canary',
      cohorts: [A, B, 'none/x'],
      asOfMs,
    });
    assert.deepEqual(
      stats.map((s) => s.cohort),
      [A, B, 'none/x'],
    );
    const total = stats.reduce((n, s) => n + s.candidate.events + s.production.events, 0);
    assert.equal(
      total,
      await one(conn, `SELECT count(*) FROM events WHERE phase = 'canary' AND rollout_id = 'r1'`),
    );
    const labeled = stats.reduce((n, s) => n + s.candidate.labeled + s.production.labeled, 0);
    assert.equal(
      labeled,
      await one(
        conn,
        `SELECT count(*) FROM events e JOIN labels l USING (event_id) WHERE e.phase = 'canary'`,
      ),
    );
    for (const s of stats) {
      for (const arm of [s.candidate, s.production]) {
        assert.ok(arm.errors <= arm.labeled && arm.labeled <= arm.events);
        assert.equal(arm.latency.n, arm.events);
        if (arm.events > 0) assert.ok(arm.latency.sum > 0 && arm.latency.sumSq > 0);
      }
      assert.equal(s.paired, undefined);
    }
    const b = stats.find((s) => s.cohort === B)!;
    assert.equal(b.production.events, 0);
    const none = {
      events: 0,
      labeled: 0,
      errors: 0,
      latency: { n: 0, sum: 0, sumSq: 0 },
      logLatency: { n: 0, sum: 0, sumSq: 0 },
      safety: { events: 0, exposureHours: 0 },
    };
    assert.deepEqual(stats.at(-1), { cohort: 'none/x', candidate: none, production: none });
    // A look at an earlier moment sees only what had happened by then.
    const early = await analysis.analyze({
      rolloutId: 'r1',
      phase: 'canary',
      cohorts: [A],
      asOfMs: T0 + 1.5 * HOUR,
    });
    const earlyEvents = early[0]!.candidate.events + early[0]!.production.events;
    assert.equal(
      earlyEvents,
      await one(conn, `SELECT count(*) FROM events WHERE phase = 'canary' AND cohort = ? AND ts_ms < ?`, [
        A,
        T0 + 1.5 * HOUR,
      ]),
    );
    assert.equal(early[0]!.candidate.labeled + early[0]!.production.labeled, 0);
  });

  void it('a look reads only what is new since the previous one, and adds up to the full query', async () => {
    const key = (r: Record<string, unknown>) => `${String(r.cohort)}|${String(r.arm)}`;
    const counts = ['events', 'labeled', 'errors', 'lat_n', 'loglat_n', 'safety_events'];
    const sums = ['lat_sum', 'lat_sumsq', 'loglat_sum', 'loglat_sumsq', 'exposure_h'];
    // Counts exactly; sums up to the rounding of adding the same numbers in another order.
    const same = (a: Record<string, unknown>[], b: Record<string, unknown>[], message: string) => {
      const byKey = new Map(b.map((r) => [key(r), r]));
      assert.deepEqual(new Set(a.map(key)), new Set(byKey.keys()), message);
      for (const r of a) {
        const o = byKey.get(key(r))!;
        for (const c of counts) assert.equal(Number(r[c]), Number(o[c]), `${message}: ${key(r)} ${c}`);
        for (const c of sums) {
          const [x, y] = [Number(r[c]), Number(o[c])];
          assert.ok(
            Math.abs(x - y) <= 1e-9 * Math.max(1, Math.abs(y)),
            `${message}: ${key(r)} ${c} ${x} ${y}`,
          );
        }
      }
    };
    // Start the look history over, then look every half hour of fleet time while events and labels arrive.
    await conn.run(`DELETE FROM look_stats WHERE rollout_id = 'r1'`);
    await conn.run(`DELETE FROM looks WHERE rollout_id = 'r1'`);
    let looks = 0;
    const times = Array.from({ length: 12 }, (_, k) => (k + 1) * 0.5 * HOUR).filter(
      (t) => t <= 2 * HOUR + 3 * DELAY,
    );
    // The canary batch covers [1 h, 2 h): a look at 1.5 h cuts it, and every look reads batch statistics.
    assert.ok(times.includes(1.5 * HOUR));
    let previous = Number.MIN_SAFE_INTEGER;
    for (const at of [...times, 2 * HOUR + 3 * DELAY]) {
      const asOfMs = T0 + at;
      const side = await eventsSide(conn, { rollout: 'r1', prev: previous, asof: asOfMs });
      assert.equal(side.source, 'batch_stats', `look as of ${asOfMs}`);
      previous = asOfMs;
      await ingestArrivedLabels(conn, 'r1', asOfMs);
      const incremental = await canaryLook(conn, 'r1', asOfMs);
      const again = await canaryLook(conn, 'r1', asOfMs);
      const full = await canaryFull(conn, 'r1', asOfMs);
      same(incremental, full, `look as of ${asOfMs}`);
      same(again, full, 'a repeated look changes nothing');
      looks++;
    }
    const stored = await one(conn, `SELECT count(*) FROM looks WHERE rollout_id = 'r1' AND phase = 'canary'`);
    assert.equal(stored, new Set([...times, 2 * HOUR + 3 * DELAY]).size, 'each look recorded once');
    assert.ok(looks > 4);
    const withLabels = await one(
      conn,
      `SELECT count(DISTINCT as_of_ms) FROM look_stats WHERE rollout_id = 'r1' AND labeled > 0`,
    );
    assert.ok(withLabels >= 2, `labels arrived over several looks: ${withLabels}`);
  });

  void it('reduces shadow events to paired statistics of both models', async () => {
    const asOfMs = T0 + HOUR + 2 * DELAY;
    const stats = await analysis.analyze({ rolloutId: 'r1', phase: 'shadow', cohorts: [A, B], asOfMs });
    const events = await one(conn, `SELECT count(*) FROM events WHERE phase = 'shadow'`);
    const disagreements = await one(
      conn,
      `SELECT count(*) FROM events WHERE phase = 'shadow' AND pred_candidate <> pred_production`,
    );
    assert.equal(
      stats.reduce((n, s) => n + s.paired!.events, 0),
      events,
    );
    assert.equal(
      stats.reduce((n, s) => n + s.paired!.disagreements, 0),
      disagreements,
    );
    for (const s of stats) {
      assert.equal(s.candidate.events, s.paired!.events);
      assert.equal(s.production.events, s.paired!.events);
      assert.equal(s.candidate.labeled, s.production.labeled);
      assert.ok(s.candidate.labeled > 0);
    }
    // The regressing candidate leans on the camera: at night (cohort B) it errs more than production.
    const b = stats.find((s) => s.cohort === B)!;
    assert.ok(b.candidate.errors > b.production.errors, JSON.stringify(b));
  });

  void it('stores pseudonyms only: no raw vehicle id appears in any table', async () => {
    const raw = [`${FLEET}-0-0`, `${FLEET}-1-17`];
    const vehicles = new Set(
      (await rows(conn, `SELECT vehicle FROM vehicles`)).map((r) => String(r.vehicle)),
    );
    for (const id of raw) assert.ok(vehicles.has(pseudonym(key, id)));
    const cols = await rows(
      conn,
      `SELECT table_name, column_name FROM information_schema.columns WHERE data_type = 'VARCHAR'`,
    );
    assert.ok(cols.length > 20);
    for (const c of cols) {
      const hits = await one(conn, `SELECT count(*) FROM "${c.table_name}" WHERE "${c.column_name}" LIKE ?`, [
        `%${FLEET}-%`,
      ]);
      assert.equal(hits, 0, `${c.table_name}.${c.column_name}`);
    }
  });
});

/**
 * The label wait of rollouts recorded before the per-cohort label wait: it asks, once, for the labels of
 * the low-confidence events that have none, and each of these late requests waits the labeler's delay
 * from the request. Those rollouts' batches were written with the simulated labeler's queue in the fleet
 * database (`sim_truth`), which the hand-made events here stand for; newer rollouts make every request
 * as their events are read.
 */
void describe('late label requests of a rollout from before the label wait', () => {
  let db: FleetDatabase;
  let labels: ReturnType<typeof createLabelActivities>;

  before(async () => {
    db = await openFleetDatabase(':memory:');
    labels = createLabelActivities({ conn: db.connection });
    // [id, hours after T0, confidence, delay as a share of DELAY, requested as the event was logged]
    const ev: [string, number, number, number, boolean][] = [
      ['e0', 0.2, 0.3, 0.5, true],
      ['e1', 0.5, 0.4, 0.5, false],
      ['e2', 1, 0.55, 1.5, false],
      ['e3', 1.5, 0.9, 1, false],
      ['e4', 2.5, 0.3, 1, false],
    ];
    for (const [id, h, conf, d, requested] of ev) {
      const ts = T0 + h * HOUR;
      await db.connection.run(
        `INSERT INTO events (event_id, rollout_id, batch_id, phase, cohort, vehicle, ts_ms, arm,
                             pred_candidate, conf_candidate)
         VALUES ($id, 'old', 'b', 'canary', 'x', 'p', $ts, 'candidate', 0, $conf)`,
        { id, ts, conf },
      );
      await db.connection.run(`INSERT INTO sim_truth VALUES ($id, 0, $at)`, { id, at: ts + d * DELAY });
      if (requested) {
        await db.connection.run(`INSERT INTO label_requests VALUES ($id, 'old', $ts, 'sample', 0.2)`, {
          id,
          ts,
        });
      }
    }
  });

  after(async () => {
    await db.close();
  });

  void it('requests priority labels once, and late requests wait their own delay', async () => {
    const conn = db.connection;
    const asOfMs = T0 + 2 * HOUR;
    // e1 and e2: unsure, logged before the look, not requested yet; e0 was, e3 is sure, e4 is later.
    assert.deepEqual(await labels.requestLabels({ rolloutId: 'old', asOfMs }), { requested: 2 });
    assert.deepEqual(await labels.requestLabels({ rolloutId: 'old', asOfMs }), { requested: 0 });
    const later = await labels.labelCoverage({ rolloutId: 'old', asOfMs: asOfMs + DELAY * 0.4 });
    assert.equal(
      await one(
        conn,
        `SELECT count(*) FROM labels l JOIN label_requests r USING (event_id) WHERE r.requested_at_ms = ?`,
        [asOfMs],
      ),
      0,
    );
    assert.deepEqual([later.labeled, later.requested], [1, 3]);
    const done = await labels.labelCoverage({ rolloutId: 'old', asOfMs: asOfMs + 2 * DELAY });
    assert.equal(done.coverage, 1);
    // Each late label came back its delay after the request, not after the event.
    assert.equal(
      await one(
        conn,
        `SELECT count(*) FROM labels l JOIN label_requests r USING (event_id) JOIN sim_truth t USING (event_id)
         JOIN events e USING (event_id)
         WHERE r.requested_at_ms = ? AND l.arrived_at_ms = t.available_at_ms + (r.requested_at_ms - e.ts_ms)`,
        [asOfMs],
      ),
      2,
    );
    assert.deepEqual(await labels.labelCoverage({ rolloutId: 'other', asOfMs: T0 + 10 * HOUR }), {
      requested: 0,
      labeled: 0,
      coverage: 0,
      young: 0,
      cohorts: {},
    });
  });
});

/**
 * Consecutive waves through the activities on a real DuckDB: each wave reaches exactly its share of
 * every cohort (no install failures or deferrals in this fleet), keeps every vehicle of the wave before,
 * and reaches the vehicles the keyed ranking names; a reverted wave is reached again by the next one.
 */
void describe('consecutive canary waves', () => {
  const NAME = 'wavefleet';
  const COHORTS = { 'c0/x': 1000, 'c1/y': 333 } as const;
  const names = Object.keys(COHORTS) as (keyof typeof COHORTS)[];
  const PROD = 'd'.repeat(64);
  const CAND = 'e'.repeat(64);
  const key = Buffer.alloc(32, 0x3c);
  let dir: string;
  let db: FleetDatabase;
  let conn: DuckDBConnection;
  let fleet: ReturnType<typeof createFleetActivities>;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fleetgate-waves-'));
    writeFileSync(
      join(dir, 'fleet.yaml'),
      [
        'apiVersion: fleetgate/v1',
        'kind: Fleet',
        `name: ${NAME}`,
        'skus: [{ name: hw3, speedFactor: 10, latencyBudgetMs: 10 }]',
        'cohorts:',
        ...names.map(
          (c) => `  - { name: ${c}, sku: hw3, region: eu, vehicles: ${COHORTS[c]}, nightShare: 0.1 }`,
        ),
        'labels: { rate: 0.1, delay: 1h }',
      ].join('\n'),
    );
    db = await openFleetDatabase(join(dir, 'fleet.duckdb'));
    conn = db.connection;
    const unusedRunner = {
      run: () => Promise.reject(new Error('no inference here')),
      contract: () => Promise.reject(new Error('no inference here')),
      modelBytes: () => Promise.reject(new Error('no inference here')),
      close: async () => undefined,
    };
    fleet = createFleetActivities({
      conn,
      ota: new SimulatedOta(conn),
      runner: unusedRunner,
      key,
      root: dir,
    });
    await initSimFleet(
      { conn, key, root: dir },
      'fleet.yaml',
      Object.fromEntries(names.map((c) => [c, PROD])),
    );
  });

  after(async () => {
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function onCandidate(cohort: string): Promise<Set<string>> {
    const found = await rows(
      conn,
      `SELECT vehicle FROM vehicles
       WHERE cohort = ? AND (CASE active WHEN 'a' THEN slot_a ELSE slot_b END) = ?`,
      [cohort, CAND],
    );
    return new Set(found.map((r) => String(r.vehicle)));
  }

  void it('grows every cohort to exactly its share, keeping the vehicles of the wave before', async () => {
    const input = { rolloutId: 'rw', manifest: 'fleet.yaml', cohorts: [...names], digest: CAND };
    const all = new Map<string, string[]>();
    for (const c of names) {
      const found = await rows(conn, `SELECT vehicle FROM vehicles WHERE cohort = ?`, [c]);
      all.set(
        c,
        found.map((r) => String(r.vehicle)),
      );
    }
    let previous = new Map<string, Set<string>>(names.map((c) => [c, new Set<string>()]));
    for (const [wave, percent] of [
      [1, 5],
      [2, 25],
      [3, 60],
      [4, 100],
    ] as const) {
      const result = await fleet.deliverWave({ ...input, wave, percent });
      assert.deepEqual(
        await fleet.deliverWave({ ...input, wave, percent }),
        result,
        'a retry changes nothing',
      );
      const now = new Map<string, Set<string>>();
      for (const c of names) {
        const expected = targetCount(COHORTS[c], percent / 100);
        const running = await onCandidate(c);
        assert.equal(running.size, expected, `wave ${wave} (${percent}%) of ${c}`);
        assert.equal(result.vehicles[c], expected);
        for (const v of previous.get(c)!) assert.ok(running.has(v), `wave ${wave} keeps ${v} of ${c}`);
        assert.deepEqual(running, new Set(waveTargets(all.get(c)!, key, 'rw', percent)));
        const targeted = await one(conn, `SELECT count(*) FROM ota_targets WHERE job_id = ? AND cohort = ?`, [
          `rw-w${wave}`,
          c,
        ]);
        assert.equal(targeted, expected - previous.get(c)!.size, `wave ${wave} targets only new vehicles`);
        now.set(c, running);
      }
      previous = now;
    }
  });

  void it('reaches the vehicles of a reverted wave again in the next one', async () => {
    const input = { rolloutId: 'rv', manifest: 'fleet.yaml', cohorts: [...names], digest: 'f'.repeat(64) };
    await fleet.deliverWave({ ...input, wave: 1, percent: 10 });
    await fleet.deliverWave({ ...input, wave: 2, percent: 30 });
    const reverted = await fleet.revertWave({ ...input, wave: 2 });
    const share = (p: number) => names.reduce((s, c) => s + targetCount(COHORTS[c], p), 0);
    assert.deepEqual(reverted, { reverted: share(0.3) - share(0.1) });
    const third = await fleet.deliverWave({ ...input, wave: 3, percent: 50 });
    for (const c of names) assert.equal(third.vehicles[c], targetCount(COHORTS[c], 0.5));
    assert.equal(
      await one(conn, `SELECT count(*) FROM ota_targets WHERE job_id = 'rv-w3'`),
      share(0.5) - share(0.1),
    );
  });
});

/**
 * The simulated channel chooses a wave's targets and draws their installs inside the fleet database;
 * any other channel's inventory is ranked and drawn in JavaScript. Both must give the same result, the
 * same targets and the same slots, with install failures and deferrals.
 */
void describe('wave delivery inside the fleet database', () => {
  const NAME = 'twinfleet';
  const COHORTS = { 'c0/x': 700, 'c1/y': 260 } as const;
  const names = Object.keys(COHORTS) as (keyof typeof COHORTS)[];
  const key = Buffer.alloc(32, 0x71);
  const dirs: string[] = [];
  const dbs: FleetDatabase[] = [];

  after(async () => {
    for (const db of dbs) await db.close();
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  async function open(generic: boolean, outcomes?: OtaChannel['installOutcomes']) {
    const dir = mkdtempSync(join(tmpdir(), 'fleetgate-twin-'));
    dirs.push(dir);
    writeFileSync(
      join(dir, 'fleet.yaml'),
      [
        'apiVersion: fleetgate/v1',
        'kind: Fleet',
        `name: ${NAME}`,
        'skus: [{ name: hw3, speedFactor: 10, latencyBudgetMs: 10, installFailureRate: 0.1 }]',
        'cohorts:',
        `  - { name: c0/x, sku: hw3, region: eu, vehicles: ${COHORTS['c0/x']}, nightShare: 0.1, availability: { online: 0.8, parked: 0.9 } }`,
        `  - { name: c1/y, sku: hw3, region: eu, vehicles: ${COHORTS['c1/y']}, nightShare: 0.1 }`,
        'labels: { rate: 0.1, delay: 1h }',
      ].join('\n'),
    );
    const db = await openFleetDatabase(join(dir, 'fleet.duckdb'));
    dbs.push(db);
    const conn = db.connection;
    const sim = new SimulatedOta(conn);
    // Not a SimulatedOta: deliverWave takes the path of any other channel.
    const ota = generic
      ? {
          vehicleCount: sim.vehicleCount.bind(sim),
          inventory: sim.inventory.bind(sim),
          hasVehicles: sim.hasVehicles.bind(sim),
          running: sim.running.bind(sim),
          recordedJob: sim.recordedJob.bind(sim),
          createJob: sim.createJob.bind(sim),
          revertJob: sim.revertJob.bind(sim),
          installOutcomes: outcomes ?? sim.installOutcomes.bind(sim),
        }
      : sim;
    const unusedRunner = {
      run: () => Promise.reject(new Error('no inference here')),
      contract: () => Promise.reject(new Error('no inference here')),
      modelBytes: () => Promise.reject(new Error('no inference here')),
      close: async () => undefined,
    };
    await initSimFleet(
      { conn, key, root: dir },
      'fleet.yaml',
      Object.fromEntries(names.map((c) => [c, 'd'.repeat(64)])),
    );
    return { conn, fleet: createFleetActivities({ conn, ota, runner: unusedRunner, key, root: dir }) };
  }

  void it('gives the same results, targets and slots as ranking the inventory in JavaScript', async () => {
    const inDb = await open(false);
    const inJs = await open(true);
    const input = { rolloutId: 'rt', manifest: 'fleet.yaml', cohorts: [...names], digest: 'e'.repeat(64) };
    const steps: [string, number, number][] = [
      ['deliver', 1, 5],
      ['deliver', 2, 25],
      ['revert', 2, 0],
      ['deliver', 3, 40],
      ['deliver', 4, 100],
    ];
    for (const [op, wave, percent] of steps) {
      if (op === 'revert') {
        assert.deepEqual(
          await inDb.fleet.revertWave({ ...input, wave }),
          await inJs.fleet.revertWave({ ...input, wave }),
        );
        continue;
      }
      const got = await inDb.fleet.deliverWave({ ...input, wave, percent });
      assert.deepEqual(got, await inJs.fleet.deliverWave({ ...input, wave, percent }), `wave ${wave}`);
      assert.ok(
        got.installs && names.every((c) => got.installs![c]!.failed + got.installs![c]!.deferred > 0),
      );
    }
    const state = async (conn: DuckDBConnection) => [
      await rows(conn, `SELECT vehicle, cohort, slot_a, slot_b, active FROM vehicles ORDER BY vehicle`),
      await rows(conn, `SELECT job_id, vehicle, cohort, reverted, prev_active FROM ota_targets ORDER BY ALL`),
      await rows(conn, `SELECT job_id, op, cohort, vehicles FROM ota_ops ORDER BY seq`),
      await rows(conn, `SELECT job_id, result FROM ota_jobs ORDER BY job_id`),
    ];
    assert.deepEqual(await state(inDb.conn), await state(inJs.conn));
  });

  void it('takes install outcomes from the channel and draws none itself', async () => {
    // A channel whose vehicles report their own installs (AWS IoT Jobs) hands every target to the job,
    // whatever install model the manifest gives the simulated fleet.
    const asked: string[] = [];
    const { conn, fleet } = await open(true, (wave, targets) => {
      asked.push(`${wave.cohort}:${wave.wave}:${targets.length}`);
      return Promise.resolve(new Uint8Array(targets.length).fill(INSTALL.installed));
    });
    const input = { rolloutId: 'own', manifest: 'fleet.yaml', cohorts: [...names], digest: 'e'.repeat(64) };
    const got = await fleet.deliverWave({ ...input, wave: 1, percent: 25 });
    assert.deepEqual(
      asked,
      names.map((c) => `${c}:1:${got.installs![c]!.targeted}`),
    );
    for (const c of names) {
      const { targeted, failed, deferred } = got.installs![c]!;
      assert.ok(targeted > 0);
      assert.deepEqual({ failed, deferred }, { failed: 0, deferred: 0 }, c);
      assert.equal(got.vehicles[c], targeted);
      assert.equal(
        await one(conn, `SELECT count(*) FROM ota_targets WHERE job_id = 'own-w1' AND cohort = ?`, [c]),
        targeted,
      );
    }
  });

  void it('refuses a channel that reports install outcomes for other targets, delivering nothing', async () => {
    const { conn, fleet } = await open(true, () => Promise.resolve(new Uint8Array(1)));
    const input = { rolloutId: 'short', manifest: 'fleet.yaml', cohorts: [...names], digest: 'e'.repeat(64) };
    await assert.rejects(
      fleet.deliverWave({ ...input, wave: 1, percent: 25 }),
      (err: Error & { type?: string }) =>
        err.type === 'Unavailable' &&
        /OTA job short-w1: the channel reported 1 install outcome\(s\) for the \d+ new target\(s\) of cohort c0\/x; nothing was delivered/.test(
          err.message,
        ),
    );
    assert.equal(await one(conn, `SELECT count(*) FROM ota_jobs WHERE job_id = 'short-w1'`), 0);
    assert.equal(await one(conn, `SELECT count(*) FROM ota_targets WHERE job_id = 'short-w1'`), 0);
  });

  void it('stores the vehicles of each cohort in generation order', async () => {
    const { conn } = await open(false);
    const manifest = loadFleetManifest(join(dirs.at(-1)!, 'fleet.yaml'));
    for (const { cohort, pseudonyms } of simVehicles(manifest, key)) {
      const stored = await rows(conn, `SELECT vehicle FROM vehicles WHERE cohort = ?`, [cohort.name]);
      assert.deepEqual(
        stored.map((r) => String(r.vehicle)),
        pseudonyms,
      );
    }
  });
});

/**
 * Per-batch statistics written at ingestion (`recordBatchStats`) and canary looks that sum them, against
 * a real DuckDB: looks whose window cuts batches in the middle, batches that overlap in time, retried
 * batches, events written without batch statistics, and events changed after their batch was summarised.
 * Every look must equal the full query (`canaryFull`) on every field; the tests also say which source a
 * look read its events from, so a fast path that silently stopped being taken would show.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { DuckDBConnection } from '@duckdb/node-api';
import { canaryFull, canaryLook, eventsSide, recordBatchStats } from '../../activities/analysis';
import { exec, num, openFleetDatabase, rows, transaction } from '../../activities/db';
import type { FleetDatabase, Row } from '../../activities/db';
import { ingestArrivedLabels } from '../../activities/labels';
import { makeRng } from '../../policies/rng';

const HOUR = 3_600_000;

/**
 * Writes one canary batch of `n` random events in [fromMs, toMs) the way ingestion does: events, then
 * their batch statistics, then the `batches` row, in one transaction. A third of the events get a label
 * queued with the simulated labeler, back 1-4 hours after the event.
 */
async function writeBatch(
  conn: DuckDBConnection,
  rollout: string,
  fromMs: number,
  toMs: number,
  n: number,
  options: { stats?: boolean } = {},
): Promise<string> {
  const batchId = `${rollout}:canary:${fromMs}-${toMs}`;
  const rng = makeRng(`batch-stats|${batchId}`);
  const values: string[] = [];
  const truth: string[] = [];
  const requests: string[] = [];
  for (let i = 0; i < n; i++) {
    const id = `'${batchId}.${i}'`;
    const ts = fromMs + Math.floor(rng() * (toMs - fromMs));
    const candidate = rng() < 0.3;
    const label = rng() < 0.3 ? 1 : 0;
    const pred = rng() < 0.8 ? label : 1 - label;
    // Now and then a zero latency, which has no log.
    const lat = rng() < 0.02 ? 0 : Math.exp(1 + 0.5 * rng());
    const safety = label === 1 && pred === 0;
    const [pc, pp, lc, lp, sc, sp] = candidate
      ? [pred, 'NULL', lat, 'NULL', safety, 'NULL']
      : ['NULL', pred, 'NULL', lat, 'NULL', safety];
    const cohort = rng() < 0.5 ? 'x' : 'y';
    values.push(
      `${id}, '${rollout}', '${batchId}', 'canary', '${cohort}', 'p', ${ts}, '${candidate ? 'candidate' : 'production'}', ${pc}, ${pp}, ${lc}, ${lp}, ${sc}, ${sp}, 0.05`,
    );
    if (i % 3 === 0) {
      truth.push(`${id}, ${label}, ${ts + Math.round((1 + 3 * rng()) * HOUR)}`);
      requests.push(`${id}, '${rollout}', ${ts}, 'sample', 1`);
    }
  }
  await transaction(conn, async () => {
    if (n > 0) {
      await conn.run(
        `INSERT INTO events (event_id, rollout_id, batch_id, phase, cohort, vehicle, ts_ms, arm,
                             pred_candidate, pred_production, lat_candidate, lat_production,
                             safety_candidate, safety_production, exposure_h)
         VALUES (${values.join('), (')})`,
      );
    }
    if (options.stats !== false) {
      await recordBatchStats(conn, { batchId, rolloutId: rollout, phase: 'canary', fromMs, toMs });
    }
    if (truth.length > 0) {
      await conn.run(`INSERT INTO sim_truth VALUES (${truth.join('), (')})`);
      await conn.run(`INSERT INTO label_requests VALUES (${requests.join('), (')})`);
    }
    await exec(conn, `INSERT INTO batches VALUES (?, ?, 'canary', ?)`, [batchId, rollout, n]);
  });
  return batchId;
}

const COUNTS = ['events', 'labeled', 'errors', 'lat_n', 'loglat_n', 'safety_events'];
const SUMS = ['lat_sum', 'lat_sumsq', 'loglat_sum', 'loglat_sumsq', 'exposure_h'];

/** Two looks equal: the same (cohort, arm)s, counts exactly, sums up to the order they were added in. */
function sameLooks(a: Row[], b: Row[], what: string): void {
  const key = (r: Row) => `${String(r.cohort)}|${String(r.arm)}`;
  const byKey = new Map(b.map((r) => [key(r), r]));
  assert.deepEqual(a.map(key).sort(), [...byKey.keys()].sort(), what);
  for (const r of a) {
    const o = byKey.get(key(r))!;
    for (const c of COUNTS) assert.equal(num(r[c]), num(o[c]), `${what}: ${key(r)} ${c}`);
    for (const c of SUMS) {
      const [x, y] = [num(r[c]), num(o[c])];
      assert.ok(Math.abs(x - y) <= 1e-9 * Math.max(1, Math.abs(y)), `${what}: ${key(r)} ${c} ${x} ${y}`);
    }
  }
}

/** Where a canary look over [prev, asOf) would read its events from. */
async function source(conn: DuckDBConnection, rollout: string, prev: number, asof: number): Promise<string> {
  return (await eventsSide(conn, { rollout, prev, asof })).source;
}

/** Looks at each of `times` (labels ingested first), each equal to the full query and repeatable. */
async function lookAll(conn: DuckDBConnection, rollout: string, times: number[]): Promise<void> {
  for (const asOf of times) {
    await ingestArrivedLabels(conn, rollout, asOf);
    const look = await canaryLook(conn, rollout, asOf);
    sameLooks(look, await canaryFull(conn, rollout, asOf), `${rollout} look as of ${asOf / HOUR} h`);
    sameLooks(await canaryLook(conn, rollout, asOf), look, `${rollout} repeated look as of ${asOf / HOUR} h`);
  }
}

async function one(conn: DuckDBConnection, sql: string, params: (string | number)[] = []): Promise<number> {
  const [row] = await rows(conn, sql, params);
  return num(row ? Object.values(row)[0] : 0);
}

void describe('canary looks from per-batch statistics', () => {
  let db: FleetDatabase;
  let conn: DuckDBConnection;

  before(async () => {
    db = await openFleetDatabase(':memory:');
    conn = db.connection;
  });

  after(async () => {
    await db.close();
  });

  void it('writes per (cohort, arm) the statistics of the batch and its min and max time', async () => {
    const batchId = await writeBatch(conn, 'shape', 0, HOUR, 400);
    const stats = await rows(
      conn,
      `SELECT cohort, arm, events, min_ts_ms, max_ts_ms FROM batch_stats WHERE batch_id = ? ORDER BY ALL`,
      [batchId],
    );
    const direct = await rows(
      conn,
      `SELECT cohort, arm, count(*) AS events, min(min(ts_ms)) OVER () AS min_ts_ms, max(max(ts_ms)) OVER () AS max_ts_ms
       FROM events WHERE batch_id = ? GROUP BY cohort, arm ORDER BY ALL`,
      [batchId],
    );
    assert.equal(stats.length, 4);
    assert.deepEqual(
      stats.map((r) => [r.cohort, r.arm, num(r.events), num(r.min_ts_ms), num(r.max_ts_ms)]),
      direct.map((r) => [r.cohort, r.arm, num(r.events), num(r.min_ts_ms), num(r.max_ts_ms)]),
    );
    // A retried write of the same batch's statistics changes nothing.
    const before = await rows(conn, `SELECT * FROM batch_stats WHERE batch_id = ? ORDER BY ALL`, [batchId]);
    await transaction(conn, () =>
      recordBatchStats(conn, { batchId, rolloutId: 'shape', phase: 'canary', fromMs: 0, toMs: HOUR }),
    );
    assert.deepEqual(
      await rows(conn, `SELECT * FROM batch_stats WHERE batch_id = ? ORDER BY ALL`, [batchId]),
      before,
    );
  });

  void it('equals the full query when looks cut batches in the middle and batches overlap in time', async () => {
    const R = 'cut';
    // Hourly batches, one of them empty, and a late two-hour batch overlapping two hourly ones.
    for (let h = 0; h < 8; h++) await writeBatch(conn, R, h * HOUR, (h + 1) * HOUR, h === 3 ? 0 : 300);
    await writeBatch(conn, R, 5.5 * HOUR, 7.5 * HOUR, 200);
    // A window wholly inside one batch, one that cuts two, looks on batch edges, and one that cuts the
    // overlapping batch on both sides.
    assert.equal(await source(conn, R, 0.25 * HOUR, 0.75 * HOUR), 'batch_stats');
    assert.equal(await source(conn, R, 1.5 * HOUR, 4.5 * HOUR), 'batch_stats');
    // A window from a batch's first event to its last leaves the last out: the batch straddles it.
    const [edge] = await rows(
      conn,
      `SELECT min(min_ts_ms) AS lo, max(max_ts_ms) AS hi FROM batch_stats WHERE batch_id = ?`,
      [`${R}:canary:${HOUR}-${2 * HOUR}`],
    );
    assert.equal(await source(conn, R, num(edge!.lo), num(edge!.hi)), 'batch_stats');
    await lookAll(conn, R, [0.5 * HOUR, 0.75 * HOUR, 2.5 * HOUR, 3 * HOUR, 5 * HOUR, 6 * HOUR, 7 * HOUR]);
    assert.equal(await source(conn, R, 7 * HOUR, 9 * HOUR), 'batch_stats');
    await lookAll(conn, R, [9 * HOUR, 12 * HOUR]);
    const covered = await one(conn, `SELECT count(*) FROM looks WHERE rollout_id = ?`, [R]);
    assert.equal(covered, 9, 'each look stored once');
    // Every label has arrived by the last look, and the looks counted each once.
    const labeled = await one(conn, `SELECT sum(labeled) FROM look_stats WHERE rollout_id = ?`, [R]);
    assert.equal(labeled, await one(conn, `SELECT count(*) FROM label_requests WHERE rollout_id = ?`, [R]));
  });

  void it('counts a retried batch once', async () => {
    const R = 'retry';
    await writeBatch(conn, R, 0, HOUR, 300);
    const n = await one(conn, `SELECT count(*) FROM batch_stats WHERE rollout_id = ?`, [R]);
    // The retry finds the batch written; the transaction that would write it again is rolled back.
    await assert.rejects(writeBatch(conn, R, 0, HOUR, 300), /[Cc]onstraint/);
    assert.equal(await one(conn, `SELECT count(*) FROM batch_stats WHERE rollout_id = ?`, [R]), n);
    assert.equal(await source(conn, R, Number.MIN_SAFE_INTEGER, 0.5 * HOUR), 'batch_stats');
    await lookAll(conn, R, [0.5 * HOUR, 2 * HOUR]);
  });

  void it('reads the events of batches written without statistics, and of events inserted another way', async () => {
    const R = 'mixed';
    await writeBatch(conn, R, 0, HOUR, 300);
    await writeBatch(conn, R, HOUR, 2 * HOUR, 300, { stats: false });
    await writeBatch(conn, R, 2 * HOUR, 3 * HOUR, 300);
    assert.equal(await source(conn, R, Number.MIN_SAFE_INTEGER, HOUR), 'batch_stats');
    assert.equal(await source(conn, R, Number.MIN_SAFE_INTEGER, 1.5 * HOUR), 'events');
    await lookAll(conn, R, [HOUR, 1.5 * HOUR, 2.5 * HOUR, 4 * HOUR]);
    // One stray event, in a window whose batches are all summarised.
    await conn.run(
      `INSERT INTO events (event_id, rollout_id, batch_id, phase, cohort, vehicle, ts_ms, arm,
                           pred_production, lat_production, safety_production, exposure_h)
       VALUES ('stray', '${R}', 'none', 'canary', 'x', 'p', ${4.5 * HOUR}, 'production', 1, 3, false, 0.05)`,
    );
    await writeBatch(conn, R, 4 * HOUR, 5 * HOUR, 300);
    assert.equal(await source(conn, R, 4 * HOUR, 5 * HOUR), 'events');
    await lookAll(conn, R, [5 * HOUR]);
  });

  void it('reads the events of a batch changed after it was summarised', async () => {
    const R = 'changed';
    const batchId = await writeBatch(conn, R, 0, HOUR, 300);
    await conn.run(`DELETE FROM events WHERE event_id = '${batchId}.7'`);
    assert.equal(await source(conn, R, Number.MIN_SAFE_INTEGER, 2 * HOUR), 'events');
    await lookAll(conn, R, [2 * HOUR]);
  });
});

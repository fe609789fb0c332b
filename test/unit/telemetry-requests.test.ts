/**
 * The label requests a batch read makes (activities/telemetry.ts, `readWindow`), on a real DuckDB file
 * with records stored by the one writer: they are exactly the events the rule picks when it walks the
 * batch's events in (cohort, time, id) order, one seeded sample draw each, the tiers of a shadow event
 * from its two models' outputs, then the daily budget. The rule is computed here from the batch's events
 * as `events` holds them, so that a request given to the wrong event (its place in that order mistaken)
 * fails, whichever tier it has. The events carry keyed pseudonyms; it never prints a record.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { DuckDBConnection } from '@duckdb/node-api';
import { num, openFleetDatabase, rows, type FleetDatabase } from '../../activities/db';
import {
  chooseWithinBudget,
  DAY_MS,
  LABEL_TIERS,
  NO_TIER,
  pacedBudget,
  tierBase,
} from '../../activities/labels';
import { readWindow, type WindowRead } from '../../activities/telemetry';
import { EventWriter } from '../../events/writer';
import { CRITICAL_CLASS } from '../../policies/model-contract';
import { makeRng } from '../../policies/rng';
import { inference, UNIT } from '../events-support';

const HOUR = 3_600_000;
const T = Date.UTC(2026, 2, 1);
const CAND = 'c'.repeat(64);
const PROD = 'd'.repeat(64);
const COHORTS = ['hw4/us', 'hw3/eu'];

/**
 * `n` events of a rollout from `first` on, three at each time (the id decides among them: ids sort as
 * text, "e-10" before "e-9"), the cohorts interleaved, outputs drawn from `seed`.
 */
function events(
  rolloutId: string,
  phase: 'canary' | 'shadow',
  ids: { prefix: string; first: number; n: number },
  fromMs: number,
  spanMs: number,
  seed: string,
): Record<string, unknown>[] {
  const rng = makeRng(seed);
  return Array.from({ length: ids.n }, (_, k) => {
    const i = ids.first + k;
    const candidate = phase === 'canary' && rng() < 0.3;
    return inference({
      eventId: `${ids.prefix}-${i}`,
      cohort: COHORTS[i % COHORTS.length],
      unit: UNIT,
      rolloutId,
      phase,
      arm: candidate ? 'candidate' : 'production',
      modelDigest: candidate ? CAND : PROD,
      prediction: rng() < 0.2 ? CRITICAL_CLASS : 0,
      confidence: 0.5 + rng() / 2,
      safety: rng() < 0.02,
      upload: { tier: 'all', inclusionProbability: 1 },
      at: fromMs + Math.floor(Math.floor(k / 3) * ((3 * spanMs) / ids.n)),
      ...(phase === 'shadow'
        ? {
            shadow: {
              digest: CAND,
              prediction: rng() < 0.15 ? CRITICAL_CLASS : 0,
              confidence: 0.5 + rng() / 2,
              latencyMs: 4,
              safety: rng() < 0.02,
            },
          }
        : {}),
    });
  });
}

interface Request {
  eventId: string;
  requestedAtMs: number;
  reason: string;
  inclusion: number;
}

/**
 * The requests the rule makes of batch `w`: its events in (cohort, time, id) order, a tier each (the
 * sample's draw in that order), then the paced daily budget less what the rollout requested before.
 */
async function expected(
  conn: DuckDBConnection,
  w: WindowRead,
  usedBefore: Map<number, number>,
): Promise<Request[]> {
  const batch = await rows(
    conn,
    `SELECT event_id, ts_ms, pred_candidate, pred_production, conf_candidate, conf_production,
            safety_candidate, safety_production
     FROM events WHERE batch_id = ? ORDER BY cohort, ts_ms, event_id`,
    [w.batchId],
  );
  const sample = makeRng(`${w.seed}|${w.batchId}|sample`);
  const has = (v: unknown) => v !== null && v !== undefined;
  const tiers: number[] = batch.map((e) => {
    const sampled = sample() < w.rate;
    if (w.phase === 'shadow') {
      const [c, p] = [e.pred_candidate, e.pred_production];
      if (has(c) && has(p) && num(c) !== num(p)) return 0;
      if (num(c) === CRITICAL_CLASS || num(p) === CRITICAL_CLASS) return 1;
      if (e.safety_candidate === true || e.safety_production === true) return 1;
      if ([e.conf_candidate, e.conf_production].some((v) => has(v) && num(v) < w.lowConfidence)) return 2;
    }
    return sampled ? 3 : NO_TIER;
  });
  const budget = w.labeling?.dailyBudget;
  const keep = new Uint8Array(batch.length);
  const inclusion = new Float64Array(batch.length);
  const days = new Map<number, number[]>();
  batch.forEach((e, i) => {
    if (tiers[i] === NO_TIER) return;
    const day = budget === undefined ? 0 : Math.floor(num(e.ts_ms) / DAY_MS);
    days.set(day, [...(days.get(day) ?? []), i]);
  });
  for (const [day, idx] of days) {
    const allowance =
      budget === undefined
        ? null
        : Math.max(0, pacedBudget(budget, day, w.toMs) - (usedBefore.get(day) ?? 0));
    const plan = chooseWithinBudget(
      idx.map((i) => tiers[i]!),
      tierBase(w.rate),
      allowance,
      makeRng(`${w.seed}|${w.batchId}|labels|${day}`),
    );
    idx.forEach((i, j) => {
      keep[i] = plan.keep[j]!;
      inclusion[i] = plan.inclusion[j]!;
    });
  }
  const made: Request[] = [];
  batch.forEach((e, i) => {
    if (!keep[i]) return;
    made.push({
      eventId: String(e.event_id).slice(`${w.fleet}:`.length),
      requestedAtMs: num(e.ts_ms),
      reason: LABEL_TIERS[tiers[i]!]!,
      inclusion: inclusion[i]!,
    });
  });
  return made.sort((x, y) => (x.eventId < y.eventId ? -1 : x.eventId > y.eventId ? 1 : 0));
}

void describe('the label requests of a batch read', () => {
  let dir: string;
  let db: FleetDatabase;
  let conn: DuckDBConnection;
  let writer: EventWriter;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fleetgate-telemetry-requests-'));
    db = await openFleetDatabase(join(dir, 'fleet.duckdb'));
    conn = db.connection;
    writer = await EventWriter.attach(db.instance);
  });

  after(async () => {
    await writer.close();
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const send = (records: Record<string, unknown>[]) =>
    writer.ingest('inference', 'demo', records, { where: 'line' });

  const window = (
    over: Partial<WindowRead> & Pick<WindowRead, 'rolloutId' | 'phase' | 'fromMs' | 'toMs'>,
  ) => ({
    batchId: `${over.rolloutId}:${over.phase}:${over.fromMs}-${over.toMs}`,
    fleet: 'demo',
    cohorts: COHORTS,
    candidateDigest: CAND,
    seed: 7,
    rate: 0.3,
    lowConfidence: 0.6,
    ...over,
  });

  /** Reads `w` and checks what it returned and stored against the rule; returns how many it requested. */
  async function readAndCheck(w: WindowRead): Promise<number> {
    const usedBefore = new Map(
      (
        await rows(
          conn,
          `SELECT CAST(floor(requested_at_ms / ${DAY_MS}) AS BIGINT) AS day, count(*) AS n
           FROM label_requests WHERE rollout_id = ? GROUP BY ALL`,
          [w.rolloutId],
        )
      ).map((r) => [num(r.day), num(r.n)]),
    );
    const { result, requests } = await readWindow(conn, w);
    assert.equal(result.written, true);
    const want = await expected(conn, w, usedBefore);
    assert.deepEqual(
      requests,
      want.map(({ eventId, requestedAtMs, reason }) => ({ eventId, requestedAtMs, reason })),
    );
    const stored = await rows(
      conn,
      `SELECT r.event_id, r.requested_at_ms, r.reason, r.inclusion FROM label_requests r
       JOIN events e USING (event_id) WHERE e.batch_id = ? ORDER BY r.event_id`,
      [w.batchId],
    );
    assert.deepEqual(
      stored.map((r) => ({
        eventId: String(r.event_id).slice('demo:'.length),
        requestedAtMs: num(r.requested_at_ms),
        reason: String(r.reason),
        inclusion: Number(r.inclusion),
      })),
      want,
    );
    return want.length;
  }

  test('a canary batch requests the seeded sample in (cohort, time, id) order, late events included', async () => {
    await send(events('r-canary', 'canary', { prefix: 'e', first: 0, n: 3000 }, T, HOUR, 'first'));
    const first = window({ rolloutId: 'r-canary', phase: 'canary', fromMs: T, toMs: T + HOUR });
    const n = await readAndCheck(first);
    assert.ok(n > 700 && n < 1100, `about 0.3 of 3000 sampled: ${n}`);
    // Events of the first window that came after it was read, and the second window's.
    await send([
      ...events('r-canary', 'canary', { prefix: 'e', first: 3000, n: 300 }, T, HOUR, 'late'),
      ...events('r-canary', 'canary', { prefix: 'e', first: 3300, n: 3000 }, T + HOUR, HOUR, 'second'),
    ]);
    const second = window({ rolloutId: 'r-canary', phase: 'canary', fromMs: T + HOUR, toMs: T + 2 * HOUR });
    assert.ok((await readAndCheck(second)) > 700);
    const [late] = await rows(
      conn,
      `SELECT count(*)::INTEGER AS n FROM events WHERE batch_id = ? AND ts_ms < ?`,
      [second.batchId, second.fromMs],
    );
    assert.equal(late?.n, 300, 'the second batch took the late events');
  });

  test('a shadow batch requests its tiers and sample by their places, within the daily budget', async () => {
    await send(events('r-shadow', 'shadow', { prefix: 's', first: 0, n: 3000 }, T, 2 * HOUR, 'shadow'));
    const free = window({ rolloutId: 'r-shadow', phase: 'shadow', fromMs: T, toMs: T + HOUR });
    const reasons = async (w: WindowRead) =>
      (
        await rows(
          conn,
          `SELECT DISTINCT r.reason FROM label_requests r JOIN events e USING (event_id) WHERE e.batch_id = ?`,
          [w.batchId],
        )
      )
        .map((r) => String(r.reason))
        .sort();
    const made = await readAndCheck(free);
    assert.deepEqual(await reasons(free), ['disagreement', 'low_confidence', 'rare', 'sample']);
    // A budget that leaves the next batch 500 requests (paced: a twelfth of the day's at its end, 2 h
    // into the day), fewer than its priority tiers ask for: one tier is cut, drawn among its events.
    const cut = window({
      rolloutId: 'r-shadow',
      phase: 'shadow',
      fromMs: T + HOUR,
      toMs: T + 2 * HOUR,
      labeling: { dailyBudget: 12 * (made + 500) },
    });
    assert.equal(await readAndCheck(cut), 500);
    const [share] = await rows(
      conn,
      `SELECT count(*)::INTEGER AS n FROM label_requests r JOIN events e USING (event_id)
       WHERE e.batch_id = ? AND r.inclusion < 1 AND r.reason <> 'sample'`,
      [cut.batchId],
    );
    assert.ok(num(share?.n) > 0, 'a priority tier was cut');
  });
});

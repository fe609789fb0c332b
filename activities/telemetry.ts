/**
 * Reading a rollout's window from what ingestion stored (events/writer.ts: `ingested_inference`,
 * `ingested_uploads`) into the tables the analysis reads (`events`, `batch_stats`, `shadow_edge`,
 * `label_requests`, `batches`), as one batch, in one transaction. Whatever sent the records, a real
 * fleet through `fleetgate ingest` or the landing zone, or the simulated one in process, they are read
 * the same way: the activities never invent an event.
 *
 * A batch takes the rollout's records of its phase and cohorts with `at` in its window, and those before
 * it that no earlier batch took (an event that arrived after its window was read is counted in the next
 * batch, which says how many of those it took: `late`). It reads the window and what was ingested since
 * the previous batch read, never the whole history again. An event whose model is not the one the rollout
 * put there (a canary 'candidate' event of another digest, a shadow event whose shadow model is not the
 * candidate) is never attributed to the candidate: it is left out and counted (`mismatched`).
 *
 * Label requests are made here, as the events are read: each event's tier (shadow: disagreement, rare,
 * low confidence, else the seeded sample; canary: the sample only), then the rollout's daily budget
 * (activities/labels.ts). Event ids in the analysis tables are `${fleet}:${eventId}` (ids are unique
 * per fleet). It must never return rows per event, and never read a record the contract did not pass
 * (only the writer's tables are read).
 */
import type { DuckDBConnection } from '@duckdb/node-api';
import { CRITICAL_CLASS } from '../policies/model-contract';
import { makeRng } from '../policies/rng';
import type { BatchResult, LabelingInput } from './contracts';
import { columns, exclusive, exec, num, rows, transaction } from './db';
import { progress } from './heartbeat';
import { recordBatchStats } from './analysis';
import { budgetRequests, LABEL_TIERS, NO_TIER } from './labels';
import type { LabelRequestOut } from './deps';

export interface WindowRead {
  batchId: string;
  phase: 'shadow' | 'canary';
  rolloutId: string;
  fleet: string;
  cohorts: readonly string[];
  fromMs: number;
  toMs: number;
  candidateDigest: string;
  /** The fleet's seed (its manifest's): seeds the label sample and the budget's draws. */
  seed: number;
  /** Share of events in no priority tier sent for labeling. */
  rate: number;
  /** Below this confidence (of the less confident model) a shadow event is worth a label. */
  lowConfidence: number;
  labeling?: LabelingInput;
}

/** What a batch read: the BatchResult, with the events it took late or left out. */
export interface WindowResult extends BatchResult {
  late: number;
  mismatched: number;
}

const SAMPLE = LABEL_TIERS.indexOf('sample');

/** A SQL string literal. */
function lit(s: string): string {
  return `'${s.replaceAll("'", "''")}'`;
}

/**
 * How far back, in ingestion time, a batch looks for late events beyond what the previous batch of the
 * rollout's phase saw: a batch that was being written while that one read is taken by this one.
 */
const LATE_MARGIN_MS = 10 * 60_000;

/**
 * The ingested records a batch may take: the rollout's, of its phase and cohorts, with `at` in the window,
 * or before it and ingested since the previous batch read (less a margin: `since`); `ok` says whether
 * the model that acted (canary candidate) or ran in shadow is the candidate. Rows already taken are
 * skipped by the insert (`insertSql`).
 */
function pendingSql(w: WindowRead, since: number | null, upTo?: Replay['upToMs']): string {
  const ok =
    w.phase === 'shadow'
      ? `i.shadow_digest = ${lit(w.candidateDigest)}`
      : `(i.arm <> 'candidate' OR i.model_digest = ${lit(w.candidateDigest)})`;
  const late = since === null ? 'true' : `i.ingested_at_ms >= ${BigInt(Math.floor(since))}`;
  return `SELECT i.*, ${ok} AS ok FROM ingested_inference i
    WHERE i.fleet = ${lit(w.fleet)} AND i.rollout_id = ${lit(w.rolloutId)} AND i.phase = ${lit(w.phase)}
      AND i.cohort IN (${w.cohorts.map(lit).join(', ') || 'NULL'}) AND i."at" < ${BigInt(w.toMs)}
      AND (i."at" >= ${BigInt(w.fromMs)} OR ${late})${
        upTo === undefined ? '' : upTo === null ? ' AND false' : ` AND i.ingested_at_ms <= ${BigInt(upTo)}`
      }`;
}

/**
 * A batch read again on a database rebuilt from the store (activities/batch-log.ts): the `since` the first
 * read used, and the latest ingestion time of what it took (null: it took nothing), so that the records
 * ingested after it are left to the batches that took them.
 */
export interface Replay {
  since: number | null;
  upToMs: number | null;
}

/**
 * The analysis row of an ingested event: shadow events carry both models; canary ones the acting one's.
 * Events an earlier batch of the rollout's phase took are left out: only those at or after `lowMs` (the
 * earliest pending event) are looked at, which is none unless late events are pending (a batch's window
 * begins where the previous one's ended).
 */
function insertSql(w: WindowRead, since: number | null, lowMs: number, upTo?: Replay['upToMs']): string {
  const acting = (col: string, arm: 'candidate' | 'production') =>
    w.phase === 'shadow'
      ? arm === 'production'
        ? col
        : `shadow_${col}`
      : `CASE WHEN arm = '${arm}' THEN ${col} END`;
  return `INSERT INTO events (event_id, rollout_id, batch_id, phase, cohort, vehicle, ts_ms, arm,
      pred_candidate, pred_production, conf_candidate, conf_production, lat_candidate, lat_production,
      safety_candidate, safety_production, exposure_h, weight, failed)
    SELECT fleet || ':' || event_id, rollout_id, ${lit(w.batchId)}, phase, cohort, unit, "at",
      ${w.phase === 'shadow' ? `'shadow'` : 'arm'},
      ${acting('prediction', 'candidate')}, ${acting('prediction', 'production')},
      ${acting('confidence', 'candidate')}, ${acting('confidence', 'production')},
      ${acting('latency_ms', 'candidate')}, ${acting('latency_ms', 'production')},
      ${acting('safety', 'candidate')}, ${acting('safety', 'production')},
      exposure_hours, 1 / upload_inclusion_probability, false
    FROM (${pendingSql(w, since, upTo)}) i
    WHERE ok AND i.fleet || ':' || i.event_id NOT IN (
      SELECT event_id FROM events WHERE rollout_id = ${lit(w.rolloutId)} AND phase = ${lit(w.phase)}
        AND ts_ms >= ${BigInt(Math.floor(lowMs))} AND ts_ms < ${BigInt(w.toMs)})`;
}

/**
 * Reads the window as batch `w.batchId`: skipped (written: false) when the batch exists. Returns what it
 * read and the requests it made, which the caller sends to the labelers after the commit.
 */
export async function readWindow(
  conn: DuckDBConnection,
  w: WindowRead,
  replay?: Replay,
): Promise<{ result: WindowResult; requests: LabelRequestOut[]; read: Replay }> {
  return transaction(conn, async () => {
    const [again] = await rows(conn, `SELECT events FROM batches WHERE batch_id = ?`, [w.batchId]);
    const sinceOf = async (except: string | null) => {
      const [previous] = await rows(
        conn,
        `SELECT max(ingested_max_ms) AS m FROM batch_reads WHERE rollout_id = ? AND phase = ? AND batch_id <> ?`,
        [w.rolloutId, w.phase, except ?? ''],
      );
      return previous?.m === null || previous?.m === undefined ? null : num(previous.m) - LATE_MARGIN_MS;
    };
    if (again) {
      const [own] = await rows(conn, `SELECT ingested_max_ms AS m FROM batch_reads WHERE batch_id = ?`, [
        w.batchId,
      ]);
      return {
        result: { batchId: w.batchId, events: num(again.events), written: false, late: 0, mismatched: 0 },
        requests: await requestsOf(conn, w),
        // Asked again before any later batch of its phase: the batches before it are the ones it followed.
        read: {
          since: replay ? replay.since : await sinceOf(w.batchId),
          upToMs: own?.m === null || own?.m === undefined ? null : num(own.m),
        },
      };
    }
    const since = replay ? replay.since : await sinceOf(null);
    const [seen] = await rows(
      conn,
      `SELECT count(*) FILTER (WHERE NOT ok AND "at" >= ?) AS mismatched, max(ingested_at_ms) AS ingested,
              min("at") AS low
       FROM (${pendingSql(w, since, replay?.upToMs)})`,
      [w.fromMs],
    );
    // The batch's events are at or after `low` (its earliest: below fromMs when it took late events); the
    // reads of its events bound their times too, so that DuckDB skips the row groups of other batches.
    const low = seen?.low === null || seen?.low === undefined ? null : Math.min(num(seen.low), w.fromMs);
    const total = low === null ? 0 : await exec(conn, insertSql(w, since, low, replay?.upToMs));
    const span = { batchId: w.batchId, rolloutId: w.rolloutId, fromMs: low ?? w.fromMs, toMs: w.toMs };
    const [late] = await rows(
      conn,
      `SELECT count(*) AS n FROM events
       WHERE batch_id = ? AND rollout_id = ? AND ts_ms >= ? AND ts_ms < ?`,
      [w.batchId, w.rolloutId, span.fromMs, w.fromMs],
    );
    await exec(conn, `INSERT INTO batch_reads VALUES (?, ?, ?, ?)`, [
      w.batchId,
      w.rolloutId,
      w.phase,
      seen?.ingested === null || seen?.ingested === undefined ? null : num(seen.ingested),
    ]);
    if (w.phase === 'shadow') {
      // The vehicles' upload reports of windows starting in this one, summed per cohort.
      await exec(
        conn,
        `INSERT INTO shadow_edge (batch_id, rollout_id, cohort, to_ms, vehicles, evaluated, priority,
                                  disagreements, uploaded, over_budget)
         SELECT ?, rollout_id, cohort, ?, count(*) FILTER (WHERE evaluated > 0), sum(evaluated),
                sum(priority), sum(disagreements), sum(uploaded), count(*) FILTER (WHERE over_budget)
         FROM ingested_uploads
         WHERE fleet = ? AND rollout_id = ? AND cohort IN (${w.cohorts.map(lit).join(', ') || 'NULL'})
           AND from_ms >= ? AND from_ms < ?
         GROUP BY rollout_id, cohort`,
        [w.batchId, w.toMs, w.fleet, w.rolloutId, w.fromMs, w.toMs],
      );
    }
    await recordBatchStats(conn, { ...span, phase: w.phase });
    const requests = await requestLabelsFor(conn, w, span.fromMs);
    await exec(conn, `INSERT INTO batches (batch_id, rollout_id, phase, events) VALUES (?, ?, ?, ?)`, [
      w.batchId,
      w.rolloutId,
      w.phase,
      total,
    ]);
    return {
      result: {
        batchId: w.batchId,
        events: total,
        written: true,
        late: num(late?.n),
        mismatched: num(seen?.mismatched),
      },
      requests,
      read: {
        since,
        upToMs: seen?.ingested === null || seen?.ingested === undefined ? null : num(seen.ingested),
      },
    };
  });
}

/**
 * The label requests of the batch's events: tiers in a fixed order (cohort, time, id), the seeded sample
 * drawn in that order, then the daily budget. Answers them as the labelers know the events (by the
 * producer's id), in id order. Only what decides a tier comes into JavaScript: the requests are
 * written by DuckDB from the chosen events' places in that order (`label_plan`, a temporary table made
 * and dropped inside the batch's transaction), and only the requested events' ids are read back.
 */
async function requestLabelsFor(
  conn: DuckDBConnection,
  w: WindowRead,
  lowMs: number,
): Promise<LabelRequestOut[]> {
  const batch = `FROM events WHERE batch_id = $batch AND rollout_id = $rollout AND ts_ms >= $low AND ts_ms < $to`;
  const order = 'ORDER BY cohort, ts_ms, event_id';
  const params = { batch: w.batchId, rollout: w.rolloutId, low: lowMs, to: w.toMs };
  const [ts, pc, pp, cc, cp, sc, sp] = await columns(
    conn,
    // A canary event's tier is the sample's draw alone: its outputs are not read. Times are whole
    // milliseconds, exact as doubles.
    `SELECT ts_ms::DOUBLE AS ts_ms${
      w.phase === 'shadow'
        ? `, pred_candidate, pred_production, conf_candidate, conf_production,
            safety_candidate, safety_production`
        : ''
    }
     ${batch} ${order}`,
    params,
  );
  // No rows, no columns: a window in which the fleet sent nothing.
  const n = ts?.length ?? 0;
  if (n === 0) return [];
  const tiers = new Uint8Array(n).fill(NO_TIER);
  const at = Float64Array.from(ts as number[]);
  const sample = makeRng(`${w.seed}|${w.batchId}|sample`);
  for (let i = 0; i < n; i++) {
    const sampled = sample() < w.rate;
    tiers[i] =
      w.phase === 'shadow'
        ? shadowTier(
            { c: pc![i], p: pp![i], cc: cc![i], cp: cp![i], sc: sc![i], sp: sp![i] },
            sampled,
            w.lowConfidence,
          )
        : sampled
          ? SAMPLE
          : NO_TIER;
  }
  const plan = await budgetRequests(
    conn,
    {
      rolloutId: w.rolloutId,
      seed: `${w.seed}|${w.batchId}`,
      toMs: w.toMs,
      dailyBudget: w.labeling?.dailyBudget,
      rate: w.rate,
    },
    tiers,
    at,
  );
  await exec(conn, `CREATE OR REPLACE TEMP TABLE label_plan (i UINTEGER, tier UTINYINT, inclusion DOUBLE)`);
  const a = await conn.createAppender('label_plan');
  try {
    for (let i = 0; i < n; i++) {
      if (!plan.keep[i]) continue;
      a.appendUInteger(i);
      a.appendUTinyInt(tiers[i]!);
      a.appendDouble(plan.inclusion[i]!);
      a.endRow();
    }
  } finally {
    a.closeSync();
  }
  const [ids, requested, reasons] = await columns(
    conn,
    `INSERT INTO label_requests (event_id, rollout_id, requested_at_ms, reason, inclusion)
     SELECT e.event_id, $rollout, e.ts_ms, [${LABEL_TIERS.map(lit).join(', ')}][p.tier + 1], p.inclusion
     FROM (SELECT event_id, ts_ms, row_number() OVER (${order}) - 1 AS i ${batch}) e JOIN label_plan p USING (i)
     RETURNING event_id, requested_at_ms::DOUBLE, reason`,
    params,
  );
  await exec(conn, `DROP TABLE label_plan`);
  const prefix = `${w.fleet}:`;
  const made: LabelRequestOut[] = (ids ?? []).map((id, j) => ({
    eventId: String(id).slice(prefix.length),
    requestedAtMs: requested![j] as number,
    reason: String(reasons![j]),
  }));
  return made.sort((x, y) => (x.eventId < y.eventId ? -1 : x.eventId > y.eventId ? 1 : 0));
}

/** The label requests of a batch read earlier (asked again), as the labelers know the events: by the producer's id. */
async function requestsOf(conn: DuckDBConnection, w: WindowRead): Promise<LabelRequestOut[]> {
  const prefix = `${w.fleet}:`;
  const found = await rows(
    conn,
    `SELECT r.event_id, r.requested_at_ms, r.reason FROM label_requests r JOIN events e ON e.event_id = r.event_id
     WHERE e.batch_id = ? AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.event_id = r.event_id)
     ORDER BY r.event_id`,
    [w.batchId],
  );
  return found.map((r) => ({
    eventId: String(r.event_id).slice(prefix.length),
    requestedAtMs: num(r.requested_at_ms),
    reason: String(r.reason),
  }));
}

/**
 * The label tier of a shadow event (index into LABEL_TIERS): 'disagreement' when the models disagree;
 * 'rare' when either predicts the critical class or either's output was a safety event; 'low_confidence'
 * when the less confident model is below `lowConfidence`; 'sample' when drawn into the sample; else none.
 */
function shadowTier(
  r: { c: unknown; p: unknown; cc: unknown; cp: unknown; sc: unknown; sp: unknown },
  sampled: boolean,
  lowConfidence: number,
): number {
  const has = (v: unknown) => v !== null && v !== undefined;
  if (has(r.c) && has(r.p) && num(r.c) !== num(r.p)) return LABEL_TIERS.indexOf('disagreement');
  const critical = (v: unknown) => has(v) && num(v) === CRITICAL_CLASS;
  if (critical(r.c) || critical(r.p) || r.sc === true || r.sp === true) return LABEL_TIERS.indexOf('rare');
  const low = (v: unknown) => has(v) && num(v) < lowConfidence;
  if (low(r.cc) || low(r.cp)) return LABEL_TIERS.indexOf('low_confidence');
  return sampled ? SAMPLE : NO_TIER;
}
/** How often a batch looks at the watermarks while it waits for them. */
const WATERMARK_POLL_MS = 1_000;

/**
 * Waits until every cohort's watermark (events/writer.ts: the producer's "everything before W has been
 * sent") has reached `toMs`, or `maxWaitMs` has passed; heartbeats while it waits. Returns the cohorts
 * still behind (their batch reads what is there; what comes later is counted in the next one).
 */
export async function awaitWatermarks(
  conn: DuckDBConnection,
  fleet: string,
  cohorts: readonly string[],
  toMs: number,
  maxWaitMs: number,
): Promise<string[]> {
  const deadline = Date.now() + maxWaitMs;
  for (;;) {
    const found = await exclusive(conn, () =>
      rows(conn, `SELECT cohort, watermark_ms FROM ingest_watermarks WHERE fleet = ?`, [fleet]),
    );
    const at = new Map(found.map((r) => [String(r.cohort), num(r.watermark_ms)]));
    const behind = cohorts.filter((c) => !((at.get(c) ?? -Infinity) >= toMs));
    if (behind.length === 0 || Date.now() >= deadline) return behind;
    progress({ step: `waiting for the watermark of ${behind.join(', ')} to reach the window's end`, toMs });
    await new Promise((r) => setTimeout(r, Math.min(WATERMARK_POLL_MS, Math.max(0, deadline - Date.now()))));
  }
}

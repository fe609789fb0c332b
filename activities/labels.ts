/**
 * Activities of the label wait: ask the (simulated) labeler for the labels that matter most, and measure
 * how many of the requested labels have arrived.
 *
 * Ground truth arrives late. The simulated labeler keeps a private queue (`sim_truth`: each event's
 * label and when it would come back if asked at the time of the event); a label enters `labels` only
 * when it was requested and its delay has passed by the time asked about. Everything is restricted to
 * one rollout and idempotent: asking again about the same moment changes nothing. Never returns rows per
 * event, and never reads a label before it has arrived.
 */
import type { DuckDBConnection } from '@duckdb/node-api';
import type { LabelCoverage, LabelInput } from './contracts';
import { exclusive, exec, num, rows, transaction } from './db';

/** Below this confidence (of the less confident model, when two ran) an event is worth a label. */
export const PRIORITY_CONFIDENCE = 0.6;

/**
 * Moves the labels of `rolloutId` that have arrived by `asOfMs` from the labeler's queue into `labels`.
 * A label requested after its event waits the labeler's delay from the request: it arrives at
 * available_at_ms + (requested_at_ms - ts_ms). With each label it stores what a canary look needs of
 * its event (phase, cohort, arm, ts_ms, and whether each model's prediction was wrong), so a look reads
 * labels without joining events. Idempotent; returns how many labels were new.
 */
export function ingestArrivedLabels(
  conn: DuckDBConnection,
  rolloutId: string,
  asOfMs: number,
): Promise<number> {
  return transaction(conn, () =>
    exec(
      conn,
      `INSERT INTO labels (event_id, rollout_id, label, arrived_at_ms,
                          phase, cohort, arm, ts_ms, err_candidate, err_production)
       SELECT event_id, rollout_id, label, arrives,
              phase, cohort, arm, ts_ms, err_candidate, err_production FROM (
         SELECT r.event_id, r.rollout_id, t.label,
                t.available_at_ms + greatest(0, r.requested_at_ms - e.ts_ms) AS arrives,
                e.phase, e.cohort, e.arm, e.ts_ms,
                e.pred_candidate <> t.label AS err_candidate,
                e.pred_production <> t.label AS err_production
         FROM label_requests r
         JOIN sim_truth t ON t.event_id = r.event_id
         JOIN events e ON e.event_id = r.event_id
         WHERE r.rollout_id = ? AND r.requested_at_ms <= ?
       ) a
       WHERE arrives <= ? AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.event_id = a.event_id)`,
      [rolloutId, asOfMs, asOfMs],
    ),
  );
}

export function createLabelActivities({ conn }: { conn: DuckDBConnection }) {
  return {
    /**
     * Requests labels, as of `asOfMs`, for the rollout's events before then that have none requested
     * yet and whose confidence is below 0.6 (the lower of the two in shadow): reason 'priority'.
     */
    async requestLabels(input: LabelInput): Promise<{ requested: number }> {
      const requested = await transaction(conn, () =>
        exec(
          conn,
          `INSERT INTO label_requests (event_id, rollout_id, requested_at_ms, reason)
           SELECT e.event_id, e.rollout_id, ?, 'priority'
           FROM events e
           WHERE e.rollout_id = ? AND e.ts_ms < ?
             AND least(coalesce(e.conf_candidate, 1), coalesce(e.conf_production, 1)) < ?
             AND NOT EXISTS (SELECT 1 FROM label_requests r WHERE r.event_id = e.event_id)`,
          [input.asOfMs, input.rolloutId, input.asOfMs, PRIORITY_CONFIDENCE],
        ),
      );
      return { requested };
    },

    /**
     * Ingests the labels that have arrived by `asOfMs`, then counts, for the rollout, the labels
     * requested by then and how many of them have arrived. Coverage is labeled / requested, and 0 when
     * nothing was requested: no requests is no evidence, never full coverage.
     */
    async labelCoverage(input: LabelInput): Promise<LabelCoverage> {
      await ingestArrivedLabels(conn, input.rolloutId, input.asOfMs);
      const [row] = await exclusive(conn, () =>
        rows(
          conn,
          `SELECT count(*) AS requested, count(l.event_id) AS labeled
           FROM label_requests r
           LEFT JOIN labels l ON l.event_id = r.event_id AND l.arrived_at_ms <= ?
           WHERE r.rollout_id = ? AND r.requested_at_ms <= ?`,
          [input.asOfMs, input.rolloutId, input.asOfMs],
        ),
      );
      const requested = num(row?.requested);
      const labeled = num(row?.labeled);
      return { requested, labeled, coverage: requested === 0 ? 0 : labeled / requested };
    },
  };
}

export type LabelActivities = ReturnType<typeof createLabelActivities>;

/**
 * The log of a rollout's batch reads, kept in the object store beside the Parquet partitions of what was
 * ingested (events/partitions.ts), so that the fleet database is a cache: a data worker that starts on a
 * new machine (its database rebuilt from the partitions, events/rebuild.ts) reads a running rollout's
 * earlier batches again, in their order and as they were read, before it reads the next one; the looks
 * that follow see the same events, label requests and upload counters as on the worker that died.
 *
 * Layout (write-once, one object per batch):
 *   batch-reads/<rollout>/<phase>/<toMs, 16 digits>-<sha256(batch id), 12 hex>.json   BatchReadRecord
 *
 * A record holds the window the batch read (rollout, fleet, cohorts, times, candidate digest, the
 * label settings), the `since` it used and the latest ingestion time of what it took: read again with
 * those, a batch takes exactly the records it took the first time, whatever was ingested after it. The
 * batches of a phase are read one after another in window order, which is the key order.
 *
 * It must never hold a record's content (no unit, no event id), never replace a record (a retried read
 * puts the same bytes), and never read a batch again that the database has.
 */
import { createHash } from 'node:crypto';
import type { DuckDBConnection } from '@duckdb/node-api';
import type { ObjectStore } from './deps';
import { exclusive, rows } from './db';
import { readWindow, type Replay, type WindowRead } from './telemetry';
import { recordRollout } from '../events/rollouts';

export const BATCH_READS_PREFIX = 'batch-reads/';

export interface BatchReadRecord {
  apiVersion: 'fleetgate/v1';
  kind: 'BatchRead';
  window: WindowRead;
  read: Replay;
}

/** A key segment safe in every store: letters, digits, ".", "_", "-". */
function segment(s: string): string {
  return s.replace(/[^A-Za-z0-9._-]/g, '_');
}

function rolloutPrefix(rolloutId: string): string {
  return `${BATCH_READS_PREFIX}${segment(rolloutId)}-${createHash('sha256').update(rolloutId).digest('hex').slice(0, 8)}/`;
}

export function batchReadKey(w: Pick<WindowRead, 'rolloutId' | 'phase' | 'toMs' | 'batchId'>): string {
  const order = String(Math.max(0, Math.floor(w.toMs))).padStart(16, '0');
  const id = createHash('sha256').update(w.batchId).digest('hex').slice(0, 12);
  return `${rolloutPrefix(w.rolloutId)}${w.phase}/${order}-${id}.json`;
}

/** Puts the record of a batch read (the same bytes when a retried read puts it again). */
export async function logBatchRead(store: ObjectStore, window: WindowRead, read: Replay): Promise<void> {
  const record: BatchReadRecord = { apiVersion: 'fleetgate/v1', kind: 'BatchRead', window, read };
  await store.putIfAbsent(batchReadKey(window), Buffer.from(JSON.stringify(record) + '\n'));
}

/**
 * Reads again, into `conn`, the logged batches of `rolloutId` that the database does not have: the
 * shadow's, then the canary's, each phase in window order. Returns how many it read.
 */
export async function restoreBatches(
  conn: DuckDBConnection,
  store: ObjectStore,
  rolloutId: string,
): Promise<number> {
  const keys = await store.list(rolloutPrefix(rolloutId));
  const ordered = [
    ...keys.filter((k) => k.includes('/shadow/')),
    ...keys.filter((k) => k.includes('/canary/')),
  ];
  let restored = 0;
  for (const key of ordered) {
    const body = await store.get(key);
    if (!body) continue;
    const record = JSON.parse(body.toString('utf8')) as BatchReadRecord;
    if (record.kind !== 'BatchRead' || record.window.rolloutId !== rolloutId) continue;
    const [have] = await exclusive(conn, () =>
      rows(conn, `SELECT 1 FROM batches WHERE batch_id = ?`, [record.window.batchId]),
    );
    if (have) continue;
    await readWindow(conn, record.window, record.read);
    restored++;
  }
  return restored;
}

/**
 * Records each rollout (events/rollouts.ts) and restores it, once per process, before the first activity
 * that reads its batches: later
 * batches of the rollout are read here and need nothing from the log. A failed restore is tried again by
 * the next activity (the one that asked fails and is retried).
 */
export function batchRestorer(
  conn: DuckDBConnection,
  store: ObjectStore,
  log: (line: string) => void = () => undefined,
) {
  const done = new Set<string>();
  const running = new Map<string, Promise<void>>();
  return async (rolloutId: string): Promise<void> => {
    if (done.has(rolloutId)) return;
    let p = running.get(rolloutId);
    if (!p) {
      // A rollout started before rollouts were recorded (events/rollouts.ts) is recorded here, at its first
      // activity on this worker, so that ingestion takes its events from then on.
      p = recordRollout(store, rolloutId)
        .then(() => restoreBatches(conn, store, rolloutId))
        .then((n) => {
          if (n > 0) log(`fleetgate: read ${n} logged batches of rollout ${rolloutId} again from the store`);
          done.add(rolloutId);
        });
      running.set(rolloutId, p);
      void p.finally(() => running.delete(rolloutId)).catch(() => undefined);
    }
    await p;
  };
}

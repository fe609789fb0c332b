/**
 * The fleet database: one DuckDB file holding the simulated fleet's vehicles and over-the-air jobs, the
 * shadow and canary event logs, and the simulated labeler's queue, requests and labels.
 *
 * Every identifier of a vehicle stored here is its keyed pseudonym; a raw vehicle id must never be
 * written to any table. Activities share one connection, so every use of it goes through `exclusive`
 * or `transaction`, which run one at a time per connection: a statement of one activity can never land
 * inside another activity's open transaction. Never nest them (the inner call would wait forever).
 */
import { DuckDBInstance } from '@duckdb/node-api';
import type { DuckDBConnection, DuckDBValue } from '@duckdb/node-api';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { SCHEMA_SQL as INGESTED_SCHEMA_SQL } from '../events/writer';

export interface FleetDatabase {
  instance: DuckDBInstance;
  connection: DuckDBConnection;
  /** Closes the connection and the instance; waits for work already queued on the connection. */
  close(): Promise<void>;
}

/**
 * The schema. `vehicles` has no primary key: its index cost more than a million inserts themselves, and
 * the only writer (initSimFleet) inserts a fleet once and checks that its pseudonyms are unique; a
 * database created with the key keeps it. Additive columns beyond the design sketch: ota_jobs.fleet and ota_jobs.result (the
 * recorded answer an idempotent retry returns), ota_targets.prev_active (the slot a revert goes back to).
 * look_stats holds, per canary look, the sufficient statistics of what is new since the previous look
 * (events in [previous, asOf), labels arrived in (previous, asOf]); `looks` records which looks exist.
 * batch_stats holds, per event batch, the event side of those statistics per (cohort, arm) and the
 * batch's min and max ts_ms, written with the batch (see `recordBatchStats` in analysis.ts), so a look
 * sums the batches inside its window instead of reading their events. Not migrated: batches written
 * before it existed have no rows there, and a look whose window holds their events reads the events.
 * look_stats.failed and batch_stats.failed count the failed requests (events.failed); rows written
 * before those columns existed hold NULL, read as 0: only vehicles' events, which never fail, were
 * logged then. Tail-latency statistics are not cached: quantiles do not add up over looks or batches.
 *
 * batch_reads: per event batch read from the ingested records (activities/telemetry.ts), the latest
 * ingestion time it saw, from which the next batch of the rollout's phase looks for late events. The
 * ingested records themselves (events/writer.ts: ingested_inference, ingested_labels, ingested_outcomes,
 * ingested_uploads, ingest_watermarks) live in the same file.
 *
 * events has no key index (one costs per row in every batch and commit): a batch inserts only events no
 * earlier batch took (activities/telemetry.ts), and a simulated service's batch is written once.
 * events.safety_candidate / safety_production: the frame's true class was the critical one and that
 * model missed it (NULL where the model did not run); known on the vehicle at once (a takeover), not
 * through labels. events.exposure_h: the vehicle-hours one event stands for (1 / eventsPerVehicleHour).
 * labels.phase, cohort, arm, ts_ms are copied from the label's event when it is ingested, and
 * err_candidate / err_production say whether that model's prediction differs from the label (NULL where
 * it did not run), so a look aggregates labels without joining events.
 *
 * The labeler (activities/labels.ts): sim_truth holds each event's true class, for scoring the
 * simulation, and when the labeler would return it; sim_label_noise the labeler's answer for the events
 * it gets wrong (`labels.noise` of the fleet manifest), so `labels.label` is the labeler's answer and
 * never the truth by construction. label_requests.reason is the tier the event was requested in
 * ('priority' only in rows written before the tiers existed) and `inclusion` the probability that the
 * event got a request given that it was logged: 1 for a priority tier that fitted the daily budget whole,
 * `labels.rate` for 'sample', times the share kept of a tier the budget cut.
 */
export const SCHEMA = `
CREATE TABLE IF NOT EXISTS vehicles (
  fleet VARCHAR NOT NULL,
  cohort VARCHAR NOT NULL,
  sku VARCHAR NOT NULL,
  vehicle VARCHAR NOT NULL,
  slot_a VARCHAR,
  slot_b VARCHAR,
  active VARCHAR NOT NULL CHECK (active IN ('a', 'b'))
);
CREATE TABLE IF NOT EXISTS ota_jobs (
  job_id VARCHAR PRIMARY KEY,
  rollout_id VARCHAR NOT NULL,
  fleet VARCHAR NOT NULL,
  kind VARCHAR NOT NULL CHECK (kind IN ('deliver', 'promote')),
  wave INTEGER,
  digest VARCHAR NOT NULL,
  created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
  result VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS ota_targets (
  job_id VARCHAR NOT NULL,
  vehicle VARCHAR NOT NULL,
  cohort VARCHAR NOT NULL,
  reverted BOOLEAN NOT NULL DEFAULT false,
  prev_active VARCHAR NOT NULL CHECK (prev_active IN ('a', 'b')),
  PRIMARY KEY (job_id, vehicle)
);
CREATE SEQUENCE IF NOT EXISTS ota_ops_seq START 1;
CREATE TABLE IF NOT EXISTS ota_ops (
  seq BIGINT PRIMARY KEY DEFAULT nextval('ota_ops_seq'),
  job_id VARCHAR NOT NULL,
  op VARCHAR NOT NULL CHECK (op IN ('deliver', 'revert', 'promote')),
  cohort VARCHAR NOT NULL,
  vehicles INTEGER NOT NULL,
  "at" TIMESTAMP NOT NULL DEFAULT current_timestamp
);
CREATE TABLE IF NOT EXISTS batches (
  batch_id VARCHAR PRIMARY KEY,
  rollout_id VARCHAR NOT NULL,
  phase VARCHAR NOT NULL CHECK (phase IN ('shadow', 'canary')),
  events BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_reads (
  batch_id VARCHAR PRIMARY KEY,
  rollout_id VARCHAR NOT NULL,
  phase VARCHAR NOT NULL,
  ingested_max_ms BIGINT
);
CREATE TABLE IF NOT EXISTS events (
  event_id VARCHAR NOT NULL,
  rollout_id VARCHAR NOT NULL,
  batch_id VARCHAR NOT NULL,
  phase VARCHAR NOT NULL CHECK (phase IN ('shadow', 'canary')),
  cohort VARCHAR NOT NULL,
  vehicle VARCHAR NOT NULL,
  ts_ms BIGINT NOT NULL,
  arm VARCHAR NOT NULL CHECK (arm IN ('candidate', 'production', 'shadow')),
  pred_candidate UTINYINT,
  pred_production UTINYINT,
  conf_candidate FLOAT,
  conf_production FLOAT,
  lat_candidate DOUBLE,
  lat_production DOUBLE,
  safety_candidate BOOLEAN,
  safety_production BOOLEAN,
  exposure_h DOUBLE,
  weight DOUBLE,
  failed BOOLEAN
);
CREATE TABLE IF NOT EXISTS shadow_edge (
  batch_id VARCHAR NOT NULL,
  rollout_id VARCHAR NOT NULL,
  cohort VARCHAR NOT NULL,
  to_ms BIGINT NOT NULL,
  vehicles BIGINT NOT NULL,
  evaluated BIGINT NOT NULL,
  priority BIGINT NOT NULL,
  disagreements BIGINT NOT NULL,
  uploaded BIGINT NOT NULL,
  over_budget BIGINT NOT NULL,
  PRIMARY KEY (batch_id, cohort)
);
CREATE TABLE IF NOT EXISTS sim_truth (
  event_id VARCHAR PRIMARY KEY,
  label UTINYINT NOT NULL,
  available_at_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS sim_label_noise (
  event_id VARCHAR PRIMARY KEY,
  label UTINYINT NOT NULL
);
CREATE TABLE IF NOT EXISTS label_requests (
  event_id VARCHAR PRIMARY KEY,
  rollout_id VARCHAR NOT NULL,
  requested_at_ms BIGINT NOT NULL,
  reason VARCHAR NOT NULL CHECK (reason IN ('disagreement', 'rare', 'low_confidence', 'sample', 'priority')),
  inclusion DOUBLE NOT NULL CHECK (inclusion > 0 AND inclusion <= 1)
);
CREATE TABLE IF NOT EXISTS labels (
  event_id VARCHAR PRIMARY KEY,
  rollout_id VARCHAR NOT NULL,
  label UTINYINT NOT NULL,
  arrived_at_ms BIGINT NOT NULL,
  phase VARCHAR,
  cohort VARCHAR,
  arm VARCHAR,
  ts_ms BIGINT,
  err_candidate BOOLEAN,
  err_production BOOLEAN
);
CREATE TABLE IF NOT EXISTS look_stats (
  rollout_id VARCHAR NOT NULL,
  phase VARCHAR NOT NULL CHECK (phase IN ('shadow', 'canary')),
  as_of_ms BIGINT NOT NULL,
  cohort VARCHAR NOT NULL,
  arm VARCHAR NOT NULL CHECK (arm IN ('candidate', 'production')),
  events BIGINT NOT NULL,
  labeled BIGINT NOT NULL,
  errors BIGINT NOT NULL,
  lat_n BIGINT NOT NULL,
  lat_sum DOUBLE NOT NULL,
  lat_sumsq DOUBLE NOT NULL,
  loglat_n BIGINT,
  loglat_sum DOUBLE,
  loglat_sumsq DOUBLE,
  safety_events BIGINT,
  exposure_h DOUBLE,
  failed BIGINT,
  PRIMARY KEY (rollout_id, phase, as_of_ms, cohort, arm)
);
CREATE TABLE IF NOT EXISTS batch_stats (
  batch_id VARCHAR NOT NULL,
  rollout_id VARCHAR NOT NULL,
  phase VARCHAR NOT NULL CHECK (phase IN ('shadow', 'canary')),
  cohort VARCHAR NOT NULL,
  arm VARCHAR NOT NULL CHECK (arm IN ('candidate', 'production')),
  min_ts_ms BIGINT NOT NULL,
  max_ts_ms BIGINT NOT NULL,
  events BIGINT NOT NULL,
  lat_n BIGINT NOT NULL,
  lat_sum DOUBLE NOT NULL,
  lat_sumsq DOUBLE NOT NULL,
  loglat_n BIGINT NOT NULL,
  loglat_sum DOUBLE NOT NULL,
  loglat_sumsq DOUBLE NOT NULL,
  safety_events BIGINT NOT NULL,
  exposure_h DOUBLE NOT NULL,
  failed BIGINT,
  PRIMARY KEY (batch_id, cohort, arm)
);
CREATE TABLE IF NOT EXISTS looks (
  rollout_id VARCHAR NOT NULL,
  phase VARCHAR NOT NULL,
  as_of_ms BIGINT NOT NULL,
  PRIMARY KEY (rollout_id, phase, as_of_ms)
);
`;

/**
 * Brings a database created before the safety, log-latency and failed-request columns up to date; a
 * no-op on a new one.
 * Labels ingested before then get their event's look columns copied in; stored canary looks without the
 * new statistics are dropped (they are a cache: the next look recomputes them from the event log).
 * Events logged before then have no safety flags or exposure: they count as none.
 */
const MIGRATE = `
ALTER TABLE events ADD COLUMN IF NOT EXISTS safety_candidate BOOLEAN;
ALTER TABLE events ADD COLUMN IF NOT EXISTS safety_production BOOLEAN;
ALTER TABLE events ADD COLUMN IF NOT EXISTS exposure_h DOUBLE;
ALTER TABLE events ADD COLUMN IF NOT EXISTS weight DOUBLE;
ALTER TABLE events ADD COLUMN IF NOT EXISTS failed BOOLEAN;
ALTER TABLE labels ADD COLUMN IF NOT EXISTS phase VARCHAR;
ALTER TABLE labels ADD COLUMN IF NOT EXISTS cohort VARCHAR;
ALTER TABLE labels ADD COLUMN IF NOT EXISTS arm VARCHAR;
ALTER TABLE labels ADD COLUMN IF NOT EXISTS ts_ms BIGINT;
ALTER TABLE labels ADD COLUMN IF NOT EXISTS err_candidate BOOLEAN;
ALTER TABLE labels ADD COLUMN IF NOT EXISTS err_production BOOLEAN;
UPDATE labels SET phase = e.phase, cohort = e.cohort, arm = e.arm, ts_ms = e.ts_ms,
       err_candidate = e.pred_candidate <> labels.label, err_production = e.pred_production <> labels.label
FROM events e WHERE e.event_id = labels.event_id AND labels.phase IS NULL;
ALTER TABLE look_stats ADD COLUMN IF NOT EXISTS loglat_n BIGINT;
ALTER TABLE look_stats ADD COLUMN IF NOT EXISTS loglat_sum DOUBLE;
ALTER TABLE look_stats ADD COLUMN IF NOT EXISTS loglat_sumsq DOUBLE;
ALTER TABLE look_stats ADD COLUMN IF NOT EXISTS safety_events BIGINT;
ALTER TABLE look_stats ADD COLUMN IF NOT EXISTS exposure_h DOUBLE;
ALTER TABLE look_stats ADD COLUMN IF NOT EXISTS failed BIGINT;
ALTER TABLE batch_stats ADD COLUMN IF NOT EXISTS failed BIGINT;
DELETE FROM looks WHERE (rollout_id, phase) IN (SELECT rollout_id, phase FROM look_stats WHERE loglat_n IS NULL);
DELETE FROM look_stats WHERE loglat_n IS NULL;
`;

/**
 * label_requests before the tiers and `inclusion` existed (reasons 'priority' and 'sample' only): the
 * table is rebuilt with the new reason check and `inclusion`. The share a request had then is not known;
 * those rows get inclusion 1 (read them unweighted).
 */
const MIGRATE_LABEL_REQUESTS = `
CREATE TABLE label_requests_v2 (
  event_id VARCHAR PRIMARY KEY,
  rollout_id VARCHAR NOT NULL,
  requested_at_ms BIGINT NOT NULL,
  reason VARCHAR NOT NULL CHECK (reason IN ('disagreement', 'rare', 'low_confidence', 'sample', 'priority')),
  inclusion DOUBLE NOT NULL CHECK (inclusion > 0 AND inclusion <= 1)
);
INSERT INTO label_requests_v2 SELECT event_id, rollout_id, requested_at_ms, reason, 1 FROM label_requests;
DROP TABLE label_requests;
ALTER TABLE label_requests_v2 RENAME TO label_requests;
`;

/** The owner of a database file another process holds open, as DuckDB names it in its lock error. */
export class DatabaseLocked extends Error {
  override name = 'DatabaseLocked';
  constructor(
    message: string,
    readonly pid: number | undefined,
  ) {
    super(message);
  }
}

/**
 * DuckDB's lock error ("Could not set lock on file ...: Conflicting lock is held in ... (PID n)") as
 * what it means here: another process owns this data directory. Any other error is returned as it is.
 */
export function lockedError(path: string, err: unknown): unknown {
  const message = err instanceof Error ? err.message : String(err);
  if (!/Could not set lock on file/i.test(message)) return err;
  const pid = /\(PID (\d+)\)/.exec(message)?.[1];
  return new DatabaseLocked(
    `the fleet database ${path} is open in another process${pid ? ` (PID ${pid})` : ''}: one process owns a data ` +
      'directory (the worker that runs its activities, or a command run beside it). Stop that process, run ' +
      'this command where it runs, or give this one its own FLEETGATE_DATA_DIR (with its own task queue: ' +
      'FLEETGATE_TASK_QUEUE)',
    pid === undefined ? undefined : Number(pid),
  );
}

/** Opens (creating when absent) the fleet database at `path` (':memory:' for a throwaway one). */
export async function openFleetDatabase(path: string): Promise<FleetDatabase> {
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
  // Checkpoints after 256 MB of write-ahead log rather than DuckDB's 16 MB: every batch commits its
  // events, and a checkpoint at each few batches rewrote the tables more often than it wrote them.
  let instance: DuckDBInstance;
  try {
    instance = await DuckDBInstance.create(path, { checkpoint_threshold: '256MB' });
  } catch (err) {
    throw lockedError(path, err);
  }
  const connection = await instance.connect();
  await transaction(connection, async () => {
    await connection.run(SCHEMA);
    // The ingested records (events/writer.ts) live in the same file: one process owns both.
    await connection.run(INGESTED_SCHEMA_SQL);
    await connection.run(MIGRATE);
    const [current] = await rows(
      connection,
      `SELECT 1 FROM duckdb_columns() WHERE table_name = 'label_requests' AND column_name = 'inclusion'`,
    );
    if (!current) await connection.run(MIGRATE_LABEL_REQUESTS);
  });
  return {
    instance,
    connection,
    close: async () => {
      await exclusive(connection, async () => undefined);
      connection.closeSync();
      instance.closeSync();
    },
  };
}

const queues = new WeakMap<DuckDBConnection, Promise<unknown>>();

/** Runs `fn` alone on the connection: after everything queued before it, before everything after. */
export function exclusive<T>(conn: DuckDBConnection, fn: () => Promise<T>): Promise<T> {
  const previous = queues.get(conn) ?? Promise.resolve();
  const run = previous.then(fn);
  queues.set(
    conn,
    run.catch(() => undefined),
  );
  return run;
}

/** Runs `fn` alone on the connection inside one transaction: all of it is committed, or none. */
export function transaction<T>(conn: DuckDBConnection, fn: () => Promise<T>): Promise<T> {
  return exclusive(conn, async () => {
    await conn.run('BEGIN TRANSACTION');
    try {
      const result = await fn();
      await conn.run('COMMIT');
      return result;
    } catch (err) {
      await conn.run('ROLLBACK').catch(() => undefined);
      throw err;
    }
  });
}

export type Row = Record<string, unknown>;

/** Query parameters: positional (`?`) or named (`$name`). */
export type Params = DuckDBValue[] | Record<string, DuckDBValue>;

/** Rows of a query as plain objects (BIGINT columns come back as bigint; see `num`). Takes no lock. */
export async function rows(conn: DuckDBConnection, sql: string, params: Params = []): Promise<Row[]> {
  const reader = await conn.runAndReadAll(sql, params);
  return reader.getRowObjectsJS() as Row[];
}

/** Columns of a query as arrays, in select order. Takes no lock. */
export async function columns(
  conn: DuckDBConnection,
  sql: string,
  params: Params = [],
): Promise<unknown[][]> {
  const reader = await conn.runAndReadAll(sql, params);
  return reader.getColumnsJS() as unknown[][];
}

/** Runs a statement; returns how many rows it changed. Takes no lock. */
export async function exec(conn: DuckDBConnection, sql: string, params: Params = []): Promise<number> {
  const result = await conn.run(sql, params);
  return result.rowsChanged;
}

/** A number from a DuckDB value (BIGINT arrives as bigint, aggregates over nothing as null). */
export function num(value: unknown): number {
  if (value === null || value === undefined) return 0;
  return Number(value);
}

/** How many vehicles of `fleet` the fleet database holds (0 for a fleet it does not know). Takes no lock. */
export async function countVehicles(conn: DuckDBConnection, fleet: string): Promise<number> {
  const [row] = await rows(conn, `SELECT count(*) AS n FROM vehicles WHERE fleet = ?`, [fleet]);
  return num(row?.n);
}

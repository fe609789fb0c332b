/**
 * The one writer of ingested records: every ingestion path (NDJSON, Parquet, and any later one) hands
 * it a batch of raw records of one kind for one fleet, and it validates the whole batch against the
 * contract (events/contract.ts) before anything is written, then writes it in one DuckDB transaction:
 * all of the batch, or none of it. A refused batch (`BatchRefused`, naming each bad record's position,
 * field and fix) changes nothing already stored. A Parquet batch that passed the contract's SQL check
 * (events/sql-check.ts, as strict as the contract or stricter) is given as `ingestChecked` and staged
 * from its file in SQL, in the same transaction; any other goes through `ingest`.
 *
 * Exactly once by id: a record whose key is already stored (fleet + eventId for inference events,
 * fleet + eventId + labeler for labels, fleet + requestId for outcomes, fleet + unit + rolloutId +
 * fromMs for upload reports), or repeated identically
 * within the batch, is a duplicate: not written, counted; the first one received stays. A batch that
 * repeats a key with other values is refused (events/contract.ts `validateBatch`). Each row records its ingestion
 * time (`ingested_at_ms`).
 *
 * Watermarks, per fleet and cohort: the producer declares one with a batch of inference events ("every
 * event of these cohorts with `at` below W has been sent"), as Flink and Beam sources do; the stored
 * watermark of each cohort of the batch becomes the greater of the stored one and W, so it never goes
 * back. The server cannot infer one: a vehicle that is parked or out of coverage sends nothing, and only
 * the producer knows whether more is coming. Events with `at` below their cohort's watermark when they
 * arrive are still stored, and counted as late.
 *
 * The database is a cache when the writer has an object store: the new rows of each batch (those not
 * already stored) are then also written as one Parquet partition (events/partitions.ts), and each
 * watermark change as a small partition of its own, from which events/rebuild.ts rebuilds the database
 * on any machine. The order is: stage the batch, find its new rows, write the partitions to the store,
 * then commit. A failed store write rolls the batch back, so the producer is answered with an error and
 * sends again. A crash after the partition and before the commit leaves a partition whose rows the
 * database lacks: the producer, having had no answer, sends the batch again, and its rows are written to
 * the database and to a partition again (under another key when the rows differ, e.g. by
 * `ingested_at_ms`; else under the same key, which `putIfAbsent` finds already there). A key reaches a
 * second partition only that way, because a committed key is a duplicate before any partition is
 * written; so a rebuild keeps, for each key, the row with the latest `ingested_at_ms`, the one the
 * database committed, and the outcome is the same as without the crash.
 *
 * A writer is opened on a database file of its own (`open`), or attached to a DuckDB instance its caller
 * already holds (`attach`, for a process that keeps other tables in the same file, since only one
 * process may open a DuckDB file): then it makes and closes only its own connection.
 *
 * It must never store a record that did not pass the contract (so never a raw unit id: `unit` is a
 * pseudonym or the batch is refused), never commit a batch whose partition the store has not accepted,
 * and never log a record.
 */
import { DuckDBInstance, type DuckDBAppender, type DuckDBConnection } from '@duckdb/node-api';
import { mkdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { ObjectStore } from '../activities/deps';
import {
  MAX_PROBLEMS,
  parquetColumnsOf,
  recordKey,
  validateBatch,
  type ColumnType,
  type Inference,
  type Problem,
  type RecordKind,
  type RecordOf,
} from './contract';
import { ingestionDate, partitionBytes, putPartition, sqlString } from './partitions';
import type { RolloutDirectory } from './rollouts';
import type { SqlBatch } from './sql-check';

/** A batch refused by the contract: nothing of it was written. */
export class BatchRefused extends Error {
  override name = 'BatchRefused';
  constructor(
    readonly problems: Problem[],
    readonly problemCount: number,
  ) {
    super(`the batch was refused: ${problemCount} problem(s); nothing of it was stored`);
  }
}

/** What a batch did. `watermark`: the stored watermark (epoch ms) of each cohort of the batch, or null. */
export interface WriteResult {
  accepted: number;
  duplicates: number;
  late: number;
  watermark: Record<string, number | null> | null;
}

export interface IngestOptions {
  /** "line" (NDJSON) or "row" (Parquet): how errors name a record's position. */
  where: 'line' | 'row';
  /** The 1-based position of each raw record (default: its index + 1). */
  positions?: readonly number[];
  /** The producer's watermark for the batch's cohorts (inference events only), epoch ms. */
  watermarkMs?: number;
  /**
   * Makes a file of the batch's NDJSON text (events/parse.ts), asked for once its records passed the
   * contract: DuckDB's JSON reader then makes their rows of it (`jsonStageSql`) into a Parquet file,
   * outside the turn of the writes, and the write reads them from there as it reads a checked Parquet
   * batch, rather than appending the records value by value from JavaScript. The records stay the
   * truth: when a key repeats within the batch, or the reader fails (a field repeated within an object,
   * which JavaScript resolves to the last one) or gives back another number of rows, the records are
   * appended as without a file.
   */
  ndjsonFile?: () => Promise<string>;
}

export interface WriterOptions {
  /** Awaited inside the transaction just before it commits (tests hold a batch open with it). */
  beforeCommit?: () => Promise<void>;
  /** The clock of `ingested_at_ms` (default Date.now). */
  now?: () => number;
  /** Where the new rows of each batch and each watermark change are kept as Parquet partitions. */
  store?: ObjectStore;
  /** Directory of the temporary Parquet files (default the system's). */
  tmpDir?: string;
  /**
   * The rollouts this endpoint knows (events/rollouts.ts): an inference event or upload report naming
   * another rollout refuses its batch. Absent: any rollout id is taken (a database no rollout reads).
   */
  rollouts?: RolloutDirectory;
}

/** Table of each kind, and the columns of its key. */
export const TABLES: Record<RecordKind, { table: string; key: string[] }> = {
  inference: { table: 'ingested_inference', key: ['fleet', 'event_id'] },
  label: { table: 'ingested_labels', key: ['fleet', 'event_id', 'labeler'] },
  outcome: { table: 'ingested_outcomes', key: ['fleet', 'request_id'] },
  upload: { table: 'ingested_uploads', key: ['fleet', 'unit', 'rollout_id', 'from_ms'] },
};
export const WATERMARKS_TABLE = 'ingest_watermarks';

interface Column {
  name: string;
  type: ColumnType;
  nullable: boolean;
  get: (fleet: string, r: Record<string, unknown>, now: number) => unknown;
}

/** Reads a (possibly nested) field of a record, null where absent; one closure per depth (a batch calls it per row). */
function fieldOf(path: readonly string[]): Column['get'] {
  type R = Record<string, unknown> | null | undefined;
  const [a, b, ...rest] = path as [string, string | undefined, ...string[]];
  if (b === undefined) return (_f, r) => r[a] ?? null;
  if (rest.length === 0) {
    return (_f, r) => {
      const o = r[a];
      return o !== null && typeof o === 'object' ? ((o as R)![b] ?? null) : null;
    };
  }
  return (_f, r) => {
    let v: unknown = r;
    for (const k of path)
      v = v !== null && typeof v === 'object' ? (v as Record<string, unknown>)[k] : undefined;
    return v ?? null;
  };
}

/** The table's columns (names quoted in SQL: `at` is a keyword): `fleet` (from the URL where the record has none), the record's, ingested_at_ms. */
function columnsOf(kind: RecordKind): Column[] {
  const record = parquetColumnsOf(kind);
  const cols: Column[] = [];
  if (!record.some((c) => c.name === 'fleet')) {
    cols.push({ name: 'fleet', type: 'VARCHAR', nullable: false, get: (fleet) => fleet });
  }
  for (const c of record) {
    cols.push({
      name: c.name,
      type: c.type,
      nullable: c.nullable,
      get: fieldOf(c.field),
    });
  }
  cols.push({ name: 'ingested_at_ms', type: 'BIGINT', nullable: false, get: (_f, _r, now) => now });
  return cols;
}

const COLUMNS = Object.fromEntries(
  (Object.keys(TABLES) as RecordKind[]).map((k) => [k, columnsOf(k)]),
) as Record<RecordKind, Column[]>;

/** The column names of a kind's table, in table order. */
export function columnNamesOf(kind: RecordKind): string[] {
  return COLUMNS[kind].map((c) => c.name);
}

/**
 * How many staged rows of a kind repeat a stored key. The tables have no key index (an index costs per
 * row, in every insert and commit): the stored keys that the batch repeats are found by a semi-join
 * whose hash table is the batch's (the stored table is only scanned, its key columns, and DuckDB pushes
 * the min and max of the batch's keys into that scan, so row groups of other key ranges are skipped).
 */
function storedRepeatsSql(kind: RecordKind, rows: string): string {
  const { table, key } = TABLES[kind];
  return `SELECT count(*)::BIGINT AS n FROM ${table} t SEMI JOIN ${rows} s USING (${key.map((k) => `"${k}"`).join(', ')})`;
}

/**
 * The staged rows of a kind whose key is not stored yet: the stored keys the batch repeats, found by the
 * semi-join of `storedRepeatsSql`, left out by an anti-join on those few. Evaluated only when some key
 * repeats, into `fresh_<kind>`.
 */
function newRowsSql(kind: RecordKind): string {
  const { table, key } = TABLES[kind];
  const using = key.map((k) => `"${k}"`).join(', ');
  return `WITH stored AS MATERIALIZED (
      SELECT ${key.map((k) => `t."${k}"`).join(', ')} FROM ${table} t SEMI JOIN stage_${kind} s USING (${using})
    )
    SELECT s.* FROM stage_${kind} s ANTI JOIN stored USING (${using})`;
}

/** The new rows of the batch (in table `rows`) in key order: the rows of its partition. */
function partitionRowsSql(kind: RecordKind, rows: string): string {
  return `SELECT * FROM ${rows} ORDER BY ${TABLES[kind].key.map((k) => `"${k}"`).join(', ')}`;
}

/**
 * A kind's table. No primary key: the writer is the only one that inserts (one process holds the
 * database; its batches run one at a time) and it inserts only new keys (`newRowsSql`).
 */
function tableSql(kind: RecordKind): string {
  const { table } = TABLES[kind];
  const cols = COLUMNS[kind].map((c) => `  "${c.name}" ${c.type}${c.nullable ? '' : ' NOT NULL'}`);
  return `CREATE TABLE IF NOT EXISTS ${table} (\n${cols.join(',\n')}\n);
CREATE TEMP TABLE IF NOT EXISTS stage_${kind} AS SELECT * FROM ${table} LIMIT 0;
CREATE TEMP TABLE IF NOT EXISTS fresh_${kind} AS SELECT * FROM ${table} LIMIT 0;`;
}

export const SCHEMA_SQL = `${(Object.keys(TABLES) as RecordKind[]).map(tableSql).join('\n')}
CREATE TABLE IF NOT EXISTS ${WATERMARKS_TABLE} (
  fleet VARCHAR NOT NULL,
  cohort VARCHAR NOT NULL,
  watermark_ms BIGINT NOT NULL,
  updated_at_ms BIGINT NOT NULL,
  PRIMARY KEY (fleet, cohort)
);`;

/** The error to throw for `err`: DuckDB's error on a checked batch's file names the file, never shown. */
function shownError(err: unknown, sql: SqlBatch | undefined): unknown {
  return sql && err instanceof Error && err.message.includes(sql.file)
    ? new Error('the checked batch could not be written')
    : err;
}

/**
 * A SELECT of the table's columns of `kind` but `ingested_at_ms`, in table order, over an NDJSON file of
 * its records read by DuckDB's JSON reader with the contract's fields and types given (nested objects
 * as STRUCTs; no detection). Only for records that already passed the contract: the reader ignores
 * unknown fields and casts what it can, which the contract refuses first.
 */
export function jsonStageSql(kind: RecordKind, fleet: string, file: string): string {
  const record = parquetColumnsOf(kind);
  const members = new Map<string, string[]>();
  const types = new Map<string, string>();
  for (const c of record) {
    const [top, sub, ...deeper] = c.field;
    if (deeper.length > 0) throw new Error(`the contract's field ${c.field.join('.')} is nested too deep`);
    if (sub === undefined) types.set(top!, c.type);
    else members.set(top!, [...(members.get(top!) ?? []), `"${sub}" ${c.type}`]);
  }
  for (const [top, list] of members) types.set(top, `STRUCT(${list.join(', ')})`);
  const spec = [...types].map(([k, t]) => `${sqlString(k)}: ${sqlString(t)}`).join(', ');
  const select = COLUMNS[kind]
    .filter((c) => c.name !== 'ingested_at_ms')
    .map((c) => {
      const col = record.find((r) => r.name === c.name);
      if (col === undefined) return `${sqlString(fleet)} AS "${c.name}"`;
      const [top, sub] = col.field;
      return sub === undefined
        ? `"${top}" AS "${c.name}"`
        : `struct_extract("${top}", ${sqlString(sub)}) AS "${c.name}"`;
    });
  return `SELECT ${select.join(', ')} FROM read_json(${sqlString(file)}, format = 'newline_delimited',
    records = true, columns = {${spec}})`;
}

/** Appends one value of a contract column's type (null as NULL). */
export function append(a: DuckDBAppender, type: ColumnType, v: unknown): void {
  if (v === null) return a.appendNull();
  switch (type) {
    case 'VARCHAR':
      return a.appendVarchar(v as string);
    case 'BOOLEAN':
      return a.appendBoolean(v as boolean);
    case 'INTEGER':
      return a.appendInteger(v as number);
    case 'BIGINT':
      return a.appendBigInt(BigInt(v as number));
    case 'DOUBLE':
      return a.appendDouble(v as number);
  }
}

export class EventWriter {
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(
    private readonly instance: DuckDBInstance,
    /** The writer's connection; read it only through `read`. */
    private readonly conn: DuckDBConnection,
    private readonly options: WriterOptions,
    /** Whether `close` closes the instance too (opened by `open`, not given to `attach`). */
    private readonly ownsInstance: boolean,
  ) {}

  /** Opens (creating where needed) the database file, or ":memory:". */
  static async open(file: string, options: WriterOptions = {}): Promise<EventWriter> {
    if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true });
    let instance: DuckDBInstance;
    try {
      instance = await DuckDBInstance.create(file);
    } catch (err) {
      // DuckDB's lock error, as what it means here: another process writes this database.
      const message = err instanceof Error ? err.message : String(err);
      if (!/Could not set lock on file/i.test(message)) throw err;
      const pid = /\(PID (\d+)\)/.exec(message)?.[1];
      throw new Error(
        `the ingestion database ${file} is open in another process${pid ? ` (PID ${pid})` : ''}: one process ` +
          'writes a database (a `fleetgate ingest`, a worker, or an `events` command). Stop that process, ' +
          'or give this one its own database (--db, or another FLEETGATE_DATA_DIR)',
        { cause: err },
      );
    }
    try {
      return await EventWriter.on(instance, options, true);
    } catch (err) {
      instance.closeSync();
      throw err;
    }
  }

  /**
   * A writer on a DuckDB instance the caller holds (its other tables stay as they are): a connection of
   * its own, the ingestion tables created where missing. `close` closes that connection only, never the
   * instance.
   */
  static attach(instance: DuckDBInstance, options: WriterOptions = {}): Promise<EventWriter> {
    return EventWriter.on(instance, options, false);
  }

  private static async on(
    instance: DuckDBInstance,
    options: WriterOptions,
    ownsInstance: boolean,
  ): Promise<EventWriter> {
    const conn = await instance.connect();
    try {
      await conn.run(SCHEMA_SQL);
    } catch (err) {
      conn.closeSync();
      throw err;
    }
    return new EventWriter(instance, conn, options, ownsInstance);
  }

  /** A new connection to the same database (Parquet batches are read on one of their own). */
  connect(): Promise<DuckDBConnection> {
    return this.instance.connect();
  }

  /** Runs `fn` after everything queued on the writer's connection, alone. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Rows of a query on the writer's connection, in turn with the writes (tests and reads). */
  read(sql: string, params: Record<string, string | number> = {}): Promise<Record<string, unknown>[]> {
    return this.exclusive(async () => (await this.conn.runAndReadAll(sql, params)).getRowObjectsJS());
  }

  /**
   * Validates a batch of raw records against the contract, then writes it in one transaction.
   * Throws `BatchRefused` (nothing written) when any record is refused.
   */
  async ingest(
    kind: RecordKind,
    fleet: string,
    raw: readonly unknown[],
    opts: IngestOptions,
  ): Promise<WriteResult> {
    if (this.closed) throw new Error('the event writer is closed');
    const v = validateBatch(kind, fleet, raw, opts.where, opts.positions);
    if (!v.ok) throw new BatchRefused(v.problems, v.problemCount);
    const records = v.records as unknown as Record<string, unknown>[];
    if (this.options.rollouts && (kind === 'inference' || kind === 'upload')) {
      await this.refuseUnknownRollouts(this.options.rollouts, records, opts);
    }
    // An NDJSON batch is read again by DuckDB, into a Parquet file of its rows, outside the writes' turn.
    const unique =
      opts.ndjsonFile !== undefined &&
      new Set(records.map((r) => recordKey(kind, r))).size === records.length;
    const rows = unique
      ? await this.rowsOfJson(kind, fleet, await opts.ndjsonFile!(), records.length)
      : undefined;
    try {
      if (!rows) return await this.exclusive(() => this.write(kind, fleet, records, opts.watermarkMs));
      // Written as a checked batch is: from the rows' file, without staging them when no key is stored.
      const batch: SqlBatch = {
        select: `SELECT * FROM read_parquet(${sqlString(rows.file)})`,
        records: records.length,
        cohorts: kind === 'inference' ? [...new Set(records.map((r) => r.cohort as string))] : [],
        rolloutIds: [],
        file: rows.file,
      };
      return await this.exclusive(() => this.write(kind, fleet, batch, opts.watermarkMs));
    } finally {
      if (rows) await rm(rows.dir, { recursive: true, force: true });
    }
  }

  /** Refuses the batch (nothing written) when a record names a rollout the directory does not know. */
  private async refuseUnknownRollouts(
    rollouts: RolloutDirectory,
    records: readonly Record<string, unknown>[],
    opts: IngestOptions,
  ): Promise<void> {
    const verdict = new Map<string, boolean>();
    const problems: Problem[] = [];
    let problemCount = 0;
    for (let i = 0; i < records.length; i++) {
      const id = records[i]!.rolloutId;
      if (typeof id !== 'string') continue;
      let known = verdict.get(id);
      if (known === undefined) verdict.set(id, (known = await rollouts.known(id)));
      if (known) continue;
      problemCount++;
      if (problems.length < MAX_PROBLEMS) {
        problems.push({
          [opts.where]: opts.positions?.[i] ?? i + 1,
          field: 'rolloutId',
          message:
            `names no rollout this worker knows (${JSON.stringify(id.slice(0, 100))}): send the id of a running ` +
            'rollout (fleetgate status lists them), or leave rolloutId out of events that belong to no rollout',
        });
      }
    }
    if (problemCount > 0) throw new BatchRefused(problems, problemCount);
  }

  /**
   * Writes a Parquet batch that passed the SQL check (events/sql-check.ts), staged from its file in SQL:
   * the same transaction, dedup, watermarks and partitions as `ingest`. Answers undefined, writing
   * nothing, when a rollout id of the batch is unknown, so that `ingest` refuses it in its own words.
   */
  async ingestChecked(
    kind: RecordKind,
    fleet: string,
    batch: SqlBatch,
    opts: Pick<IngestOptions, 'watermarkMs'> = {},
  ): Promise<WriteResult | undefined> {
    if (this.closed) throw new Error('the event writer is closed');
    const rollouts = this.options.rollouts;
    if (rollouts && (kind === 'inference' || kind === 'upload')) {
      for (const id of batch.rolloutIds) if (!(await rollouts.known(id))) return undefined;
    }
    return this.exclusive(() => this.write(kind, fleet, batch, opts.watermarkMs));
  }

  /**
   * Writes a batch that a producer in this process built as typed contract records, without parsing
   * it again: the same transaction, dedup, watermarks and partitions as `ingest`. For the simulated
   * fleet only, whose records a test validates against the contract (test/unit/sim-producer.test.ts);
   * anything received from outside goes through `ingest`.
   */
  async ingestTyped<K extends RecordKind>(
    kind: K,
    fleet: string,
    records: readonly RecordOf<K>[],
    opts: Pick<IngestOptions, 'watermarkMs'> = {},
  ): Promise<WriteResult> {
    if (this.closed) throw new Error('the event writer is closed');
    const rows = records as unknown as Record<string, unknown>[];
    return this.exclusive(() => this.write(kind, fleet, rows, opts.watermarkMs));
  }

  private async write(
    kind: RecordKind,
    fleet: string,
    batch: Record<string, unknown>[] | SqlBatch,
    watermarkMs: number | undefined,
  ): Promise<WriteResult> {
    const now = (this.options.now ?? Date.now)();
    const sql = Array.isArray(batch) ? undefined : batch;
    const records = Array.isArray(batch) ? batch : [];
    const seen = new Set<string>();
    const fresh: Record<string, unknown>[] = [];
    for (const r of records) {
      const k = recordKey(kind, r);
      if (seen.has(k)) continue;
      seen.add(k);
      fresh.push(r);
    }
    const cohorts = sql
      ? sql.cohorts
      : kind === 'inference'
        ? [...new Set(fresh.map((r) => (r as unknown as Inference).cohort))]
        : [];
    const { table } = TABLES[kind];
    const stage = `stage_${kind}`;
    const conn = this.conn;
    await conn.run('BEGIN TRANSACTION');
    try {
      await conn.run(`DELETE FROM ${stage}`);
      await conn.run(`DELETE FROM fresh_${kind}`);
      const staged = sql ? sql.records : fresh.length;
      // The batch's rows; for a checked batch none of whose keys is stored yet (the common case), read
      // from its file where they are needed (the file's key columns alone for the count) and not staged.
      let rows = stage;
      // All of the batch's rows, new or not: the cohorts whose watermark it declares.
      let all = stage;
      let repeats = -1;
      if (sql) {
        const fromFile = `(SELECT *, ${BigInt(now)}::BIGINT AS "ingested_at_ms" FROM (${sql.select}))`;
        repeats = await this.storedRepeats(kind, fromFile);
        if (repeats === 0) rows = all = fromFile;
        else {
          // Checked in SQL: no key repeats within it, so every row is staged. DuckDB's error may name the file.
          await conn.run(`INSERT INTO ${stage} SELECT * FROM ${fromFile}`).catch(() => {
            throw new Error('the checked batch could not be staged');
          });
        }
      } else {
        const cols = COLUMNS[kind];
        const appender = await conn.createAppender(stage);
        try {
          for (const r of fresh) {
            for (const c of cols) append(appender, c.type, c.get(fleet, r, now));
            appender.endRow();
          }
        } finally {
          appender.closeSync();
        }
      }
      // The new rows, found once: the late count, the partition and the insert all read them. In the
      // common case no staged key is stored yet (the stage holds no key twice), and they are the stage.
      if (repeats < 0) repeats = await this.storedRepeats(kind, stage);
      let accepted = staged;
      if (repeats > 0) {
        accepted = (await conn.run(`INSERT INTO fresh_${kind} ${newRowsSql(kind)}`)).rowsChanged;
        rows = `fresh_${kind}`;
      }
      let late = 0;
      // The stored watermarks of the fleet, read once: late rows are found here (the stored rows are
      // looked at only when some staged row is below its cohort's watermark: none, for a producer that
      // sends its windows in order), and the batch's answer is computed from them.
      const stored = new Map<string, number>();
      if (kind === 'inference') {
        const wm = await conn.runAndReadAll(
          `SELECT cohort, watermark_ms FROM ${WATERMARKS_TABLE} WHERE fleet = $fleet`,
          { fleet },
        );
        for (const r of wm.getRowObjectsJS()) stored.set(r.cohort as string, Number(r.watermark_ms));
        const below =
          sql !== undefined ||
          fresh.some((r) => {
            const e = r as unknown as Inference;
            return e.at < (stored.get(e.cohort) ?? -Infinity);
          });
        if (below) {
          const lateRows = await conn.runAndReadAll(
            `SELECT count(*)::INTEGER AS n FROM ${rows} s
             JOIN ${WATERMARKS_TABLE} w USING (fleet, cohort) WHERE s."at" < w.watermark_ms`,
          );
          late = lateRows.getRowObjectsJS()[0]!.n as number;
        }
      }
      const store = this.options.store;
      const date = ingestionDate(now);
      // The partitions are put in the store while the rows are inserted; all are in before the commit.
      // Each put is caught as it starts (its failure kept, thrown below), so it is never left unhandled.
      const puts: Promise<{ failed: unknown } | undefined>[] = [];
      const put = (p: Parameters<typeof putPartition>[1], bytes: Buffer) =>
        puts.push(
          putPartition(store!, p, bytes).then(
            () => undefined,
            (failed: unknown) => ({ failed }),
          ),
        );
      if (store) {
        if (accepted > 0) {
          const bytes = await partitionBytes(conn, partitionRowsSql(kind, rows), this.options.tmpDir);
          put({ kind, fleet, date }, bytes);
        }
        if (kind === 'inference' && watermarkMs !== undefined && cohorts.length > 0) {
          // The cohorts whose watermark this batch raises, with their new value.
          const raised = `SELECT ${sqlString(fleet)} AS fleet, c.cohort, ${BigInt(watermarkMs)}::BIGINT AS watermark_ms,
              ${BigInt(now)}::BIGINT AS updated_at_ms
            FROM (SELECT DISTINCT cohort FROM ${all}) c
            LEFT JOIN ${WATERMARKS_TABLE} w ON w.fleet = ${sqlString(fleet)} AND w.cohort = c.cohort
            WHERE w.watermark_ms IS NULL OR w.watermark_ms < ${BigInt(watermarkMs)}
            ORDER BY c.cohort`;
          const n = await conn.runAndReadAll(`SELECT count(*)::INTEGER AS n FROM (${raised})`);
          if ((n.getRowObjectsJS()[0]!.n as number) > 0) {
            const bytes = await partitionBytes(conn, raised, this.options.tmpDir);
            put({ kind: 'watermarks', fleet, date }, bytes);
          }
        }
      }
      if (accepted > 0) await conn.run(`INSERT INTO ${table} SELECT * FROM ${rows}`);
      let watermark: Record<string, number | null> | null = null;
      if (kind === 'inference') {
        if (watermarkMs !== undefined && cohorts.length > 0) {
          await conn.run(
            `INSERT INTO ${WATERMARKS_TABLE}
             SELECT $fleet, cohort, $w, $now FROM (SELECT DISTINCT cohort FROM ${all})
             ON CONFLICT (fleet, cohort) DO UPDATE SET
               watermark_ms = excluded.watermark_ms,
               updated_at_ms = excluded.updated_at_ms
             WHERE excluded.watermark_ms > ${WATERMARKS_TABLE}.watermark_ms`,
            { fleet, w: BigInt(watermarkMs), now: BigInt(now) },
          );
        }
        if (watermarkMs !== undefined) {
          for (const c of cohorts) stored.set(c, Math.max(stored.get(c) ?? -Infinity, watermarkMs));
        }
        watermark = Object.fromEntries(cohorts.map((c) => [c, stored.get(c) ?? null]));
      }
      for (const r of await Promise.all(puts)) if (r) throw r.failed;
      await this.options.beforeCommit?.();
      await conn.run('COMMIT');
      const count = sql ? sql.records : records.length;
      return { accepted, duplicates: count - accepted, late, watermark };
    } catch (err) {
      await conn.run('ROLLBACK').catch(() => undefined);
      throw shownError(err, sql);
    }
  }

  /** How many of the batch's `rows` (a table, or a subquery in parentheses) repeat a stored key. */
  private async storedRepeats(kind: RecordKind, rows: string): Promise<number> {
    const r = await this.conn.runAndReadAll(storedRepeatsSql(kind, rows));
    return Number(r.getRowObjectsJS()[0]!.n as bigint);
  }

  /**
   * The table rows (but `ingested_at_ms`, which the write adds) of the `n` validated records of an NDJSON
   * file, read by DuckDB's JSON reader (`jsonStageSql`) on a connection of its own and kept as a Parquet
   * file in a new directory (removed by the caller). Undefined when the reader fails or reads another
   * number of rows: the records are then appended.
   */
  private async rowsOfJson(
    kind: RecordKind,
    fleet: string,
    ndjson: string,
    n: number,
  ): Promise<{ dir: string; file: string } | undefined> {
    const dir = await mkdtemp(join(this.options.tmpDir ?? tmpdir(), 'fleetgate-rows-'));
    const file = join(dir, 'rows.parquet');
    const conn = await this.instance.connect();
    try {
      const r = await conn.run(
        `COPY (${jsonStageSql(kind, fleet, ndjson)}) TO ${sqlString(file)} (FORMAT parquet, COMPRESSION uncompressed)`,
      );
      if (r.rowsChanged === n) return { dir, file };
    } catch {
      // The reader's verdict differs from the contract's (a field repeated within an object): append.
    } finally {
      conn.closeSync();
    }
    await rm(dir, { recursive: true, force: true });
    return undefined;
  }

  /**
   * Deletes the rows of every kind ingested before `beforeMs`, in one transaction (events/rebuild.ts
   * `prune`, after the partitions of those days are gone from the store). Answers the count per kind.
   */
  async deleteIngestedBefore(beforeMs: number): Promise<Record<RecordKind, number>> {
    if (this.closed) throw new Error('the event writer is closed');
    return this.exclusive(async () => {
      const conn = this.conn;
      const counts = {} as Record<RecordKind, number>;
      await conn.run('BEGIN TRANSACTION');
      try {
        for (const kind of Object.keys(TABLES) as RecordKind[]) {
          const r = await conn.run(`DELETE FROM ${TABLES[kind].table} WHERE ingested_at_ms < $before`, {
            before: BigInt(beforeMs),
          });
          counts[kind] = r.rowsChanged;
        }
        await conn.run('COMMIT');
      } catch (err) {
        await conn.run('ROLLBACK').catch(() => undefined);
        throw err;
      }
      return counts;
    });
  }

  /**
   * Waits for queued batches, then closes the writer's connection, and the database when the writer
   * opened it (`open`; an instance given to `attach` stays open).
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.queue;
    this.conn.closeSync();
    if (this.ownsInstance) this.instance.closeSync();
  }
}

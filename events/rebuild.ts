/**
 * The database of ingested records rebuilt from, pruned with and compacted in the object store, where
 * the writer (events/writer.ts) keeps every batch's new rows and every watermark change as Parquet
 * partitions (events/partitions.ts). A data worker on a new machine runs `rebuildFromStore` and gets the
 * same rows, `ingested_at_ms` included, and the same watermarks as the database that wrote them.
 *
 * Rebuild: every partition is downloaded into a private cache directory (created exclusively, removed
 * after), then each kind is inserted into a fresh database at a temporary name beside the target, which
 * is linked into place only when complete (an existing file is never replaced). A key found in several
 * partitions (a batch whose commit crashed after its partition was stored, then re-sent; or a compaction
 * that stopped before deleting the small files) keeps the row with the latest `ingested_at_ms`, ties
 * going to the first partition in key order: that is the row the database committed, since a committed
 * key is a duplicate before any later partition is written. Watermarks: the greatest per fleet and cohort, with the time it was last raised.
 *
 * Prune: partitions of ingestion dates before a day are deleted from the store first, then their rows
 * from the database; a crash in between is finished by running it again, and a rebuild never brings
 * pruned rows back. Watermark partitions are never pruned (a watermark must not go back); compaction
 * keeps them small.
 *
 * Compact: the partitions of one kind, fleet and date are merged into one file, written first, then the
 * small ones deleted; a crash in between leaves rows twice, which a rebuild keeps once.
 *
 * It must never replace an existing database file, never delete a partition before its merged copy is
 * stored, never prune watermarks, and never log a row.
 */
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import type { ObjectStore } from '../activities/deps';
import { writeFileAtomic } from '../activities/atomic-file';
import { RECORD_KINDS, type RecordKind } from './contract';
import {
  PARTITIONS_PREFIX,
  ingestionDate,
  parsePartitionKey,
  partitionKey,
  sha256Hex,
  sqlString,
  type Partition,
  type PartitionKind,
} from './partitions';
import { SCHEMA_SQL, TABLES, WATERMARKS_TABLE, columnNamesOf, type EventWriter } from './writer';

export interface RebuildResult {
  /** Partitions read, per kind. */
  partitions: Record<PartitionKind, number>;
  /** Rows in the rebuilt database, per kind (watermarks: fleet/cohort pairs). */
  rows: Record<PartitionKind, number>;
  /** Keys under events/ that are not partitions (left alone). */
  ignored: string[];
}

const KINDS: PartitionKind[] = [...RECORD_KINDS, 'watermarks'];

/** The partitions of the store, in key order, and the other keys under the prefix. */
export async function listPartitions(
  store: ObjectStore,
): Promise<{ partitions: Partition[]; ignored: string[] }> {
  const partitions: Partition[] = [];
  const ignored: string[] = [];
  for (const key of await store.list(PARTITIONS_PREFIX)) {
    const p = parsePartitionKey(key);
    if (p) partitions.push(p);
    else ignored.push(key);
  }
  return { partitions, ignored };
}

/** Runs `fn` with a fresh private directory (created exclusively), removed after. */
async function withCache<T>(parent: string | undefined, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await fs.mkdtemp(join(parent ?? tmpdir(), 'fleetgate-partitions-'));
  try {
    return await fn(dir);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/** Downloads partitions into `dir` as 000000.parquet, ... (key order kept by the names). */
async function download(store: ObjectStore, parts: Partition[], dir: string): Promise<string[]> {
  const files: string[] = [];
  for (const [i, p] of parts.entries()) {
    const bytes = await store.get(p.key);
    if (bytes === undefined) {
      throw new Error(
        `partition ${p.key} was listed but is gone (a prune or compaction ran meanwhile); run the command again`,
      );
    }
    const file = join(dir, `${String(i).padStart(6, '0')}.parquet`);
    await writeFileAtomic(file, bytes, { replace: false, durable: false });
    files.push(file);
  }
  return files;
}

const fileList = (files: string[]) => `[${files.map(sqlString).join(', ')}]`;

/** The rows of some partition files of one record kind, one per key (see the module comment). */
function recordRowsSql(kind: RecordKind, files: string[]): string {
  const cols = columnNamesOf(kind)
    .map((c) => `"${c}"`)
    .join(', ');
  const key = TABLES[kind].key.join(', ');
  return `SELECT ${cols} FROM read_parquet(${fileList(files)}, filename = true)
    QUALIFY row_number() OVER (PARTITION BY ${key} ORDER BY ingested_at_ms DESC, filename) = 1
    ORDER BY ${key}`;
}

/** The watermark rows of some partition files: the greatest per fleet and cohort. */
function watermarkRowsSql(files: string[]): string {
  return `SELECT fleet, cohort, max(watermark_ms) AS watermark_ms, max(updated_at_ms) AS updated_at_ms
    FROM read_parquet(${fileList(files)}) GROUP BY fleet, cohort ORDER BY fleet, cohort`;
}

/** A DuckDB failure on partition files, naming the keys to look at. */
async function onPartitions<T>(parts: Partition[], fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    const keys = parts.map((p) => p.key);
    const shown = keys.slice(0, 3).join(', ') + (keys.length > 3 ? `, and ${keys.length - 3} more` : '');
    throw new Error(
      `cannot read the partitions ${shown}: ${(err as Error).message.split('\n')[0]}; ` +
        'they were not written by fleetgate or are damaged: move them out of events/ and run again',
      { cause: err },
    );
  }
}

/**
 * Builds `dbFile` (which must not exist) from the partitions of the store. `cacheDir`: where the
 * downloads go (default the system's temporary directory).
 */
export async function rebuildFromStore(
  store: ObjectStore,
  dbFile: string,
  options: { cacheDir?: string } = {},
): Promise<RebuildResult> {
  const target = resolve(dbFile);
  if (existsSync(target)) {
    throw new Error(
      `--db ${target} already exists; a rebuild writes a fresh database: move the file away or name another`,
    );
  }
  await fs.mkdir(dirname(target), { recursive: true });
  const { partitions, ignored } = await listPartitions(store);
  const tmp = join(dirname(target), `.${basename(target)}.${randomBytes(8).toString('hex')}.rebuild`);
  const result: RebuildResult = {
    partitions: Object.fromEntries(KINDS.map((k) => [k, 0])) as Record<PartitionKind, number>,
    rows: Object.fromEntries(KINDS.map((k) => [k, 0])) as Record<PartitionKind, number>,
    ignored,
  };
  try {
    await withCache(options.cacheDir, async (cache) => {
      const instance = await DuckDBInstance.create(tmp);
      const conn = await instance.connect();
      try {
        await conn.run(SCHEMA_SQL);
        for (const kind of KINDS) {
          const parts = partitions.filter((p) => p.kind === kind);
          result.partitions[kind] = parts.length;
          if (parts.length === 0) continue;
          const files = await download(store, parts, await fs.mkdtemp(join(cache, `${kind}-`)));
          await onPartitions(parts, async () => {
            if (kind === 'watermarks') {
              const r = await conn.run(`INSERT INTO ${WATERMARKS_TABLE} ${watermarkRowsSql(files)}`);
              result.rows[kind] = r.rowsChanged;
            } else {
              const cols = columnNamesOf(kind)
                .map((c) => `"${c}"`)
                .join(', ');
              const r = await conn.run(
                `INSERT INTO ${TABLES[kind].table} (${cols}) ${recordRowsSql(kind, files)}`,
              );
              result.rows[kind] = r.rowsChanged;
            }
          });
        }
        await conn.run('CHECKPOINT');
      } finally {
        conn.closeSync();
        instance.closeSync();
      }
    });
    try {
      await fs.link(tmp, target);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new Error(`--db ${target} was created while rebuilding; move it away and run again`, {
          cause: err,
        });
      }
      throw err;
    }
  } finally {
    await fs.rm(tmp, { force: true });
    await fs.rm(`${tmp}.wal`, { force: true });
  }
  return result;
}

/** An instant given as yyyy-mm-dd (its UTC midnight) or as epoch milliseconds; undefined otherwise. */
export function parseInstant(s: string): number | undefined {
  if (/^\d{4}-\d{2}-\d{2}$/.test(s)) {
    const ms = Date.parse(`${s}T00:00:00Z`);
    return Number.isNaN(ms) || ingestionDate(ms) !== s ? undefined : ms;
  }
  if (/^\d{1,15}$/.test(s)) return Number(s);
  return undefined;
}

export interface PruneResult {
  /** Ingestion dates before this one were pruned (yyyy-mm-dd). */
  before: string;
  partitions: number;
  rows: Record<RecordKind, number>;
}

/**
 * Deletes the record partitions whose ingestion date is before the UTC day of `beforeMs` (partitions are
 * whole days, so an instant within a day counts from that day's midnight), then the rows ingested before
 * that midnight from the writer's database.
 */
export async function prune(store: ObjectStore, writer: EventWriter, beforeMs: number): Promise<PruneResult> {
  const before = ingestionDate(beforeMs);
  const { partitions } = await listPartitions(store);
  const old = partitions.filter((p) => p.kind !== 'watermarks' && p.date < before);
  for (const p of old) await store.delete(p.key);
  const rows = await writer.deleteIngestedBefore(Date.parse(`${before}T00:00:00Z`));
  return { before, partitions: old.length, rows };
}

export interface CompactResult {
  /** Groups (kind, fleet, date) of several partitions that were merged. */
  groups: number;
  /** Small partitions deleted. */
  deleted: number;
  /** Merged partitions written. */
  written: number;
}

/** Merges the partitions of each kind, fleet and date (of `date` only, when given) into one. */
export async function compact(
  store: ObjectStore,
  options: { date?: string; cacheDir?: string } = {},
): Promise<CompactResult> {
  const { partitions } = await listPartitions(store);
  const groups = new Map<string, Partition[]>();
  for (const p of partitions) {
    if (options.date !== undefined && p.date !== options.date) continue;
    const g = `${p.kind}/${p.fleet}/${p.date}`;
    groups.set(g, [...(groups.get(g) ?? []), p]);
  }
  const result: CompactResult = { groups: 0, deleted: 0, written: 0 };
  const instance = await DuckDBInstance.create(':memory:');
  const conn: DuckDBConnection = await instance.connect();
  try {
    for (const parts of groups.values()) {
      if (parts.length < 2) continue;
      const { kind, fleet, date } = parts[0]!;
      await withCache(options.cacheDir, async (cache) => {
        const files = await download(store, parts, cache);
        const sql = kind === 'watermarks' ? watermarkRowsSql(files) : recordRowsSql(kind, files);
        const out = join(cache, 'merged.parquet');
        await onPartitions(parts, () => conn.run(`COPY (${sql}) TO ${sqlString(out)} (FORMAT parquet)`));
        const bytes = await fs.readFile(out);
        const key = partitionKey(kind, fleet, date, sha256Hex(bytes));
        if ((await store.putIfAbsent(key, bytes)) === 'created') result.written++;
        for (const p of parts) {
          if (p.key === key) continue;
          await store.delete(p.key);
          result.deleted++;
        }
        result.groups++;
      });
    }
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
  return result;
}

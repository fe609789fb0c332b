/**
 * Ingested records as Parquet partitions in the object store: the names of partitions and the writing
 * of one. The writer (events/writer.ts) writes one partition per accepted batch, with the batch's new
 * rows, and one per watermark change; events/rebuild.ts reads them back into a database, prunes and
 * compacts them.
 *
 * A partition is `events/<kind>/fleet=<fleet>/date=<yyyy-mm-dd>/<batch id>.parquet` (Hive-style, so
 * DuckDB reads a prefix with `hive_partitioning`): kind `inference`, `label`, `outcome`, `upload` or
 * `watermarks`, the date the rows were ingested (UTC), and as batch id the sha256 of the file's bytes. A
 * key thus names exactly one content: a retried write of the same rows lands on the same key, and
 * `putIfAbsent` answers 'exists' instead of conflicting. The file is written by DuckDB into a private
 * directory created exclusively (mkdtemp, mode 0700), read, stored, and removed with its directory.
 *
 * It must never write a partition but with `putIfAbsent` (partitions are write-once), never keep the
 * temporary file, and never log a row.
 */
import type { DuckDBConnection } from '@duckdb/node-api';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ObjectStore } from '../activities/deps';
import type { RecordKind } from './contract';

/** Where partitions live in the object store. */
export const PARTITIONS_PREFIX = 'events/';

/** The record kinds, and `watermarks` (rows of the watermarks table). */
export type PartitionKind = RecordKind | 'watermarks';

export interface Partition {
  key: string;
  kind: PartitionKind;
  fleet: string;
  /** Ingestion date, yyyy-mm-dd (UTC). */
  date: string;
  /** sha256 hex of the file's bytes. */
  batchId: string;
}

const KEY =
  /^events\/(inference|label|outcome|upload|watermarks)\/fleet=([a-z0-9][a-z0-9._-]*)\/date=(\d{4}-\d{2}-\d{2})\/([0-9a-f]{64})\.parquet$/;

export function partitionKey(kind: PartitionKind, fleet: string, date: string, batchId: string): string {
  return `${PARTITIONS_PREFIX}${kind}/fleet=${fleet}/date=${date}/${batchId}.parquet`;
}

/** The parts of a partition key, or undefined for any other key. */
export function parsePartitionKey(key: string): Partition | undefined {
  const m = KEY.exec(key);
  if (!m) return undefined;
  return { key, kind: m[1] as PartitionKind, fleet: m[2]!, date: m[3]!, batchId: m[4]! };
}

/** The UTC date (yyyy-mm-dd) of an epoch-ms instant. */
export function ingestionDate(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** A SQL string literal. */
export function sqlString(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/**
 * Writes the rows of `selectSql` (run on `conn`, so inside its open transaction) as one partition, and
 * answers its key. The caller skips empty results.
 */
export async function writePartition(
  conn: DuckDBConnection,
  store: ObjectStore,
  p: { kind: PartitionKind; fleet: string; date: string },
  selectSql: string,
  tmpDir: string = tmpdir(),
): Promise<string> {
  return putPartition(store, p, await partitionBytes(conn, selectSql, tmpDir));
}

/** The Parquet bytes of the rows of `selectSql`, run on `conn` (so inside its open transaction). */
export async function partitionBytes(
  conn: DuckDBConnection,
  selectSql: string,
  tmpDir: string = tmpdir(),
): Promise<Buffer> {
  const dir = await fs.mkdtemp(join(tmpDir, 'fleetgate-partition-'));
  try {
    const file = join(dir, 'batch.parquet');
    await conn.run(`COPY (${selectSql}) TO ${sqlString(file)} (FORMAT parquet)`);
    return await fs.readFile(file);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/** Puts a partition's bytes in the store under their content's key (once), and answers the key. */
export async function putPartition(
  store: ObjectStore,
  p: { kind: PartitionKind; fleet: string; date: string },
  bytes: Buffer,
): Promise<string> {
  const key = partitionKey(p.kind, p.fleet, p.date, sha256Hex(bytes));
  await store.putIfAbsent(key, bytes);
  return key;
}

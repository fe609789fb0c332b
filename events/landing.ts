/**
 * The landing-zone reader (`fleetgate events pull`): fleets whose stream writes files into an object
 * store (AWS IoT rules, Kinesis Data Firehose) instead of calling the endpoint have them read from there,
 * through the same parsing (events/parse.ts) and the same idempotent writer (events/writer.ts) as the
 * HTTP path. The layout, under a prefix of the store (docs/events.md, "Landing zone"):
 *
 *   <prefix>/<fleet>/<events|labels|outcomes|uploads>/<yyyy>/<MM>/<dd>/<HH>/<name>.ndjson[.gz] | .parquet
 *
 * One file is one batch: all of it is stored, or, when any record breaks the contract, none of it. Each
 * file read is recorded in the table `landing_files` of the writer's DuckDB database (made through a
 * connection the writer gives), with its etag (sha256 of its bytes, as ObjectStore.etag), a cheap version
 * of the store's own (S3 ETag and size, as the listing gives them, so that a pass over files already read
 * costs the listing alone; or a local file's size, mtime and inode) and its result. A file
 * whose version or etag is the one recorded is skipped without being read again; a file replaced with
 * other bytes is read again, and the records it already gave count as duplicates. A refused file is
 * recorded as refused (with its problem count and first problems), so it is not read again until it
 * changes, and logged by key. The record of a file is written after its batch commits: a stop between
 * the two reads it again next pass, and the writer counts its records as duplicates.
 *
 * A file is read into memory up to the cap (16 MiB by default, before and after gunzip), never beyond:
 * the etag of a larger file is hashed as it streams by and the file is refused. A Parquet file goes
 * through a temporary file created exclusively in a directory of the reader's own (mode 0700), which
 * DuckDB's read_parquet needs.
 *
 * It must never log or record a record's contents or identifiers (only keys, counts, fields and fixes),
 * never store anything of a refused file, and never write to the landing zone.
 */
import { createHash } from 'node:crypto';
import { createReadStream, mkdtempSync, rmSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { GetObjectCommand, HeadObjectCommand } from '@aws-sdk/client-s3';
import type { DuckDBConnection } from '@duckdb/node-api';
import type { ObjectStore } from '../activities/deps';
import { LocalObjectStore, sha256 } from '../activities/store';
import { S3ObjectStore } from '../activities/store-s3';
import { MAX_PROBLEMS, type Problem, type RecordKind } from './contract';
import {
  BatchUnreadable,
  DEFAULT_MAX_BATCH_BYTES,
  DEFAULT_MAX_RECORDS,
  parseBatch,
  shownColumns,
} from './parse';
import { BatchRefused, type EventWriter } from './writer';

export const LANDING_TABLE = 'landing_files';

/** The kind of each kind directory: the same names as the HTTP paths. */
export const LANDING_KINDS: Record<string, RecordKind> = {
  events: 'inference',
  labels: 'label',
  outcomes: 'outcome',
  uploads: 'upload',
};

const FLEET = /^[a-z0-9][a-z0-9._-]{0,127}$/;
const LAYOUT =
  '<fleet>/<events|labels|outcomes|uploads>/<yyyy>/<MM>/<dd>/<HH>/<name>.ndjson[.gz] or .parquet';
/** Problems of a refused file kept in its record and in the log line. */
const LOGGED_PROBLEMS = 5;

export const LANDING_SCHEMA_SQL = `CREATE TABLE IF NOT EXISTS ${LANDING_TABLE} (
  key VARCHAR PRIMARY KEY,
  etag VARCHAR NOT NULL,
  version VARCHAR,
  fleet VARCHAR NOT NULL,
  kind VARCHAR NOT NULL,
  result VARCHAR NOT NULL,
  accepted INTEGER NOT NULL,
  duplicates INTEGER NOT NULL,
  late INTEGER NOT NULL,
  problem_count INTEGER NOT NULL,
  problems VARCHAR,
  read_at_ms BIGINT NOT NULL
);`;

/** A key of the layout: its fleet, record kind and format. */
export interface LandingFile {
  key: string;
  fleet: string;
  kind: RecordKind;
  format: 'ndjson' | 'parquet';
  gzip: boolean;
}

/** The file a key names under `prefix` ("" or a prefix without a trailing "/"), or why it is outside the layout. */
export function landingFileOf(prefix: string, key: string): LandingFile | { outside: string } {
  const base = prefix === '' ? '' : `${prefix}/`;
  if (!key.startsWith(base)) return { outside: `not under the prefix "${prefix}"` };
  const parts = key.slice(base.length).split('/');
  if (parts.length !== 7) {
    return { outside: `${parts.length} levels under the prefix, not 7: put files at ${LAYOUT}` };
  }
  const [fleet, kindDir, yyyy, mm, dd, hh, name] = parts as [string, ...string[]];
  if (!FLEET.test(fleet)) {
    return { outside: 'the fleet level is no fleet name (lowercase letters, digits, ".", "_", "-")' };
  }
  const kind = LANDING_KINDS[kindDir!];
  if (kind === undefined || !Object.hasOwn(LANDING_KINDS, kindDir!)) {
    return { outside: 'the kind level is not events, labels, outcomes or uploads' };
  }
  const inRange = (s: string | undefined, digits: number, lo: number, hi: number) =>
    s !== undefined && s.length === digits && /^\d+$/.test(s) && Number(s) >= lo && Number(s) <= hi;
  if (
    !inRange(yyyy, 4, 2000, 2099) ||
    !inRange(mm, 2, 1, 12) ||
    !inRange(dd, 2, 1, 31) ||
    !inRange(hh, 2, 0, 23)
  ) {
    return { outside: 'the hour levels are not <yyyy>/<MM>/<dd>/<HH> (UTC, zero-padded)' };
  }
  if (name!.endsWith('.ndjson')) return { key, fleet, kind, format: 'ndjson', gzip: false };
  if (name!.endsWith('.ndjson.gz')) return { key, fleet, kind, format: 'ndjson', gzip: true };
  if (name!.endsWith('.parquet')) return { key, fleet, kind, format: 'parquet', gzip: false };
  return { outside: 'the name does not end in .ndjson, .ndjson.gz or .parquet' };
}

/** What one pass did. `notes`: the keys outside the layout and the refused files, with why (never contents). */
export interface PassResult {
  filesRead: number;
  filesSkipped: number;
  filesRefused: number;
  filesOutside: number;
  accepted: number;
  duplicates: number;
  late: number;
  /** The pass stopped early at a signal; the files it did not reach are read by the next. */
  stopped: boolean;
  notes: { key: string; note: string }[];
}

export interface LandingReaderOptions {
  store: ObjectStore;
  writer: EventWriter;
  /** Key prefix of the landing zone in the store, "" for the whole store. */
  prefix: string;
  /** Only this fleet's files. */
  fleet?: string;
  /** Largest file, before and after gunzip (default 16 MiB, as the endpoint's body). */
  maxFileBytes?: number;
  maxRecords?: number;
  /** One JSON line per refused file or key outside the layout (default: stderr). */
  log?: (line: Record<string, unknown>) => void;
  /** Clock of `read_at_ms` (default Date.now). */
  now?: () => number;
}

interface Recorded {
  etag: string;
  version: string | null;
}

interface Fetched {
  etag: string;
  size: number;
  /** Undefined when the file is over the cap (it was hashed, not kept). */
  bytes?: Buffer;
}

/** The bytes (up to `max`) and the sha256 of a stream, which is read to its end but never kept beyond `max`. */
async function boundedFromStream(stream: AsyncIterable<Uint8Array>, max: number): Promise<Fetched> {
  const hash = createHash('sha256');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    hash.update(chunk);
    size += chunk.length;
    if (size <= max) chunks.push(Buffer.from(chunk));
    else chunks.length = 0;
  }
  return { etag: hash.digest('hex'), size, ...(size <= max ? { bytes: Buffer.concat(chunks) } : {}) };
}

const isMissing = (err: unknown) => {
  const e = err as { code?: string; name?: string };
  return e?.code === 'ENOENT' || e?.name === 'NoSuchKey' || e?.name === 'NotFound';
};

/** A key's bytes up to `max` and its etag; undefined when it was removed since it was listed. */
async function fetchBounded(store: ObjectStore, key: string, max: number): Promise<Fetched | undefined> {
  try {
    if (store instanceof S3ObjectStore) {
      const res = await store.client.send(
        new GetObjectCommand({ Bucket: store.bucket, Key: store.objectKey(key) }),
      );
      if (!res.Body) throw new Error(`GetObject of ${key} returned no body`);
      return await boundedFromStream(res.Body as Readable, max);
    }
    if (store instanceof LocalObjectStore) {
      return await boundedFromStream(createReadStream(store.pathOf(key)), max);
    }
  } catch (err) {
    if (isMissing(err)) return undefined;
    throw err;
  }
  // Another store: its get() reads the whole object.
  const bytes = await store.get(key);
  if (bytes === undefined) return undefined;
  return { etag: sha256(bytes), size: bytes.length, ...(bytes.length <= max ? { bytes } : {}) };
}

/** The store's cheap version of a key (no download), or null when it has none. */
async function versionOf(store: ObjectStore, key: string): Promise<string | null> {
  try {
    if (store instanceof S3ObjectStore) {
      const h = await store.client.send(
        new HeadObjectCommand({ Bucket: store.bucket, Key: store.objectKey(key) }),
      );
      return h.ETag ? `s3:${h.ETag}:${h.ContentLength ?? ''}` : null;
    }
    if (store instanceof LocalObjectStore) {
      const s = await stat(store.pathOf(key), { bigint: true });
      return `file:${s.size}:${s.mtimeNs}:${s.ino}`;
    }
  } catch (err) {
    if (isMissing(err)) return null;
    throw err;
  }
  return null;
}

/** Position, field and message of a problem: no value, whatever it was. */
const bare = (p: Problem): Problem => ({
  ...(p.line !== undefined ? { line: p.line } : {}),
  ...(p.row !== undefined ? { row: p.row } : {}),
  field: p.field,
  message: p.message,
});

/** The problem of a file that could not be read as a batch. */
function problemOf(err: BatchUnreadable, kind: RecordKind, maxBytes: number, maxRecords: number): Problem {
  const split = `split the stream's files smaller (at most ${maxBytes} bytes and ${maxRecords} records each)`;
  const message = {
    'body-too-large': `the file is over ${maxBytes} bytes${err.details.decompressed ? ' once decompressed' : ''}: ${split}`,
    'bad-encoding':
      'the file ends in .gz but is not valid gzip: write it gzip-compressed, or name it without .gz',
    'bad-parquet':
      'the file is not a readable Parquet file: write one Parquet file per object (as DuckDB, pyarrow, Spark or Firehose write them)',
    'unknown-columns': `unknown column(s) ${shownColumns(err.details.columns ?? [])}: remove them (the columns are in events/schema/${kind}.parquet.json)`,
    'too-many-records': `the file holds over ${maxRecords} records: ${split}`,
    empty: 'the file holds no record: write at least one, or no file',
  }[err.code];
  return { field: '(file)', message };
}

export class LandingReader {
  private running = false;

  private constructor(
    private readonly opts: LandingReaderOptions,
    private readonly conn: DuckDBConnection,
    private readonly tmp: string,
    private readonly maxBytes: number,
    private readonly maxRecords: number,
    private readonly log: (line: Record<string, unknown>) => void,
  ) {}

  /** Creates the table of read files in the writer's database (through a connection it gives). */
  static async open(opts: LandingReaderOptions): Promise<LandingReader> {
    if (opts.fleet !== undefined && !FLEET.test(opts.fleet)) {
      throw new Error('the fleet is no fleet name: lowercase letters, digits, ".", "_" or "-", at most 128');
    }
    const prefix = opts.prefix.replace(/\/+$/, '');
    const conn = await opts.writer.connect();
    try {
      await conn.run(LANDING_SCHEMA_SQL);
    } catch (err) {
      conn.closeSync();
      throw err;
    }
    const log =
      opts.log ??
      ((line: Record<string, unknown>) =>
        process.stderr.write(JSON.stringify({ ts: new Date().toISOString(), ...line }) + '\n'));
    return new LandingReader(
      { ...opts, prefix },
      conn,
      mkdtempSync(join(tmpdir(), 'fleetgate-landing-')),
      opts.maxFileBytes ?? DEFAULT_MAX_BATCH_BYTES,
      opts.maxRecords ?? DEFAULT_MAX_RECORDS,
      log,
    );
  }

  /** The record of each file read, by key (for tests and `fleetgate events pull`). */
  async files(): Promise<Record<string, unknown>[]> {
    return (await this.conn.runAndReadAll(`SELECT * FROM ${LANDING_TABLE} ORDER BY key`)).getRowObjectsJS();
  }

  /**
   * One pass over the landing zone: every file of the layout not read before (or changed since) is read
   * and stored, one at a time, in key order. A failure of the store or the database ends the pass (the
   * files already read stay recorded; the next pass goes on from there). `signal` stops it between files.
   */
  async pass(signal?: AbortSignal): Promise<PassResult> {
    if (this.running) throw new Error('a pass is already running: one pass at a time');
    this.running = true;
    try {
      return await this.run(signal);
    } finally {
      this.running = false;
    }
  }

  private async run(signal?: AbortSignal): Promise<PassResult> {
    const { store, prefix, fleet } = this.opts;
    const r: PassResult = {
      filesRead: 0,
      filesSkipped: 0,
      filesRefused: 0,
      filesOutside: 0,
      accepted: 0,
      duplicates: 0,
      late: 0,
      stopped: false,
      notes: [],
    };
    const base = prefix === '' ? '' : `${prefix}/`;
    const where = fleet === undefined ? base : `${base}${fleet}/`;
    // On S3 the listing gives each key's version: no request per file to tell a file already read.
    const listed =
      store instanceof S3ObjectStore
        ? new Map((await store.listVersions(where)).map((o) => [o.key, o.version]))
        : undefined;
    const keys = listed ? [...listed.keys()] : await store.list(where);
    const recorded = new Map<string, Recorded>(
      (
        await this.conn.runAndReadAll(
          `SELECT key, etag, version FROM ${LANDING_TABLE} WHERE starts_with(key, $base)`,
          { base },
        )
      )
        .getRowObjectsJS()
        .map((row) => [
          row.key as string,
          { etag: row.etag as string, version: row.version as string | null },
        ]),
    );
    for (const key of keys) {
      if (signal?.aborted) {
        r.stopped = true;
        break;
      }
      const file = landingFileOf(prefix, key);
      if ('outside' in file) {
        r.filesOutside++;
        r.notes.push({ key, note: `skipped: ${file.outside}` });
        this.log({ event: 'landing.outside', key, note: file.outside });
        continue;
      }
      const before = recorded.get(key);
      const version = listed ? (listed.get(key) ?? null) : await versionOf(store, key);
      if (before && version !== null && before.version === version) {
        r.filesSkipped++;
        continue;
      }
      const fetched = await fetchBounded(store, key, this.maxBytes);
      if (fetched === undefined) continue; // removed since the listing
      if (before && before.etag === fetched.etag) {
        r.filesSkipped++;
        await this.conn.run(`UPDATE ${LANDING_TABLE} SET version = $version WHERE key = $key`, {
          key,
          version,
        });
        continue;
      }
      await this.read(file, fetched, version, r);
    }
    return r;
  }

  /** Reads one file into the writer and records what it did. */
  private async read(
    file: LandingFile,
    fetched: Fetched,
    version: string | null,
    r: PassResult,
  ): Promise<void> {
    const { writer } = this.opts;
    const record = (
      result: 'accepted' | 'refused',
      n: {
        accepted?: number;
        duplicates?: number;
        late?: number;
        problems?: Problem[];
        problemCount?: number;
      },
    ) =>
      this.conn.run(
        `INSERT OR REPLACE INTO ${LANDING_TABLE}
         VALUES ($key, $etag, $version, $fleet, $kind, $result, $accepted, $duplicates, $late, $problemCount, $problems, $at)`,
        {
          key: file.key,
          etag: fetched.etag,
          version,
          fleet: file.fleet,
          kind: file.kind,
          result,
          accepted: n.accepted ?? 0,
          duplicates: n.duplicates ?? 0,
          late: n.late ?? 0,
          problemCount: n.problemCount ?? 0,
          problems: n.problems ? JSON.stringify(n.problems) : null,
          at: BigInt((this.opts.now ?? Date.now)()),
        },
      );
    let problems: Problem[];
    let problemCount: number;
    try {
      if (fetched.bytes === undefined) throw new BatchUnreadable('body-too-large');
      const batch = await parseBatch(fetched.bytes, {
        format: file.format,
        gzip: file.gzip,
        kind: file.kind,
        fleet: file.fleet,
        maxBytes: this.maxBytes,
        maxRecords: this.maxRecords,
        tmpDir: this.tmp,
        connect: () => writer.connect(),
        sqlWrite: (checked) => writer.ingestChecked(file.kind, file.fleet, checked),
        ndjsonWrite: ({ raw, positions, file: ndjsonFile }) =>
          writer.ingest(file.kind, file.fleet, raw, { where: 'line', positions, ndjsonFile }),
      });
      const w =
        batch.written ??
        (await writer.ingest(file.kind, file.fleet, batch.raw, {
          where: batch.where,
          ...(batch.positions ? { positions: batch.positions } : {}),
        }));
      await record('accepted', w);
      r.filesRead++;
      r.accepted += w.accepted;
      r.duplicates += w.duplicates;
      r.late += w.late;
      return;
    } catch (err) {
      if (err instanceof BatchUnreadable) {
        problems = [problemOf(err, file.kind, this.maxBytes, this.maxRecords)];
        problemCount = 1;
      } else if (err instanceof BatchRefused) {
        problems = err.problems.slice(0, MAX_PROBLEMS).map(bare);
        problemCount = err.problemCount;
      } else throw err;
    }
    await record('refused', { problems: problems.slice(0, LOGGED_PROBLEMS), problemCount });
    r.filesRefused++;
    const first = problems[0]!;
    const where =
      first.line !== undefined ? `line ${first.line}, ` : first.row !== undefined ? `row ${first.row}, ` : '';
    r.notes.push({
      key: file.key,
      note: `refused, nothing of it stored: ${problemCount} problem(s), first ${where}${first.field}: ${first.message}`,
    });
    this.log({
      event: 'landing.refused',
      key: file.key,
      problemCount,
      problems: problems.slice(0, LOGGED_PROBLEMS),
      fix: 'fix the records named and write the file again (a file with other bytes is read again)',
    });
  }

  /** Closes the reader's connection and removes its temporary directory (the writer stays open). */
  close(): void {
    this.conn.closeSync();
    rmSync(this.tmp, { recursive: true, force: true });
  }
}

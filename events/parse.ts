/**
 * The parsing every ingestion path shares (the HTTP endpoint, events/ingest-server.ts, and the landing-zone
 * reader, events/landing.ts): a gunzip bounded after decompression, NDJSON lines to raw records with their
 * line numbers, and a Parquet file to raw records through DuckDB's read_parquet on a temporary file created
 * exclusively in the caller's own directory. `parseBatch` puts them together: bytes in, the raw records of
 * one batch out, ready for `EventWriter.ingest`, or a refusal (`BatchUnreadable` for a batch that cannot be
 * read at all, `BatchRefused` naming each bad line) that its caller turns into an HTTP answer or a record of
 * a refused file. Given `sqlWrite`, a Parquet batch of valid records is checked and written in SQL from its
 * temporary file (events/sql-check.ts) before the file is removed, and `parseBatch` answers what was written.
 * Given `ndjsonWrite`, an NDJSON batch is handed to the writer with its text in a temporary file too, from
 * which DuckDB's JSON reader stages the records once JavaScript has validated them.
 *
 * It must never put a record, a line or a file path in an error (the JSON parser's message quotes the
 * line, so it is never repeated), never hold more than `maxBytes` of decompressed bytes, and never leave a
 * temporary file behind.
 */
import { isUtf8 } from 'node:buffer';
import { randomUUID } from 'node:crypto';
import { open, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gunzip } from 'node:zlib';
import type { DuckDBConnection } from '@duckdb/node-api';
import {
  MAX_PROBLEMS,
  parquetColumnsOf,
  recordsFromColumns,
  validateBatch,
  type Problem,
  type RecordKind,
} from './contract';
import { sqlCheck, type SqlBatch } from './sql-check';
import { BatchRefused, type WriteResult } from './writer';

const gunzipAsync = promisify(gunzip);

export const DEFAULT_MAX_BATCH_BYTES = 16 * 1024 * 1024;
export const DEFAULT_MAX_RECORDS = 100_000;

/**
 * Why a batch could not be read at all (each caller words its own fix): `body-too-large` (over the cap,
 * `decompressed` when it was the gunzip that passed it), `bad-encoding` (not gzip), `bad-parquet` (no
 * readable Parquet file), `unknown-columns` (Parquet columns not in the contract, in `columns`),
 * `too-many-records` and `empty`. The codes of the HTTP errors are the first four's and `invalid-batch`.
 */
export class BatchUnreadable extends Error {
  override name = 'BatchUnreadable';
  constructor(
    readonly code:
      'body-too-large' | 'bad-encoding' | 'bad-parquet' | 'unknown-columns' | 'too-many-records' | 'empty',
    readonly details: { decompressed?: boolean; columns?: string[] } = {},
  ) {
    super(code);
  }
}

/** Gunzips at most `max` bytes of output: a gzip bomb stops at the cap. */
export async function gunzipCapped(body: Buffer, max: number): Promise<Buffer> {
  try {
    return await gunzipAsync(body, { maxOutputLength: max });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE' || err instanceof RangeError) {
      throw new BatchUnreadable('body-too-large', { decompressed: true });
    }
    throw new BatchUnreadable('bad-encoding');
  }
}

/** The records of an NDJSON text, their line numbers, and the lines that are no JSON. */
export function parseNdjson(text: string): { raw: unknown[]; positions: number[]; problems: Problem[] } {
  const raw: unknown[] = [];
  const positions: number[] = [];
  const problems: Problem[] = [];
  // Line by line without splitting the text first; JSON.parse takes the "\r" of CRLF as whitespace, and a
  // blank line is told from a bad one only when it fails to parse.
  let line = 0;
  for (let start = 0; start <= text.length;) {
    let end = text.indexOf('\n', start);
    if (end < 0) end = text.length;
    line++;
    if (end > start) {
      const l = text.slice(start, end);
      let value: unknown;
      let parsed = true;
      try {
        value = JSON.parse(l);
      } catch {
        parsed = false;
      }
      if (parsed) {
        raw.push(value);
        positions.push(line);
      } else if (l.trim() !== '') {
        // The parser's message quotes the line: never repeated.
        problems.push({
          line,
          field: '(line)',
          message: 'not JSON: send one JSON object per line (NDJSON)',
        });
      }
    }
    start = end + 1;
  }
  return { raw, positions, problems };
}

/** Column names as an error may show them: at most 5, each at most 40 characters. */
export function shownColumns(columns: readonly string[]): string {
  const shown = columns.slice(0, 5).map((n) => JSON.stringify(n.length <= 40 ? n : `${n.slice(0, 37)}...`));
  return `${shown.join(', ')}${columns.length > 5 ? ', ...' : ''}`;
}

/**
 * The rows of a Parquet file as raw records of `kind`: written to a file created exclusively (mode 0600)
 * in `tmpDir`, read with read_parquet on a connection of its own, then removed.
 */
export async function parquetRecords(
  body: Buffer,
  kind: RecordKind,
  opts: { tmpDir: string; connect: () => Promise<DuckDBConnection>; maxRecords: number },
): Promise<unknown[]> {
  return (await readParquet(body, kind, opts)).raw!;
}

/**
 * The records of a Parquet batch as `parquetRecords` reads them or, given `sqlWrite` and a batch that
 * passes the SQL check, what `sqlWrite` wrote of it (when it wrote it: else the records).
 */
async function readParquet(
  body: Buffer,
  kind: RecordKind,
  opts: {
    tmpDir: string;
    connect: () => Promise<DuckDBConnection>;
    maxRecords: number;
    fleet?: string;
    sqlWrite?: (batch: SqlBatch) => Promise<WriteResult | undefined>;
  },
): Promise<{ raw?: unknown[]; written?: WriteResult }> {
  const file = await exclusiveFile(opts.tmpDir, 'parquet', body);
  let conn: DuckDBConnection | undefined;
  try {
    conn = await opts.connect();
    let described;
    try {
      described = (
        await conn.runAndReadAll('DESCRIBE SELECT * FROM read_parquet($f)', { f: file })
      ).getRowObjectsJS();
    } catch {
      throw new BatchUnreadable('bad-parquet');
    }
    const known = new Set(parquetColumnsOf(kind).map((c) => c.name));
    const unknown = described.map((d) => String(d.column_name)).filter((n) => !known.has(n));
    if (unknown.length > 0) throw new BatchUnreadable('unknown-columns', { columns: unknown });
    const n = (
      await conn.runAndReadAll('SELECT count(*) AS n FROM read_parquet($f)', { f: file })
    ).getRowObjectsJS()[0]!.n;
    if (Number(n) > opts.maxRecords) throw new BatchUnreadable('too-many-records');
    if (opts.sqlWrite && opts.fleet !== undefined && Number(n) > 0) {
      const types = new Map(described.map((d) => [String(d.column_name), String(d.column_type)]));
      const checked = await sqlCheck(conn, kind, opts.fleet, file, types);
      const written = checked && (await opts.sqlWrite(checked));
      if (written) return { written };
    }
    let read;
    try {
      read = await conn.runAndReadAll('SELECT * FROM read_parquet($f)', { f: file });
    } catch {
      throw new BatchUnreadable('bad-parquet');
    }
    // By columns: no row object between the file and the records.
    return { raw: recordsFromColumns(kind, read.columnNames(), read.getColumnsJS()) };
  } finally {
    conn?.closeSync();
    await unlink(file).catch(() => undefined);
  }
}

export interface ParseOptions {
  format: 'ndjson' | 'parquet';
  gzip: boolean;
  kind: RecordKind;
  fleet: string;
  /** Largest batch once decompressed. */
  maxBytes: number;
  maxRecords: number;
  /** A directory of the caller's own (mode 0700) for the temporary files of Parquet and NDJSON batches. */
  tmpDir: string;
  /** A connection to read Parquet on (closed after). */
  connect: () => Promise<DuckDBConnection>;
  /** Writes a Parquet batch that passed the SQL check (`EventWriter.ingestChecked`); undefined: not written. */
  sqlWrite?: (batch: SqlBatch) => Promise<WriteResult | undefined>;
  /**
   * Writes an NDJSON batch whose lines are all JSON (`EventWriter.ingest`, which validates them), with a
   * maker of a temporary file of its text (`IngestOptions.ndjsonFile`), removed once it answers.
   */
  ndjsonWrite?: (batch: {
    raw: unknown[];
    positions: number[];
    file: () => Promise<string>;
  }) => Promise<WriteResult>;
}

/** A batch ready for `EventWriter.ingest`. */
export interface ParsedBatch {
  raw: unknown[];
  where: 'line' | 'row';
  positions?: number[];
  /** Set when the batch was already written through the SQL fast path (`raw` is then empty). */
  written?: WriteResult;
}

/**
 * The raw records of one batch. Throws `BatchUnreadable` when it cannot be read, and `BatchRefused` when
 * lines are no JSON (with the contract's problems of the other lines, sorted by line, so that one answer
 * names everything to fix).
 */
export async function parseBatch(body: Buffer, opts: ParseOptions): Promise<ParsedBatch> {
  if (opts.gzip) body = await gunzipCapped(body, opts.maxBytes);
  else if (body.length > opts.maxBytes) throw new BatchUnreadable('body-too-large');
  let raw: unknown[];
  let positions: number[] | undefined;
  let parseProblems: Problem[] = [];
  const where = opts.format === 'ndjson' ? 'line' : 'row';
  const text = opts.format === 'ndjson' ? body.toString('utf8') : '';
  if (opts.format === 'ndjson') {
    ({ raw, positions, problems: parseProblems } = parseNdjson(text));
  } else {
    const read = await readParquet(body, opts.kind, opts);
    if (read.written) return { raw: [], where, written: read.written };
    raw = read.raw!;
  }
  if (raw.length + parseProblems.length > opts.maxRecords) throw new BatchUnreadable('too-many-records');
  if (raw.length + parseProblems.length === 0) throw new BatchUnreadable('empty');
  if (parseProblems.length > 0) {
    // Report every line: those that are no JSON and the problems of those that are.
    const v = validateBatch(opts.kind, opts.fleet, raw, where, positions);
    const all = [...parseProblems, ...(v.ok ? [] : v.problems)].sort((a, b) => (a.line ?? 0) - (b.line ?? 0));
    throw new BatchRefused(all.slice(0, MAX_PROBLEMS), parseProblems.length + (v.ok ? 0 : v.problemCount));
  }
  if (opts.ndjsonWrite && positions) {
    // The text as the JavaScript parser read it, for DuckDB's reader: the body itself when it is valid
    // UTF-8, else its text with the invalid bytes replaced as JavaScript replaced them.
    let file: string | undefined;
    const bytes = isUtf8(body) ? body : text;
    try {
      const written = await opts.ndjsonWrite({
        raw,
        positions,
        file: async () => (file ??= await exclusiveFile(opts.tmpDir, 'ndjson', bytes)),
      });
      return { raw: [], where, written };
    } finally {
      if (file !== undefined) await unlink(file).catch(() => undefined);
    }
  }
  return { raw, where, ...(positions ? { positions } : {}) };
}

/** A new file of `data` in `dir`, created exclusively (mode 0600) under a random name; its path. */
async function exclusiveFile(dir: string, ext: string, data: Buffer | string): Promise<string> {
  const file = join(dir, `${randomUUID()}.${ext}`);
  const handle = await open(file, 'wx', 0o600);
  try {
    await handle.writeFile(data);
  } catch (err) {
    await handle.close();
    await unlink(file).catch(() => undefined);
    throw err;
  }
  await handle.close();
  return file;
}

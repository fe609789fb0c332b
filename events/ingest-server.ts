/**
 * The ingestion endpoint (`fleetgate ingest`): fleets send batches of records of the event contract
 * (events/contract.ts, docs/events.md) over HTTP, and every batch goes through the one writer
 * (events/writer.ts): validated whole, then stored in one transaction or not at all.
 *
 *   POST /v1/events/{fleet}     inference events     NDJSON (application/x-ndjson) or Parquet
 *   POST /v1/labels/{fleet}     label records        (application/vnd.apache.parquet); either may be
 *   POST /v1/outcomes/{fleet}   service outcomes     sent with Content-Encoding: gzip
 *   POST /v1/uploads/{fleet}    upload reports
 *   GET  /healthz               alive
 *   GET  /metrics               Prometheus text: batches, rows accepted, duplicates, late, refused by status
 *
 * Each fleet has its own bearer token, from FLEETGATE_INGEST_TOKEN_<FLEET> (the fleet's name uppercased,
 * every other character than a letter or digit as "_"), compared in constant time: 401 without a valid
 * one, 403 for another fleet's. A body is capped (16 MiB by default) before and after gunzip (413, so a
 * gzip bomb is refused as it inflates), and so is the number of records of a batch. A batch with any
 * bad record is refused whole (400) with the line or row, field and fix of the first 20 problems and
 * their count. When `maxPending` batches are already being read or written, a batch is refused with 429
 * and Retry-After. Bodies are parsed by events/parse.ts (shared with the landing-zone reader): a Parquet
 * body is written to a temporary file created exclusively in a directory of the server's own (mode 0700)
 * and read with DuckDB's read_parquet, then removed.
 *
 * It must never log or answer with a record's identifiers (units, event ids), a token or a file path.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { END_AT_MS, MIN_AT_MS, type RecordKind } from './contract';
import { bearerToken, HttpError, mediaType, readBody, sameSecret, send, sendError, sendJson } from './http';
import {
  BatchUnreadable,
  DEFAULT_MAX_BATCH_BYTES,
  DEFAULT_MAX_RECORDS as MAX_RECORDS_OF_A_BATCH,
  parseBatch,
  shownColumns,
} from './parse';
import { BatchRefused, type EventWriter, type WriteResult } from './writer';

export const DEFAULT_MAX_BODY_BYTES = DEFAULT_MAX_BATCH_BYTES;
export const DEFAULT_MAX_RECORDS = MAX_RECORDS_OF_A_BATCH;
export const DEFAULT_MAX_PENDING = 4;
export const NDJSON = 'application/x-ndjson';
export const PARQUET = 'application/vnd.apache.parquet';
/** The producer's watermark of a batch of inference events: integer epoch ms. */
export const WATERMARK_HEADER = 'fleetgate-watermark';
const TOKEN_PREFIX = 'FLEETGATE_INGEST_TOKEN_';
/** How far ahead of the server's clock a declared watermark may be (clock skew). */
const MAX_WATERMARK_AHEAD_MS = 60 * 60 * 1000;

const KIND_OF_PATH: Record<string, RecordKind> = {
  events: 'inference',
  labels: 'label',
  outcomes: 'outcome',
  uploads: 'upload',
};
const FLEET = /^[a-z0-9][a-z0-9._-]{0,127}$/;

/** The variable holding a fleet's token: FLEETGATE_INGEST_TOKEN_ + the name uppercased, others as "_". */
export function tokenVariable(fleet: string): string {
  return TOKEN_PREFIX + fleet.toUpperCase().replace(/[^A-Z0-9]/g, '_');
}

export interface IngestServerOptions {
  writer: EventWriter;
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 0: any free port. */
  port?: number;
  /** Where tokens are read, at each request (default process.env). */
  env?: NodeJS.ProcessEnv;
  maxBodyBytes?: number;
  maxRecords?: number;
  maxPending?: number;
  /** One JSON line per failure (a 500): never a record, a token or a path. Refusals are only counted. */
  log?: (line: Record<string, unknown>) => void;
  /** The server's clock, for the watermark's skew check (default Date.now). */
  now?: () => number;
  /**
   * How far ahead of that clock a watermark may be (default an hour). A worker whose fleet is the
   * simulated one (FLEETGATE_TELEMETRY=simulator) takes any: that fleet's time runs ahead of the clock by
   * its rollout's time scale.
   */
  maxWatermarkAheadMs?: number;
}

export interface IngestServer {
  url: string;
  port: number;
  /** Stops taking batches, waits for those in flight, removes the temporary directory. */
  close(): Promise<void>;
}

interface Counters {
  batches: Map<RecordKind, number>;
  accepted: Map<RecordKind, number>;
  duplicates: Map<RecordKind, number>;
  late: number;
  refused: Map<number, number>;
}

const inc = <K>(m: Map<K, number>, k: K, by = 1) => m.set(k, (m.get(k) ?? 0) + by);

function metricsText(c: Counters, pending: number): string {
  const lines: string[] = [];
  const counter = <K>(name: string, help: string, label: string, m: Map<K, number>) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} counter`);
    for (const [k, v] of m) lines.push(`${name}{${label}="${k}"} ${v}`);
  };
  counter('fleetgate_ingest_batches_total', 'Batches stored, by record kind.', 'kind', c.batches);
  counter('fleetgate_ingest_rows_accepted_total', 'Records stored, by record kind.', 'kind', c.accepted);
  counter(
    'fleetgate_ingest_duplicates_total',
    'Records already stored, not written again.',
    'kind',
    c.duplicates,
  );
  lines.push(
    '# HELP fleetgate_ingest_late_rows_total Inference events stored below their cohort watermark.',
    '# TYPE fleetgate_ingest_late_rows_total counter',
    `fleetgate_ingest_late_rows_total ${c.late}`,
  );
  counter('fleetgate_ingest_refused_total', 'Requests refused, by HTTP status.', 'status', c.refused);
  lines.push(
    '# HELP fleetgate_ingest_batches_in_flight Batches being read or written.',
    '# TYPE fleetgate_ingest_batches_in_flight gauge',
    `fleetgate_ingest_batches_in_flight ${pending}`,
  );
  return lines.join('\n') + '\n';
}

/** The answer to a body that cannot be read as a batch. */
function httpErrorOf(err: BatchUnreadable, kind: RecordKind, maxBody: number, maxRecords: number): HttpError {
  switch (err.code) {
    case 'body-too-large':
      return new HttpError(
        413,
        'body-too-large',
        `the body is over ${maxBody} bytes${err.details.decompressed ? ' once decompressed' : ''}; send fewer records per batch`,
        {},
        { Connection: 'close' },
      );
    case 'bad-encoding':
      return new HttpError(
        400,
        'bad-encoding',
        'the body is not valid gzip: send it gzip-compressed with Content-Encoding: gzip, or uncompressed without that header',
      );
    case 'bad-parquet':
      return new HttpError(
        400,
        'bad-parquet',
        'the body is not a readable Parquet file: send one Parquet file per batch (as DuckDB, pyarrow or Spark write them)',
      );
    case 'unknown-columns':
      return new HttpError(
        400,
        'invalid-batch',
        `unknown column(s) ${shownColumns(err.details.columns ?? [])}: remove them (the columns are in events/schema/${kind}.parquet.json)`,
      );
    case 'too-many-records':
      return new HttpError(
        413,
        'too-many-records',
        `the batch holds over ${maxRecords} records; send fewer per batch`,
      );
    case 'empty':
      return new HttpError(400, 'invalid-batch', 'the batch holds no record: send at least one');
  }
}

export async function startIngestServer(opts: IngestServerOptions): Promise<IngestServer> {
  const writer = opts.writer;
  const env = opts.env ?? process.env;
  const maxBody = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const maxRecords = opts.maxRecords ?? DEFAULT_MAX_RECORDS;
  const maxPending = opts.maxPending ?? DEFAULT_MAX_PENDING;
  const now = opts.now ?? Date.now;
  const maxAhead = opts.maxWatermarkAheadMs ?? MAX_WATERMARK_AHEAD_MS;
  const log =
    opts.log ??
    ((line: Record<string, unknown>) =>
      process.stderr.write(JSON.stringify({ ts: new Date().toISOString(), ...line }) + '\n'));
  const tmp = mkdtempSync(join(tmpdir(), 'fleetgate-ingest-'));
  const counters: Counters = {
    batches: new Map(),
    accepted: new Map(),
    duplicates: new Map(),
    late: 0,
    refused: new Map(),
  };
  let pending = 0;
  let closing = false;
  const inFlight = new Set<Promise<void>>();

  /** 401 or 403 unless the bearer token is the fleet's own. */
  function authorize(req: IncomingMessage, fleet: string): void {
    const token = bearerToken(req);
    const variable = tokenVariable(fleet);
    const challenge = { 'WWW-Authenticate': 'Bearer realm="fleetgate-ingest"' };
    if (token === undefined) {
      throw new HttpError(
        401,
        'unauthorized',
        `send the fleet's token as "Authorization: Bearer <token>" (the server reads it from ${variable})`,
        {},
        challenge,
      );
    }
    const own = env[variable];
    if (own && sameSecret(token, own)) return;
    let other = false;
    for (const [name, value] of Object.entries(env)) {
      if (name.startsWith(TOKEN_PREFIX) && name !== variable && value && sameSecret(token, value))
        other = true;
    }
    if (other) {
      throw new HttpError(
        403,
        'forbidden',
        `the token is another fleet's: send fleet "${fleet}"'s own token`,
      );
    }
    throw new HttpError(
      401,
      'unauthorized',
      own
        ? `the token is not fleet "${fleet}"'s: send the token the server holds in ${variable}`
        : `fleet "${fleet}" has no token on this server: set ${variable} where the server runs`,
      {},
      challenge,
    );
  }

  function watermarkOf(req: IncomingMessage, kind: RecordKind): number | undefined {
    const h = req.headers[WATERMARK_HEADER];
    if (h === undefined) return undefined;
    const fix = `Fleetgate-Watermark: integer epoch milliseconds from ${MIN_AT_MS} to now (every event of the batch's cohorts with an earlier "at" has been sent)`;
    if (kind !== 'inference') {
      throw new HttpError(
        400,
        'bad-watermark',
        'Fleetgate-Watermark applies to inference events only: remove it',
      );
    }
    const s = Array.isArray(h) ? '' : h.trim();
    const w = /^\d{1,16}$/.test(s) ? Number(s) : NaN;
    if (!(w >= MIN_AT_MS && w < END_AT_MS)) throw new HttpError(400, 'bad-watermark', fix);
    if (w > now() + maxAhead) {
      throw new HttpError(
        400,
        'bad-watermark',
        `the watermark is ${Math.ceil((w - now()) / 1000)} s ahead of the server's clock, more than the ` +
          `${Math.round(maxAhead / 1000)} s of clock skew it takes; a producer whose time runs ahead of the ` +
          'clock (a time-scaled simulated fleet) sends to a worker with FLEETGATE_TELEMETRY=simulator, which ' +
          `takes any; ${fix}`,
        {
          value: w,
        },
      );
    }
    return w;
  }

  async function ingest(req: IncomingMessage, kind: RecordKind, fleet: string): Promise<WriteResult> {
    const type = mediaType(req);
    if (type !== NDJSON && type !== PARQUET) {
      throw new HttpError(
        415,
        'unsupported-media-type',
        `send Content-Type: ${NDJSON} (one JSON record per line) or ${PARQUET}`,
      );
    }
    const encoding = (req.headers['content-encoding'] ?? 'identity').trim().toLowerCase();
    if (encoding !== 'identity' && encoding !== 'gzip') {
      throw new HttpError(
        415,
        'unsupported-media-type',
        'send Content-Encoding: gzip, or no Content-Encoding',
      );
    }
    const watermarkMs = watermarkOf(req, kind);
    const body = await readBody(req, maxBody);
    let batch;
    try {
      batch = await parseBatch(body, {
        format: type === NDJSON ? 'ndjson' : 'parquet',
        gzip: encoding === 'gzip',
        kind,
        fleet,
        maxBytes: maxBody,
        maxRecords,
        tmpDir: tmp,
        connect: () => writer.connect(),
        sqlWrite: (checked) =>
          writer.ingestChecked(kind, fleet, checked, watermarkMs === undefined ? {} : { watermarkMs }),
        ndjsonWrite: ({ raw, positions, file }) =>
          writer.ingest(kind, fleet, raw, { where: 'line', positions, watermarkMs, ndjsonFile: file }),
      });
    } catch (err) {
      if (err instanceof BatchUnreadable) throw httpErrorOf(err, kind, maxBody, maxRecords);
      throw err;
    }
    if (batch.written) return batch.written;
    const { raw, where, positions } = batch;
    return writer.ingest(kind, fleet, raw, { where, positions, watermarkMs });
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://ingest');
    if (url.pathname === '/healthz') {
      return sendJson(res, closing ? 503 : 200, { ok: !closing });
    }
    if (url.pathname === '/metrics') {
      return send(res, 200, 'text/plain; version=0.0.4; charset=utf-8', metricsText(counters, pending));
    }
    const m = /^\/v1\/(events|labels|outcomes|uploads)\/([^/]*)$/.exec(url.pathname);
    if (!m) {
      throw new HttpError(
        404,
        'not-found',
        'no such endpoint: POST /v1/events/{fleet}, /v1/labels/{fleet}, /v1/outcomes/{fleet} or /v1/uploads/{fleet}',
      );
    }
    const kind = KIND_OF_PATH[m[1]!]!;
    let fleet: string;
    try {
      fleet = decodeURIComponent(m[2]!);
    } catch {
      fleet = '';
    }
    if (!FLEET.test(fleet)) {
      throw new HttpError(
        404,
        'not-found',
        'the fleet in the path is no fleet name: lowercase letters, digits, ".", "_" or "-", at most 128',
      );
    }
    if (req.method !== 'POST') {
      throw new HttpError(405, 'method-not-allowed', `send batches with POST`, {}, { Allow: 'POST' });
    }
    authorize(req, fleet);
    if (closing)
      throw new HttpError(
        503,
        'closing',
        'the server is stopping: send the batch again later',
        {},
        { 'Retry-After': '5' },
      );
    if (pending >= maxPending) {
      throw new HttpError(
        429,
        'busy',
        `${pending} batches are being written: send this one again after Retry-After seconds`,
        {},
        { 'Retry-After': '1' },
      );
    }
    pending++;
    try {
      const r = await ingest(req, kind, fleet);
      inc(counters.batches, kind);
      inc(counters.accepted, kind, r.accepted);
      inc(counters.duplicates, kind, r.duplicates);
      counters.late += r.late;
      return sendJson(res, 200, r);
    } catch (err) {
      if (err instanceof BatchRefused) {
        throw new HttpError(
          400,
          'invalid-batch',
          `${err.message}: fix the records named and send the batch again`,
          {
            problems: err.problems,
            problemCount: err.problemCount,
          },
        );
      }
      throw err;
    } finally {
      pending--;
    }
  }

  const server: Server = createServer((req, res) => {
    const p = handle(req, res)
      .catch((err: unknown) => {
        const e =
          err instanceof HttpError
            ? err
            : new HttpError(
                500,
                'internal',
                'the batch could not be stored: send it again (nothing of it was stored)',
              );
        if (!(err instanceof HttpError))
          log({ event: 'ingest.failed', error: (err as Error)?.name ?? 'Error' });
        inc(counters.refused, e.status);
        if (!req.complete) {
          // Answer at once and drop what is still coming (a body over the cap, a refused batch).
          e.headers.Connection = 'close';
          req.resume();
        }
        if (!res.headersSent) sendError(res, e);
      })
      .finally(() => inFlight.delete(p));
    inFlight.add(p);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : (opts.port ?? 0);
  const host = (opts.host ?? '127.0.0.1').includes(':') ? `[${opts.host}]` : (opts.host ?? '127.0.0.1');
  return {
    url: `http://${host}:${port}`,
    port,
    close: async () => {
      closing = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      await Promise.allSettled([...inFlight]);
      server.closeAllConnections();
      await closed;
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}

/**
 * A producer's client of the ingestion endpoint (events/ingest-server.ts, docs/events.md): sends typed
 * records of the contract `fleetgate/v1` as gzip NDJSON batches to `POST /v1/{events|labels|outcomes|
 * uploads}/{fleet}` with the fleet's bearer token, read from FLEETGATE_INGEST_TOKEN_<FLEET> (the
 * variable the server reads), in parts of a few thousand records, a few in flight at once, and with a
 * batch of inference events the producer's watermark (`Fleetgate-Watermark`) on its last part only, sent
 * once every part before it was stored. It has the shape of the writer's `ingestTyped`, so a producer sends through either.
 *
 * What may succeed later (429, 5xx, a refused or broken connection) is sent again with backoff, after
 * Retry-After when the server gives one; a refusal (400, 401, 403, 404, 413, 415) is an error with the
 * status, the server's code and its message, which never holds a record. It must never log or put in an
 * error a token, a record or a unit id.
 */
import { gzipSync } from 'node:zlib';
import type { RecordKind, RecordOf } from './contract';
import { tokenVariable } from './ingest-server';
import type { WriteResult } from './writer';

const PATH_OF_KIND: Record<RecordKind, string> = {
  inference: 'events',
  label: 'labels',
  outcome: 'outcomes',
  upload: 'uploads',
};

/** Records per request: well under the endpoint's default caps (100,000 records, 16 MiB unzipped). */
export const DEFAULT_RECORDS_PER_REQUEST = 5_000;
/** Requests in flight at once: under the endpoint's default of 4 batches being read or written. */
export const DEFAULT_CONCURRENCY = 3;

export interface IngestClientOptions {
  /** The endpoint, e.g. http://127.0.0.1:8790. */
  url: string;
  /** Where the fleets' tokens are read (default process.env). */
  env?: NodeJS.ProcessEnv;
  recordsPerRequest?: number;
  /** Requests in flight at once (default DEFAULT_CONCURRENCY). */
  concurrency?: number;
  /** Attempts of one request before it fails (default 10). */
  attempts?: number;
  /** The first backoff, doubled per attempt up to `maxDelayMs` (defaults 250 ms and 5 s). */
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Stops waiting and sending: the pending call rejects. */
  signal?: AbortSignal;
  /** Told of each retry: the status (0 for the connection) and the delay before the next attempt. */
  onRetry?: (info: { status: number; delayMs: number; attempt: number }) => void;
}

/** A request the endpoint refused: what no retry fixes. */
export class IngestRefused extends Error {
  override name = 'IngestRefused';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export class IngestClient {
  private readonly base: string;

  constructor(private readonly opts: IngestClientOptions) {
    let url: URL;
    try {
      url = new URL(opts.url);
    } catch {
      throw new Error(
        `the ingestion endpoint "${opts.url.slice(0, 100)}" is no URL: give one such as http://127.0.0.1:8790`,
      );
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new Error(
        `the ingestion endpoint must be http:// or https:// (got "${url.protocol}"): give one such as http://127.0.0.1:8790`,
      );
    }
    this.base = url.href.replace(/\/+$/, '');
  }

  /** Sends the records in parts; with `watermarkMs`, the last part declares it. Sums what the server did. */
  async ingestTyped<K extends RecordKind>(
    kind: K,
    fleet: string,
    records: readonly RecordOf<K>[],
    opts: { watermarkMs?: number } = {},
  ): Promise<WriteResult> {
    const variable = tokenVariable(fleet);
    const token = (this.opts.env ?? process.env)[variable];
    if (!token) {
      throw new Error(
        `no token for fleet "${fleet}": set ${variable} to the token the endpoint holds for it`,
      );
    }
    const per = this.opts.recordsPerRequest ?? DEFAULT_RECORDS_PER_REQUEST;
    const concurrency = Math.max(1, this.opts.concurrency ?? DEFAULT_CONCURRENCY);
    const url = `${this.base}/v1/${PATH_OF_KIND[kind]}/${encodeURIComponent(fleet)}`;
    const total: WriteResult = { accepted: 0, duplicates: 0, late: 0, watermark: null };
    const add = (r: WriteResult) => {
      total.accepted += r.accepted;
      total.duplicates += r.duplicates;
      total.late += r.late;
      if (r.watermark) total.watermark = { ...total.watermark, ...r.watermark };
    };
    // Parts in flight, at most `concurrency`; the watermark's part only once all before it are stored.
    const inFlight: Promise<void>[] = [];
    try {
      for (let start = 0; start < records.length; start += per) {
        const last = start + per >= records.length;
        const declares = last && opts.watermarkMs !== undefined;
        if (declares || inFlight.length >= concurrency) {
          while (inFlight.length > (declares ? 0 : concurrency - 1)) await inFlight.shift();
        }
        const body = gzipSync(
          Buffer.from(
            records
              .slice(start, start + per)
              .map((r) => JSON.stringify(r))
              .join('\n') + '\n',
          ),
          { level: 1 },
        );
        const sent = this.post(url, token, body, declares ? opts.watermarkMs : undefined).then(add);
        // Handled here so a part that fails while an earlier one is awaited is not an unhandled
        // rejection; awaiting it below still throws its error.
        sent.catch(() => undefined);
        inFlight.push(sent);
      }
      while (inFlight.length > 0) await inFlight.shift();
    } finally {
      // A part refused: the others end before the error is thrown, none of them left unawaited.
      await Promise.allSettled(inFlight);
    }
    return total;
  }

  private async post(url: string, token: string, body: Buffer, watermarkMs?: number): Promise<WriteResult> {
    const attempts = this.opts.attempts ?? 10;
    const base = this.opts.baseDelayMs ?? 250;
    const max = this.opts.maxDelayMs ?? 5_000;
    for (let attempt = 1; ; attempt++) {
      this.opts.signal?.throwIfAborted();
      let status = 0;
      let retryAfterMs: number | undefined;
      let failure: Error;
      try {
        const res = await fetch(url, {
          method: 'POST',
          headers: {
            authorization: `Bearer ${token}`,
            'content-type': 'application/x-ndjson',
            'content-encoding': 'gzip',
            ...(watermarkMs === undefined ? {} : { 'fleetgate-watermark': String(watermarkMs) }),
          },
          body,
          ...(this.opts.signal ? { signal: this.opts.signal } : {}),
        });
        status = res.status;
        const text = await res.text();
        if (status === 200) return JSON.parse(text) as WriteResult;
        const error = answerError(text);
        failure = new IngestRefused(
          status,
          error.code,
          `the ingestion endpoint answered ${status} ${error.code}: ${error.message}`,
        );
        const after = Number(res.headers.get('retry-after'));
        if (Number.isFinite(after) && after >= 0) retryAfterMs = after * 1000;
        if (status !== 429 && status < 500) throw failure;
      } catch (err) {
        if (err instanceof IngestRefused && status !== 429 && status < 500) throw err;
        if (this.opts.signal?.aborted) throw err;
        failure =
          err instanceof IngestRefused
            ? err
            : new Error(
                `the ingestion endpoint could not be reached (${connectionCode(err)}): is it running at ${new URL(url).origin}?`,
              );
      }
      if (attempt >= attempts) throw failure;
      const delayMs = Math.min(max, retryAfterMs ?? base * 2 ** (attempt - 1));
      this.opts.onRetry?.({ status, delayMs, attempt });
      await sleep(delayMs, this.opts.signal);
    }
  }
}

/** The error the endpoint answered with (its JSON), or what can be said without it. */
function answerError(text: string): { code: string; message: string } {
  try {
    type Answer = {
      code?: unknown;
      message?: unknown;
      problems?: { line?: number; field?: string; message?: string }[];
    };
    const e = (JSON.parse(text) as { error?: Answer }).error;
    if (e && typeof e.code === 'string' && typeof e.message === 'string') {
      // A refused batch: its first problem, by line, field and fix (the endpoint never echoes an id).
      const p = Array.isArray(e.problems) ? e.problems[0] : undefined;
      const first = p ? ` (first: line ${p.line ?? '?'}, ${p.field ?? '?'}: ${p.message ?? '?'})` : '';
      return { code: e.code, message: e.message + first };
    }
  } catch {
    // Not the endpoint's JSON.
  }
  return { code: 'unknown', message: 'no error of the ingestion endpoint (is the URL the endpoint?)' };
}

/** The code of a failed connection (ECONNREFUSED, ECONNRESET, ...), never its addresses or data. */
function connectionCode(err: unknown): string {
  const cause = (err as { cause?: { code?: unknown } })?.cause;
  if (cause && typeof cause.code === 'string') return cause.code;
  return (err as Error)?.name ?? 'Error';
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason as Error);
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason as Error);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * A producer's writer of the landing zone (events/landing.ts, docs/events.md "Landing zone"): it writes
 * typed records of the contract `fleetgate/v1` as gzip NDJSON files in the layout the worker's
 * landing-zone reader takes,
 *
 *   <prefix>/<fleet>/<events|labels|outcomes|uploads>/<yyyy>/<MM>/<dd>/<HH>/<kind>-<sha256>.ndjson.gz
 *
 * in files of a few thousand records (under the reader's caps of 16 MiB and 100,000 records), each under
 * the UTC hour of its earliest record's `at`. A file's name is the sha256 of its records, so the same
 * records written again are the same write-once key (nothing read twice). It has the shape of the
 * writer's `ingestTyped`, so a producer (sim/producer.ts) writes through it as it sends over HTTP
 * (events/sender.ts); it remembers the keys it wrote until `takeWritten`, for a producer that tells a
 * reader which files to wait for.
 *
 * The landing zone carries no watermark: a `watermarkMs` given is not written anywhere. It must never
 * log a record or a unit id, and never overwrite a file (write-once keys).
 */
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import type { ObjectStore } from '../activities/deps';
import type { RecordKind, RecordOf } from './contract';
import { LANDING_KINDS } from './landing';
import type { WriteResult } from './writer';

/**
 * Records per file: under the reader's default caps (100,000 records, 16 MiB unzipped; an inference event
 * is about 500 bytes of JSON), and few files, since a reader's pass asks the store for each file's version.
 */
export const DEFAULT_RECORDS_PER_FILE = 15_000;

const DIR_OF_KIND = Object.fromEntries(
  Object.entries(LANDING_KINDS).map(([dir, kind]) => [kind, dir]),
) as Record<RecordKind, string>;

/** The key of a landing file: `prefix` ("" or without a trailing "/"), fleet, kind, the hour of `atMs`, name. */
export function landingKey(
  prefix: string,
  fleet: string,
  kind: RecordKind,
  atMs: number,
  name: string,
): string {
  const d = new Date(atMs);
  const two = (n: number) => String(n).padStart(2, '0');
  const hour = `${d.getUTCFullYear()}/${two(d.getUTCMonth() + 1)}/${two(d.getUTCDate())}/${two(d.getUTCHours())}`;
  return `${prefix === '' ? '' : `${prefix}/`}${fleet}/${DIR_OF_KIND[kind]}/${hour}/${name}`;
}

export interface LandingWriterOptions {
  store: ObjectStore;
  /** Key prefix of the landing zone in the store, "" for the whole store. */
  prefix: string;
  recordsPerFile?: number;
  /** The hour of a file without records' times (default Date.now). */
  now?: () => number;
}

export class LandingWriter {
  private readonly prefix: string;
  private written: string[] = [];

  constructor(private readonly opts: LandingWriterOptions) {
    this.prefix = opts.prefix.replace(/\/+$/, '');
  }

  /**
   * Writes the records as files of the layout; returns them as accepted (written to the zone, not yet
   * read by a worker). `watermarkMs` is ignored: the landing zone carries none.
   */
  async ingestTyped<K extends RecordKind>(
    kind: K,
    fleet: string,
    records: readonly RecordOf<K>[],
    _opts: { watermarkMs?: number } = {},
  ): Promise<WriteResult> {
    const per = Math.max(1, this.opts.recordsPerFile ?? DEFAULT_RECORDS_PER_FILE);
    for (let start = 0; start < records.length; start += per) {
      const part = records.slice(start, start + per);
      const text = Buffer.from(part.map((r) => JSON.stringify(r)).join('\n') + '\n');
      let at = Infinity;
      for (const r of part) {
        const t = (r as { at?: unknown }).at;
        if (typeof t === 'number' && t < at) at = t;
      }
      const name = `${DIR_OF_KIND[kind]}-${createHash('sha256').update(text).digest('hex').slice(0, 32)}.ndjson.gz`;
      const key = landingKey(
        this.prefix,
        fleet,
        kind,
        Number.isFinite(at) ? at : (this.opts.now ?? Date.now)(),
        name,
      );
      // The same records make the same bytes (gzip is deterministic at one level): 'exists' is fine.
      await this.opts.store.putIfAbsent(key, gzipSync(text, { level: 6 }));
      this.written.push(key);
    }
    return { accepted: records.length, duplicates: 0, late: 0, watermark: null };
  }

  /** The keys written since the last call, in the order written. */
  takeWritten(): string[] {
    const keys = this.written;
    this.written = [];
    return keys;
  }
}

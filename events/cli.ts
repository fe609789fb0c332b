/**
 * The `events` and `ingest` commands of cli/main.ts: `fleetgate events schema` prints the contract's
 * generated JSON Schema or Parquet columns (events/contract.ts), `fleetgate events rebuild|prune|compact`
 * rebuild the database from, prune and compact the Parquet partitions of the configured object store
 * (events/rebuild.ts), `fleetgate events pull` reads the landing zone of an object store
 * (events/landing.ts) once or every interval, `fleetgate ingest` runs the ingestion endpoint
 * (events/ingest-server.ts), keeping partitions in that store, until SIGINT or SIGTERM.
 *
 * It prints the URL, the database file, keys and counts, never a token, a credential or a record.
 */
import { parseArgs } from 'node:util';
import { join, resolve } from 'node:path';
import { jsonSchemaOf, parquetSchemaOf, RECORD_KINDS, type RecordKind } from './contract';
import type * as WriterModule from './writer';
import type * as ServerModule from './ingest-server';
import type * as RebuildModule from './rebuild';
import type * as LandingModule from './landing';
import type * as ConfigModule from '../workers/config';
import { storeRollouts } from './rollouts';

export const EVENTS_HELP = `Usage: fleetgate events schema [--kind inference|label|outcome|upload] [--format json-schema|parquet]
       fleetgate events pull --landing PREFIX [--fleet F] [--every 30s] [--db FILE] [--max-file-bytes N]
       fleetgate events rebuild [--db FILE]
       fleetgate events prune --before DATE|EPOCH_MS [--db FILE]
       fleetgate events compact [--date DATE]

Prints the event contract (fleetgate/v1, docs/events.md) as JSON: the JSON Schema of a record kind, or
its Parquet columns (name, DuckDB/Parquet type, nullable, record field). Without --kind, every kind,
keyed by kind. The committed copies are events/schema/<kind>.schema.json and <kind>.parquet.json.
  --kind KIND      inference, label, outcome or upload (default: all)
  --format FORMAT  json-schema (default) or parquet

rebuild writes a new database (FILE must not exist; default <FLEETGATE_DATA_DIR>/ingest.duckdb) from the
Parquet partitions of the object store (FLEETGATE_STORE), the same rows and watermarks as the database
that ingested them. prune deletes the partitions of ingestion dates before DATE (yyyy-mm-dd, UTC; an
epoch-ms instant counts from its day) and their rows from the database (stop the ingest server on it
first). compact merges the partitions of each kind, fleet and date (of DATE only with --date) into one.

pull reads the landing zone (docs/events.md, "Landing zone"): the files streams put at
<PREFIX>/<fleet>/<events|labels|outcomes|uploads>/<yyyy>/<MM>/<dd>/<HH>/<name>.ndjson[.gz] or
.parquet, each file once, into the ingestion database. One pass, or one every --every until Ctrl-C or SIGTERM.
  --landing PREFIX     a key prefix of the object store of FLEETGATE_STORE (default the data directory's
                       store/), or s3://BUCKET[/PREFIX] (endpoint and credentials as for FLEETGATE_STORE)
  --fleet F            only this fleet's files
  --every INTERVAL     a pass every INTERVAL (30s, 5m, 1h); a failed pass is retried by the next
  --db FILE            DuckDB database of ingested records (default <FLEETGATE_DATA_DIR>/ingest.duckdb)
  --max-file-bytes N   largest file, before and after gunzip (default 16777216); larger ones are refused`;

function usage(message: string, help: string): number {
  console.error(`fleetgate: ${message} (see "fleetgate ${help} --help")`);
  return 2;
}

/** The text `fleetgate events schema` prints for these options (one JSON document). */
export function schemaText(kind: RecordKind | undefined, format: 'json-schema' | 'parquet'): string {
  const one = (k: RecordKind) => (format === 'parquet' ? parquetSchemaOf(k) : jsonSchemaOf(k));
  const value = kind ? one(kind) : Object.fromEntries(RECORD_KINDS.map((k) => [k, one(k)]));
  return JSON.stringify(value, null, 2);
}

/** The `events` entry of the command table of cli/main.ts. */
export async function eventsCommand(args: string[]): Promise<number> {
  if (args[0] === 'pull') return pullCommand(args.slice(1));
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        kind: { type: 'string' },
        format: { type: 'string' },
        db: { type: 'string' },
        before: { type: 'string' },
        date: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    return usage((err as Error).message.split(/\.\s|\n/)[0]!, 'events');
  }
  if (parsed.values.help) {
    console.log(EVENTS_HELP);
    return 0;
  }
  const [sub, ...extra] = parsed.positionals;
  const subs = ['schema', 'pull', 'rebuild', 'prune', 'compact'];
  if (sub === undefined || !subs.includes(sub) || extra.length > 0)
    return usage(`events takes one subcommand: ${subs.join(', ')}`, 'events');
  if (sub !== 'schema') return storeCommand(sub, parsed.values);
  const kind = parsed.values.kind;
  if (kind !== undefined && !(RECORD_KINDS as readonly string[]).includes(kind)) {
    return usage(`--kind must be one of ${RECORD_KINDS.join(', ')} (got "${kind.slice(0, 40)}")`, 'events');
  }
  const format = parsed.values.format ?? 'json-schema';
  if (format !== 'json-schema' && format !== 'parquet') {
    return usage(`--format must be json-schema or parquet (got "${format.slice(0, 40)}")`, 'events');
  }
  console.log(schemaText(kind as RecordKind | undefined, format));
  return 0;
}

/** `events rebuild|prune|compact` on the configured object store. */
async function storeCommand(
  sub: string,
  v: { db?: string; before?: string; date?: string; kind?: string; format?: string },
): Promise<number> {
  const allowed: Record<string, string[]> = { rebuild: ['db'], prune: ['db', 'before'], compact: ['date'] };
  const extra = Object.keys(v).filter(
    (k) => v[k as keyof typeof v] !== undefined && !allowed[sub]!.includes(k),
  );
  if (extra.length > 0) return usage(`events ${sub} takes no --${extra[0]}`, 'events');
  const ops = require('./rebuild') as typeof RebuildModule;
  let beforeMs: number | undefined;
  if (sub === 'prune') {
    beforeMs = v.before === undefined ? undefined : ops.parseInstant(v.before);
    if (beforeMs === undefined)
      return usage(
        `--before must be a date (yyyy-mm-dd) or epoch milliseconds (got "${String(v.before).slice(0, 40)}")`,
        'events',
      );
  }
  if (v.date !== undefined && (!/^\d{4}-\d{2}-\d{2}$/.test(v.date) || ops.parseInstant(v.date) === undefined))
    return usage(`--date must be a date, yyyy-mm-dd (got "${v.date.slice(0, 40)}")`, 'events');
  const config = require('../workers/config') as typeof ConfigModule;
  let store;
  try {
    store = config.openObjectStore(
      config.loadStoreConfig(),
      resolve(process.env.FLEETGATE_DATA_DIR || '.fleetgate'),
    );
  } catch (err) {
    console.error(`fleetgate: ${(err as Error).message}`);
    return 2;
  }
  const db = v.db ? resolve(v.db) : defaultIngestDb();
  try {
    if (sub === 'rebuild') {
      const r = await ops.rebuildFromStore(store, db);
      console.log(
        `fleetgate events rebuild: ${db}: ${JSON.stringify({ partitions: r.partitions, rows: r.rows })}`,
      );
      if (r.ignored.length > 0)
        console.log(`  ${r.ignored.length} key(s) under events/ are not partitions: left alone`);
    } else if (sub === 'prune') {
      const { EventWriter } = require('./writer') as typeof WriterModule;
      const writer = await EventWriter.open(db);
      try {
        const r = await ops.prune(store, writer, beforeMs!);
        console.log(
          `fleetgate events prune: before ${r.before}: ${r.partitions} partition(s), rows ${JSON.stringify(r.rows)} deleted`,
        );
      } finally {
        await writer.close();
      }
    } else {
      const r = await ops.compact(store, v.date === undefined ? {} : { date: v.date });
      console.log(
        `fleetgate events compact: ${r.groups} group(s) merged, ${r.written} file(s) written, ${r.deleted} deleted`,
      );
    }
    return 0;
  } catch (err) {
    console.error(`fleetgate: events ${sub}: ${(err as Error).message.split('\n')[0]}`);
    return 1;
  } finally {
    (store as { close?: () => void }).close?.();
  }
}

/** The ingestion database of a data directory: `<FLEETGATE_DATA_DIR or .fleetgate>/ingest.duckdb`. */
export function defaultIngestDb(env: NodeJS.ProcessEnv = process.env): string {
  return join(resolve(env.FLEETGATE_DATA_DIR || '.fleetgate'), 'ingest.duckdb');
}

export const INGEST_HELP = `Usage: fleetgate ingest [--port N] [--host HOST] [--db FILE] [--max-body-bytes N] [--max-pending N]

Runs the ingestion endpoint of the event contract (docs/events.md) until Ctrl-C or SIGTERM:
POST /v1/events/{fleet}, /v1/labels/{fleet}, /v1/outcomes/{fleet}, /v1/uploads/{fleet} (NDJSON or
Parquet, gzip allowed), GET /healthz, GET /metrics. Each fleet's bearer token is read from FLEETGATE_INGEST_TOKEN_<FLEET>
(the name uppercased, other characters than letters and digits as "_").
  --port N             port to listen on (default 8790; 0: any free port)
  --host HOST          address to listen on (default 127.0.0.1)
  --db FILE            DuckDB database of ingested records (default <FLEETGATE_DATA_DIR>/ingest.duckdb)
  --max-body-bytes N   largest body, before and after gunzip (default 16777216)
  --max-pending N      batches read or written at once before 429 (default 4)`;

const positiveInt = (s: string | undefined, max: number) =>
  s !== undefined && /^\d{1,10}$/.test(s) && Number(s) >= 1 && Number(s) <= max ? Number(s) : undefined;

/** The `ingest` entry of the command table of cli/main.ts. */
export async function ingestCommand(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        port: { type: 'string' },
        host: { type: 'string' },
        db: { type: 'string' },
        'max-body-bytes': { type: 'string' },
        'max-pending': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: false,
      strict: true,
    });
  } catch (err) {
    return usage((err as Error).message.split(/\.\s|\n/)[0]!, 'ingest');
  }
  const v = parsed.values;
  if (v.help) {
    console.log(INGEST_HELP);
    return 0;
  }
  const port = v.port === '0' ? 0 : (positiveInt(v.port ?? '8790', 65535) ?? -1);
  if (port < 0)
    return usage(
      `--port must be a whole number from 0 to 65535 (got "${String(v.port).slice(0, 20)}")`,
      'ingest',
    );
  const maxBodyBytes = positiveInt(v['max-body-bytes'] ?? '16777216', 1 << 30);
  if (maxBodyBytes === undefined)
    return usage('--max-body-bytes must be a whole number from 1 to 1073741824', 'ingest');
  const maxPending = positiveInt(v['max-pending'] ?? '4', 1000);
  if (maxPending === undefined) return usage('--max-pending must be a whole number from 1 to 1000', 'ingest');
  const db = v.db ? resolve(v.db) : defaultIngestDb();
  const { EventWriter } = require('./writer') as typeof WriterModule;
  const { startIngestServer } = require('./ingest-server') as typeof ServerModule;
  const config = require('../workers/config') as typeof ConfigModule;
  let store;
  try {
    store = config.openObjectStore(
      config.loadStoreConfig(),
      resolve(process.env.FLEETGATE_DATA_DIR || '.fleetgate'),
    );
  } catch (err) {
    console.error(`fleetgate: ${(err as Error).message}`);
    return 2;
  }
  // Events of a rollout the store does not record are refused (events/rollouts.ts).
  const writer = await EventWriter.open(db, { store, rollouts: storeRollouts(store) });
  let server;
  try {
    server = await startIngestServer({ writer, port, host: v.host ?? '127.0.0.1', maxBodyBytes, maxPending });
  } catch (err) {
    await writer.close();
    console.error(
      `fleetgate: cannot listen on ${v.host ?? '127.0.0.1'}:${port}: ${(err as Error).message.split('\n')[0]}`,
    );
    return 1;
  }
  console.log(`fleetgate ingest: listening on ${server.url} (database ${db}); Ctrl-C to stop`);
  await new Promise<void>((res) => {
    process.once('SIGINT', res);
    process.once('SIGTERM', res);
  });
  await server.close();
  await writer.close();
  (store as { close?: () => void }).close?.();
  return 0;
}

/** Milliseconds of an interval such as 30s, 5m or 1h (1 s to 1 day), or undefined. */
export function intervalMs(s: string): number | undefined {
  const m = /^(\d{1,6})(s|m|h)$/.exec(s);
  if (!m) return undefined;
  const ms = Number(m[1]) * { s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 's' | 'm' | 'h'];
  return ms >= 1000 && ms <= 86_400_000 ? ms : undefined;
}

/** The line `fleetgate events pull` prints for a pass. */
export function passLine(r: LandingModule.PassResult): string {
  return (
    `fleetgate events pull: ${r.filesRead} file(s) read, ${r.filesSkipped} skipped, ${r.filesRefused} refused, ` +
    `${r.filesOutside} outside the layout; ${r.accepted} record(s) accepted, ${r.duplicates} duplicate(s), ` +
    `${r.late} late${r.stopped ? ' (stopped before the end: the next pass goes on)' : ''}`
  );
}

/** `fleetgate events pull`. */
async function pullCommand(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        landing: { type: 'string' },
        fleet: { type: 'string' },
        every: { type: 'string' },
        db: { type: 'string' },
        'max-file-bytes': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: false,
      strict: true,
    });
  } catch (err) {
    return usage((err as Error).message.split(/\.\s|\n/)[0]!, 'events');
  }
  const v = parsed.values;
  if (v.help) {
    console.log(EVENTS_HELP);
    return 0;
  }
  if (v.landing === undefined)
    return usage('events pull needs --landing PREFIX (or s3://BUCKET/PREFIX)', 'events');
  const every = v.every === undefined ? undefined : intervalMs(v.every);
  if (v.every !== undefined && every === undefined)
    return usage(
      `--every must be an interval from 1s to 24h such as 30s, 5m or 1h (got "${v.every.slice(0, 20)}")`,
      'events',
    );
  const maxFileBytes = positiveInt(v['max-file-bytes'] ?? '16777216', 1 << 30);
  if (maxFileBytes === undefined)
    return usage('--max-file-bytes must be a whole number from 1 to 1073741824', 'events');
  const { loadConfig, loadStoreConfig, openObjectStore } =
    require('../workers/config') as typeof ConfigModule;
  const { LandingReader } = require('./landing') as typeof LandingModule;
  const { EventWriter } = require('./writer') as typeof WriterModule;
  let store;
  let prefix = v.landing.replace(/\/+$/, '');
  try {
    const config = loadConfig();
    if (prefix.startsWith('s3://')) {
      store = openObjectStore(loadStoreConfig({ ...process.env, FLEETGATE_STORE: prefix }), config.dataDir);
      prefix = '';
    } else {
      store = openObjectStore(config.store, config.dataDir);
    }
  } catch (err) {
    // The s3:// form is read as FLEETGATE_STORE is: name the option the value came from.
    console.error(`fleetgate: ${(err as Error).message.replace('FLEETGATE_STORE=', '--landing ')}`);
    return 2;
  }
  const db = v.db ? resolve(v.db) : defaultIngestDb();
  const writer = await EventWriter.open(db);
  let reader;
  try {
    reader = await LandingReader.open({ store, writer, prefix, fleet: v.fleet, maxFileBytes });
  } catch (err) {
    await writer.close();
    console.error(`fleetgate: ${(err as Error).message}`);
    return 2;
  }
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let code: number;
  try {
    for (;;) {
      try {
        console.log(passLine(await reader.pass(stop.signal)));
        code = 0;
      } catch (err) {
        code = 1;
        console.error(
          `fleetgate events pull: the pass failed: ${(err as Error).message.split('\n')[0]}` +
            (every ? '; the next pass tries again' : '; run it again (files already read stay read)'),
        );
      }
      if (every === undefined || stop.signal.aborted) break;
      await new Promise<void>((res) => {
        const done = () => {
          clearTimeout(timer);
          stop.signal.removeEventListener('abort', done);
          res();
        };
        const timer = setTimeout(done, every);
        stop.signal.addEventListener('abort', done, { once: true });
      });
      if (stop.signal.aborted) break;
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    reader.close();
    await writer.close();
    (store as { close?: () => void }).close?.();
  }
  return code;
}

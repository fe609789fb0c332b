/**
 * The `events` and `ingest` commands of cli/main.ts: `fleetgate events schema` prints the contract's
 * generated JSON Schema or Parquet columns (events/contract.ts), `fleetgate ingest` runs the ingestion
 * endpoint (events/ingest-server.ts) until SIGINT or SIGTERM.
 *
 * It prints the URL and the database file, never a token or a record.
 */
import { parseArgs } from 'node:util';
import { join, resolve } from 'node:path';
import { jsonSchemaOf, parquetSchemaOf, RECORD_KINDS, type RecordKind } from './contract';

export const EVENTS_HELP = `Usage: fleetgate events schema [--kind inference|label|outcome] [--format json-schema|parquet]

Prints the event contract (fleetgate/v1, docs/events.md) as JSON: the JSON Schema of a record kind, or
its Parquet columns (name, DuckDB/Parquet type, nullable, record field). Without --kind, every kind,
keyed by kind. The committed copies are events/schema/<kind>.schema.json and <kind>.parquet.json.
  --kind KIND      inference (default: all), label or outcome
  --format FORMAT  json-schema (default) or parquet`;

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
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        kind: { type: 'string' },
        format: { type: 'string' },
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
  if (sub !== 'schema' || extra.length > 0) return usage('events takes one subcommand: schema', 'events');
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

/** The ingestion database of a data directory: `<FLEETGATE_DATA_DIR or .fleetgate>/ingest.duckdb`. */
export function defaultIngestDb(env: NodeJS.ProcessEnv = process.env): string {
  return join(resolve(env.FLEETGATE_DATA_DIR || '.fleetgate'), 'ingest.duckdb');
}

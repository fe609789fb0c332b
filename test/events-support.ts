/**
 * What the tests of ingestion share: `dumpIngested(file)`, every table of an ingestion database (the
 * record tables and the watermarks), each ordered by its key, to compare a database with a rebuilt one
 * (it only reads; it must never be used on a database another process holds open); and the valid
 * records of the contract's tests (`inference(over)`, `uploadReport(over)`, `VALID_INFERENCE`), which the fast check and the
 * SQL check are both held against.
 */
import { randomBytes } from 'node:crypto';
import { DuckDBInstance } from '@duckdb/node-api';
import { TABLES, WATERMARKS_TABLE } from '../events/writer';
import { pseudonym } from '../fleet/pseudonym';

/** The pseudonym key of the run, and a raw vehicle id that must never be stored or shown. */
export const UNIT_KEY = randomBytes(32);
export const RAW_ID = 'WVWZZZ1JZXW000001';
/** That vehicle's keyed pseudonym. */
export const UNIT = pseudonym(UNIT_KEY, RAW_ID);
/** The shadow model's output of a shadow event. */
export const SHADOW = { digest: 'b'.repeat(64), prediction: 0, confidence: 0.6, latencyMs: 4 };

/** A valid production inference event, with `over` laid on top. */
export function inference(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    schema: 'fleetgate/v1',
    eventId: 'b1-000001',
    fleet: 'demo',
    cohort: 'hw3/eu',
    unit: UNIT,
    rolloutId: null,
    phase: 'production',
    arm: 'production',
    modelDigest: 'a'.repeat(64),
    prediction: 1,
    confidence: 0.9,
    latencyMs: 3.5,
    safety: false,
    exposureHours: 0.05,
    upload: { tier: 'sample', inclusionProbability: 0.1 },
    at: Date.UTC(2025, 0, 1),
    ...over,
  };
}

/** A valid upload report of a shadow window, with `over` laid on top. */
export function uploadReport(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    schema: 'fleetgate/v1',
    fleet: 'demo',
    cohort: 'hw3/eu',
    unit: UNIT,
    rolloutId: 'r-1',
    fromMs: Date.UTC(2025, 0, 1),
    at: Date.UTC(2025, 0, 1, 1),
    evaluated: 120,
    priority: 9,
    disagreements: 4,
    uploaded: 20,
    overBudget: false,
    ...over,
  };
}

/** Valid inference events of every phase and arm, and at the edges of their fields. */
export const VALID_INFERENCE: Record<string, unknown>[] = [
  inference(),
  inference({ phase: 'shadow', rolloutId: 'r-1', shadow: SHADOW }),
  inference({ phase: 'shadow', rolloutId: 'r-1', shadow: { ...SHADOW, safety: true } }),
  inference({ phase: 'canary', rolloutId: 'r-1', arm: 'candidate' }),
  inference({ phase: 'canary', rolloutId: 'r-1', arm: 'production' }),
  inference({ inputRef: 'inputs/demo/b1-000001.bin', confidence: 0, latencyMs: 0 }),
  inference({ upload: { tier: 'priority', inclusionProbability: 1 } }),
  inference({ cohort: 'web-eu', eventId: 'e'.repeat(128), at: Date.UTC(2100, 0, 1) - 1 }),
];

/** Every table of an ingestion database, each ordered by its key (rows as DuckDB returns them). */
export async function dumpIngested(file: string): Promise<Record<string, unknown[]>> {
  const instance = await DuckDBInstance.create(file);
  const conn = await instance.connect();
  try {
    const out: Record<string, unknown[]> = {};
    for (const { table, key } of Object.values(TABLES)) {
      out[table] = (
        await conn.runAndReadAll(`SELECT * FROM ${table} ORDER BY ${key.join(', ')}`)
      ).getRowObjectsJS();
    }
    out[WATERMARKS_TABLE] = (
      await conn.runAndReadAll(`SELECT * FROM ${WATERMARKS_TABLE} ORDER BY fleet, cohort`)
    ).getRowObjectsJS();
    return out;
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
}

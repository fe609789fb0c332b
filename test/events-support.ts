/**
 * What the tests of ingestion share: `dumpIngested(file)`, every table of an ingestion database (the
 * record tables and the watermarks), each ordered by its key, to compare a database with a rebuilt one.
 * It only reads; it must never be used on a database another process holds open.
 */
import { DuckDBInstance } from '@duckdb/node-api';
import { TABLES, WATERMARKS_TABLE } from '../events/writer';

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

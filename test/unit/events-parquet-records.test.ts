/**
 * A Parquet batch read by columns (events/parse.ts `parquetRecords`, through `recordsFromColumns`)
 * makes the same records, field for field and in the same key order, as each of its rows read as an
 * object through `recordFromColumns`: on a real file written by DuckDB, with null and absent columns,
 * nested fields and BIGINT values.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { recordFromColumns } from '../../events/contract';
import { parquetRecords } from '../../events/parse';

describe('Parquet records by columns', () => {
  test('equal the records of its rows read as objects, nulls and nested fields included', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fleetgate-parquet-records-'));
    const instance = await DuckDBInstance.create(':memory:');
    const conn = await instance.connect();
    try {
      const file = join(dir, 'batch.parquet');
      // No input_ref column at all; shadow columns null except on shadow rows; rollout_id null on some.
      await conn.run(`COPY (
        SELECT 'fleetgate/v1' AS schema, 'e-' || i AS event_id, 'demo' AS fleet, 'hw3/eu' AS cohort,
          repeat('a', 20) AS unit, CASE WHEN i % 3 = 0 THEN NULL ELSE 'r-1' END AS rollout_id,
          CASE WHEN i % 2 = 0 THEN 'shadow' ELSE 'production' END AS phase, 'production' AS arm,
          repeat('b', 64) AS model_digest,
          CASE WHEN i % 2 = 0 THEN repeat('c', 64) END AS shadow_digest,
          CASE WHEN i % 2 = 0 THEN (i % 5)::INTEGER END AS shadow_prediction,
          CASE WHEN i % 2 = 0 THEN 0.5 END AS shadow_confidence,
          CASE WHEN i % 2 = 0 THEN 1.25 END AS shadow_latency_ms,
          CASE WHEN i % 4 = 0 THEN true END AS shadow_safety,
          (i % 2)::INTEGER AS prediction, 0.75 AS confidence, 3.5 AS latency_ms, i % 7 = 0 AS safety,
          0.05 AS exposure_hours, 'sample' AS upload_tier, 0.25 AS upload_inclusion_probability,
          (1735689600000 + i)::BIGINT AS "at"
        FROM range(3000) t(i)) TO '${file}' (FORMAT parquet)`);
      const rows = (await conn.runAndReadAll(`SELECT * FROM read_parquet('${file}')`)).getRowObjectsJS();
      const expected = rows.map((row) => recordFromColumns('inference', row));
      const got = await parquetRecords(readFileSync(file), 'inference', {
        tmpDir: dir,
        connect: () => instance.connect(),
        maxRecords: 100_000,
      });
      assert.equal(got.length, 3000);
      assert.deepStrictEqual(got, expected);
      assert.equal(JSON.stringify(got), JSON.stringify(expected));
      assert.deepStrictEqual(got[0], {
        schema: 'fleetgate/v1',
        eventId: 'e-0',
        fleet: 'demo',
        cohort: 'hw3/eu',
        unit: 'a'.repeat(20),
        phase: 'shadow',
        arm: 'production',
        modelDigest: 'b'.repeat(64),
        shadow: { digest: 'c'.repeat(64), prediction: 0, confidence: 0.5, latencyMs: 1.25, safety: true },
        prediction: 0,
        confidence: 0.75,
        latencyMs: 3.5,
        safety: true,
        exposureHours: 0.05,
        upload: { tier: 'sample', inclusionProbability: 0.25 },
        at: 1735689600000,
      });
    } finally {
      conn.closeSync();
      instance.closeSync();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

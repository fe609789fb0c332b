/**
 * Ingested records kept as Parquet partitions on S3 (moto on loopback, see test/moto.ts), with the
 * project's S3ObjectStore and real DuckDB: batches through the writer land as partitions under the
 * store's prefix, a re-sent batch adds none, a crashed commit followed by a re-send, compaction and
 * pruning all leave a database rebuilt from the bucket identical to the one that ingested the records.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { CreateBucketCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { S3ObjectStore } from '../../activities/store-s3';
import { EventWriter, WATERMARKS_TABLE } from '../../events/writer';
import { parsePartitionKey } from '../../events/partitions';
import { compact, prune, rebuildFromStore } from '../../events/rebuild';
import { createS3Client, loadStoreConfig, type S3StoreConfig } from '../../workers/config';
import { pseudonym } from '../../fleet/pseudonym';
import { dumpIngested } from '../events-support';
import { startMoto, type Moto } from '../moto';

const BUCKET = 'fleetgate-events';
const KEY = randomBytes(32);
const DAY = 86_400_000;
const T0 = Date.UTC(2025, 0, 1, 10);

let moto: Moto;
let tmp: string;
let client: S3Client;
let store: S3ObjectStore;

before(async () => {
  moto = await startMoto();
  tmp = mkdtempSync(join(tmpdir(), 'fg-partitions-s3-'));
  const config = loadStoreConfig({
    FLEETGATE_STORE: `s3://${BUCKET}/fleet/a`,
    FLEETGATE_S3_ENDPOINT: moto.endpoint,
    AWS_REGION: 'eu-west-1',
    AWS_ACCESS_KEY_ID: 'test',
    AWS_SECRET_ACCESS_KEY: 'test',
  }) as S3StoreConfig;
  client = createS3Client(config);
  await client.send(
    new CreateBucketCommand({
      Bucket: BUCKET,
      CreateBucketConfiguration: { LocationConstraint: 'eu-west-1' },
    }),
  );
  store = new S3ObjectStore(client, { bucket: BUCKET, prefix: config.prefix, pageSize: 5 });
});

after(async () => {
  client?.destroy();
  await moto?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

function event(i: number): Record<string, unknown> {
  return {
    schema: 'fleetgate/v1',
    eventId: `e-${i}`,
    fleet: 'demo',
    cohort: i % 2 ? 'hw3/eu' : 'hw4/us',
    unit: pseudonym(KEY, `VIN-${i % 5}`),
    phase: 'production',
    arm: 'production',
    modelDigest: 'd'.repeat(64),
    prediction: i % 2,
    confidence: 0.75,
    latencyMs: 3.25,
    safety: false,
    exposureHours: 0.05,
    upload: { tier: 'all', inclusionProbability: 1 },
    at: T0 + i,
  };
}

test('partitions on S3: ingest, re-send, crash and re-send, compact, prune, and rebuild each time', async () => {
  const clock = { t: T0 };
  let crash = false;
  const db = join(tmp, 'ingest.duckdb');
  const writer = await EventWriter.open(db, {
    store,
    now: () => clock.t,
    tmpDir: tmp,
    beforeCommit: async () => {
      if (crash) throw new Error('simulated crash before commit');
    },
  });
  for (let b = 0; b < 6; b++) {
    clock.t = T0 + b * 1000 + (b >= 3 ? DAY : 0);
    await writer.ingest('inference', 'demo', [event(b * 3), event(b * 3 + 1), event(b * 3 + 2)], {
      where: 'line',
      watermarkMs: T0 + b * 3,
    });
  }
  const keys = await store.list('events/');
  assert.equal(keys.length, 12, 'one record partition and one watermark partition per batch');
  // Under the store's prefix in the bucket, nothing else.
  const listed = await client.send(new ListObjectsV2Command({ Bucket: BUCKET }));
  assert.deepEqual(listed.Contents?.map((o) => o.Key).sort(), keys.map((k) => `fleet/a/${k}`).sort());
  // Re-sent: no new partition.
  clock.t += 10;
  assert.equal(
    (await writer.ingest('inference', 'demo', [event(0), event(1)], { where: 'line' })).accepted,
    0,
  );
  assert.deepEqual(await store.list('events/'), keys);
  // A crash before the commit, then the re-send.
  crash = true;
  await assert.rejects(
    writer.ingest('inference', 'demo', [event(100), event(101)], { where: 'line', watermarkMs: T0 + 200 }),
    /simulated crash/,
  );
  crash = false;
  clock.t += 10;
  await writer.ingest('inference', 'demo', [event(100), event(101)], {
    where: 'line',
    watermarkMs: T0 + 200,
  });
  assert.equal((await store.list('events/')).length, 16);
  const expected = await writer.read('SELECT * FROM ingested_inference ORDER BY fleet, event_id');
  const rebuiltA = join(tmp, 'a.duckdb');
  await rebuildFromStore(store, rebuiltA, { cacheDir: tmp });
  const a = await dumpIngested(rebuiltA);
  assert.deepEqual(a.ingested_inference, expected);
  assert.deepEqual(
    a[WATERMARKS_TABLE],
    await writer.read(`SELECT * FROM ${WATERMARKS_TABLE} ORDER BY fleet, cohort`),
  );

  // Compact: one file per kind and date, the same database after a rebuild.
  const c = await compact(store, { cacheDir: tmp });
  assert.equal(c.groups, 4);
  assert.equal((await store.list('events/')).length, 4);
  const rebuiltB = join(tmp, 'b.duckdb');
  await rebuildFromStore(store, rebuiltB);
  assert.deepEqual(await dumpIngested(rebuiltB), a);

  // Prune the first day: its record partition goes, the second day's and the watermarks stay.
  const p = await prune(store, writer, T0 + DAY);
  assert.deepEqual([p.before, p.partitions, p.rows.inference], ['2025-01-02', 1, 9]);
  const left = (await store.list('events/')).map((k) => parsePartitionKey(k)!);
  assert.deepEqual(left.map((x) => `${x.kind}/${x.date}`).sort(), [
    'inference/2025-01-02',
    'watermarks/2025-01-01',
    'watermarks/2025-01-02',
  ]);
  await writer.close();
  const pruned = await dumpIngested(db);
  assert.equal(pruned.ingested_inference!.length, 11);
  const rebuiltC = join(tmp, 'c.duckdb');
  await rebuildFromStore(store, rebuiltC);
  assert.deepEqual(await dumpIngested(rebuiltC), pruned);
});

/**
 * Ingested records kept as Parquet partitions in a LocalObjectStore on a temp directory, with real
 * DuckDB: batches through the writer produce partitions (readable by DuckDB with hive_partitioning), a
 * re-sent batch produces none, a database deleted and rebuilt from the store holds the same rows and
 * watermarks, a crash between the partition and the commit followed by a re-send rebuilds to the same
 * rows as without the crash, prune removes old partitions and rows only, and compact leaves fewer files
 * and the same rows after a rebuild. Also the `fleetgate events rebuild|prune|compact` commands.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { DuckDBInstance } from '@duckdb/node-api';
import { LocalObjectStore } from '../../activities/store';
import { EventWriter, WATERMARKS_TABLE } from '../../events/writer';
import { parsePartitionKey } from '../../events/partitions';
import { compact, prune, rebuildFromStore } from '../../events/rebuild';
import { eventsCommand } from '../../events/cli';
import { pseudonym } from '../../fleet/pseudonym';
import { dumpIngested } from '../events-support';

const KEY = randomBytes(32);
const DAY = 86_400_000;
const T0 = Date.UTC(2025, 0, 1, 10);

function event(i: number, over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    schema: 'fleetgate/v1',
    eventId: `e-${i}`,
    fleet: 'demo',
    cohort: i % 3 === 0 ? 'hw4/us' : 'hw3/eu',
    unit: pseudonym(KEY, `VIN-${i % 7}`),
    phase: 'canary',
    rolloutId: 'r-1',
    arm: i % 2 ? 'candidate' : 'production',
    modelDigest: 'c'.repeat(64),
    prediction: i % 3,
    confidence: 0.5 + (i % 5) / 10,
    latencyMs: 2 + i / 1000,
    safety: i % 11 === 0,
    exposureHours: 0.05,
    upload: { tier: 'sample', inclusionProbability: 0.25 },
    at: T0 + i * 1000,
    ...over,
  };
}
const label = (i: number) => ({
  schema: 'fleetgate/v1',
  eventId: `e-${i}`,
  labeler: 'human-1',
  label: i % 2,
  at: T0 + i * 1000 + 500,
});
const report = (i: number, over: Record<string, unknown> = {}) => ({
  schema: 'fleetgate/v1',
  fleet: 'demo',
  cohort: 'hw3/eu',
  unit: pseudonym(KEY, `VIN-${i % 3}`),
  rolloutId: 'r-1',
  fromMs: T0 + i * 3_600_000,
  at: T0 + (i + 1) * 3_600_000,
  evaluated: 100 + i,
  priority: 10,
  disagreements: i % 10,
  uploaded: 20,
  overBudget: i % 2 === 0,
  ...over,
});
const outcome = (i: number) => ({
  schema: 'fleetgate/v1',
  requestId: `q-${i}`,
  outcome: i % 4 === 0 ? 'error' : 'ok',
  at: T0 + i * 1000,
});

describe('ingested records as Parquet partitions', () => {
  let dir: string;
  let n = 0;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'fg-partitions-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** A fresh store, database file and writer whose clock is `clock.t` (moved by the test). */
  async function setup(options: { beforeCommit?: () => Promise<void> } = {}) {
    const base = join(dir, String(n++));
    const store = new LocalObjectStore(join(base, 'store'), { durable: false });
    const clock = { t: T0 };
    const db = join(base, 'ingest.duckdb');
    const writer = await EventWriter.open(db, { store, now: () => clock.t, tmpDir: base, ...options });
    return { base, store, clock, db, writer };
  }
  const partitionKeys = async (store: LocalObjectStore, kind?: string) =>
    (await store.list('events/')).filter((k) => kind === undefined || parsePartitionKey(k)?.kind === kind);

  test('each batch writes its new rows as one partition; a re-sent batch writes none', async () => {
    const { store, clock, writer, base } = await setup();
    try {
      await writer.ingest('inference', 'demo', [event(1), event(2), event(3)], {
        where: 'line',
        watermarkMs: T0,
      });
      await writer.ingest('label', 'demo', [label(1), label(2)], { where: 'line' });
      await writer.ingest('outcome', 'demo', [outcome(1)], { where: 'line' });
      const keys = await store.list('events/');
      assert.equal(keys.length, 4);
      const parts = keys.map((k) => parsePartitionKey(k)!);
      assert.deepEqual(parts.map((p) => [p.kind, p.fleet, p.date]).sort(), [
        ['inference', 'demo', '2025-01-01'],
        ['label', 'demo', '2025-01-01'],
        ['outcome', 'demo', '2025-01-01'],
        ['watermarks', 'demo', '2025-01-01'],
      ]);
      // Re-sent: all duplicates, the same watermark: nothing new in the store.
      clock.t += 1000;
      const again = await writer.ingest('inference', 'demo', [event(1), event(2), event(3)], {
        where: 'line',
        watermarkMs: T0,
      });
      assert.equal(again.accepted, 0);
      await writer.ingest('label', 'demo', [label(1), label(2)], { where: 'line' });
      assert.deepEqual(await store.list('events/'), keys);
      // One new record among old ones: a partition of that record alone.
      await writer.ingest('inference', 'demo', [event(1), event(4)], { where: 'line' });
      const added = (await store.list('events/')).filter((k) => !keys.includes(k));
      assert.equal(added.length, 1);
      // DuckDB reads the store's prefix with hive_partitioning: fleet and date come from the path.
      const instance = await DuckDBInstance.create(':memory:');
      const conn = await instance.connect();
      const rows = (
        await conn.runAndReadAll(
          `SELECT event_id, ingested_at_ms, "date"::VARCHAR AS d FROM read_parquet('${join(base, 'store')}/events/inference/*/*/*.parquet', hive_partitioning = true) ORDER BY event_id`,
        )
      ).getRowObjectsJS();
      conn.closeSync();
      instance.closeSync();
      assert.deepEqual(rows, [
        { event_id: 'e-1', ingested_at_ms: BigInt(T0), d: '2025-01-01' },
        { event_id: 'e-2', ingested_at_ms: BigInt(T0), d: '2025-01-01' },
        { event_id: 'e-3', ingested_at_ms: BigInt(T0), d: '2025-01-01' },
        { event_id: 'e-4', ingested_at_ms: BigInt(T0 + 1000), d: '2025-01-01' },
      ]);
    } finally {
      await writer.close();
    }
  });

  test('the database deleted and rebuilt from the store holds the same rows and watermarks', async () => {
    const { store, clock, writer, db, base } = await setup();
    for (let b = 0; b < 6; b++) {
      clock.t = T0 + b * (DAY / 2);
      const batch = [event(b * 5 + 1), event(b * 5 + 2), event(b * 5 + 3), event(b * 5 + 1)];
      await writer.ingest('inference', 'demo', batch, { where: 'line', watermarkMs: T0 + b * 2000 });
      await writer.ingest('inference', 'other', [event(b, { fleet: 'other' })], {
        where: 'line',
        watermarkMs: T0 - b, // never raises the first one
      });
      await writer.ingest('label', 'demo', [label(b * 5 + 1)], { where: 'line' });
      await writer.ingest('outcome', 'demo', [outcome(b)], { where: 'line' });
      await writer.ingest('upload', 'demo', [report(b), report(b + 1), report(b)], { where: 'line' });
      await writer.ingest('upload', 'other', [report(b, { fleet: 'other' })], { where: 'line' });
    }
    await writer.close();
    const original = await dumpIngested(db);
    assert.equal(original.ingested_inference!.length, 24);
    assert.equal(original.ingested_uploads!.length, 7 + 6, 'windows 0 to 6 of demo, 0 to 5 of other');
    assert.equal(original[WATERMARKS_TABLE]!.length, 4, 'two cohorts in each fleet');
    rmSync(db);
    const result = await rebuildFromStore(store, db, { cacheDir: base });
    assert.deepEqual(await dumpIngested(db), original);
    assert.deepEqual(result.rows, { inference: 24, label: 6, outcome: 6, upload: 13, watermarks: 4 });
    assert.ok(
      (await store.list('events/upload/')).every((k) => parsePartitionKey(k)?.kind === 'upload'),
      'upload reports have partitions of their own kind',
    );
    // Never over an existing database, and the cache is gone.
    await assert.rejects(rebuildFromStore(store, db), /already exists; a rebuild writes a fresh database/);
    assert.deepEqual(
      (await import('node:fs')).readdirSync(base).filter((f) => f.startsWith('fleetgate-')),
      [],
    );
  });

  test('a crash between the partition and the commit, then a re-send: the same rows after rebuild', async () => {
    let crash = false;
    const crashed = await setup({
      beforeCommit: async () => {
        if (crash) throw new Error('simulated crash before commit');
      },
    });
    const clean = await setup();
    const b1 = [event(1), event(2)];
    const b2 = [event(3), event(4), event(5)];
    for (const run of [crashed, clean]) {
      run.clock.t = T0;
      await run.writer.ingest('inference', 'demo', b1, { where: 'line', watermarkMs: T0 });
    }
    crashed.clock.t = T0 + 1000;
    crash = true;
    await assert.rejects(
      crashed.writer.ingest('inference', 'demo', b2, { where: 'line', watermarkMs: T0 + 5000 }),
      /simulated crash/,
    );
    crash = false;
    assert.equal((await partitionKeys(crashed.store)).length, 4, 'the partitions of the failed batch stay');
    // The producer had no answer and sends again, later.
    for (const run of [crashed, clean]) {
      run.clock.t = T0 + 2000;
      const r = await run.writer.ingest('inference', 'demo', b2, { where: 'line', watermarkMs: T0 + 5000 });
      assert.equal(r.accepted, 3);
      await run.writer.close();
    }
    const expected = await dumpIngested(clean.db);
    assert.deepEqual(await dumpIngested(crashed.db), expected);
    for (const run of [crashed, clean]) {
      rmSync(run.db);
      await rebuildFromStore(run.store, run.db);
      assert.deepEqual(await dumpIngested(run.db), expected);
    }
    // Re-sent at the same instant: the same bytes, the same key, nothing new.
    const same = await setup({
      beforeCommit: async () => {
        if (crash) throw new Error('simulated crash before commit');
      },
    });
    crash = true;
    await assert.rejects(same.writer.ingest('inference', 'demo', b1, { where: 'line' }), /simulated crash/);
    crash = false;
    const keys = await partitionKeys(same.store);
    await same.writer.ingest('inference', 'demo', b1, { where: 'line' });
    assert.deepEqual(await partitionKeys(same.store), keys);
    await same.writer.close();
  });

  test('prune removes the partitions and rows of earlier days and leaves the rest', async () => {
    const { store, clock, writer, db } = await setup();
    for (let d = 0; d < 3; d++) {
      clock.t = T0 + d * DAY;
      await writer.ingest('inference', 'demo', [event(d * 2), event(d * 2 + 1)], {
        where: 'line',
        watermarkMs: T0 + d,
      });
      await writer.ingest('outcome', 'demo', [outcome(d)], { where: 'line' });
      await writer.ingest('upload', 'demo', [report(d)], { where: 'line' });
    }
    const wmKeys = await partitionKeys(store, 'watermarks');
    assert.equal(wmKeys.length, 3);
    // An instant within 2025-01-03 prunes from that day's midnight: 2025-01-01 and 2025-01-02.
    const r = await prune(store, writer, T0 + 2 * DAY + 3600_000);
    assert.deepEqual(r, {
      before: '2025-01-03',
      partitions: 6,
      rows: { inference: 4, label: 0, outcome: 2, upload: 2 },
    });
    const left = await store.list('events/');
    assert.deepEqual(
      left
        .map((k) => parsePartitionKey(k)!)
        .filter((p) => p.kind !== 'watermarks')
        .map((p) => p.date),
      ['2025-01-03', '2025-01-03', '2025-01-03'],
    );
    assert.deepEqual(await partitionKeys(store, 'watermarks'), wmKeys, 'watermarks are never pruned');
    assert.deepEqual(
      (await writer.read('SELECT event_id FROM ingested_inference ORDER BY event_id')).map((x) => x.event_id),
      ['e-4', 'e-5'],
    );
    await writer.close();
    const pruned = await dumpIngested(db);
    rmSync(db);
    await rebuildFromStore(store, db);
    assert.deepEqual(await dumpIngested(db), pruned);
  });

  test('compact merges each kind, fleet and date into one file; the rows after rebuild are the same', async () => {
    let crash = false;
    const { store, clock, writer, db } = await setup({
      beforeCommit: async () => {
        if (crash) throw new Error('simulated crash before commit');
      },
    });
    for (let b = 0; b < 8; b++) {
      clock.t = T0 + b * 1000 + (b >= 4 ? DAY : 0);
      await writer.ingest('inference', 'demo', [event(b * 2), event(b * 2 + 1)], {
        where: 'line',
        watermarkMs: T0 + b,
      });
      await writer.ingest('label', 'demo', [label(b * 2)], { where: 'line' });
      await writer.ingest('upload', 'demo', [report(b)], { where: 'line' });
    }
    // A crashed batch and its re-send on the second day: the same keys in two partitions.
    crash = true;
    clock.t = T0 + DAY + 9000;
    await assert.rejects(writer.ingest('inference', 'demo', [event(40)], { where: 'line' }));
    crash = false;
    clock.t = T0 + DAY + 10_000;
    await writer.ingest('inference', 'demo', [event(40)], { where: 'line' });
    await writer.close();
    const original = await dumpIngested(db);
    const before = await store.list('events/');
    assert.equal(before.length, 8 * 4 + 2);
    // --date: that day only.
    const first = await compact(store, { date: '2025-01-01' });
    // The last watermark change of each day raised both cohorts, so the merged watermarks are that
    // partition's very bytes: its key is kept, the three others deleted.
    assert.deepEqual(first, { groups: 4, written: 3, deleted: 15 });
    const all = await compact(store);
    assert.deepEqual(all, { groups: 4, written: 3, deleted: 17 });
    const after = await store.list('events/');
    assert.equal(after.length, 8, 'one file per kind, fleet and date');
    assert.deepEqual(await compact(store), { groups: 0, written: 0, deleted: 0 }, 'nothing left to merge');
    rmSync(db);
    await rebuildFromStore(store, db);
    assert.deepEqual(await dumpIngested(db), original);
  });

  test('fleetgate events rebuild, prune and compact on the configured local store', async () => {
    const { base, clock, writer, db } = await setup();
    for (let d = 0; d < 2; d++) {
      clock.t = T0 + d * DAY;
      await writer.ingest('inference', 'demo', [event(d)], { where: 'line' });
      await writer.ingest('inference', 'demo', [event(d + 10)], { where: 'line' });
    }
    await writer.close();
    const saved = { ...process.env };
    const logs: string[] = [];
    const errors: string[] = [];
    const log = console.log;
    const error = console.error;
    console.log = (s: string) => logs.push(s);
    console.error = (s: string) => errors.push(s);
    try {
      process.env.FLEETGATE_DATA_DIR = base; // the store is <base>/store
      delete process.env.FLEETGATE_STORE;
      assert.equal(await eventsCommand(['compact', '--date', '2025-01-02']), 0);
      assert.match(logs.at(-1)!, /1 group\(s\) merged, 1 file\(s\) written, 2 deleted/);
      assert.equal(await eventsCommand(['prune', '--before', '2025-01-02', '--db', db]), 0);
      assert.match(
        logs.at(-1)!,
        /before 2025-01-02: 2 partition\(s\), rows \{"inference":2,"label":0,"outcome":0,"upload":0\}/,
      );
      const pruned = await dumpIngested(db);
      const rebuilt = join(base, 'rebuilt.duckdb');
      assert.equal(await eventsCommand(['rebuild', '--db', rebuilt]), 0);
      assert.deepEqual(await dumpIngested(rebuilt), pruned);
      assert.equal(await eventsCommand(['rebuild', '--db', rebuilt]), 1);
      assert.match(errors.at(-1)!, /already exists; a rebuild writes a fresh database: move the file away/);
      assert.equal(await eventsCommand(['prune', '--before', 'yesterday']), 2);
      assert.match(
        errors.at(-1)!,
        /--before must be a date \(yyyy-mm-dd\) or epoch milliseconds \(got "yesterday"\)/,
      );
      assert.equal(await eventsCommand(['compact', '--date', '2025-02-30']), 2);
      assert.match(errors.at(-1)!, /--date must be a date, yyyy-mm-dd \(got "2025-02-30"\)/);
      assert.equal(await eventsCommand(['compact', '--before', '2025-01-01']), 2);
      assert.match(errors.at(-1)!, /events compact takes no --before/);
      assert.ok(existsSync(rebuilt));
    } finally {
      console.log = log;
      console.error = error;
      process.env = saved;
    }
  });
});

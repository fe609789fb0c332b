/**
 * The event writer on a real DuckDB file: a re-sent batch changes nothing and is counted as duplicates,
 * a batch with one bad record among good ones stores nothing, a failure before commit stores nothing,
 * watermarks only go forward and late events are counted, and a batch of 10,000 goes in at once. Upload
 * reports are stored once per unit and window, and shadow.safety in its column; a writer attached to a
 * DuckDB instance that holds other tables closes only its own connection.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { DuckDBInstance } from '@duckdb/node-api';
import { BatchRefused, EventWriter } from '../../events/writer';
import { LocalObjectStore } from '../../activities/store';
import type { ObjectStore } from '../../activities/deps';
import { pseudonym } from '../../fleet/pseudonym';

const KEY = randomBytes(32);
const T0 = Date.UTC(2025, 0, 1);

function event(i: number, over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    schema: 'fleetgate/v1',
    eventId: `e-${i}`,
    fleet: 'demo',
    cohort: 'hw3/eu',
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

function report(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    schema: 'fleetgate/v1',
    fleet: 'demo',
    cohort: 'hw3/eu',
    unit: pseudonym(KEY, 'VIN-1'),
    rolloutId: 'r-1',
    fromMs: T0,
    at: T0 + 3_600_000,
    evaluated: 200,
    priority: 12,
    disagreements: 5,
    uploaded: 30,
    overBudget: true,
    ...over,
  };
}

describe('event writer', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'fg-writer-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const count = async (w: EventWriter, table = 'ingested_inference') =>
    Number((await w.read(`SELECT count(*) AS n FROM ${table}`))[0]!.n);

  test('a re-sent batch changes nothing and reports its duplicates; the first record received stays', async () => {
    let clock = 1000;
    const w = await EventWriter.open(join(dir, 'a.duckdb'), { now: () => clock++ });
    try {
      const batch = [event(1), event(2), event(3)];
      assert.deepEqual(await w.ingest('inference', 'demo', batch, { where: 'line' }), {
        accepted: 3,
        duplicates: 0,
        late: 0,
        watermark: { 'hw3/eu': null },
      });
      const before = await w.read('SELECT * FROM ingested_inference ORDER BY event_id');
      const again = await w.ingest('inference', 'demo', [...batch, event(2, { prediction: 2 })], {
        where: 'line',
      });
      assert.equal(again.accepted, 0);
      assert.equal(again.duplicates, 4);
      assert.deepEqual(await w.read('SELECT * FROM ingested_inference ORDER BY event_id'), before);
      assert.equal(before[0]!.ingested_at_ms, 1000n);
      // Another fleet may use the same event ids.
      const other = await w.ingest('inference', 'other', [event(1, { fleet: 'other' })], { where: 'line' });
      assert.equal(other.accepted, 1);
      // Within one batch: the same record twice is a duplicate; one id with other values is refused.
      const inBatch = await w.ingest('inference', 'demo', [event(9), event(9)], { where: 'line' });
      assert.deepEqual([inBatch.accepted, inBatch.duplicates], [1, 1]);
      await assert.rejects(
        w.ingest(
          'inference',
          'demo',
          [event(10, { prediction: 0 }), event(11), event(10, { prediction: 2 })],
          {
            where: 'line',
          },
        ),
        (err) => {
          assert.ok(err instanceof BatchRefused);
          assert.deepEqual(err.problems, [
            {
              line: 3,
              field: 'eventId',
              message: 'repeats the eventId of line 1 with other values: give each record its own id',
            },
          ]);
          return true;
        },
      );
      assert.equal(await count(w), 5);
    } finally {
      await w.close();
    }
  });

  test('one bad record among good ones: the batch is refused and nothing is stored', async () => {
    const w = await EventWriter.open(join(dir, 'b.duckdb'));
    try {
      await w.ingest('inference', 'demo', [event(1)], { where: 'line' });
      const raw = 'WVWZZZ1JZXW000042';
      const batch = [event(2), event(3), event(4, { unit: raw }), event(5)];
      await assert.rejects(
        w.ingest('inference', 'demo', batch, { where: 'line', positions: [1, 2, 4, 5] }),
        (err) => {
          assert.ok(err instanceof BatchRefused);
          assert.equal(err.problemCount, 1);
          assert.equal(err.problems[0]!.line, 4);
          assert.equal(err.problems[0]!.field, 'unit');
          assert.match(err.problems[0]!.message, /HMAC-SHA256\(fleet key, raw id\)/);
          assert.ok(!JSON.stringify(err.problems).includes(raw));
          return true;
        },
      );
      assert.equal(await count(w), 1);
    } finally {
      await w.close();
    }
  });

  test('a failure inside the transaction rolls the whole batch back', async () => {
    let fail = true;
    const w = await EventWriter.open(join(dir, 'c.duckdb'), {
      beforeCommit: async () => {
        if (fail) throw new Error('disk full');
      },
    });
    try {
      await assert.rejects(
        w.ingest('inference', 'demo', [event(1), event(2)], { where: 'line', watermarkMs: T0 }),
        /disk full/,
      );
      assert.equal(await count(w), 0);
      assert.equal(await count(w, 'ingest_watermarks'), 0);
      fail = false;
      const r = await w.ingest('inference', 'demo', [event(1), event(2)], { where: 'line' });
      assert.equal(r.accepted, 2);
    } finally {
      await w.close();
    }
  });

  test('a store that refuses the partition rolls the batch back; the batch sent again goes in', async () => {
    // The local store, with its partition writes failing while `refuse` is set.
    const local = new LocalObjectStore(join(dir, 'refusing-store'));
    let refuse = true;
    const store: ObjectStore = Object.assign(Object.create(local) as LocalObjectStore, {
      putIfAbsent: async (key: string, body: Buffer) => {
        if (refuse) throw new Error('the store refused the write');
        return local.putIfAbsent(key, body);
      },
    });
    const w = await EventWriter.open(join(dir, 'refused.duckdb'), { store });
    try {
      await assert.rejects(
        w.ingest('inference', 'demo', [event(1), event(2)], { where: 'line', watermarkMs: T0 }),
        /the store refused the write/,
      );
      assert.equal(await count(w), 0);
      assert.equal(await count(w, 'ingest_watermarks'), 0);
      assert.deepEqual(await local.list('events/'), []);
      refuse = false;
      const r = await w.ingest('inference', 'demo', [event(1), event(2)], { where: 'line', watermarkMs: T0 });
      assert.equal(r.accepted, 2);
      assert.equal(await count(w), 2);
      assert.equal((await local.list('events/')).length, 2); // the events' partition and the watermarks'
    } finally {
      await w.close();
    }
  });

  test('watermarks per cohort only go forward; events below one are stored and counted late', async () => {
    const w = await EventWriter.open(join(dir, 'd.duckdb'));
    try {
      const us = (i: number, at: number) => event(i, { cohort: 'hw4/us', at });
      let r = await w.ingest('inference', 'demo', [event(1), us(2, T0)], {
        where: 'line',
        watermarkMs: T0 + 60_000,
      });
      assert.deepEqual(r.watermark, { 'hw3/eu': T0 + 60_000, 'hw4/us': T0 + 60_000 });
      r = await w.ingest('inference', 'demo', [us(3, T0 + 120_000)], {
        where: 'line',
        watermarkMs: T0 + 30_000,
      });
      assert.deepEqual(
        r.watermark,
        { 'hw4/us': T0 + 60_000 },
        'a lower declared watermark does not move it back',
      );
      r = await w.ingest(
        'inference',
        'demo',
        [event(4, { at: T0 + 1 }), us(5, T0 + 59_999), us(6, T0 + 60_000)],
        {
          where: 'line',
        },
      );
      assert.equal(r.late, 2);
      assert.equal(r.accepted, 3);
      r = await w.ingest('inference', 'demo', [event(4, { at: T0 + 1 })], { where: 'line' });
      assert.deepEqual([r.late, r.duplicates], [0, 1], 'a duplicate is not counted late');
    } finally {
      await w.close();
    }
  });

  test('labels are one per event and labeler; outcomes one per request; both keyed per fleet', async () => {
    const w = await EventWriter.open(join(dir, 'e.duckdb'));
    try {
      const label = (labeler: string, l = 1) => ({
        schema: 'fleetgate/v1',
        eventId: 'e-1',
        label: l,
        labeler,
        at: T0,
      });
      let r = await w.ingest('label', 'demo', [label('vendor-a'), label('vendor-b'), label('vendor-a')], {
        where: 'line',
      });
      assert.deepEqual(r, { accepted: 2, duplicates: 1, late: 0, watermark: null });
      assert.deepEqual(await w.read('SELECT fleet, labeler, label FROM ingested_labels ORDER BY labeler'), [
        { fleet: 'demo', labeler: 'vendor-a', label: 1 },
        { fleet: 'demo', labeler: 'vendor-b', label: 1 },
      ]);
      const outcome = (id: string, outcome: string) => ({
        schema: 'fleetgate/v1',
        requestId: id,
        outcome,
        at: T0,
      });
      r = await w.ingest('outcome', 'svc', [outcome('q1', 'ok'), outcome('q2', 'timeout')], { where: 'row' });
      assert.equal(r.accepted, 2);
      r = await w.ingest('outcome', 'svc2', [outcome('q1', 'error')], { where: 'row' });
      assert.equal(r.accepted, 1);
    } finally {
      await w.close();
    }
  });

  test('a batch of 10,000 events is written in one transaction', async () => {
    const w = await EventWriter.open(join(dir, 'f.duckdb'));
    try {
      const batch = Array.from({ length: 10_000 }, (_, i) => event(i));
      const t = performance.now();
      const r = await w.ingest('inference', 'demo', batch, { where: 'line', watermarkMs: T0 });
      const ms = performance.now() - t;
      assert.equal(r.accepted, 10_000);
      assert.equal(r.late, 0);
      assert.equal(await count(w), 10_000);
      const [row] = await w.read(`SELECT * FROM ingested_inference WHERE event_id = 'e-1'`);
      assert.equal(row!.arm, 'candidate');
      assert.equal(row!.upload_inclusion_probability, 0.25);
      assert.equal(row!.shadow_digest, null);
      assert.equal(row!.at, BigInt(T0 + 1000));
      console.log(`10,000 events validated and written in ${ms.toFixed(0)} ms`);
    } finally {
      await w.close();
    }
  });

  test('upload reports: stored once per unit, rollout and window; a re-sent batch changes nothing', async () => {
    let clock = 5000;
    const w = await EventWriter.open(join(dir, 'g.duckdb'), { now: () => clock++ });
    try {
      const next = report({ fromMs: T0 + 3_600_000, at: T0 + 7_200_000, overBudget: false });
      const other = report({ unit: pseudonym(KEY, 'VIN-2'), evaluated: 50, priority: 0, disagreements: 0 });
      const batch = [report(), next, other];
      assert.deepEqual(await w.ingest('upload', 'demo', batch, { where: 'line' }), {
        accepted: 3,
        duplicates: 0,
        late: 0,
        watermark: null,
      });
      const stored = await w.read('SELECT * FROM ingested_uploads ORDER BY unit, from_ms');
      assert.deepEqual(
        stored.find((r) => r.unit === pseudonym(KEY, 'VIN-1') && r.from_ms === BigInt(T0)),
        {
          fleet: 'demo',
          schema: 'fleetgate/v1',
          cohort: 'hw3/eu',
          unit: pseudonym(KEY, 'VIN-1'),
          rollout_id: 'r-1',
          from_ms: BigInt(T0),
          at: BigInt(T0 + 3_600_000),
          evaluated: 200,
          priority: 12,
          disagreements: 5,
          uploaded: 30,
          over_budget: true,
          ingested_at_ms: 5000n,
        },
      );
      // Re-sent: nothing changes. A second report of the same unit and window (other counters): a
      // duplicate, the first one stays.
      const again = await w.ingest('upload', 'demo', batch, { where: 'line' });
      assert.deepEqual([again.accepted, again.duplicates], [0, 3]);
      const dup = await w.ingest('upload', 'demo', [report({ uploaded: 1 })], { where: 'line' });
      assert.deepEqual([dup.accepted, dup.duplicates], [0, 1]);
      assert.deepEqual(await w.read('SELECT * FROM ingested_uploads ORDER BY unit, from_ms'), stored);
      // Another rollout or another fleet is another key.
      const r2 = await w.ingest('upload', 'demo', [report({ rolloutId: 'r-2' })], { where: 'line' });
      const f2 = await w.ingest('upload', 'other', [report({ fleet: 'other' })], { where: 'line' });
      assert.deepEqual([r2.accepted, f2.accepted], [1, 1]);
      // A rule across fields refuses the whole batch; a raw unit id is never repeated.
      await assert.rejects(
        w.ingest(
          'upload',
          'demo',
          [report({ fromMs: T0 + 9e6, at: T0 + 10e6 }), report({ unit: 'WVWZZZ1JZXW000099' })],
          { where: 'row' },
        ),
        (err) => {
          assert.ok(err instanceof BatchRefused);
          assert.deepEqual(
            err.problems.map((p) => [p.row, p.field]),
            [[2, 'unit']],
          );
          assert.ok(!JSON.stringify(err.problems).includes('WVWZZZ1JZXW000099'));
          return true;
        },
      );
      await assert.rejects(
        w.ingest('upload', 'demo', [report({ fromMs: T0 + 9e6, at: T0 + 10e6, disagreements: 13 })], {
          where: 'line',
        }),
        (err) => {
          assert.ok(err instanceof BatchRefused);
          assert.equal(err.problems[0]!.field, 'disagreements');
          assert.match(err.problems[0]!.message, /at most priority/);
          return true;
        },
      );
      assert.equal(await count(w, 'ingested_uploads'), 5);
    } finally {
      await w.close();
    }
  });

  test('shadow.safety is stored in shadow_safety; absent, it is NULL', async () => {
    const w = await EventWriter.open(join(dir, 'h.duckdb'));
    try {
      const shadow = (i: number, safety?: boolean) =>
        event(i, {
          phase: 'shadow',
          arm: 'production',
          shadow: {
            digest: 'e'.repeat(64),
            prediction: 2,
            confidence: 0.4,
            latencyMs: 5,
            ...(safety === undefined ? {} : { safety }),
          },
        });
      await w.ingest(
        'inference',
        'demo',
        [shadow(1, true), shadow(2, false), shadow(3), event(4, { phase: 'canary' })],
        {
          where: 'line',
        },
      );
      assert.deepEqual(
        await w.read(
          'SELECT event_id, shadow_safety, shadow_prediction FROM ingested_inference ORDER BY event_id',
        ),
        [
          { event_id: 'e-1', shadow_safety: true, shadow_prediction: 2 },
          { event_id: 'e-2', shadow_safety: false, shadow_prediction: 2 },
          { event_id: 'e-3', shadow_safety: null, shadow_prediction: 2 },
          { event_id: 'e-4', shadow_safety: null, shadow_prediction: null },
        ],
      );
    } finally {
      await w.close();
    }
  });

  test('attached to an instance that holds another table: ingests, and closing leaves the instance open', async () => {
    const instance = await DuckDBInstance.create(join(dir, 'fleet.duckdb'));
    const own = await instance.connect();
    try {
      await own.run('CREATE TABLE fleet_events (id INTEGER, kind VARCHAR)');
      await own.run(`INSERT INTO fleet_events VALUES (1, 'sim'), (2, 'sim')`);
      const w = await EventWriter.attach(instance);
      const r = await w.ingest('inference', 'demo', [event(1), event(2)], { where: 'line' });
      assert.equal(r.accepted, 2);
      await w.ingest('upload', 'demo', [report()], { where: 'line' });
      const read = async (sql: string) => (await own.runAndReadAll(sql)).getRowObjectsJS();
      assert.deepEqual(await read('SELECT event_id FROM ingested_inference ORDER BY event_id'), [
        { event_id: 'e-1' },
        { event_id: 'e-2' },
      ]);
      assert.deepEqual(await read('SELECT count(*)::INTEGER AS n FROM ingested_uploads'), [{ n: 1 }]);
      await w.close();
      await assert.rejects(
        w.ingest('inference', 'demo', [event(3)], { where: 'line' }),
        /the event writer is closed/,
      );
      // The instance and its other connections still work, the other table untouched.
      assert.deepEqual(await read('SELECT count(*)::INTEGER AS n FROM fleet_events'), [{ n: 2 }]);
      await own.run(`INSERT INTO fleet_events VALUES (3, 'sim')`);
      const again = await instance.connect();
      assert.deepEqual(
        (
          await again.runAndReadAll('SELECT count(*)::INTEGER AS n FROM ingested_inference')
        ).getRowObjectsJS(),
        [{ n: 2 }],
      );
      again.closeSync();
      // A second writer attaches to the same tables (created where missing, so kept).
      const w2 = await EventWriter.attach(instance);
      assert.deepEqual(
        (await w2.ingest('inference', 'demo', [event(2), event(3)], { where: 'line' })).accepted,
        1,
      );
      await w2.close();
      assert.deepEqual(await read('SELECT count(*)::INTEGER AS n FROM ingested_inference'), [{ n: 3 }]);
    } finally {
      own.closeSync();
      instance.closeSync();
    }
  });
});

test('a database another process writes is refused with that process and what to do, not DuckDB lock error', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-writer-lock-'));
  const file = join(dir, 'ingest.duckdb');
  const holder = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      '-e',
      `require('./events/writer').EventWriter.open(${JSON.stringify(file)}).then(() => { console.log('ready'); setInterval(() => {}, 1000); });`,
    ],
    { cwd: join(__dirname, '..', '..'), stdio: ['ignore', 'pipe', 'inherit'] },
  );
  try {
    await new Promise<void>((resolve, reject) => {
      holder.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
      holder.once('exit', (code) => reject(new Error(`the holder exited (${code})`)));
    });
    await assert.rejects(EventWriter.open(file), (err: Error) => {
      assert.match(err.message, new RegExp(`open in another process \\(PID ${holder.pid}\\)`));
      assert.match(err.message, /give this one its own database \(--db, or another FLEETGATE_DATA_DIR\)/);
      assert.doesNotMatch(err.message, /Could not set lock/);
      return true;
    });
  } finally {
    holder.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});

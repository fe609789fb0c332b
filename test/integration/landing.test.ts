/**
 * The landing-zone reader (events/landing.ts) on the project's two object stores: moto's S3 on loopback
 * (test/moto.ts) through the S3 store opened as FLEETGATE_STORE=s3://... opens it, and a LocalObjectStore
 * on a temporary directory; into a real DuckDB file through the one writer. NDJSON, gzip NDJSON and
 * Parquet (written by DuckDB) files of events, labels and outcomes are stored; a second pass reads
 * nothing again; a file re-put with more records stores only the new ones; malformed files are refused,
 * recorded and logged without their contents while stored rows stay as they were; keys outside the
 * layout are skipped with a note; a file over the cap and a gzip bomb are refused; upload reports are read
 * from the folder `uploads`.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { DuckDBInstance } from '@duckdb/node-api';
import type { ObjectStore } from '../../activities/deps';
import { LocalObjectStore } from '../../activities/store';
import { S3ObjectStore } from '../../activities/store-s3';
import { LandingReader, landingFileOf } from '../../events/landing';
import { EventWriter } from '../../events/writer';
import { pseudonym } from '../../fleet/pseudonym';
import { createS3Client, loadStoreConfig, openObjectStore, type S3StoreConfig } from '../../workers/config';
import { startMoto, type Moto } from '../moto';

const KEY = randomBytes(32);
const RAW_ID = 'WVWZZZ1JZXW000077';
const UNIT = pseudonym(KEY, RAW_ID);
const T0 = Date.UTC(2025, 0, 1);
const HOUR = '2025/01/01/00';
const BUCKET = 'fleetgate-landing';

function event(id: string, over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    schema: 'fleetgate/v1',
    eventId: id,
    fleet: 'demo',
    cohort: 'hw3/eu',
    unit: UNIT,
    phase: 'production',
    arm: 'production',
    modelDigest: 'd'.repeat(64),
    prediction: 1,
    confidence: 0.8,
    latencyMs: 2.5,
    safety: false,
    exposureHours: 0.05,
    upload: { tier: 'sample', inclusionProbability: 0.5 },
    at: T0,
    ...over,
  };
}
const label = (eventId: string, labeler = 'team-a') => ({
  schema: 'fleetgate/v1',
  eventId,
  label: 2,
  labeler,
  at: T0 + 5,
});
const report = (fromMs: number, over: Record<string, unknown> = {}) => ({
  schema: 'fleetgate/v1',
  fleet: 'demo',
  cohort: 'hw3/eu',
  unit: UNIT,
  rolloutId: 'r-3',
  fromMs,
  at: fromMs + 60_000,
  evaluated: 30,
  priority: 4,
  disagreements: 1,
  uploaded: 7,
  overBudget: false,
  ...over,
});
const ndjson = (records: unknown[]) => Buffer.from(records.map((r) => JSON.stringify(r)).join('\n') + '\n');

let scratch: string;
async function parquet(select: string): Promise<Buffer> {
  const file = join(scratch, `${randomBytes(6).toString('hex')}.parquet`);
  const db = await DuckDBInstance.create(':memory:');
  const conn = await db.connect();
  try {
    await conn.run(`COPY (${select}) TO '${file}' (FORMAT parquet)`);
  } finally {
    conn.closeSync();
    db.closeSync();
  }
  return readFileSync(file);
}
const parquetEvents = (prefix: string, n: number) =>
  parquet(`SELECT 'fleetgate/v1' AS schema, '${prefix}' || i AS event_id, 'demo' AS fleet, 'hw4/us' AS cohort,
    '${UNIT}' AS unit, NULL::VARCHAR AS rollout_id, 'production' AS phase, 'production' AS arm,
    repeat('d', 64) AS model_digest, (i % 3)::INTEGER AS prediction, 0.75::DOUBLE AS confidence,
    3.0::DOUBLE AS latency_ms, false AS safety, 0.05::DOUBLE AS exposure_hours, 'sample' AS upload_tier,
    0.5::DOUBLE AS upload_inclusion_probability, (${T0} + i)::BIGINT AS at FROM range(${n}) t(i)`);
const parquetOutcomes = (prefix: string, n: number) =>
  parquet(`SELECT 'fleetgate/v1' AS schema, '${prefix}' || i AS request_id,
    CASE WHEN i % 4 = 0 THEN 'error' ELSE 'ok' END AS outcome, (${T0} + i)::BIGINT AS at FROM range(${n}) t(i)`);

let moto: Moto;
before(async () => {
  scratch = mkdtempSync(join(tmpdir(), 'fg-landing-'));
  moto = await startMoto();
});
after(async () => {
  await moto?.stop();
  rmSync(scratch, { recursive: true, force: true });
});

/** Writes a key whatever is there (a stream replacing an object). */
async function put(store: ObjectStore, key: string, body: Buffer): Promise<void> {
  await store.compareAndSwap(key, await store.etag(key), body);
}

const STORES: { name: string; open: () => Promise<{ store: ObjectStore; close: () => void }> }[] = [
  {
    name: "moto's S3",
    open: async () => {
      const env = {
        FLEETGATE_STORE: `s3://${BUCKET}/zone`,
        FLEETGATE_S3_ENDPOINT: moto.endpoint,
        AWS_REGION: 'eu-west-1',
        AWS_ACCESS_KEY_ID: 'test',
        AWS_SECRET_ACCESS_KEY: 'test',
      };
      const config = loadStoreConfig(env) as S3StoreConfig;
      const admin = createS3Client(config);
      await admin.send(
        new CreateBucketCommand({
          Bucket: BUCKET,
          CreateBucketConfiguration: { LocationConstraint: 'eu-west-1' },
        }),
      );
      admin.destroy();
      const store = openObjectStore(config, scratch);
      assert.ok(store instanceof S3ObjectStore);
      return { store, close: () => store.close() };
    },
  },
  {
    name: 'a LocalObjectStore',
    open: async () => ({
      store: new LocalObjectStore(mkdtempSync(join(scratch, 'store-'))),
      close: () => undefined,
    }),
  },
];

for (const { name, open } of STORES) {
  describe(`landing zone on ${name}`, () => {
    let store: ObjectStore;
    let closeStore: () => void;
    let dir: string;
    let writer: EventWriter;
    let reader: LandingReader;
    const logged: Record<string, unknown>[] = [];

    before(async () => {
      ({ store, close: closeStore } = await open());
      dir = mkdtempSync(join(scratch, 'db-'));
      writer = await EventWriter.open(join(dir, 'ingest.duckdb'));
      reader = await LandingReader.open({ store, writer, prefix: 'landing', log: (l) => logged.push(l) });
    });
    after(async () => {
      reader.close();
      await writer.close();
      closeStore();
    });

    const rows = async () => ({
      inference: await writer.read('SELECT * FROM ingested_inference ORDER BY event_id'),
      labels: await writer.read('SELECT * FROM ingested_labels ORDER BY event_id, labeler'),
      outcomes: await writer.read('SELECT * FROM ingested_outcomes ORDER BY request_id'),
    });

    test('NDJSON, gzip NDJSON and Parquet files of every kind are stored; a second pass reads nothing again', async () => {
      await put(store, `landing/demo/events/${HOUR}/a.ndjson`, ndjson([event('n-1'), event('n-2')]));
      await put(
        store,
        `landing/demo/events/${HOUR}/b.ndjson.gz`,
        gzipSync(ndjson([event('g-1'), event('g-2'), event('g-3')])),
      );
      await put(store, `landing/demo/events/2025/01/01/01/c.parquet`, await parquetEvents('p-', 4));
      await put(
        store,
        `landing/demo/labels/${HOUR}/l.ndjson.gz`,
        gzipSync(ndjson([label('n-1'), label('n-2'), label('n-1', 'team-b')])),
      );
      await put(store, `landing/demo/outcomes/${HOUR}/o.parquet`, await parquetOutcomes('r-', 8));
      await put(
        store,
        `landing/other/outcomes/${HOUR}/o.ndjson`,
        ndjson([{ schema: 'fleetgate/v1', requestId: 'x-1', outcome: 'timeout', at: T0 }]),
      );

      const first = await reader.pass();
      assert.deepEqual(
        { ...first, notes: undefined },
        {
          filesRead: 6,
          filesSkipped: 0,
          filesRefused: 0,
          filesOutside: 0,
          accepted: 2 + 3 + 4 + 3 + 8 + 1,
          duplicates: 0,
          late: 0,
          stopped: false,
          notes: undefined,
        },
      );
      const stored = await rows();
      assert.deepEqual(
        stored.inference.map((r) => r.event_id),
        ['g-1', 'g-2', 'g-3', 'n-1', 'n-2', 'p-0', 'p-1', 'p-2', 'p-3'],
      );
      assert.ok(stored.inference.every((r) => r.unit === UNIT && r.fleet === 'demo'));
      assert.deepEqual(
        stored.labels.map((r) => [r.event_id, r.labeler, r.label]),
        [
          ['n-1', 'team-a', 2],
          ['n-1', 'team-b', 2],
          ['n-2', 'team-a', 2],
        ],
      );
      assert.equal(stored.outcomes.length, 9);
      assert.deepEqual(
        stored.outcomes.find((r) => r.request_id === 'x-1'),
        { ...stored.outcomes.find((r) => r.request_id === 'x-1'), fleet: 'other', outcome: 'timeout' },
      );
      const files = await reader.files();
      assert.equal(files.length, 6);
      assert.ok(files.every((f) => f.result === 'accepted' && /^[0-9a-f]{64}$/.test(String(f.etag))));
      assert.equal(
        files.find((f) => f.key === `landing/demo/events/${HOUR}/a.ndjson`)!.etag,
        await store.etag(`landing/demo/events/${HOUR}/a.ndjson`),
      );

      // On S3 the listing says which files are unchanged: no request per file (a HEAD each used to be).
      let perFile = 0;
      const counting = 'count-per-file-requests';
      if (store instanceof S3ObjectStore) {
        store.client.middlewareStack.add(
          (next, context) => async (args) => {
            if (context.commandName === 'HeadObjectCommand' || context.commandName === 'GetObjectCommand')
              perFile++;
            return next(args);
          },
          { step: 'initialize', name: counting },
        );
      }
      const second = await reader.pass();
      if (store instanceof S3ObjectStore) {
        store.client.middlewareStack.remove(counting);
        assert.equal(perFile, 0, 'a pass over files already read reads the listing only');
      }
      assert.deepEqual(
        { ...second, notes: undefined },
        {
          filesRead: 0,
          filesSkipped: 6,
          filesRefused: 0,
          filesOutside: 0,
          accepted: 0,
          duplicates: 0,
          late: 0,
          stopped: false,
          notes: undefined,
        },
      );
      assert.deepEqual(await rows(), stored, 'a second pass changes no row, not even ingested_at_ms');

      // --fleet: only that fleet's files are listed.
      const only = await LandingReader.open({
        store,
        writer,
        prefix: 'landing',
        fleet: 'other',
        log: () => undefined,
      });
      try {
        assert.equal((await only.pass()).filesSkipped, 1);
      } finally {
        only.close();
      }
    });

    test('a file put again with the same records and new ones stores only the new ones', async () => {
      const key = `landing/demo/events/${HOUR}/a.ndjson`;
      const before = await rows();
      await put(store, key, ndjson([event('n-1'), event('n-2'), event('n-3'), event('n-4')]));
      const r = await reader.pass();
      assert.equal(r.filesRead, 1);
      assert.equal(r.filesSkipped, 5);
      assert.equal(r.accepted, 2);
      assert.equal(r.duplicates, 2);
      const after = await rows();
      assert.deepEqual(
        after.inference.map((x) => x.event_id).filter((id) => String(id).startsWith('n-')),
        ['n-1', 'n-2', 'n-3', 'n-4'],
      );
      assert.deepEqual(
        after.inference.filter((x) => x.event_id !== 'n-3' && x.event_id !== 'n-4'),
        before.inference,
        'rows stored before are unchanged',
      );
      const file = (await reader.files()).find((f) => f.key === key)!;
      assert.equal(file.etag, await store.etag(key));
      assert.equal(file.accepted, 2);
      assert.equal((await reader.pass()).filesRead, 0);
    });

    test('malformed files are refused, recorded and logged without their contents; nothing stored changes', async () => {
      const before = await rows();
      logged.length = 0;
      const bad = {
        [`landing/demo/events/${HOUR}/bad-json.ndjson`]: Buffer.from(
          JSON.stringify(event('m-1')) + '\n{"schema":"fleetgate/v1","eventId":"m-2", SECRET-LINE\n',
        ),
        [`landing/demo/events/${HOUR}/raw-unit.ndjson.gz`]: gzipSync(
          ndjson([event('m-3'), event('m-4', { unit: RAW_ID })]),
        ),
        [`landing/demo/labels/${HOUR}/missing.ndjson`]: ndjson([
          { schema: 'fleetgate/v1', eventId: 'm-5', labeler: 'team-a', at: T0 },
        ]),
        [`landing/demo/events/${HOUR}/not.parquet`]: Buffer.from('PAR1 this is no parquet'),
      };
      for (const [k, body] of Object.entries(bad)) await put(store, k, body);
      const r = await reader.pass();
      assert.equal(r.filesRefused, 4);
      assert.equal(r.filesRead, 0);
      assert.equal(r.accepted, 0);
      assert.deepEqual(await rows(), before);

      const files = new Map((await reader.files()).map((f) => [f.key as string, f]));
      const problems = (k: string) =>
        JSON.parse(String(files.get(k)!.problems)) as { field: string; message: string; line?: number }[];
      for (const k of Object.keys(bad)) assert.equal(files.get(k)!.result, 'refused', k);
      assert.deepEqual(problems(`landing/demo/events/${HOUR}/bad-json.ndjson`)[0], {
        line: 2,
        field: '(line)',
        message: 'not JSON: send one JSON object per line (NDJSON)',
      });
      const unit = problems(`landing/demo/events/${HOUR}/raw-unit.ndjson.gz`)[0]!;
      assert.equal(unit.field, 'unit');
      assert.equal(unit.line, 2);
      assert.match(unit.message, /never its raw id/);
      assert.equal(problems(`landing/demo/labels/${HOUR}/missing.ndjson`)[0]!.field, 'label');
      assert.match(
        problems(`landing/demo/events/${HOUR}/not.parquet`)[0]!.message,
        /not a readable Parquet file/,
      );
      assert.equal(files.get(`landing/demo/events/${HOUR}/raw-unit.ndjson.gz`)!.problem_count, 1);

      const refusals = logged.filter((l) => l.event === 'landing.refused');
      assert.deepEqual(refusals.map((l) => l.key).sort(), Object.keys(bad).sort());
      const text =
        JSON.stringify(logged) +
        JSON.stringify([...files.values()], (_k, v) => (typeof v === 'bigint' ? String(v) : v));
      for (const secret of [RAW_ID, 'SECRET-LINE', 'm-1', 'm-2', 'm-4', 'm-5', 'team-a']) {
        assert.ok(!text.includes(secret), `${secret} is neither logged nor recorded`);
      }
      for (const n of r.notes)
        assert.match(n.note, /^refused, nothing of it stored: \d+ problem\(s\), first /);

      // Recorded as refused: not read again until it changes; fixed, it is read.
      const again = await reader.pass();
      assert.equal(again.filesRefused, 0);
      assert.equal(again.filesRead, 0);
      await put(
        store,
        `landing/demo/events/${HOUR}/raw-unit.ndjson.gz`,
        gzipSync(ndjson([event('m-3'), event('m-4')])),
      );
      const fixed = await reader.pass();
      assert.equal(fixed.filesRead, 1);
      assert.equal(fixed.accepted, 2);
      assert.equal(
        (await reader.files()).find((f) => f.key === `landing/demo/events/${HOUR}/raw-unit.ndjson.gz`)!
          .result,
        'accepted',
      );
    });

    test('keys outside the layout are skipped with a note and store nothing', async () => {
      const before = await rows();
      const outside = [
        `landing/demo/metrics/${HOUR}/x.ndjson`,
        `landing/demo/events/2025/01/01/y.ndjson`,
        `landing/demo/events/${HOUR}/extra/z.ndjson`,
        `landing/demo/events/${HOUR}/w.json`,
        `landing/demo/events/2025/13/01/00/v.ndjson`,
      ];
      for (const k of outside) await put(store, k, ndjson([event(`o-${k.length}`)]));
      const r = await reader.pass();
      assert.equal(r.filesOutside, outside.length);
      assert.equal(r.filesRead, 0);
      assert.deepEqual(r.notes.map((n) => n.key).sort(), [...outside].sort());
      assert.match(
        r.notes.find((n) => n.key === outside[0])!.note,
        /kind level is not events, labels, outcomes or uploads/,
      );
      assert.match(r.notes.find((n) => n.key === outside[1])!.note, /6 levels under the prefix, not 7/);
      assert.match(r.notes.find((n) => n.key === outside[3])!.note, /\.ndjson, \.ndjson\.gz or \.parquet/);
      assert.match(r.notes.find((n) => n.key === outside[4])!.note, /hour levels/);
      assert.deepEqual(await rows(), before);
    });

    test('upload reports are read from the folder uploads (NDJSON and Parquet), each window once', async () => {
      const uploads = () => writer.read('SELECT * FROM ingested_uploads ORDER BY from_ms');
      await put(
        store,
        `landing/demo/uploads/${HOUR}/u.ndjson.gz`,
        gzipSync(ndjson([report(T0), report(T0 + 60_000, { overBudget: true })])),
      );
      await put(
        store,
        `landing/demo/uploads/${HOUR}/u.parquet`,
        await parquet(`SELECT 'fleetgate/v1' AS schema, 'demo' AS fleet, 'hw3/eu' AS cohort, '${UNIT}' AS unit,
          'r-3' AS rollout_id, (${T0} + i * 60000)::BIGINT AS from_ms, (${T0} + (i + 1) * 60000)::BIGINT AS "at",
          30::INTEGER AS evaluated, 4::INTEGER AS priority, 1::INTEGER AS disagreements, 7::INTEGER AS uploaded,
          i = 1 AS over_budget FROM range(1, 4) t(i)`),
      );
      await put(
        store,
        `landing/demo/uploads/${HOUR}/bad.ndjson`,
        ndjson([report(T0 + 9e6, { priority: 31 })]),
      );
      const r = await reader.pass();
      assert.deepEqual([r.filesRead, r.filesRefused, r.accepted, r.duplicates], [2, 1, 4, 1]);
      const stored = await uploads();
      assert.deepEqual(
        stored.map((x) => [Number(x.from_ms) - T0, x.over_budget, x.fleet, x.unit]),
        [
          [0, false, 'demo', UNIT],
          [60_000, true, 'demo', UNIT],
          [120_000, false, 'demo', UNIT],
          [180_000, false, 'demo', UNIT],
        ],
      );
      const bad = (await reader.files()).find((f) => f.key === `landing/demo/uploads/${HOUR}/bad.ndjson`)!;
      assert.equal(bad.result, 'refused');
      assert.match(String(bad.problems), /"field":"priority","message":"at most evaluated/);
      assert.equal((await reader.pass()).filesRead, 0);
      assert.deepEqual(await uploads(), stored);
    });
  });
}

describe('landing zone caps', () => {
  test('a file over the cap and a gzip bomb are refused without being stored', async () => {
    const store = new LocalObjectStore(mkdtempSync(join(scratch, 'caps-')));
    const writer = await EventWriter.open(':memory:');
    const reader = await LandingReader.open({
      store,
      writer,
      prefix: '',
      maxFileBytes: 64 * 1024,
      log: () => undefined,
    });
    try {
      const many = Array.from({ length: 400 }, (_, i) => event(`big-${i}`));
      assert.ok(ndjson(many).length > 64 * 1024);
      await put(store, `demo/events/${HOUR}/big.ndjson`, ndjson(many));
      await put(store, `demo/events/${HOUR}/bomb.ndjson.gz`, gzipSync(Buffer.alloc(8 * 1024 * 1024, 0x20)));
      await put(store, `demo/events/${HOUR}/fine.ndjson.gz`, gzipSync(ndjson(many.slice(0, 10))));
      const r = await reader.pass();
      assert.equal(r.filesRefused, 2);
      assert.equal(r.filesRead, 1);
      assert.equal(r.accepted, 10);
      const files = new Map((await reader.files()).map((f) => [f.key as string, f]));
      assert.match(String(files.get(`demo/events/${HOUR}/big.ndjson`)!.problems), /over 65536 bytes: split/);
      assert.match(
        String(files.get(`demo/events/${HOUR}/bomb.ndjson.gz`)!.problems),
        /over 65536 bytes once decompressed/,
      );
      assert.equal(
        files.get(`demo/events/${HOUR}/big.ndjson`)!.etag,
        await store.etag(`demo/events/${HOUR}/big.ndjson`),
      );
      assert.equal((await writer.read('SELECT count(*)::INTEGER AS n FROM ingested_inference'))[0]!.n, 10);
    } finally {
      reader.close();
      await writer.close();
    }
  });

  test('the layout of keys', () => {
    assert.deepEqual(landingFileOf('p', `p/demo/labels/${HOUR}/f.ndjson.gz`), {
      key: `p/demo/labels/${HOUR}/f.ndjson.gz`,
      fleet: 'demo',
      kind: 'label',
      format: 'ndjson',
      gzip: true,
    });
    assert.deepEqual(landingFileOf('p', `p/demo/uploads/${HOUR}/f.parquet`), {
      key: `p/demo/uploads/${HOUR}/f.parquet`,
      fleet: 'demo',
      kind: 'upload',
      format: 'parquet',
      gzip: false,
    });
    assert.ok('outside' in landingFileOf('p', `p/Demo/labels/${HOUR}/f.ndjson`));
    assert.ok('outside' in landingFileOf('p', `p/demo/constructor/${HOUR}/f.ndjson`));
    assert.ok('outside' in landingFileOf('p', `p/demo/events/2025/01/01/24/f.ndjson`));
  });
});

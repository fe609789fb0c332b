/**
 * The ingestion endpoint over real HTTP on 127.0.0.1 into a real DuckDB file: NDJSON, gzip NDJSON and
 * Parquet (written by DuckDB) batches are stored; every malformed batch gets its 4xx naming what is
 * wrong, and nothing already stored changes; a batch held open makes the next one a 429 with
 * Retry-After; health, metrics and the headers of every answer. Upload reports go to /v1/uploads as
 * NDJSON and Parquet, once per unit and window.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { DuckDBInstance } from '@duckdb/node-api';
import { EventWriter } from '../../events/writer';
import { startIngestServer, tokenVariable, type IngestServer } from '../../events/ingest-server';
import { pseudonym } from '../../fleet/pseudonym';

const KEY = randomBytes(32);
const T0 = Date.UTC(2025, 0, 1);
const RAW_ID = 'WVWZZZ1JZXW000077';
const TOKENS = { demo: 'demo-token-0123456789', other: 'other-token-9876543210' };
const MAX_BODY = 1024 * 1024;

function event(id: string, over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    schema: 'fleetgate/v1',
    eventId: id,
    fleet: 'demo',
    cohort: 'hw3/eu',
    unit: pseudonym(KEY, RAW_ID),
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
function report(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    schema: 'fleetgate/v1',
    fleet: 'demo',
    cohort: 'hw3/eu',
    unit: pseudonym(KEY, RAW_ID),
    rolloutId: 'r-7',
    fromMs: T0,
    at: T0 + 600_000,
    evaluated: 40,
    priority: 6,
    disagreements: 2,
    uploaded: 9,
    overBudget: false,
    ...over,
  };
}
const ndjson = (records: unknown[]) => records.map((r) => JSON.stringify(r)).join('\n') + '\n';

describe('ingestion endpoint', () => {
  let dir: string;
  let writer: EventWriter;
  let server: IngestServer;
  let hold: Promise<void> | undefined;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fg-ingest-'));
    writer = await EventWriter.open(join(dir, 'ingest.duckdb'), {
      beforeCommit: () => hold ?? Promise.resolve(),
    });
    server = await startIngestServer({
      writer,
      env: { [tokenVariable('demo')]: TOKENS.demo, [tokenVariable('other')]: TOKENS.other, PATH: '/bin' },
      maxBodyBytes: MAX_BODY,
      maxPending: 1,
      now: () => T0 + 86_400_000,
    });
  });
  after(async () => {
    await server.close();
    await writer.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const post = (path: string, body: Buffer | string, headers: Record<string, string> = {}) =>
    fetch(`${server.url}${path}`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${TOKENS.demo}`, 'Content-Type': 'application/x-ndjson', ...headers },
      body,
    });
  const stored = () =>
    writer.read('SELECT * EXCLUDE (ingested_at_ms) FROM ingested_inference ORDER BY fleet, event_id');

  async function parquet(select: string): Promise<Buffer> {
    const file = join(dir, `${randomBytes(6).toString('hex')}.parquet`);
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
  const parquetEvents = (prefix: string, n: number, unit = pseudonym(KEY, RAW_ID)) =>
    parquet(`SELECT 'fleetgate/v1' AS schema, '${prefix}' || i AS event_id, 'demo' AS fleet, 'hw4/us' AS cohort,
      CASE WHEN i = 2 THEN '${unit}' ELSE '${pseudonym(KEY, RAW_ID)}' END AS unit, NULL::VARCHAR AS rollout_id,
      'production' AS phase, 'production' AS arm, repeat('d', 64) AS model_digest, (i % 3)::INTEGER AS prediction,
      0.75::DOUBLE AS confidence, 3.0::DOUBLE AS latency_ms, i = 1 AS safety, 0.05::DOUBLE AS exposure_hours,
      'sample' AS upload_tier, 0.5::DOUBLE AS upload_inclusion_probability, (${T0} + i)::BIGINT AS at
      FROM range(${n}) t(i)`);

  test('NDJSON, gzip NDJSON and Parquet batches are stored; a re-sent batch is all duplicates', async () => {
    const batch = ndjson([event('n-1'), event('n-2', { cohort: 'hw4/us' })]);
    let res = await post('/v1/events/demo', batch, { 'Fleetgate-Watermark': String(T0 + 1000) });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {
      accepted: 2,
      duplicates: 0,
      late: 0,
      watermark: { 'hw3/eu': T0 + 1000, 'hw4/us': T0 + 1000 },
    });
    res = await post('/v1/events/demo', batch);
    assert.deepEqual(await res.json(), {
      accepted: 0,
      duplicates: 2,
      late: 0,
      watermark: { 'hw3/eu': T0 + 1000, 'hw4/us': T0 + 1000 },
    });

    res = await post('/v1/events/demo', gzipSync(ndjson([event('g-1'), event('g-2')])), {
      'Content-Encoding': 'gzip',
    });
    assert.equal(res.status, 200);
    assert.equal(((await res.json()) as { accepted: number }).accepted, 2);

    res = await post('/v1/events/demo', await parquetEvents('p-', 5), {
      'Content-Type': 'application/vnd.apache.parquet',
    });
    assert.equal(res.status, 200);
    const body = (await res.json()) as { accepted: number; late: number };
    assert.deepEqual(
      [body.accepted, body.late],
      [5, 5],
      'Parquet events below the hw4/us watermark are late',
    );

    const rows = await stored();
    assert.equal(rows.length, 9);
    const p1 = rows.find((r) => r.event_id === 'p-1')!;
    assert.deepEqual([p1.safety, p1.prediction, p1.at, p1.rollout_id], [true, 1, BigInt(T0 + 1), null]);

    res = await post(
      '/v1/labels/demo',
      ndjson([{ schema: 'fleetgate/v1', eventId: 'n-1', label: 1, labeler: 'vendor-a', at: T0 }]),
    );
    assert.deepEqual(await res.json(), { accepted: 1, duplicates: 0, late: 0, watermark: null });
    res = await post(
      '/v1/outcomes/demo',
      ndjson([{ schema: 'fleetgate/v1', requestId: 'q-1', outcome: 'timeout', at: T0 }]),
    );
    assert.equal(res.status, 200);
  });

  test('every malformed batch gets its 4xx naming what is wrong, and nothing stored changes', async () => {
    const before = await stored();
    const bomb = gzipSync(Buffer.alloc(64 * MAX_BODY, ' '));
    assert.ok(bomb.length < MAX_BODY);
    const cases: Array<{
      what: string;
      send: () => Promise<Response>;
      status: number;
      code: string;
      message?: RegExp;
      problem?: { line?: number; row?: number; field: string; message: RegExp };
    }> = [
      {
        what: 'bad JSON',
        send: () => post('/v1/events/demo', `${JSON.stringify(event('x-1'))}\n{"eventId": "${RAW_ID}",\n`),
        status: 400,
        code: 'invalid-batch',
        problem: { line: 2, field: '(line)', message: /not JSON: send one JSON object per line/ },
      },
      {
        what: 'a missing field',
        send: () =>
          post('/v1/events/demo', ndjson([event('x-1'), { ...event('x-2'), prediction: undefined }])),
        status: 400,
        code: 'invalid-batch',
        problem: { line: 2, field: 'prediction', message: /^missing: send a class index/ },
      },
      {
        what: 'a wrong type',
        send: () => post('/v1/events/demo', ndjson([event('x-1', { safety: 'no' })])),
        status: 400,
        code: 'invalid-batch',
        problem: { line: 1, field: 'safety', message: /true or false/ },
      },
      {
        what: 'a raw id in unit',
        send: () => post('/v1/events/demo', ndjson([event('x-1'), event('x-2', { unit: RAW_ID })])),
        status: 400,
        code: 'invalid-batch',
        problem: { line: 2, field: 'unit', message: /never its raw id.*HMAC-SHA256\(fleet key, raw id\)/ },
      },
      {
        what: 'a raw id in a Parquet row',
        send: async () =>
          post('/v1/events/demo', await parquetEvents('y-', 4, RAW_ID), {
            'Content-Type': 'application/vnd.apache.parquet',
          }),
        status: 400,
        code: 'invalid-batch',
        problem: { row: 3, field: 'unit', message: /keyed pseudonym/ },
      },
      {
        what: 'a duplicate id with other values',
        send: () => post('/v1/events/demo', ndjson([event('x-1'), event('x-1', { prediction: 0 })])),
        status: 400,
        code: 'invalid-batch',
        problem: { line: 2, field: 'eventId', message: /repeats the eventId of line 1 with other values/ },
      },
      {
        what: 'another fleet in the record',
        send: () => post('/v1/events/demo', ndjson([event('x-1', { fleet: 'other' })])),
        status: 400,
        code: 'invalid-batch',
        problem: { line: 1, field: 'fleet', message: /differs from the fleet of the URL/ },
      },
      {
        what: 'a batch far over the cap',
        send: () =>
          post('/v1/events/demo', ndjson(Array.from({ length: 6000 }, (_, i) => event(`big-${i}`)))),
        status: 413,
        code: 'body-too-large',
        message: /over 1048576 bytes; send fewer records/,
      },
      {
        what: 'a gzip bomb',
        send: () => post('/v1/events/demo', bomb, { 'Content-Encoding': 'gzip' }),
        status: 413,
        code: 'body-too-large',
        message: /once decompressed/,
      },
      {
        what: 'no token',
        send: () => post('/v1/events/demo', ndjson([event('x-1')]), { Authorization: '' }),
        status: 401,
        code: 'unauthorized',
        message: /Authorization: Bearer <token>.*FLEETGATE_INGEST_TOKEN_DEMO/,
      },
      {
        what: 'a wrong token',
        send: () => post('/v1/events/demo', ndjson([event('x-1')]), { Authorization: 'Bearer guess' }),
        status: 401,
        code: 'unauthorized',
        message: /not fleet "demo"'s/,
      },
      {
        what: "another fleet's token",
        send: () =>
          post('/v1/events/demo', ndjson([event('x-1')]), { Authorization: `Bearer ${TOKENS.other}` }),
        status: 403,
        code: 'forbidden',
        message: /another fleet's/,
      },
      {
        what: 'another media type',
        send: () =>
          post('/v1/events/demo', JSON.stringify([event('x-1')]), { 'Content-Type': 'application/json' }),
        status: 415,
        code: 'unsupported-media-type',
        message: /application\/x-ndjson/,
      },
      {
        what: 'bytes that are no Parquet',
        send: () =>
          post('/v1/events/demo', randomBytes(2000), { 'Content-Type': 'application/vnd.apache.parquet' }),
        status: 400,
        code: 'bad-parquet',
        message: /not a readable Parquet file/,
      },
      {
        what: 'a Parquet column outside the contract',
        send: async () =>
          post('/v1/events/demo', await parquet(`SELECT 'fleetgate/v1' AS schema, 'v' AS vin`), {
            'Content-Type': 'application/vnd.apache.parquet',
          }),
        status: 400,
        code: 'invalid-batch',
        message: /unknown column\(s\) "vin": remove them/,
      },
      {
        what: 'a watermark in the future',
        send: () =>
          post('/v1/events/demo', ndjson([event('x-1')]), {
            'Fleetgate-Watermark': String(T0 + 3 * 86_400_000),
          }),
        status: 400,
        code: 'bad-watermark',
        message: /ahead of the server's clock/,
      },
      {
        what: 'an empty batch',
        send: () => post('/v1/events/demo', '\n'),
        status: 400,
        code: 'invalid-batch',
        message: /no record/,
      },
    ];
    for (const c of cases) {
      const res = await c.send();
      const text = await res.text();
      assert.equal(res.status, c.status, `${c.what}: ${text}`);
      assert.equal(res.headers.get('x-content-type-options'), 'nosniff', c.what);
      const { error } = JSON.parse(text) as {
        error: {
          code: string;
          message: string;
          problems?: Array<Record<string, unknown>>;
          problemCount?: number;
        };
      };
      assert.equal(error.code, c.code, c.what);
      if (c.message) assert.match(error.message, c.message, c.what);
      if (c.problem) {
        const p = error.problems?.find((x) => x.field === c.problem!.field);
        assert.ok(p, `${c.what}: ${text}`);
        assert.equal(p.line, c.problem.line, c.what);
        assert.equal(p.row, c.problem.row, c.what);
        assert.match(String(p.message), c.problem.message, c.what);
        assert.equal(error.problemCount, error.problems!.length, c.what);
      }
      assert.ok(!text.includes(RAW_ID), `${c.what} repeats the raw id`);
      assert.ok(!text.includes(TOKENS.demo) && !text.includes(TOKENS.other), `${c.what} repeats a token`);
      assert.ok(!text.includes(tmpdir()), `${c.what} names a file`);
      if (c.status === 401) assert.match(res.headers.get('www-authenticate') ?? '', /^Bearer/);
    }
    assert.deepEqual(await stored(), before);
  });

  test('over 20 bad records: the first 20 are listed with the count', async () => {
    const res = await post(
      '/v1/events/demo',
      ndjson(Array.from({ length: 25 }, (_, i) => event(`z-${i}`, { confidence: 2 }))),
    );
    assert.equal(res.status, 400);
    const { error } = (await res.json()) as {
      error: { problems: Array<{ line: number; value: unknown }>; problemCount: number };
    };
    assert.equal(error.problems.length, 20);
    assert.equal(error.problemCount, 25);
    assert.deepEqual([error.problems[0]!.line, error.problems[0]!.value], [1, 2]);
  });

  test('while a batch is being written, the next one is a 429 with Retry-After; then both go in', async () => {
    let release!: () => void;
    hold = new Promise<void>((res) => (release = res));
    const first = post('/v1/events/demo', ndjson([event('h-1')]));
    for (let i = 0; i < 100; i++) {
      const m = await (await fetch(`${server.url}/metrics`)).text();
      if (/fleetgate_ingest_batches_in_flight 1/.test(m)) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    const second = await post('/v1/events/demo', ndjson([event('h-2')]));
    assert.equal(second.status, 429);
    assert.equal(second.headers.get('retry-after'), '1');
    assert.equal(((await second.json()) as { error: { code: string } }).error.code, 'busy');
    hold = undefined;
    release();
    assert.equal((await first).status, 200);
    const again = await post('/v1/events/demo', ndjson([event('h-2')]));
    assert.equal(again.status, 200);
    assert.equal(
      (await writer.read(`SELECT count(*) AS n FROM ingested_inference WHERE event_id LIKE 'h-%'`))[0]!.n,
      2n,
    );
  });

  test('upload reports: NDJSON and Parquet are stored once per unit and window; bad ones refused', async () => {
    const uploads = () =>
      writer.read('SELECT * EXCLUDE (ingested_at_ms) FROM ingested_uploads ORDER BY from_ms');
    const batch = ndjson([report(), report({ fromMs: T0 + 600_000, at: T0 + 1_200_000, overBudget: true })]);
    let res = await post('/v1/uploads/demo', batch);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { accepted: 2, duplicates: 0, late: 0, watermark: null });
    res = await post('/v1/uploads/demo', gzipSync(batch), { 'Content-Encoding': 'gzip' });
    assert.deepEqual(await res.json(), { accepted: 0, duplicates: 2, late: 0, watermark: null });
    res = await post(
      '/v1/uploads/demo',
      await parquet(`SELECT 'fleetgate/v1' AS schema, 'demo' AS fleet, 'hw4/us' AS cohort,
        '${pseudonym(KEY, RAW_ID)}' AS unit, 'r-7' AS rollout_id, (${T0} + i * 600000)::BIGINT AS from_ms,
        (${T0} + (i + 1) * 600000)::BIGINT AS "at", 50::INTEGER AS evaluated, 5::INTEGER AS priority,
        (i % 3)::INTEGER AS disagreements, 10::INTEGER AS uploaded, i = 3 AS over_budget FROM range(1, 5) t(i)`),
      { 'Content-Type': 'application/vnd.apache.parquet' },
    );
    const body = await res.text();
    assert.equal(res.status, 200, body);
    assert.deepEqual(JSON.parse(body), { accepted: 3, duplicates: 1, late: 0, watermark: null });
    const rows = await uploads();
    assert.equal(rows.length, 5);
    assert.deepEqual(rows[1], {
      schema: 'fleetgate/v1',
      fleet: 'demo',
      cohort: 'hw3/eu',
      unit: pseudonym(KEY, RAW_ID),
      rollout_id: 'r-7',
      from_ms: BigInt(T0 + 600_000),
      at: BigInt(T0 + 1_200_000),
      evaluated: 40,
      priority: 6,
      disagreements: 2,
      uploaded: 9,
      over_budget: true,
    });
    assert.deepEqual(
      rows.map((r) => r.over_budget),
      [false, true, false, true, false],
    );

    // Refused whole, naming the field and the fix, never the raw unit id; nothing stored changes.
    const cases: Array<[string, Promise<Response>, number, string, RegExp]> = [
      [
        'uploaded > evaluated',
        post('/v1/uploads/demo', ndjson([report({ fromMs: T0 + 9e6, at: T0 + 10e6, uploaded: 41 })])),
        1,
        'uploaded',
        /at most evaluated/,
      ],
      [
        'a raw unit id',
        post('/v1/uploads/demo', ndjson([report({ unit: RAW_ID })])),
        1,
        'unit',
        /never its raw id/,
      ],
      [
        'the window backwards',
        post('/v1/uploads/demo', ndjson([report({ fromMs: T0 + 1, at: T0 })])),
        1,
        'at',
        /must be after fromMs/,
      ],
      [
        'one window twice with other values',
        post(
          '/v1/uploads/demo',
          ndjson([
            report({ fromMs: T0 + 20e6, at: T0 + 21e6 }),
            report({ fromMs: T0 + 20e6, at: T0 + 22e6 }),
          ]),
        ),
        2,
        'fromMs',
        /repeats the unit, rolloutId and fromMs of line 1/,
      ],
    ];
    for (const [what, sent, line, field, fix] of cases) {
      const r = await sent;
      const text = await r.text();
      assert.equal(r.status, 400, `${what}: ${text}`);
      const { error } = JSON.parse(text) as {
        error: { code: string; problems: Array<Record<string, unknown>> };
      };
      assert.equal(error.code, 'invalid-batch', what);
      assert.deepEqual([error.problems[0]!.line, error.problems[0]!.field], [line, field], what);
      assert.match(String(error.problems[0]!.message), fix, what);
      assert.ok(!text.includes(RAW_ID), `${what} repeats the raw id`);
    }
    res = await post('/v1/uploads/demo', batch, { 'Fleetgate-Watermark': String(T0) });
    assert.equal(res.status, 400);
    assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'bad-watermark');
    assert.equal(rows.length, (await uploads()).length);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(metrics, /fleetgate_ingest_rows_accepted_total\{kind="upload"\} 5\n/);
    assert.match(metrics, /fleetgate_ingest_duplicates_total\{kind="upload"\} 3\n/);
  });

  test('healthz, metrics, and unknown paths', async () => {
    const health = await fetch(`${server.url}/healthz`);
    assert.deepEqual(await health.json(), { ok: true });
    assert.equal(health.headers.get('x-frame-options'), 'DENY');
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(metrics, /fleetgate_ingest_rows_accepted_total\{kind="inference"\} \d+/);
    assert.match(metrics, /fleetgate_ingest_duplicates_total\{kind="inference"\} [1-9]/);
    assert.match(metrics, /fleetgate_ingest_refused_total\{status="413"\} 2/);
    assert.match(metrics, /fleetgate_ingest_refused_total\{status="429"\} 1/);
    assert.equal((await fetch(`${server.url}/v1/events/Demo%2F..`, { method: 'POST' })).status, 404);
    assert.equal((await fetch(`${server.url}/v1/events/demo`)).status, 405);
  });
});

/**
 * The SQL check of Parquet inference batches (events/sql-check.ts) against the contract's own
 * validation: over every valid inference fixture of the events tests and thousands of rows with one
 * column nulled, dropped, retyped or replaced by an odd value of its type (out of range, too long, a bad
 * pattern, NaN, Infinity, -0), the check never accepts a row that validateBatch refuses; a batch with a
 * repeated key, another fleet or an unknown column is left to the JavaScript path; and a valid batch
 * written through the fast path stores exactly the rows (all columns but ingested_at_ms), answers and
 * partitions of the JavaScript path, while a batch naming an unknown rollout is still refused.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import { LocalObjectStore } from '../../activities/store';
import { parquetColumnsOf, validateBatch, type ColumnType } from '../../events/contract';
import { parseBatch, parquetRecords } from '../../events/parse';
import { rowCheckSql, sqlCheck } from '../../events/sql-check';
import { append, BatchRefused, EventWriter, type WriteResult } from '../../events/writer';
import { pseudonym } from '../../fleet/pseudonym';
import { SHADOW, UNIT, VALID_INFERENCE, inference } from '../events-support';

const COLS = parquetColumnsOf('inference');

/** The valid inference fixtures of the contract's tests (test/events-support.ts). */
const VALID = VALID_INFERENCE;

/** Odd values of each column type (a row holds one of them in one column). */
const ODD: Record<ColumnType, unknown[]> = {
  VARCHAR: [
    '',
    ' ',
    'a b',
    'x',
    'demo',
    'other',
    'demo\n',
    'Demo',
    'HW3/EU',
    'hw3/eu',
    'hw3//eu',
    'hw3/',
    '/hw3',
    'constructor',
    'web-eu',
    'fleetgate/v1',
    'fleetgate/v2',
    'production',
    'shadow',
    'canary',
    'candidate',
    'sample',
    'r-1',
    '-r',
    'a'.repeat(64),
    'a'.repeat(65),
    'A'.repeat(64),
    'a'.repeat(20),
    'a'.repeat(19) + 'g',
    'a'.repeat(20) + '\n',
    UNIT,
    'WVWZZZ1JZXW000001',
    'e'.repeat(128),
    'e'.repeat(129),
    'r'.repeat(100),
    'r'.repeat(101),
    'c'.repeat(129),
    'a\nb',
    'a\u202eb',
    '\u00fc'.repeat(64),
    '\u00fc'.repeat(65),
    '😀'.repeat(32),
    '😀'.repeat(65),
    '/etc/passwd',
    'a/../b',
    '..',
    'a/..',
    '../a',
    'a/..b',
    'inputs/x.bin',
    'i'.repeat(1024),
    'i'.repeat(1025),
    '2025-01-01T00:00:00Z',
  ],
  INTEGER: [0, -1, 1, 2, 65535, 65536, 2 ** 31 - 1, -(2 ** 31)],
  BIGINT: [
    0,
    -1,
    1,
    65535,
    65536,
    2 ** 31 - 1,
    2 ** 31,
    946_684_800_000,
    946_684_799_999,
    4_102_444_799_999,
    4_102_444_800_000,
    1_735_689_600,
    1e15,
  ],
  DOUBLE: [
    0,
    -0,
    0.5,
    1,
    1.0000000000000002,
    -1e-300,
    5e-324,
    NaN,
    Infinity,
    -Infinity,
    86_400_000,
    86_400_001,
    8760,
    8760.5,
    65535,
    1.5,
    1e300,
  ],
  BOOLEAN: [true, false],
};
/** A value of each other type, to retype a column. */
const RETYPED: Record<ColumnType, unknown> = {
  VARCHAR: '1',
  INTEGER: 1,
  BIGINT: 1,
  DOUBLE: 1,
  BOOLEAN: true,
};

type Row = Record<string, unknown>;

/** A record as a Parquet row: each column's field, null where absent. */
function rowOf(r: Record<string, unknown>): Row {
  const row: Row = {};
  for (const c of COLS) {
    let v: unknown = r;
    for (const k of c.field) v = v !== null && typeof v === 'object' ? (v as Row)[k] : undefined;
    row[c.name] = v ?? null;
  }
  return row;
}

let dir: string;
let instance: DuckDBInstance;
let conn: DuckDBConnection;
let files = 0;

/** Writes rows as a Parquet file whose columns have the given types (all of `types`, in order). */
async function parquetOf(rows: readonly Row[], types: ReadonlyArray<[string, ColumnType]>): Promise<string> {
  const file = join(dir, `b${files++}.parquet`);
  await conn.run(`CREATE OR REPLACE TEMP TABLE t (${types.map(([n, t]) => `"${n}" ${t}`).join(', ')})`);
  const a = await conn.createAppender('t');
  for (const row of rows) {
    for (const [n, t] of types) append(a, t, row[n] ?? null);
    a.endRow();
  }
  a.closeSync();
  await conn.run(`COPY t TO '${file}' (FORMAT parquet)`);
  return file;
}

const CONTRACT_TYPES = COLS.map((c) => [c.name, c.type] as [string, ColumnType]);

/** Each row's verdict by the SQL check (undefined: the file's columns leave it to JavaScript). */
async function sqlVerdicts(file: string, fleet = 'demo'): Promise<boolean[] | undefined> {
  const described = (
    await conn.runAndReadAll(`DESCRIBE SELECT * FROM read_parquet('${file}')`)
  ).getRowObjectsJS();
  const sql = rowCheckSql(
    'inference',
    new Map(described.map((d) => [String(d.column_name), String(d.column_type)])),
  );
  if (sql === undefined) return undefined;
  const rows = (
    await conn.runAndReadAll(`${sql} ORDER BY file_row_number`, { f: file, fleet })
  ).getRowObjectsJS();
  return rows.map((r) => r.ok as boolean);
}

/** Each row's verdict by validateBatch on the records the JavaScript path reads from the file. */
async function jsVerdicts(file: string, fleet = 'demo'): Promise<boolean[]> {
  const records = await parquetRecords(readFileSync(file), 'inference', {
    tmpDir: dir,
    connect: () => instance.connect(),
    maxRecords: 1_000_000,
  });
  return records.map((r) => validateBatch('inference', fleet, [r], 'row').ok);
}

const stats = { rows: 0, refusedByJs: 0, acceptedBySql: 0, leftToJs: 0 };

async function assertNoLooser(file: string, what: string, fleet = 'demo'): Promise<void> {
  const js = await jsVerdicts(file, fleet);
  const sql = await sqlVerdicts(file, fleet);
  stats.rows += js.length;
  stats.refusedByJs += js.filter((ok) => !ok).length;
  if (sql === undefined) {
    stats.leftToJs += js.length;
    return;
  }
  assert.equal(sql.length, js.length);
  sql.forEach((ok, i) => {
    if (ok) {
      stats.acceptedBySql++;
      assert.ok(js[i], `${what}, row ${i + 1}: the SQL check accepts a row that validateBatch refuses`);
    }
  });
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'fg-sql-check-'));
  instance = await DuckDBInstance.create(':memory:');
  conn = await instance.connect();
});
after(() => {
  conn.closeSync();
  instance.closeSync();
  rmSync(dir, { recursive: true, force: true });
});

describe('SQL check of Parquet inference batches', () => {
  test('accepts every valid fixture, and never a row that validateBatch refuses', async () => {
    const base = VALID.map(rowOf);
    const valid = await parquetOf(base, CONTRACT_TYPES);
    assert.deepEqual(
      await jsVerdicts(valid),
      base.map(() => true),
    );
    assert.deepEqual(
      await sqlVerdicts(valid),
      base.map(() => true),
      'a valid fixture is refused by SQL',
    );
    for (const c of COLS) {
      // Each odd value of the column's own type, and null.
      const rows = base.flatMap((r) => [null, ...ODD[c.type]].map((v) => ({ ...r, [c.name]: v })));
      await assertNoLooser(await parquetOf(rows, CONTRACT_TYPES), `column ${c.name}`);
      // The column dropped.
      const dropped = CONTRACT_TYPES.filter(([n]) => n !== c.name);
      await assertNoLooser(await parquetOf(base, dropped), `column ${c.name} dropped`);
      // The column of another type.
      for (const t of Object.keys(RETYPED) as ColumnType[]) {
        if (t === c.type) continue;
        const retyped = CONTRACT_TYPES.map(([n, ty]) => [n, n === c.name ? t : ty] as [string, ColumnType]);
        const file = await parquetOf(
          base.map((r) => ({ ...r, [c.name]: RETYPED[t] })),
          retyped,
        );
        assert.equal(
          await sqlVerdicts(file),
          undefined,
          `column ${c.name} as ${t} is not left to JavaScript`,
        );
      }
    }
    // Every pair of shadow columns nulled, in every phase (the shadow object is partly there).
    const shadowCols = COLS.filter((c) => c.name.startsWith('shadow_')).map((c) => c.name);
    const pairs = base.flatMap((r) =>
      shadowCols.flatMap((a) =>
        shadowCols.flatMap((b) =>
          ['production', 'shadow', 'canary'].map((phase) => ({ ...r, phase, [a]: null, [b]: null })),
        ),
      ),
    );
    await assertNoLooser(await parquetOf(pairs, CONTRACT_TYPES), 'shadow columns nulled');
    // A shadow output on rows of other phases, and every phase and arm with and without a rollout.
    const crossed = base.flatMap((r) =>
      ['production', 'shadow', 'canary'].flatMap((phase) =>
        ['production', 'candidate'].flatMap((arm) =>
          [null, 'r-1'].map((rollout_id) => ({
            ...r,
            phase,
            arm,
            rollout_id,
            shadow_digest: 'b'.repeat(64),
            shadow_prediction: 1,
            shadow_confidence: 0.5,
            shadow_latency_ms: 2,
          })),
        ),
      ),
    );
    await assertNoLooser(await parquetOf(crossed, CONTRACT_TYPES), 'phase, arm and rollout crossed');
    // Another fleet than the URL's.
    await assertNoLooser(valid, 'another fleet', 'other');
    assert.equal((await sqlVerdicts(valid, 'other'))!.some(Boolean), false);
    // An unknown column.
    const extra = await parquetOf(
      base.map((r) => ({ ...r, vin: 'WVWZZZ1JZXW000001' })),
      [...CONTRACT_TYPES, ['vin', 'VARCHAR']],
    );
    const described = (
      await conn.runAndReadAll(`DESCRIBE SELECT * FROM read_parquet('${extra}')`)
    ).getRowObjectsJS();
    assert.equal(
      rowCheckSql('inference', new Map(described.map((d) => [String(d.column_name), String(d.column_type)]))),
      undefined,
    );
    // Thousands of rows, most refused, and some accepted by both.
    assert.ok(stats.rows > 5000, `only ${stats.rows} rows`);
    assert.ok(stats.refusedByJs > 2000, `only ${stats.refusedByJs} refused`);
    assert.ok(stats.acceptedBySql > 500, `only ${stats.acceptedBySql} accepted by SQL`);
  });

  test('a batch passes only whole: one bad row, a repeated key or another fleet leaves it to JavaScript', async () => {
    const rows = VALID.map((r, i) => rowOf({ ...r, eventId: `e-${i}` }));
    const types = new Map(CONTRACT_TYPES);
    const check = async (rs: Row[], fleet = 'demo') =>
      sqlCheck(conn, 'inference', fleet, await parquetOf(rs, CONTRACT_TYPES), types);
    const ok = await check(rows);
    assert.ok(ok);
    assert.equal(ok.records, rows.length);
    assert.deepEqual(ok.cohorts, ['hw3/eu', 'web-eu']);
    assert.deepEqual(ok.rolloutIds, ['r-1']);
    assert.equal(await check(rows, 'other'), undefined);
    assert.equal(await check([...rows, { ...rows[0]!, confidence: NaN }]), undefined);
    // The same key with other values (refused by validateBatch), and twice the same row (a duplicate).
    const other = [...rows, { ...rows[0]!, prediction: 2 }];
    assert.equal(await check(other), undefined);
    assert.equal(await jsVerdictsOfBatch(await parquetOf(other, CONTRACT_TYPES)), false);
    assert.equal(await check([...rows, rows[0]!]), undefined);
  });
});

async function jsVerdictsOfBatch(file: string): Promise<boolean> {
  const records = await parquetRecords(readFileSync(file), 'inference', {
    tmpDir: dir,
    connect: () => instance.connect(),
    maxRecords: 1_000_000,
  });
  return validateBatch('inference', 'demo', records, 'row').ok;
}

describe('Parquet batches through the SQL fast path', () => {
  let base: string;
  before(() => {
    base = mkdtempSync(join(tmpdir(), 'fg-sql-fast-'));
  });
  after(() => rmSync(base, { recursive: true, force: true }));

  /** A batch of n varied valid events (every phase, null and absent fields), ids from `from`. */
  function events(n: number, from = 0): Row[] {
    return Array.from({ length: n }, (_, k) => {
      const i = from + k;
      const phase = ['production', 'shadow', 'canary'][i % 3]!;
      return rowOf({
        ...inference({
          eventId: `e-${i}`,
          cohort: i % 4 === 0 ? 'web-eu' : 'hw3/eu',
          unit: pseudonym(Buffer.alloc(32, 1), `VIN-${i % 13}`),
          phase,
          rolloutId: phase === 'production' ? (i % 2 ? null : 'r-1') : 'r-1',
          arm: phase === 'canary' && i % 2 ? 'candidate' : 'production',
          prediction: i % 5,
          confidence: (i % 101) / 100,
          latencyMs: i / 7,
          safety: i % 11 === 0,
          exposureHours: i % 17 === 0 ? -0 : 0.05,
          at: Date.UTC(2025, 0, 1) + i * 1000,
          ...(i % 5 === 0 ? { inputRef: `inputs/${i}.bin` } : {}),
        }),
        ...(phase === 'shadow' ? { shadow: { ...SHADOW, ...(i % 2 ? { safety: i % 4 === 1 } : {}) } } : {}),
      });
    });
  }

  async function writerAt(name: string, now: number, known = (_id: string) => true) {
    const store = new LocalObjectStore(join(base, name, 'store'), { durable: false });
    const w = await EventWriter.open(join(base, name, 'events.duckdb'), {
      store,
      now: () => now,
      rollouts: { known: async (id) => known(id) },
      tmpDir: join(base, name),
    });
    return { w, store, dir: join(base, name) };
  }

  /** Sends a Parquet body as the endpoint does: the fast path when `fast`, else the JavaScript path. */
  async function send(w: EventWriter, body: Buffer, fast: boolean, watermarkMs?: number) {
    const tmp = mkdtempSync(join(base, 'tmp-'));
    const batch = await parseBatch(body, {
      format: 'parquet',
      gzip: false,
      kind: 'inference',
      fleet: 'demo',
      maxBytes: 16 << 20,
      maxRecords: 100_000,
      tmpDir: tmp,
      connect: () => w.connect(),
      ...(fast
        ? {
            sqlWrite: (b) =>
              w.ingestChecked('inference', 'demo', b, watermarkMs === undefined ? {} : { watermarkMs }),
          }
        : {}),
    });
    assert.equal(readdirSync(tmp).length, 0, 'a temporary file was left behind');
    const result: WriteResult =
      batch.written ??
      (await w.ingest('inference', 'demo', batch.raw, {
        where: batch.where,
        ...(watermarkMs === undefined ? {} : { watermarkMs }),
      }));
    return { result, fast: batch.written !== undefined };
  }

  const stored = (w: EventWriter) =>
    w.read('SELECT * EXCLUDE (ingested_at_ms) FROM ingested_inference ORDER BY fleet, event_id');

  test('stores exactly the rows, answers and partitions of the JavaScript path', async () => {
    const now = Date.UTC(2025, 0, 2);
    const fast = await writerAt('fast', now);
    const slow = await writerAt('slow', now);
    try {
      // No input_ref column in the second batch (a nullable column left out).
      const first = readFileSync(await parquetOf(events(3000), CONTRACT_TYPES));
      const second = readFileSync(
        await parquetOf(
          events(2000, 2500),
          CONTRACT_TYPES.filter(([n]) => n !== 'input_ref'),
        ),
      );
      for (const [body, wm] of [
        [first, Date.UTC(2025, 0, 1, 0, 30)],
        [second, Date.UTC(2025, 0, 1, 0, 20)],
        [first, undefined],
        // Nothing new, and a later watermark: it still moves for the batch's cohorts.
        [second, Date.UTC(2025, 0, 1, 1, 0)],
      ] as const) {
        const a = await send(fast.w, body, true, wm);
        const b = await send(slow.w, body, false, wm);
        assert.equal(a.fast, true, 'the valid batch did not take the fast path');
        assert.equal(b.fast, false);
        assert.deepStrictEqual(a.result, b.result);
      }
      const rows = await stored(fast.w);
      assert.equal(rows.length, 4500);
      assert.deepStrictEqual(rows, await stored(slow.w));
      assert.ok(rows.some((r) => Object.is(r.exposure_hours, -0)));
      assert.deepStrictEqual(
        await fast.w.read('SELECT * FROM ingest_watermarks ORDER BY ALL'),
        await slow.w.read('SELECT * FROM ingest_watermarks ORDER BY ALL'),
      );
      assert.deepStrictEqual(
        (await fast.w.read('SELECT cohort, watermark_ms FROM ingest_watermarks ORDER BY cohort')).map((r) => [
          r.cohort,
          Number(r.watermark_ms),
        ]),
        [
          ['hw3/eu', Date.UTC(2025, 0, 1, 1, 0)],
          ['web-eu', Date.UTC(2025, 0, 1, 1, 0)],
        ],
      );
      const keys = async (s: LocalObjectStore) => (await s.list('')).sort();
      assert.deepStrictEqual(await keys(fast.store), await keys(slow.store));
    } finally {
      await fast.w.close();
      await slow.w.close();
    }
  });

  test('a bad row, or a rollout no store records, is refused in the JavaScript path words; nothing stored', async () => {
    const { w } = await writerAt('unknown', Date.UTC(2025, 0, 2), (id) => id !== 'r-9');
    try {
      const rows = events(100);
      rows[41] = { ...rows[41]!, phase: 'canary', rollout_id: 'r-9' };
      await assert.rejects(send(w, readFileSync(await parquetOf(rows, CONTRACT_TYPES)), true), (err) => {
        assert.ok(err instanceof BatchRefused);
        assert.equal(err.problemCount, 1);
        assert.equal(err.problems[0]!.row, 42);
        assert.equal(err.problems[0]!.field, 'rolloutId');
        return true;
      });
      const bad = events(100);
      bad[7] = { ...bad[7]!, confidence: 1.5 };
      await assert.rejects(send(w, readFileSync(await parquetOf(bad, CONTRACT_TYPES)), true), (err) => {
        assert.ok(err instanceof BatchRefused);
        assert.equal(err.problems[0]!.row, 8);
        assert.equal(err.problems[0]!.field, 'confidence');
        return true;
      });
      assert.equal(Number((await w.read('SELECT count(*) AS n FROM ingested_inference'))[0]!.n), 0);
    } finally {
      await w.close();
    }
  });
});

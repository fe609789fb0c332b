/**
 * An NDJSON batch's rows made by DuckDB's JSON reader (events/writer.ts `jsonStageSql`, the `ndjsonFile`
 * of `EventWriter.ingest`) are exactly the rows the appender makes of the records JavaScript parsed and
 * validated: for every kind, every phase and arm, absent and null optional fields, and the ways a
 * producer may legally write the same JSON (escaped keys and characters, an integer as 1e2 or 3.0,
 * whitespace, CRLF, blank lines, any field order). Where the reader and JavaScript would read a line
 * differently (a field repeated within an object, which JavaScript resolves to the last one), the batch
 * is still stored as JavaScript read it, and a batch that repeats a record stores it once.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import type { RecordKind } from '../../events/contract';
import { parseBatch, parseNdjson } from '../../events/parse';
import { columnNamesOf, EventWriter, jsonStageSql, TABLES } from '../../events/writer';
import { inference, SHADOW, uploadReport, VALID_INFERENCE } from '../events-support';

const NOW = Date.UTC(2026, 0, 1);
const at = Date.UTC(2025, 0, 1);

const ev = (i: number, over: Record<string, unknown> = {}) =>
  inference({ eventId: `n-${i}`, phase: 'canary', rolloutId: 'r-1', ...over });

/** Batches of valid lines per kind, written as a producer in another language might write them. */
const BATCHES: Array<{ what: string; kind: RecordKind; text: string }> = [
  {
    what: 'every valid inference fixture',
    kind: 'inference',
    text: VALID_INFERENCE.map((r, i) => JSON.stringify({ ...r, eventId: `v-${i}` })).join('\n') + '\n',
  },
  {
    what: 'escaped keys and characters, other field order, CRLF, blank lines, spaces, no final newline',
    kind: 'inference',
    text: [
      JSON.stringify(ev(1)).replace('"eventId"', '"\\u0065ventId"').replace('"n-1"', '"n\\u002d1"'),
      '',
      '  ' + JSON.stringify(Object.fromEntries(Object.entries(ev(2)).reverse())) + '  \r',
      JSON.stringify(ev(3, { inputRef: 'inputs/a\\b/c.bin' })),
      '\r',
      JSON.stringify(ev(4, { phase: 'shadow', arm: 'production', shadow: SHADOW })).replace(
        '"digest"',
        '"\\u0064igest"',
      ),
    ].join('\n'),
  },
  {
    what: 'integers written as 1e2 or 3.0, numbers with exponents, -0, null and absent rolloutId',
    kind: 'inference',
    text: [
      JSON.stringify(ev(5, { prediction: 3, at: at + 100 }))
        .replace('"prediction":3', '"prediction":3.0')
        .replace(`"at":${at + 100}`, `"at":${(at + 100) / 100}e2`),
      JSON.stringify(ev(6, { confidence: 0.25, latencyMs: 12.5 }))
        .replace('"confidence":0.25', '"confidence":2.5e-1')
        .replace('"latencyMs":12.5', '"latencyMs":1.25E+1'),
      JSON.stringify(ev(7, { prediction: 0 })).replace('"prediction":0', '"prediction":-0'),
      JSON.stringify(inference({ eventId: 'n-8', rolloutId: null })),
      JSON.stringify(
        Object.fromEntries(Object.entries(inference({ eventId: 'n-9' })).filter(([k]) => k !== 'rolloutId')),
      ),
      JSON.stringify(ev(10, { exposureHours: 0, upload: { inclusionProbability: 1e-9, tier: 'p' } })),
    ].join('\n'),
  },
  {
    what: 'labels with labelers in any script, escaped or not',
    kind: 'label',
    text: [
      { schema: 'fleetgate/v1', eventId: 'n-1', label: 2, labeler: 'team-ä', at },
      { schema: 'fleetgate/v1', eventId: 'n-2', label: 0, labeler: 'vendor \u00e9\u4e2d\ud83d\ude00', at },
    ]
      .map((r) => JSON.stringify(r))
      .concat([
        '{"schema":"fleetgate/v1","eventId":"n-3","label":1,"labeler":"\\u00e9\\ud83d\\ude00 x","at":1735689600000}',
      ])
      .join('\n'),
  },
  {
    what: 'service outcomes',
    kind: 'outcome',
    text: ['ok', 'error', 'timeout']
      .map((outcome, i) => JSON.stringify({ schema: 'fleetgate/v1', requestId: `q-${i}`, outcome, at }))
      .join('\n'),
  },
  {
    what: 'upload reports',
    kind: 'upload',
    text: [
      uploadReport(),
      uploadReport({ unit: 'f'.repeat(20), overBudget: true, uploaded: 0, disagreements: 0 }),
    ]
      .map((r) => JSON.stringify(r))
      .join('\n'),
  },
];

describe("NDJSON rows by DuckDB's JSON reader", () => {
  let dir: string;
  let instance: DuckDBInstance;
  let conn: DuckDBConnection;
  let n = 0;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fleetgate-ndjson-stage-'));
    instance = await DuckDBInstance.create(':memory:');
    conn = await instance.connect();
  });
  after(() => {
    conn.closeSync();
    instance.closeSync();
    rmSync(dir, { recursive: true, force: true });
  });

  /** The rows of a kind's table after one batch, through a new writer (with or without the file). */
  async function stored(kind: RecordKind, text: string, withFile: boolean) {
    const file = join(dir, `${++n}.ndjson`);
    writeFileSync(file, text);
    const writer = await EventWriter.open(join(dir, `${n}.duckdb`), { now: () => NOW });
    try {
      const { raw, positions, problems } = parseNdjson(text);
      assert.deepEqual(problems, []);
      const r = await writer.ingest(kind, 'demo', raw, {
        where: 'line',
        positions,
        ...(withFile ? { ndjsonFile: async () => file } : {}),
      });
      const { table, key } = TABLES[kind];
      const rows = await writer.read(
        `SELECT * FROM ${table} ORDER BY ${key.map((k) => `"${k}"`).join(', ')}`,
      );
      return { r, rows };
    } finally {
      await writer.close();
    }
  }

  for (const b of BATCHES) {
    test(`${b.kind}: ${b.what}: the reader's rows are the appender's`, async () => {
      const file = join(dir, `${++n}.ndjson`);
      writeFileSync(file, b.text);
      // The reader itself, on its own: every record, every column, the same values.
      const read = (await conn.runAndReadAll(jsonStageSql(b.kind, 'demo', file))).getRowObjectsJS();
      const appended = await stored(b.kind, b.text, false);
      const { key } = TABLES[b.kind];
      const sortKey = (r: Record<string, unknown>) => key.map((k) => String(r[k])).join('\u0000');
      const byKey = (rows: Record<string, unknown>[]) =>
        rows
          .map((r) => Object.fromEntries(Object.entries(r).filter(([k]) => k !== 'ingested_at_ms')))
          .sort((x, y) => (sortKey(x) < sortKey(y) ? -1 : 1));
      assert.deepEqual(
        Object.keys(read[0]!),
        columnNamesOf(b.kind).filter((c) => c !== 'ingested_at_ms'),
      );
      assert.equal(read.length, appended.rows.length);
      assert.deepEqual(byKey(read), byKey(appended.rows));
      // And through the writer: the same rows and the same answer.
      const viaFile = await stored(b.kind, b.text, true);
      assert.deepEqual(viaFile.rows, appended.rows);
      assert.deepEqual(viaFile.r, appended.r);
    });
  }

  test('a field repeated within an object is stored as JavaScript read it (the last one), never the first', async () => {
    const line = JSON.stringify(ev(1, { confidence: 0.5, prediction: 1 }))
      .replace('"confidence":0.5', '"confidence":5,"confidence":0.5')
      .replace('"prediction":1', '"prediction":"x","prediction":1');
    const text = [line, JSON.stringify(ev(2))].join('\n');
    const viaFile = await stored('inference', text, true);
    assert.equal(viaFile.r.accepted, 2);
    const first = viaFile.rows.find((r) => r.event_id === 'n-1')!;
    assert.equal(first.confidence, 0.5);
    assert.equal(first.prediction, 1);
    assert.deepEqual(viaFile.rows, (await stored('inference', text, false)).rows);
  });

  test('a body with bytes that are not UTF-8 is stored as JavaScript decoded it (U+FFFD), through parseBatch', async () => {
    const good = (labeler: string) =>
      Buffer.from(
        JSON.stringify({ schema: 'fleetgate/v1', eventId: `l-${labeler.length}`, label: 1, labeler, at }),
      );
    const body = Buffer.concat([good('ab'), Buffer.from('\n'), good('x-y-'), Buffer.from('\n')]);
    // "x-y-" becomes "x", 0xff, "y-": one byte that no UTF-8 text holds.
    body[body.indexOf('x-y-') + 1] = 0xff;
    const rowsOf = async (viaFile: boolean) => {
      const writer = await EventWriter.open(join(dir, `${++n}.duckdb`), { now: () => NOW });
      try {
        const parsed = await parseBatch(body, {
          format: 'ndjson',
          gzip: false,
          kind: 'label',
          fleet: 'demo',
          maxBytes: 1 << 20,
          maxRecords: 10,
          tmpDir: dir,
          connect: () => writer.connect(),
          ...(viaFile
            ? {
                ndjsonWrite: ({ raw, positions, file }) =>
                  writer.ingest('label', 'demo', raw, { where: 'line', positions, ndjsonFile: file }),
              }
            : {}),
        });
        if (!viaFile)
          await writer.ingest('label', 'demo', parsed.raw, { where: 'line', positions: parsed.positions! });
        else assert.equal(parsed.written?.accepted, 2);
        return await writer.read('SELECT event_id, labeler FROM ingested_labels ORDER BY event_id');
      } finally {
        await writer.close();
      }
    };
    const rows = await rowsOf(true);
    assert.deepEqual(rows, await rowsOf(false));
    assert.ok(rows.some((r) => r.labeler === 'x\ufffdy-'));
  });

  test('a batch that repeats a record stores it once and counts the copy as a duplicate', async () => {
    const text = [JSON.stringify(ev(1)), JSON.stringify(ev(2)), JSON.stringify(ev(1))].join('\n');
    const viaFile = await stored('inference', text, true);
    assert.deepEqual([viaFile.r.accepted, viaFile.r.duplicates], [2, 1]);
    assert.equal(viaFile.rows.length, 2);
  });
});

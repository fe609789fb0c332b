/**
 * The event contract fleetgate/v1: tables of records accepted and refused (each refusal names its field
 * and the fix, and never repeats an identifier), the committed JSON Schema and Parquet columns equal the
 * generated ones, and a Parquet row becomes the record it stands for.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import {
  Inference,
  Label,
  Outcome,
  Upload,
  RECORD_KINDS,
  jsonSchemaOf,
  parquetSchemaOf,
  problemsOf,
  recordFromColumns,
  validateBatch,
  MAX_PROBLEMS,
} from '../../events/contract';
import { eventsCommand, schemaText } from '../../events/cli';
import { pseudonym } from '../../fleet/pseudonym';
import { RAW_ID, SHADOW, UNIT_KEY, inference, uploadReport } from '../events-support';

const ROOT = resolve(__dirname, '..', '..');
const KEY = UNIT_KEY;

describe('event contract', () => {
  test('accepts the records of every phase, label records and outcomes', () => {
    const accepted: Array<[string, unknown]> = [
      ['production, no rollout', inference()],
      ['production, rolloutId absent', (({ rolloutId: _r, ...r }) => r)(inference())],
      ['shadow with the other output', inference({ phase: 'shadow', rolloutId: 'r-1', shadow: SHADOW })],
      ['canary candidate', inference({ phase: 'canary', rolloutId: 'r-1', arm: 'candidate' })],
      ['canary control arm', inference({ phase: 'canary', rolloutId: 'r-1', arm: 'production' })],
      [
        'inputRef and bounds',
        inference({ inputRef: 'inputs/demo/b1-000001.bin', confidence: 0, latencyMs: 0 }),
      ],
      ['p = 1', inference({ upload: { tier: 'priority', inclusionProbability: 1 } })],
      ['service cohort', inference({ cohort: 'web-eu' })],
    ];
    for (const [what, r] of accepted) {
      const res = Inference.safeParse(r);
      assert.ok(res.success, `${what}: ${JSON.stringify(res.error?.issues)}`);
    }
    assert.ok(
      Label.safeParse({ schema: 'fleetgate/v1', eventId: 'b1-1', label: 2, labeler: 'Team Ü', at: 1e12 })
        .success,
    );
    for (const outcome of ['ok', 'error', 'timeout']) {
      assert.ok(Outcome.safeParse({ schema: 'fleetgate/v1', requestId: 'q-1', outcome, at: 1e12 }).success);
    }
  });

  test('refuses every malformed inference event, naming the field and the fix', () => {
    const { prediction: _p, ...missing } = inference();
    const refused: Array<[string, unknown, string, RegExp]> = [
      ['NaN', inference({ confidence: NaN }), 'confidence', /finite number from 0 to 1/],
      ['Infinity', inference({ latencyMs: Infinity }), 'latencyMs', /finite number of milliseconds/],
      ['confidence > 1', inference({ confidence: 1.01 }), 'confidence', /from 0 to 1/],
      ['negative latency', inference({ latencyMs: -1 }), 'latencyMs', /from 0/],
      [
        'p = 0',
        inference({ upload: { tier: 's', inclusionProbability: 0 } }),
        'upload.inclusionProbability',
        /\(0, 1\]/,
      ],
      ['fractional class', inference({ prediction: 1.5 }), 'prediction', /integer from 0 to 65535/],
      ['negative class', inference({ prediction: -1 }), 'prediction', /integer from 0/],
      ['missing prediction', missing, 'prediction', /^missing: send a class index/],
      ['wrong type', inference({ safety: 'yes' }), 'safety', /true or false/],
      ['unknown field', inference({ vin: RAW_ID }), '(record)', /unknown field\(s\) "vin": remove them/],
      ['ISO time', inference({ at: '2025-01-01T00:00:00Z' }), 'at', /integer epoch milliseconds/],
      ['time in seconds', inference({ at: 1_735_689_600 }), 'at', /from 946684800000/],
      ['fractional ms', inference({ at: 1_735_689_600_000.5 }), 'at', /integer epoch milliseconds/],
      ['long event id', inference({ eventId: 'e'.repeat(129) }), 'eventId', /1 to 128 printable/],
      ['space in event id', inference({ eventId: 'a b' }), 'eventId', /without spaces/],
      ['bad cohort', inference({ cohort: 'HW3/EU' }), 'cohort', /cohort name of the fleet's manifest/],
      ['reserved cohort', inference({ cohort: 'constructor' }), 'cohort', /reserved/],
      ['long cohort', inference({ cohort: 'c'.repeat(129) }), 'cohort', /at most 128/],
      ['bad digest', inference({ modelDigest: 'sha256:abc' }), 'modelDigest', /64 lowercase hex/],
      ['bad phase', inference({ phase: 'beta' }), 'phase', /"production".*"shadow".*"canary"/],
      [
        'shadow without output',
        inference({ phase: 'shadow', rolloutId: 'r' }),
        'shadow',
        /required in phase "shadow"/,
      ],
      ['output outside shadow', inference({ shadow: SHADOW }), 'shadow', /only in phase "shadow"/],
      ['candidate outside canary', inference({ arm: 'candidate' }), 'arm', /only in phase "canary"/],
      ['canary without rollout', inference({ phase: 'canary' }), 'rolloutId', /required in phase "canary"/],
      [
        'shadow NaN',
        inference({ phase: 'shadow', rolloutId: 'r', shadow: { ...SHADOW, confidence: NaN } }),
        'shadow.confidence',
        /finite/,
      ],
      [
        'shadow unknown field',
        inference({ phase: 'shadow', rolloutId: 'r', shadow: { ...SHADOW, x: 1 } }),
        'shadow',
        /unknown field/,
      ],
      ['absolute inputRef', inference({ inputRef: '/etc/passwd' }), 'inputRef', /relative/],
      ['.. in inputRef', inference({ inputRef: 'a/../b' }), 'inputRef', /no "\.\." part/],
      ['exposure out of range', inference({ exposureHours: 1e9 }), 'exposureHours', /from 0 to 8760/],
      ['schema version', inference({ schema: 'fleetgate/v2' }), 'schema', /send "fleetgate\/v1"/],
      ['not an object', 'hello', '(record)', /JSON object/],
    ];
    for (const [what, input, field, fix] of refused) {
      const res = Inference.safeParse(input);
      assert.ok(!res.success, `${what} was accepted`);
      const problems = problemsOf(res.error, input);
      const p = problems.find((x) => x.field === field);
      assert.ok(p, `${what}: no problem names ${field}: ${JSON.stringify(problems)}`);
      assert.match(p.message, fix, what);
    }
  });

  test('a raw id in unit is refused with how to make the pseudonym, and never repeated', () => {
    for (const unit of [
      RAW_ID,
      'A'.repeat(20),
      pseudonym(KEY, RAW_ID).slice(0, 19),
      `${pseudonym(KEY, RAW_ID)}0`,
    ]) {
      const input = inference({ unit });
      const res = Inference.safeParse(input);
      assert.ok(!res.success);
      const problems = problemsOf(res.error, input);
      assert.equal(problems.length, 1);
      assert.equal(problems[0]!.field, 'unit');
      assert.match(
        problems[0]!.message,
        /keyed pseudonym, never its raw id.*HMAC-SHA256\(fleet key, raw id\)/,
      );
      assert.equal(problems[0]!.value, undefined);
      assert.ok(!JSON.stringify(problems).includes(unit));
    }
  });

  test('values are shown for numbers and closed sets, never for ids, labelers or refs', () => {
    const input = inference({ eventId: `${RAW_ID} x`, confidence: 2, phase: 'beta', inputRef: `/${RAW_ID}` });
    const res = Inference.safeParse(input);
    assert.ok(!res.success);
    const problems = problemsOf(res.error, input);
    assert.equal(problems.find((p) => p.field === 'confidence')?.value, 2);
    assert.equal(problems.find((p) => p.field === 'phase')?.value, 'beta');
    assert.ok(!JSON.stringify(problems).includes(RAW_ID));
  });

  test('labels and outcomes refuse what is out of their contract', () => {
    const label = { schema: 'fleetgate/v1', eventId: 'e1', label: 1, labeler: 'vendor-a', at: 1e12 };
    for (const [input, field, fix] of [
      [{ ...label, label: 70000 }, 'label', /integer from 0 to 65535/],
      [{ ...label, labeler: 'a\nb' }, 'labeler', /no control characters/],
      [{ ...label, labeler: '' }, 'labeler', /1 to 128/],
      [{ ...label, at: undefined }, 'at', /^missing/],
    ] as const) {
      const res = Label.safeParse(input);
      assert.ok(!res.success);
      assert.match(problemsOf(res.error, input).find((p) => p.field === field)!.message, fix);
    }
    const outcome = { schema: 'fleetgate/v1', requestId: 'q1', outcome: 'failed', at: 1e12 };
    const res = Outcome.safeParse(outcome);
    assert.ok(!res.success);
    const p = problemsOf(res.error, outcome)[0]!;
    assert.equal(p.field, 'outcome');
    assert.match(p.message, /"ok".*"error".*"timeout"/);
    assert.equal(p.value, 'failed');
  });

  test('a batch is all or nothing; problems carry their line, at most 20 listed with the count', () => {
    const good = validateBatch('inference', 'demo', [inference(), inference({ eventId: 'b1-2' })], 'line');
    assert.ok(good.ok);
    assert.equal(good.records.length, 2);
    const raw = [
      inference(),
      inference({ fleet: 'other' }),
      ...Array.from({ length: 30 }, () => inference({ prediction: -1 })),
    ];
    const bad = validateBatch('inference', 'demo', raw, 'line');
    assert.ok(!bad.ok);
    assert.equal(bad.problemCount, 31);
    assert.equal(bad.problems.length, MAX_PROBLEMS);
    assert.deepEqual(bad.problems[0], {
      line: 2,
      field: 'fleet',
      message: "differs from the fleet of the URL: send each fleet's events to /v1/events/{its fleet}",
    });
    assert.equal(bad.problems[1]!.line, 3);
    assert.equal(bad.problems[1]!.field, 'prediction');
  });

  test('shadow.safety is an optional boolean of the shadow output', () => {
    for (const safety of [true, false, undefined]) {
      const shadow = safety === undefined ? SHADOW : { ...SHADOW, safety };
      const res = Inference.safeParse(inference({ phase: 'shadow', rolloutId: 'r-1', shadow }));
      assert.ok(res.success, `${String(safety)}: ${JSON.stringify(res.error?.issues)}`);
      assert.equal(res.data.shadow?.safety, safety);
    }
    const input = inference({ phase: 'shadow', rolloutId: 'r-1', shadow: { ...SHADOW, safety: 'yes' } });
    const res = Inference.safeParse(input);
    assert.ok(!res.success);
    const p = problemsOf(res.error, input).find((x) => x.field === 'shadow.safety');
    assert.ok(p);
    assert.match(p.message, /true or false: whether the shadow model's output.*leave it out when unknown/);
  });

  test('an upload report is accepted; each rule across fields is refused naming its field and fix', () => {
    const ok = Upload.safeParse(uploadReport());
    assert.ok(ok.success, JSON.stringify(ok.error?.issues));
    for (const edge of [
      uploadReport({ evaluated: 0, priority: 0, disagreements: 0, uploaded: 0 }),
      uploadReport({ priority: 120, disagreements: 120, uploaded: 120, overBudget: true }),
      uploadReport({ at: Date.UTC(2025, 0, 1) + 1 }),
    ]) {
      assert.ok(Upload.safeParse(edge).success, JSON.stringify(edge));
    }
    const { rolloutId: _r, ...noRollout } = uploadReport();
    const refused: Array<[string, unknown, string, RegExp]> = [
      [
        'empty window',
        uploadReport({ at: Date.UTC(2025, 0, 1) }),
        'at',
        /must be after fromMs.*\[fromMs, at\)/,
      ],
      ['window backwards', uploadReport({ at: Date.UTC(2024, 11, 31) }), 'at', /must be after fromMs/],
      ['priority > evaluated', uploadReport({ priority: 121 }), 'priority', /at most evaluated/],
      ['disagreements > priority', uploadReport({ disagreements: 10 }), 'disagreements', /at most priority/],
      ['uploaded > evaluated', uploadReport({ uploaded: 121 }), 'uploaded', /at most evaluated/],
      ['negative count', uploadReport({ uploaded: -1 }), 'uploaded', /integer from 0 to 2147483647/],
      ['fractional count', uploadReport({ evaluated: 1.5 }), 'evaluated', /integer from 0/],
      ['count over int32', uploadReport({ evaluated: 2 ** 31 }), 'evaluated', /to 2147483647/],
      ['no rolloutId', noRollout, 'rolloutId', /^missing: send the id of the rollout whose shadow ran/],
      ['null rolloutId', uploadReport({ rolloutId: null }), 'rolloutId', /the id of the rollout/],
      ['fromMs in seconds', uploadReport({ fromMs: 1_735_689_600 }), 'fromMs', /from 946684800000/],
      ['overBudget a number', uploadReport({ overBudget: 1 }), 'overBudget', /true or false/],
      ['unknown field', uploadReport({ vehicles: 1 }), '(record)', /unknown field\(s\) "vehicles"/],
    ];
    for (const [what, input, field, fix] of refused) {
      const res = Upload.safeParse(input);
      assert.ok(!res.success, `${what} was accepted`);
      const problems = problemsOf(res.error, input);
      const p = problems.find((x) => x.field === field);
      assert.ok(p, `${what}: no problem names ${field}: ${JSON.stringify(problems)}`);
      assert.match(p.message, fix, what);
    }
    // A raw id in unit: refused with how to make the pseudonym, and never repeated.
    const raw = uploadReport({ unit: RAW_ID });
    const res = Upload.safeParse(raw);
    assert.ok(!res.success);
    const problems = problemsOf(res.error, raw);
    assert.deepEqual(
      problems.map((p) => p.field),
      ['unit'],
    );
    assert.match(problems[0]!.message, /keyed pseudonym, never its raw id/);
    assert.ok(!JSON.stringify(problems).includes(RAW_ID));
  });

  test('a batch of upload reports: the URL fleet, and one key with other values refused', () => {
    const other = uploadReport({ fromMs: Date.UTC(2025, 0, 1, 1), at: Date.UTC(2025, 0, 1, 2) });
    const good = validateBatch(
      'upload',
      'demo',
      [uploadReport(), other, uploadReport({ rolloutId: 'r-2' }), uploadReport()],
      'line',
    );
    assert.ok(good.ok);
    assert.equal(good.records.length, 4);
    const fleet = validateBatch('upload', 'demo', [uploadReport({ fleet: 'other' })], 'row');
    assert.ok(!fleet.ok);
    assert.deepEqual(fleet.problems, [
      {
        row: 1,
        field: 'fleet',
        message:
          "differs from the fleet of the URL: send each fleet's upload reports to /v1/uploads/{its fleet}",
      },
    ]);
    const conflict = validateBatch(
      'upload',
      'demo',
      [uploadReport(), other, uploadReport({ uploaded: 3 })],
      'line',
    );
    assert.ok(!conflict.ok);
    assert.deepEqual(conflict.problems, [
      {
        line: 3,
        field: 'fromMs',
        message:
          'repeats the unit, rolloutId and fromMs of line 1 with other values: send one report per unit and window',
      },
    ]);
    assert.ok(!JSON.stringify(conflict.problems).includes(pseudonym(KEY, RAW_ID)));
  });

  test('fleetgate events schema --kind upload prints the committed columns', async () => {
    const out: string[] = [];
    const log = console.log;
    console.log = (s: string) => out.push(s);
    try {
      assert.equal(await eventsCommand(['schema', '--kind', 'upload', '--format', 'parquet']), 0);
      assert.equal(await eventsCommand(['schema', '--kind', 'upload']), 0);
    } finally {
      console.log = log;
    }
    const dir = join(ROOT, 'events', 'schema');
    assert.deepEqual(JSON.parse(out[0]!), JSON.parse(readFileSync(join(dir, 'upload.parquet.json'), 'utf8')));
    assert.deepEqual(JSON.parse(out[1]!), JSON.parse(readFileSync(join(dir, 'upload.schema.json'), 'utf8')));
  });

  test('the committed schemas equal the generated ones (regenerate: fleetgate events schema)', () => {
    for (const kind of RECORD_KINDS) {
      const dir = join(ROOT, 'events', 'schema');
      assert.deepEqual(
        JSON.parse(readFileSync(join(dir, `${kind}.schema.json`), 'utf8')),
        jsonSchemaOf(kind),
        kind,
      );
      assert.deepEqual(
        JSON.parse(readFileSync(join(dir, `${kind}.parquet.json`), 'utf8')),
        parquetSchemaOf(kind),
        kind,
      );
      assert.deepEqual(JSON.parse(schemaText(kind, 'parquet')), parquetSchemaOf(kind));
    }
    assert.deepEqual(Object.keys(JSON.parse(schemaText(undefined, 'json-schema'))), [...RECORD_KINDS]);
  });

  test('the Parquet columns: flattened snake_case names, types from the bounds, nullable where optional', () => {
    const cols = Object.fromEntries(parquetSchemaOf('inference').columns.map((c) => [c.name, c]));
    assert.deepEqual(cols.at, { name: 'at', type: 'BIGINT', nullable: false, field: ['at'] });
    assert.equal(cols.prediction!.type, 'INTEGER');
    assert.equal(cols.confidence!.type, 'DOUBLE');
    assert.equal(cols.safety!.type, 'BOOLEAN');
    assert.deepEqual(cols.shadow_latency_ms, {
      name: 'shadow_latency_ms',
      type: 'DOUBLE',
      nullable: true,
      field: ['shadow', 'latencyMs'],
    });
    assert.equal(cols.rollout_id!.nullable, true);
    assert.equal(cols.upload_inclusion_probability!.nullable, false);
    assert.deepEqual(cols.shadow_safety, {
      name: 'shadow_safety',
      type: 'BOOLEAN',
      nullable: true,
      field: ['shadow', 'safety'],
    });
    assert.deepEqual(
      parquetSchemaOf('upload').columns.map((c) => [c.name, c.type, c.nullable]),
      [
        ['schema', 'VARCHAR', false],
        ['fleet', 'VARCHAR', false],
        ['cohort', 'VARCHAR', false],
        ['unit', 'VARCHAR', false],
        ['rollout_id', 'VARCHAR', false],
        ['from_ms', 'BIGINT', false],
        ['at', 'BIGINT', false],
        ['evaluated', 'INTEGER', false],
        ['priority', 'INTEGER', false],
        ['disagreements', 'INTEGER', false],
        ['uploaded', 'INTEGER', false],
        ['over_budget', 'BOOLEAN', false],
      ],
    );
    const row = {
      ...Object.fromEntries(Object.keys(cols).map((k) => [k, null])),
      event_id: 'e',
      at: 5n,
      upload_tier: 't',
    };
    assert.deepEqual(recordFromColumns('inference', row), { eventId: 'e', upload: { tier: 't' }, at: 5 });
  });
});

/**
 * The fast check of the event contract (events/fast-check.ts) against zod, the contract's source: on
 * valid records of every kind and phase, on every kind of bad record of the contract's tests, and on
 * each field of each kind deleted or replaced by values of every type and edge, the check accepts
 * exactly what zod accepts and answers what zod outputs; and `validateBatch` answers the same records
 * and the same problems whichever of the two read a record.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { RECORD_SCHEMAS, validateBatch, type RecordKind } from '../../events/contract';
import { fastCheckOf } from '../../events/fast-check';
import { SHADOW, VALID_INFERENCE, inference, uploadReport } from '../events-support';

const label = (over: Record<string, unknown> = {}) => ({
  schema: 'fleetgate/v1',
  eventId: 'e1',
  label: 1,
  labeler: 'vendor-a',
  at: 1e12,
  ...over,
});
const outcome = (over: Record<string, unknown> = {}) => ({
  schema: 'fleetgate/v1',
  requestId: 'q1',
  outcome: 'ok',
  at: 1e12,
  ...over,
});

const VALID: Record<RecordKind, Record<string, unknown>[]> = {
  inference: [
    ...VALID_INFERENCE.slice(0, 1),
    (({ rolloutId: _r, ...r }) => r)(inference()),
    ...VALID_INFERENCE.slice(1),
  ],
  label: [label(), label({ labeler: 'Team Ü' }), label({ label: 65535, labeler: 'l'.repeat(128) })],
  outcome: ['ok', 'error', 'timeout'].map((o) => outcome({ outcome: o })),
  upload: [
    uploadReport(),
    uploadReport({ evaluated: 0, priority: 0, disagreements: 0, uploaded: 0 }),
    uploadReport({ priority: 120, disagreements: 120, uploaded: 120, overBudget: true }),
    uploadReport({ at: Date.UTC(2025, 0, 1) + 1 }),
  ],
};

/** Values of every type and edge that a field may be replaced with. */
const ODD: unknown[] = [
  null,
  undefined,
  true,
  false,
  0,
  -1,
  1,
  1.5,
  0.5,
  2,
  -0,
  NaN,
  Infinity,
  -Infinity,
  65535,
  65536,
  2 ** 31 - 1,
  2 ** 31,
  Number.MAX_SAFE_INTEGER + 2,
  1e9,
  8760,
  8760.5,
  86_400_000,
  86_400_001,
  946_684_800_000,
  946_684_799_999,
  4_102_444_799_999,
  4_102_444_800_000,
  1_735_689_600,
  1_735_689_600_000.5,
  '',
  ' ',
  'a b',
  'x',
  'HW3/EU',
  'hw3/eu',
  'constructor',
  'web-eu',
  'fleetgate/v1',
  'fleetgate/v2',
  'production',
  'shadow',
  'canary',
  'candidate',
  'ok',
  'failed',
  'sample',
  'a'.repeat(64),
  'A'.repeat(64),
  'a'.repeat(20),
  'WVWZZZ1JZXW000001',
  'e'.repeat(128),
  'e'.repeat(129),
  'r'.repeat(100),
  'r'.repeat(101),
  'c'.repeat(129),
  'a\nb',
  'a\u202eb',
  '\u00fc'.repeat(128),
  '😀'.repeat(64),
  '😀'.repeat(65),
  '/etc/passwd',
  'a/../b',
  'a/..b',
  '2025-01-01T00:00:00Z',
  10n,
  [],
  [1],
  {},
  { tier: 'sample', inclusionProbability: 0.5 },
  { tier: 'sample', inclusionProbability: 0 },
  SHADOW,
  { ...SHADOW, x: 1 },
  { ...SHADOW, confidence: NaN },
  { ...SHADOW, safety: 'yes' },
  Object.create(null),
];

/** Every record obtained by deleting or replacing one field (nested ones too), or adding an unknown one. */
function mutations(r: Record<string, unknown>): unknown[] {
  const out: unknown[] = [];
  for (const k of Object.keys(r)) {
    const { [k]: _gone, ...rest } = r;
    out.push(rest);
    for (const v of ODD) out.push({ ...r, [k]: v });
    const inner = r[k];
    if (inner !== null && typeof inner === 'object' && !Array.isArray(inner)) {
      for (const m of mutations(inner as Record<string, unknown>)) out.push({ ...r, [k]: m });
    }
  }
  out.push({ ...r, vin: 'WVWZZZ1JZXW000001' }, JSON.parse(`{"__proto__": 1, "schema": "fleetgate/v1"}`));
  const proto = Object.assign(Object.create({ extra: 1 }), r);
  out.push(proto, 'hello', 42, null, undefined, [r]);
  return out;
}

/** Asserts the fast check and zod agree on `input`. */
function agree(kind: RecordKind, input: unknown, what: string): boolean {
  const z = RECORD_SCHEMAS[kind].safeParse(input);
  const fast = fastCheckOf(kind)(input);
  if (!z.success) {
    assert.equal(fast, undefined, `${kind} ${what}: the fast check accepts what zod refuses`);
    return false;
  }
  if (fast !== undefined) {
    assert.deepStrictEqual(fast, z.data, `${kind} ${what}: the fast check answers other values than zod`);
    assert.equal(JSON.stringify(fast), JSON.stringify(z.data), `${kind} ${what}: other key order`);
  }
  return true;
}

describe('fast check of the event contract', () => {
  test('accepts every valid record of every kind, answering what zod answers', () => {
    for (const kind of Object.keys(VALID) as RecordKind[]) {
      for (const [i, r] of VALID[kind].entries()) {
        assert.ok(agree(kind, r, `valid ${i}`), `${kind} valid ${i} is refused by zod`);
        assert.notEqual(fastCheckOf(kind)(r), undefined, `${kind} valid ${i} is left to zod`);
        // Another key order: zod's output order, so two copies of a record stay duplicates.
        const reversed = Object.fromEntries(Object.entries(r).reverse());
        assert.deepStrictEqual(fastCheckOf(kind)(reversed), RECORD_SCHEMAS[kind].parse(reversed));
      }
    }
  });

  test('refuses every record zod refuses, over each field deleted, replaced or added', () => {
    let refused = 0;
    let accepted = 0;
    for (const kind of Object.keys(VALID) as RecordKind[]) {
      for (const base of VALID[kind]) {
        for (const [i, m] of mutations(base).entries()) {
          if (agree(kind, m, `mutation ${i}`)) accepted++;
          else refused++;
        }
      }
    }
    // Both sides are exercised: thousands of refusals, and mutations that stay valid.
    assert.ok(refused > 5000, `only ${refused} refused`);
    assert.ok(accepted > 100, `only ${accepted} accepted`);
  });

  test('the bad records of the contract tests are refused by the fast check', () => {
    const bad: Array<[RecordKind, unknown]> = [
      ['inference', inference({ confidence: NaN })],
      ['inference', inference({ latencyMs: Infinity })],
      ['inference', inference({ upload: { tier: 's', inclusionProbability: 0 } })],
      ['inference', inference({ prediction: 1.5 })],
      ['inference', inference({ unit: 'WVWZZZ1JZXW000001' })],
      ['inference', inference({ phase: 'shadow', rolloutId: 'r' })],
      ['inference', inference({ shadow: SHADOW })],
      ['inference', inference({ arm: 'candidate' })],
      ['inference', inference({ phase: 'canary' })],
      ['inference', inference({ inputRef: '/etc/passwd' })],
      ['inference', inference({ inputRef: 'a/../b' })],
      ['inference', inference({ cohort: 'constructor' })],
      ['inference', inference({ schema: 'fleetgate/v2' })],
      ['label', label({ labeler: 'a\nb' })],
      ['label', label({ labeler: '' })],
      ['label', label({ label: 70000 })],
      ['outcome', outcome({ outcome: 'failed' })],
      ['upload', uploadReport({ at: Date.UTC(2025, 0, 1) })],
      ['upload', uploadReport({ priority: 121 })],
      ['upload', uploadReport({ disagreements: 10 })],
      ['upload', uploadReport({ uploaded: 121 })],
      ['upload', uploadReport({ evaluated: 2 ** 31 })],
      ['upload', uploadReport({ rolloutId: null })],
    ];
    for (const [kind, input] of bad) {
      assert.equal(fastCheckOf(kind)(input), undefined, `${kind}: ${JSON.stringify(input)}`);
      assert.ok(!RECORD_SCHEMAS[kind].safeParse(input).success);
    }
  });

  test('validateBatch: the same records and problems whichever path read them', () => {
    const r = inference();
    const reordered = Object.fromEntries(Object.entries(r).reverse());
    // zod reads the second (an optional field holding undefined), the fast check the others.
    const viaZod = { ...r, inputRef: undefined };
    const ok = validateBatch('inference', 'demo', [r, reordered, viaZod], 'line');
    assert.ok(ok.ok);
    assert.equal(ok.records.length, 3);
    assert.deepStrictEqual(ok.records[0], ok.records[1]);
    const bad = validateBatch(
      'inference',
      'demo',
      [r, inference({ prediction: 2 }), inference({ fleet: 'other', eventId: 'b1-2' })],
      'line',
    );
    assert.ok(!bad.ok);
    assert.deepEqual(
      bad.problems.map((p) => [p.line, p.field]),
      [
        [2, 'eventId'],
        [3, 'fleet'],
      ],
    );
  });
});

/**
 * The input schemas: every refusal names the path, the value and what is allowed; defaults are filled;
 * the example policies and fleets are valid.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import YAML from 'yaml';
import {
  FleetManifest,
  Policy,
  RolloutRequest,
  formatIssues,
  parseOrThrow,
  InvalidInputError,
} from '../../policies/schema';
import { formatDuration, parseDuration } from '../../policies/duration';

const ROOT = resolve(__dirname, '..', '..');
const load = (f: string): unknown => YAML.parse(readFileSync(join(ROOT, f), 'utf8'));

void test('the example policies and fleets are valid', () => {
  for (const f of [
    'examples/demo-policy.yaml',
    'examples/week-policy.yaml',
    'test/fixtures/policy-week.yaml',
  ]) {
    assert.ok(Policy.safeParse(load(f)).success, f);
  }
  for (const f of ['sim/fleets/demo.yaml', 'test/fixtures/fleet.yaml', 'test/fixtures/fleet-large.yaml']) {
    assert.ok(FleetManifest.safeParse(load(f)).success, f);
  }
});

void test('defaults are filled in', () => {
  const p = Policy.parse(load('examples/week-policy.yaml'));
  assert.deepEqual(p.bench, { goldenInputs: 256, repeats: 3 });
  assert.equal(p.analysis.maxExtraLooks, 2);
  assert.equal(p.waves[0]!.looks, 3);
  assert.equal(p.analysis.metrics[0]!.harmThreshold, 0);
});

const base = () => load('examples/demo-policy.yaml') as Record<string, unknown>;
const cases: {
  name: string;
  edit: (p: Record<string, unknown>) => void;
  path: string;
  got: string;
  says: RegExp;
}[] = [
  {
    name: 'waves that do not grow',
    edit: (p) => ((p.waves as { percent: number }[])[1]!.percent = 5),
    path: 'waves.1.percent',
    got: '5',
    says: /waves must grow/,
  },
  {
    name: 'a duration without a unit',
    edit: (p) => ((p.waves as { hold: unknown }[])[0]!.hold = '12 seconds'),
    path: 'waves.0.hold',
    got: '"12 seconds"',
    says: /a duration such as/,
  },
  {
    name: 'a share above 1',
    edit: (p) => ((p.shadow as { share: number }).share = 20),
    path: 'shadow.share',
    got: '20',
    says: /<=1|less than or equal to 1|too big/i,
  },
  {
    name: 'shadow budget checks so frequent they would be thousands of windows',
    edit: (p) => ((p.shadow as { checkEvery: string }).checkEvery = '1ms'),
    path: 'shadow.checkEvery',
    got: '"1ms"',
    says: /splits the .* shadow into \d+ windows; at most 100: use at least \d+ ms/,
  },
  {
    name: 'an unknown metric',
    edit: (p) => ((p.analysis as { metrics: { name: string }[] }).metrics[0]!.name = 'recall'),
    path: 'analysis.metrics.0.name',
    got: '"recall"',
    says: /error_rate|latency_ms/,
  },
  {
    name: 'a misspelt key',
    edit: (p) => ((p.labelWait as Record<string, unknown>).coverag = 0.9),
    path: 'labelWait',
    got: '',
    says: /coverag/,
  },
  {
    name: 'a missing section',
    edit: (p) => delete p.labelWait,
    path: 'labelWait',
    got: 'missing',
    says: /expected object/,
  },
];

for (const c of cases) {
  void test(`refused: ${c.name}`, () => {
    const p = base();
    c.edit(p);
    const r = Policy.safeParse(p);
    assert.ok(!r.success);
    const text = formatIssues(r.error, p, 'policy');
    const line = text.split('\n').find((l) => l.startsWith(`policy.${c.path}:`));
    assert.ok(line, `a line for policy.${c.path} in:\n${text}`);
    assert.match(line, c.says);
    if (c.got) assert.ok(line.includes(`(got ${c.got})`), line);
  });
}

void test('a rollout request checks the policy inside it with full paths', () => {
  const policy = base();
  (policy.waves as { percent: number }[])[2]!.percent = 0;
  const req = {
    rolloutId: 'bad id!',
    candidate: { pack: 'models/x' },
    fleet: { manifest: 'f.yaml' },
    policy,
  };
  assert.throws(
    () => parseOrThrow(RolloutRequest, req, 'rollout request'),
    (e: Error) =>
      e instanceof InvalidInputError &&
      /rolloutId: letters, digits/.test(e.message) &&
      /policy\.waves\.2\.percent: .*\(got 0\)/.test(e.message),
  );
});

void test('a fleet naming an undeclared SKU is refused at that cohort', () => {
  const f = load('test/fixtures/fleet.yaml') as { cohorts: { sku: string }[] };
  f.cohorts[1]!.sku = 'hw9';
  const r = FleetManifest.safeParse(f);
  assert.ok(!r.success);
  assert.match(formatIssues(r.error, f), /^cohorts\.1\.sku: unknown SKU "hw9"; declared: hw3, hw4/m);
});

void test('durations', () => {
  const table: [string | number, number | undefined][] = [
    ['250ms', 250],
    ['10s', 10_000],
    ['1.5m', 90_000],
    ['6h', 21_600_000],
    ['2d', 172_800_000],
    [42, 42],
    ['6 h', undefined],
    ['6H', undefined],
    ['-1s', undefined],
    [-5, undefined],
  ];
  for (const [input, ms] of table) assert.equal(parseDuration(input), ms, String(input));
  assert.equal(formatDuration(3_600_000), '1h');
  assert.equal(formatDuration(90_000), '90s');
  assert.equal(formatDuration(1500), '1.5s');
});

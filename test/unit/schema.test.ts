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
  policyWarnings,
} from '../../policies/schema';
import { formatDuration, parseDuration } from '../../policies/duration';
import { ServiceManifest } from '../../policies/service-schema';

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
    name: 'a 100-year shadow',
    edit: (p) => ((p.shadow as { duration: string }).duration = '99999999999d'),
    path: 'shadow.duration',
    got: '"99999999999d"',
    says: /a shadow may last at most 90d: shorten it/,
  },
  {
    name: 'a wave hold of 0',
    edit: (p) => ((p.waves as { hold: unknown }[])[0]!.hold = 0),
    path: 'waves.0.hold',
    got: '0',
    says: /a wave hold of 0 cannot work: give a duration above 0 and at most 90d/,
  },
  {
    name: 'a gate timeout of "0s"',
    edit: (p) => ((p.waves as { approval: { timeout: string } }[])[1]!.approval.timeout = '0s'),
    path: 'waves.1.approval.timeout',
    got: '"0s"',
    says: /a gate timeout of 0 cannot work/,
  },
  {
    name: 'an escalation timeout of a year',
    edit: (p) => ((p.analysis as Record<string, unknown>).escalation = { timeout: '365d' }),
    path: 'analysis.escalation.timeout',
    got: '"365d"',
    says: /a gate timeout may last at most 30d/,
  },
  {
    name: 'a label-wait poll of 0 and a timeout of 91 days',
    edit: (p) => Object.assign(p.labelWait as object, { poll: '0ms', timeout: '91d' }),
    path: 'labelWait.poll',
    got: '"0ms"',
    says: /poll of 0 cannot work/,
  },
  {
    name: 'a label-wait timeout of 91 days',
    edit: (p) => ((p.labelWait as { timeout: string }).timeout = '91d'),
    path: 'labelWait.timeout',
    got: '"91d"',
    says: /timeout may last at most 90d/,
  },
  {
    name: 'a maturity of 0',
    edit: (p) => ((p.labelWait as { maturity: number }).maturity = 0),
    path: 'labelWait.maturity',
    got: '0',
    says: /leave maturity out for 0/,
  },
  {
    name: 'a shadow budget check of 0',
    edit: (p) => ((p.shadow as { checkEvery: string }).checkEvery = '0s'),
    path: 'shadow.checkEvery',
    got: '"0s"',
    says: /budget check interval of 0 cannot work/,
  },
  {
    name: 'a gate needing 3 approvals from 2 reviewers',
    edit: (p) => ((p.waves as { approval: { required: number } }[])[1]!.approval.required = 3),
    path: 'waves.1.approval.required',
    got: '3',
    says: /gate "wave-2" needs 3 approvals from different reviewers but policy\.reviewers names only 2 \(alice, bob\); name at least 3 reviewers or lower required to 2/,
  },
  {
    name: 'a gate with no reviewers at all',
    edit: (p) => (p.reviewers = []),
    path: 'waves.1.approval.required',
    got: '1',
    says: /gate "wave-2" needs 1 approval but policy\.reviewers names nobody, so it could never open.*name reviewers in policy\.reviewers or remove this approval/,
  },
  {
    name: 'a reviewer listed twice does not count twice',
    edit: (p) => {
      p.reviewers = ['alice', 'alice'];
      (p.waves as { approval: { required: number } }[])[1]!.approval.required = 2;
    },
    path: 'waves.1.approval.required',
    got: '2',
    says: /names only 1 \(alice\)/,
  },
  {
    name: 'a promotion gate above the reviewers',
    edit: (p) => (p.promotion = { approval: { gate: 'promote', required: 5 } }),
    path: 'promotion.approval.required',
    got: '5',
    says: /gate "promote" needs 5 approvals .* names only 2/,
  },
  {
    name: 'an escalation quorum above the reviewers',
    edit: (p) => ((p.analysis as Record<string, unknown>).escalation = { required: 3 }),
    path: 'analysis.escalation.required',
    got: '3',
    says: /gate "escalation" needs 3 approvals .* lower analysis\.escalation\.required to 2/,
  },
  {
    name: 'an escalation quorum set explicitly with no reviewers',
    edit: (p) => {
      p.reviewers = [];
      delete (p.waves as { approval?: unknown }[])[1]!.approval;
      (p.analysis as Record<string, unknown>).escalation = { required: 1 };
    },
    path: 'analysis.escalation.required',
    got: '1',
    says: /policy\.reviewers names nobody, so an escalation holds its cohorts at once.*remove analysis\.escalation\.required/,
  },
  {
    name: 'extra looks without end',
    edit: (p) => ((p.analysis as Record<string, unknown>).maxExtraLooks = 1_000_000),
    path: 'analysis.maxExtraLooks',
    got: '1000000',
    says: /<=50|too big/i,
  },
  {
    name: 'a reviewer name of 200 characters',
    edit: (p) => (p.reviewers = ['a'.repeat(200)]),
    path: 'reviewers.0',
    got: '',
    says: /at most 128 characters/,
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

void test('without reviewers and without an explicit escalation quorum, escalations hold at once: legal', () => {
  const p = base();
  p.reviewers = [];
  delete (p.waves as { approval?: unknown }[])[1]!.approval;
  const r = Policy.safeParse(p);
  assert.ok(r.success, r.success ? '' : formatIssues(r.error, p));
  assert.equal(r.data.analysis.escalation.required, 1);
});

void test("an explicit escalation quorum without reviewers is listed with the policy's other problems", () => {
  const p = base();
  p.reviewers = [];
  delete (p.waves as { approval?: unknown }[])[1]!.approval;
  (p.analysis as Record<string, unknown>).escalation = { required: 2 };
  (p.waves as { hold: unknown }[])[0]!.hold = '0s';
  const r = Policy.safeParse(p);
  assert.ok(!r.success);
  const text = formatIssues(r.error, p, 'policy');
  assert.match(text, /^policy\.waves\.0\.hold: a wave hold of 0/m);
  assert.match(text, /^policy\.analysis\.escalation\.required: .*names nobody/m);
});

const request = (policy: unknown, requestedBy: string) => ({
  rolloutId: 'r1',
  candidate: { pack: 'models/candidate-good' },
  fleet: { manifest: 'sim/fleets/demo.yaml' },
  policy,
  requestedBy,
});

void test('a gate that excludes its initiator needs its quorum among the other reviewers', () => {
  const p = base();
  Object.assign((p.waves as { approval: object }[])[1]!.approval, { required: 2, excludeInitiator: true });
  assert.ok(RolloutRequest.safeParse(request(p, 'carol')).success, 'carol is not a reviewer: alice and bob');
  const r = RolloutRequest.safeParse(request(p, 'alice'));
  assert.ok(!r.success);
  assert.match(
    formatIssues(r.error, request(p, 'alice')),
    /^policy\.waves\.1\.approval\.excludeInitiator: gate "wave-2" needs 2 approvals from different reviewers and excludes the rollout's initiator "alice" \(excludeInitiator: true\), but policy\.reviewers names only 1 other \(bob\); name another reviewer, lower required to 1, or have someone else start the rollout \(--requested-by\) \(got true\)$/m,
  );
  const e = base();
  e.reviewers = ['alice'];
  (e.analysis as Record<string, unknown>).escalation = { excludeInitiator: true };
  delete (e.waves as { approval?: unknown }[])[1]!.approval;
  const esc = RolloutRequest.safeParse(request(e, 'alice'));
  assert.ok(!esc.success);
  assert.match(formatIssues(esc.error, request(e, 'alice')), /gate "escalation" .* names only 0 others/);
});

void test('the initiator is a bounded name without control characters', () => {
  for (const by of ['a\nb', 'x'.repeat(129), 'ops\u202egnp.exe', 'a\u2066b']) {
    const r = RolloutRequest.safeParse(request(base(), by));
    assert.ok(!r.success, JSON.stringify(by));
    assert.match(formatIssues(r.error, request(base(), by)), /^requestedBy: /m);
  }
});

void test('legal but long durations are warned about, by path; the examples give no warning', () => {
  for (const f of ['examples/demo-policy.yaml', 'examples/week-policy.yaml']) {
    assert.deepEqual(policyWarnings(Policy.parse(load(f))), [], f);
  }
  const p = base();
  (p.shadow as { duration: string }).duration = '45d';
  (p.waves as { hold: unknown }[])[0]!.hold = 31 * 86_400_000;
  (p.waves as { approval: { timeout: string } }[])[1]!.approval.timeout = '20d';
  const w = policyWarnings(Policy.parse(p));
  assert.deepEqual(
    w.map((l) => l.split(':')[0]),
    ['policy.shadow.duration', 'policy.waves.0.hold', 'policy.waves.1.approval.timeout'],
  );
  assert.match(w[0]!, /a shadow of 45d is longer than 30d; legal \(at most 90d\)/);
  assert.match(w[1]!, /a wave hold of 31d/);
});

void test('a fleet declaring a cohort twice is refused at the second', () => {
  const f = load('test/fixtures/fleet.yaml') as { cohorts: { name: string }[] };
  f.cohorts[1]!.name = f.cohorts[0]!.name;
  const r = FleetManifest.safeParse(f);
  assert.ok(!r.success);
  assert.match(formatIssues(r.error, f), /^cohorts\.1\.name: cohort names must be unique/m);
});

void test('a fleet naming an undeclared SKU is refused at that cohort', () => {
  const f = load('test/fixtures/fleet.yaml') as { cohorts: { sku: string }[] };
  f.cohorts[1]!.sku = 'hw9';
  const r = FleetManifest.safeParse(f);
  assert.ok(!r.success);
  assert.match(formatIssues(r.error, f), /^cohorts\.1\.sku: unknown SKU "hw9"; declared: hw3, hw4/m);
});

void test('"constructor", the one cohort name an object inherits, is refused in fleets, policies and services', () => {
  const f = load('test/fixtures/fleet.yaml') as { cohorts: { name: string }[] };
  f.cohorts[1]!.name = 'constructor';
  const r = FleetManifest.safeParse(f);
  assert.ok(!r.success);
  assert.match(
    formatIssues(r.error, f),
    /^cohorts\.1\.name: "constructor" is a reserved name; choose another/m,
  );

  const p = load('examples/demo-policy.yaml') as { cohorts?: string[] };
  p.cohorts = ['hw3/eu', 'constructor'];
  const q = Policy.safeParse(p);
  assert.ok(!q.success);
  assert.match(formatIssues(q.error, p), /^cohorts\.1: "constructor" is a reserved name/m);
  // names that merely contain it are names like any other
  p.cohorts = ['constructor-eu', 'hw3/constructor'];
  assert.ok(Policy.safeParse(p).success);

  const svc = ServiceManifest.safeParse({
    kind: 'service',
    name: 'ranker',
    gateway: { url: 'http://127.0.0.1:8080' },
    cohorts: [{ name: 'constructor', replicas: 2, callersPerDay: 100 }],
  });
  assert.ok(!svc.success);
  assert.match(formatIssues(svc.error, {}), /cohorts\.0\.name: "constructor" is a reserved name/);
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

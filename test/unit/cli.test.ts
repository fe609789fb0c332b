/**
 * The fleetgate command without a server: the progress view's text, the client-side validation of a
 * policy and of a local fleet manifest (paths and values of every problem, exit code 2), its warnings,
 * and `--help` of the real executable.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import YAML from 'yaml';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { planFor, prepareRolloutRequest } from '../../cli/main';
import { ProgressView, renderResult, renderStatus, stripAnsi, truncateLine } from '../../cli/progress';
import type { DecisionLogEntry, RolloutStatus } from '../../workflows/definitions';

const ROOT = resolve(__dirname, '..', '..');
const ESC = '\u001b';

const nordicRollback: DecisionLogEntry = {
  seq: 9,
  at: '2025-01-01T12:00:40.000Z',
  phase: 'rollback',
  wave: 1,
  cohort: 'hw3/nordic',
  action: 'rollback',
  reason: 'error_rate harm',
};

const sample: RolloutStatus = {
  rolloutId: 'demo-20250101-120000',
  phase: 'canary',
  wave: 2,
  waves: 3,
  look: 1,
  candidate: { name: 'hazard-net', version: '1.1.0', digest: 'ab'.repeat(32) },
  cohorts: [
    {
      cohort: 'hw3/eu',
      state: 'canary',
      wave: 1,
      vehicles: 20,
      headline: 'error_rate Δ=-0.004 [-0.031, +0.012] Λ=0.3 < 40, upper +0.012 < margin 0.020 → noninferior',
    },
    { cohort: 'hw4/us', state: 'canary', wave: 1, vehicles: 20 },
    {
      cohort: 'hw3/nordic',
      state: 'rolled_back',
      wave: 1,
      vehicles: 0,
      headline: 'error_rate Δ=+0.084 [+0.041, +0.127] Λ=2.1e4 ≥ 40 → harm',
    },
  ],
  pendingGate: {
    gate: 'wave-2',
    wave: 2,
    required: 2,
    approvals: ['alice'],
    openedAt: '2025-01-01T12:01:00.000Z',
    deadline: '2025-01-01T12:11:00.000Z',
  },
  lastDecision: nordicRollback,
  recentDecisions: [nordicRollback],
  benches: [
    {
      sku: 'hw3',
      p95Ms: 1.234,
      p99Ms: 1.5,
      budgetMs: 5,
      deterministic: true,
      contractOk: true,
      passed: true,
    },
  ],
  simNow: '2025-01-01T20:00:00.000Z',
};

void test('renderStatus shows phases, wave and look, the gate, every cohort and the last decision', () => {
  const text = renderStatus(sample, { color: false });
  assert.ok(!text.includes(ESC), 'no control codes without color');
  assert.match(
    text,
    /✓ register {2}✓ bench {2}✓ shadow {2}▶ canary {2}· label-wait {2}· analysis {2}· promote/,
  );
  assert.match(text, /wave 2\/3 {2}look 1/);
  assert.match(text, /gate "wave-2" pending before wave 2: 1\/2 approval\(s\) \(alice\)/);
  for (const c of sample.cohorts) assert.ok(text.includes(c.cohort), `cohort ${c.cohort} shown`);
  assert.match(text, /hw3\/nordic\s+rolled_back\s+1\/3\s+0\s+error_rate Δ=\+0\.084 .* → harm/);
  assert.match(text, /last #9 rollback w1 hw3\/nordic rollback: error_rate harm/);
  assert.match(text, /hazard-net@1\.1\.0 \(abababababab\)/);
});

void test('an escalation gate shows the cohorts it holds and the evidence for each', () => {
  const text = renderStatus(
    {
      ...sample,
      pendingGate: {
        gate: 'escalation',
        kind: 'escalation',
        wave: 3,
        cohorts: ['hw3/eu'],
        evidence: ['hw3/eu: error_rate Δ=+0.004 [-0.010, +0.031] → inconclusive'],
        required: 1,
        approvals: [],
        openedAt: '2026-01-01T00:00:00.000Z',
        deadline: '2026-01-02T00:00:00.000Z',
      },
    },
    { color: false },
  );
  assert.match(text, /gate "escalation" pending for hw3\/eu \(escalated\): 0\/1 approval\(s\)/);
  assert.match(text, /evidence hw3\/eu: error_rate Δ=\+0\.004 .* → inconclusive/);
});

void test('renderStatus with color uses ANSI codes around the same text', () => {
  const colored = renderStatus(sample, { color: true });
  assert.ok(colored.includes(`${ESC}[`));
  assert.equal(stripAnsi(colored), renderStatus(sample, { color: false }));
});

void test('a finished rollout: marks up to where it stopped, and its outcome', () => {
  const rejected = renderStatus(
    {
      ...sample,
      phase: 'done',
      outcome: 'rejected',
      pendingGate: undefined,
      lastDecision: { seq: 4, at: sample.simNow, phase: 'shadow', action: 'rejected', reason: 'shadow gate' },
    },
    { color: false },
  );
  assert.match(rejected, /✓ bench {2}✗ shadow {2}· canary/);
  assert.match(rejected, /outcome rejected/);
  const completed = renderStatus(
    { ...sample, phase: 'done', outcome: 'completed', pendingGate: undefined },
    { color: false },
  );
  assert.match(completed, /✓ analysis {2}✓ promote/);
  const result = renderResult(
    {
      rolloutId: sample.rolloutId,
      outcome: 'completed',
      reason: 'promoted: hw3/eu',
      cohorts: sample.cohorts,
      reportPath: 'r.json',
    },
    { color: false },
  );
  assert.match(result, /^outcome completed: promoted: hw3\/eu/);
  assert.match(result, /hw3\/nordic\s+rolled_back\s+error_rate Δ=\+0\.084/);
  assert.match(result, /report r\.json/);
});

void test('the view prints lines, not redraws, when the output is not a terminal', () => {
  let written = '';
  const view = new ProgressView({ write: (s: string) => (written += s), isTTY: false });
  view.update(sample);
  view.update(sample);
  const later = (seq: number) => ({ ...sample.lastDecision!, seq, reason: `later ${seq}` });
  view.update({ ...sample, lastDecision: later(14), recentDecisions: [later(12), later(13), later(14)] });
  assert.ok(!written.includes(ESC));
  assert.equal(written.match(/^#9 /gm)?.length, 1, 'each decision once');
  assert.match(written, /^\(2 earlier decision\(s\) are in the report\)$/m);
  assert.match(written, /^#12 .*later 12\n#13 .*later 13\n#14 .*later 14$/m);
  assert.equal(
    written.match(/^ {2}hw3\/nordic: rolled_back, wave 1\/3, 0 on candidate: error_rate .* → harm$/gm)
      ?.length,
    1,
  );
  assert.match(written, /^phase canary wave 2\/3$/m);
});

void test('on a terminal the view redraws in place within the width', () => {
  let written = '';
  const view = new ProgressView(
    { write: (s: string) => (written += s), isTTY: true, columns: 40 },
    { color: false },
  );
  view.update(sample);
  const lines = renderStatus(sample, { color: false }).split('\n').length;
  view.update(sample);
  assert.ok(!written.includes(`${ESC}[`), 'the same status is not drawn again');
  view.update({ ...sample, look: 2 });
  assert.ok(written.includes(`${ESC}[${lines}A\r${ESC}[0J`));
  for (const l of written.split('\n'))
    assert.ok([...stripAnsi(l).replace('\r', '')].length <= 40, `short line: ${l}`);
  assert.equal(truncateLine('abcdef', 4), 'abc…');
});

void test('client-side validation names the path and the value of every problem', () => {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-cli-'));
  try {
    const file = join(dir, 'bad.yaml');
    writeFileSync(
      file,
      [
        'apiVersion: fleetgate/v1',
        'kind: RolloutPolicy',
        'name: bad',
        'shadow: { share: 0.2, duration: 5 minutes, maxDisagreement: 0.3 }',
        'waves: [{percent: 50, hold: 1h}, {percent: 10, hold: 1h}]',
        'labelWait: { coverage: 0.9, timeout: 1h }',
        'analysis: { metrics: [{ name: error_rate, kind: binary, margin: 0.02 }] }',
        '',
      ].join('\n'),
    );
    const check = prepareRolloutRequest({ policy: file, candidate: 'models/candidate-good' });
    assert.equal(check.ok, false);
    if (check.ok) return;
    const waves = check.problems.find((l) => l.startsWith('policy.waves.1.percent:'));
    assert.ok(waves, check.problems.join('\n'));
    assert.match(waves, /10 is not above the previous wave's 50 \(got 10\)$/);
    const duration = check.problems.find((l) => l.startsWith('policy.shadow.duration:'));
    assert.ok(duration, check.problems.join('\n'));
    assert.match(duration, /\(got "5 minutes"\)$/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

void test('a valid policy becomes the whole rollout request, defaults filled in', () => {
  const check = prepareRolloutRequest({
    policy: join(ROOT, 'examples', 'demo-policy.yaml'),
    candidate: 'models/candidate-good/',
    requestedBy: 'carol',
    now: new Date(2025, 0, 2, 3, 4, 5),
  });
  assert.ok(check.ok, check.ok ? '' : check.problems.join('\n'));
  assert.equal(check.request.rolloutId, 'demo-candidate-good-20250102030405');
  assert.equal(check.request.fleet.manifest, 'sim/fleets/demo.yaml');
  assert.equal(check.request.fleet.timeScale, 1);
  assert.equal(check.request.requestedBy, 'carol');
  assert.equal(check.request.policy.waves[1]?.approval?.gate, 'wave-2');
});

void test('a missing policy file is one problem, not an exception', () => {
  const check = prepareRolloutRequest({
    policy: join(tmpdir(), 'fleetgate-no-such-policy.yaml'),
    candidate: 'x',
  });
  assert.deepEqual(check, { ok: false, problems: ['the file does not exist'] });
});

void test('fleetgate --help prints the usage and exits 0', () => {
  const r = spawnSync(process.execPath, [join(ROOT, 'bin', 'fleetgate.js'), '--help'], {
    encoding: 'utf8',
    cwd: ROOT,
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^Usage: fleetgate <command>/m);
  for (const cmd of [
    'demo',
    'rollout start',
    'rollout request',
    'status',
    'approve',
    'reject',
    'abort',
    'worker',
    'server',
    'fleet init',
  ]) {
    assert.ok(r.stdout.includes(cmd), `mentions ${cmd}`);
  }
});

void test('a reader that closes the pipe early ends the command quietly, exit 0', async () => {
  const child = spawn(process.execPath, [join(ROOT, 'bin', 'fleetgate.js'), '--help'], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // Like `fleetgate --help | head -0`: the reading end is gone before the first line is written.
  child.stdout.destroy();
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
  assert.equal(code, 0, stderr);
  assert.doesNotMatch(stderr, /EPIPE|Error/);
});

void test('an unknown command exits 2 with one line', () => {
  const r = spawnSync(process.execPath, [join(ROOT, 'bin', 'fleetgate.js'), 'frobnicate'], {
    encoding: 'utf8',
    cwd: ROOT,
  });
  assert.equal(r.status, 2);
  assert.equal(r.stderr.trim().split('\n').length, 1);
});

void test('rollout plan: the demo policy reaches its own margin; a bad policy names its problems', () => {
  const good = planFor(join(ROOT, 'examples/demo-policy.yaml'), join(ROOT, 'sim/fleets/demo.yaml'), 600);
  assert.ok(good.ok);
  assert.deepEqual(good.plan.warnings, []);
  assert.deepEqual(
    good.plan.cohorts.map((c) => c.cohort),
    ['hw3/eu', 'hw4/us', 'hw3/nordic'],
  );
  const slow = planFor(join(ROOT, 'examples/demo-policy.yaml'), join(ROOT, 'sim/fleets/demo.yaml'), 60);
  assert.ok(slow.ok);
  for (const cohort of ['hw3/eu', 'hw4/us', 'hw3/nordic']) {
    assert.ok(
      slow.plan.warnings.some((w) => w.startsWith(`${cohort}: cannot detect the error_rate margin`)),
      `ten times less driving cannot detect the margin in ${cohort}`,
    );
  }
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-plan-'));
  try {
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'apiVersion: fleetgate/v1\nkind: RolloutPolicy\nname: x\nwaves: []\n');
    const r = planFor(bad, join(ROOT, 'sim/fleets/demo.yaml'));
    assert.ok(!r.ok);
    assert.ok(
      r.problems.some((l) => l.startsWith('policy.waves:')),
      r.problems.join('\n'),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** `fleetgate rollout request` run as a user runs it (no server needed): exit code, stdout, stderr. */
function request(args: string[]) {
  return spawnSync(
    process.execPath,
    [
      join(ROOT, 'bin', 'fleetgate.js'),
      'rollout',
      'request',
      '--candidate',
      'models/candidate-good',
      ...args,
    ],
    { encoding: 'utf8', cwd: ROOT },
  );
}

/** The demo policy, edited, in a file of `dir`. */
function policyFile(dir: string, edit: (p: Record<string, unknown>) => void): string {
  const p = YAML.parse(readFileSync(join(ROOT, 'examples/demo-policy.yaml'), 'utf8')) as Record<
    string,
    unknown
  >;
  edit(p);
  const file = join(dir, 'policy.yaml');
  writeFileSync(file, YAML.stringify(p));
  return file;
}

void test('rollout request: an invalid local fleet manifest is refused before anything is sent, exit 2', () => {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-manifest-'));
  try {
    const fleet = YAML.parse(readFileSync(join(ROOT, 'sim/fleets/demo.yaml'), 'utf8')) as {
      cohorts: { vehicles: number; sku: string }[];
    };
    fleet.cohorts[0]!.vehicles = 0;
    fleet.cohorts[1]!.sku = 'hw9';
    const bad = join(dir, 'fleet.yaml');
    writeFileSync(bad, YAML.stringify(fleet));
    const r = request(['--policy', 'examples/demo-policy.yaml', '--fleet', bad]);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stdout, '', 'no request printed');
    assert.match(r.stderr, new RegExp(`^fleetgate: invalid fleet manifest ${bad}:$`, 'm'));
    assert.match(r.stderr, /^ {2}cohorts\.0\.vehicles: .*\(got 0\)$/m);
    assert.match(r.stderr, /^ {2}cohorts\.1\.sku: unknown SKU "hw9"; declared: hw3, hw4$/m);

    const service = YAML.parse(readFileSync(join(ROOT, 'examples/service/ranker.yaml'), 'utf8')) as {
      gateway: { url: string };
    };
    service.gateway.url = 'not a url';
    const badService = join(dir, 'service.yaml');
    writeFileSync(badService, YAML.stringify(service));
    const s = request(['--policy', 'examples/service/policy.yaml', '--fleet', badService]);
    assert.equal(s.status, 2, s.stderr);
    assert.match(
      s.stderr,
      /^ {2}gateway\.url: the gateway's base URL, such as "http:\/\/127\.0\.0\.1:8080"$/m,
    );
    assert.doesNotMatch(s.stderr, /not a url/, 'the text of the file is not quoted');

    const ok = request([
      '--policy',
      'examples/service/policy.yaml',
      '--fleet',
      'examples/service/ranker.yaml',
    ]);
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(JSON.parse(ok.stdout).fleet.manifest, 'examples/service/ranker.yaml');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

void test('rollout request: a cohort the local fleet does not declare is refused, exit 2', () => {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-cohorts-'));
  try {
    const file = policyFile(dir, (p) => (p.cohorts = ['hw3/eu', 'hw9/mars']));
    const r = request(['--policy', file]);
    assert.equal(r.status, 2, r.stderr);
    assert.match(
      r.stderr,
      /^ {2}policy\.cohorts\.1: unknown cohort "hw9\/mars": fleet "demo" \(sim\/fleets\/demo\.yaml\) declares hw3\/eu, hw4\/us, hw3\/nordic; .*\(got "hw9\/mars"\)$/m,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

void test('rollout request: a quorum nobody can meet is refused with the gate, the numbers and the fix, exit 2', () => {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-quorum-'));
  try {
    const file = policyFile(dir, (p) => {
      const gate = (p.waves as { approval?: Record<string, unknown> }[])[1]!.approval!;
      Object.assign(gate, { required: 2, excludeInitiator: true });
    });
    const r = request(['--policy', file, '--requested-by', 'alice']);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`^fleetgate: invalid policy ${file}:$`, 'm'));
    assert.match(
      r.stderr,
      /^ {2}policy\.waves\.1\.approval\.excludeInitiator: gate "wave-2" needs 2 approvals .* names only 1 other \(bob\); .*\(got true\)$/m,
    );
    assert.equal(request(['--policy', file, '--requested-by', 'carol']).status, 0, 'carol may start it');

    const three = policyFile(dir, (p) => {
      (p.waves as { approval?: Record<string, unknown> }[])[1]!.approval!.required = 3;
    });
    const t = request(['--policy', three]);
    assert.equal(t.status, 2, t.stderr);
    assert.match(
      t.stderr,
      /policy\.waves\.1\.approval\.required: gate "wave-2" needs 3 approvals .*names only 2 \(alice, bob\); name at least 3 reviewers or lower required to 2 \(got 3\)/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

void test('rollout request and plan: a legal but long duration is a warning on stderr, exit 0', () => {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-warn-'));
  try {
    const file = policyFile(dir, (p) => ((p.shadow as { duration: string }).duration = '45d'));
    const r = request(['--policy', file]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(
      r.stderr,
      /^fleetgate: warning: policy\.shadow\.duration: a shadow of 45d is longer than 30d/m,
    );
    assert.ok(JSON.parse(r.stdout).policy, 'the request is printed');
    const plan = spawnSync(
      process.execPath,
      [
        join(ROOT, 'bin', 'fleetgate.js'),
        'rollout',
        'plan',
        '--policy',
        file,
        '--json',
        '--time-scale',
        '600',
      ],
      { encoding: 'utf8', cwd: ROOT },
    );
    assert.equal(plan.status, 0, plan.stderr);
    assert.match(plan.stderr, /^fleetgate: warning: policy\.shadow\.duration: /m);
    assert.ok(JSON.parse(plan.stdout).cohorts, 'stdout stays JSON');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

void test('rollout request: a pack or manifest outside this directory is a warning that the worker will refuse it, exit 0', () => {
  const r = request(['--policy', 'examples/demo-policy.yaml', '--fleet', '../elsewhere/fleet.yaml']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(
    r.stderr,
    /^fleetgate: warning: fleet manifest \.\.\/elsewhere\/fleet\.yaml is outside this directory; a worker reads packs and manifests only inside the directory it runs in and refuses this path/m,
  );
  const inside = request(['--policy', 'examples/demo-policy.yaml']);
  assert.equal(inside.status, 0, inside.stderr);
  assert.doesNotMatch(inside.stderr, /outside this directory/);
});

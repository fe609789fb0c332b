/**
 * `fleetgate simulate` against the committed scenarios: the real rolloutWorkflow with the real
 * activities on the time-skipping server, each cohort's decision set beside the ground truth of the
 * offline evaluation. One test runs the real `fleetgate simulate --json` process; the others call the
 * function the command calls, on one shared test server.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { simulate, startTestServer, type SimulationReport, type SimulationRun } from '../../cli/simulate';

const ROOT = resolve(__dirname, '..', '..');
const scenario = (name: string) => join(ROOT, 'scenarios', `${name}.yaml`);
/** Shadow (1d) and the three waves of policy-14d (2d + 4d + 6d): the earliest a promotion can come. */
const FULL_ROLLOUT_HOURS = 24 * 13;

let env: TestWorkflowEnvironment;

before(async () => {
  env = await startTestServer();
});

after(async () => {
  await env?.teardown();
});

function byCohort(r: SimulationRun): Record<string, string> {
  return Object.fromEntries(r.cohorts.map((c) => [c.cohort, c.decision]));
}

function truthOf(r: SimulationReport): Record<string, string> {
  return Object.fromEntries(r.truth.map((t) => [t.cohort, t.truth]));
}

/** Every decision lies within the simulated rollout, and the rollout took about two weeks. */
function assertTimes(r: SimulationRun): void {
  const start = Date.parse(r.simulatedStart);
  const end = Date.parse(r.simulatedEnd);
  for (const c of r.cohorts) {
    const at = Date.parse(c.decidedAt);
    assert.ok(at >= start && at <= end, `${c.cohort} decided at ${c.decidedAt}, outside the rollout`);
    assert.equal(c.decidedAfterHours, Math.round(((at - start) / 3_600_000) * 100) / 100);
    if (c.decision === 'promoted') assert.ok(c.decidedAfterHours >= FULL_ROLLOUT_HOURS, JSON.stringify(c));
  }
}

describe('fleetgate simulate (time-skipping)', () => {
  test('better, through the fleetgate process: promoted in every cohort; the truth says improved', async () => {
    const started = Date.now();
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [join(ROOT, 'bin', 'fleetgate.js'), 'simulate', '--scenario', 'scenarios/better.yaml', '--json'],
      { cwd: ROOT, maxBuffer: 64 * 1024 * 1024, timeout: 300_000 },
    );
    const r = JSON.parse(jsonOf(stdout)) as SimulationReport;
    assert.equal(r.outcome, 'completed');
    assert.deepEqual(byCohort(r), { 'hw3/eu': 'promoted', 'hw4/us': 'promoted', 'hw3/nordic': 'promoted' });
    assert.deepEqual(truthOf(r), { 'hw3/eu': 'improved', 'hw4/us': 'improved', 'hw3/nordic': 'improved' });
    for (const c of r.cohorts) {
      assert.equal(c.truth, 'improved');
      assert.match(c.decidedAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      assert.equal(c.check, 'ok');
    }
    assertTimes(r);
    // A two-week rollout: at least 13 simulated days. On an idle two-core machine it takes 15-20 s of
    // wall time; the bound leaves room for the other test files that npm test runs beside it.
    assert.ok(r.simulatedHours >= FULL_ROLLOUT_HOURS, `${r.simulatedHours} h`);
    assert.ok(r.wallMs < 120_000, `${r.wallMs} ms`);
    console.log(
      `better: ${r.simulatedHours} simulated hours in ${r.wallMs} ms (process: ${Date.now() - started} ms)`,
    );
  });

  test('night-regression: only the night-heavy cohort is rolled back, the others promoted', async () => {
    const r = await simulate(scenario('night-regression'), { env });
    assert.equal(r.outcome, 'completed');
    assert.deepEqual(truthOf(r), { 'hw3/eu': 'improved', 'hw4/us': 'improved', 'hw3/nordic': 'regressed' });
    assert.deepEqual(byCohort(r), {
      'hw3/eu': 'promoted',
      'hw4/us': 'promoted',
      'hw3/nordic': 'rolled_back',
    });
    const nordic = r.cohorts.find((c) => c.cohort === 'hw3/nordic')!;
    assert.equal(nordic.cause, 'analysis');
    assert.equal(nordic.check, 'ok');
    assert.match(nordic.headline ?? '', /error_rate/);
    assert.ok(nordic.decidedAfterHours < FULL_ROLLOUT_HOURS, 'rolled back during the canary');
    assertTimes(r);
  });

  test('aa, its own seed: identical models, no cohort rolled back; the truth is neutral everywhere (50 seeds: npm run test:long)', async () => {
    const r = await simulate(scenario('aa'), { env });
    assert.equal(r.outcome, 'completed', r.reason);
    assert.deepEqual(truthOf(r), { 'hw3/eu': 'neutral', 'hw4/us': 'neutral', 'hw3/nordic': 'neutral' });
    for (const c of r.cohorts) {
      assert.notEqual(c.decision, 'rolled_back', JSON.stringify(c));
      assert.equal(c.cause, 'analysis', 'the run reaches the canary analysis');
    }
  });

  test('sku-latency: the slowed SKU is stopped at the bench (or canary), the other SKU promoted', async () => {
    const r = await simulate(scenario('sku-latency'), { env });
    assert.equal(r.outcome, 'completed');
    assert.deepEqual(truthOf(r), { 'hw3/eu': 'improved', 'hw4/us': 'regressed', 'hw3/nordic': 'improved' });
    const d = byCohort(r);
    assert.equal(d['hw3/eu'], 'promoted');
    assert.equal(d['hw3/nordic'], 'promoted');
    const hw4 = r.cohorts.find((c) => c.cohort === 'hw4/us')!;
    assert.ok(
      (hw4.decision === 'rejected' && ['bench', 'shadow'].includes(hw4.cause)) ||
        (hw4.decision === 'rolled_back' && hw4.cause === 'analysis'),
      JSON.stringify(hw4),
    );
    assert.equal(hw4.check, 'ok');
    assertTimes(r);
  });

  test('ota-failures: the failing SKU has its wave aborted and reverted, the others go on', async () => {
    const r = await simulate(scenario('ota-failures'), { env });
    assert.equal(r.outcome, 'completed');
    assert.deepEqual(byCohort(r), {
      'hw3/eu': 'promoted',
      'hw4/us': 'rolled_back',
      'hw3/nordic': 'promoted',
    });
    const hw4 = r.cohorts.find((c) => c.cohort === 'hw4/us')!;
    assert.equal(hw4.cause, 'delivery');
    assert.match(hw4.headline ?? '', /installs failed/);
    // Decided at the first wave: after the day of shadow, long before the end.
    assert.ok(hw4.decidedAfterHours >= 24 && hw4.decidedAfterHours < 3 * 24, JSON.stringify(hw4));
    assert.equal(hw4.truth, 'improved', 'the model is fine; its delivery is not');
    assertTimes(r);
  });
});

/** The JSON document in the command's output (anything else printed before or after is ignored). */
function jsonOf(stdout: string): string {
  const lines = stdout.split('\n');
  const first = lines.indexOf('{');
  const last = lines.lastIndexOf('}');
  assert.ok(first >= 0 && last > first, `no JSON document in the output:\n${stdout.slice(0, 2000)}`);
  return lines.slice(first, last + 1).join('\n');
}

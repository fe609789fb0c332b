/**
 * The drift command's pure parts: the request it validates (errors naming flag, path and value), the
 * schedule it makes (overlap skip, catch-up window of one interval), the interval it accepts and the
 * table it prints.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import YAML from 'yaml';
import { driftRequest, driftScheduleOptions, everyMs, renderDriftTable, scheduleIdOf } from '../../cli/drift';
import { CliError, UsageError } from '../../cli/main';
import { loadPolicy } from '../support';

function withPolicy<T>(drift: unknown, fn: (file: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-drift-cli-'));
  try {
    const file = join(dir, 'policy.yaml');
    writeFileSync(file, YAML.stringify({ ...loadPolicy('examples/demo-policy.yaml'), drift }));
    return fn(file);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('drift request', () => {
  test('defaults: the demo fleet, its schedule id, the drift defaults left to the workflow', () => {
    const r = driftRequest({});
    assert.equal(r.scheduleId, 'drift-demo');
    assert.deepEqual(r.fleet, { manifest: 'sim/fleets/demo.yaml' });
    assert.deepEqual(r.policy, {});
    assert.equal(scheduleIdOf({ fleet: 'test/fixtures/fleet-drift.yaml' }), 'drift-fleet-drift');
  });
  test("a policy's drift section and cohorts; --cohorts overrides them", () => {
    withPolicy({ action: 'hold', psi: { warn: 0.05, drift: 0.2 } }, (file) => {
      const r = driftRequest({ policy: file });
      assert.deepEqual(r.policy, { action: 'hold', psi: { warn: 0.05, drift: 0.2 } });
      assert.equal(r.cohorts, undefined);
      assert.deepEqual(driftRequest({ policy: file, cohorts: 'hw3/eu, hw4/us' }).cohorts, [
        'hw3/eu',
        'hw4/us',
      ]);
    });
  });
  const refused: {
    name: string;
    run: () => unknown;
    error: typeof CliError | typeof UsageError;
    message: RegExp;
  }[] = [
    {
      name: 'thresholds in the wrong order',
      run: () => withPolicy({ js: { warn: 0.1, drift: 0.05 } }, (file) => driftRequest({ policy: file })),
      error: CliError,
      message:
        /policy\.drift\.js\.drift: the drift threshold must be above the warn threshold 0\.1.*\(got 0\.05\)/,
    },
    {
      name: 'a bad schedule id',
      run: () => driftRequest({ id: 'no spaces' }),
      error: CliError,
      message: /--id: letters, digits.*\(got "no spaces"\)/,
    },
    {
      name: 'a bad time scale',
      run: () => driftRequest({ timeScale: 'fast' }),
      error: UsageError,
      message: /--time-scale must be a positive number \(got "fast"\)/,
    },
    {
      name: 'an empty cohort list',
      run: () => driftRequest({ cohorts: ' , ' }),
      error: UsageError,
      message: /--cohorts needs at least one cohort name/,
    },
    {
      name: 'no interval',
      run: () => everyMs(undefined),
      error: UsageError,
      message: /needs --every, e\.g\. --every 1h/,
    },
    {
      name: 'too short an interval',
      run: () => everyMs('10s'),
      error: UsageError,
      message: /at least 1m.*\(got "10s"\)/,
    },
  ];
  for (const r of refused) {
    test(`refused: ${r.name}`, () => {
      assert.throws(r.run, (err: Error) => err instanceof r.error && r.message.test(err.message));
    });
  }
});

describe('drift schedule', () => {
  test('overlap skip, a catch-up window of one interval, the check workflow with the request', () => {
    const request = driftRequest({ id: 'nightly' });
    const o = driftScheduleOptions(request, everyMs('30m'), 'fleetgate');
    assert.equal(o.scheduleId, 'nightly');
    assert.deepEqual(o.spec, { intervals: [{ every: 1_800_000 }] });
    assert.deepEqual(o.policies, { overlap: 'SKIP', catchupWindow: 1_800_000, pauseOnFailure: false });
    assert.equal(o.action.workflowType, 'driftCheckWorkflow');
    assert.deepEqual(o.action.args, [request]);
    assert.equal(o.action.taskQueue, 'fleetgate');
  });
  test('the table: a row per cohort and feature, then the reason of each cohort not ok', () => {
    const text = renderDriftTable({
      cohorts: [
        {
          cohort: 'a',
          verdict: 'ok',
          reason: 'fine',
          features: [{ feature: 'camera0', verdict: 'ok', psi: 0.01, ks: 0.02, ksPValue: 0.5, js: 0.001 }],
        },
        {
          cohort: 'b',
          verdict: 'drift',
          reason: 'feature camera0 of cohort b: psi 0.3 ≥ drift threshold 0.25',
          features: [{ feature: 'camera0', verdict: 'drift', psi: 0.3, ks: 0.2, ksPValue: 1e-9, js: 0.06 }],
        },
      ],
    });
    const lines = text.split('\n');
    assert.match(lines[0]!, /^cohort\s+feature\s+psi\s+ks\s+ks p\s+js \(bits\)\s+verdict$/);
    assert.match(lines[1]!, /^a\s+camera0\s+0\.01\s+0\.02\s+0\.5\s+0\.001\s+ok$/);
    assert.match(lines[2]!, /^b\s+camera0\s+0\.3\s+0\.2\s+1\.00e-9\s+0\.06\s+DRIFT$/);
    assert.equal(lines[3], 'DRIFT: feature camera0 of cohort b: psi 0.3 ≥ drift threshold 0.25');
    assert.equal(lines.length, 4);
  });
});

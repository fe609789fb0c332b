/**
 * The long suite (`npm run test:long`, about 5 minutes on the 2-core host; `npm test` stays within its
 * 20 minutes without it): `fleetgate simulate` of the A/A scenario over 50 seeds, the real
 * rolloutWorkflow with the real activities on the time-skipping server. Its false rollbacks stay within
 * the policy's alpha.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { join, resolve } from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { simulateSeeds, startTestServer } from '../../cli/simulate';

const ROOT = resolve(__dirname, '..', '..');
const scenario = (name: string) => join(ROOT, 'scenarios', `${name}.yaml`);

let env: TestWorkflowEnvironment;

before(async () => {
  env = await startTestServer();
});

after(async () => {
  await env?.teardown();
});

test('A/A over 50 seeds: runs with any rollback at most alpha; the truth is neutral everywhere', async () => {
  const m = await simulateSeeds(scenario('aa'), { env, seeds: 50 });
  assert.deepEqual(
    m.truth.map((t) => t.truth),
    ['neutral', 'neutral', 'neutral'],
  );
  assert.equal(m.runs.length, 50);
  assert.deepEqual(
    m.seeds,
    Array.from({ length: 50 }, (_, i) => i + 1),
  );
  for (const r of m.runs) assert.equal(r.outcome, 'completed', `seed ${r.seed}: ${r.reason}`);
  // The scenario's own seed: no cohort rolled back.
  assert.equal(m.runs[0]!.seed, 1);
  assert.ok(!m.runs[0]!.cohorts.some((c) => c.decision === 'rolled_back'), JSON.stringify(m.runs[0]));
  // The test is live: the runs reach the canary analysis (nothing stops them before it).
  for (const r of m.runs) {
    for (const c of r.cohorts)
      assert.ok(['analysis'].includes(c.cause), `seed ${r.seed}: ${JSON.stringify(c)}`);
  }
  assert.ok(
    m.summary.rollbackShare <= m.summary.alpha,
    `${m.summary.runsWithRollback}/50 runs rolled back a cohort: ${JSON.stringify(m.summary.decisions)}`,
  );
  console.log(
    `A/A: ${m.summary.runsWithRollback}/50 runs with a rollback; ${JSON.stringify(m.summary.decisions)}; ${m.summary.wallMs} ms`,
  );
});

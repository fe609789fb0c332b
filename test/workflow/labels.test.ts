/**
 * The per-cohort label wait inside rolloutWorkflow, on the time-skipping server with the real
 * activities: a cohort whose labels cannot arrive in time is held at the label wait's timeout, with its
 * coverage in the decision log and its waves withdrawn, while the other cohorts are analysed and decided;
 * label requests keep to the policy's daily budget.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import type { RolloutResult } from '../../workflows/definitions';
import {
  loadPolicy,
  makeWorld,
  query,
  rolloutRequest,
  runningDigest,
  startRollout,
  timeSkippingServer,
  withWorker,
} from '../support';
import type { PolicyInput } from '../../policies/schema';

const server = timeSkippingServer();

const FLEET = 'test/fixtures/fleet-slow-labels-nordic.yaml';
const BUDGET = 6000;

interface Entry {
  phase: string;
  action: string;
  cohort?: string;
  reason: string;
}

/**
 * The week policy judged on latency only, so that the canary looks do not wait for labels; the label
 * wait still does: 90% coverage per cohort, requests younger than 12h counted once labeled, a budget.
 */
function policy(): PolicyInput {
  const p = loadPolicy('test/fixtures/policy-week.yaml');
  p.analysis!.metrics = [{ name: 'latency_ms', kind: 'continuous', margin: 0.5, harmThreshold: 0.5 }];
  p.labelWait = { coverage: 0.9, poll: '1h', timeout: '1d', maturity: '12h', dailyBudget: BUDGET };
  return p;
}

describe('per-cohort label wait in rolloutWorkflow (time-skipping)', () => {
  test('a cohort whose labels are too slow is held at the timeout; the others are decided', async () => {
    const world = await makeWorld(FLEET);
    try {
      const result: RolloutResult = await withWorker(server.env, server.bundle, world, async (tq) => {
        const handle = await startRollout(
          server.env,
          tq,
          rolloutRequest(`slowlabels`, 'models/candidate-good', policy(), FLEET),
        );
        return handle.result();
      });
      assert.equal(result.outcome, 'completed', result.reason);
      const byCohort = Object.fromEntries(result.cohorts.map((c) => [c.cohort, c]));
      assert.equal(byCohort['hw3/nordic']!.state, 'held', byCohort['hw3/nordic']!.headline);
      for (const c of ['hw3/eu', 'hw4/us']) {
        assert.equal(byCohort[c]!.state, 'promoted', `${c}: ${byCohort[c]!.headline}`);
      }

      const report = JSON.parse(readFileSync(result.reportPath!, 'utf8')) as {
        decisions: Entry[];
        candidate: { digest: string };
      };
      const timeout = report.decisions.find((d) => d.action === 'labels-timeout');
      assert.ok(timeout, 'the timeout is in the decision log');
      assert.match(
        timeout.reason,
        /^label wait timed out after 1d: hw3\/nordic 0\.0% \(0\/\d+.*\) below 90\.0%, held; hw3\/eu \d+\.\d% \(\d+\/\d+.*\), hw4\/us \d+\.\d% .* go on to the analysis$/,
      );
      const held = report.decisions.filter((d) => d.action === 'withdraw');
      assert.deepEqual(
        held.map((d) => d.cohort),
        ['hw3/nordic'],
      );
      assert.match(
        held[0]!.reason,
        /^label coverage of hw3\/nordic 0\.0% \(0\/\d+.*\) below labelWait\.coverage 90\.0% at the label wait's timeout \(1d\): held/,
      );
      // Held before the analysis: only the others were analysed and promoted.
      const analysed = report.decisions.filter((d) => d.phase === 'analysis' && d.cohort);
      assert.deepEqual([...new Set(analysed.map((d) => d.cohort))].sort(), ['hw3/eu', 'hw4/us']);
      const running = await runningDigest(world, report.candidate.digest);
      assert.equal(running['hw3/nordic'], undefined, 'nordic runs production again');
      assert.equal(running['hw3/eu'], 300);

      // Requests kept to the daily budget on every simulated day, and carry their tier and inclusion.
      const perDay = await query<{ n: number }>(
        world,
        `SELECT CAST(count(*) AS INTEGER) AS n FROM label_requests GROUP BY floor(requested_at_ms / 86400000)`,
      );
      assert.ok(perDay.length >= 2);
      for (const d of perDay) assert.ok(d.n <= BUDGET, `${d.n} requests in a day`);
      const reasons = await query<{ reason: string }>(world, `SELECT DISTINCT reason FROM label_requests`);
      assert.ok(reasons.length >= 3, JSON.stringify(reasons));
      const bad = await query<{ n: number }>(
        world,
        `SELECT CAST(count(*) AS INTEGER) AS n FROM label_requests WHERE NOT (inclusion > 0 AND inclusion <= 1)`,
      );
      assert.equal(bad[0]!.n, 0);
    } finally {
      await world.close();
    }
  });
});

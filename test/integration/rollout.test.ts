/**
 * A full rollout on a real Temporal dev server with the real activities, started the way an operator
 * without our CLI would: `temporal workflow start` with a JSON input, and an approval through
 * `temporal workflow update execute`. Then `temporal workflow list` must show it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { temporalCli } from '../../workers/tools';
import { statusQuery, type RolloutResult } from '../../workflows/definitions';
import { RolloutRequest } from '../../policies/schema';
import { makeWorld, rolloutRequest, runningDigest, type World } from '../support';
import { shortGatedPolicy, useDevServer, withDevWorker } from './dev-env';

const env = useDevServer('fleetgate-it-');

/**
 * Runs the Temporal CLI without blocking this process's event loop: the worker under test runs here
 * too, and the CLI's update waits for it.
 */
async function cli(args: string[]): Promise<string> {
  const { stdout } = await promisify(execFile)(temporalCli(), [...args, '--address', env.server.address], {
    encoding: 'utf8',
  });
  return stdout;
}

test('a rollout started with the Temporal CLI runs every phase on the dev server', async () => {
  const world: World = await makeWorld();
  await withDevWorker(env.server, world, 'it', async ({ client, taskQueue }) => {
    // This test follows the regression through every phase to its rollback in the canary, with the
    // shadow's class gates off (see shortGatedPolicy).
    const policy = shortGatedPolicy({ holds: ['6s', '6s', '6s'] });
    const id = `it-regress-${process.pid}`;
    // 7200x: a 3-second look covers six hours of driving, the test fleet's mean label delay.
    const request = RolloutRequest.parse(
      rolloutRequest(id, 'models/candidate-regress', policy, 'test/fixtures/fleet.yaml', 7200),
    );
    const file = join(env.tmp, 'request.json');
    writeFileSync(file, JSON.stringify(request));
    await cli([
      'workflow',
      'start',
      '--type',
      'rolloutWorkflow',
      '--task-queue',
      taskQueue,
      '--workflow-id',
      id,
      '--input-file',
      file,
    ]);

    const handle = client.workflow.getHandle(id);
    for (let i = 0; ; i++) {
      if ((await handle.query(statusQuery)).pendingGate) break;
      const { status } = await handle.describe();
      if (status.name !== 'RUNNING' || i > 600) {
        assert.fail(
          `no gate became pending (${status.name}): ${JSON.stringify(await handle.query(statusQuery))}`,
        );
      }
      await new Promise((r) => setTimeout(r, 250));
    }
    const out = await cli([
      'workflow',
      'update',
      'execute',
      '--name',
      'approve',
      '--workflow-id',
      id,
      '--input',
      JSON.stringify({ gate: 'wave-2', reviewer: 'alice', comment: 'looks fine' }),
    ]);
    assert.match(out, /alice/);

    const result = (await handle.result()) as RolloutResult;
    assert.equal(result.outcome, 'completed', result.reason);
    const states = Object.fromEntries(result.cohorts.map((c) => [c.cohort, c.state]));
    assert.equal(states['hw3/nordic'], 'rolled_back');
    const report = JSON.parse(readFileSync(result.reportPath!, 'utf8'));
    const phases = new Set(report.decisions.map((d: { phase: string }) => d.phase));
    for (const p of ['register', 'bench', 'shadow', 'canary', 'label-wait', 'rollback'])
      assert.ok(phases.has(p), `phase ${p} ran`);
    assert.equal((await runningDigest(world, report.candidate.digest))['hw3/nordic'] ?? 0, 0);

    const listed = await cli(['workflow', 'list', '--query', `WorkflowId = '${id}'`]);
    assert.match(listed, new RegExp(id));
    assert.match(listed, /Completed/);
  });
});

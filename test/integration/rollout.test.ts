/**
 * A full rollout on a real Temporal dev server with the real activities, started the way an operator
 * without our CLI would: `temporal workflow start` with a JSON input, and an approval through
 * `temporal workflow update execute`. Then `temporal workflow list` must show it.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { startDevServer, type DevServer } from '../../workers/dev-server';
import { temporalCli } from '../../workers/tools';
import { createFleetgateWorker, quietRuntime } from '../../workers/worker';
import { statusQuery } from '../../workflows/definitions';
import { RolloutRequest } from '../../policies/schema';
import {
  LONG_ONLY,
  loadPolicy,
  makeWorld,
  resultWithin,
  rolloutRequest,
  runningDigest,
  type World,
} from '../support';

let server: DevServer;
let tmp: string;

before(async () => {
  quietRuntime();
  tmp = mkdtempSync(join(tmpdir(), 'fleetgate-it-'));
  server = await startDevServer({ dbFile: join(tmp, 'temporal.db') });
});

after(async () => {
  await server?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

/**
 * Runs the Temporal CLI without blocking this process's event loop: the worker under test runs here
 * too, and the CLI's update waits for it.
 */
async function cli(args: string[]): Promise<string> {
  const { stdout } = await promisify(execFile)(temporalCli(), [...args, '--address', server.address], {
    encoding: 'utf8',
  });
  return stdout;
}

test(
  'a rollout started with the Temporal CLI runs every phase on the dev server',
  { skip: LONG_ONLY },
  async () => {
    const world: World = await makeWorld();
    const connection = await NativeConnection.connect({ address: server.address });
    const clientConn = await Connection.connect({ address: server.address });
    const client = new Client({ connection: clientConn });
    const taskQueue = `it-${process.pid}`;
    try {
      const worker = await createFleetgateWorker({
        connection,
        namespace: 'default',
        taskQueue,
        services: world.services,
      });
      await worker.runUntil(async () => {
        const policy = loadPolicy('examples/demo-policy.yaml');
        policy.shadow!.duration = '3s';
        // This test follows the regression through every phase to its rollback in the canary. At 7200x the
        // shadow's labels would already show the night recall drop and reject hw3/nordic at the shadow's
        // class gates (that path is tested in test/workflow/shadow.test.ts), so they are off here.
        delete policy.shadow!.classGates;
        policy.waves = [
          { percent: 5, hold: '6s', looks: 2 },
          { percent: 25, hold: '6s', looks: 2, approval: { gate: 'wave-2', required: 1, timeout: '10m' } },
          { percent: 50, hold: '6s', looks: 2 },
        ];
        policy.labelWait = { coverage: 0.9, poll: '2s', timeout: '20s' };
        // Data too thin to decide holds its cohorts after 10 s instead of waiting a day for the reviewers.
        policy.analysis.escalation = { timeout: '10s' };
        const id = `it-regress-${process.pid}`;
        // 7200x: a 3-second look covers six hours of driving, the test fleet's mean label delay.
        const request = RolloutRequest.parse(
          rolloutRequest(id, 'models/candidate-regress', policy, 'test/fixtures/fleet.yaml', 7200),
        );
        const file = join(tmp, 'request.json');
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

        const result = await resultWithin(handle, 180_000);
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
    } finally {
      await clientConn.close();
      await connection.close();
      await world.close();
    }
  },
);

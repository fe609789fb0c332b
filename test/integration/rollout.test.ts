/**
 * A full rollout on a real Temporal dev server with the real activities, started the way an operator
 * without our CLI would: `temporal workflow start` with a JSON input, and an approval through
 * `temporal workflow update execute`. Then `temporal workflow list` must show it.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { startDevServer, type DevServer } from '../../workers/dev-server';
import { createFleetgateWorker, quietRuntime } from '../../workers/worker';
import { statusQuery } from '../../workflows/definitions';
import { RolloutRequest } from '../../policies/schema';
import {
  LONG_ONLY,
  devServerRegressPolicy,
  temporalAsync,
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

const cli = (args: string[]) => temporalAsync(server.address, args);

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
        const policy = devServerRegressPolicy();
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

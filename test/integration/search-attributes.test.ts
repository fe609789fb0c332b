/**
 * The rollouts' search attributes on a real Temporal dev server (started as `fleetgate server` starts
 * it, with them registered): a rollout started with FleetgatePhase set is listed by
 * `FleetgatePhase="canary"` while it waits at a canary gate, by its candidate, and by
 * `FleetgateOutcome="completed"` once it ended; operator controls refused on the real server leave it
 * running.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { startDevServer, type DevServer } from '../../workers/dev-server';
import { createFleetgateWorker, quietRuntime } from '../../workers/worker';
import { createRolloutControls, startRolloutWorkflow } from '../../activities/controls';
import { approveUpdate, SEARCH_ATTRIBUTES, statusQuery } from '../../workflows/definitions';
import { RolloutRequest } from '../../policies/schema';
import { loadPolicy, makeWorld, resultWithin, rolloutRequest, type World } from '../support';

let server: DevServer;
let tmp: string;

before(async () => {
  quietRuntime();
  tmp = mkdtempSync(join(tmpdir(), 'fleetgate-sa-'));
  server = await startDevServer({ dbFile: join(tmp, 'temporal.db') });
});

after(async () => {
  await server?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

/** The workflow ids a visibility query lists, once it lists `id` (visibility lags a little behind). */
async function listedBy(client: Client, query: string, id: string): Promise<string[]> {
  let ids: string[] = [];
  for (let i = 0; i < 120; i++) {
    ids = [];
    for await (const w of client.workflow.list({ query })) ids.push(w.workflowId);
    if (ids.includes(id)) return ids;
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.fail(`${query} never listed ${id}; it listed: ${ids.join(', ') || 'nothing'}`);
}

test('a rollout is listed by its phase in its canary and by its outcome at the end', async () => {
  const world: World = await makeWorld();
  const connection = await NativeConnection.connect({ address: server.address });
  const clientConn = await Connection.connect({ address: server.address });
  const client = new Client({ connection: clientConn });
  const taskQueue = `sa-${process.pid}`;
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
      delete policy.shadow!.classGates;
      policy.waves = [
        { percent: 5, hold: '4s', looks: 1 },
        { percent: 25, hold: '4s', looks: 1, approval: { gate: 'wave-2', required: 1, timeout: '10m' } },
      ];
      policy.labelWait = { coverage: 0.5, poll: '2s', timeout: '10s' };
      // Data too thin to decide holds its cohorts after 10 s instead of waiting a day for the reviewers.
      policy.analysis.escalation = { timeout: '10s' };
      const id = `sa-${process.pid}`;
      const request = RolloutRequest.parse(
        rolloutRequest(id, 'models/candidate-good', policy, 'test/fixtures/fleet.yaml', 7200),
      );
      const { handle, searchAttributes } = await startRolloutWorkflow(client, {
        taskQueue,
        workflowId: id,
        args: [request],
      });
      assert.equal(searchAttributes, true, 'the dev server has the search attributes registered');

      for (let i = 0; !(await handle.query(statusQuery)).pendingGate; i++) {
        if (i > 600)
          assert.fail(`no gate became pending: ${JSON.stringify(await handle.query(statusQuery))}`);
        await new Promise((r) => setTimeout(r, 250));
      }
      const status = await handle.query(statusQuery);
      assert.equal(status.phase, 'canary');
      const inCanary = await listedBy(client, 'FleetgatePhase="canary"', id);
      assert.ok(inCanary.includes(id));
      const candidate = `${status.candidate!.name}@${status.candidate!.version}`;
      await listedBy(client, `FleetgateCandidate="${candidate}" AND ExecutionStatus="Running"`, id);
      const described = await handle.describe();
      assert.equal(described.typedSearchAttributes.get(SEARCH_ATTRIBUTES.phase), 'canary');
      const production = described.typedSearchAttributes.get(SEARCH_ATTRIBUTES.production) ?? [];
      assert.ok(
        production.includes(world.productionDigest),
        `production digests listed: ${production.join(', ')}`,
      );

      // Controls on the real server: a refusal comes back with the validator's reason.
      const controls = createRolloutControls({ client });
      const refused = await controls.rollbackCohort(id, { cohort: 'hw9/mars', by: 'ops', reason: 'drill' });
      assert.equal(refused.ok, false);
      assert.match(!refused.ok ? refused.refused : '', /not in this rollout/);

      await handle.executeUpdate(approveUpdate, {
        args: [{ gate: 'wave-2', reviewer: 'alice', digest: status.candidate!.digest.slice(0, 12) }],
      });
      const result = await resultWithin(handle, 180_000);
      assert.equal(result.outcome, 'completed', result.reason);
      const done = await listedBy(client, 'FleetgateOutcome="completed"', id);
      assert.ok(done.includes(id));
      const inCanaryNow: string[] = [];
      for await (const w of client.workflow.list({ query: 'FleetgatePhase="canary"' }))
        inCanaryNow.push(w.workflowId);
      assert.ok(!inCanaryNow.includes(id), 'no longer listed in its canary');
    });
  } finally {
    await clientConn.close();
    await connection.close();
    await world.close();
  }
});

/**
 * A rollout whose candidate is an already registered model packed again under a higher version and
 * release ends rejected at its register step, naming the registered record, at once (the refusal is not
 * retried) and with nothing delivered. The time-skipping test server, the real activities and a real
 * signed pack inside the worker's root.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { RolloutResult } from '../../workflows/definitions';
import { createRegistryActivities } from '../../activities/registry';
import { buildPack, signPack } from '../../workers/pack-build';
import {
  loadPolicy,
  makeWorld,
  otaOps,
  ROOT,
  rolloutRequest,
  startRollout,
  timeSkippingServer,
  withWorker,
} from '../support';

const server = timeSkippingServer();

describe('rolloutWorkflow register (time-skipping)', () => {
  test('the same model bytes under a higher release: rejected at register, naming the first record', async () => {
    const world = await makeWorld();
    // candidate-good (hazard-detector@1.1.0, release 2) is registered; its model is packed again as 1.1.1,
    // release 3, by the same trusted signer, inside the worker's root (.fleetgate is ignored).
    const pack = join('.fleetgate', 'test-packs', `same-bytes-${process.pid}`);
    rmSync(join(ROOT, pack), { recursive: true, force: true });
    cpSync(join(ROOT, 'models/candidate-good'), join(ROOT, pack), { recursive: true });
    const manifestFile = join(ROOT, pack, 'manifest.json');
    const manifest = JSON.parse(readFileSync(manifestFile, 'utf8')) as Record<string, unknown>;
    writeFileSync(manifestFile, JSON.stringify({ ...manifest, version: '1.1.1', release: 3 }, null, 2));
    await buildPack(join(ROOT, pack));
    await signPack(join(ROOT, pack), readFileSync(join(ROOT, 'models/keys/fixture-signer.private.pem')));
    try {
      const { store, runner, trust } = world.services;
      const first = await createRegistryActivities({ store, runner, trust, root: ROOT }).registerCandidate({
        rolloutId: 'earlier',
        packDir: 'models/candidate-good',
      });
      const policy = loadPolicy('test/fixtures/policy-week.yaml');
      const result = await withWorker(server.env, server.bundle, world, async (tq) => {
        const handle = await startRollout(
          server.env,
          tq,
          rolloutRequest(`same-bytes-${process.pid}`, pack, policy),
        );
        const r = (await handle.result()) as RolloutResult;
        let attempts = 0;
        for (const e of (await handle.fetchHistory()).events ?? []) {
          if (e.activityTaskScheduledEventAttributes?.activityType?.name === 'registerCandidate') {
            attempts++;
          }
        }
        return { r, attempts };
      });
      assert.equal(result.r.outcome, 'rejected');
      assert.equal(result.r.rejectedAt, 'register');
      assert.match(
        result.r.reason,
        new RegExp(
          `its model \\(sha256 ${first.digest}\\) is already registered as hazard-detector@1\\.1\\.0 release 2`,
        ),
      );
      assert.match(result.r.reason, /use the existing record hazard-detector@1\.1\.0/);
      assert.equal(result.attempts, 1, 'one registerCandidate task');
      assert.deepEqual(await otaOps(world), []);
      assert.deepEqual(await store.list('registry/hazard-detector/1.1.1'), []);
    } finally {
      rmSync(join(ROOT, pack), { recursive: true, force: true });
      await world.close();
    }
  });
});

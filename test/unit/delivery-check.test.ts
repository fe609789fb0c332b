/**
 * The over-the-air activities check the artifact again at delivery: the exact bytes a job would send
 * must hash to the digest it delivers. Real object store, DuckDB and simulated fleet (test/support).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { makeWorld, otaOps } from '../support';
import { createActivities } from '../../workers/worker';
import { blobKey } from '../../workers/model-runner';
import { ErrorType } from '../../errors';
import type { LocalObjectStore } from '../../activities/store';

void test('a blob damaged after registration is refused at delivery and no vehicle is targeted', async () => {
  const world = await makeWorld();
  try {
    const acts = createActivities(world.services);
    const candidate = await acts.registerCandidate({
      rolloutId: 'ota-check',
      packDir: 'models/candidate-good',
    });
    const ref = { rolloutId: 'ota-check', manifest: 'test/fixtures/fleet.yaml' };
    // Intact: the first wave goes out.
    const first = await acts.deliverWave({
      ...ref,
      wave: 1,
      percent: 5,
      cohorts: world.cohorts,
      digest: candidate.digest,
    });
    assert.ok(Object.values(first.vehicles).some((n) => n > 0));
    const before = (await otaOps(world)).length;

    // The stored blob is replaced behind the registry's back (the store itself never overwrites).
    const file = (world.services.store as LocalObjectStore).pathOf(blobKey(candidate.digest));
    writeFileSync(file, Buffer.from('not the registered model'));
    for (const attempt of [
      () =>
        acts.deliverWave({ ...ref, wave: 2, percent: 25, cohorts: world.cohorts, digest: candidate.digest }),
      () => acts.promoteCohort({ ...ref, cohort: world.cohorts[0]!, digest: candidate.digest }),
    ]) {
      await assert.rejects(attempt(), (err: { type?: string; message: string }) => {
        assert.equal(err.type, ErrorType.DigestMismatch);
        assert.match(
          err.message,
          /stored artifact of model [0-9a-f]{12} hashes to [0-9a-f]{12}; nothing was delivered/,
        );
        return true;
      });
    }
    assert.equal((await otaOps(world)).length, before, 'no job was recorded after the damage');

    // A retry of the wave that already went out returns its recorded result without sending again.
    const again = await acts.deliverWave({
      ...ref,
      wave: 1,
      percent: 5,
      cohorts: world.cohorts,
      digest: candidate.digest,
    });
    assert.deepEqual(again, first);
  } finally {
    await world.close();
  }
});

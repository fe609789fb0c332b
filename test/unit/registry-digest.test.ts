/**
 * One registry record per model digest, on a real LocalObjectStore with onnxruntime reading contracts and
 * real signed packs: the same model bytes repacked under a higher version and release are refused,
 * naming the record that holds them first; the same pack again stays a no-op; racing registrations of
 * one model leave one record; and a store written before owner keys, already holding one model under two
 * versions, keeps working (the first by release is the owner).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { LocalObjectStore } from '../../activities/store';
import { createRegistryActivities, type RegistryDeps } from '../../activities/registry';
import { loadTrust } from '../../activities/pack';
import { OnnxModelRunner, blobKey } from '../../workers/model-runner';
import { buildPack, signPack } from '../../workers/pack-build';
import { ErrorType } from '../../errors';

const MODELS = resolve(__dirname, '../../models');
const KEY = readFileSync(join(MODELS, 'keys', 'fixture-signer.private.pem'));
let dir: string;
let runners: OnnxModelRunner[] = [];

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'fleetgate-registry-digest-'));
  cpSync(join(MODELS, 'candidate-good'), join(dir, 'packs', 'candidate-good'), { recursive: true });
});

after(async () => {
  for (const r of runners) await r.close();
  runners = [];
  rmSync(dir, { recursive: true, force: true });
});

/** A registry on a fresh store of its own under `dir`. */
async function registry(name: string): Promise<RegistryDeps> {
  const store = new LocalObjectStore(join(dir, name), { durable: false });
  const runner = new OnnxModelRunner((digest) => store.get(blobKey(digest)));
  runners.push(runner);
  return { store, runner, root: dir, trust: await loadTrust([join(MODELS, 'keys', 'fixture-signer.pub')]) };
}

/** candidate-good's model (1.1.0, release 2) packed again as `version` / `release`, signed. */
async function repack(to: string, version: string, release: number): Promise<string> {
  const pack = join(dir, 'packs', to);
  cpSync(join(dir, 'packs', 'candidate-good'), pack, { recursive: true });
  const manifest = JSON.parse(readFileSync(join(pack, 'manifest.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(pack, 'manifest.json'), JSON.stringify({ ...manifest, version, release }, null, 2));
  await buildPack(pack);
  await signPack(pack, KEY);
  return `packs/${to}`;
}

async function failure(p: Promise<unknown>): Promise<{ type?: string; message: string }> {
  try {
    await p;
  } catch (err) {
    return err as { type?: string; message: string };
  }
  assert.fail('expected a failure');
}

void test('the same model bytes under a higher release are refused, naming the first record; the same pack again is a no-op', async () => {
  const deps = await registry('store-a');
  const acts = createRegistryActivities(deps);
  const first = await acts.registerCandidate({ rolloutId: 'r1', packDir: 'packs/candidate-good' });
  assert.deepEqual([first.version, first.release], ['1.1.0', 2]);

  const again = await repack('good-again', '1.1.1', 3);
  const err = await failure(acts.registerCandidate({ rolloutId: 'r2', packDir: again }));
  assert.equal(err.type, ErrorType.ImmutableConflict);
  assert.match(
    err.message,
    new RegExp(
      `model pack packs/good-again: its model \\(sha256 ${first.digest}\\) is already registered as ` +
        'hazard-detector@1\\.1\\.0 release 2, registered \\d{4}-\\d\\d-\\d\\dT',
    ),
  );
  assert.match(err.message, /as hazard-detector@1\.1\.1 release 3/);
  assert.match(err.message, /use the existing record hazard-detector@1\.1\.0/);
  assert.deepEqual(await deps.store.list('registry/hazard-detector/1.1.1'), [], 'no record of 1.1.1');
  assert.deepEqual(await deps.store.list(`index/sha256/${first.digest}/`), [
    `index/sha256/${first.digest}/hazard-detector/1.1.0.json`,
  ]);

  // Registering the first record's pack again (an activity retried, a rollout of it) is a no-op.
  const same = await acts.registerCandidate({ rolloutId: 'r3', packDir: 'packs/candidate-good' });
  assert.deepEqual(same, first);
  // Through a rollout's register step (cohorts given) the refusal is the same, and never retried.
  const inRollout = await failure(
    acts.registerCandidate({ rolloutId: 'r4', packDir: again, cohorts: ['hw3/eu'] }),
  );
  assert.equal(inRollout.type, ErrorType.ImmutableConflict);
  assert.equal((inRollout as { nonRetryable?: boolean }).nonRetryable, true);
});

void test('racing registrations of one model under two versions: one record, the other refused', async () => {
  const deps = await registry('store-race');
  const a = await repack('race-a', '1.2.1', 4);
  const b = await repack('race-b', '1.2.2', 5);
  const results = await Promise.allSettled([
    createRegistryActivities(deps).registerCandidate({ rolloutId: 'ra', packDir: a }),
    createRegistryActivities(deps).registerCandidate({ rolloutId: 'rb', packDir: b }),
  ]);
  const won = results.filter((r) => r.status === 'fulfilled');
  const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  assert.equal(won.length, 1, JSON.stringify(results.map((r) => r.status)));
  assert.equal((lost[0]!.reason as { type?: string }).type, ErrorType.ImmutableConflict);
  assert.match((lost[0]!.reason as Error).message, /is already registered as hazard-detector@1\.2\.[12]/);
  assert.equal(
    (await deps.store.list('registry/hazard-detector/')).filter((k) => /\/\d+\.\d+\.\d+\.json$/.test(k))
      .length,
    1,
  );
});

void test('a store that already holds one model under two versions keeps working: the lower release owns it', async () => {
  // Two stores, each with one version of the same bytes, merged without owner keys: a registry written
  // before one record per digest was enforced.
  const legacy = await registry('store-legacy');
  const other = await registry('store-other');
  const first = await createRegistryActivities(legacy).registerCandidate({
    rolloutId: 'r1',
    packDir: 'packs/candidate-good',
  });
  const higher = await repack('good-higher', '1.1.5', 9);
  await createRegistryActivities(other).registerCandidate({ rolloutId: 'r2', packDir: higher });
  cpSync(join(dir, 'store-other', 'registry'), join(dir, 'store-legacy', 'registry'), { recursive: true });
  cpSync(join(dir, 'store-other', 'index'), join(dir, 'store-legacy', 'index'), { recursive: true });
  rmSync(join(dir, 'store-legacy', 'index', 'owner'), { recursive: true });
  assert.equal(
    (await legacy.store.list(`index/sha256/${first.digest}/`)).length,
    2,
    'two versions, one model',
  );

  const acts = createRegistryActivities(legacy);
  const err = await failure(acts.registerCandidate({ rolloutId: 'r3', packDir: higher }));
  assert.equal(err.type, ErrorType.ImmutableConflict);
  assert.match(err.message, /already registered as hazard-detector@1\.1\.0 release 2/);
  assert.deepEqual(await acts.registerCandidate({ rolloutId: 'r4', packDir: 'packs/candidate-good' }), first);
  assert.deepEqual(readdirSync(join(dir, 'store-legacy', 'index', 'owner')), [`${first.digest}.json`]);
  const again = await failure(acts.registerCandidate({ rolloutId: 'r5', packDir: higher }));
  assert.match(again.message, /already registered as hazard-detector@1\.1\.0 release 2/);
});

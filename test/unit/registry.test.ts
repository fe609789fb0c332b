/**
 * Registry activities on real packs (the committed fixtures copied into a temp directory), a real
 * LocalObjectStore and onnxruntime reading the contracts; and compareContracts as a table.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { LocalObjectStore } from '../../activities/store';
import {
  bootstrapProduction,
  createRegistryActivities,
  pointerAt,
  pointerHistory,
  readPointer,
  type RegistryDeps,
} from '../../activities/registry';
import type { IoContract } from '../../activities/contracts';
import { compareContracts } from '../../policies/contract';
import { OnnxModelRunner, blobKey } from '../../workers/model-runner';
import { ErrorType } from '../../errors';
import { generateSigningKey, keyIdOf, loadTrust } from '../../activities/pack';
import { sha256 } from '../../activities/store';
import { buildPack, signPack } from '../../workers/pack-build';

const MODELS = resolve(__dirname, '../../models');
let dir: string;
let deps: RegistryDeps;
let runner: OnnxModelRunner;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'fleetgate-registry-'));
  for (const p of [
    'production',
    'candidate-good',
    'candidate-regress',
    'candidate-badcontract',
    'candidate-blind',
    'candidate-same',
  ]) {
    cpSync(join(MODELS, p), join(dir, 'packs', p), { recursive: true });
  }
  const store = new LocalObjectStore(join(dir, 'store'), { durable: false });
  runner = new OnnxModelRunner((digest) => store.get(blobKey(digest)));
  deps = { store, runner, root: dir, trust: await loadTrust([join(MODELS, 'keys', 'fixture-signer.pub')]) };
});

after(async () => {
  await runner.close();
  rmSync(dir, { recursive: true, force: true });
});

const FIXTURE_KEY = readFileSync(join(MODELS, 'keys', 'fixture-signer.private.pem'));

/**
 * Re-signs a pack whose files were changed on purpose with the fixture signer, after writing the new
 * digests of every file into its manifest (unless `digests` is false), so that a test reaches the check
 * behind the signature.
 */
async function resign(pack: string, digests = true): Promise<void> {
  const root = join(dir, pack);
  if (digests) {
    const m = manifestOf(pack);
    for (const f of Object.keys(m.files)) m.files[f] = sha256(readFileSync(join(root, f)));
    writeFileSync(join(root, 'manifest.json'), JSON.stringify(m, null, 2) + '\n');
  }
  await signPack(root, FIXTURE_KEY);
}

/** A fixture pack copied, its manifest draft edited, packed again and signed by the fixture signer. */
async function repack(from: string, to: string, edit: Record<string, unknown>): Promise<string> {
  const pack = copyPack(from, to);
  const root = join(dir, pack);
  writeFileSync(join(root, 'manifest.json'), JSON.stringify({ ...manifestOf(pack), ...edit }, null, 2));
  await buildPack(root);
  await signPack(root, FIXTURE_KEY);
  return pack;
}

/** A copy of a fixture pack under a new name, for tests that damage it. */
function copyPack(from: string, to: string): string {
  cpSync(join(dir, 'packs', from), join(dir, 'packs', to), { recursive: true });
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

const manifestOf = (pack: string) =>
  JSON.parse(readFileSync(join(dir, pack, 'manifest.json'), 'utf8')) as {
    version: string;
    release: number;
    files: Record<string, string>;
  };

void test('registerCandidate records a verified pack, its blob and its contract; again is a no-op', async () => {
  const acts = createRegistryActivities(deps);
  const rec = await acts.registerCandidate({ rolloutId: 'r1', packDir: 'packs/candidate-good' });
  const manifest = manifestOf('packs/candidate-good');
  assert.equal(rec.name, 'hazard-detector');
  assert.equal(rec.version, '1.1.0');
  assert.equal(rec.digest, manifest.files['model.onnx']);
  assert.equal(rec.recordKey, 'registry/hazard-detector/1.1.0.json');
  assert.match(rec.manifestDigest, /^[0-9a-f]{64}$/);
  assert.deepEqual(rec.contract, {
    inputs: [{ name: 'features', type: 'float32', shape: ['batch', 8] }],
    outputs: [{ name: 'probs', type: 'float32', shape: ['batch', 2] }],
  });
  const blob = await deps.store.get(blobKey(rec.digest));
  assert.ok(blob?.equals(readFileSync(join(dir, 'packs/candidate-good/model.onnx'))));
  assert.deepEqual(JSON.parse((await deps.store.get(rec.recordKey))!.toString()), rec);

  assert.equal(rec.release, 2);
  assert.equal(
    rec.signer,
    keyIdOf(createPublicKey(readFileSync(join(MODELS, 'keys', 'fixture-signer.pub')))),
  );
  assert.deepEqual(rec.compatibleSkus, ['hw3', 'hw4']);
  assert.deepEqual(rec.files, manifest.files);
  // Every file of the pack is a blob, the golden set among them.
  for (const [name, digest] of Object.entries(manifest.files)) {
    assert.ok(
      (await deps.store.get(blobKey(digest)))?.equals(readFileSync(join(dir, 'packs/candidate-good', name))),
    );
  }
  assert.equal(rec.golden?.inputs, manifest.files['golden/inputs.f32']);
  assert.equal(rec.golden?.rows, 64);

  const again = await acts.registerCandidate({ rolloutId: 'r2', packDir: 'packs/candidate-good' });
  assert.deepEqual(again, rec);
});

void test('a registered version cannot be registered again with other content', async () => {
  const acts = createRegistryActivities(deps);
  await acts.registerCandidate({ rolloutId: 'r1', packDir: 'packs/production' });
  const pack = await repack('candidate-regress', 'same-version', { version: '1.0.0', release: 1 });
  const err = await failure(acts.registerCandidate({ rolloutId: 'r1', packDir: pack }));
  assert.equal(err.type, ErrorType.ImmutableConflict);
  assert.match(err.message, /hazard-detector@1\.0\.0 is already registered/);
  assert.match(err.message, /bump "version"/);
});

void test('DigestMismatch: a flipped byte in a signed pack names the file and both digests', async () => {
  const pack = copyPack('candidate-good', 'flipped');
  const file = join(dir, pack, 'model.onnx');
  const bytes = readFileSync(file);
  bytes[bytes.length - 3]! ^= 0x01;
  writeFileSync(file, bytes);
  const err = await failure(
    createRegistryActivities(deps).registerCandidate({ rolloutId: 'r', packDir: pack }),
  );
  assert.equal(err.type, ErrorType.DigestMismatch);
  assert.match(
    err.message,
    new RegExp(
      `model\\.onnx: sha256 is [0-9a-f]{64}, manifest expects ${manifestOf(pack).files['model.onnx']}`,
    ),
  );
  assert.equal(await deps.store.get(blobKey(sha256(bytes))), undefined, 'nothing of the pack was stored');
});

void test('FileSetMismatch: a file added to the pack, or a listed file missing from it', async () => {
  const acts = createRegistryActivities(deps);
  const extra = copyPack('candidate-good', 'extra');
  writeFileSync(join(dir, extra, 'notes.txt'), 'hello');
  const e1 = await failure(acts.registerCandidate({ rolloutId: 'r', packDir: extra }));
  assert.equal(e1.type, ErrorType.FileSetMismatch);
  assert.match(e1.message, /notes\.txt: present in the pack but not listed/);

  const missing = copyPack('candidate-good', 'missing');
  rmSync(join(dir, missing, 'golden', 'outputs.f32'));
  const e2 = await failure(acts.registerCandidate({ rolloutId: 'r', packDir: missing }));
  assert.equal(e2.type, ErrorType.FileSetMismatch);
  assert.match(e2.message, /golden\/outputs\.f32: listed in the manifest but missing/);
});

void test('BadSignature: a manifest changed after signing, a missing or malformed signature', async () => {
  const acts = createRegistryActivities(deps);
  const edited = copyPack('candidate-good', 'edited');
  const m = manifestOf(edited);
  writeFileSync(join(dir, edited, 'manifest.json'), JSON.stringify({ ...m, release: 99 }, null, 2) + '\n');
  const e1 = await failure(acts.registerCandidate({ rolloutId: 'r', packDir: edited }));
  assert.equal(e1.type, ErrorType.BadSignature);
  assert.match(e1.message, /does not verify over manifest\.json/);

  const unsigned = copyPack('candidate-good', 'unsigned');
  rmSync(join(dir, unsigned, 'manifest.sig'));
  const e2 = await failure(acts.registerCandidate({ rolloutId: 'r', packDir: unsigned }));
  assert.equal(e2.type, ErrorType.BadSignature);
  assert.match(e2.message, /manifest\.sig is missing.*fleetgate model sign/);

  const garbled = copyPack('candidate-good', 'garbled');
  const sig = JSON.parse(readFileSync(join(dir, garbled, 'manifest.sig'), 'utf8')) as Record<string, string>;
  writeFileSync(join(dir, garbled, 'manifest.sig'), JSON.stringify({ ...sig, signature: 'abc' }));
  const e3 = await failure(acts.registerCandidate({ rolloutId: 'r', packDir: garbled }));
  assert.equal(e3.type, ErrorType.BadSignature);
  assert.match(e3.message, /signature\.signature: a base64 ed25519 signature/);
});

void test('UntrustedSigner: a valid signature by a key the registry does not trust', async () => {
  const pack = await repack('candidate-same', 'stranger', { version: '1.6.0', release: 8 });
  const stranger = generateSigningKey();
  await signPack(join(dir, pack), stranger.privatePem);
  const err = await failure(
    createRegistryActivities(deps).registerCandidate({ rolloutId: 'r', packDir: pack }),
  );
  assert.equal(err.type, ErrorType.UntrustedSigner);
  assert.match(
    err.message,
    new RegExp(`signed by key ${stranger.keyId.slice(0, 16)}, which this registry does not trust`),
  );
  // Trusted, the same signature registers.
  const trusting = createRegistryActivities({
    ...deps,
    trust: new Map([...deps.trust, [stranger.keyId, createPublicKey(stranger.publicPem)]]),
  });
  assert.equal((await trusting.registerCandidate({ rolloutId: 'r', packDir: pack })).signer, stranger.keyId);
  // Re-signed by the fixture signer (a key rotation), the registered version is returned as it was.
  await signPack(join(dir, pack), FIXTURE_KEY);
  const again = await trusting.registerCandidate({ rolloutId: 'r', packDir: pack });
  assert.equal(again.signer, stranger.keyId);
});

void test('ReleaseRollback: a release counter not above the production it would replace', async () => {
  const acts = createRegistryActivities(deps);
  const cohorts = ['rb/eu'];
  // Production runs candidate-regress (release 3); candidate-good is release 2.
  await bootstrapProduction(deps, 'packs/candidate-regress', cohorts, 'test');
  const err = await failure(
    acts.registerCandidate({ rolloutId: 'r', packDir: 'packs/candidate-good', cohorts }),
  );
  assert.equal(err.type, ErrorType.ReleaseRollback);
  assert.match(
    err.message,
    /release 2, not above release 3 of hazard-detector@1\.2\.0, production in cohort rb\/eu/,
  );
  // Without cohorts (no production to compare with) the same pack registers.
  assert.equal(
    (await acts.registerCandidate({ rolloutId: 'r', packDir: 'packs/candidate-good' })).release,
    2,
  );
});

void test('MixedRelease: a file of another release, or a config of another release', async () => {
  const acts = createRegistryActivities(deps);
  await acts.registerCandidate({ rolloutId: 'r', packDir: 'packs/candidate-regress' });
  const mixed = copyPack('candidate-good', 'mixed');
  cpSync(join(dir, 'packs/candidate-regress/model.onnx'), join(dir, mixed, 'model.onnx'));
  const e1 = await failure(acts.registerCandidate({ rolloutId: 'r', packDir: mixed }));
  assert.equal(e1.type, ErrorType.MixedRelease);
  assert.match(e1.message, /model\.onnx: these bytes are model\.onnx of hazard-detector@1\.2\.0/);

  // A config of another release, signed into the manifest: the identity check refuses it.
  const config = copyPack('candidate-good', 'mixed-config');
  cpSync(
    join(dir, 'packs/candidate-regress/inference_config.json'),
    join(dir, config, 'inference_config.json'),
  );
  await resign(config);
  const e2 = await failure(acts.registerCandidate({ rolloutId: 'r', packDir: config }));
  assert.equal(e2.type, ErrorType.MixedRelease);
  assert.match(e2.message, /inference_config\.json is of hazard-detector@1\.2\.0 release 3/);
});

void test('MajorBumpUnapproved: a major version above production needs the rollout approval', async () => {
  const acts = createRegistryActivities(deps);
  const cohorts = ['major/eu'];
  await bootstrapProduction(deps, 'packs/production', cohorts, 'test');
  const pack = await repack('candidate-blind', 'major', { version: '2.0.0', release: 7 });
  const err = await failure(acts.registerCandidate({ rolloutId: 'r', packDir: pack, cohorts }));
  assert.equal(err.type, ErrorType.MajorBumpUnapproved);
  assert.match(
    err.message,
    /2\.0\.0 is a major version above production hazard-detector@1\.0\.0.*allowMajorBump/,
  );
  const rec = await acts.registerCandidate({ rolloutId: 'r', packDir: pack, cohorts, allowMajorBump: true });
  assert.equal(rec.version, '2.0.0');
});

void test('ContractMismatch: a config that declares a contract the model does not have', async () => {
  const pack = copyPack('candidate-good', 'declared');
  const file = join(dir, pack, 'inference_config.json');
  const config = JSON.parse(readFileSync(file, 'utf8')) as { inputs: { shape: unknown[] }[] };
  config.inputs[0]!.shape = ['batch', 9];
  writeFileSync(file, JSON.stringify(config, null, 2) + '\n');
  await resign(pack);
  const err = await failure(
    createRegistryActivities(deps).registerCandidate({ rolloutId: 'r', packDir: pack }),
  );
  assert.equal(err.type, ErrorType.ContractMismatch);
  assert.match(err.message, /declares a contract the model does not have/);
});

void test('invalid manifests are InvalidInput; paths leaving the pack or the root are PathEscape', async () => {
  const acts = createRegistryActivities(deps);
  const bad = copyPack('candidate-good', 'bad-manifest');
  writeFileSync(
    join(dir, bad, 'manifest.json'),
    JSON.stringify({ ...manifestOf(bad), name: 'Hazard', version: '1.1' }),
  );
  await resign(bad, false);
  const e1 = await failure(acts.registerCandidate({ rolloutId: 'r', packDir: bad }));
  assert.equal(e1.type, ErrorType.InvalidInput);
  assert.match(e1.message, /manifest\.name: .*\(got "Hazard"\)/);
  assert.match(e1.message, /manifest\.version: a semantic version .*\(got "1\.1"\)/);

  const escape = copyPack('candidate-good', 'escape');
  const m = manifestOf(escape);
  m.files['../production/model.onnx'] = m.files['model.onnx']!;
  writeFileSync(join(dir, escape, 'manifest.json'), JSON.stringify(m));
  await resign(escape, false);
  const e2 = await failure(acts.registerCandidate({ rolloutId: 'r', packDir: escape }));
  assert.equal(e2.type, ErrorType.PathEscape);
  assert.match(e2.message, /\.\.\/production\/model\.onnx/);

  const linked = copyPack('candidate-good', 'linked');
  writeFileSync(join(dir, 'outside.f32'), readFileSync(join(dir, linked, 'golden/inputs.f32')));
  rmSync(join(dir, linked, 'golden/inputs.f32'));
  symlinkSync(join(dir, 'outside.f32'), join(dir, linked, 'golden/inputs.f32'));
  const e3 = await failure(acts.registerCandidate({ rolloutId: 'r', packDir: linked }));
  assert.equal(e3.type, ErrorType.PathEscape);
  assert.match(e3.message, /golden\/inputs\.f32 is a link to a file outside the pack/);

  const e4 = await failure(acts.registerCandidate({ rolloutId: 'r', packDir: '../elsewhere' }));
  assert.equal(e4.type, ErrorType.PathEscape);

  // A pack directory that is a link leading out of the root is refused, though its own files are whole.
  const away = mkdtempSync(join(tmpdir(), 'fleetgate-registry-away-'));
  try {
    cpSync(join(MODELS, 'candidate-good'), join(away, 'pack'), { recursive: true });
    symlinkSync(join(away, 'pack'), join(dir, 'packs', 'linked-dir'));
    const e6 = await failure(acts.registerCandidate({ rolloutId: 'r', packDir: 'packs/linked-dir' }));
    assert.equal(e6.type, ErrorType.PathEscape);
    assert.match(
      e6.message,
      /"packs\/linked-dir" is, or passes through, a link to a place outside the worker/,
    );
    assert.doesNotMatch(e6.message, new RegExp(away));
  } finally {
    rmSync(away, { recursive: true, force: true });
  }

  const e5 = await failure(acts.registerCandidate({ rolloutId: 'r', packDir: 'packs/nope' }));
  assert.equal(e5.type, ErrorType.NotFound);
});

void test('lookupProduction: NotFound before bootstrap, the records after; bootstrap is idempotent', async () => {
  const acts = createRegistryActivities(deps);
  const cohorts = ['hw3/eu', 'hw3/us', 'hw4/eu'];
  const missing = await failure(acts.lookupProduction({ cohorts }));
  assert.equal(missing.type, ErrorType.NotFound);
  assert.match(missing.message, /cohort hw3\/eu has no production model.*register production first/);

  const prod = await bootstrapProduction(deps, 'packs/production', cohorts, 'test');
  const again = await bootstrapProduction(deps, 'packs/production', cohorts, 'test');
  assert.deepEqual(again, prod);
  const found = await acts.lookupProduction({ cohorts });
  assert.deepEqual(Object.keys(found.byCohort), cohorts);
  for (const c of cohorts) assert.deepEqual(found.byCohort[c], prod);
  assert.equal((await pointerHistory(deps.store, 'hw3/eu', 'production')).length, 1);

  const other = await failure(bootstrapProduction(deps, 'packs/candidate-good', ['hw3/eu'], 'test'));
  assert.equal(other.type, ErrorType.PointerConflict);
});

void test('movePointer: compare-and-swap, idempotent retry, conflicts, and history by time', async () => {
  const acts = createRegistryActivities(deps);
  const cohort = 'hw9/ap';
  const prod = await bootstrapProduction(deps, 'packs/production', [cohort], 'test');
  const good = await acts.registerCandidate({ rolloutId: 'r7', packDir: 'packs/candidate-good' });
  const regress = await acts.registerCandidate({ rolloutId: 'r8', packDir: 'packs/candidate-regress' });
  const beforePromotion = new Date();
  await new Promise((r) => setTimeout(r, 5));

  const move = { cohort, stage: 'production' as const, rolloutId: 'r7', reason: 'promoted' };
  assert.deepEqual(await acts.movePointer({ ...move, digest: good.digest, expected: prod.digest }), {
    moved: true,
    previous: prod.digest,
  });
  assert.deepEqual(await acts.movePointer({ ...move, digest: good.digest, expected: prod.digest }), {
    moved: false,
    previous: prod.digest,
  });
  const conflict = await failure(
    acts.movePointer({ ...move, digest: regress.digest, expected: prod.digest }),
  );
  assert.equal(conflict.type, ErrorType.PointerConflict);
  assert.match(conflict.message, new RegExp(`holds ${good.digest}, not the expected ${prod.digest}`));

  const unregistered = await failure(
    acts.movePointer({ ...move, digest: 'f'.repeat(64), expected: good.digest }),
  );
  assert.equal(unregistered.type, ErrorType.NotFound);

  const { pointer } = await readPointer(deps.store, cohort, 'production');
  assert.equal(pointer?.recordKey, good.recordKey);
  assert.equal((await acts.lookupProduction({ cohorts: [cohort] })).byCohort[cohort]?.version, '1.1.0');

  // Candidate pointer: set, then cleared.
  const cand = { cohort, stage: 'candidate' as const, rolloutId: 'r8', reason: 'rollout' };
  assert.equal((await acts.movePointer({ ...cand, digest: regress.digest, expected: null })).moved, true);
  assert.equal((await acts.movePointer({ ...cand, digest: null, expected: regress.digest })).moved, true);
  assert.equal((await readPointer(deps.store, cohort, 'candidate')).pointer?.digest, null);

  const history = await pointerHistory(deps.store, cohort, 'production');
  assert.deepEqual(
    history.map((h) => [h.seq, h.from, h.to, h.rolloutId]),
    [
      [1, null, prod.digest, 'test'],
      [2, prod.digest, good.digest, 'r7'],
    ],
  );
  assert.equal(await pointerAt(deps.store, cohort, 'production', beforePromotion), prod.digest);
  assert.equal(await pointerAt(deps.store, cohort, 'production', new Date()), good.digest);
  assert.equal(await pointerAt(deps.store, cohort, 'production', new Date(0)), null);
  assert.deepEqual(
    (await pointerHistory(deps.store, cohort, 'candidate')).map((h) => h.to),
    [regress.digest, null],
  );
});

void test('compareContracts: the fixtures', async () => {
  const acts = createRegistryActivities(deps);
  const prod = await acts.registerCandidate({ rolloutId: 'r', packDir: 'packs/production' });
  const good = await acts.registerCandidate({ rolloutId: 'r', packDir: 'packs/candidate-good' });
  const bad = await acts.registerCandidate({ rolloutId: 'r', packDir: 'packs/candidate-badcontract' });
  assert.deepEqual(compareContracts(prod.contract, good.contract), []);
  const problems = compareContracts(prod.contract, bad.contract);
  assert.ok(
    problems.some((p) => /input "features" is missing in the candidate \(candidate inputs: "x"\)/.test(p)),
    problems.join('\n'),
  );
  assert.ok(
    problems.some((p) => /candidate needs input "x"/.test(p)),
    problems.join('\n'),
  );
});

void test('compareContracts: table', () => {
  const io = (
    inShape: (number | string)[],
    inType = 'float32',
    outShape: (number | string)[] = ['batch', 2],
  ): IoContract => ({
    inputs: [{ name: 'features', type: inType, shape: inShape }],
    outputs: [{ name: 'probs', type: 'float32', shape: outShape }],
  });
  const prod = io(['batch', 8]);
  const cases: { name: string; cand: IoContract; expect: RegExp | null }[] = [
    { name: 'same', cand: io(['batch', 8]), expect: null },
    { name: 'other symbolic name', cand: io(['N', 8]), expect: null },
    {
      name: 'element type',
      cand: io(['batch', 8], 'float64'),
      expect: /element type is float64 in the candidate, float32 in production/,
    },
    { name: 'rank', cand: io(['batch', 8, 1]), expect: /rank is 3/ },
    {
      name: 'static dim',
      cand: io(['batch', 6]),
      expect: /dimension 1 is 6 in the candidate, 8 in production/,
    },
    {
      name: 'fixed batch',
      cand: io([1, 8]),
      expect: /dimension 0 is 1 in the candidate, "batch" \(any\) in production/,
    },
    {
      name: 'output width',
      cand: io(['batch', 8], 'float32', ['batch', 3]),
      expect: /output "probs": dimension 1 is 3/,
    },
    {
      name: 'free output dim',
      cand: io(['batch', 8], 'float32', ['batch', 'k']),
      expect: /output "probs": dimension 1/,
    },
    {
      name: 'missing output',
      cand: { inputs: prod.inputs, outputs: [{ name: 'scores', type: 'float32', shape: ['batch', 2] }] },
      expect: /output "probs" is missing in the candidate \(candidate outputs: "scores"\)/,
    },
  ];
  for (const c of cases) {
    const problems = compareContracts(prod, c.cand);
    if (c.expect === null) assert.deepEqual(problems, [], c.name);
    else
      assert.ok(
        problems.some((p) => c.expect!.test(p)),
        `${c.name}: ${problems.join(' | ') || '(no problems)'}`,
      );
  }
});

void test('concurrent movePointer: one mover wins, identical retries are no-ops, history has one entry', async () => {
  const acts = createRegistryActivities(deps);
  const cohort = 'race/eu';
  const records = await Promise.all(
    ['production', 'candidate-good', 'candidate-regress'].map((p) =>
      acts.registerCandidate({ rolloutId: 'r', packDir: `packs/${p}` }),
    ),
  );
  const move = (digest: string) =>
    acts.movePointer({
      cohort,
      stage: 'candidate',
      digest,
      expected: null,
      rolloutId: 'race',
      reason: 'race',
    });
  const outcomes = await Promise.allSettled([
    ...records.map((r) => move(r.digest)),
    ...records.map((r) => move(r.digest)),
  ]);
  const moved = outcomes.filter((o) => o.status === 'fulfilled' && o.value.moved);
  assert.equal(moved.length, 1);
  const holder = (await readPointer(deps.store, cohort, 'candidate')).pointer!.digest;
  outcomes.forEach((o, i) => {
    const digest = records[i % records.length]!.digest;
    if (digest === holder) assert.equal(o.status, 'fulfilled');
    else
      assert.equal(
        o.status === 'rejected' && (o.reason as { type?: string }).type,
        ErrorType.PointerConflict,
      );
  });
  assert.equal((await pointerHistory(deps.store, cohort, 'candidate')).length, 1);
});

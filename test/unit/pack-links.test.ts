/**
 * `fleetgate model pack` and `model sign` on a copy of a fixture pack in which a file they write (the
 * config, a golden file, the golden directory, manifest.json, manifest.sig) is a symbolic link to a file
 * or directory outside the pack: each refuses (PathEscape, naming the link and the fix) and the outside
 * file is unchanged. Real onnxruntime, real files; the command runs in this process.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  cpSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { runModel, type ModelIo } from '../../cli/model';

const ROOT = resolve(__dirname, '..', '..');
const KEY = join(ROOT, 'models', 'keys', 'fixture-signer.private.pem');
let work: string;

before(() => {
  work = mkdtempSync(join(tmpdir(), 'fleetgate-pack-links-'));
});

after(() => {
  rmSync(work, { recursive: true, force: true });
});

async function model(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const outs: string[] = [];
  const errs: string[] = [];
  const io: ModelIo = { out: (t) => void outs.push(t), err: (t) => void errs.push(t) };
  const code = await runModel(args, io);
  return { code, out: outs.join('\n'), err: errs.join('\n') };
}

/** A copy of candidate-good named `name`, and an outside directory holding `victim` with known bytes. */
function setUp(name: string, victim: string, bytes: string | Buffer): { pack: string; outside: string } {
  const pack = join(work, 'packs', name);
  cpSync(join(ROOT, 'models', 'candidate-good'), pack, { recursive: true });
  const outside = join(work, 'outside', name);
  mkdirSync(outside, { recursive: true });
  writeFileSync(join(outside, victim), bytes);
  return { pack, outside };
}

/** The file names and bytes of a directory, to compare before and after. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of readdirSync(dir)) out[f] = readFileSync(join(dir, f)).toString('base64');
  return out;
}

function refusedFor(r: { code: number; err: string }, name: string, command: string): void {
  assert.equal(r.code, 1, r.err);
  const escaped = name.replace(/[.]/g, '\\.');
  assert.match(r.err, new RegExp(`model ${command}: PathEscape: .*${escaped} is a symbolic link`));
  assert.match(r.err, new RegExp(`remove the symlink ${escaped} from the pack`));
}

for (const name of ['inference_config.json', 'golden/inputs.f32', 'golden/outputs.f32', 'manifest.json']) {
  void test(`model pack refuses a pack whose ${name} is a link outside, and leaves that file alone`, async () => {
    const id = name.replace(/[/.]/g, '-');
    const original = readFileSync(join(ROOT, 'models', 'candidate-good', name));
    const { pack, outside } = setUp(`pack-${id}`, 'victim', original);
    rmSync(join(pack, name));
    symlinkSync(join(outside, 'victim'), join(pack, name));
    const before = snapshot(outside);
    const r = await model('pack', pack, '--golden-rows', '8');
    assert.deepEqual(snapshot(outside), before, 'the outside file is unchanged');
    refusedFor(r, name, 'pack');
  });
}

void test('model pack refuses a golden directory that is a link to a directory outside', async () => {
  const { pack, outside } = setUp('pack-golden-dir', 'inputs.f32', 'outside bytes');
  rmSync(join(pack, 'golden'), { recursive: true });
  symlinkSync(outside, join(pack, 'golden'));
  const before = snapshot(outside);
  const r = await model('pack', pack, '--golden-rows', '8');
  assert.deepEqual(snapshot(outside), before, 'nothing written into the outside directory');
  refusedFor(r, 'golden', 'pack');
});

void test('model pack refuses a manifest.sig that is a link, before writing anything', async () => {
  const { pack, outside } = setUp('pack-sig', 'victim', 'outside bytes');
  rmSync(join(pack, 'manifest.sig'));
  symlinkSync(join(outside, 'victim'), join(pack, 'manifest.sig'));
  const config = readFileSync(join(pack, 'inference_config.json'));
  refusedFor(await model('pack', pack, '--golden-rows', '8'), 'manifest.sig', 'pack');
  assert.deepEqual(readFileSync(join(pack, 'inference_config.json')), config, 'the pack is not half rebuilt');
  assert.equal(readFileSync(join(outside, 'victim'), 'utf8'), 'outside bytes');
});

void test('model sign refuses a manifest.sig or a manifest.json that is a link outside', async () => {
  const sig = setUp('sign-sig', 'victim', 'outside bytes');
  rmSync(join(sig.pack, 'manifest.sig'));
  symlinkSync(join(sig.outside, 'victim'), join(sig.pack, 'manifest.sig'));
  const r = await model('sign', sig.pack, '--key', KEY);
  assert.equal(readFileSync(join(sig.outside, 'victim'), 'utf8'), 'outside bytes');
  refusedFor(r, 'manifest.sig', 'sign');

  const manifest = readFileSync(join(ROOT, 'models', 'candidate-good', 'manifest.json'));
  const man = setUp('sign-manifest', 'victim', manifest);
  rmSync(join(man.pack, 'manifest.json'));
  symlinkSync(join(man.outside, 'victim'), join(man.pack, 'manifest.json'));
  const signature = readFileSync(join(man.pack, 'manifest.sig'));
  refusedFor(await model('sign', man.pack, '--key', KEY), 'manifest.json', 'sign');
  assert.deepEqual(
    readFileSync(join(man.pack, 'manifest.sig')),
    signature,
    'no signature over an outside file',
  );
});

void test('a pack without links still packs and signs to the committed bytes', async () => {
  const { pack } = setUp('plain', 'unused', '');
  assert.equal((await model('pack', pack, '--classes', 'clear,hazard')).code, 0);
  const signed = await model('sign', pack, '--key', KEY);
  assert.equal(signed.code, 0, signed.err);
  for (const f of ['manifest.json', 'manifest.sig', 'inference_config.json', 'golden/inputs.f32']) {
    assert.deepEqual(
      readFileSync(join(pack, f)),
      readFileSync(join(ROOT, 'models', 'candidate-good', f)),
      `${f} as committed`,
    );
  }
  assert.deepEqual(readdirSync(pack).sort(), [
    'golden',
    'inference_config.json',
    'manifest.json',
    'manifest.sig',
    'model.onnx',
  ]);
});

for (const name of ['manifest.json', 'manifest.sig']) {
  void test(`verifyPackDir refuses a pack whose ${name} is a link outside, before reading it`, async () => {
    const { verifyPackDir, loadTrust } = await import('../../activities/pack');
    const trust = await loadTrust([join(ROOT, 'models', 'keys', 'fixture-signer.pub')]);
    const id = name.replace(/[/.]/g, '-');
    const original = readFileSync(join(ROOT, 'models', 'candidate-good', name));
    const { pack, outside } = setUp(`verify-${id}`, 'victim', original);
    // the pack as committed verifies; the same bytes reached through a link outside do not
    await verifyPackDir(pack, 'packs/plain', trust);
    rmSync(join(pack, name));
    symlinkSync(join(outside, 'victim'), join(pack, name));
    await assert.rejects(verifyPackDir(pack, 'packs/linked', trust), (e: Error) => {
      assert.match(e.message, new RegExp(`${name.replace('.', '\\.')} is a link to a file outside the pack`));
      return true;
    });
  });
}

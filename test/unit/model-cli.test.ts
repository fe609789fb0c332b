/**
 * `fleetgate model` through the real executable, in a temporary working and data directory: a new key,
 * a fixture pack copied, its draft edited, packed, signed and verified; verification refusing a flipped
 * byte and an untrusted signer; the trust store; registration; and the read-only queries (list, show,
 * history --at) over pointers moved by the registry activities in this process.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createPublicKey } from 'node:crypto';
import {
  cpSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { keyIdOf, loadTrust } from '../../activities/pack';
import { createRegistryActivities } from '../../activities/registry';
import { LocalObjectStore } from '../../activities/store';
import type { ModelRecord } from '../../activities/contracts';
import { OnnxModelRunner, blobKey } from '../../workers/model-runner';
import { runModel } from '../../cli/model';

const ROOT = resolve(__dirname, '..', '..');
const BIN = join(ROOT, 'bin', 'fleetgate.js');
const FIXTURE_PUB = join(ROOT, 'models', 'keys', 'fixture-signer.pub');

let work: string;
let dataDir: string;

before(() => {
  work = mkdtempSync(join(tmpdir(), 'fleetgate-model-cli-'));
  dataDir = join(work, 'data');
  mkdirSync(join(work, 'packs'));
  for (const p of ['production', 'candidate-good']) {
    cpSync(join(ROOT, 'models', p), join(work, 'packs', p), { recursive: true });
  }
});

after(() => {
  rmSync(work, { recursive: true, force: true });
});

/** Runs `fleetgate model ...` in the work directory with its own data directory and no other trust. */
function model(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const env: NodeJS.ProcessEnv = { ...process.env, FLEETGATE_DATA_DIR: dataDir };
  delete env.FLEETGATE_TRUSTED_KEYS;
  delete env.FLEETGATE_STORE;
  delete env.FLEETGATE_DEBUG;
  const r = spawnSync(process.execPath, [BIN, 'model', ...args], { cwd: work, env, encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ok(r: { status: number | null; stdout: string; stderr: string }): string {
  assert.equal(r.status, 0, `exit ${r.status}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r.stdout;
}

const keyIdOfFile = (file: string) => keyIdOf(createPublicKey(readFileSync(file)));
let aliceId: string;

void test('keygen writes a 0600 private key and a public key, and prints the key id', () => {
  const out = ok(model('keygen', '--out', 'keys/alice'));
  const priv = join(work, 'keys', 'alice.private.pem');
  assert.equal(statSync(priv).mode & 0o777, 0o600);
  assert.match(readFileSync(priv, 'utf8'), /BEGIN PRIVATE KEY/);
  aliceId = keyIdOfFile(join(work, 'keys', 'alice.pub'));
  assert.match(out, new RegExp(`key id ${aliceId}`));
  const again = model('keygen', '--out', 'keys/alice');
  assert.equal(again.status, 1);
  assert.match(again.stderr, /exists already; keygen never overwrites a key/);
  ok(model('keygen', '--out', 'keys/mallory'));
});

void test('pack and sign an edited draft; verify refuses it until the signer is trusted', () => {
  cpSync(join(work, 'packs', 'candidate-good'), join(work, 'packs', 'mine'), { recursive: true });
  const manifestFile = join(work, 'packs', 'mine', 'manifest.json');
  const draft = JSON.parse(readFileSync(manifestFile, 'utf8')) as Record<string, unknown>;
  delete draft.files;
  delete draft.config;
  writeFileSync(manifestFile, JSON.stringify({ ...draft, version: '1.6.0', release: 7 }, null, 2));

  const unsigned = model('sign', 'packs/mine', '--key', 'keys/alice.private.pem');
  assert.equal(unsigned.status, 1, 'a draft is not signed');
  assert.match(unsigned.stderr, /not a packed manifest; run "fleetgate model pack packs\/mine" first/);

  const packed = ok(
    model('pack', 'packs/mine', '--classes', 'clear,hazard', '--golden-rows', '16', '--tolerance', '1e-4'),
  );
  assert.match(packed, /packed packs\/mine: hazard-detector@1\.6\.0, release 7/);
  assert.match(packed, /classes clear, hazard; golden 16 rows, tolerance 0\.0001/);
  const config = JSON.parse(readFileSync(join(work, 'packs', 'mine', 'inference_config.json'), 'utf8')) as {
    version: string;
    golden: { rows: number };
  };
  assert.equal(config.version, '1.6.0');
  assert.equal(config.golden.rows, 16);
  assert.equal(readFileSync(join(work, 'packs', 'mine', 'golden', 'inputs.f32')).length, 16 * 8 * 4);

  assert.match(ok(model('sign', 'packs/mine', '--key', 'keys/alice.private.pem')), new RegExp(aliceId));
  const untrusted = model('verify', 'packs/mine');
  assert.equal(untrusted.status, 1);
  assert.match(untrusted.stderr, /refused: UntrustedSigner: model pack packs\/mine is signed by key/);

  assert.match(ok(model('trust', 'add', 'keys/alice.pub')), new RegExp(`trusted key ${aliceId}`));
  const verified = ok(model('verify', 'packs/mine'));
  assert.match(verified, /^OK packs\/mine: hazard-detector@1\.6\.0, release 7/);
  assert.match(verified, new RegExp(`signer {2}${aliceId} \\(trusted\\)`));
  for (const f of ['model.onnx', 'inference_config.json', 'golden/inputs.f32', 'golden/outputs.f32']) {
    assert.ok(verified.includes(f), `lists ${f}`);
  }
  const json = JSON.parse(ok(model('verify', 'packs/mine', '--json'))) as {
    ok: boolean;
    signer: string;
    release: number;
  };
  assert.deepEqual([json.ok, json.signer, json.release], [true, aliceId, 7]);
});

void test('verify refuses a flipped byte and an untrusted signer: exit 1 with the error type', () => {
  cpSync(join(work, 'packs', 'mine'), join(work, 'packs', 'flipped'), { recursive: true });
  const onnx = join(work, 'packs', 'flipped', 'model.onnx');
  const bytes = readFileSync(onnx);
  bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 0x01;
  writeFileSync(onnx, bytes);
  const flipped = model('verify', 'packs/flipped');
  assert.equal(flipped.status, 1);
  assert.match(flipped.stderr, /refused: DigestMismatch: model pack packs\/flipped does not match/);
  assert.match(flipped.stderr, /model\.onnx: sha256 is [0-9a-f]{64}, manifest expects/);
  const asJson = model('verify', 'packs/flipped', '--json');
  assert.equal(asJson.status, 1);
  assert.equal((JSON.parse(asJson.stdout) as { type: string }).type, 'DigestMismatch');

  cpSync(join(work, 'packs', 'mine'), join(work, 'packs', 'mallorys'), { recursive: true });
  ok(model('sign', 'packs/mallorys', '--key', 'keys/mallory.private.pem'));
  const stranger = model('verify', 'packs/mallorys');
  assert.equal(stranger.status, 1);
  assert.match(
    stranger.stderr,
    /refused: UntrustedSigner: .* signed by key [0-9a-f]{16}, which this registry/,
  );
  assert.ok(stranger.stderr.includes(aliceId.slice(0, 16)), 'names the trusted keys');
});

void test('trust add is idempotent, refuses a private key, and trust list shows each key and its file', async () => {
  assert.match(ok(model('trust', 'add', 'keys/alice.pub')), /is already trusted .*; nothing to do/);
  const priv = model('trust', 'add', 'keys/mallory.private.pem');
  assert.equal(priv.status, 2);
  assert.match(priv.stderr, /holds a private key; trust only the public half/);
  ok(model('trust', 'add', FIXTURE_PUB));
  assert.deepEqual(
    readdirSync(join(dataDir, 'trusted-keys')).sort(),
    [`${aliceId.slice(0, 16)}.pub`, `${keyIdOfFile(FIXTURE_PUB).slice(0, 16)}.pub`].sort(),
  );
  const trust = await loadTrust([join(dataDir, 'trusted-keys')]);
  assert.deepEqual([...trust.keys()].sort(), [aliceId, keyIdOfFile(FIXTURE_PUB)].sort());
  const list = ok(model('trust', 'list'));
  assert.match(
    list,
    new RegExp(`${aliceId.slice(0, 16)}\\s+data/trusted-keys/${aliceId.slice(0, 16)}\\.pub\\s+data dir`),
  );
  const json = JSON.parse(ok(model('trust', 'list', '--json'))) as { keyId: string }[];
  assert.equal(json.length, 2);
});

let production: ModelRecord;
let mine: ModelRecord;
const t: Record<string, string> = {};

void test('register records a verified pack; again is a no-op; list shows every version', () => {
  production = JSON.parse(ok(model('register', 'packs/production', '--json'))) as ModelRecord;
  assert.equal(`${production.name}@${production.version}`, 'hazard-detector@1.0.0');
  const text = ok(model('register', 'packs/mine'));
  assert.match(text, /^registered: hazard-detector@1\.6\.0 \(release 7, signer [0-9a-f]{16}\)/);
  assert.match(text, /record {10}registry\/hazard-detector\/1\.6\.0\.json/);
  assert.match(
    ok(model('register', 'packs/mine')),
    /^already registered, identical: hazard-detector@1\.6\.0/,
  );
  const refused = model('register', 'packs/mallorys');
  assert.equal(refused.status, 1);
  assert.match(refused.stderr, /UntrustedSigner/);

  const rows = JSON.parse(ok(model('list', '--json'))) as {
    name: string;
    version: string;
    release: number;
    digest: string;
    signer: string;
    registeredAt: string | null;
  }[];
  assert.deepEqual(
    rows.map((r) => `${r.name}@${r.version}`),
    ['hazard-detector@1.0.0', 'hazard-detector@1.6.0'],
  );
  assert.equal(rows[1]!.release, 7);
  assert.equal(rows[1]!.signer, aliceId);
  assert.ok(rows[1]!.registeredAt, 'the local store knows when');
  mine = JSON.parse(ok(model('show', 'hazard-detector@1.6.0', '--json'))).record as ModelRecord;
});

void test('history --at tells what was production for a cohort before and after a pointer move', async () => {
  const store = new LocalObjectStore(join(dataDir, 'store'), { durable: false });
  const runner = new OnnxModelRunner((digest) => store.get(blobKey(digest)));
  try {
    const acts = createRegistryActivities({ store, runner, root: work, trust: new Map() });
    t.before = new Date().toISOString();
    await delay(20);
    await acts.movePointer({
      cohort: 'hw3/eu',
      stage: 'production',
      digest: production.digest,
      expected: null,
      rolloutId: 'bootstrap-test',
      reason: 'bootstrap',
    });
    await delay(20);
    t.between = new Date().toISOString();
    await delay(20);
    await acts.movePointer({
      cohort: 'hw3/eu',
      stage: 'production',
      digest: mine.digest,
      expected: production.digest,
      rolloutId: 'r-promote',
      reason: 'promoted: noninferior on every metric',
    });
    await delay(20);
    t.after = new Date().toISOString();
    // A bench report and a rollout report of 1.6.0, where the bench and the workflow put them.
    await store.putIfAbsent(
      `${mine.recordKey.replace(/\.json$/, '')}.bench/hw3/r-promote.json`,
      Buffer.from(
        JSON.stringify({
          apiVersion: 'fleetgate/v1',
          kind: 'BenchReport',
          rolloutId: 'r-promote',
          sku: { name: 'hw3' },
          result: {
            sku: 'hw3',
            p95Ms: 1.25,
            budgetMs: 5,
            deterministic: true,
            contractOk: true,
            passed: true,
          },
          at: t.between,
        }),
      ),
    );
  } finally {
    await runner.close();
  }
  mkdirSync(join(dataDir, 'reports'), { recursive: true });
  writeFileSync(
    join(dataDir, 'reports', 'r-promote.json'),
    JSON.stringify({
      rolloutId: 'r-promote',
      outcome: 'completed',
      reason: '1 promoted',
      candidate: mine,
      cohorts: [
        { cohort: 'hw3/eu', state: 'promoted', wave: 3, vehicles: 400, headline: 'error_rate → noninferior' },
      ],
      startedAt: t.before,
      finishedAt: t.after,
    }),
  );
  writeFileSync(
    join(dataDir, 'reports', 'r-other.json'),
    JSON.stringify({ rolloutId: 'r-other', outcome: 'completed', candidate: production, cohorts: [] }),
  );

  const at = (time: string) =>
    JSON.parse(ok(model('history', '--cohort', 'hw3/eu', '--at', time, '--json'))) as {
      digest: string | null;
      model: string;
      rolloutId: string | null;
    }[];
  assert.deepEqual(
    at(t.before!).map((a) => a.digest),
    [null],
  );
  assert.deepEqual(
    at(t.between!).map((a) => [a.model, a.rolloutId]),
    [['hazard-detector@1.0.0', 'bootstrap-test']],
  );
  assert.deepEqual(
    at(t.after!).map((a) => [a.model, a.digest]),
    [['hazard-detector@1.6.0', mine.digest]],
  );
  const text = ok(model('history', '--cohort', 'hw3/eu', '--at', t.between!));
  assert.match(
    text,
    /hw3\/eu production: hazard-detector@1\.0\.0 \([0-9a-f]{12}\), since .* \(#1 by bootstrap-test: bootstrap\)/,
  );

  const history = ok(model('history'));
  assert.match(history, /^hw3\/eu production$/m);
  assert.match(history, /#1 .* \(none\) -> hazard-detector@1\.0\.0 {2}by bootstrap-test: bootstrap/);
  assert.match(history, /#2 .* hazard-detector@1\.0\.0 -> hazard-detector@1\.6\.0 {2}by r-promote: promoted/);
  assert.match(ok(model('list')), /hazard-detector@1\.6\.0 +7 +[0-9a-f]{12} +[0-9a-f]{16} +\S+ +hw3\/eu +-/);
});

void test('show is the model card: every record field, pointers, bench reports and rollouts', () => {
  const card = JSON.parse(ok(model('show', 'hazard-detector@1.6.0', '--json'))) as {
    record: ModelRecord;
    production: string[];
    pointerMoves: { rolloutId: string }[];
    benchReports: { sku: { name: string }; rolloutId: string }[];
    rollouts: { rolloutId: string; outcome: string; cohorts: { cohort: string; state: string }[] }[];
  };
  for (const field of [
    'name',
    'version',
    'digest',
    'manifestDigest',
    'recordKey',
    'contract',
    'release',
    'files',
    'signer',
    'signatureDigest',
    'trainingDataHash',
    'codeHash',
    'compatibleSkus',
    'skuBudgets',
    'golden',
    'configDigest',
  ]) {
    assert.ok(field in card.record, `record has ${field}`);
  }
  assert.deepEqual(card.production, ['hw3/eu']);
  assert.deepEqual(
    card.pointerMoves.map((m) => m.rolloutId),
    ['r-promote'],
  );
  assert.deepEqual(
    card.benchReports.map((b) => [b.sku.name, b.rolloutId]),
    [['hw3', 'r-promote']],
  );
  assert.deepEqual(
    card.rollouts.map((r) => [r.rolloutId, r.outcome, r.cohorts[0]?.state]),
    [['r-promote', 'completed', 'promoted']],
  );
  const text = ok(model('show', 'hazard-detector@1.6.0'));
  for (const line of [
    /^hazard-detector@1\.6\.0$/m,
    /release {9}7/,
    new RegExp(`signer {10}${aliceId}`),
    /inputs {10}features float32 \[batch, 8\]/,
    /production in {3}hw3\/eu/,
    /hw3 +rollout r-promote: passed; p95 1\.25 ms \(budget 5 ms\); deterministic; at 20/,
    /r-promote: completed/,
    /hw3\/eu +promoted +error_rate → noninferior/,
  ]) {
    assert.match(text, line);
  }
  const missing = model('show', 'hazard-detector@9.9.9');
  assert.equal(missing.status, 1);
  assert.match(
    missing.stderr,
    /hazard-detector@9\.9\.9 is not registered .*; registered versions of hazard-detector: 1\.0\.0, 1\.6\.0/,
  );
});

void test('usage mistakes: one clear line and exit 2', async () => {
  // Through the executable: the exit code reaches the shell.
  for (const [args, message] of [
    [['frobnicate'], /unknown command "model frobnicate": use one of keygen, pack, sign/],
    [['sign', 'packs/mine'], /"model sign" needs --key FILE/],
  ] as const) {
    const r = model(...args);
    assert.equal(r.status, 2, `${args.join(' ')}: exit ${r.status}, ${r.stderr}`);
    assert.match(r.stderr, message);
    assert.equal(r.stderr.trim().split('\n').length, 1, `one line for ${args.join(' ')}`);
  }
  // The rest in this process (the same runModel the executable calls), to keep the test quick.
  const cwd = process.cwd();
  process.chdir(work);
  try {
    for (const [args, message] of [
      [['show', 'hazard-detector'], /"hazard-detector" is not NAME@VERSION/],
      [['show', 'hazard-detector@1.6'], /the version "1\.6" is not a semantic version/],
      [['show', 'Hazard@1.0.0'], /the name "Hazard" is not a model name/],
      [['show', 'a@b@c'], /"a@b@c" is not NAME@VERSION/],
      [['history', '--stage', 'prod'], /--stage "prod": use "production" or "candidate"/],
      [['history', '--at', 'yesterday'], /--at "yesterday": an ISO 8601 time/],
      [['history', '--cohort'], /--cohort/],
      [['pack', 'packs/mine', '--golden-rows', '0'], /--golden-rows "0": a whole number from 1/],
      [['pack', 'packs/mine', '--classes', 'clear'], /--classes "clear": give two or more class names/],
      [
        ['pack', 'packs/mine', '--tolerance', '-1'],
        /--tolerance: write a value that starts with "-" as --tolerance=-VALUE/,
      ],
      [['pack', 'packs/mine', '--tolerance=-1'], /--tolerance "-1": a number above 0/],
      [['trust', 'frob'], /unknown command "model trust frob"/],
      [['trust', 'remove', 'xyz'], /"xyz" is not a key id/],
      [['verify'], /"model verify" takes DIR \(got none/],
      [['verify', 'packs/nowhere'], /packs\/nowhere does not exist; give the pack directory/],
      [['keygen'], /"model keygen" needs --out PREFIX/],
      [['list', 'extra'], /"model list" takes no arguments \(got "extra"/],
      [['list', '--frob'], /Unknown option '--frob'/],
    ] as const) {
      const err: string[] = [];
      const code = await runModel([...args], { out: () => undefined, err: (text) => void err.push(text) });
      assert.equal(code, 2, `${args.join(' ')}: exit ${code}, ${err.join('')}`);
      assert.equal(err.length, 1, `one message for ${args.join(' ')}`);
      assert.match(err[0]!, message);
      assert.equal(err[0]!.trim().split('\n').length, 1, `one line for ${args.join(' ')}`);
    }
  } finally {
    process.chdir(cwd);
  }
});

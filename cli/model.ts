/**
 * `fleetgate model`: signing keys, model packs and the registry from the command line (docs/registry.md).
 *
 *   keygen, pack, sign, verify   keys and signed packs, on local files only
 *   trust add|list|remove        the signer keys the registry trusts (<data dir>/trusted-keys)
 *   register                     a pack as an immutable registry version, through the registry activities
 *   list, show, history          read-only queries of the registry (activities/registry-read.ts) and of
 *                                the rollout reports (the object store's, then the data directory's)
 *
 * A thin shell: it parses and checks flags, calls the pack, registry and build modules and prints (a few
 * lines, or JSON with --json where the output is data). Heavy modules (onnxruntime, DuckDB, the worker)
 * are loaded only by the subcommands that need them. No subcommand opens the fleet database (a running
 * worker owns it): the registry is the object store alone. A refusal prints its error type and message
 * and exits 1; a mistake in how the command was called prints one line naming the flag or value and
 * exits 2. It never prints a private key, nor a
 * control character or bidi override of a record, a pointer's history or a report (cli/terminal.ts).
 */
import { createPublicKey } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ApplicationFailure } from '@temporalio/common';
import type { ModelRecord } from '../activities/contracts';
import type { ObjectStore } from '../activities/deps';
import type { PointerHistoryEntry, RegistryDeps, Stage } from '../activities/registry';
import type { BuildOptions } from '../workers/pack-build';
import { loadConfig, openObjectStore, type Config } from '../workers/config';
import { ModelManifest, formatIssues } from '../policies/schema';
import type * as PackModule from '../activities/pack';
import type * as PackBuildModule from '../workers/pack-build';
import type * as RegistryModule from '../activities/registry';
import type * as RegistryReadModule from '../activities/registry-read';
import type * as ReportCliModule from './report';
import type * as InferenceModule from '../activities/inference';
import type * as WorkerModule from '../workers/worker';
import type * as ModelRunnerModule from '../workers/model-runner';
import { safeOutput, safeStrings } from './terminal';

/** Where the command writes; the process's stdout and stderr unless a caller captures them. */
export interface ModelIo {
  out(text: string): void;
  err(text: string): void;
}

const PROCESS_IO: ModelIo = {
  out: (text) => console.log(text.replace(/\n$/, '')),
  err: (text) => console.error(text.replace(/\n$/, '')),
};

/** A mistake in how the command was called: exit code 2. */
class ModelUsageError extends Error {
  override name = 'ModelUsageError';
}
/** A failure whose message says it all: exit code 1 unless given. */
class ModelError extends Error {
  override name = 'ModelError';
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

const TRUSTED_KEYS = 'trusted-keys';
/** Hex digits of a key id in file names and tables. */
const KEY_PREFIX = 16;

// ---- help ---------------------------------------------------------------------------------------

const USAGE = `Usage: fleetgate model <command> [options]      (fleetgate model <command> --help)

  keygen --out PREFIX         new ed25519 signing key: PREFIX.private.pem (0600) and PREFIX.pub
  pack DIR                    complete a pack from model.onnx and a manifest.json draft
  sign DIR --key FILE         sign the pack's manifest (writes manifest.sig)
  verify DIR                  check a pack against the trusted keys, as the registry does
  trust add FILE.pub          trust a signer's public key in this data directory
  trust list                  the trusted signer keys
  trust remove KEYID          stop trusting a key of this data directory
  register DIR                register a pack as an immutable registry version
  list                        every registered version, and where it is production or candidate
  show NAME@VERSION           the model card: record, bench reports, rollouts
  history                     stage pointer moves per cohort; --at: what was production then

Trusted keys: FLEETGATE_TRUSTED_KEYS (files or directories of *.pub) and <data dir>/trusted-keys.
See docs/registry.md. Exit code 0 on success, 1 when refused or failed, 2 on a usage mistake.`;

const HELP: Record<string, string> = {
  keygen: `Usage: fleetgate model keygen --out PREFIX

Writes a new ed25519 key pair: PREFIX.private.pem (PKCS#8, mode 0600: keep it secret, sign with it) and
PREFIX.pub (SPKI: hand it to every registry that should trust the signer). Prints the key id, the
sha256 of the raw public key. Refuses to overwrite existing files.`,
  pack: `Usage: fleetgate model pack DIR [--classes a,b] [--golden-rows N] [--tolerance X] [--json]

DIR holds model.onnx and a manifest.json draft: apiVersion "fleetgate/v1", kind "ModelPack", name,
version (semver), release (a counter above the production release it replaces), model ("model.onnx"),
trainingDataHash, codeHash (sha256 hex), compatibleSkus, and optionally skuBudgets. Reads the model's
contract, draws golden inputs (seeded by the model's digest) and records the outputs, writes
inference_config.json and golden/, fills in the manifest's "config" and "files" (sha256 of every file)
and removes a stale manifest.sig. Sign it next.
  --classes a,b       output class names in output order (default: the existing config's, else class0, ...)
  --golden-rows N     golden rows (default 64)
  --tolerance X       largest absolute difference allowed per golden output value (default 1e-5)
  --json              print the manifest written`,
  sign: `Usage: fleetgate model sign DIR --key FILE

Signs DIR/manifest.json with the ed25519 private key FILE (from "fleetgate model keygen") and writes
DIR/manifest.sig. Refuses a manifest that is still a draft or no longer matches the pack's files (run
"fleetgate model pack DIR" again). Prints the signer's key id.`,
  verify: `Usage: fleetgate model verify DIR [--json]

Checks DIR as the registry does, against the trusted keys (FLEETGATE_TRUSTED_KEYS and
<data dir>/trusted-keys): signature and signer, manifest, file set, each file's sha256, the inference
config's release. Prints OK with the signer, release and files; a refusal prints its error type
(BadSignature, UntrustedSigner, FileSetMismatch, DigestMismatch, MixedRelease, PathEscape, ...) and
message and exits 1. Opens no database.
  --json   {"ok":true,"name","version","release","signer","files":{...}} or {"ok":false,"type","message"}`,
  trust: `Usage: fleetgate model trust add FILE.pub
       fleetgate model trust list [--json]
       fleetgate model trust remove KEYID

add     copies the public key into <data dir>/trusted-keys/<first ${KEY_PREFIX} hex of its key id>.pub;
        a key already there is left alone. Workers read the trusted keys when they start: restart them.
list    every trusted key: its id, file and where it comes from (FLEETGATE_TRUSTED_KEYS or the data dir)
remove  deletes the data directory's files of the key whose id starts with KEYID (8 hex digits at
        least); keys listed by FLEETGATE_TRUSTED_KEYS are removed there`,
  register: `Usage: fleetgate model register DIR [--json]

Verifies the pack as "model verify" does and records it as an immutable registry version (record,
signed manifest, signature, every file as a content-addressed blob), with what a worker's register
step uses: the object store (FLEETGATE_STORE), the trusted keys, onnxruntime for the contract. DIR is
read relative to the working directory and must be inside it. Moves no pointer. Registering the same
pack again is a no-op; other bytes under a registered name@version, and a registered model under
another name@version, are refused (ImmutableConflict). Opens no fleet database, so it runs beside a
worker.
  --json   print the record`,
  list: `Usage: fleetgate model list [--json]

Every registered name@version: its release, model digest, signer, when it was registered (local store
only) and the cohorts where it is production or candidate now.`,
  show: `Usage: fleetgate model show NAME@VERSION [--json]

The model card of a registered version: every field of its registry record, where it is production or
candidate now and every pointer move to or from it, the bench reports stored with it, and the outcome per
cohort of every rollout of it (matched by the candidate's digest) found in the object store's reports/
(FLEETGATE_STORE), or in <data dir>/reports for reports written before workers put them in the store.`,
  history: `Usage: fleetgate model history [--cohort C] [--stage production|candidate] [--at ISO-TIME] [--json]

Every move of the stage pointers, per cohort: when, from -> to (as name@version), which rollout moved
it and why. With --at: what each pointer (production unless --stage) held at that time, e.g.
  fleetgate model history --cohort hw3/eu --at 2026-01-15T12:00:00Z
  --cohort C   only this cohort
  --stage S    only this stage
  --at T       an ISO 8601 time, e.g. 2026-01-15 or 2026-01-15T12:00:00Z`,
};
HELP['trust add'] = HELP.trust!;
HELP['trust list'] = HELP.trust!;
HELP['trust remove'] = HELP.trust!;

// ---- argument parsing ---------------------------------------------------------------------------

type Values = Record<string, string | boolean | undefined>;
type OptionSpec = Record<string, { type: 'string' | 'boolean' }>;

/**
 * Parses one subcommand's flags; `positionals` names each positional argument (e.g. ['DIR']). Returns
 * undefined when --help was asked (after printing it).
 */
function parse(
  command: string,
  args: string[],
  options: OptionSpec,
  positionals: string[],
  io: ModelIo,
): { values: Values; positionals: string[] } | undefined {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: { help: { type: 'boolean', short: 'h' }, ...options },
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    const message = (err as Error).message;
    const dash = /Option '(--[\w-]+)' argument is ambiguous/.exec(message);
    if (dash) {
      throw new ModelUsageError(`${dash[1]}: write a value that starts with "-" as ${dash[1]}=-VALUE`);
    }
    throw new ModelUsageError(`${message.split(/\.\s|\n/)[0]} (see "fleetgate model ${command} --help")`);
  }
  if (parsed.values.help) {
    io.out(HELP[command] ?? USAGE);
    return undefined;
  }
  if (parsed.positionals.length !== positionals.length) {
    const want = positionals.length === 0 ? 'no arguments' : positionals.join(' ');
    const got = parsed.positionals.length === 0 ? 'none' : parsed.positionals.map((p) => `"${p}"`).join(' ');
    throw new ModelUsageError(
      `"model ${command}" takes ${want} (got ${got}; see "fleetgate model ${command} --help")`,
    );
  }
  return { values: parsed.values as Values, positionals: parsed.positionals };
}

function str(values: Values, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

function required(command: string, values: Values, name: string, what: string): string {
  const v = str(values, name);
  if (v === undefined || v.trim() === '') {
    throw new ModelUsageError(
      `"model ${command}" needs --${name} ${what} (see "fleetgate model ${command} --help")`,
    );
  }
  return v;
}

/** `name@version`, checked against the manifest's rules. */
export function parseModelRef(text: string): { name: string; version: string } {
  const m = /^([^@]+)@([^@]+)$/.exec(text);
  const name = m?.[1];
  const version = m?.[2];
  if (!name || !version) {
    throw new ModelUsageError(
      `"${text}" is not NAME@VERSION: write the model's name, "@" and its version, e.g. hazard-detector@1.1.0`,
    );
  }
  if (!/^[a-z0-9][a-z0-9._-]*$/.test(name)) {
    throw new ModelUsageError(
      `"${text}": the name "${name}" is not a model name (lowercase letters, digits, ".", "_" or "-"), e.g. hazard-detector@1.1.0`,
    );
  }
  if (!/^\d+\.\d+\.\d+$/.test(version)) {
    throw new ModelUsageError(
      `"${text}": the version "${version}" is not a semantic version such as 1.1.0, e.g. ${name}@1.1.0`,
    );
  }
  return { name, version };
}

/** An existing directory, or a usage error naming it. */
async function packDirArg(command: string, dir: string): Promise<string> {
  let stat;
  try {
    stat = await fs.stat(dir);
  } catch {
    throw new ModelError(`"model ${command}": ${dir} does not exist; give the pack directory`, 2);
  }
  if (!stat.isDirectory()) {
    throw new ModelError(`"model ${command}": ${dir} is not a directory; give the pack directory`, 2);
  }
  return dir;
}

// ---- keys ---------------------------------------------------------------------------------------

async function keygenCommand(args: string[], io: ModelIo): Promise<number> {
  const p = parse('keygen', args, { out: { type: 'string' } }, [], io);
  if (!p) return 0;
  const prefix = required('keygen', p.values, 'out', 'PREFIX (e.g. --out keys/alice)');
  const { generateSigningKey } = require('../activities/pack') as typeof PackModule;
  const key = generateSigningKey();
  const privateFile = `${prefix}.private.pem`;
  const publicFile = `${prefix}.pub`;
  for (const f of [privateFile, publicFile]) {
    if (await exists(f)) {
      throw new ModelError(`${f} exists already; keygen never overwrites a key: choose another --out`);
    }
  }
  await fs.mkdir(dirname(resolve(privateFile)), { recursive: true });
  await fs.writeFile(privateFile, key.privatePem, { flag: 'wx', mode: 0o600 });
  await fs.chmod(privateFile, 0o600);
  await fs.writeFile(publicFile, key.publicPem, { flag: 'wx', mode: 0o644 });
  io.out(`key id ${key.keyId}`);
  io.out(`  private key  ${privateFile} (mode 0600; keep it secret: it signs packs)`);
  io.out(`  public key   ${publicFile}`);
  io.out(`trust it where packs are verified and registered: fleetgate model trust add ${publicFile}`);
  return 0;
}

/** One trusted key file and where its path came from. */
interface TrustedKeyFile {
  keyId: string;
  file: string;
  source: 'FLEETGATE_TRUSTED_KEYS' | 'data dir';
}

/** Every trusted key file of the configuration, in the order the registry reads them. */
async function trustedKeyFiles(config: Config): Promise<TrustedKeyFile[]> {
  const { trustedKeyPaths } = require('../workers/worker') as typeof WorkerModule;
  const { loadTrust, trustedKeyFilesIn } = require('../activities/pack') as typeof PackModule;
  const dataDirKeys = join(config.dataDir, TRUSTED_KEYS);
  const out: TrustedKeyFile[] = [];
  for (const { from, file } of await trustedKeyFilesIn(trustedKeyPaths(config.dataDir))) {
    for (const keyId of (await loadTrust([file])).keys()) {
      out.push({ keyId, file, source: from === dataDirKeys ? 'data dir' : 'FLEETGATE_TRUSTED_KEYS' });
    }
  }
  return out;
}

async function trustCommand(args: string[], io: ModelIo): Promise<number> {
  const sub = args[0];
  if (sub === undefined || sub === '--help' || sub === '-h') {
    if (sub === undefined) {
      io.err(HELP.trust!);
      return 2;
    }
    io.out(HELP.trust!);
    return 0;
  }
  if (sub === 'add') return trustAdd(args.slice(1), io);
  if (sub === 'list') return trustList(args.slice(1), io);
  if (sub === 'remove') return trustRemove(args.slice(1), io);
  throw new ModelUsageError(
    `unknown command "model trust ${sub}": use "model trust add", "model trust list" or "model trust remove"`,
  );
}

async function trustAdd(args: string[], io: ModelIo): Promise<number> {
  const p = parse('trust add', args, {}, ['FILE.pub'], io);
  if (!p) return 0;
  const file = p.positionals[0]!;
  let pem: string;
  try {
    pem = await fs.readFile(file, 'utf8');
  } catch (err) {
    throw new ModelError(
      `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? err}); give a .pub file`,
      2,
    );
  }
  if (/PRIVATE KEY/.test(pem)) {
    throw new ModelError(
      `${file} holds a private key; trust only the public half, the .pub file "fleetgate model keygen" wrote beside it`,
      2,
    );
  }
  const { keyIdOf } = require('../activities/pack') as typeof PackModule;
  let keyId: string;
  let publicPem: string;
  try {
    const key = createPublicKey(pem);
    keyId = keyIdOf(key);
    publicPem = key.export({ format: 'pem', type: 'spki' }).toString();
  } catch (err) {
    const why =
      err instanceof ApplicationFailure ? err.message : `not a PEM public key: ${(err as Error).message}`;
    throw new ModelError(`${file}: ${why}; give the .pub file "fleetgate model keygen" wrote`, 2);
  }
  const config = loadConfig();
  const dir = join(config.dataDir, TRUSTED_KEYS);
  const already = (await trustedKeyFiles(config)).filter((k) => k.keyId === keyId && k.source === 'data dir');
  if (already.length > 0) {
    io.out(`key ${keyId} is already trusted (${displayPath(already[0]!.file)}); nothing to do`);
    return 0;
  }
  await fs.mkdir(dir, { recursive: true });
  const target = join(dir, `${keyId.slice(0, KEY_PREFIX)}.pub`);
  try {
    await fs.writeFile(target, publicPem, { flag: 'wx', mode: 0o644 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    throw new ModelError(
      `${displayPath(target)} exists and holds another key (or is not a PEM public key); remove it and add the key again`,
    );
  }
  io.out(`trusted key ${keyId}: wrote ${displayPath(target)}`);
  io.out('workers read the trusted keys when they start: restart running workers to use it');
  return 0;
}

async function trustList(args: string[], io: ModelIo): Promise<number> {
  const p = parse('trust list', args, { json: { type: 'boolean' } }, [], io);
  if (!p) return 0;
  const keys = await trustedKeyFiles(loadConfig());
  if (p.values.json) {
    io.out(JSON.stringify(keys, null, 2));
    return 0;
  }
  if (keys.length === 0) {
    io.out(
      'no trusted keys: the registry refuses every pack. Add a signer with "fleetgate model trust add FILE.pub" ' +
        '(the fixture packs: models/keys/fixture-signer.pub)',
    );
    return 0;
  }
  io.out(
    table(
      ['key id', 'file', 'from'],
      keys.map((k) => [k.keyId.slice(0, KEY_PREFIX), displayPath(k.file), k.source]),
    ),
  );
  return 0;
}

async function trustRemove(args: string[], io: ModelIo): Promise<number> {
  const p = parse('trust remove', args, {}, ['KEYID'], io);
  if (!p) return 0;
  const prefix = p.positionals[0]!.toLowerCase();
  if (!/^[0-9a-f]{8,64}$/.test(prefix)) {
    throw new ModelUsageError(
      `"${p.positionals[0]}" is not a key id: give at least 8 of its hex digits, as "fleetgate model trust list" shows them`,
    );
  }
  const keys = (await trustedKeyFiles(loadConfig())).filter((k) => k.keyId.startsWith(prefix));
  const ids = new Set(keys.map((k) => k.keyId));
  if (ids.size > 1) {
    throw new ModelUsageError(
      `key id ${prefix} is ambiguous: it starts ${[...ids].join(', ')}; give more digits`,
    );
  }
  const mine = keys.filter((k) => k.source === 'data dir');
  const elsewhere = keys.filter((k) => k.source !== 'data dir');
  if (mine.length === 0) {
    throw new ModelError(
      elsewhere.length > 0
        ? `key ${prefix} is trusted through FLEETGATE_TRUSTED_KEYS (${elsewhere.map((k) => k.file).join(', ')}); remove it there`
        : `no trusted key has an id starting ${prefix}; see "fleetgate model trust list"`,
    );
  }
  for (const k of mine) await fs.rm(k.file);
  io.out(
    `no longer trusted: key ${mine[0]!.keyId} (removed ${mine.map((k) => displayPath(k.file)).join(', ')})`,
  );
  if (elsewhere.length > 0) {
    io.out(`note: FLEETGATE_TRUSTED_KEYS still lists it (${elsewhere.map((k) => k.file).join(', ')})`);
  }
  io.out('workers read the trusted keys when they start: restart running workers');
  return 0;
}

// ---- packs --------------------------------------------------------------------------------------

async function packCommand(args: string[], io: ModelIo): Promise<number> {
  const p = parse(
    'pack',
    args,
    {
      classes: { type: 'string' },
      'golden-rows': { type: 'string' },
      tolerance: { type: 'string' },
      json: { type: 'boolean' },
    },
    ['DIR'],
    io,
  );
  if (!p) return 0;
  const dir = await packDirArg('pack', p.positionals[0]!);
  const options: BuildOptions = {};
  const classes = str(p.values, 'classes');
  if (classes !== undefined) {
    const names = classes.split(',').map((c) => c.trim());
    if (names.length < 2 || names.some((c) => c === '')) {
      throw new ModelUsageError(
        `--classes "${classes}": give two or more class names separated by commas, in output order, e.g. --classes clear,hazard`,
      );
    }
    options.classes = names;
  }
  const rows = str(p.values, 'golden-rows');
  if (rows !== undefined) {
    const n = Number(rows);
    if (!/^\d+$/.test(rows) || !Number.isInteger(n) || n < 1 || n > 1_000_000) {
      throw new ModelUsageError(`--golden-rows "${rows}": a whole number from 1 to 1000000, e.g. 64`);
    }
    options.goldenRows = n;
  }
  const tolerance = str(p.values, 'tolerance');
  if (tolerance !== undefined) {
    const x = Number(tolerance);
    if (tolerance.trim() === '' || !Number.isFinite(x) || x <= 0) {
      throw new ModelUsageError(`--tolerance "${tolerance}": a number above 0, e.g. 1e-5`);
    }
    options.tolerance = x;
  }
  const { buildPack, CONFIG } = require('../workers/pack-build') as typeof PackBuildModule;
  const manifest = await buildPack(dir, options);
  if (p.values.json) {
    io.out(JSON.stringify(manifest, null, 2));
    return 0;
  }
  const config = JSON.parse(await fs.readFile(join(dir, CONFIG), 'utf8')) as {
    classes: string[];
    golden: { rows: number; tolerance: number };
  };
  io.out(`packed ${dir}: ${manifest.name}@${manifest.version}, release ${manifest.release}`);
  io.out(`  model         ${manifest.model}  ${manifest.files[manifest.model]}`);
  io.out(
    `  config        ${manifest.config}  classes ${config.classes.join(', ')}; golden ${config.golden.rows} rows, ` +
      `tolerance ${config.golden.tolerance}`,
  );
  io.out(`  skus          ${skuSummary(manifest.compatibleSkus, manifest.skuBudgets)}`);
  io.out(`  files         ${Object.keys(manifest.files).length}`);
  for (const [f, d] of Object.entries(manifest.files)) io.out(`    ${f.padEnd(28)}${d}`);
  io.out(`unsigned: sign it with "fleetgate model sign ${dir} --key KEY.private.pem"`);
  return 0;
}

async function signCommand(args: string[], io: ModelIo): Promise<number> {
  const p = parse('sign', args, { key: { type: 'string' } }, ['DIR'], io);
  if (!p) return 0;
  const dir = await packDirArg('sign', p.positionals[0]!);
  const keyFile = required(
    'sign',
    p.values,
    'key',
    'FILE, the private key (e.g. --key keys/alice.private.pem)',
  );
  let pem: Buffer;
  try {
    pem = await fs.readFile(keyFile);
  } catch (err) {
    throw new ModelError(`cannot read the key ${keyFile} (${(err as NodeJS.ErrnoException).code ?? err})`, 2);
  }
  await checkPacked(dir);
  const { signPack } = require('../workers/pack-build') as typeof PackBuildModule;
  const keyId = await signPack(dir, pem);
  io.out(`signed ${join(dir, 'manifest.json')} with key ${keyId}; wrote ${join(dir, 'manifest.sig')}`);
  io.out(`check it: fleetgate model verify ${dir}`);
  return 0;
}

/** Refuses to sign a draft, or a manifest that no longer matches the pack's files. */
async function checkPacked(dir: string): Promise<void> {
  const { MANIFEST, SIGNATURE, hashFile, listFiles } = require('../activities/pack') as typeof PackModule;
  const again = `run "fleetgate model pack ${dir}" first`;
  let raw: unknown;
  try {
    raw = JSON.parse(await fs.readFile(join(dir, MANIFEST), 'utf8'));
  } catch (err) {
    throw new ModelError(
      `${join(dir, MANIFEST)} cannot be read as JSON (${(err as Error).message}); ${again}`,
    );
  }
  const parsed = ModelManifest.safeParse(raw);
  if (!parsed.success) {
    throw new ModelError(
      `${join(dir, MANIFEST)} is not a packed manifest; ${again}:\n${formatIssues(parsed.error, raw, 'manifest')}`,
    );
  }
  const listed = parsed.data.files;
  const present = (await listFiles(dir)).filter((f) => f !== MANIFEST && f !== SIGNATURE);
  const problems: string[] = [];
  for (const f of present) if (!(f in listed)) problems.push(`${f}: in the pack but not in the manifest`);
  for (const [f, expected] of Object.entries(listed)) {
    if (!present.includes(f)) problems.push(`${f}: in the manifest but not in the pack`);
    else if ((await hashFile(join(dir, ...f.split('/')))) !== expected)
      problems.push(`${f}: changed since it was packed`);
  }
  if (problems.length > 0) {
    throw new ModelError(`${dir} no longer matches its manifest; ${again}:\n${problems.join('\n')}`);
  }
}

async function verifyCommand(args: string[], io: ModelIo): Promise<number> {
  const p = parse('verify', args, { json: { type: 'boolean' } }, ['DIR'], io);
  if (!p) return 0;
  const dir = await packDirArg('verify', p.positionals[0]!);
  const config = loadConfig();
  const { trustedKeyPaths } = require('../workers/worker') as typeof WorkerModule;
  const { loadTrust, verifyPackDir } = require('../activities/pack') as typeof PackModule;
  const trust = await loadTrust(trustedKeyPaths(config.dataDir));
  let pack;
  try {
    pack = await verifyPackDir(resolve(dir), dir, trust);
  } catch (err) {
    if (!(err instanceof ApplicationFailure)) throw err;
    if (p.values.json) {
      io.out(JSON.stringify({ ok: false, dir, type: err.type, message: err.message }, null, 2));
    } else {
      io.err(`fleetgate: refused: ${err.type ?? 'Error'}: ${indented(err.message)}`);
    }
    return 1;
  }
  const { manifest } = pack;
  if (p.values.json) {
    io.out(
      JSON.stringify(
        {
          ok: true,
          dir,
          name: manifest.name,
          version: manifest.version,
          release: manifest.release,
          signer: pack.signer,
          model: manifest.model,
          files: manifest.files,
        },
        null,
        2,
      ),
    );
    return 0;
  }
  io.out(`OK ${dir}: ${manifest.name}@${manifest.version}, release ${manifest.release}`);
  io.out(`  signer  ${pack.signer} (trusted)`);
  io.out(`  files   ${Object.keys(manifest.files).length}, each matching the signed manifest`);
  for (const [f, d] of Object.entries(manifest.files)) io.out(`    ${f.padEnd(28)}${d}`);
  return 0;
}

// ---- the registry -------------------------------------------------------------------------------

/** The configured object store (local or S3), opened without the rest of the services. */
async function withStore<T>(fn: (store: ObjectStore, config: Config) => Promise<T>): Promise<T> {
  const config = loadConfig();
  const store = openObjectStore(config.store, config.dataDir);
  try {
    return await fn(store, config);
  } finally {
    const closable = store as { close?: () => unknown };
    if (typeof closable.close === 'function') await closable.close();
  }
}

/**
 * Runs `fn` with the registry alone, as a worker's register step uses it: the configured object store,
 * the trusted keys and onnxruntime for the contract. Never the fleet database, which a running worker
 * owns, so what needs only the registry (model register, fleet init of a service) runs beside a worker.
 */
export async function withRegistry<T>(
  fn: (deps: RegistryDeps, config: Config) => Promise<T>,
  config: Config = loadConfig(),
): Promise<T> {
  const { trustedKeyPaths } = require('../workers/worker') as typeof WorkerModule;
  const { loadTrust } = require('../activities/pack') as typeof PackModule;
  const { OnnxModelRunner, blobKey } = require('../workers/model-runner') as typeof ModelRunnerModule;
  const trust = await loadTrust(trustedKeyPaths(config.dataDir));
  const store = openObjectStore(config.store, config.dataDir);
  const runner = new OnnxModelRunner((digest) => store.get(blobKey(digest)));
  try {
    return await fn({ store, runner, trust, root: config.root }, config);
  } finally {
    await runner.close();
    const closable = store as { close?: () => unknown };
    if (typeof closable.close === 'function') await closable.close();
  }
}

async function registerCommand(args: string[], io: ModelIo): Promise<number> {
  const p = parse('register', args, { json: { type: 'boolean' } }, ['DIR'], io);
  if (!p) return 0;
  const dir = await packDirArg('register', p.positionals[0]!);
  const { createRegistryActivities } = require('../activities/registry') as typeof RegistryModule;
  const read = require('../activities/registry-read') as typeof RegistryReadModule;
  const { record, existed } = await withRegistry(async (deps) => {
    const draft = await readManifestName(dir);
    const existed =
      draft !== undefined && (await read.readRecord(deps.store, draft.name, draft.version)) !== undefined;
    const record = await createRegistryActivities(deps).registerCandidate({
      rolloutId: `model-register-${defaultRequester()}`,
      packDir: dir,
    });
    return { record, existed };
  });
  if (p.values.json) {
    io.out(JSON.stringify(record, null, 2));
    return 0;
  }
  io.out(
    `${existed ? 'already registered, identical' : 'registered'}: ${read.refOf(record)} ` +
      `(release ${record.release ?? '?'}, signer ${(record.signer ?? '?').slice(0, KEY_PREFIX)})`,
  );
  for (const line of recordLines(record)) io.out(`  ${line}`);
  io.out('no pointer moved; a rollout makes it a candidate (fleetgate rollout start --candidate DIR)');
  return 0;
}

/** name and version of an unverified manifest, for messages only. */
async function readManifestName(dir: string): Promise<{ name: string; version: string } | undefined> {
  try {
    const m = JSON.parse(await fs.readFile(join(dir, 'manifest.json'), 'utf8')) as {
      name?: unknown;
      version?: unknown;
    };
    return typeof m.name === 'string' && typeof m.version === 'string'
      ? { name: m.name, version: m.version }
      : undefined;
  } catch {
    return undefined;
  }
}

/** Per version: the cohorts where its record is production or candidate now. */
async function currentStages(
  store: ObjectStore,
): Promise<Map<string, { production: string[]; candidate: string[] }>> {
  const read = require('../activities/registry-read') as typeof RegistryReadModule;
  const out = new Map<string, { production: string[]; candidate: string[] }>();
  for (const cp of await read.cohortPointers(store)) {
    const key = cp.current?.recordKey;
    if (!key) continue;
    const entry = out.get(key) ?? { production: [], candidate: [] };
    entry[cp.stage].push(cp.cohort);
    out.set(key, entry);
  }
  return out;
}

async function listCommand(args: string[], io: ModelIo): Promise<number> {
  const p = parse('list', args, { json: { type: 'boolean' } }, [], io);
  if (!p) return 0;
  const read = require('../activities/registry-read') as typeof RegistryReadModule;
  return withStore(async (store, config) => {
    const stages = await currentStages(store);
    const rows = [];
    for (const v of await read.listVersions(store)) {
      const record = await read.readRecordAt(store, v.recordKey);
      if (!record) continue;
      const now = stages.get(v.recordKey) ?? { production: [], candidate: [] };
      rows.push({
        name: v.name,
        version: v.version,
        release: record.release ?? null,
        digest: record.digest,
        signer: record.signer ?? null,
        registeredAt: (await read.registeredAt(store, v.recordKey)) ?? null,
        production: now.production,
        candidate: now.candidate,
      });
    }
    if (p.values.json) {
      io.out(JSON.stringify(rows, null, 2));
      return 0;
    }
    if (rows.length === 0) {
      io.out(
        `no model is registered in ${storeName(config)}; register one with "fleetgate model register DIR"`,
      );
      return 0;
    }
    io.out(
      table(
        ['model', 'release', 'digest', 'signer', 'registered', 'production in', 'candidate in'],
        rows.map((r) => [
          `${r.name}@${r.version}`,
          r.release === null ? '-' : String(r.release),
          r.digest.slice(0, 12),
          r.signer === null ? '(unsigned)' : r.signer.slice(0, KEY_PREFIX),
          r.registeredAt ?? '-',
          r.production.join(', ') || '-',
          r.candidate.join(', ') || '-',
        ]),
      ),
    );
    return 0;
  });
}

/** What the data directory's rollout reports say about one rollout of a version. */
export interface RolloutOfVersion {
  rolloutId: string;
  outcome: string;
  reason?: string;
  startedAt?: string;
  finishedAt?: string;
  report: string;
  cohorts: { cohort: string; state: string; wave?: number; vehicles?: number; headline?: string }[];
}

/**
 * Rollouts whose candidate was this version (same digest and name@version), from the reports of the
 * object store (reports/<id>.json) and of `<data dir>/reports` (written before workers put them in the
 * store); a report in both is read from the store.
 */
async function rolloutsOf(
  store: ObjectStore,
  dataDir: string,
  record: ModelRecord,
  io: ModelIo,
): Promise<RolloutOfVersion[]> {
  const { listReportIds, readReport } = require('./report') as typeof ReportCliModule;
  const src = { store, dataDir };
  const out: RolloutOfVersion[] = [];
  for (const id of await listReportIds(src)) {
    let report: {
      rolloutId?: string;
      outcome?: string;
      reason?: string;
      startedAt?: string;
      finishedAt?: string;
      candidate?: { name?: string; version?: string; digest?: string };
      cohorts?: RolloutOfVersion['cohorts'];
    };
    let where = id;
    try {
      const found = await readReport(src, id);
      if (!found) continue;
      where = found.where;
      report = JSON.parse(found.text) as typeof report;
    } catch (err) {
      io.err(`fleetgate: note: skipped the report ${where}: ${(err as Error).message}`);
      continue;
    }
    const c = report.candidate;
    if (!c || c.digest !== record.digest) continue;
    if (
      (c.name !== undefined && c.name !== record.name) ||
      (c.version !== undefined && c.version !== record.version)
    )
      continue;
    out.push({
      rolloutId: report.rolloutId ?? id,
      outcome: report.outcome ?? 'unknown',
      ...(report.reason ? { reason: report.reason } : {}),
      ...(report.startedAt ? { startedAt: report.startedAt } : {}),
      ...(report.finishedAt ? { finishedAt: report.finishedAt } : {}),
      report: where,
      cohorts: (report.cohorts ?? []).map((k) => ({
        cohort: k.cohort,
        state: k.state,
        ...(k.wave !== undefined ? { wave: k.wave } : {}),
        ...(k.vehicles !== undefined ? { vehicles: k.vehicles } : {}),
        ...(k.headline ? { headline: k.headline } : {}),
      })),
    });
  }
  return out.sort((a, b) => (a.startedAt ?? '').localeCompare(b.startedAt ?? ''));
}

async function showCommand(args: string[], io: ModelIo): Promise<number> {
  const p = parse('show', args, { json: { type: 'boolean' } }, ['NAME@VERSION'], io);
  if (!p) return 0;
  const ref = parseModelRef(p.positionals[0]!);
  const read = require('../activities/registry-read') as typeof RegistryReadModule;
  return withStore(async (store, config) => {
    const record = await read.readRecord(store, ref.name, ref.version);
    if (!record) {
      const versions = (await read.listVersions(store)).filter((v) => v.name === ref.name);
      throw new ModelError(
        `${ref.name}@${ref.version} is not registered in ${storeName(config)}; ` +
          (versions.length > 0
            ? `registered versions of ${ref.name}: ${versions.map((v) => v.version).join(', ')}`
            : `no version of ${ref.name} is: see "fleetgate model list"`),
      );
    }
    const label = read.digestLabeler(store);
    const pointers = await read.cohortPointers(store);
    const now = { production: [] as string[], candidate: [] as string[] };
    const moves: (PointerHistoryEntry & {
      cohort: string;
      stage: Stage;
      fromModel: string;
      toModel: string;
    })[] = [];
    for (const cp of pointers) {
      if (cp.current?.recordKey === record.recordKey) now[cp.stage].push(cp.cohort);
      for (const e of cp.history) {
        if (e.from !== record.digest && e.to !== record.digest) continue;
        moves.push({
          ...e,
          cohort: cp.cohort,
          stage: cp.stage,
          fromModel: await label(e.from),
          toModel: await label(e.to),
        });
      }
    }
    moves.sort((a, b) => a.at.localeCompare(b.at));
    const { benchReports } = require('../activities/inference') as typeof InferenceModule;
    const bench = await benchReports(store, record.recordKey);
    const rollouts = await rolloutsOf(store, config.dataDir, record, io);
    const registeredAt = (await read.registeredAt(store, record.recordKey)) ?? null;
    if (p.values.json) {
      io.out(
        JSON.stringify(
          {
            record,
            registeredAt,
            production: now.production,
            candidate: now.candidate,
            pointerMoves: moves,
            benchReports: bench,
            rollouts,
          },
          null,
          2,
        ),
      );
      return 0;
    }
    io.out(`${read.refOf(record)}`);
    if (registeredAt) io.out(`  registered      ${registeredAt}`);
    for (const line of recordLines(safeStrings(record))) io.out(`  ${line}`);
    io.out('now');
    io.out(`  production in   ${now.production.join(', ') || '-'}`);
    io.out(`  candidate in    ${now.candidate.join(', ') || '-'}`);
    io.out(`pointer moves (${moves.length})`);
    for (const m of safeStrings(moves)) {
      io.out(
        `  ${m.at}  ${m.cohort} ${m.stage}: ${m.fromModel} -> ${m.toModel}  by ${m.rolloutId}: ${m.reason}`,
      );
    }
    io.out(`bench reports (${bench.length})`);
    for (const b of safeStrings(bench))
      io.out(`  ${b.sku.name.padEnd(8)}rollout ${b.rolloutId}: ${benchLine(b)}`);
    io.out(
      `rollouts (${rollouts.length}, from ${storeName(config)} reports/ and ${displayPath(join(config.dataDir, 'reports'))})`,
    );
    for (const r of safeStrings(rollouts)) {
      io.out(
        `  ${r.rolloutId}: ${r.outcome}${r.startedAt ? `, ${r.startedAt} to ${r.finishedAt ?? '?'}` : ''}`,
      );
      for (const c of r.cohorts) {
        io.out(`    ${c.cohort.padEnd(14)}${c.state.padEnd(13)}${c.headline ?? ''}`.trimEnd());
      }
    }
    return 0;
  });
}

async function historyCommand(args: string[], io: ModelIo): Promise<number> {
  const p = parse(
    'history',
    args,
    {
      cohort: { type: 'string' },
      stage: { type: 'string' },
      at: { type: 'string' },
      json: { type: 'boolean' },
    },
    [],
    io,
  );
  if (!p) return 0;
  const stageArg = str(p.values, 'stage');
  if (stageArg !== undefined && stageArg !== 'production' && stageArg !== 'candidate') {
    throw new ModelUsageError(`--stage "${stageArg}": use "production" or "candidate"`);
  }
  const atArg = str(p.values, 'at');
  let at: Date | undefined;
  if (atArg !== undefined) {
    at = new Date(atArg);
    if (!/^\d{4}-\d{2}-\d{2}/.test(atArg) || Number.isNaN(at.getTime())) {
      throw new ModelUsageError(
        `--at "${atArg}": an ISO 8601 time such as 2026-01-15T12:00:00Z (or a date, 2026-01-15, at 00:00 UTC)`,
      );
    }
  }
  const cohortArg = str(p.values, 'cohort');
  const read = require('../activities/registry-read') as typeof RegistryReadModule;
  return withStore(async (store, config) => {
    const cohorts = await read.listCohorts(store);
    if (cohortArg !== undefined && !cohorts.includes(cohortArg)) {
      throw new ModelError(
        `cohort ${cohortArg} has no stage pointer in ${storeName(config)}; ` +
          (cohorts.length > 0
            ? `cohorts with pointers: ${cohorts.join(', ')}`
            : 'no cohort has one yet (see "fleetgate fleet init")'),
      );
    }
    const stages: Stage[] = stageArg ? [stageArg] : at ? ['production'] : ['production', 'candidate'];
    const pointers = await read.cohortPointers(store, {
      cohorts: cohortArg !== undefined ? [cohortArg] : cohorts,
      stages,
    });
    const label = read.digestLabeler(store);
    if (at) {
      const answers = [];
      for (const cp of pointers) {
        const e = read.entryAt(cp.history, at);
        answers.push({
          cohort: cp.cohort,
          stage: cp.stage,
          at: at.toISOString(),
          digest: e?.to ?? null,
          model: e ? await label(e.to) : '(none)',
          since: e?.at ?? null,
          seq: e?.seq ?? null,
          rolloutId: e?.rolloutId ?? null,
          reason: e?.reason ?? null,
        });
      }
      if (p.values.json) {
        io.out(JSON.stringify(answers, null, 2));
        return 0;
      }
      if (answers.length === 0) {
        io.out(`no ${stages.join(' or ')} pointer in ${storeName(config)}`);
        return 0;
      }
      io.out(`at ${at.toISOString()}:`);
      for (const a of safeStrings(answers)) {
        io.out(
          `  ${a.cohort} ${a.stage}: ${a.model}` +
            (a.digest
              ? ` (${a.digest.slice(0, 12)}), since ${a.since} (#${a.seq} by ${a.rolloutId}: ${a.reason})`
              : ', unset then'),
        );
      }
      return 0;
    }
    const out = [];
    for (const cp of pointers) {
      const moves = [];
      for (const e of cp.history)
        moves.push({ ...e, fromModel: await label(e.from), toModel: await label(e.to) });
      out.push({ cohort: cp.cohort, stage: cp.stage, current: cp.current?.digest ?? null, moves });
    }
    if (p.values.json) {
      io.out(JSON.stringify(out, null, 2));
      return 0;
    }
    if (out.length === 0) {
      io.out(`no pointer has moved in ${storeName(config)}; "fleetgate fleet init" sets production`);
      return 0;
    }
    for (const h of safeStrings(out)) {
      io.out(`${h.cohort} ${h.stage}`);
      for (const m of h.moves) {
        io.out(`  #${m.seq}  ${m.at}  ${m.fromModel} -> ${m.toModel}  by ${m.rolloutId}: ${m.reason}`);
      }
    }
    return 0;
  });
}

// ---- output -------------------------------------------------------------------------------------

/** The registry record, one field a line. */
function recordLines(r: ModelRecord): string[] {
  const io = (specs: { name: string; type: string; shape: (number | string)[] }[]) =>
    specs.map((s) => `${s.name} ${s.type} [${s.shape.join(', ')}]`).join(', ');
  const lines = [
    ['record', r.recordKey],
    [
      'release',
      r.release === undefined ? '(not recorded: registered before signed packs)' : String(r.release),
    ],
    ['model digest', r.digest],
    ['manifest', r.manifestDigest],
    ['signer', r.signer ?? '(none)'],
    ['signature', r.signatureDigest ?? '(none)'],
    ['training data', r.trainingDataHash ?? '-'],
    ['code', r.codeHash ?? '-'],
    ['skus', r.compatibleSkus ? skuSummary(r.compatibleSkus, r.skuBudgets ?? {}) : '-'],
    ['inputs', io(r.contract.inputs)],
    ['outputs', io(r.contract.outputs)],
    ['config', r.configDigest ?? '-'],
    [
      'golden',
      r.golden
        ? `${r.golden.rows} rows, tolerance ${r.golden.tolerance}; inputs ${r.golden.inputs.slice(0, 12)}, ` +
          `outputs ${r.golden.outputs.slice(0, 12)}`
        : '-',
    ],
  ].map(([k, v]) => `${k!.padEnd(16)}${v}`);
  const files = Object.entries(r.files ?? {});
  lines.push(`${'files'.padEnd(16)}${files.length}`);
  for (const [f, d] of files) lines.push(`  ${f.padEnd(28)}${d}`);
  return lines;
}

function skuSummary(
  skus: string[],
  budgets: Record<string, { latencyP95Ms?: number; memoryMb?: number }>,
): string {
  return skus
    .map((s) => {
      const b = budgets[s];
      const parts = [
        ...(b?.latencyP95Ms !== undefined ? [`p95 ≤ ${b.latencyP95Ms} ms`] : []),
        ...(b?.memoryMb !== undefined ? [`memory ≤ ${b.memoryMb} MiB`] : []),
      ];
      return parts.length > 0 ? `${s} (${parts.join(', ')})` : s;
    })
    .join(', ');
}

/**
 * One line of a stored bench report (activities/inference.ts `BenchReport`: the verdict under `result`,
 * when it ran under `at`), read field by field so that reports of older or newer shapes still print.
 */
function benchLine(report: unknown): string {
  if (typeof report !== 'object' || report === null) return JSON.stringify(report);
  const outer = report as Record<string, unknown>;
  const r = (typeof outer.result === 'object' && outer.result !== null ? outer.result : outer) as Record<
    string,
    unknown
  >;
  const num = (k: string) => (typeof r[k] === 'number' ? (r[k] as number) : undefined);
  const parts: string[] = [];
  if (typeof r.passed === 'boolean') parts.push(r.passed ? 'passed' : 'FAILED');
  const p95 = num('p95Ms');
  const budget = num('budgetMs');
  if (p95 !== undefined)
    parts.push(`p95 ${fmt(p95)} ms${budget !== undefined ? ` (budget ${fmt(budget)} ms)` : ''}`);
  const rss = num('modelRssMb');
  const ceiling = num('memoryCeilingMb');
  if (rss !== undefined)
    parts.push(`memory ${fmt(rss)} MiB${ceiling !== undefined ? ` (ceiling ${fmt(ceiling)} MiB)` : ''}`);
  const diff = num('goldenMaxAbsDiff');
  const tolerance = num('goldenTolerance');
  if (diff !== undefined)
    parts.push(
      `golden max diff ${diff.toPrecision(2)}${tolerance !== undefined ? ` (tolerance ${tolerance})` : ''}`,
    );
  if (typeof r.deterministic === 'boolean')
    parts.push(r.deterministic ? 'deterministic' : 'NOT deterministic');
  if (typeof outer.at === 'string') parts.push(`at ${outer.at}`);
  if (typeof r.reason === 'string' && r.reason) parts.push(r.reason);
  return parts.length > 0 ? parts.join('; ') : JSON.stringify(report);
}

/** Four significant digits at most: 0.0123, 1.234, 250. */
function fmt(x: number): string {
  return String(Number(x.toPrecision(4)));
}

/** Columns padded to their widest entry. */
function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]! + 2)))
      .join('')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

function storeName(config: Config): string {
  return config.store.kind === 'local'
    ? displayPath(join(config.dataDir, 'store'))
    : `s3://${config.store.bucket}${config.store.prefix ? `/${config.store.prefix}` : ''}`;
}

/** A path relative to the working directory when it is inside it. */
function displayPath(p: string): string {
  const r = relative(process.cwd(), p);
  return r && !r.startsWith('..') ? r : p;
}

function defaultRequester(env: NodeJS.ProcessEnv = process.env): string {
  return env.USER || env.USERNAME || 'unknown';
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.lstat(file);
    return true;
  } catch {
    return false;
  }
}

/** Multi-line messages (lists of problems) keep their lines, indented. */
function indented(msg: string): string {
  const [first, ...rest] = msg.split('\n');
  return [first, ...rest.map((l) => `  ${l.trimStart()}`)].join('\n');
}

// ---- dispatch -----------------------------------------------------------------------------------

const SUBCOMMANDS: Record<string, (args: string[], io: ModelIo) => Promise<number>> = {
  keygen: keygenCommand,
  pack: packCommand,
  sign: signCommand,
  verify: verifyCommand,
  trust: trustCommand,
  register: registerCommand,
  list: listCommand,
  show: showCommand,
  history: historyCommand,
};

/**
 * Runs `fleetgate model <args>`; returns the exit code: 0, 1 when refused or failed (the error type and
 * message on `io.err`), 2 for a usage mistake (one line). Never throws.
 */
export async function runModel(args: string[], raw: ModelIo = PROCESS_IO): Promise<number> {
  const io: ModelIo = { out: (t) => raw.out(safeOutput(t)), err: (t) => raw.err(safeOutput(t)) };
  const [sub, ...rest] = args;
  try {
    if (sub === undefined) {
      io.err(USAGE);
      return 2;
    }
    if (sub === '--help' || sub === '-h' || sub === 'help') {
      const topic = rest.join(' ');
      io.out(HELP[topic] ?? USAGE);
      return 0;
    }
    const run = SUBCOMMANDS[sub];
    if (!run) {
      throw new ModelUsageError(
        `unknown command "model ${sub}": use one of ${Object.keys(SUBCOMMANDS).join(', ')} (see "fleetgate model --help")`,
      );
    }
    return await run(rest, io);
  } catch (err) {
    if (process.env.FLEETGATE_DEBUG === '1') io.err(String((err as Error).stack ?? err));
    if (err instanceof ModelUsageError) {
      io.err(`fleetgate: ${err.message}`);
      return 2;
    }
    if (err instanceof ModelError) {
      io.err(`fleetgate: ${indented(err.message)}`);
      return err.exitCode;
    }
    if (err instanceof ApplicationFailure) {
      io.err(`fleetgate: model ${sub}: ${err.type ?? 'Error'}: ${indented(err.message)}`);
      return 1;
    }
    io.err(`fleetgate: model ${sub}: ${indented((err as Error).message ?? String(err))}`);
    return 1;
  }
}

/** The `model` entry of the command table of cli/main.ts. */
export async function modelCommand(args: string[]): Promise<number> {
  return runModel(args);
}

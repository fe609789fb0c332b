/**
 * Model packs: their files, their detached ed25519 signature, the trusted signer keys, and the checks a
 * pack must pass before anything is registered (docs/registry.md).
 *
 * A pack is a directory:
 *   model.onnx                  the model
 *   inference_config.json       input/output contract, preprocessing, thresholds, golden set
 *   golden/inputs.f32           golden inputs, little-endian float32 [rows, features]
 *   golden/outputs.f32          the outputs they must give, float32 [rows, classes]
 *   manifest.json               name, semver, release counter, sha256 of every other file, hashes of
 *                               the training data and code, compatible SKUs, per-SKU budgets
 *   manifest.sig                ed25519 signature over the exact bytes of manifest.json
 *
 * `verifyPackDir` refuses, each with its own error type: a path that leaves the pack (PathEscape), a
 * manifest that is not signed by a trusted key (BadSignature, UntrustedSigner), a file added or missing
 * (FileSetMismatch), a flipped byte (DigestMismatch), and files or a config of another release
 * (MixedRelease). Files are hashed as streams, so a pack of any size is verified in bounded memory.
 *
 * It must never read outside the pack, and never trust a manifest before its signature has verified.
 */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  sign as edSign,
  verify as edVerify,
  type KeyObject,
} from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { ErrorType, fail } from '../errors';
import { InferenceConfig, ModelManifest, PackSignature, formatIssues } from '../policies/schema';

export const MANIFEST = 'manifest.json';
export const SIGNATURE = 'manifest.sig';
/** Files a pack holds beside those its manifest lists. */
const UNLISTED = new Set([MANIFEST, SIGNATURE]);

/** Trusted signer keys by key id. */
export type TrustStore = ReadonlyMap<string, KeyObject>;

/** Key id of an ed25519 public key: sha256 of its raw 32 bytes, hex. */
export function keyIdOf(key: KeyObject): string {
  const jwk = key.export({ format: 'jwk' });
  if (jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string') {
    throw fail(ErrorType.InvalidInput, `key is ${jwk.crv ?? key.asymmetricKeyType}, not an ed25519 key`);
  }
  return createHash('sha256').update(Buffer.from(jwk.x, 'base64url')).digest('hex');
}

/** A new ed25519 key pair as PEM (PKCS#8 private, SPKI public) and its key id. */
export function generateSigningKey(): { privatePem: string; publicPem: string; keyId: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    privatePem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    publicPem: publicKey.export({ format: 'pem', type: 'spki' }).toString(),
    keyId: keyIdOf(publicKey),
  };
}

/** The detached signature document of manifest bytes. */
export function signManifest(manifestBytes: Buffer, privatePem: string | Buffer): PackSignature {
  let key: KeyObject;
  try {
    key = createPrivateKey(privatePem);
  } catch (err) {
    throw fail(
      ErrorType.InvalidInput,
      `signing key is not a PEM private key (${(err as Error).message}); make one with \`fleetgate model keygen\``,
    );
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw fail(
      ErrorType.InvalidInput,
      `signing key is ${key.asymmetricKeyType}, not ed25519; use an ed25519 key`,
    );
  }
  return {
    apiVersion: 'fleetgate/v1',
    kind: 'ModelPackSignature',
    algorithm: 'ed25519',
    keyId: keyIdOf(createPublicKey(key)),
    signature: edSign(null, manifestBytes, key).toString('base64'),
  };
}

/**
 * The key files of trust paths, in order: a file as it is, a directory's `*.pub` files sorted by name;
 * missing paths are skipped. Each with the path it came from.
 */
export async function trustedKeyFilesIn(paths: readonly string[]): Promise<{ from: string; file: string }[]> {
  const out: { from: string; file: string }[] = [];
  for (const p of paths) {
    let stat;
    try {
      stat = await fs.stat(p);
    } catch {
      continue;
    }
    const files = stat.isDirectory()
      ? (await fs.readdir(p))
          .filter((f) => f.endsWith('.pub'))
          .sort()
          .map((f) => path.join(p, f))
      : [p];
    for (const file of files) out.push({ from: p, file });
  }
  return out;
}

/** Reads the public keys (PEM) of trust paths (see `trustedKeyFilesIn`), by key id. */
export async function loadTrust(paths: readonly string[]): Promise<Map<string, KeyObject>> {
  const trust = new Map<string, KeyObject>();
  for (const { file } of await trustedKeyFilesIn(paths)) {
    let key: KeyObject;
    try {
      key = createPublicKey(await fs.readFile(file));
    } catch (err) {
      throw fail(
        ErrorType.InvalidInput,
        `trusted key ${file} is not a PEM public key (${(err as Error).message}); remove it or replace it with ` +
          'the .pub file `fleetgate model keygen` wrote',
      );
    }
    trust.set(keyIdOf(key), key);
  }
  return trust;
}

/** A pack that passed every check. */
export interface VerifiedPack {
  /** Absolute directory of the pack. */
  dir: string;
  manifest: ModelManifest;
  manifestBytes: Buffer;
  signatureBytes: Buffer;
  /** Key id of the trusted signer. */
  signer: string;
  config: InferenceConfig;
  configBytes: Buffer;
}

/**
 * Where a file's digest is known from: the name@version of another release holding those bytes, or
 * undefined. Lets a mismatch be told apart from a mix of releases.
 */
export type KnownFile = (digest: string) => Promise<string | undefined>;

/**
 * Checks a pack directory, in an order that trusts nothing unverified: the manifest's signature and
 * signer first, then its schema, then the file set, then each file's digest (streamed), then the
 * inference config's identity. `label` names the pack in messages.
 */
export async function verifyPackDir(
  dir: string,
  label: string,
  trust: TrustStore,
  knownFile: KnownFile = async () => undefined,
): Promise<VerifiedPack> {
  for (const name of [MANIFEST, SIGNATURE]) await refuseOutsideLink(dir, name, label);
  const manifestBytes = await readOr(path.join(dir, MANIFEST), () =>
    fail(
      ErrorType.NotFound,
      `model pack ${label}: ${MANIFEST} not found; check the pack path or run \`fleetgate model pack\``,
    ),
  );
  const signatureBytes = await readOr(path.join(dir, SIGNATURE), () =>
    fail(
      ErrorType.BadSignature,
      `model pack ${label}: ${SIGNATURE} is missing, the manifest is unsigned; sign it with \`fleetgate model sign ${label} --key KEY\``,
    ),
  );
  const signer = checkSignature(manifestBytes, signatureBytes, label, trust);

  const raw = parseJsonOr(manifestBytes, `model pack ${label}: ${MANIFEST}`);
  const parsed = ModelManifest.safeParse(raw);
  if (!parsed.success) {
    throw fail(
      ErrorType.InvalidInput,
      `model pack ${label}: invalid ${MANIFEST}:\n${formatIssues(parsed.error, raw, 'manifest')}`,
    );
  }
  const manifest = parsed.data;
  for (const [field, file] of [
    ['model', manifest.model],
    ['config', manifest.config],
  ] as const) {
    if (!Object.hasOwn(manifest.files, file)) {
      throw fail(
        ErrorType.InvalidInput,
        `model pack ${label}: manifest.${field} is "${file}" but files does not list it; add "${file}": "<sha256>" to files`,
      );
    }
  }
  for (const name of Object.keys(manifest.files)) checkPlainPath(name, label);

  const realDir = await fs.realpath(dir);
  const present = new Set((await listFiles(dir)).filter((f) => !UNLISTED.has(f)));
  const missing = Object.keys(manifest.files).filter((f) => !present.has(f));
  const added = [...present].filter((f) => !Object.hasOwn(manifest.files, f)).sort();
  if (missing.length > 0 || added.length > 0) {
    throw fail(
      ErrorType.FileSetMismatch,
      `model pack ${label} does not hold the files its manifest lists:\n` +
        [
          ...missing.map((f) => `${f}: listed in the manifest but missing from the pack`),
          ...added.map((f) => `${f}: present in the pack but not listed in the manifest`),
        ].join('\n') +
        '\nrestore the signed pack as it was built; a changed pack must be packed and signed again',
      { label, missing, added },
    );
  }

  const problems: string[] = [];
  const foreign: string[] = [];
  for (const [name, expected] of Object.entries(manifest.files)) {
    const file = path.join(dir, ...name.split('/'));
    const real = await fs.realpath(file);
    if (real !== realDir && !real.startsWith(realDir + path.sep)) {
      throw fail(
        ErrorType.PathEscape,
        `model pack ${label}: ${name} is a link to a file outside the pack; copy the file into the pack`,
        { label, file: name },
      );
    }
    const actual = await hashFile(file);
    if (actual === expected) continue;
    const owner = await knownFile(actual);
    if (owner) foreign.push(`${name}: these bytes are ${name} of ${owner}, not of this release`);
    else problems.push(`${name}: sha256 is ${actual}, manifest expects ${expected}`);
  }
  if (foreign.length > 0) {
    throw fail(
      ErrorType.MixedRelease,
      `model pack ${label} mixes files of different releases:\n${[...foreign, ...problems].join('\n')}\n` +
        'take every file from one signed release',
      { label, foreign, problems },
    );
  }
  if (problems.length > 0) {
    throw fail(
      ErrorType.DigestMismatch,
      `model pack ${label} does not match its signed manifest:\n${problems.join('\n')}\n` +
        'the files were changed after signing: restore them, or pack and sign again',
      { label, problems },
    );
  }

  const configBytes = await fs.readFile(path.join(dir, ...manifest.config.split('/')));
  const rawConfig = parseJsonOr(configBytes, `model pack ${label}: ${manifest.config}`);
  const config = InferenceConfig.safeParse(rawConfig);
  if (!config.success) {
    throw fail(
      ErrorType.InvalidInput,
      `model pack ${label}: invalid ${manifest.config}:\n${formatIssues(config.error, rawConfig, 'config')}`,
    );
  }
  const c = config.data;
  if (c.name !== manifest.name || c.version !== manifest.version || c.release !== manifest.release) {
    throw fail(
      ErrorType.MixedRelease,
      `model pack ${label}: ${manifest.config} is of ${c.name}@${c.version} release ${c.release}, the manifest of ` +
        `${manifest.name}@${manifest.version} release ${manifest.release}; take the config of the same release`,
      { label },
    );
  }
  for (const [field, file] of [
    ['golden.inputs', c.golden.inputs],
    ['golden.outputs', c.golden.outputs],
  ] as const) {
    checkPlainPath(file, label);
    if (!Object.hasOwn(manifest.files, file)) {
      throw fail(
        ErrorType.InvalidInput,
        `model pack ${label}: ${manifest.config} ${field} is "${file}", which the manifest does not list; ` +
          'pack it with `fleetgate model pack`',
      );
    }
  }
  return { dir, manifest, manifestBytes, signatureBytes, signer, config: c, configBytes };
}

/** Verifies the detached signature; returns the signer's key id. */
export function checkSignature(
  manifestBytes: Buffer,
  signatureBytes: Buffer,
  label: string,
  trust: TrustStore,
): string {
  const raw = parseJsonOr(signatureBytes, `model pack ${label}: ${SIGNATURE}`, ErrorType.BadSignature);
  const sig = PackSignature.safeParse(raw);
  if (!sig.success) {
    throw fail(
      ErrorType.BadSignature,
      `model pack ${label}: ${SIGNATURE} is malformed:\n${formatIssues(sig.error, raw, 'signature')}\n` +
        'sign the manifest again with `fleetgate model sign`',
    );
  }
  const key = trust.get(sig.data.keyId);
  if (!key) {
    throw fail(
      ErrorType.UntrustedSigner,
      `model pack ${label} is signed by key ${sig.data.keyId.slice(0, 16)}, which this registry does not trust ` +
        `(trusted: ${[...trust.keys()].map((k) => k.slice(0, 16)).join(', ') || 'none'}); add the signer's .pub ` +
        'file with `fleetgate model trust add`, or have a trusted signer sign the pack',
      { label, keyId: sig.data.keyId },
    );
  }
  if (!edVerify(null, manifestBytes, key, Buffer.from(sig.data.signature, 'base64'))) {
    throw fail(
      ErrorType.BadSignature,
      `model pack ${label}: the signature of key ${sig.data.keyId.slice(0, 16)} does not verify over ${MANIFEST}; ` +
        'the manifest changed after it was signed: restore it, or sign it again',
      { label, keyId: sig.data.keyId },
    );
  }
  return sig.data.keyId;
}

/**
 * Refuses `name` in the pack when it is a link that resolves outside the pack, before anything reads it
 * (a missing file is left to the caller's own message).
 */
async function refuseOutsideLink(dir: string, name: string, label: string): Promise<void> {
  const file = path.join(dir, name);
  let real: string;
  try {
    real = await fs.realpath(file);
  } catch {
    return;
  }
  const realDir = await fs.realpath(dir);
  if (real.startsWith(realDir + path.sep)) return;
  throw fail(
    ErrorType.PathEscape,
    `model pack ${label}: ${name} is a link to a file outside the pack; copy the file into the pack`,
    { label, file: name },
  );
}

/** Refuses a file name that is not a plain relative path inside the pack. */
function checkPlainPath(name: string, label: string): void {
  const segments = name.split('/');
  if (
    path.isAbsolute(name) ||
    name.includes('\\') ||
    segments.some((s) => s === '' || s === '.' || s === '..') ||
    UNLISTED.has(name)
  ) {
    throw fail(
      ErrorType.PathEscape,
      `model pack ${label}: ${JSON.stringify(name)} is not a plain path inside the pack (or is ${MANIFEST} or ` +
        `${SIGNATURE}); list files by their relative path, e.g. "model.onnx"`,
      { label, file: name },
    );
  }
}

/** sha256 of a file, read as a stream in 1 MiB chunks. */
export async function hashFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Relative '/'-separated paths of every file (and link) under dir, sorted. */
export async function listFiles(dir: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const rel = prefix === '' ? e.name : `${prefix}/${e.name}`;
    if (e.isDirectory()) out.push(...(await listFiles(path.join(dir, e.name), rel)));
    else out.push(rel);
  }
  return out.sort();
}

async function readOr(file: string, missing: () => Error): Promise<Buffer> {
  try {
    return await fs.readFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw missing();
    throw err;
  }
}

function parseJsonOr(bytes: Buffer, what: string, type: ErrorType = ErrorType.InvalidInput): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw fail(type, `${what} is not valid JSON (${(err as Error).message}); fix or rebuild it`);
  }
}

/**
 * Registry activities: register a model pack as an immutable version, look up each cohort's production
 * model, and move stage pointers by compare-and-swap with their history kept.
 *
 * Object-store layout:
 *   blobs/sha256/<digest>                              model bytes, content-addressed, write-once
 *   registry/<name>/<version>.json                     ModelRecord, write-once
 *   index/sha256/<digest>/<name>/<version>.json        which records hold a digest, write-once
 *   index/owner/<digest>.json                          the one record of a model digest, write-once
 *   pointers/<cohort>/<stage>.json                     current pointer, moved by compare-and-swap
 *   pointers/<cohort>/<stage>.history/<seq>.json       one write-once entry per move
 *
 * One model digest is one registry record: the first registration of a digest claims it (put-if-absent
 * of its owner key, before the record is written) and the same bytes under another name@version are
 * refused (ImmutableConflict), so a pointer's digest always names one version and one release.
 *
 * Every activity here is idempotent: a retry after a crash finds its own writes and completes them.
 * This module must never overwrite a registry record or blob, never move a pointer without
 * compare-and-swap, and never read files outside the pack directory it was given.
 */
import { promises as fs, realpathSync } from 'node:fs';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import type {
  IoContract,
  ModelRecord,
  MovePointerInput,
  ProductionLookup,
  ProductionModels,
  RegisterInput,
} from './contracts';
import type { ModelRunner, ObjectStore } from './deps';
import { LocalObjectStore, parseStoredJson, sha256 } from './store';
import { ErrorType, fail } from '../errors';
import type { ModelManifest } from '../policies/schema';
import { compareContracts } from '../policies/contract';
import { type TrustStore, verifyPackDir } from './pack';
import { blobKey } from '../workers/model-runner';
import { recordRollout } from '../events/rollouts';

export interface RegistryDeps {
  store: ObjectStore;
  runner: ModelRunner;
  /** The signer keys this registry trusts (activities/pack.ts `loadTrust`). */
  trust: TrustStore;
  /** Directory that pack paths are resolved against. */
  root: string;
}

export type Stage = MovePointerInput['stage'];

/** The current value of a stage pointer, as stored at `pointers/<cohort>/<stage>.json`. */
export interface PointerDoc {
  digest: string | null;
  recordKey: string | null;
  rolloutId: string;
  reason: string;
  at: string;
  /** Sequence number of the history entry of this move. */
  seq: number;
  /** Digest the pointer held before this move. */
  previous: string | null;
}

/** One move of a pointer, as stored at `pointers/<cohort>/<stage>.history/<seq>.json`. */
export interface PointerHistoryEntry {
  seq: number;
  from: string | null;
  to: string | null;
  rolloutId: string;
  reason: string;
  at: string;
}

const SEQ_WIDTH = 8;

export function recordKeyOf(name: string, version: string): string {
  return `registry/${name}/${version}.json`;
}
export function pointerKey(cohort: string, stage: Stage): string {
  return `pointers/${cohort}/${stage}.json`;
}
function historyPrefix(cohort: string, stage: Stage): string {
  return `pointers/${cohort}/${stage}.history/`;
}
function historyKey(cohort: string, stage: Stage, seq: number): string {
  return `${historyPrefix(cohort, stage)}${String(seq).padStart(SEQ_WIDTH, '0')}.json`;
}
function indexPrefix(digest: string): string {
  return `index/sha256/${digest}/`;
}
/** The record that owns a model digest (the first registered with those bytes). */
function ownerKey(digest: string): string {
  return `index/owner/${digest}.json`;
}
/** Which registered versions hold a file with this digest (any file of a pack). */
function fileIndexPrefix(digest: string): string {
  return `index/files/${digest}/`;
}

export function createRegistryActivities(deps: RegistryDeps) {
  const { store, runner } = deps;

  /**
   * Verifies a signed pack (activities/pack.ts: signature, signer, file set, digests, releases) and
   * records it as an immutable registry version, with every file as a content-addressed blob. With
   * `cohorts`, also refuses a release counter not above each cohort's production release
   * (ReleaseRollback) and a major version bump over production without `allowMajorBump`.
   */
  async function registerCandidate(input: RegisterInput): Promise<ModelRecord> {
    const dir = resolvePack(deps.root, input.packDir);
    const pack = await verifyPackDir(dir, input.packDir, deps.trust, (digest) =>
      releaseOfFile(store, digest),
    );
    const { manifest } = pack;
    const digest = manifest.files[manifest.model]!;
    const recordKey = recordKeyOf(manifest.name, manifest.version);
    if (input.cohorts && input.cohorts.length > 0) {
      await checkAgainstProduction(
        store,
        manifest,
        digest,
        input.cohorts,
        input.allowMajorBump === true,
        input.packDir,
      );
    }

    // One record per model digest: refused before anything is stored (and claimed below, before the record).
    const manifestDigest = sha256(pack.manifestBytes);
    const registered = await readJson<ModelRecord>(store, recordKey);
    const sameAsRegistered = registered?.digest === digest && registered.manifestDigest === manifestDigest;
    if (!registered || sameAsRegistered) {
      const first = await otherHolder(store, digest, recordKey, registered);
      if (first) {
        const { name, version, release } = manifest;
        throw duplicateModel({ digest, recordKey, name, version, release }, first, input.packDir);
      }
    }

    // Every file becomes a blob; each is hashed again as it is stored, so bytes that changed since the
    // verification are refused rather than stored under the wrong digest.
    for (const [name, expected] of Object.entries(manifest.files)) {
      const bytes = await fs.readFile(path.join(dir, ...name.split('/')));
      const actual = sha256(bytes);
      if (actual !== expected) {
        throw fail(
          ErrorType.DigestMismatch,
          `model pack ${input.packDir}: ${name} changed while it was registered (sha256 ${actual}, manifest ${expected}); register again`,
        );
      }
      await store.putIfAbsent(blobKey(expected), bytes);
    }

    let contract: IoContract;
    try {
      contract = await runner.contract(digest);
    } catch (err) {
      if (err instanceof ApplicationFailure) throw err;
      throw fail(
        ErrorType.InvalidInput,
        `model pack ${input.packDir}: ${manifest.model} is not a model onnxruntime can load ` +
          `(${(err as Error).message}); re-export it as ONNX`,
      );
    }
    const declared = { inputs: pack.config.inputs, outputs: pack.config.outputs };
    const differences = compareContracts(declared, contract);
    if (differences.length > 0) {
      throw fail(
        ErrorType.ContractMismatch,
        `model pack ${input.packDir}: ${manifest.config} declares a contract the model does not have: ` +
          `${differences.join('; ')}; pack it again so the config is read from the model`,
        { packDir: input.packDir, differences },
      );
    }

    const { golden } = pack.config;
    const record: ModelRecord = {
      name: manifest.name,
      version: manifest.version,
      digest,
      manifestDigest,
      recordKey,
      contract,
      release: manifest.release,
      files: manifest.files,
      signer: pack.signer,
      signatureDigest: sha256(pack.signatureBytes),
      trainingDataHash: manifest.trainingDataHash,
      codeHash: manifest.codeHash,
      compatibleSkus: manifest.compatibleSkus,
      skuBudgets: manifest.skuBudgets,
      golden: {
        inputs: manifest.files[golden.inputs]!,
        outputs: manifest.files[golden.outputs]!,
        rows: golden.rows,
        tolerance: golden.tolerance,
      },
      configDigest: manifest.files[manifest.config]!,
    };
    const versionConflict = (existing: ModelRecord | undefined) =>
      fail(
        ErrorType.ImmutableConflict,
        `${manifest.name}@${manifest.version} is already registered with model digest ${existing?.digest ?? '?'} ` +
          `and manifest digest ${existing?.manifestDigest ?? '?'}; this pack has ${digest} and ${record.manifestDigest}. ` +
          'Registry versions are immutable: bump "version" and "release" in manifest.json',
        { recordKey, existing, attempted: record },
      );
    if (registered && !sameVersion(registered, record)) throw versionConflict(registered);
    await claimDigest(store, record, registered, input.packDir);
    try {
      await store.putIfAbsent(recordKey, json(record));
    } catch (err) {
      if (!(err instanceof ApplicationFailure) || err.type !== ErrorType.ImmutableConflict) throw err;
      const existing = await readJson<ModelRecord>(store, recordKey);
      if (existing && sameVersion(existing, record)) {
        // The same signed manifest under another trusted signature (a key rotated since): the version is
        // the registered one, and its record keeps the signature it was registered with.
        return existing;
      }
      throw versionConflict(existing);
    }
    // The signed manifest and its signature, kept so the version can be verified again later.
    await store.putIfAbsent(`registry/${manifest.name}/${manifest.version}.sig`, pack.signatureBytes);
    await store.putIfAbsent(
      `registry/${manifest.name}/${manifest.version}.manifest.json`,
      pack.manifestBytes,
    );
    await store.putIfAbsent(
      `${indexPrefix(digest)}${manifest.name}/${manifest.version}.json`,
      json({ recordKey }),
    );
    for (const [name, fileDigest] of Object.entries(manifest.files)) {
      await store.putIfAbsent(
        `${fileIndexPrefix(fileDigest)}${manifest.name}/${manifest.version}.json`,
        json({ recordKey, file: name }),
      );
    }
    return record;
  }

  /** The production model of every cohort; NotFound when a cohort has none. */
  async function lookupProduction(input: ProductionLookup): Promise<ProductionModels> {
    const byCohort: Record<string, ModelRecord> = {};
    for (const cohort of input.cohorts) {
      const { pointer } = await readPointer(store, cohort, 'production');
      if (!pointer || pointer.digest === null || pointer.recordKey === null) {
        throw fail(
          ErrorType.NotFound,
          `cohort ${cohort} has no production model (${pointerKey(cohort, 'production')} is ` +
            `${pointer ? 'cleared' : 'missing'}); register production first, e.g. bootstrapProduction ` +
            `with the production pack and cohort ${cohort}`,
          { cohort },
        );
      }
      const record = await readJson<ModelRecord>(store, pointer.recordKey);
      if (!record) {
        throw fail(
          ErrorType.NotFound,
          `cohort ${cohort}: production pointer names record ${pointer.recordKey}, which does not exist; ` +
            'register that model version again',
          { cohort, recordKey: pointer.recordKey },
        );
      }
      byCohort[cohort] = record;
    }
    return { byCohort };
  }

  /** Compare-and-swap of a stage pointer; idempotent when the pointer already holds the new digest. */
  async function movePointer(input: MovePointerInput): Promise<{ moved: boolean; previous: string | null }> {
    const { cohort, stage } = input;
    if (stage !== 'production' && stage !== 'candidate') {
      throw fail(
        ErrorType.InvalidInput,
        `movePointer: stage is ${JSON.stringify(stage)}; use "production" or "candidate"`,
      );
    }
    const recordKey = input.digest === null ? null : await recordOfDigest(store, input.digest);
    // A rollout taking a cohort is recorded, so that ingestion takes its events (events/rollouts.ts).
    if (stage === 'candidate' && input.digest !== null && input.rolloutId) {
      await recordRollout(store, input.rolloutId);
    }
    for (let attempt = 0; ; attempt++) {
      const { pointer, etag } = await readPointer(store, cohort, stage);
      if (pointer) await repairHistory(store, cohort, stage, pointer);
      const current = pointer?.digest ?? null;
      const other = pointer !== null && pointer.rolloutId !== input.rolloutId;
      if (stage === 'candidate' && other && current !== null) {
        // A cohort's candidate pointer belongs to the rollout that set it. Clearing it is the rollout's own
        // compensation: another rollout's claim is left alone (nothing of this rollout's to undo). Taking
        // it, even for the same model, is refused: one rollout per cohort.
        if (input.digest === null) return { moved: false, previous: current };
        if (input.expected === null)
          throw fail(
            ErrorType.PointerConflict,
            `cohort ${cohort} is taken by rollout ${pointer.rolloutId} (its candidate ${current.slice(0, 12)} since ` +
              `${pointer.at}); a cohort has one rollout at a time: wait until ${pointer.rolloutId} ends, or stop it ` +
              `(fleetgate abort ${pointer.rolloutId}), then start this rollout again`,
            { cohort, stage, expected: input.expected, actual: current, holder: pointer.rolloutId },
          );
      }
      if (current === input.digest) return { moved: false, previous: pointer?.previous ?? null };
      if (current !== input.expected) {
        throw fail(
          ErrorType.PointerConflict,
          `${stage} pointer of cohort ${cohort} holds ${current ?? '(none)'}, not the expected ` +
            `${input.expected ?? '(none)'} (last moved by ${pointer?.rolloutId ?? '?'}: ${pointer?.reason ?? '?'}); ` +
            'another rollout moved it: re-read the pointer before moving it',
          { cohort, stage, expected: input.expected, actual: current, holder: pointer?.rolloutId },
        );
      }
      const last = await lastHistorySeq(store, cohort, stage);
      const next: PointerDoc = {
        digest: input.digest,
        recordKey,
        rolloutId: input.rolloutId,
        reason: input.reason,
        at: new Date().toISOString(),
        seq: Math.max(pointer?.seq ?? 0, last) + 1,
        previous: current,
      };
      try {
        await store.compareAndSwap(pointerKey(cohort, stage), etag, json(next));
      } catch (err) {
        // Raced with another mover between read and swap: look again (bounded).
        if (err instanceof ApplicationFailure && err.type === ErrorType.PointerConflict && attempt < 3)
          continue;
        throw err;
      }
      await repairHistory(store, cohort, stage, next);
      return { moved: true, previous: current };
    }
  }

  return { registerCandidate, lookupProduction, movePointer };
}

/**
 * Registers a pack and points production of every cohort at it; cohorts that already run it are left
 * alone. Seeds a fleet's registry (demo, tests); refuses to replace a different production model.
 * Returns the pack's registry record.
 */
export async function bootstrapProduction(
  deps: RegistryDeps,
  packDir: string,
  cohorts: string[],
  by: string,
): Promise<ModelRecord> {
  const acts = createRegistryActivities(deps);
  const record = await acts.registerCandidate({ rolloutId: by, packDir });
  for (const cohort of cohorts) {
    const { pointer } = await readPointer(deps.store, cohort, 'production');
    const current = pointer?.digest ?? null;
    if (current !== null && current !== record.digest) {
      throw fail(
        ErrorType.PointerConflict,
        `cohort ${cohort} already runs production ${current}; bootstrap only seeds cohorts without production ` +
          `(wanted ${record.digest} from ${packDir}); use a rollout to replace it`,
        { cohort, actual: current, wanted: record.digest },
      );
    }
    await acts.movePointer({
      cohort,
      stage: 'production',
      digest: record.digest,
      expected: null,
      rolloutId: by,
      reason: `bootstrap from ${packDir}`,
    });
  }
  return record;
}

/** The current pointer and its etag (null when absent). */
export async function readPointer(
  store: ObjectStore,
  cohort: string,
  stage: Stage,
): Promise<{ pointer: PointerDoc | null; etag: string | null }> {
  const key = pointerKey(cohort, stage);
  const bytes = await store.get(key);
  if (bytes === undefined) return { pointer: null, etag: null };
  return { pointer: parseStoredJson<PointerDoc>(bytes, key), etag: sha256(bytes) };
}

/** Every move of a pointer, oldest first. */
export async function pointerHistory(
  store: ObjectStore,
  cohort: string,
  stage: Stage,
): Promise<PointerHistoryEntry[]> {
  const prefix = historyPrefix(cohort, stage);
  const entries: PointerHistoryEntry[] = [];
  for (const key of await store.list(prefix)) {
    const seq = seqOf(prefix, key);
    if (seq === null) continue;
    const bytes = await store.get(key);
    if (bytes === undefined) continue;
    const e = parseStoredJson<Omit<PointerHistoryEntry, 'seq'>>(bytes, key);
    entries.push({ seq, from: e.from, to: e.to, rolloutId: e.rolloutId, reason: e.reason, at: e.at });
  }
  return entries.sort((a, b) => a.seq - b.seq);
}

/** The digest a pointer held at time `at` (null: unset then). */
export async function pointerAt(
  store: ObjectStore,
  cohort: string,
  stage: Stage,
  at: Date | string,
): Promise<string | null> {
  const t = (typeof at === 'string' ? new Date(at) : at).getTime();
  let digest: string | null = null;
  for (const e of await pointerHistory(store, cohort, stage)) {
    if (new Date(e.at).getTime() > t) break;
    digest = e.to;
  }
  return digest;
}

/** Writes the history entry of the pointer's current move if a crash left it unwritten. */
async function repairHistory(store: ObjectStore, cohort: string, stage: Stage, p: PointerDoc): Promise<void> {
  const entry = { from: p.previous, to: p.digest, rolloutId: p.rolloutId, reason: p.reason, at: p.at };
  await store.putIfAbsent(historyKey(cohort, stage, p.seq), json(entry));
}

async function lastHistorySeq(store: ObjectStore, cohort: string, stage: Stage): Promise<number> {
  const prefix = historyPrefix(cohort, stage);
  let last = 0;
  for (const key of await store.list(prefix)) last = Math.max(last, seqOf(prefix, key) ?? 0);
  return last;
}

function seqOf(prefix: string, key: string): number | null {
  const m = /^(\d+)\.json$/.exec(key.slice(prefix.length));
  return m ? Number(m[1]) : null;
}

/** Record key of a registered digest; the highest version when several versions share the bytes. */
async function recordOfDigest(store: ObjectStore, digest: string): Promise<string> {
  if (!/^[0-9a-f]{64}$/.test(digest)) {
    throw fail(ErrorType.InvalidInput, `digest ${JSON.stringify(digest)} is not a sha256 hex digest`);
  }
  const keys = await store.list(indexPrefix(digest));
  if (keys.length === 0) {
    throw fail(
      ErrorType.NotFound,
      `model ${digest} is not registered (no ${indexPrefix(digest)}*); register its pack before moving a pointer to it`,
      { digest },
    );
  }
  const newest = keys
    .map((k) => ({ k, v: (k.split('/').pop() ?? '').replace(/\.json$/, '') }))
    .sort((a, b) => compareSemver(a.v, b.v))
    .pop()!;
  const entry = await readJson<{ recordKey: string }>(store, newest.k);
  if (!entry) throw fail(ErrorType.NotFound, `registry index ${newest.k} vanished; register the pack again`);
  return entry.recordKey;
}

function compareSemver(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The same registry version: the same signed manifest and model (the signature may differ). */
function sameVersion(a: ModelRecord, b: ModelRecord): boolean {
  return a.manifestDigest === b.manifestDigest && a.digest === b.digest;
}

/** What the owner key of a digest holds. */
interface DigestClaim {
  recordKey: string;
  name: string;
  version: string;
  release?: number;
  /** When the registration claimed the digest. */
  at: string;
}

/** Another record that holds a model digest first. */
interface Holder {
  recordKey: string;
  name: string;
  version: string;
  release?: number;
  at?: string;
  /** false: claimed, but its record is not written yet (a registration under way, or one that crashed). */
  complete: boolean;
}

/** The refusal of a model digest that record `h` holds first. */
function duplicateModel(
  attempted: Pick<ModelRecord, 'digest' | 'recordKey' | 'name' | 'version' | 'release'>,
  h: Holder,
  label: string,
): ApplicationFailure {
  return fail(
    ErrorType.ImmutableConflict,
    `model pack ${label}: its model (sha256 ${attempted.digest}) is already registered as ${h.name}@${h.version}` +
      (h.release !== undefined ? ` release ${h.release}` : '') +
      (h.at ? `, registered ${h.at}` : '') +
      (h.complete ? '' : ' (that registration has not completed: register its pack again to complete it)') +
      `; this pack would register the same bytes again as ${attempted.name}@${attempted.version} release ` +
      `${attempted.release}. One model is one registry record, so that pointer histories and release checks ` +
      `name one version: use the existing record ${h.name}@${h.version} (roll out or register its pack), or ` +
      'pack a changed model',
    { digest: attempted.digest, recordKey: h.recordKey, attempted: attempted.recordKey },
  );
}

/**
 * Claims `record.digest` for `record` (write-once owner key), or refuses (ImmutableConflict) naming the
 * record that holds those bytes first. `registered`: the record already written at its key (a retry, or
 * the same pack registered again), which stays a no-op.
 */
async function claimDigest(
  store: ObjectStore,
  record: ModelRecord,
  registered: ModelRecord | undefined,
  label: string,
): Promise<void> {
  const other = await otherHolder(store, record.digest, record.recordKey, registered);
  if (other) throw duplicateModel(record, other, label);
  const claim: DigestClaim = {
    recordKey: record.recordKey,
    name: record.name,
    version: record.version,
    release: record.release,
    at: new Date().toISOString(),
  };
  try {
    await store.putIfAbsent(ownerKey(record.digest), json(claim));
  } catch (err) {
    if (!(err instanceof ApplicationFailure) || err.type !== ErrorType.ImmutableConflict) throw err;
    // Claimed meanwhile: by this record (a retry: its own claim, written at another time) or another.
    const winner = await otherHolder(store, record.digest, record.recordKey, registered);
    if (winner) throw duplicateModel(record, winner, label);
  }
}

/**
 * The record other than `recordKey` that holds model `digest` first, if any: the one the owner key
 * names; without a valid owner key (stores written before owner keys, which may hold the same bytes
 * under several versions), the lowest release, then version, of the records the digest index lists,
 * `registered` (the record already written at `recordKey`, if any) included.
 */
async function otherHolder(
  store: ObjectStore,
  digest: string,
  recordKey: string,
  registered: ModelRecord | undefined,
): Promise<Holder | undefined> {
  const claim = await readJson<DigestClaim>(store, ownerKey(digest));
  if (claim?.recordKey === recordKey) return undefined;
  if (claim) {
    const held = await readJson<ModelRecord>(store, claim.recordKey);
    if (!held) return { ...claim, complete: false };
    if (held.digest === digest) {
      const { name, version, release } = held;
      return { recordKey: claim.recordKey, name, version, release, at: claim.at, complete: true };
    }
    // A claim whose name@version was taken by other bytes in a race owns nothing: fall through.
  }
  const holders: ModelRecord[] = registered ? [registered] : [];
  for (const key of await store.list(indexPrefix(digest))) {
    const entry = await readJson<{ recordKey: string }>(store, key);
    if (!entry || entry.recordKey === recordKey) continue;
    const held = await readJson<ModelRecord>(store, entry.recordKey);
    if (held?.digest === digest) holders.push(held);
  }
  const first = holders.sort(
    (a, b) =>
      (a.release ?? 0) - (b.release ?? 0) ||
      compareSemver(a.version, b.version) ||
      (a.recordKey < b.recordKey ? -1 : 1),
  )[0];
  if (!first || first.recordKey === recordKey) return undefined;
  const { name, version, release } = first;
  return {
    recordKey: first.recordKey,
    name,
    version,
    release,
    at: await writtenAt(store, first.recordKey),
    complete: true,
  };
}

/** When a write-once key was written, if the store can tell (the local store's file time). */
async function writtenAt(store: ObjectStore, key: string): Promise<string | undefined> {
  if (!(store instanceof LocalObjectStore)) return undefined;
  try {
    return (await fs.stat(store.pathOf(key))).mtime.toISOString();
  } catch {
    return undefined;
  }
}

/** Resolves a pack directory against root; refuses one outside it. */
function resolvePack(root: string, packDir: string): string {
  const base = path.resolve(root);
  const pack = path.resolve(base, packDir);
  const rel = path.relative(base, pack);
  const escapes = (r: string) => r.startsWith('..') || path.isAbsolute(r);
  if (escapes(rel)) {
    throw fail(
      ErrorType.PathEscape,
      `model pack ${JSON.stringify(packDir)} resolves outside the worker directory; give a pack path inside it`,
      { packDir },
    );
  }
  // A pack directory (or a folder on the way to it) that is a link leading out is refused too.
  let real: string | undefined;
  try {
    real = realpathSync(pack);
  } catch {
    return pack; // missing: verifyPackDir says so
  }
  if (escapes(path.relative(realpathSync(base), real))) {
    throw fail(
      ErrorType.PathEscape,
      `model pack ${JSON.stringify(packDir)} is, or passes through, a link to a place outside the worker ` +
        'directory; copy the pack into the worker directory and give its path there',
      { packDir },
    );
  }
  return pack;
}

/** name@version of a registered release holding a file with this digest, if any. */
async function releaseOfFile(store: ObjectStore, digest: string): Promise<string | undefined> {
  const keys = await store.list(fileIndexPrefix(digest));
  const first = keys[0];
  if (!first) return undefined;
  const [name, file] = first.slice(fileIndexPrefix(digest).length).split('/');
  return `${name}@${(file ?? '').replace(/\.json$/, '')}`;
}

/**
 * Refuses a candidate whose release counter is not above a cohort's production release (unless it is
 * production itself), or whose major version is above production's without the rollout's approval.
 */
async function checkAgainstProduction(
  store: ObjectStore,
  manifest: ModelManifest,
  digest: string,
  cohorts: readonly string[],
  allowMajorBump: boolean,
  label: string,
): Promise<void> {
  for (const cohort of cohorts) {
    const { pointer } = await readPointer(store, cohort, 'production');
    if (!pointer?.recordKey || pointer.digest === digest) continue;
    const prod = await readJson<ModelRecord>(store, pointer.recordKey);
    if (!prod) continue;
    const prodRelease = prod.release ?? 0;
    if (manifest.release <= prodRelease) {
      throw fail(
        ErrorType.ReleaseRollback,
        `model pack ${label}: ${manifest.name}@${manifest.version} has release ${manifest.release}, not above ` +
          `release ${prodRelease} of ${prod.name}@${prod.version}, production in cohort ${cohort}; an older release ` +
          'is never delivered over a newer one: pack the candidate with a higher "release"',
        { cohort, release: manifest.release, productionRelease: prodRelease },
      );
    }
    const major = (v: string) => Number(v.split('.')[0]);
    if (major(manifest.version) > major(prod.version) && !allowMajorBump) {
      throw fail(
        ErrorType.MajorBumpUnapproved,
        `model pack ${label}: ${manifest.name}@${manifest.version} is a major version above production ` +
          `${prod.name}@${prod.version} in cohort ${cohort}; a major bump may break consumers of the output: ` +
          'approve it with "allowMajorBump": true in the rollout request',
        { cohort, version: manifest.version, productionVersion: prod.version },
      );
    }
  }
}

async function readJson<T>(store: ObjectStore, key: string): Promise<T | undefined> {
  const bytes = await store.get(key);
  return bytes === undefined ? undefined : parseStoredJson<T>(bytes, key);
}

function json(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value, null, 2) + '\n');
}

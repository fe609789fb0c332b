/**
 * Registry activities: register a model pack as an immutable version, look up each cohort's production
 * model, and move stage pointers by compare-and-swap with their history kept.
 *
 * Object-store layout:
 *   blobs/sha256/<digest>                              model bytes, content-addressed, write-once
 *   registry/<name>/<version>.json                     ModelRecord, write-once
 *   index/sha256/<digest>/<name>/<version>.json        which records hold a digest, write-once
 *   pointers/<cohort>/<stage>.json                     current pointer, moved by compare-and-swap
 *   pointers/<cohort>/<stage>.history/<seq>.json       one write-once entry per move
 *
 * Every activity here is idempotent: a retry after a crash finds its own writes and completes them.
 * This module must never overwrite a registry record or blob, never move a pointer without
 * compare-and-swap, and never read files outside the pack directory it was given.
 */
import { promises as fs } from 'node:fs';
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
import { sha256 } from './store';
import { ErrorType, fail } from '../errors';
import { ModelManifest, formatIssues } from '../policies/schema';
import { blobKey } from '../workers/model-runner';

export interface RegistryDeps {
  store: ObjectStore;
  runner: ModelRunner;
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

const MANIFEST = 'manifest.json';
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

export function createRegistryActivities(deps: RegistryDeps) {
  const { store, runner } = deps;

  /** Verifies a pack against its manifest and records it as an immutable registry version. */
  async function registerCandidate(input: RegisterInput): Promise<ModelRecord> {
    const pack = resolvePack(deps.root, input.packDir);
    const manifestFile = path.join(pack, MANIFEST);
    const manifestBytes = await readFileOr(manifestFile, () =>
      fail(
        ErrorType.NotFound,
        `model pack ${input.packDir}: ${MANIFEST} not found at ${manifestFile}; ` +
          'check the pack path (it is resolved against the worker directory)',
      ),
    );
    let raw: unknown;
    try {
      raw = JSON.parse(manifestBytes.toString('utf8'));
    } catch (err) {
      throw fail(
        ErrorType.InvalidInput,
        `model pack ${input.packDir}: ${MANIFEST} is not valid JSON (${(err as Error).message}); fix the file`,
      );
    }
    const parsed = ModelManifest.safeParse(raw);
    if (!parsed.success) {
      throw fail(
        ErrorType.InvalidInput,
        `model pack ${input.packDir}: invalid ${MANIFEST}:\n${formatIssues(parsed.error, raw, 'manifest')}`,
      );
    }
    const manifest = parsed.data;
    if (!(manifest.model in manifest.files)) {
      throw fail(
        ErrorType.InvalidInput,
        `model pack ${input.packDir}: manifest.model is "${manifest.model}" but files does not list it; ` +
          `add "${manifest.model}": "<sha256>" to files`,
      );
    }

    const contents = await verifyPack(pack, input.packDir, manifest.files);
    const modelBytes = contents.get(manifest.model)!;
    const digest = manifest.files[manifest.model]!;
    await store.putIfAbsent(blobKey(digest), modelBytes);

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

    const recordKey = recordKeyOf(manifest.name, manifest.version);
    const record: ModelRecord = {
      name: manifest.name,
      version: manifest.version,
      digest,
      manifestDigest: sha256(manifestBytes),
      recordKey,
      contract,
    };
    try {
      await store.putIfAbsent(recordKey, json(record));
    } catch (err) {
      if (!(err instanceof ApplicationFailure) || err.type !== ErrorType.ImmutableConflict) throw err;
      const existing = await readJson<ModelRecord>(store, recordKey);
      throw fail(
        ErrorType.ImmutableConflict,
        `${manifest.name}@${manifest.version} is already registered with model digest ${existing?.digest ?? '?'} ` +
          `and manifest digest ${existing?.manifestDigest ?? '?'}; this pack has ${digest} and ${record.manifestDigest}. ` +
          'Registry versions are immutable: bump "version" in manifest.json',
        { recordKey, existing, attempted: record },
      );
    }
    await store.putIfAbsent(
      `${indexPrefix(digest)}${manifest.name}/${manifest.version}.json`,
      json({ recordKey }),
    );
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
    for (let attempt = 0; ; attempt++) {
      const { pointer, etag } = await readPointer(store, cohort, stage);
      if (pointer) await repairHistory(store, cohort, stage, pointer);
      const current = pointer?.digest ?? null;
      if (current === input.digest) return { moved: false, previous: pointer?.previous ?? null };
      if (current !== input.expected) {
        throw fail(
          ErrorType.PointerConflict,
          `${stage} pointer of cohort ${cohort} holds ${current ?? '(none)'}, not the expected ` +
            `${input.expected ?? '(none)'} (last moved by ${pointer?.rolloutId ?? '?'}: ${pointer?.reason ?? '?'}); ` +
            'another rollout moved it: re-read the pointer before moving it',
          { cohort, stage, expected: input.expected, actual: current },
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
  return { pointer: parseJson<PointerDoc>(bytes, key), etag: sha256(bytes) };
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
    const e = parseJson<Omit<PointerHistoryEntry, 'seq'>>(bytes, key);
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

/** Resolves a pack directory against root; refuses one outside it. */
function resolvePack(root: string, packDir: string): string {
  const base = path.resolve(root);
  const pack = path.resolve(base, packDir);
  const rel = path.relative(base, pack);
  if (rel.startsWith('..') || path.isAbsolute(rel)) {
    throw fail(
      ErrorType.InvalidInput,
      `model pack ${JSON.stringify(packDir)} resolves outside the worker directory ${base}; ` +
        'give a pack path inside it',
    );
  }
  return pack;
}

/**
 * Checks every file of the pack against the manifest: listed files exist inside the pack and match
 * their digests, and no file is present that the manifest does not list. Returns the listed files' bytes.
 */
async function verifyPack(
  pack: string,
  packDir: string,
  files: Record<string, string>,
): Promise<Map<string, Buffer>> {
  const realPack = await fs.realpath(pack);
  for (const name of Object.keys(files)) {
    const segments = name.split('/');
    if (
      path.isAbsolute(name) ||
      name.includes('\\') ||
      segments.some((s) => s === '' || s === '.' || s === '..') ||
      name === MANIFEST
    ) {
      throw fail(
        ErrorType.InvalidInput,
        `model pack ${packDir}: manifest lists ${JSON.stringify(name)}, which is not a plain path inside the pack ` +
          `(or is ${MANIFEST} itself); list files by their relative path, e.g. "model.onnx"`,
      );
    }
  }

  const present = new Set(await listFiles(pack));
  present.delete(MANIFEST);
  const problems: string[] = [];
  const contents = new Map<string, Buffer>();
  for (const [name, expected] of Object.entries(files)) {
    if (!present.has(name)) {
      problems.push(`${name}: listed in the manifest with sha256 ${expected} but missing from the pack`);
      continue;
    }
    const file = path.join(pack, ...name.split('/'));
    const real = await fs.realpath(file);
    if (real !== realPack && !real.startsWith(realPack + path.sep)) {
      throw fail(
        ErrorType.InvalidInput,
        `model pack ${packDir}: ${name} is a link to ${real}, outside the pack; copy the file into the pack`,
      );
    }
    const bytes = await fs.readFile(file);
    const actual = sha256(bytes);
    if (actual !== expected) problems.push(`${name}: sha256 is ${actual}, manifest expects ${expected}`);
    contents.set(name, bytes);
  }
  for (const name of [...present].sort()) {
    if (!(name in files)) problems.push(`${name}: present in the pack but not listed in the manifest`);
  }
  if (problems.length > 0) {
    throw fail(
      ErrorType.DigestMismatch,
      `model pack ${packDir} does not match its manifest:\n${problems.join('\n')}\n` +
        'rebuild the pack, or remove unlisted files and update the digests in manifest.json',
      { packDir, problems },
    );
  }
  return contents;
}

/** Relative '/'-separated paths of every file (and link) under dir. */
async function listFiles(dir: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const rel = prefix === '' ? e.name : `${prefix}/${e.name}`;
    if (e.isDirectory()) out.push(...(await listFiles(path.join(dir, e.name), rel)));
    else out.push(rel);
  }
  return out;
}

async function readFileOr(file: string, missing: () => Error): Promise<Buffer> {
  try {
    return await fs.readFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw missing();
    throw err;
  }
}

async function readJson<T>(store: ObjectStore, key: string): Promise<T | undefined> {
  const bytes = await store.get(key);
  return bytes === undefined ? undefined : parseJson<T>(bytes, key);
}

function parseJson<T>(bytes: Buffer, key: string): T {
  try {
    return JSON.parse(bytes.toString('utf8')) as T;
  } catch (err) {
    throw fail(
      ErrorType.InvalidInput,
      `object ${key} is not valid JSON (${(err as Error).message}); it was not written by fleetgate or is damaged`,
    );
  }
}

function json(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value, null, 2) + '\n');
}

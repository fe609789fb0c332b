/**
 * Read-only queries of the model registry (docs/registry.md): the registered versions, a version's
 * record, the records holding a digest, and the stage pointers of every cohort with their history.
 * `fleetgate model list|show|history` are built on these (the bench reports stored beside a version are
 * read by activities/inference.ts `benchReports`).
 *
 * The object-store layout is the one activities/registry.ts writes (see its header); this module uses
 * that module's key helpers and never writes: no put, no compare-and-swap, on any store.
 */
import { promises as fs } from 'node:fs';
import type { ModelRecord } from './contracts';
import type { ObjectStore } from './deps';
import { LocalObjectStore, parseStoredJson } from './store';
import { ErrorType, fail } from '../errors';
import {
  type PointerDoc,
  type PointerHistoryEntry,
  type Stage,
  pointerHistory,
  readPointer,
  recordKeyOf,
} from './registry';

export const STAGES: readonly Stage[] = ['production', 'candidate'];

/** One registered version: `registry/<name>/<version>.json`. */
export interface VersionRef {
  name: string;
  version: string;
  recordKey: string;
}

const RECORD_KEY = /^registry\/([^/]+)\/(\d+\.\d+\.\d+)\.json$/;
const POINTER_KEY = /^pointers\/(.+)\/(production|candidate)\.json$/;
const HISTORY_KEY = /^pointers\/(.+)\/(production|candidate)\.history\/\d+\.json$/;
const SHA256 = /^[0-9a-f]{64}$/;

/** `name@version`. */
export function refOf(r: { name: string; version: string }): string {
  return `${r.name}@${r.version}`;
}

/** Orders semantic versions numerically: 1.10.0 after 1.9.0. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** Every registered version, by name, then version (numerically). */
export async function listVersions(store: ObjectStore): Promise<VersionRef[]> {
  const out: VersionRef[] = [];
  for (const key of await store.list('registry/')) {
    const m = RECORD_KEY.exec(key);
    if (m) out.push({ name: m[1]!, version: m[2]!, recordKey: key });
  }
  return out.sort((a, b) =>
    a.name === b.name ? compareVersions(a.version, b.version) : a.name < b.name ? -1 : 1,
  );
}

/** The record of `name@version`, or undefined when that version is not registered. */
export async function readRecord(
  store: ObjectStore,
  name: string,
  version: string,
): Promise<ModelRecord | undefined> {
  return readRecordAt(store, recordKeyOf(name, version));
}

/** The record at a record key, or undefined. */
export async function readRecordAt(store: ObjectStore, recordKey: string): Promise<ModelRecord | undefined> {
  const bytes = await store.get(recordKey);
  return bytes === undefined ? undefined : parseStoredJson<ModelRecord>(bytes, recordKey);
}

/** Every registered version whose model file has this digest (usually one), oldest version first. */
export async function recordsByDigest(store: ObjectStore, digest: string): Promise<ModelRecord[]> {
  if (!SHA256.test(digest)) {
    throw fail(ErrorType.InvalidInput, `digest ${JSON.stringify(digest)} is not a sha256 hex digest`);
  }
  const records: ModelRecord[] = [];
  for (const key of await store.list(`index/sha256/${digest}/`)) {
    const bytes = await store.get(key);
    if (bytes === undefined) continue;
    const { recordKey } = parseStoredJson<{ recordKey: string }>(bytes, key);
    const record = await readRecordAt(store, recordKey);
    if (record) records.push(record);
  }
  return records.sort((a, b) => compareVersions(a.version, b.version));
}

/**
 * Labels digests as `name@version` (several joined by " | " when versions share the bytes, the digest's
 * first 12 hex digits when none is registered, "(none)" for null); each digest is looked up once.
 */
export function digestLabeler(store: ObjectStore): (digest: string | null) => Promise<string> {
  const cache = new Map<string, Promise<string>>();
  return (digest) => {
    if (digest === null) return Promise.resolve('(none)');
    let label = cache.get(digest);
    if (!label) {
      label = recordsByDigest(store, digest).then((rs) =>
        rs.length === 0 ? `${digest.slice(0, 12)} (unregistered)` : rs.map(refOf).join(' | '),
      );
      cache.set(digest, label);
    }
    return label;
  };
}

/**
 * When the record was written, if the store can tell: the file's modification time for the local store
 * (a write-once file is never modified after it is linked into place); undefined for other stores.
 */
export async function registeredAt(store: ObjectStore, recordKey: string): Promise<string | undefined> {
  if (!(store instanceof LocalObjectStore)) return undefined;
  try {
    return (await fs.stat(store.pathOf(recordKey))).mtime.toISOString();
  } catch {
    return undefined;
  }
}

/** One cohort's stage pointer: its current value (null when never set) and every move, oldest first. */
export interface CohortPointer {
  cohort: string;
  stage: Stage;
  current: PointerDoc | null;
  history: PointerHistoryEntry[];
}

/** Cohorts with a pointer or a pointer history in the store, sorted. */
export async function listCohorts(store: ObjectStore): Promise<string[]> {
  const cohorts = new Set<string>();
  for (const key of await store.list('pointers/')) {
    const m = POINTER_KEY.exec(key) ?? HISTORY_KEY.exec(key);
    if (m) cohorts.add(m[1]!);
  }
  return [...cohorts].sort();
}

/** The pointers of the given cohorts (all cohorts by default) and stages, with their histories. */
export async function cohortPointers(
  store: ObjectStore,
  options: { cohorts?: readonly string[]; stages?: readonly Stage[] } = {},
): Promise<CohortPointer[]> {
  const cohorts = options.cohorts ?? (await listCohorts(store));
  const out: CohortPointer[] = [];
  for (const cohort of cohorts) {
    for (const stage of options.stages ?? STAGES) {
      const { pointer } = await readPointer(store, cohort, stage);
      const history = await pointerHistory(store, cohort, stage);
      if (pointer === null && history.length === 0) continue;
      out.push({ cohort, stage, current: pointer, history });
    }
  }
  return out;
}

/** The move in force at time `at`: the last one made at or before it (undefined: the pointer was unset). */
export function entryAt(
  history: readonly PointerHistoryEntry[],
  at: Date | string,
): PointerHistoryEntry | undefined {
  const t = (typeof at === 'string' ? new Date(at) : at).getTime();
  let found: PointerHistoryEntry | undefined;
  for (const e of history) {
    if (new Date(e.at).getTime() > t) break;
    found = e;
  }
  return found;
}

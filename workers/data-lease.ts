/**
 * One data worker per object store, when the fleet database is a cache of that store (a real fleet's
 * records kept as partitions, delivery through AWS IoT, an S3 store: `Services.cacheOf`). Any data
 * directory may then own the store's rollouts, so the check that one data store serves a task queue
 * (workers/ownership.ts) names the object store, and this lease keeps it to one process at a time:
 *
 *   owner/lease.json   DataOwnerLease: the holder (`<pid>@<host> dir=<data directory id>`), when it
 *                      last renewed it (its clock), and for how long that holds
 *
 * The holder renews it by compare-and-swap every third of its time to live; a worker that starts while a
 * lease of another holder is live is refused with a message that names the holder and when the lease
 * runs out; once it has run out (the holder died), the next worker takes it over by compare-and-swap, so
 * of two that try at once one wins. A holder that finds its lease taken stops serving at once. Clocks
 * of the hosts must agree to well within the time to live.
 *
 * It never deletes the lease of another holder and never holds a secret.
 */
import { hostname } from 'node:os';
import type { ObjectStore } from '../activities/deps';
import { ErrorType } from '../errors';

export const LEASE_KEY = 'owner/lease.json';
export const LEASE_TTL_MS = 30_000;

export interface DataOwnerLease {
  apiVersion: 'fleetgate/v1';
  kind: 'DataOwnerLease';
  holder: string;
  renewedAtMs: number;
  ttlMs: number;
}

/** A worker refused the store: another live data worker holds its lease, or took it over. */
export class DataOwnerError extends Error {
  override name = 'DataOwnerError';
}

export function leaseHolder(dirId: string, pid = process.pid, host = hostname()): string {
  return `${pid}@${host} dir=${dirId.slice(0, 12)}`;
}

/** The store's compare-and-swap refused: the lease changed since it was read. */
function isConflict(err: unknown): boolean {
  return (err as { type?: unknown } | undefined)?.type === ErrorType.PointerConflict;
}

function body(holder: string, nowMs: number, ttlMs: number): Buffer {
  const lease: DataOwnerLease = {
    apiVersion: 'fleetgate/v1',
    kind: 'DataOwnerLease',
    holder,
    renewedAtMs: nowMs,
    ttlMs,
  };
  return Buffer.from(JSON.stringify(lease) + '\n');
}

async function current(store: ObjectStore): Promise<{ lease?: DataOwnerLease; etag: string | null }> {
  const etag = await store.etag(LEASE_KEY);
  if (etag === null) return { etag };
  const bytes = await store.get(LEASE_KEY);
  if (!bytes) return { etag: null };
  try {
    return { lease: JSON.parse(bytes.toString('utf8')) as DataOwnerLease, etag };
  } catch {
    return { etag }; // unreadable: treated as run out, and replaced
  }
}

/** The data directory a holder names (`dir=<id>`), or undefined. */
export function holderDir(holder: string): string | undefined {
  return /(?:^|\s)dir=([0-9a-f]+)(?:\s|$)/.exec(holder)?.[1];
}

/**
 * Takes the store's lease for `holder`, or throws DataOwnerError naming the live holder. Returns the
 * lease's etag (to renew it from) and who held it before (undefined: nobody ever did).
 */
export async function acquireLease(
  store: ObjectStore,
  holder: string,
  opts: { ttlMs?: number; now?: () => number } = {},
): Promise<{ etag: string; previous?: string }> {
  const ttlMs = opts.ttlMs ?? LEASE_TTL_MS;
  const now = opts.now ?? Date.now;
  const { lease, etag } = await current(store);
  if (lease && lease.holder !== holder) {
    const left = lease.renewedAtMs + lease.ttlMs - now();
    if (left > 0) {
      throw new DataOwnerError(
        `the object store's rollouts are owned by the data worker ${lease.holder} (its lease, ${LEASE_KEY}, ` +
          `was renewed ${Math.max(0, Math.round((now() - lease.renewedAtMs) / 1000))} s ago); one data ` +
          `worker serves a store at a time: stop that one, or, if it has died, start this one again in ` +
          `${Math.ceil(left / 1000)} s, when its lease runs out`,
      );
    }
  }
  try {
    const tag = await store.compareAndSwap(LEASE_KEY, etag, body(holder, now(), ttlMs));
    return { etag: tag, ...(lease ? { previous: lease.holder } : {}) };
  } catch (err) {
    if (isConflict(err)) {
      throw new DataOwnerError(
        `another data worker took the object store's lease (${LEASE_KEY}) at the same time; this one stops`,
        { cause: err },
      );
    }
    throw err;
  }
}

/**
 * Renews the lease every third of its time to live from `etag` on; calls `lost` (once) when another
 * holder has it. Returns a function that stops renewing.
 */
export function keepLease(
  store: ObjectStore,
  holder: string,
  etag: string,
  lost: (err: DataOwnerError) => void,
  opts: { ttlMs?: number; now?: () => number } = {},
): () => void {
  const ttlMs = opts.ttlMs ?? LEASE_TTL_MS;
  const now = opts.now ?? Date.now;
  let tag = etag;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const renew = async () => {
    if (stopped) return;
    try {
      tag = await store.compareAndSwap(LEASE_KEY, tag, body(holder, now(), ttlMs));
    } catch (err) {
      if (isConflict(err)) {
        const { lease } = await current(store).catch(() => ({ lease: undefined }));
        if (lease?.holder !== holder) {
          stopped = true;
          lost(
            new DataOwnerError(
              `the object store's lease (${LEASE_KEY}) was taken over by ${lease?.holder ?? 'another worker'}; ` +
                'this data worker stops serving so that one process owns the store',
            ),
          );
          return;
        }
        tag = (await store.etag(LEASE_KEY)) ?? tag;
      }
      // Otherwise the store did not answer: try again at the next turn, within the time to live.
    }
    if (!stopped) {
      timer = setTimeout(() => void renew(), ttlMs / 3);
      timer.unref();
    }
  };
  timer = setTimeout(() => void renew(), ttlMs / 3);
  timer.unref();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/**
 * The store's lease when a holder renewed it within its time to live (a data worker is running), or
 * undefined: never taken, run out or unreadable. Only reads.
 */
export async function liveLease(
  store: ObjectStore,
  now: () => number = Date.now,
): Promise<DataOwnerLease | undefined> {
  const { lease } = await current(store);
  return lease && lease.renewedAtMs + lease.ttlMs > now() ? lease : undefined;
}

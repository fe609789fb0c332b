/**
 * The rollouts an ingestion endpoint knows: a rollout is recorded in the object store when it first takes
 * a cohort's candidate pointer (activities/registry.ts `movePointer`), and an inference event or upload
 * report that names a rollout no store records is refused at ingestion (events/writer.ts), naming its
 * line and field: a rollout id mistyped by a producer, or events sent to the wrong deployment, are told
 * so instead of being stored where no batch ever reads them. Events outside any rollout (production,
 * `rolloutId` absent) are not concerned.
 *
 * Layout (write-once, the same bytes for every writer):
 *   rollouts/<rollout id, file-safe>-<sha256(id), 8 hex>.json   {"apiVersion","kind":"Rollout","rolloutId"}
 *
 * A known id is remembered for the life of the process; an unknown one is asked of the store again after
 * a few seconds (a rollout that started since). It must never hold anything but the rollout's id.
 */
import { createHash } from 'node:crypto';
import type { ObjectStore } from '../activities/deps';

export const ROLLOUTS_PREFIX = 'rollouts/';

/** How long an id the store did not know is taken as unknown before the store is asked again. */
const UNKNOWN_FOR_MS = 2_000;

export function rolloutKey(rolloutId: string): string {
  const safe = rolloutId.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 100);
  return `${ROLLOUTS_PREFIX}${safe}-${createHash('sha256').update(rolloutId).digest('hex').slice(0, 8)}.json`;
}

/** Records a rollout (idempotent: the same bytes each time). */
export async function recordRollout(store: ObjectStore, rolloutId: string): Promise<void> {
  const body = { apiVersion: 'fleetgate/v1', kind: 'Rollout', rolloutId };
  await store.putIfAbsent(rolloutKey(rolloutId), Buffer.from(JSON.stringify(body) + '\n'));
}

/** Which rollout ids a store records, asked as few times as possible. */
export interface RolloutDirectory {
  known(rolloutId: string): Promise<boolean>;
}

export function storeRollouts(store: ObjectStore, now: () => number = Date.now): RolloutDirectory {
  const known = new Set<string>();
  const unknownUntil = new Map<string, number>();
  return {
    async known(rolloutId) {
      if (known.has(rolloutId)) return true;
      const until = unknownUntil.get(rolloutId);
      if (until !== undefined && now() < until) return false;
      const found = (await store.get(rolloutKey(rolloutId))) !== undefined;
      if (found) {
        known.add(rolloutId);
        unknownUntil.delete(rolloutId);
      } else {
        if (unknownUntil.size > 10_000) unknownUntil.clear();
        unknownUntil.set(rolloutId, now() + UNKNOWN_FOR_MS);
      }
      return found;
    },
  };
}

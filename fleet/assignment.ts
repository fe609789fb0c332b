/**
 * Assignment: which vehicles a canary wave or the shadow phase reaches, and which callers the gateway's
 * router gives the candidate. A keyed ranking: each vehicle's or caller's rank is a uint32 from an HMAC
 * over its pseudonym with a per-rollout salt, and a wave of p% of a cohort is the first
 * ceil(p/100 * n) vehicles by rank. The same rollout always gives the same order (sticky), a smaller wave
 * is a prefix of a larger one (monotone), each cohort gets exactly its share (stratified), and two
 * rollouts order vehicles independently. `saltedSql` ranks a whole cohort inside DuckDB with the same
 * order, and `keyedUniforms` draws per-vehicle uniforms from the same keyed HMAC.
 *
 * It knows vehicles and callers by pseudonym only: it must never see, log or store a raw identifier,
 * nor return the key. Activity-side only (node:crypto); workflows never import it.
 */
import { createHmac } from 'node:crypto';
import { ErrorType, fail } from '../errors';
import { FastHmac, sqlHmac, type SqlHmac } from './hmac';

/** Most vehicles a cohort may hold: rank and position share one float64 sort key. */
export const MAX_COHORT_VEHICLES = 1 << 20;

/** The per-salt key ranks are drawn with: HMAC(key, salt). */
function saltKey(key: Buffer, salt: string): Buffer {
  return createHmac('sha256', key).update(salt, 'utf8').digest();
}

/**
 * HMAC(HMAC(key, salt), ·) as SQL, whose first 8 hex characters order vehicles as `assignmentRank`
 * (fixed-width lowercase hex sorts as the number) and whose 32-bit words are `keyedUniforms`' draws.
 */
export function saltedSql(key: Buffer, salt: string, name: string): SqlHmac {
  return sqlHmac(saltKey(key, salt), name);
}

/** The share of a cohort a canary wave of `percent` (0-100] reaches. */
export function waveShare(percent: number): number {
  if (!(percent > 0 && percent <= 100))
    throw fail(ErrorType.InvalidInput, `a wave percent must be in (0, 100] (got ${percent})`);
  return percent / 100;
}

/** The salt of a rollout's canary ranking (see `waveTargets`). */
export const canarySalt = (rolloutId: string) => `${rolloutId}:canary`;

/** A vehicle's rank under a salt: the first 4 bytes (big-endian) of HMAC(HMAC(key, salt), pseudonym). */
export function assignmentRank(key: Buffer, salt: string, pseudonymHex: string): number {
  return createHmac('sha256', saltKey(key, salt)).update(pseudonymHex, 'utf8').digest().readUInt32BE(0);
}

/** `assignmentRank` of many vehicles at once. */
export function assignmentRanks(key: Buffer, salt: string, pseudonyms: readonly string[]): Uint32Array {
  const mac = new FastHmac(saltKey(key, salt));
  const ranks = new Uint32Array(pseudonyms.length);
  for (let i = 0; i < pseudonyms.length; i++) ranks[i] = mac.first32(pseudonyms[i]!);
  return ranks;
}

/**
 * Per vehicle, `draws` (1-8) independent uniforms in [0, 1) keyed by `salt`: the first `draws` 32-bit
 * words of HMAC(HMAC(key, salt), pseudonym), each divided by 2^32. Row-major [pseudonyms.length, draws].
 * The same key, salt and pseudonym always give the same draws, whatever else is in the list.
 */
export function keyedUniforms(
  key: Buffer,
  salt: string,
  pseudonyms: readonly string[],
  draws: number,
): Float64Array {
  if (!(Number.isInteger(draws) && draws >= 1 && draws <= 8)) {
    throw fail(ErrorType.InvalidInput, `keyed draws per vehicle must be 1 to 8 (got ${draws})`);
  }
  const mac = new FastHmac(saltKey(key, salt));
  const out = new Float64Array(pseudonyms.length * draws);
  const words = new Uint32Array(8);
  for (let i = 0; i < pseudonyms.length; i++) {
    mac.words32(pseudonyms[i]!, words);
    for (let d = 0; d < draws; d++) out[i * draws + d] = words[d]! / 4294967296;
  }
  return out;
}

/**
 * Positions of `pseudonyms` ordered by rank under `salt` (ties, which are rare, by pseudonym). The order
 * depends only on the set of pseudonyms, never on the order they are given in.
 */
export function rankOrder(pseudonyms: readonly string[], key: Buffer, salt: string): Uint32Array {
  const n = pseudonyms.length;
  if (n > MAX_COHORT_VEHICLES) {
    throw fail(ErrorType.InvalidInput, `a cohort holds at most ${MAX_COHORT_VEHICLES} vehicles (got ${n})`);
  }
  const ranks = assignmentRanks(key, salt, pseudonyms);
  // rank * 2^20 + position is exact in a float64 (52 bits) and sorts natively, without a comparator.
  const sortKeys = new Float64Array(n);
  for (let i = 0; i < n; i++) sortKeys[i] = ranks[i]! * MAX_COHORT_VEHICLES + i;
  sortKeys.sort();
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = sortKeys[i]! % MAX_COHORT_VEHICLES;
  for (let i = 0; i < n;) {
    let j = i + 1;
    while (j < n && ranks[order[j]!] === ranks[order[i]!]) j++;
    if (j - i > 1) {
      const tied = Array.from(order.subarray(i, j)).sort((a, b) =>
        pseudonyms[a]! < pseudonyms[b]! ? -1 : pseudonyms[a]! > pseudonyms[b]! ? 1 : 0,
      );
      order.set(tied, i);
    }
    i = j;
  }
  return order;
}

/** How many of n vehicles a share in [0, 1] reaches: ceil(share * n), exact for shares like 0.07. */
export function targetCount(n: number, share: number): number {
  if (!(share >= 0 && share <= 1))
    throw fail(ErrorType.InvalidInput, `a share must be in [0, 1] (got ${share})`);
  return Math.min(n, Math.max(0, Math.ceil(share * n - 1e-9)));
}

function firstByRank(pseudonyms: readonly string[], key: Buffer, salt: string, count: number): string[] {
  const order = rankOrder(pseudonyms, key, salt);
  const out = new Array<string>(count);
  for (let i = 0; i < count; i++) out[i] = pseudonyms[order[i]!]!;
  return out;
}

/** The vehicles of one cohort in a canary wave of `percent` (0-100]: sticky, monotone, exact. */
export function waveTargets(
  pseudonyms: readonly string[],
  key: Buffer,
  rolloutId: string,
  percent: number,
): string[] {
  const share = waveShare(percent);
  return firstByRank(pseudonyms, key, canarySalt(rolloutId), targetCount(pseudonyms.length, share));
}

/** The vehicles of one cohort that run the candidate in shadow, for a share in [0, 1]. */
export function shadowTargets(
  pseudonyms: readonly string[],
  key: Buffer,
  rolloutId: string,
  share: number,
): string[] {
  return firstByRank(pseudonyms, key, `${rolloutId}:shadow`, targetCount(pseudonyms.length, share));
}

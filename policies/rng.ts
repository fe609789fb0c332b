/**
 * Seeded random draws: a small PRNG seeded by any string (`makeRng`), and standard normal and Poisson
 * draws from it. The simulator draws its frames, vehicles and callers with them; the bench pack's golden
 * inputs, the labeler's sampling and the `stats` command's simulations use the same streams, so one seed
 * gives the same numbers on every machine.
 *
 * Pure and deterministic: it must never do I/O, read a clock or Math.random, nor be used for anything
 * that must stay secret (use a keyed HMAC: fleet/assignment.ts).
 */

/** A small, fast, seedable PRNG (mulberry32) over a 32-bit state derived from any string. */
export function makeRng(seed: string | number): () => number {
  let a = typeof seed === 'number' ? seed >>> 0 : hash32(seed);
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** FNV-1a 32-bit hash of a string. Not a secret: use HMAC for anything keyed. */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** Standard normal draw (Box-Muller). */
export function gaussian(rng: () => number): number {
  let u = rng();
  if (u < 1e-12) u = 1e-12;
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng());
}

/** Poisson draw (Knuth for small means, normal approximation above 50). */
export function poisson(rng: () => number, mean: number): number {
  if (mean <= 0) return 0;
  if (mean > 50) return Math.max(0, Math.round(mean + Math.sqrt(mean) * gaussian(rng)));
  const l = Math.exp(-mean);
  let k = 0;
  let p = 1;
  do {
    k++;
    p *= rng();
  } while (p > l);
  return k - 1;
}

/**
 * The keyed pseudonym of a raw vehicle or caller identifier: HMAC-SHA256(key, rawId) in hex, its first
 * PSEUDONYM_CHARS characters. The gateway hashes each caller with it, the fleet's vehicles are created
 * with it (in JavaScript, or a whole cohort inside DuckDB with `pseudonymSql`, equal results), and every
 * log, table and report knows vehicles and callers by it only.
 *
 * A raw identifier exists here only as an argument being hashed: this module must never log, store or
 * return one, nor the key. Activity-side only (node:crypto); workflows never import it.
 */
import { createHmac } from 'node:crypto';
import { sqlHmac } from './hmac';

/** Hex characters kept of a pseudonym's HMAC (80 bits). */
export const PSEUDONYM_CHARS = 20;

/** The keyed pseudonym of a raw vehicle identifier. */
export function pseudonym(key: Buffer, rawId: string): string {
  return createHmac('sha256', key).update(rawId, 'utf8').digest('hex').slice(0, PSEUDONYM_CHARS);
}

/** `pseudonym` as SQL: the keyed pseudonym of the raw id the VARCHAR expression `rawId` gives. */
export function pseudonymSql(key: Buffer, rawId: string): { sql: string; params: Record<string, string> } {
  const mac = sqlHmac(key, 'pseudonym');
  return { sql: `substr(${mac.hex(`encode(${rawId})`)}, 1, ${PSEUDONYM_CHARS})`, params: mac.params };
}

/**
 * The simulated fleet: its manifest, its vehicles' pseudonyms, and which vehicles a wave or the shadow
 * phase reaches.
 *
 * Vehicles are known only by a keyed pseudonym, HMAC-SHA256(key, rawId) in hex (first 20 characters).
 * Raw identifiers exist in memory while the fleet is generated, inside `simVehicles` or inside the one
 * SQL expression of `pseudonymSql` that hashes them, and nowhere else: this module must never log, store
 * or return one. Whole cohorts are hashed inside DuckDB (`pseudonymSql`, `saltedSql`) with results equal
 * to the JavaScript functions here, so the fleet is never read into JavaScript to be ranked.
 *
 * Assignment is a keyed ranking: each vehicle's rank is a uint32 from an HMAC over the pseudonym with a
 * per-rollout salt, and a wave of p% of a cohort is the first ceil(p/100 * n) vehicles by rank. The same
 * rollout always gives the same order (sticky), a smaller wave is a prefix of a larger one (monotone),
 * each cohort gets exactly its share (stratified), and two rollouts order vehicles independently.
 *
 * Activity-side only (reads files, uses node:crypto); workflows never import it.
 */
import { createHash, createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import YAML, { YAMLParseError } from 'yaml';
import { ErrorType, fail } from '../errors';
import type { CohortSpec } from '../policies/schema';
import { formatManifestIssues } from '../policies/manifest-errors';
import { FleetManifest } from '../policies/schema';

/** Hex characters kept of a pseudonym's HMAC (80 bits). */
export const PSEUDONYM_CHARS = 20;
/** Most vehicles a cohort may hold: rank and position share one float64 sort key. */
export const MAX_COHORT_VEHICLES = 1 << 20;

/** The keyed pseudonym of a raw vehicle identifier. */
export function pseudonym(key: Buffer, rawId: string): string {
  return createHmac('sha256', key).update(rawId, 'utf8').digest('hex').slice(0, PSEUDONYM_CHARS);
}

/**
 * The parsed contents of a manifest file (YAML or JSON, by extension), before validation; `what` names it
 * in errors ("fleet manifest", "manifest"): NotFound, Unavailable, or InvalidInput for bad syntax. A
 * file of another extension is not read. A syntax error says where (line, column), never what is there:
 * the file may not be a manifest at all.
 */
export function readManifestFile(file: string, what: string, shown = file): unknown {
  const ext = extname(file).toLowerCase();
  if (ext !== '.json' && ext !== '.yaml' && ext !== '.yml') {
    throw fail(
      ErrorType.InvalidInput,
      `${what} ${shown}: unknown extension "${ext.slice(0, 16)}": use .yaml, .yml or .json`,
    );
  }
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw fail(ErrorType.NotFound, `${what} ${shown} does not exist`);
    throw fail(ErrorType.Unavailable, `cannot read ${what} ${shown}: ${code ?? 'unknown error'}`);
  }
  try {
    return ext === '.json' ? JSON.parse(text) : YAML.parse(text);
  } catch (err) {
    throw fail(ErrorType.InvalidInput, `${what} ${shown}: ${syntaxError(err, ext === '.json', text)}`);
  }
}

/** Where a JSON or YAML syntax error is, without the text around it (the parsers' messages quote it). */
function syntaxError(err: unknown, json: boolean, text: string): string {
  const format = json ? 'JSON' : 'YAML';
  let at = '';
  if (err instanceof YAMLParseError && err.linePos) {
    at = ` (${err.code} at line ${err.linePos[0].line}, column ${err.linePos[0].col})`;
  } else {
    const position = /at position (\d+)/.exec((err as Error).message ?? '');
    if (position) {
      const before = text.slice(0, Number(position[1]));
      const line = before.split('\n').length;
      at = ` (at line ${line}, column ${before.length - before.lastIndexOf('\n')})`;
    }
  }
  return `not valid ${format}${at}; a ${json ? '.json' : '.yaml or .yml'} manifest must be ${format}: check its syntax, or the path`;
}

/** Reads and validates a fleet manifest (YAML or JSON, by extension). Errors name the file as
 * `shown` (a worker passes the path as the rollout gave it, never its own directory) and the field path,
 * never a value. */
export function loadFleetManifest(file: string, shown = file): FleetManifest {
  const raw = readManifestFile(file, 'fleet manifest', shown);
  const parsed = FleetManifest.safeParse(raw);
  if (!parsed.success) {
    throw fail(
      ErrorType.InvalidInput,
      `invalid fleet manifest ${shown}:\n${formatManifestIssues(parsed.error, raw)}`,
    );
  }
  const seen = new Set<string>();
  parsed.data.cohorts.forEach((c, i) => {
    if (seen.has(c.name)) {
      throw fail(
        ErrorType.InvalidInput,
        `invalid fleet manifest ${shown}:\ncohorts.${i}.name: cohort names must be unique (got "${c.name}")`,
      );
    }
    seen.add(c.name);
  });
  return parsed.data;
}

export interface SimCohort {
  cohort: CohortSpec;
  cohortIndex: number;
  /** Pseudonyms of the cohort's vehicles, in generation order. */
  pseudonyms: string[];
}

/**
 * The simulated vehicles of a fleet, one cohort at a time. Raw ids (`<fleet>-<cohortIndex>-<i>`) are
 * built here, hashed at once, and dropped.
 */
export function* simVehicles(manifest: FleetManifest, key: Buffer): Generator<SimCohort> {
  const mac = new FastHmac(key);
  for (const [cohortIndex, cohort] of manifest.cohorts.entries()) {
    const pseudonyms = new Array<string>(cohort.vehicles);
    for (let i = 0; i < cohort.vehicles; i++)
      pseudonyms[i] = mac.hex(`${manifest.name}-${cohortIndex}-${i}`, PSEUDONYM_CHARS);
    yield { cohort, cohortIndex, pseudonyms };
  }
}

/** The per-salt key ranks are drawn with: HMAC(key, salt). */
function saltKey(key: Buffer, salt: string): Buffer {
  return createHmac('sha256', key).update(salt, 'utf8').digest();
}

/**
 * HMAC-SHA256 under a key as a DuckDB expression, for hashing a whole cohort inside the database:
 * `hex(message)` is sha256(outer pad || sha256(inner pad || message)) in lowercase hex, equal to
 * node:crypto's HMAC of the same bytes (checked in the unit tests). `message` is a BLOB expression (use
 * `encode(text)` for a string's UTF-8 bytes). The pads (the key XOR 0x36 and 0x5c) are bound as the
 * statement's named parameters `${name}_inner` and `${name}_outer`, in `params`: never put into SQL text,
 * never stored.
 */
export interface SqlHmac {
  hex: (message: string) => string;
  params: Record<string, string>;
}

function sqlHmac(key: Buffer, name: string): SqlHmac {
  const block = Buffer.alloc(64);
  (key.length > 64 ? createHash('sha256').update(key).digest() : key).copy(block);
  const pad = (byte: number) => Buffer.from(block.map((b) => b ^ byte)).toString('hex');
  return {
    hex: (message) => `sha256(unhex($${name}_outer) || unhex(sha256(unhex($${name}_inner) || ${message})))`,
    params: { [`${name}_inner`]: pad(0x36), [`${name}_outer`]: pad(0x5c) },
  };
}

/** `pseudonym` as SQL: the keyed pseudonym of the raw id the VARCHAR expression `rawId` gives. */
export function pseudonymSql(key: Buffer, rawId: string): { sql: string; params: Record<string, string> } {
  const mac = sqlHmac(key, 'pseudonym');
  return { sql: `substr(${mac.hex(`encode(${rawId})`)}, 1, ${PSEUDONYM_CHARS})`, params: mac.params };
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

/*
 * HMAC-SHA256 for many short messages under one key. Node's createHmac costs a few microseconds per call
 * in object set-up alone; with the key's inner and outer states computed once, a message of at most 55
 * bytes costs two SHA-256 compressions. Results equal node:crypto's (checked in the unit tests); longer or
 * non-ASCII messages go to node:crypto.
 */
const K256 = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
  0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
  0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
  0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
  0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
  0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
  0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
  0xc67178f2,
]);
const IV256 = new Int32Array([
  0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
]);

/** One SHA-256 compression of the 16 words `w[0..15]` into `state` (w is used as the schedule). */
function compress(state: Int32Array, w: Int32Array): void {
  for (let t = 16; t < 64; t++) {
    const x = w[t - 15]!;
    const y = w[t - 2]!;
    const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
    const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
    w[t] = (w[t - 16]! + s0 + w[t - 7]! + s1) | 0;
  }
  let a = state[0]!;
  let b = state[1]!;
  let c = state[2]!;
  let d = state[3]!;
  let e = state[4]!;
  let f = state[5]!;
  let g = state[6]!;
  let h = state[7]!;
  for (let t = 0; t < 64; t++) {
    const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
    const ch = (e & f) ^ (~e & g);
    const t1 = (h + S1 + ch + K256[t]! + w[t]!) | 0;
    const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
    const maj = (a & b) ^ (a & c) ^ (b & c);
    const t2 = (S0 + maj) | 0;
    h = g;
    g = f;
    f = e;
    e = (d + t1) | 0;
    d = c;
    c = b;
    b = a;
    a = (t1 + t2) | 0;
  }
  state[0] = (state[0]! + a) | 0;
  state[1] = (state[1]! + b) | 0;
  state[2] = (state[2]! + c) | 0;
  state[3] = (state[3]! + d) | 0;
  state[4] = (state[4]! + e) | 0;
  state[5] = (state[5]! + f) | 0;
  state[6] = (state[6]! + g) | 0;
  state[7] = (state[7]! + h) | 0;
}

class FastHmac {
  private readonly inner = new Int32Array(8);
  private readonly outer = new Int32Array(8);
  private readonly state = new Int32Array(8);
  private readonly w = new Int32Array(64);

  constructor(private readonly key: Buffer) {
    const block = Buffer.alloc(64);
    (key.length > 64 ? createHash('sha256').update(key).digest() : key).copy(block);
    for (const [pad, state] of [
      [0x36, this.inner],
      [0x5c, this.outer],
    ] as const) {
      for (let i = 0; i < 16; i++) this.w[i] = block.readInt32BE(i * 4) ^ (pad * 0x01010101);
      state.set(IV256);
      compress(state, this.w);
    }
  }

  /** The 8 digest words of HMAC(key, msg), or undefined when msg is not short ASCII. */
  private words(msg: string): Int32Array | undefined {
    const len = msg.length;
    if (len > 55) return undefined;
    const w = this.w;
    w.fill(0, 0, 16);
    for (let i = 0; i < len; i++) {
      const code = msg.charCodeAt(i);
      if (code > 0x7f) return undefined;
      w[i >> 2] = w[i >> 2]! | (code << (24 - 8 * (i & 3)));
    }
    w[len >> 2] = w[len >> 2]! | (0x80 << (24 - 8 * (len & 3)));
    w[15] = (64 + len) * 8;
    const s = this.state;
    s.set(this.inner);
    compress(s, w);
    for (let i = 0; i < 8; i++) w[i] = s[i]!;
    w[8] = 0x80000000 | 0;
    w.fill(0, 9, 15);
    w[15] = (64 + 32) * 8;
    s.set(this.outer);
    compress(s, w);
    return s;
  }

  /** The 8 big-endian 32-bit words of HMAC(key, msg), written into `out`. */
  words32(msg: string, out: Uint32Array): void {
    const s = this.words(msg);
    if (s) {
      for (let i = 0; i < 8; i++) out[i] = s[i]! >>> 0;
      return;
    }
    const d = createHmac('sha256', this.key).update(msg, 'utf8').digest();
    for (let i = 0; i < 8; i++) out[i] = d.readUInt32BE(4 * i);
  }

  /** The first 4 bytes of HMAC(key, msg) as a big-endian uint32. */
  first32(msg: string): number {
    const s = this.words(msg);
    return s ? s[0]! >>> 0 : createHmac('sha256', this.key).update(msg, 'utf8').digest().readUInt32BE(0);
  }

  /** The first `chars` hex characters of HMAC(key, msg). */
  hex(msg: string, chars: number): string {
    const s = this.words(msg);
    if (!s) return createHmac('sha256', this.key).update(msg, 'utf8').digest('hex').slice(0, chars);
    let out = '';
    for (let i = 0; i * 8 < chars; i++) out += (s[i]! >>> 0).toString(16).padStart(8, '0');
    return out.slice(0, chars);
  }
}

/**
 * HMAC-SHA256 for the keyed pseudonyms and the assignment ranks: `FastHmac` for many short messages
 * under one key in JavaScript, and `sqlHmac` for the same HMAC as a DuckDB expression, so whole cohorts
 * are hashed inside the database with results equal to node:crypto's (checked in the unit tests).
 *
 * It must never log, store or return a key, a pad, or a message it hashes (messages can be raw vehicle
 * or caller ids): the SQL form binds the pads as statement parameters, never as SQL text. Activity-side
 * only (node:crypto); workflows never import it.
 */
import { createHash, createHmac } from 'node:crypto';

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

/** HMAC-SHA256 under `key` as SQL, its pads bound as the parameters `${name}_inner` and `${name}_outer`. */
export function sqlHmac(key: Buffer, name: string): SqlHmac {
  const block = Buffer.alloc(64);
  (key.length > 64 ? createHash('sha256').update(key).digest() : key).copy(block);
  const pad = (byte: number) => Buffer.from(block.map((b) => b ^ byte)).toString('hex');
  return {
    hex: (message) => `sha256(unhex($${name}_outer) || unhex(sha256(unhex($${name}_inner) || ${message})))`,
    params: { [`${name}_inner`]: pad(0x36), [`${name}_outer`]: pad(0x5c) },
  };
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

/** HMAC-SHA256 under one key for many short messages (see above). */
export class FastHmac {
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

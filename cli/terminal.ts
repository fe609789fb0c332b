/**
 * What the command line does to text that came from outside before a terminal sees it. Reasons,
 * comments, names, decision-log lines, registry records and error messages are written by operators,
 * reviewers, other processes or whoever can write to the object store; printed raw, `ESC ] 0 ; … BEL`
 * would retitle the terminal, `ESC [ 2 J` clear it, a carriage return or a newline forge a line, and a
 * bidi override (U+202E) show text in an order other than its own.
 *
 * - `safeText(s)`: one value meant to be one line. Every C0 control (newline, tab and carriage return
 *   included), DEL, every C1 control (U+0080–U+009F) and the bidi embeddings, overrides and isolates
 *   (U+202A–U+202E, U+2066–U+2069) become visible escapes: `\n`, `\r`, `\t`, `\x1b` for the other C0
 *   controls, `\u007f`, `\u009b`, `\u202e` for the rest (a `\u` escape is also JSON's escape of the same
 *   character, so JSON output stays valid JSON holding the same values). `safeStrings(v)` applies it to
 *   every string of a plain value (a status, a decision log, a registry record) before it is rendered.
 * - `guardOutput(stream)`: the last line of defence at the write itself (cli/main.ts installs it on
 *   stdout and stderr): the same escapes, except that newline and tab stay (output has lines), and that
 *   on a terminal the colour and redraw sequences of this command line (cli/progress.ts) are kept.
 *   Elsewhere (a pipe, a file, CI) no escape sequence passes.
 *
 * It must never drop, reorder or add characters other than by these escapes (what was there stays
 * readable), and never let a control sequence of a value through, whatever the value.
 */
import type { Writable } from 'node:stream';

/** The characters escaped in a one-line value: C0, DEL, C1, bidi embeddings/overrides/isolates. */
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;
/** The same, except newline and tab: what a block of output may hold. */
// eslint-disable-next-line no-control-regex
const UNSAFE_IN_BLOCK = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;
/**
 * The only escape sequences this command line writes, tried before the characters to escape: the SGR
 * colours of cli/progress.ts's palette (bold, dim, red, green, yellow, cyan and their resets) and the
 * progress view's redraw (cursor up, carriage return, erase below).
 */
const OWN_OR_UNSAFE = new RegExp(
  // eslint-disable-next-line no-control-regex
  /(\u001b\[(?:0|1|2|22|31|32|33|36|39)m|\u001b\[\d{1,4}A\r\u001b\[0J)/.source + '|' + UNSAFE_IN_BLOCK.source,
  'g',
);

const SHORT: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

function escape(c: string): string {
  const code = c.charCodeAt(0);
  if (SHORT[c]) return SHORT[c];
  if (code < 0x20) return `\\x${code.toString(16).padStart(2, '0')}`;
  return `\\u${code.toString(16).padStart(4, '0')}`;
}

/** One value as one line a terminal shows as it is: controls and bidi overrides as visible escapes. */
export function safeText(s: string): string {
  return s.replace(UNSAFE, escape);
}

/** `value` with `safeText` applied to every string in it (arrays and plain objects, keys included). */
export function safeStrings<T>(value: T): T {
  if (typeof value === 'string') return safeText(value) as T;
  if (Array.isArray(value)) return value.map((v: unknown) => safeStrings(v)) as T;
  if (value !== null && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[safeText(k)] = safeStrings(v);
    return out as T;
  }
  return value;
}

/**
 * A block of output (many lines) made safe: like `safeText` but newline and tab stay, and with
 * `ownSequences` this command line's own colour and redraw sequences stay too.
 */
export function safeOutput(s: string, ownSequences = false): string {
  if (!ownSequences) return s.replace(UNSAFE_IN_BLOCK, escape);
  return s.replace(OWN_OR_UNSAFE, (m: string, own?: string) => (own ? m : escape(m)));
}

const GUARDED = Symbol.for('fleetgate.guardedOutput');

/**
 * Makes every string written to `stream` safe (`safeOutput`), keeping this command line's own
 * sequences only when the stream is a terminal. Bytes (Buffers) pass as they are: only child processes'
 * output is piped as bytes, and a character split between two chunks cannot be judged. Idempotent.
 */
export function guardOutput(stream: Writable & { isTTY?: boolean }): void {
  const s = stream as typeof stream & { [GUARDED]?: true };
  if (s[GUARDED]) return;
  s[GUARDED] = true;
  const write = stream.write.bind(stream) as (...args: unknown[]) => boolean;
  stream.write = ((chunk: unknown, ...rest: unknown[]) =>
    write(
      typeof chunk === 'string' ? safeOutput(chunk, Boolean(stream.isTTY)) : chunk,
      ...rest,
    )) as typeof stream.write;
}

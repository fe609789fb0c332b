/**
 * A fast acceptance check of the event contract, generated from the zod schemas of events/contract.ts
 * (through their JSON Schema, `jsonSchemaOf`) so that the zod schemas stay the one source: for each
 * record kind, a function of closures that answers the record as zod would output it when the record
 * certainly passes the contract, and `undefined` otherwise. `validateBatch` calls it first and calls zod
 * only for the records it does not accept, so every refusal still comes from zod, with zod's messages;
 * a batch of good records costs a few property reads and comparisons per field instead of a zod parse.
 *
 * The rules that the JSON Schema cannot carry (zod refinements) are written here once per kind
 * (`REFINED`), each as the zod schema words it; test/unit/events-fast-check.test.ts proves on valid
 * records and on every kind of bad record that the check accepts exactly what zod accepts and outputs
 * what zod outputs.
 *
 * It must never accept a record that zod refuses (a keyword of the JSON Schema that it does not know
 * makes the generation throw, never a looser check), and never build an error: refusing is zod's.
 */
import { jsonSchemaOf, type RecordKind, type RecordOf } from './contract';

type JsonSchema = Record<string, unknown>;
/** Answers the value as zod outputs it, or NO when it may be refused. */
type Check = (v: unknown) => unknown;
const NO = Symbol('refused');

const IGNORED = new Set(['description', 'title', '$schema', '$id']);

function known(schema: JsonSchema, keys: readonly string[], where: string): void {
  for (const k of Object.keys(schema)) {
    if (!IGNORED.has(k) && !keys.includes(k))
      throw new Error(`the fast check of ${where} does not know the JSON Schema keyword "${k}"`);
  }
}

function stringCheck(s: JsonSchema, where: string): Check {
  known(s, ['type', 'const', 'enum', 'minLength', 'maxLength', 'pattern', 'allOf'], where);
  const patterns: RegExp[] = [];
  const addPattern = (p: unknown) => patterns.push(new RegExp(p as string, 'u'));
  if (s.pattern !== undefined) addPattern(s.pattern);
  for (const part of (s.allOf as JsonSchema[] | undefined) ?? []) {
    known(part, ['pattern'], where);
    addPattern(part.pattern);
  }
  const min = (s.minLength as number | undefined) ?? 0;
  const max = (s.maxLength as number | undefined) ?? Infinity;
  const allowed = s.const !== undefined ? new Set([s.const]) : s.enum ? new Set(s.enum as unknown[]) : null;
  return (v) => {
    if (typeof v !== 'string') return NO;
    if (allowed !== null && !allowed.has(v)) return NO;
    // Code units, as zod counts them.
    if (v.length < min || v.length > max) return NO;
    for (const p of patterns) {
      p.lastIndex = 0;
      if (!p.test(v)) return NO;
    }
    return v;
  };
}

function numberCheck(s: JsonSchema, where: string): Check {
  known(s, ['type', 'minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum'], where);
  const integer = s.type === 'integer';
  const min = (s.minimum as number | undefined) ?? -Infinity;
  const max = (s.maximum as number | undefined) ?? Infinity;
  const xmin = (s.exclusiveMinimum as number | undefined) ?? -Infinity;
  const xmax = (s.exclusiveMaximum as number | undefined) ?? Infinity;
  return (v) => {
    if (typeof v !== 'number' || !Number.isFinite(v)) return NO;
    if (integer && !Number.isSafeInteger(v)) return NO;
    if (v < min || v > max || v <= xmin || v >= xmax) return NO;
    return v;
  };
}

function objectCheck(s: JsonSchema, where: string): Check {
  known(s, ['type', 'properties', 'required', 'additionalProperties'], where);
  if (s.additionalProperties !== false) throw new Error(`the fast check of ${where} needs a strict object`);
  const props = Object.entries(s.properties as Record<string, JsonSchema>);
  const required = new Set((s.required as string[] | undefined) ?? []);
  const fields = props.map(([name, p]) => ({
    name,
    required: required.has(name),
    check: checkOf(p, `${where}.${name}`),
  }));
  const names = new Set(fields.map((f) => f.name));
  return (v) => {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return NO;
    const r = v as Record<string, unknown>;
    let present = 0;
    const out: Record<string, unknown> = {};
    for (const f of fields) {
      if (!Object.hasOwn(r, f.name)) {
        if (f.required) return NO;
        continue;
      }
      const x = r[f.name];
      // zod reads an optional field holding undefined as absent: left to zod.
      if (x === undefined) return NO;
      const c = f.check(x);
      if (c === NO) return NO;
      out[f.name] = c;
      present++;
    }
    // Strict: no key but the contract's (own keys only, as JSON.parse and the Parquet reader make them).
    if (Object.getPrototypeOf(r) !== Object.prototype) return NO;
    const keys = Object.keys(r);
    if (keys.length !== present) return NO;
    for (const k of keys) if (!names.has(k)) return NO;
    return out;
  };
}

function checkOf(s: JsonSchema, where: string): Check {
  if (Array.isArray(s.anyOf)) {
    known(s, ['anyOf'], where);
    const options = s.anyOf as JsonSchema[];
    const others = options.filter((o) => o.type !== 'null');
    if (others.length !== 1 || options.length !== 2)
      throw new Error(`the fast check of ${where} knows only "T or null"`);
    const inner = checkOf(others[0]!, where);
    return (v) => (v === null ? null : inner(v));
  }
  switch (s.type) {
    case 'string':
      return stringCheck(s, where);
    case 'integer':
    case 'number':
      return numberCheck(s, where);
    case 'boolean':
      known(s, ['type'], where);
      return (v) => (typeof v === 'boolean' ? v : NO);
    case 'object':
      return objectCheck(s, where);
    default:
      throw new Error(`the fast check of ${where} does not know the type ${JSON.stringify(s.type)}`);
  }
}

/**
 * The refinements of the zod schemas, which their JSON Schema leaves out, as predicates of a record that
 * passed the rest: `Inference.superRefine` and its `inputRef` refine, `Upload.superRefine`.
 */
const REFINED: Record<RecordKind, (r: Record<string, unknown>) => boolean> = {
  inference: (r) => {
    const ref = r.inputRef as string | undefined;
    if (ref !== undefined && (ref.startsWith('/') || ref.split('/').includes('..'))) return false;
    if ((r.phase === 'shadow') !== (r.shadow !== undefined)) return false;
    if (r.phase !== 'canary' && r.arm === 'candidate') return false;
    if (r.phase !== 'production' && (r.rolloutId === undefined || r.rolloutId === null)) return false;
    return true;
  },
  label: () => true,
  outcome: () => true,
  upload: (r) =>
    (r.at as number) > (r.fromMs as number) &&
    (r.priority as number) <= (r.evaluated as number) &&
    (r.disagreements as number) <= (r.priority as number) &&
    (r.uploaded as number) <= (r.evaluated as number),
};

export type FastCheck<K extends RecordKind> = (input: unknown) => RecordOf<K> | undefined;

const cache = new Map<RecordKind, FastCheck<RecordKind>>();

/** The fast check of a kind: the record as zod outputs it when it certainly passes, else undefined. */
export function fastCheckOf<K extends RecordKind>(kind: K): FastCheck<K> {
  let f = cache.get(kind);
  if (!f) {
    const check = objectCheck(jsonSchemaOf(kind), kind);
    const refined = REFINED[kind];
    f = (input) => {
      const out = check(input);
      if (out === NO) return undefined;
      return refined(out as Record<string, unknown>) ? (out as RecordOf<RecordKind>) : undefined;
    };
    cache.set(kind, f);
  }
  return f as FastCheck<K>;
}

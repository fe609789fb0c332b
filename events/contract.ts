/**
 * The event contract `fleetgate/v1`: what fleets (vehicles, services, labelers) send to the ingestion
 * endpoint. Four record kinds, defined once here as zod schemas: an inference event (one model output
 * on one unit), a label record (the true class of an event, from a labeler), a service outcome (what
 * became of a served request) and an upload report (a unit's exact counters of one shadow window, beside
 * the events its upload filter kept). The JSON Schema of each kind and its Parquet columns are generated from
 * these schemas (`jsonSchemaOf`, `parquetColumnsOf`) and committed under events/schema/; docs/events.md
 * describes every field.
 *
 * Every record carries `schema: "fleetgate/v1"` itself (no batch envelope), so a line of NDJSON or a row
 * of Parquet means the same wherever it is copied to. `at` is the unit's own clock as integer epoch
 * milliseconds (UTC): one number that every language writes the same way and compares without parsing
 * a time zone, and the `ts_ms` of the fleet's event tables. Records are strict: an unknown field, NaN,
 * Infinity, a number out of range or an over-long string is refused with the field and the fix.
 *
 * Pure. It must never echo a unit, an event id, a request id, a labeler or an input reference in an
 * error (they may hold what a producer should not have sent, a raw vehicle id first), and never accept
 * in `unit` anything but the 20 lowercase hex characters of a keyed pseudonym.
 */
import { z } from 'zod';
import { MAX_NAME_CHARS, NO_CONTROL_CHARS, NOT_RESERVED } from '../policies/schema';
import { fastCheckOf } from './fast-check';

/** The contract's version: the `schema` field of every record. */
export const SCHEMA_VERSION = 'fleetgate/v1';
export const RECORD_KINDS = ['inference', 'label', 'outcome', 'upload'] as const;
export type RecordKind = (typeof RECORD_KINDS)[number];

/** Hex characters of a keyed pseudonym: HMAC-SHA256(fleet key, raw id), first 20 (sim/fleet.ts). */
export const PSEUDONYM_PATTERN = /^[0-9a-f]{20}$/;
/** Most characters of an event id or a request id. */
export const MAX_ID_CHARS = 128;
/** Most characters of an input reference (an object-store key). */
export const MAX_REF_CHARS = 1024;
/** The earliest and the first refused `at` (2000-01-01 and 2100-01-01, UTC, in epoch ms). */
export const MIN_AT_MS = Date.UTC(2000, 0, 1);
export const END_AT_MS = Date.UTC(2100, 0, 1);
/** Largest class index (a prediction or a label). */
export const MAX_CLASS = 65_535;
/** Largest latency (one day, in ms) and exposure (one vehicle-year, in hours) of one event. */
export const MAX_LATENCY_MS = 86_400_000;
export const MAX_EXPOSURE_HOURS = 8760;
/** Largest counter of an upload report (int32). */
export const MAX_COUNT = 2 ** 31 - 1;

/** Printable ASCII without spaces: ids and keys, safe in a URL, a log field and a file name. */
const PRINTABLE = /^[\x21-\x7e]+$/;

const ID_FIX = `1 to ${MAX_ID_CHARS} printable ASCII characters without spaces, unique per fleet, such as "01j9z3k8r2-000017"`;
const UNIT_FIX =
  "the unit's keyed pseudonym, never its raw id: the first 20 characters of the lowercase hex " +
  'HMAC-SHA256(fleet key, raw id)';
const AT_FIX = `the unit's own time as integer epoch milliseconds (UTC), from ${MIN_AT_MS} (2000-01-01) to before ${END_AT_MS} (2100-01-01)`;
const CLASS_FIX = `a class index: an integer from 0 to ${MAX_CLASS}`;
const CONFIDENCE_FIX = 'a finite number from 0 to 1';
const LATENCY_FIX = `a finite number of milliseconds from 0 to ${MAX_LATENCY_MS}`;
const DIGEST_FIX = 'the sha256 of the model, 64 lowercase hex characters';

const e = (message: string) => ({ error: message });

const SchemaField = z
  .literal(SCHEMA_VERSION, e(`the contract version: send "${SCHEMA_VERSION}"`))
  .describe(`The contract version, always "${SCHEMA_VERSION}"`);

const Id = (what: string) =>
  z
    .string(e(ID_FIX))
    .min(1, e(ID_FIX))
    .max(MAX_ID_CHARS, e(ID_FIX))
    .regex(PRINTABLE, e(ID_FIX))
    .describe(what);

const FLEET_FIX = `the fleet's name as in its manifest and in the URL: lowercase letters, digits, ".", "_" or "-", at most ${MAX_NAME_CHARS}`;
const FleetName = z
  .string(e(FLEET_FIX))
  .max(MAX_NAME_CHARS, e(FLEET_FIX))
  .regex(/^[a-z0-9][a-z0-9._-]*$/, e(FLEET_FIX))
  .describe("The fleet's name (its manifest's `name`); must equal the fleet of the URL");

const COHORT_FIX = `a cohort name of the fleet's manifest, such as "hw3/eu" (a service's gateway cohort, such as "web-eu"), at most ${MAX_NAME_CHARS} characters`;
/** The cohort rule of policies/schema.ts (fleet cohorts), which gateway cohort names also follow. */
const CohortName = z
  .string(e(COHORT_FIX))
  .max(MAX_NAME_CHARS, e(COHORT_FIX))
  .regex(/^[a-z0-9][a-z0-9._-]*(\/[a-z0-9][a-z0-9._-]*)*$/, e(COHORT_FIX))
  .regex(NOT_RESERVED, e('"constructor" is a reserved name; use the cohort\'s name in the manifest'))
  .describe('The cohort of the unit, as the fleet manifest (or the service manifest) names it');

const Digest = (what: string) =>
  z
    .string(e(DIGEST_FIX))
    .regex(/^[0-9a-f]{64}$/, e(DIGEST_FIX))
    .describe(what);
const ClassIndex = (what: string) =>
  z.int(e(CLASS_FIX)).min(0, e(CLASS_FIX)).max(MAX_CLASS, e(CLASS_FIX)).describe(what);
const Confidence = z
  .number(e(CONFIDENCE_FIX))
  .min(0, e(CONFIDENCE_FIX))
  .max(1, e(CONFIDENCE_FIX))
  .describe("The model's probability of the class it predicted, in [0, 1]");
const Latency = z
  .number(e(LATENCY_FIX))
  .min(0, e(LATENCY_FIX))
  .max(MAX_LATENCY_MS, e(LATENCY_FIX))
  .describe("The model's inference time on the unit, in milliseconds");
const At = z
  .int(e(AT_FIX))
  .min(MIN_AT_MS, e(AT_FIX))
  .max(END_AT_MS - 1, e(AT_FIX))
  .describe("The unit's own time of the record, integer epoch milliseconds (UTC)");

const ROLLOUT_FIX = 'the rollout id: letters, digits, ".", "_" or "-", at most 100; null outside a rollout';
const ROLLOUT_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;
const Unit = z.string(e(UNIT_FIX)).regex(PSEUDONYM_PATTERN, e(UNIT_FIX)).describe(UNIT_FIX);
const PHASE_FIX = 'one of "production" (no rollout), "shadow" or "canary"';
const ARM_FIX = 'one of "production" or "candidate": the arm whose model acted';
const TIER_FIX = 'the upload tier: lowercase letters, digits, ".", "_" or "-", at most 64, such as "sample"';
const P_FIX = 'the probability that this event was uploaded, in (0, 1]: the analysis weights it by 1/p';
const EXPOSURE_FIX = `a finite number of vehicle-hours from 0 to ${MAX_EXPOSURE_HOURS}`;
const REF_FIX = `an object-store key of 1 to ${MAX_REF_CHARS} printable ASCII characters, relative (no leading "/", no ".." part)`;
const LABELER_FIX = `who labeled: 1 to ${MAX_NAME_CHARS} characters, no control characters`;
const SHADOW_SAFETY_FIX =
  "true or false: whether the shadow model's output would have been a safety-critical event; leave it out when unknown";

export const Inference = z
  .strictObject({
    schema: SchemaField,
    eventId: Id('Chosen by the producer, unique per fleet: a second record with the same id is a duplicate'),
    fleet: FleetName,
    cohort: CohortName,
    unit: Unit,
    rolloutId: z
      .string(e(ROLLOUT_FIX))
      .regex(ROLLOUT_PATTERN, e(ROLLOUT_FIX))
      .nullable()
      .optional()
      .describe('The rollout the event belongs to; null or absent outside a rollout'),
    phase: z.enum(['production', 'shadow', 'canary'], e(PHASE_FIX)).describe(PHASE_FIX),
    arm: z.enum(['production', 'candidate'], e(ARM_FIX)).describe(ARM_FIX),
    modelDigest: Digest('The sha256 of the model that acted'),
    shadow: z
      .strictObject({
        digest: Digest('The sha256 of the model run in shadow'),
        prediction: ClassIndex("The shadow model's predicted class"),
        confidence: Confidence,
        latencyMs: Latency,
        safety: z
          .boolean(e(SHADOW_SAFETY_FIX))
          .optional()
          .describe(
            "Whether the shadow model's output would have been a safety-critical event (it missed a hazard " +
              'the unit saw); absent when unknown',
          ),
      })
      .optional()
      .describe('In phase "shadow" only, and required there: the output of the model that did not act'),
    prediction: ClassIndex("The acting model's predicted class"),
    confidence: Confidence,
    latencyMs: Latency,
    safety: z
      .boolean(e('true or false: whether this is a safety-critical event, such as a missed hazard'))
      .describe('A safety-critical event (a missed hazard, a takeover), known on the unit without a label'),
    exposureHours: z
      .number(e(EXPOSURE_FIX))
      .min(0, e(EXPOSURE_FIX))
      .max(MAX_EXPOSURE_HOURS, e(EXPOSURE_FIX))
      .describe('The vehicle-hours this event stands for'),
    upload: z
      .strictObject({
        tier: z
          .string(e(TIER_FIX))
          .max(64, e(TIER_FIX))
          .regex(/^[a-z0-9][a-z0-9._-]*$/, e(TIER_FIX))
          .describe("The unit's upload filter tier that kept this event"),
        inclusionProbability: z.number(e(P_FIX)).gt(0, e(P_FIX)).max(1, e(P_FIX)).describe(P_FIX),
      })
      .describe('How the event came to be uploaded, so the analysis can weight by 1/p'),
    inputRef: z
      .string(e(REF_FIX))
      .min(1, e(REF_FIX))
      .max(MAX_REF_CHARS, e(REF_FIX))
      .regex(PRINTABLE, e(REF_FIX))
      .refine((s) => !s.startsWith('/') && !s.split('/').includes('..'), e(REF_FIX))
      .optional()
      .describe('Object-store key of the stored input, for replay and labeling'),
    at: At,
  })
  .superRefine((r, ctx) => {
    if (r.phase === 'shadow' && r.shadow === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['shadow'],
        message: 'required in phase "shadow": add the output of the model that did not act',
      });
    }
    if (r.phase !== 'shadow' && r.shadow !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['shadow'],
        message: `only in phase "shadow": remove it, or send phase "shadow"`,
      });
    }
    if (r.phase !== 'canary' && r.arm === 'candidate') {
      ctx.addIssue({
        code: 'custom',
        path: ['arm'],
        message: `the candidate acts only in phase "canary": send arm "production" in phase "${r.phase}"`,
      });
    }
    if (r.phase !== 'production' && (r.rolloutId === undefined || r.rolloutId === null)) {
      ctx.addIssue({
        code: 'custom',
        path: ['rolloutId'],
        message: `required in phase "${r.phase}": send the id of the rollout`,
      });
    }
  })
  .describe(
    'An inference event: one output of the model that acted on one unit. Rules across fields: `shadow` is ' +
      'required in phase "shadow" and refused in the others; arm "candidate" only in phase "canary"; ' +
      '`rolloutId` required in phases "shadow" and "canary".',
  );
export type Inference = z.infer<typeof Inference>;

export const Label = z
  .strictObject({
    schema: SchemaField,
    eventId: Id('The id of the inference event labeled'),
    label: ClassIndex('The true class'),
    labeler: z
      .string(e(LABELER_FIX))
      .min(1, e(LABELER_FIX))
      .max(MAX_NAME_CHARS, e(LABELER_FIX))
      .regex(NO_CONTROL_CHARS, e(LABELER_FIX))
      .describe('Who labeled (a team, a vendor, a tool); one label per event and labeler'),
    at: At.describe('When the label was given, integer epoch milliseconds (UTC)'),
  })
  .describe('A label record: the true class of an inference event');
export type Label = z.infer<typeof Label>;

/** What became of a served request: `error` and `timeout` count as failed requests. */
export const OUTCOMES = ['ok', 'error', 'timeout'] as const;
const OUTCOME_FIX =
  'one of "ok" (the answer was used), "error" (the answer was an error or unusable) or "timeout" (no answer within the caller\'s deadline)';

export const Outcome = z
  .strictObject({
    schema: SchemaField,
    requestId: Id("The id of the served request (the gateway's request id)"),
    outcome: z.enum(OUTCOMES, e(OUTCOME_FIX)).describe(OUTCOME_FIX),
    at: At.describe("When the outcome was known, the caller's time, integer epoch milliseconds (UTC)"),
  })
  .describe('A service outcome: what became of one served request');
export type Outcome = z.infer<typeof Outcome>;

const UPLOAD_ROLLOUT_FIX =
  'the id of the rollout whose shadow ran: letters, digits, ".", "_" or "-", at most 100';
const COUNT_FIX = `a count of events: an integer from 0 to ${MAX_COUNT}`;
const Count = (what: string) =>
  z.int(e(COUNT_FIX)).min(0, e(COUNT_FIX)).max(MAX_COUNT, e(COUNT_FIX)).describe(what);

export const Upload = z
  .strictObject({
    schema: SchemaField,
    fleet: FleetName,
    cohort: CohortName,
    unit: Unit,
    rolloutId: z
      .string(e(UPLOAD_ROLLOUT_FIX))
      .regex(ROLLOUT_PATTERN, e(UPLOAD_ROLLOUT_FIX))
      .describe('The rollout whose shadow the unit ran in the window'),
    fromMs: At.describe("The window's start (included), the unit's time, integer epoch milliseconds (UTC)"),
    at: At.describe("The window's end (excluded), the unit's time, integer epoch milliseconds (UTC)"),
    evaluated: Count('Events of the window both models ran on, uploaded or not'),
    priority: Count(
      'Of the evaluated events, those that were priority (the models disagree, or the less confident is below the low-confidence threshold)',
    ),
    disagreements: Count('Of the priority events, those whose two models predicted different classes'),
    uploaded: Count('Of the evaluated events, those uploaded (after the upload budget)'),
    overBudget: z
      .boolean(
        e("true or false: whether the unit's would-be uploads in the window exceeded its upload budget"),
      )
      .describe("Whether the unit's would-be uploads in the window exceeded its upload budget"),
  })
  .superRefine((r, ctx) => {
    if (r.at <= r.fromMs) {
      ctx.addIssue({
        code: 'custom',
        path: ['at'],
        message:
          'must be after fromMs: the window is [fromMs, at), send its end in at and its start in fromMs',
      });
    }
    if (r.priority > r.evaluated) {
      ctx.addIssue({
        code: 'custom',
        path: ['priority'],
        message: 'at most evaluated: a priority event is one of the events both models ran on',
      });
    }
    if (r.disagreements > r.priority) {
      ctx.addIssue({
        code: 'custom',
        path: ['disagreements'],
        message: 'at most priority: every event the models disagree on is a priority event',
      });
    }
    if (r.uploaded > r.evaluated) {
      ctx.addIssue({
        code: 'custom',
        path: ['uploaded'],
        message: 'at most evaluated: only events both models ran on are uploaded',
      });
    }
  })
  .describe(
    "An upload report: a unit's exact counters of one shadow window [fromMs, at), for every event it ran, " +
      'uploaded or not. Rules across fields: `at` after `fromMs`; `priority` at most `evaluated`; ' +
      '`disagreements` at most `priority`; `uploaded` at most `evaluated`.',
  );
export type Upload = z.infer<typeof Upload>;

export const RECORD_SCHEMAS = {
  inference: Inference,
  label: Label,
  outcome: Outcome,
  upload: Upload,
} as const;
export type RecordOf<K extends RecordKind> = z.infer<(typeof RECORD_SCHEMAS)[K]>;

// ---- errors ---------------------------------------------------------------------------------------

/** One problem of a batch: where (1-based line of NDJSON or row of Parquet), which field, the fix. */
export interface Problem {
  line?: number;
  row?: number;
  field: string;
  message: string;
  /** The value received, only where it cannot carry an identifier (numbers, booleans, closed sets). */
  value?: unknown;
}

/** Fields whose values may be repeated in an error: numbers, booleans and closed vocabularies. */
const ECHOED = new Set(['schema', 'phase', 'arm', 'outcome']);

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let cur: unknown = input;
  for (const k of path) {
    if (cur === null || typeof cur !== 'object' || !Object.hasOwn(cur, k)) return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[k];
  }
  return cur;
}

function shownValue(field: string, value: unknown): unknown {
  if (typeof value === 'number') return Number.isFinite(value) ? value : String(value);
  if (typeof value === 'boolean' || value === null) return value;
  if (typeof value === 'bigint') return String(value);
  const last = field.split('.').pop() ?? '';
  if (typeof value === 'string' && ECHOED.has(last))
    return value.length <= 40 ? value : `${value.slice(0, 37)}...`;
  return undefined;
}

/** A key named in an error: JSON-quoted and cut, so an odd key cannot forge a line. */
function shownKey(k: string): string {
  const s = JSON.stringify(k.length <= 40 ? k : `${k.slice(0, 37)}...`);
  return s;
}

/** The problems of one record, each naming its field and the fix; values shown only per `shownValue`. */
export function problemsOf(error: z.ZodError, input: unknown): Problem[] {
  return error.issues.map((issue) => {
    const field = issue.path.map(String).join('.');
    if (issue.code === 'unrecognized_keys') {
      const keys = issue.keys.slice(0, 5).map(shownKey).join(', ') + (issue.keys.length > 5 ? ', ...' : '');
      return {
        field: field || '(record)',
        message: `unknown field(s) ${keys}: remove them (the contract is strict; see docs/events.md)`,
      };
    }
    if (field === '') {
      return {
        field: '(record)',
        message: 'each record must be a JSON object of the contract (docs/events.md)',
      };
    }
    const value = valueAt(input, issue.path as PropertyKey[]);
    const message =
      value === undefined && issue.code === 'invalid_type' ? `missing: send ${issue.message}` : issue.message;
    const p: Problem = { field, message };
    const shown = shownValue(field, value);
    if (shown !== undefined) p.value = shown;
    return p;
  });
}

export type Validated<K extends RecordKind> =
  { ok: true; records: RecordOf<K>[] } | { ok: false; problems: Problem[]; problemCount: number };

/**
 * The key that makes a record unique within its fleet: the event id of an inference event, the event id
 * and labeler of a label, the request id of an outcome, the unit, rollout and window start of an upload
 * report.
 */
export function recordKey(kind: RecordKind, r: Record<string, unknown>): string {
  if (kind === 'inference') return String(r.eventId);
  if (kind === 'label') return `${String(r.eventId)}\u0000${String(r.labeler)}`;
  if (kind === 'upload') return `${String(r.unit)}\u0000${String(r.rolloutId)}\u0000${String(r.fromMs)}`;
  return String(r.requestId);
}

/** Where each kind is sent: the path of the endpoint (docs/events.md). */
const PATH_OF: Record<RecordKind, string> = {
  inference: 'events',
  label: 'labels',
  outcome: 'outcomes',
  upload: 'uploads',
};

/** Most problems listed in one answer; the count says how many there were. */
export const MAX_PROBLEMS = 20;

/**
 * Validates a whole batch of one kind for one fleet. `where` names the position in errors ("line" for
 * NDJSON, "row" for Parquet), `positions[i]` the 1-based position of `raw[i]` (default i + 1). An
 * inference event or upload report of another fleet than the URL's is refused too, and so is a record whose key repeats
 * an earlier record of the batch with other values (the same record twice is a duplicate, for the
 * writer to count). All or nothing: one bad record and no record is returned.
 */
export function validateBatch<K extends RecordKind>(
  kind: K,
  fleet: string,
  raw: readonly unknown[],
  where: 'line' | 'row',
  positions?: readonly number[],
): Validated<K> {
  const schema = RECORD_SCHEMAS[kind] as unknown as z.ZodType<RecordOf<K>>;
  const records: RecordOf<K>[] = [];
  const problems: Problem[] = [];
  let problemCount = 0;
  const add = (i: number, list: Problem[]) => {
    problemCount += list.length;
    for (const p of list)
      if (problems.length < MAX_PROBLEMS) problems.push({ [where]: positions?.[i] ?? i + 1, ...p });
  };
  // The first record of each key, stringified only when its key comes again.
  const firsts = new Map<string, { i: number; data: unknown }>();
  // The fast check (events/fast-check.ts) accepts most records; zod parses the others, and words every refusal.
  const fast = fastCheckOf(kind);
  raw.forEach((input, i) => {
    let data = fast(input);
    if (data === undefined) {
      const r = schema.safeParse(input);
      if (!r.success) return add(i, problemsOf(r.error, input));
      data = r.data;
    }
    if ((kind === 'inference' || kind === 'upload') && (data as { fleet: string }).fleet !== fleet) {
      return add(i, [
        {
          field: 'fleet',
          message: `differs from the fleet of the URL: send each fleet's ${kind === 'upload' ? 'upload reports' : 'events'} to /v1/${PATH_OF[kind]}/{its fleet}`,
        },
      ]);
    }
    const key = recordKey(kind, data);
    const first = firsts.get(key);
    if (first === undefined) firsts.set(key, { i, data });
    else if (JSON.stringify(first.data) !== JSON.stringify(data)) {
      const at = `${where} ${positions?.[first.i] ?? first.i + 1}`;
      if (kind === 'upload') {
        return add(i, [
          {
            field: 'fromMs',
            message: `repeats the unit, rolloutId and fromMs of ${at} with other values: send one report per unit and window`,
          },
        ]);
      }
      const field = kind === 'outcome' ? 'requestId' : 'eventId';
      return add(i, [
        {
          field,
          message: `repeats the ${field} of ${at} with other values: give each record its own id`,
        },
      ]);
    }
    records.push(data);
  });
  return problemCount === 0 ? { ok: true, records } : { ok: false, problems, problemCount };
}

// ---- generated schemas ----------------------------------------------------------------------------

const TITLES: Record<RecordKind, string> = {
  inference: 'fleetgate inference event',
  label: 'fleetgate label record',
  outcome: 'fleetgate service outcome',
  upload: 'fleetgate upload report',
};

type JsonSchema = Record<string, unknown>;

/** The JSON Schema (draft 2020-12) of one record kind, generated from its zod schema. */
export function jsonSchemaOf(kind: RecordKind): JsonSchema {
  const schema = z.toJSONSchema(RECORD_SCHEMAS[kind], { io: 'input', unrepresentable: 'any' }) as JsonSchema;
  return {
    $schema: schema.$schema,
    $id: `https://fleetgate.dev/schemas/events/${kind}.schema.json`,
    title: `${TITLES[kind]} (${SCHEMA_VERSION})`,
    ...Object.fromEntries(Object.entries(schema).filter(([k]) => k !== '$schema')),
  };
}

/** DuckDB (and Parquet) column types of the contract. */
export type ColumnType = 'VARCHAR' | 'BOOLEAN' | 'INTEGER' | 'BIGINT' | 'DOUBLE';

/** One Parquet column of a record kind: its name, type, whether it may be null, and its record field. */
export interface ParquetColumn {
  name: string;
  type: ColumnType;
  nullable: boolean;
  /** The field of the record it holds, e.g. ["shadow", "confidence"]. */
  field: string[];
}

const snake = (s: string) => s.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
const INT32_MAX = 2 ** 31 - 1;

function columnType(prop: JsonSchema, where: string): { type: ColumnType; nullable: boolean } {
  if (Array.isArray(prop.anyOf)) {
    const options = prop.anyOf as JsonSchema[];
    const others = options.filter((o) => o.type !== 'null');
    if (others.length !== 1) throw new Error(`the contract field ${where} has no single column type`);
    return { type: columnType(others[0]!, where).type, nullable: others.length < options.length };
  }
  const types = (Array.isArray(prop.type) ? prop.type : [prop.type]) as string[];
  const nullable = types.includes('null');
  const t = types.filter((x) => x !== 'null');
  if (t.length !== 1) throw new Error(`the contract field ${where} has no single column type`);
  switch (t[0]) {
    case 'string':
      return { type: 'VARCHAR', nullable };
    case 'boolean':
      return { type: 'BOOLEAN', nullable };
    case 'number':
      return { type: 'DOUBLE', nullable };
    case 'integer':
      return {
        type: typeof prop.maximum === 'number' && prop.maximum <= INT32_MAX ? 'INTEGER' : 'BIGINT',
        nullable,
      };
    default:
      throw new Error(`the contract field ${where} has no column type`);
  }
}

function flatten(schema: JsonSchema, prefix: string[], optional: boolean, out: ParquetColumn[]): void {
  const props = schema.properties as Record<string, JsonSchema>;
  const required = new Set((schema.required as string[] | undefined) ?? []);
  for (const [key, prop] of Object.entries(props)) {
    const field = [...prefix, key];
    const opt = optional || !required.has(key);
    if (prop.type === 'object') {
      flatten(prop, field, opt, out);
      continue;
    }
    const { type, nullable } = columnType(prop, field.join('.'));
    out.push({ name: field.map(snake).join('_'), type, nullable: nullable || opt, field });
  }
}

/**
 * The Parquet columns of a record kind, from its JSON Schema: nested objects flattened with "_", names
 * in snake_case (`shadow.latencyMs` is `shadow_latency_ms`), an integer bounded within int32 an
 * INTEGER and any other a BIGINT. The writer's tables have these columns, and a Parquet batch must
 * have exactly these (the nullable ones may be left out).
 */
export function parquetColumnsOf(kind: RecordKind): readonly ParquetColumn[] {
  let cols = columnCache.get(kind);
  if (!cols) {
    const out: ParquetColumn[] = [];
    flatten(jsonSchemaOf(kind), [], false, out);
    cols = Object.freeze(out.map((c) => Object.freeze(c)));
    columnCache.set(kind, cols);
  }
  return cols;
}
const columnCache = new Map<RecordKind, readonly ParquetColumn[]>();

/** The committed form of `parquetColumnsOf`: the file events/schema/<kind>.parquet.json. */
export function parquetSchemaOf(kind: RecordKind): {
  schema: string;
  kind: RecordKind;
  columns: readonly ParquetColumn[];
} {
  return { schema: SCHEMA_VERSION, kind, columns: parquetColumnsOf(kind) };
}

/** A record from a Parquet row: its columns back into fields; a null or absent column is an absent field. */
export function recordFromColumns(kind: RecordKind, row: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const col of parquetColumnsOf(kind)) {
    if (!Object.hasOwn(row, col.name)) continue;
    let v = row[col.name];
    if (v === null || v === undefined) continue;
    if (typeof v === 'bigint') v = Number(v);
    let target = out;
    for (const k of col.field.slice(0, -1)) {
      if (!Object.hasOwn(target, k)) target[k] = {};
      target = target[k] as Record<string, unknown>;
    }
    target[col.field[col.field.length - 1]!] = v;
  }
  return out;
}

/**
 * The records of a Parquet result read by columns (`columns[c][row]` of the column named `names[c]`),
 * each the record that `recordFromColumns` makes of its row, without a row object in between.
 */
export function recordsFromColumns(
  kind: RecordKind,
  names: readonly string[],
  columns: readonly (readonly unknown[])[],
): Record<string, unknown>[] {
  const index = new Map<string, number>();
  names.forEach((n, i) => index.set(n, i));
  const cols = parquetColumnsOf(kind).flatMap((col) => {
    const i = index.get(col.name);
    return i === undefined ? [] : [{ values: columns[i]!, field: col.field }];
  });
  const n = columns[0]?.length ?? 0;
  const out: Record<string, unknown>[] = new Array(n);
  for (let row = 0; row < n; row++) {
    const record: Record<string, unknown> = {};
    for (const { values, field } of cols) {
      let v = values[row];
      if (v === null || v === undefined) continue;
      if (typeof v === 'bigint') v = Number(v);
      let target = record;
      for (let d = 0; d < field.length - 1; d++) {
        const k = field[d]!;
        if (!Object.hasOwn(target, k)) target[k] = {};
        target = target[k] as Record<string, unknown>;
      }
      target[field[field.length - 1]!] = v;
    }
    out[row] = record;
  }
  return out;
}

/**
 * The SQL fast path of a Parquet batch of inference events: one DuckDB query over read_parquet checks
 * every rule of the contract (events/contract.ts) on every row, and when no row fails, the writer
 * stages the rows straight from the file (`SqlBatch.select`) instead of reading them into JavaScript
 * records, validating them there and appending them value by value. A batch of valid events is the
 * common case; everything else goes the JavaScript way (events/parse.ts `parquetRecords`, then
 * `validateBatch`), which words every refusal.
 *
 * The check is written here by hand, rule by rule after the zod schema, and must be AT LEAST AS STRICT
 * as zod: it may send a valid batch to the JavaScript path, never accept one that zod refuses. So it
 * also leaves to that path: a column whose Parquet type is not exactly the contract's, a missing
 * required column, any unknown column, any key repeated within the batch (zod's verdict depends on the
 * values of the copies), a contract whose columns differ from the ones written here, and any error of
 * the query. Lengths are counted in UTF-8 bytes (`strlen`), never fewer than the UTF-16 units zod counts.
 * test/unit/events-sql-check.test.ts proves it against validateBatch on thousands of bad rows.
 *
 * It must never accept a row zod refuses, never build a refusal (refusing is zod's), and never put a
 * record, a value or a file path in an error or a log.
 */
import type { DuckDBConnection } from '@duckdb/node-api';
import {
  END_AT_MS,
  MAX_CLASS,
  MAX_EXPOSURE_HOURS,
  MAX_ID_CHARS,
  MAX_LATENCY_MS,
  MAX_REF_CHARS,
  MIN_AT_MS,
  parquetColumnsOf,
  SCHEMA_VERSION,
  type RecordKind,
} from './contract';
import { sqlString } from './partitions';
import { MAX_NAME_CHARS } from '../policies/schema';

/** A batch that passed the SQL check: what the writer needs to stage and answer it. */
export interface SqlBatch {
  /** A SELECT of the table's columns but `ingested_at_ms`, in table order, over the batch's file. */
  select: string;
  /** How many rows (no key repeats: each is staged). */
  records: number;
  /** The distinct cohorts, in order of first appearance. */
  cohorts: string[];
  /** The distinct non-null rollout ids, for the writer's unknown-rollout check. */
  rolloutIds: string[];
  /** The batch's temporary file, which an error must never show. */
  file: string;
}

const num = (x: string, lo: number, hi: number) => `(isfinite(${x}) AND ${x} >= ${lo} AND ${x} <= ${hi})`;
const int = (x: string, lo: number, hi: number) => `(${x} >= ${lo} AND ${x} <= ${hi})`;
const re = (x: string, pattern: string) => `regexp_full_match(${x}, ${sqlString(pattern)})`;
const len = (x: string, lo: number, hi: number) => `(strlen(${x}) >= ${lo} AND strlen(${x}) <= ${hi})`;
const PRINTABLE = '[!-~]+';
const NAME = '[a-z0-9][a-z0-9._-]*';
const DIGEST = '[0-9a-f]{64}';
const SHADOW = [
  'shadow_digest',
  'shadow_prediction',
  'shadow_confidence',
  'shadow_latency_ms',
  'shadow_safety',
];

/**
 * Each inference column's rule on its value `c` (quoted column), where it is not null; a column absent
 * from `NULLABLE` must not be null. Every column of the contract has a rule, else no fast path.
 */
const INFERENCE: Record<string, (c: string) => string> = {
  schema: (c) => `${c} = ${sqlString(SCHEMA_VERSION)}`,
  event_id: (c) => `(${len(c, 1, MAX_ID_CHARS)} AND ${re(c, PRINTABLE)})`,
  fleet: (c) => `(${c} = $fleet AND ${len(c, 1, MAX_NAME_CHARS)} AND ${re(c, NAME)})`,
  cohort: (c) =>
    `(${len(c, 1, MAX_NAME_CHARS)} AND ${re(c, `${NAME}(/${NAME})*`)} AND ${c} <> 'constructor')`,
  unit: (c) => re(c, '[0-9a-f]{20}'),
  rollout_id: (c) => re(c, '[A-Za-z0-9][A-Za-z0-9._-]{0,99}'),
  phase: (c) => `${c} IN ('production', 'shadow', 'canary')`,
  arm: (c) => `${c} IN ('production', 'candidate')`,
  model_digest: (c) => re(c, DIGEST),
  shadow_digest: (c) => re(c, DIGEST),
  shadow_prediction: (c) => int(c, 0, MAX_CLASS),
  shadow_confidence: (c) => num(c, 0, 1),
  shadow_latency_ms: (c) => num(c, 0, MAX_LATENCY_MS),
  shadow_safety: () => 'true',
  prediction: (c) => int(c, 0, MAX_CLASS),
  confidence: (c) => num(c, 0, 1),
  latency_ms: (c) => num(c, 0, MAX_LATENCY_MS),
  safety: () => 'true',
  exposure_hours: (c) => num(c, 0, MAX_EXPOSURE_HOURS),
  upload_tier: (c) => `(${len(c, 1, 64)} AND ${re(c, NAME)})`,
  upload_inclusion_probability: (c) => `(isfinite(${c}) AND ${c} > 0 AND ${c} <= 1)`,
  input_ref: (c) =>
    `(${len(c, 1, MAX_REF_CHARS)} AND ${re(c, PRINTABLE)} AND NOT starts_with(${c}, '/') AND NOT regexp_matches(${c}, '(^|/)\\.\\.(/|$)'))`,
  at: (c) => int(c, MIN_AT_MS, END_AT_MS - 1),
};
/** Columns that may be null (absent fields); the shadow ones only all together (`ROW_RULES`). */
const NULLABLE = new Set(['rollout_id', ...SHADOW, 'input_ref']);

/** The rules across fields (zod's superRefine), on the row's columns. */
const ROW_RULES = [
  // `shadow` exactly in phase "shadow", and then with every required field of it.
  `(CASE WHEN "phase" = 'shadow'
     THEN "shadow_digest" IS NOT NULL AND "shadow_prediction" IS NOT NULL AND "shadow_confidence" IS NOT NULL AND "shadow_latency_ms" IS NOT NULL
     ELSE ${SHADOW.map((c) => `"${c}" IS NULL`).join(' AND ')} END)`,
  `("arm" <> 'candidate' OR "phase" = 'canary')`,
  `("phase" = 'production' OR "rollout_id" IS NOT NULL)`,
];

/** Whether the contract's columns of `kind` are exactly those this check is written for. */
function supported(kind: RecordKind): boolean {
  if (kind !== 'inference') return false;
  const cols = parquetColumnsOf(kind);
  return (
    cols.length === Object.keys(INFERENCE).length &&
    cols.every((c) => Object.hasOwn(INFERENCE, c.name) && c.nullable === NULLABLE.has(c.name))
  );
}

/**
 * The SELECT of each row's verdict over `read_parquet($f)` (`file_row_number`, `ok`), given the file's
 * columns and their DuckDB types; undefined when the file's columns leave the batch to the JavaScript
 * path (a type other than the contract's, an unknown column, a required column missing).
 */
export function rowCheckSql(kind: RecordKind, described: ReadonlyMap<string, string>): string | undefined {
  if (!supported(kind)) return undefined;
  const cols = parquetColumnsOf(kind);
  const names = new Set(cols.map((c) => c.name));
  for (const name of described.keys()) if (!names.has(name)) return undefined;
  const projected: string[] = [];
  const rules: string[] = [];
  for (const c of cols) {
    const type = described.get(c.name);
    if (type === undefined) {
      if (!c.nullable) return undefined;
      projected.push(`NULL::${c.type} AS "${c.name}"`);
    } else {
      if (type !== c.type) return undefined;
      projected.push(`"${c.name}"`);
    }
    const q = `"${c.name}"`;
    rules.push(
      c.nullable
        ? `(${q} IS NULL OR ${INFERENCE[c.name]!(q)})`
        : `(${q} IS NOT NULL AND ${INFERENCE[c.name]!(q)})`,
    );
  }
  rules.push(...ROW_RULES);
  return `SELECT file_row_number, coalesce(${rules.join('\n AND ')}, false) AS ok, "event_id", "cohort", "rollout_id"
    FROM (SELECT file_row_number, ${projected.join(', ')} FROM read_parquet($f, file_row_number = true))`;
}

/** The table's columns of `kind` but `ingested_at_ms`, selected from the file (absent nullable ones as NULL). */
function stageSelect(kind: RecordKind, file: string, described: ReadonlyMap<string, string>): string {
  const cols = parquetColumnsOf(kind).map((c) =>
    described.has(c.name) ? `"${c.name}"` : `NULL::${c.type} AS "${c.name}"`,
  );
  return `SELECT ${cols.join(', ')} FROM read_parquet(${sqlString(file)})`;
}

/**
 * Checks a Parquet batch of `kind` for `fleet` in SQL on `conn`: a `SqlBatch` when every row passes,
 * undefined when the batch is left to the JavaScript path (a row fails, a key repeats, the columns do
 * not fit, or the query fails for any reason).
 */
export async function sqlCheck(
  conn: DuckDBConnection,
  kind: RecordKind,
  fleet: string,
  file: string,
  described: ReadonlyMap<string, string>,
): Promise<SqlBatch | undefined> {
  const rows = rowCheckSql(kind, described);
  if (rows === undefined) return undefined;
  try {
    const verdict = (
      await conn.runAndReadAll(
        `WITH r AS MATERIALIZED (${rows})
         SELECT count(*)::BIGINT AS n, count(*) FILTER (WHERE NOT ok)::BIGINT AS bad,
           count(DISTINCT "event_id")::BIGINT AS keys FROM r`,
        { f: file, fleet },
      )
    ).getRowObjectsJS()[0]!;
    const n = Number(verdict.n);
    if (n === 0 || Number(verdict.bad) !== 0 || Number(verdict.keys) !== n) return undefined;
    const cohorts = (
      await conn.runAndReadAll(
        `SELECT "cohort" FROM read_parquet($f, file_row_number = true)
         GROUP BY "cohort" ORDER BY min(file_row_number)`,
        { f: file },
      )
    )
      .getRowObjectsJS()
      .map((r) => String(r.cohort));
    const rolloutIds = described.has('rollout_id')
      ? (
          await conn.runAndReadAll(
            `SELECT DISTINCT "rollout_id" FROM read_parquet($f) WHERE "rollout_id" IS NOT NULL`,
            { f: file },
          )
        )
          .getRowObjectsJS()
          .map((r) => String(r.rollout_id))
      : [];
    return { select: stageSelect(kind, file, described), records: n, cohorts, rolloutIds, file };
  } catch {
    return undefined;
  }
}

/**
 * zod schemas of every input fleetgate accepts, and the types inferred from them.
 *
 * The policy (YAML or JSON), the rollout request (the workflow's input), the fleet manifest and the
 * model manifest are all validated here before anything runs. Errors name the path, the value and
 * what is allowed (see `formatIssues`). Pure: imported by workflows, activities and the CLI.
 */
import { z } from 'zod';
import {
  DURATION_LIMITS,
  DURATION_PATTERN,
  formatDuration,
  parseDuration,
  type DurationLimit,
} from './duration';
import { DriftPolicy } from './drift-schema';

/** Most windows a shadow is split into for its budget checks (each is an activity and a look). */
export const MAX_SHADOW_WINDOWS = 100;

export const Duration = z
  .union([
    z.string().regex(DURATION_PATTERN, { message: 'a duration such as "250ms", "10s", "5m", "6h" or "2d"' }),
    z.number().nonnegative(),
  ])
  .describe('A duration: "250ms", "10s", "5m", "6h", "2d", or milliseconds as a number');

const Name = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._-]*$/, { message: 'lowercase letters, digits, ".", "_" or "-"' });
/**
 * The one name the cohort pattern allows that every JavaScript object answers to (Object.prototype's
 * `constructor`): refused, so that no lookup of a cohort by name, anywhere, can find what an object
 * inherits.
 */
export const NOT_RESERVED = /^(?!constructor$)/;
export const RESERVED_COHORT = { message: '"constructor" is a reserved name; choose another cohort name' };
const CohortName = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._-]*(\/[a-z0-9][a-z0-9._-]*)*$/, { message: 'a cohort name such as "hw3/eu"' })
  .regex(NOT_RESERVED, RESERVED_COHORT);

/** Most characters of a name: the policy's, a gate's, a reviewer's, a cohort's, who starts or asks. */
export const MAX_NAME_CHARS = 128;
/** Most characters of a free text: an update's reason or comment. */
export const MAX_TEXT_CHARS = 2000;
/** Most reviewers a policy may name. */
export const MAX_REVIEWERS = 100;
/**
 * No control characters (newlines, escapes) and no bidirectional overrides or isolates (which reorder
 * the text shown around them) in a name: it is printed in logs, tables and notifications.
 */
export const NO_CONTROL_CHARS = /^[^\p{Cc}\u202A-\u202E\u2066-\u2069]*$/u;

const LONG_NAME = { message: `at most ${MAX_NAME_CHARS} characters` };
/** Names written in a policy (its own, gates, reviewers): a Name of bounded length. */
const PolicyName = Name.max(MAX_NAME_CHARS, LONG_NAME);
const PolicyCohortName = CohortName.max(MAX_NAME_CHARS, LONG_NAME);

/**
 * A policy duration within DURATION_LIMITS[limit]: above 0 and at most its maximum. `zero` replaces the
 * message for 0 where 0 has a meaning of its own (leave the field out instead).
 */
function boundedDuration(limit: DurationLimit, zero?: string) {
  const { what, max } = DURATION_LIMITS[limit];
  const maxMs = parseDuration(max)!;
  return Duration.superRefine((v, ctx) => {
    const ms = parseDuration(v);
    if (ms === undefined) return;
    if (ms <= 0) {
      ctx.addIssue({
        code: 'custom',
        message: zero ?? `${what} of 0 cannot work: give a duration above 0 and at most ${max}, such as "6h"`,
      });
    } else if (ms > maxMs) {
      ctx.addIssue({
        code: 'custom',
        message: `${what} may last at most ${max}: shorten it (the limits are in docs/operations.md, "Limits")`,
      });
    }
  });
}

export const Approval = z
  .object({
    gate: PolicyName.describe('Name of the gate, as reviewers give it to `fleetgate approve --gate`'),
    required: z
      .number()
      .int()
      .min(1)
      .default(1)
      .describe('How many different reviewers must approve; at most the reviewers who may approve it'),
    timeout: boundedDuration('gateTimeout')
      .default('24h')
      .describe("Without enough approvals by then, the gate's cohorts are held: compensated, never promoted"),
    excludeInitiator: z
      .boolean()
      .default(false)
      .describe("The rollout's initiator (requestedBy) may not approve this gate, even when a reviewer"),
  })
  .strict();

export const Wave = z
  .object({
    percent: z.number().gt(0).max(100).describe('Share of each cohort that runs the candidate in this wave'),
    hold: boundedDuration('hold').describe('Minimum time the wave is held before the next wave'),
    looks: z.number().int().min(1).max(50).default(2).describe('Analyses during the hold, evenly spaced'),
    approval: Approval.optional().describe('A reviewer gate before this wave is delivered'),
    minExposure: z
      .number()
      .positive()
      .optional()
      .describe(
        "Vehicle-hours each cohort's candidate arm must have driven (over the canary so far) before the " +
          'wave ends; the wave is extended by up to analysis.maxExtraLooks looks, then a cohort still short is held',
      ),
  })
  .strict();

/** The kind each metric must be declared with. */
export const METRIC_KINDS = {
  error_rate: 'binary',
  latency_ms: 'continuous',
  safety_events: 'rate',
  request_error_rate: 'binary',
  latency_p95: 'binary',
  latency_p99: 'binary',
} as const;

/** The tail-latency metrics and the quantile q each one tests. */
export const TAIL_QUANTILES = { latency_p95: 0.95, latency_p99: 0.99 } as const;

export const Metric = z
  .object({
    name: z
      .enum(['error_rate', 'latency_ms', 'safety_events', 'request_error_rate', 'latency_p95', 'latency_p99'])
      .describe(
        'error_rate: share of labeled events misclassified; latency_ms: inference latency; ' +
          'safety_events: safety-critical misses per vehicle-hour, known without labels. Services, known ' +
          'without labels: request_error_rate: share of requests that failed (failed over all requests ' +
          "of the arm); latency_p95 / latency_p99: tail latency, tested as the share of each arm's " +
          "requests slower than production's p95 (p99) over the cohort's canary so far: a difference of " +
          'proportions, candidate minus production (production near 0.05 / 0.01). The threshold is ' +
          "production's quantile re-estimated at each look (DuckDB quantile_cont over its requests that " +
          'did not fail) and taken as known in the variance: right (asymptotically) when the tails are ' +
          'equal, approximate otherwise, and rough while production has under ~100 requests above it ' +
          "(see policies/engine.ts). Each arm's own quantile in ms is reported beside the test",
      ),
    kind: z
      .enum(['binary', 'continuous', 'rate'])
      .describe(
        'binary for error_rate, request_error_rate, latency_p95 and latency_p99; continuous for ' +
          'latency_ms; rate for safety_events',
      ),
    role: z
      .enum(['guardrail', 'success'])
      .default('guardrail')
      .describe(
        'guardrail: harm rolls back and promotion needs non-inferiority; success: tested for improvement ' +
          'only once every guardrail is non-inferior',
      ),
    scale: z
      .enum(['linear', 'log'])
      .default('linear')
      .describe(
        'latency_ms only. log: compare geometric means, for skewed latency; margin and harmThreshold ' +
          'are then relative (0.1 = 10% slower)',
      ),
    margin: z
      .number()
      .nonnegative()
      .describe(
        'Largest harm (candidate minus production) still accepted as non-inferior; relative for ' +
          'safety_events (0.2: a rate ratio up to 1.2) and for log-scale latency; absolute shares for ' +
          'error_rate and request_error_rate (0.01 = one point) and for latency_p95 / latency_p99 (p99 ' +
          "with 0.01: at most 2% of the candidate's requests slower than production's p99)",
      ),
    harmThreshold: z
      .number()
      .nonnegative()
      .default(0)
      .describe('Harm is declared when the confidence sequence lies wholly above this (0: any proven harm)'),
  })
  .strict()
  .superRefine((m, ctx) => {
    const kind = METRIC_KINDS[m.name];
    if (m.kind !== kind) {
      ctx.addIssue({
        code: 'custom',
        path: ['kind'],
        message: `metric "${m.name}" is of kind "${kind}"; write kind: ${kind}`,
      });
    }
    if (m.scale === 'log' && m.name !== 'latency_ms') {
      ctx.addIssue({
        code: 'custom',
        path: ['scale'],
        message: `scale "log" applies to latency_ms only; remove it from "${m.name}"`,
      });
    }
  });

const BUDGET_FIX = {
  message: 'a whole number of labels per simulated day, at least 1; leave it out for no budget',
};
const NOISE_FIX = { message: 'a share in [0, 0.5]: 0 for a labeler that is always right' };

const PolicyObject = z
  .object({
    apiVersion: z.literal('fleetgate/v1'),
    kind: z.literal('RolloutPolicy'),
    name: PolicyName,
    cohorts: z
      .array(PolicyCohortName)
      .min(1)
      .optional()
      .describe('Cohorts in scope; all cohorts of the fleet when absent'),
    reviewers: z
      .array(PolicyName)
      .max(MAX_REVIEWERS, { message: `at most ${MAX_REVIEWERS} reviewers` })
      .default([])
      .describe('Who may approve gates'),
    bench: z
      .object({
        goldenInputs: z.number().int().min(8).max(100_000).default(256),
        repeats: z.number().int().min(2).max(20).default(3),
      })
      .strict()
      .default({ goldenInputs: 256, repeats: 3 }),
    shadow: z
      .object({
        share: z.number().gt(0).max(1).describe('Share of each cohort that runs the candidate in shadow'),
        duration: boundedDuration('shadow'),
        maxDisagreement: z
          .number()
          .min(0)
          .max(1)
          .describe('Highest share of events where the two models may disagree'),
        maxLatencyRatio: z
          .number()
          .gt(0)
          .default(1.5)
          .describe('Highest candidate/production mean latency ratio'),
        minEvents: z.number().int().min(1).default(200),
        sample: z
          .number()
          .gt(0)
          .max(1)
          .default(1)
          .describe(
            'Share of ordinary events a shadow vehicle uploads; every disagreement and low-confidence event ' +
              'is uploaded. The analysis weights each upload by its inverse probability',
          ),
        lowConfidence: z
          .number()
          .gt(0)
          .lt(1)
          .default(0.6)
          .describe('An event whose less confident model is below this is always uploaded'),
        checkEvery: boundedDuration('checkEvery')
          .optional()
          .describe('How often the shadow checks its budgets; a quarter of `duration` when absent'),
        uploadBudget: z
          .object({
            perVehiclePerDay: z
              .number()
              .int()
              .min(1)
              .describe('Most events one vehicle uploads per day; a capped vehicle sends a uniform subset'),
            maxOverBudgetShare: z
              .number()
              .min(0)
              .max(1)
              .default(0.05)
              .describe(
                'Shadow stops in a cohort, rejected, when more than this share of its shadow vehicles hit ' +
                  'their budget: the candidate makes too many disagreements or uncertain outputs to shadow',
              ),
            perCohort: z
              .number()
              .int()
              .min(1)
              .optional()
              .describe(
                "A cohort's shadow stops collecting, and is judged on what it has, at this many uploads",
              ),
          })
          .strict()
          .optional(),
        classGates: z
          .object({
            maxRecallDrop: z
              .number()
              .min(0)
              .max(1)
              .default(0.05)
              .describe(
                "Largest drop of any class's recall, candidate against production, on labeled events",
              ),
            maxPrecisionDrop: z
              .number()
              .min(0)
              .max(1)
              .default(0.05)
              .describe("Largest drop of any class's precision"),
            minLabeled: z
              .number()
              .int()
              .min(1)
              .default(30)
              .describe(
                'Labeled events of a class (its true or predicted class) below which its gate is not judged',
              ),
          })
          .strict()
          .optional()
          .describe('Gates on per-class recall and precision deltas, per cohort; absent: not gated'),
      })
      .strict()
      .superRefine((sh, ctx) => {
        if (sh.checkEvery === undefined) return;
        const total = parseDuration(sh.duration);
        const step = parseDuration(sh.checkEvery);
        if (total === undefined || step === undefined || step <= 0) return;
        const windows = Math.ceil(total / step);
        if (windows > MAX_SHADOW_WINDOWS) {
          ctx.addIssue({
            code: 'custom',
            path: ['checkEvery'],
            message:
              `checkEvery "${sh.checkEvery}" splits the ${sh.duration} shadow into ${windows} windows; ` +
              `at most ${MAX_SHADOW_WINDOWS}: use at least ${Math.ceil(total / MAX_SHADOW_WINDOWS)} ms`,
          });
        }
      }),
    waves: z
      .array(Wave)
      .min(1)
      .superRefine((waves, ctx) => {
        waves.forEach((w, i) => {
          if (i > 0 && w.percent <= waves[i - 1]!.percent) {
            ctx.addIssue({
              code: 'custom',
              path: [i, 'percent'],
              message: `waves must grow: ${w.percent} is not above the previous wave's ${waves[i - 1]!.percent}`,
            });
          }
        });
      }),
    delivery: z
      .object({
        maxFailureShare: z
          .number()
          .min(0)
          .max(1)
          .default(0.1)
          .describe(
            "A wave whose installs fail on more than this share of a cohort's targeted vehicles is aborted " +
              'and reverted in that cohort; the other cohorts go on',
          ),
      })
      .strict()
      .default({ maxFailureShare: 0.1 }),
    promotion: z
      .object({
        approval: Approval.optional().describe(
          'A reviewer gate before the final promotion, showing the cohorts about to be promoted and their ' +
            'evidence; unanswered by its timeout, they are held; rejected, the rollout is rejected',
        ),
      })
      .strict()
      .optional(),
    labelWait: z
      .object({
        coverage: z
          .number()
          .gt(0)
          .max(1)
          .describe(
            "Share of each active cohort's counted label requests (see maturity) whose labels must have " +
              'arrived before the final analysis',
          ),
        poll: boundedDuration('poll').default('1h'),
        timeout: boundedDuration('labelTimeout').describe(
          'After this, cohorts still below the coverage are held (their waves withdrawn, never promoted); ' +
            'the others go on to the analysis',
        ),
        maturity: boundedDuration(
          'maturity',
          'leave maturity out for 0 (every request counts at once); otherwise give a duration above 0',
        )
          .optional()
          .describe(
            'How long after its request (for events requested as they are logged: after the event) a label ' +
              'can be expected. A request younger than this at a look counts in coverage only once its label ' +
              'has arrived. Absent: 0, every request counts',
          ),
        dailyBudget: z
          .number(BUDGET_FIX)
          .int(BUDGET_FIX)
          .min(1, BUDGET_FIX)
          .optional()
          .describe(
            'Most label requests this rollout makes per simulated (UTC) day, paced over the day; tiers in ' +
              'order disagreement, rare, low_confidence, sample; a tier that does not fit is cut to a ' +
              'seeded uniform subset. Absent: no budget',
          ),
      })
      .strict(),
    drift: DriftPolicy.optional().describe(
      "Scheduled drift checks of the production models' input features (fleetgate drift schedule); defaults when absent",
    ),
    analysis: z
      .object({
        alpha: z
          .number()
          .gt(0)
          .lt(0.5)
          .default(0.05)
          .describe('Family-wise false-alarm rate over all looks and metrics'),
        mixtureSd: z
          .number()
          .gt(0)
          .default(0.05)
          .describe('Scale of the mSPRT normal mixture, in metric units'),
        minLabeledPerArm: z.number().int().min(1).default(100),
        maxExtraLooks: z
          .number()
          .int()
          .min(0)
          .max(50)
          .default(2)
          .describe('Extra looks when a wave ends without enough data'),
        design: z
          .enum(['msprt', 'ld-obf', 'ld-pocock'])
          .default('msprt')
          .describe(
            'msprt: always-valid mixture SPRT, no plan needed; ld-obf / ld-pocock: group-sequential ' +
              'Lan-DeMets spending over the information fraction labeled-per-arm / plannedPerArm',
          ),
        plannedPerArm: z
          .number()
          .int()
          .min(1)
          .optional()
          .describe('Group-sequential designs: the labeled events per arm at full information'),
        familywise: z
          .enum(['cohorts', 'per-cohort'])
          .default('cohorts')
          .describe(
            'cohorts: alpha is split across the cohorts (and a pooled fleet-wide test), so a false ' +
              'alarm anywhere in the fleet has probability at most alpha; per-cohort: each cohort at alpha',
          ),
        requireImprovement: z
          .boolean()
          .default(false)
          .describe('Promote only when at least one success metric is shown better than production'),
        rollbackScope: z
          .enum(['cohort', 'fleet'])
          .default('cohort')
          .describe(
            'cohort: harm rolls back the cohort it is in; fleet: harm anywhere rolls back every cohort',
          ),
        fleetWideHarmCohorts: z
          .number()
          .int()
          .min(1)
          .default(2)
          .describe('Harm proven in at least this many cohorts is fleet-wide: every cohort is rolled back'),
        escalation: z
          .object({
            required: z.number().int().min(1).default(1).describe('Approvals needed to promote anyway'),
            timeout: boundedDuration('gateTimeout')
              .default('24h')
              .describe('Unanswered by then, the cohorts stay held'),
            excludeInitiator: z
              .boolean()
              .default(false)
              .describe("The rollout's initiator (requestedBy) may not approve an escalation"),
          })
          .strict()
          .default({ required: 1, timeout: '24h', excludeInitiator: false })
          .describe(
            'Inconclusive or missing data never promotes: the cohorts are held and put to the reviewers, ' +
              'who may approve (promote, or go on to the next wave) or reject (roll back)',
          ),
        metrics: z.array(Metric).min(1),
      })
      .strict()
      .superRefine((a, ctx) => {
        if (a.design !== 'msprt' && a.plannedPerArm === undefined) {
          ctx.addIssue({
            code: 'custom',
            path: ['plannedPerArm'],
            message: `design "${a.design}" needs plannedPerArm, the labeled events per arm at full information (see \`fleetgate stats sample-size\`)`,
          });
        }
        const seen = new Set<string>();
        a.metrics.forEach((m, i) => {
          if (seen.has(m.name)) {
            ctx.addIssue({
              code: 'custom',
              path: ['metrics', i, 'name'],
              message: `metric "${m.name}" is listed twice; list each metric once`,
            });
          }
          seen.add(m.name);
        });
        if (!a.metrics.some((m) => m.role === 'guardrail')) {
          ctx.addIssue({
            code: 'custom',
            path: ['metrics'],
            message: 'at least one metric must be a guardrail (role: guardrail, the default)',
          });
        }
        if (a.requireImprovement && !a.metrics.some((m) => m.role === 'success')) {
          ctx.addIssue({
            code: 'custom',
            path: ['requireImprovement'],
            message: 'requireImprovement needs a metric with role: success',
          });
        }
      }),
  })
  .strict()
  .superRefine((p, ctx) => {
    const reviewers = [...new Set(p.reviewers)];
    for (const g of policyGates(p)) {
      // Without reviewers an escalation holds at once, by design (see the preprocess of Policy below).
      if (g.kind === 'escalation' && reviewers.length === 0) continue;
      const problem = quorumProblem(g, reviewers, 'policy.reviewers');
      if (problem) ctx.addIssue({ code: 'custom', path: g.path, message: problem });
    }
  });

type PolicyShape = z.infer<typeof PolicyObject>;

/** An approval of a policy: a wave's gate, the promotion gate or the escalation. */
interface PolicyGate {
  kind: 'wave' | 'promotion' | 'escalation';
  gate: string;
  required: number;
  excludeInitiator: boolean;
  /** Path of its `required`, from the policy. */
  path: (string | number)[];
}

function policyGates(p: PolicyShape): PolicyGate[] {
  const gates: PolicyGate[] = [];
  p.waves.forEach((w, i) => {
    if (w.approval) {
      gates.push({
        kind: 'wave',
        gate: w.approval.gate,
        required: w.approval.required,
        excludeInitiator: w.approval.excludeInitiator,
        path: ['waves', i, 'approval', 'required'],
      });
    }
  });
  const promotion = p.promotion?.approval;
  if (promotion) {
    gates.push({
      kind: 'promotion',
      gate: promotion.gate,
      required: promotion.required,
      excludeInitiator: promotion.excludeInitiator,
      path: ['promotion', 'approval', 'required'],
    });
  }
  const e = p.analysis.escalation;
  gates.push({
    kind: 'escalation',
    gate: 'escalation',
    required: e.required,
    excludeInitiator: e.excludeInitiator,
    path: ['analysis', 'escalation', 'required'],
  });
  return gates;
}

/** Why a gate's quorum cannot be met by `reviewers` (distinct names), with the fix; undefined when it can. */
function quorumProblem(
  g: PolicyGate,
  reviewers: string[],
  who: string,
  initiator?: string,
): string | undefined {
  const field = g.kind === 'escalation' ? 'analysis.escalation.required' : 'required';
  const needs = `gate "${g.gate}" needs ${g.required} approval${g.required === 1 ? '' : 's from different reviewers'}`;
  if (initiator === undefined) {
    if (reviewers.length === 0) {
      return `${needs} but ${who} names nobody, so it could never open (its cohorts would be held at its timeout); name reviewers in policy.reviewers or remove this approval`;
    }
    if (g.required > reviewers.length) {
      return `${needs} but ${who} names only ${reviewers.length} (${reviewers.join(', ')}); name at least ${g.required} reviewers or lower ${field} to ${reviewers.length}`;
    }
    return undefined;
  }
  const others = reviewers.filter((r) => r !== initiator);
  if (!g.excludeInitiator || others.length === reviewers.length || g.required <= others.length)
    return undefined;
  const lower = others.length > 0 ? `, lower ${field} to ${others.length}` : '';
  return (
    `${needs} and excludes the rollout's initiator "${initiator}" (excludeInitiator: true), but ${who} names ` +
    `only ${others.length} other${others.length === 1 ? '' : 's'}${others.length ? ` (${others.join(', ')})` : ''}; ` +
    `name another reviewer${lower}, or have someone else start the rollout (--requested-by)`
  );
}

/**
 * A rollout policy. Before its own schema, one check needs the file as written: an escalation quorum
 * (`analysis.escalation.required`) set explicitly while `reviewers` names nobody cannot be met. Without
 * reviewers an escalation holds its cohorts at once by design, so the default (1) stays legal there.
 */
export const Policy = z.preprocess((raw: z.input<typeof PolicyObject>, ctx) => {
  const input = raw as unknown;
  if (input === null || typeof input !== 'object') return raw;
  const { reviewers, analysis } = input as { reviewers?: unknown; analysis?: unknown };
  const escalation = (analysis as { escalation?: unknown } | null | undefined)?.escalation;
  const required = (escalation as { required?: unknown } | null | undefined)?.required;
  const nobody = reviewers === undefined || (Array.isArray(reviewers) && reviewers.length === 0);
  if (required === undefined || !nobody) return raw;
  // An issue here ends the parse, so the policy's other problems are added first.
  const rest = PolicyObject.safeParse(raw);
  if (!rest.success)
    for (const i of rest.error.issues) ctx.addIssue({ code: 'custom', path: i.path, message: i.message });
  ctx.addIssue({
    code: 'custom',
    path: ['analysis', 'escalation', 'required'],
    message:
      'policy.reviewers names nobody, so an escalation holds its cohorts at once and its approvals could never be given; ' +
      'name reviewers in policy.reviewers, or remove analysis.escalation.required',
  });
  return raw;
}, PolicyObject);

export type Policy = z.infer<typeof Policy>;
export type PolicyInput = z.input<typeof Policy>;

/**
 * Legal but absurd settings of a policy, one line each (`policy.<path>: ...`): a duration above its
 * DURATION_LIMITS warning. The CLI prints them on stderr (`rollout start`, `request`, `plan`).
 */
export function policyWarnings(p: Policy): string[] {
  const warnings: string[] = [];
  const check = (path: string, value: string | number | undefined, limit: DurationLimit) => {
    const bound = DURATION_LIMITS[limit] as { what: string; max: string; warn?: string };
    const ms = value === undefined ? undefined : parseDuration(value);
    if (!bound.warn || ms === undefined || ms <= parseDuration(bound.warn)!) return;
    const shown = typeof value === 'number' ? formatDuration(value) : value;
    warnings.push(
      `policy.${path}: ${bound.what} of ${shown} is longer than ${bound.warn}; legal (at most ${bound.max}), but check that it is meant`,
    );
  };
  check('shadow.duration', p.shadow.duration, 'shadow');
  p.waves.forEach((w, i) => {
    check(`waves.${i}.hold`, w.hold, 'hold');
    check(`waves.${i}.approval.timeout`, w.approval?.timeout, 'gateTimeout');
  });
  check('promotion.approval.timeout', p.promotion?.approval?.timeout, 'gateTimeout');
  check('analysis.escalation.timeout', p.analysis.escalation.timeout, 'gateTimeout');
  check('labelWait.timeout', p.labelWait.timeout, 'labelTimeout');
  return warnings;
}

/** A name of the request: bounded, without control characters. */
const PersonName = z
  .string()
  .min(1)
  .max(MAX_NAME_CHARS, LONG_NAME)
  .regex(NO_CONTROL_CHARS, { message: 'no control characters (newlines, tabs, escapes) or bidi overrides' });
export type Wave = z.infer<typeof Wave>;
export type Metric = z.infer<typeof Metric>;

export const RolloutRequest = z
  .object({
    rolloutId: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/, {
      message: 'letters, digits, ".", "_" or "-", at most 100',
    }),
    candidate: z
      .object({
        pack: z.string().min(1).describe('Model pack directory, relative to the worker'),
        allowMajorBump: z
          .boolean()
          .optional()
          .describe("Approves a semantic-version major bump over production's version (refused otherwise)"),
      })
      .strict(),
    fleet: z
      .object({
        manifest: z.string().min(1).describe('Fleet manifest file, relative to the worker'),
        timeScale: z
          .number()
          .positive()
          .default(1)
          .describe('Simulated fleet time per real second (simulated fleets only)'),
      })
      .strict(),
    policy: Policy,
    requestedBy: PersonName.default('unknown').describe(
      'Who starts the rollout: the initiator a gate with excludeInitiator leaves out',
    ),
  })
  .strict()
  .superRefine((r, ctx) => {
    // A gate that excludes the initiator needs its quorum among the other reviewers.
    const reviewers = [...new Set(r.policy.reviewers)];
    if (reviewers.length === 0) return;
    for (const g of policyGates(r.policy)) {
      if (g.required > reviewers.length) continue; // said by the policy's own check
      const problem = quorumProblem(g, reviewers, 'policy.reviewers', r.requestedBy);
      const path = ['policy', ...g.path.slice(0, -1), 'excludeInitiator'];
      if (problem) ctx.addIssue({ code: 'custom', path, message: problem });
    }
  });
export type RolloutRequest = z.infer<typeof RolloutRequest>;
export type RolloutRequestInput = z.input<typeof RolloutRequest>;

export const Sku = z
  .object({
    name: Name,
    speedFactor: z.number().positive().describe('Latency on this SKU divided by latency on the bench host'),
    latencyBudgetMs: z.number().positive().describe('p95 latency budget per frame'),
    intraOpThreads: z.number().int().min(1).default(1),
    graphOptimization: z.enum(['disabled', 'basic', 'extended', 'all']).default('all'),
    installFailureRate: z
      .number()
      .min(0)
      .max(1)
      .default(0)
      .describe(
        'Simulated fleets: share of over-the-air installs that fail on this SKU (the vehicle keeps its model)',
      ),
    slowdown: z
      .array(
        z
          .object({
            version: z.string().regex(/^\d+\.\d+\.\d+$/, { message: 'a semantic version such as "1.2.0"' }),
            factor: z.number().positive().describe('Extra latency factor of that model version on this SKU'),
          })
          .strict(),
      )
      .default([])
      .describe(
        'Simulated hardware: model versions that run slower on this SKU than its speedFactor says (an ' +
          'operator without an accelerated kernel, say); applies on the bench and in the fleet',
      ),
  })
  .strict();
export type Sku = z.infer<typeof Sku>;

/** Conditions under which a cohort's vehicles drive; they change how the models behave. */
export const Conditions = z
  .object({
    nightShare: z.number().min(0).max(1).optional().describe('Share of frames captured at night'),
    rainShare: z
      .number()
      .min(0)
      .max(1)
      .optional()
      .describe('Share of frames captured in rain, which weakens the camera (default 0)'),
    sensorNoise: z
      .number()
      .positive()
      .optional()
      .describe("Multiplier of the sensors' noise (default 1): worn or dirty sensors"),
  })
  .strict();
export type Conditions = z.infer<typeof Conditions>;

export const CohortSpec = z
  .object({
    name: CohortName,
    sku: Name,
    region: Name,
    firmware: z.string().min(1).default('1.0.0').describe('Vehicle firmware the cohort runs'),
    vehicles: z.number().int().min(1).max(1_000_000),
    nightShare: z.number().min(0).max(1).describe('Share of frames captured at night'),
    rainShare: z.number().min(0).max(1).default(0).describe('Share of frames captured in rain'),
    sensorNoise: z.number().positive().default(1).describe("Multiplier of the sensors' noise: 1 is nominal"),
    availability: z
      .object({
        online: z
          .number()
          .min(0)
          .max(1)
          .default(1)
          .describe('Share of vehicles online when a wave is delivered'),
        parked: z.number().min(0).max(1).default(1).describe('Share parked (installs need a parked vehicle)'),
        batteryOk: z.number().min(0).max(1).default(1).describe('Share with enough battery to install'),
      })
      .strict()
      .default({ online: 1, parked: 1, batteryOk: 1 })
      .describe(
        'Install preconditions: a targeted vehicle that is offline, moving or low on battery is not ' +
          'installed in this wave (it is counted as deferred, not failed)',
      ),
  })
  .strict();
export type CohortSpec = z.infer<typeof CohortSpec>;

export const FleetManifest = z
  .object({
    apiVersion: z.literal('fleetgate/v1'),
    kind: z.literal('Fleet'),
    name: Name,
    seed: z.number().int().default(1),
    skus: z.array(Sku).min(1),
    cohorts: z.array(CohortSpec).min(1),
    eventsPerVehicleHour: z.number().positive().default(20),
    drift: z
      .array(
        z
          .object({
            at: Duration.describe('Simulated time after the rollout starts when the conditions change'),
            cohorts: z.array(CohortName).min(1).optional().describe('Cohorts affected; all when absent'),
            conditions: Conditions,
          })
          .strict(),
      )
      .default([])
      .describe('Changes of driving conditions during the rollout (a season, a sensor batch going bad)'),
    labels: z
      .object({
        rate: z
          .number()
          .gt(0)
          .max(1)
          .describe('Share of the events in no priority tier that is sent for labeling (the random sample)'),
        delay: Duration.describe(
          'Mean delay before a label arrives, counted from its request (uniform in 50% to 150% of it)',
        ),
        delayByCohort: z
          .record(CohortName, Duration)
          .optional()
          .describe("The labeler's mean delay for the named cohorts, instead of delay"),
        noise: z
          .number(NOISE_FIX)
          .min(0, NOISE_FIX)
          .max(0.5, {
            message: 'a share in [0, 0.5]: above 0.5 the labeler would be wrong more often than right',
          })
          .optional()
          .describe(
            'Share of labels the labeler gets wrong (a different class, seeded per event); 0 when absent. ' +
              "The simulation's ground truth stays separate",
          ),
      })
      .strict(),
  })
  .strict()
  .superRefine((f, ctx) => {
    const cohortNames = new Set(f.cohorts.map((c) => c.name));
    f.cohorts.forEach((c, i) => {
      if (f.cohorts.findIndex((d) => d.name === c.name) !== i) {
        ctx.addIssue({
          code: 'custom',
          path: ['cohorts', i, 'name'],
          message: `cohort names must be unique: "${c.name}" is declared twice; rename one`,
        });
      }
    });
    f.drift.forEach((d, i) => {
      (d.cohorts ?? []).forEach((c, j) => {
        if (!cohortNames.has(c)) {
          ctx.addIssue({
            code: 'custom',
            path: ['drift', i, 'cohorts', j],
            message: `unknown cohort "${c}"; declared: ${[...cohortNames].join(', ')}`,
          });
        }
      });
    });
    for (const c of Object.keys(f.labels.delayByCohort ?? {})) {
      if (!cohortNames.has(c)) {
        ctx.addIssue({
          code: 'custom',
          path: ['labels', 'delayByCohort', c],
          message: `unknown cohort "${c}"; declared: ${[...cohortNames].join(', ')}`,
        });
      }
    }
    const skus = new Set(f.skus.map((s) => s.name));
    f.cohorts.forEach((c, i) => {
      if (!skus.has(c.sku)) {
        ctx.addIssue({
          code: 'custom',
          path: ['cohorts', i, 'sku'],
          message: `unknown SKU "${c.sku}"; declared: ${[...skus].join(', ')}`,
        });
      }
    });
  });
export type FleetManifest = z.infer<typeof FleetManifest>;

const Sha256 = z
  .string()
  .regex(/^[0-9a-f]{64}$/, { message: 'a sha256 hex digest (64 lowercase hex digits)' });

export const SkuBudget = z
  .object({
    latencyP95Ms: z.number().positive().optional().describe('p95 latency ceiling in ms on the SKU'),
    memoryMb: z.number().positive().optional().describe("Ceiling in MiB of the model's peak resident memory"),
  })
  .strict();

export const ModelManifest = z
  .object({
    apiVersion: z.literal('fleetgate/v1'),
    kind: z.literal('ModelPack'),
    name: Name,
    version: z.string().regex(/^\d+\.\d+\.\d+$/, { message: 'a semantic version such as "1.2.0"' }),
    release: z
      .number()
      .int()
      .positive()
      .describe('Release counter: strictly above the release of the production model it replaces'),
    model: z.string().min(1).describe('The ONNX file inside the pack'),
    config: z
      .string()
      .min(1)
      .default('inference_config.json')
      .describe('The inference config inside the pack'),
    files: z.record(z.string(), Sha256).describe('Every file of the pack but manifest.json and manifest.sig'),
    trainingDataHash: Sha256.describe('sha256 of the training data snapshot'),
    codeHash: Sha256.describe('sha256 of the training code'),
    compatibleSkus: z.array(Name).min(1).describe('Hardware SKUs the model may be delivered to'),
    skuBudgets: z.record(Name, SkuBudget).default({}).describe('Resource budgets per SKU'),
  })
  .strict();
export type ModelManifest = z.infer<typeof ModelManifest>;

const TensorDecl = z
  .object({
    name: z.string().min(1),
    type: z.string().min(1).describe('Element type as onnxruntime names it, e.g. "float32"'),
    shape: z.array(z.union([z.number().int().nonnegative(), z.string().min(1)])),
  })
  .strict();

/** inference_config.json: the contract a pack promises, its pre- and post-processing and its golden set. */
export const InferenceConfig = z
  .object({
    apiVersion: z.literal('fleetgate/v1'),
    kind: z.literal('InferenceConfig'),
    name: Name.describe("The manifest's name: a config from another model is a mixed pack"),
    version: z.string().regex(/^\d+\.\d+\.\d+$/, { message: 'a semantic version such as "1.2.0"' }),
    release: z
      .number()
      .int()
      .positive()
      .describe("The manifest's release: a config of another release is refused"),
    inputs: z.array(TensorDecl).min(1),
    outputs: z.array(TensorDecl).min(1),
    preprocessing: z
      .object({
        scale: z.number().default(1).describe('Each feature is multiplied by this ...'),
        offset: z.number().default(0).describe('... then this is added'),
      })
      .strict()
      .default({ scale: 1, offset: 0 }),
    classes: z.array(z.string().min(1)).min(2).describe('Output class names, in output order'),
    thresholds: z
      .record(z.string(), z.number().min(0).max(1))
      .default({})
      .describe('Decision threshold per class name; argmax where none is given'),
    golden: z
      .object({
        inputs: z.string().min(1).describe('File of little-endian float32 inputs, [rows, features]'),
        outputs: z
          .string()
          .min(1)
          .describe('File of little-endian float32 expected outputs, [rows, classes]'),
        rows: z.number().int().positive(),
        tolerance: z.number().positive().describe('Largest absolute difference allowed per output value'),
      })
      .strict(),
  })
  .strict();
export type InferenceConfig = z.infer<typeof InferenceConfig>;

/** manifest.sig: a detached ed25519 signature over the exact bytes of manifest.json. */
export const PackSignature = z
  .object({
    apiVersion: z.literal('fleetgate/v1'),
    kind: z.literal('ModelPackSignature'),
    algorithm: z.literal('ed25519'),
    keyId: Sha256.describe('sha256 of the raw 32-byte public key'),
    signature: z
      .string()
      .regex(/^[A-Za-z0-9+/]{86}==$/, { message: 'a base64 ed25519 signature (64 bytes)' }),
  })
  .strict();
export type PackSignature = z.infer<typeof PackSignature>;

/** One line per problem: `path: message (got <value>)`. */
export function formatIssues(error: z.ZodError, input: unknown, root = ''): string {
  return error.issues
    .map((issue) => {
      const path = [root, ...issue.path.map(String)].filter(Boolean).join('.');
      const got = valueAt(input, issue.path as PropertyKey[]);
      const shown = got === undefined ? 'missing' : JSON.stringify(got);
      return `${path || '(root)'}: ${issue.message} (got ${shown && shown.length > 80 ? shown.slice(0, 77) + '...' : shown})`;
    })
    .join('\n');
}

function valueAt(input: unknown, path: PropertyKey[]): unknown {
  let cur: unknown = input;
  for (const key of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[key];
  }
  return cur;
}

/** Parses with a schema, or throws an Error whose message lists every problem. */
export function parseOrThrow<S extends z.ZodType>(schema: S, input: unknown, what: string): z.infer<S> {
  const r = schema.safeParse(input);
  if (r.success) return r.data;
  throw new InvalidInputError(`invalid ${what}:\n${formatIssues(r.error, input)}`);
}

export class InvalidInputError extends Error {
  override name = 'InvalidInputError';
}

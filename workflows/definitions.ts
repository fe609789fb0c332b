/**
 * The messages of a rollout, defined once: the workflow, the CLI and the tests import these constants,
 * so no call site spells a message name as a string.
 *
 * Updates are what callers wait on (approve, reject, abort); each has a validator in the workflow, so a
 * refused request leaves nothing in history. `status` is a query. `UPDATE_PAYLOADS` are the zod schemas
 * of the updates' inputs, and `validateUpdate` is how every validator starts: the payload's shape first
 * (InvalidInput), then the rollout's own checks (Refused), both non-retryable.
 *
 * Pure: imported by workflow code.
 */
import { ApplicationFailure, defineQuery, defineUpdate } from '@temporalio/workflow';
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import { z } from 'zod';
import { ErrorType } from '../errors';
import { MAX_NAME_CHARS, MAX_TEXT_CHARS, NO_CONTROL_CHARS } from '../policies/schema';
import type { MetricResult } from '../policies/decide';
import type { BenchResult } from '../activities/contracts';

export const TASK_QUEUE = 'fleetgate';
export const RECENT_DECISIONS = 30;
export const WORKFLOW_TYPE = 'rolloutWorkflow';

export type Phase =
  'register' | 'bench' | 'shadow' | 'canary' | 'label-wait' | 'analysis' | 'promote' | 'rollback' | 'done';

/** Where a cohort is; the last five are final outcomes. `escalated`: waiting for the reviewers. */
export type CohortState =
  | 'pending'
  | 'shadow'
  | 'canary'
  | 'escalated'
  | 'promoted'
  | 'rolled_back'
  | 'held'
  | 'rejected'
  | 'aborted';

export const FINAL_COHORT_STATES: readonly CohortState[] = [
  'promoted',
  'rolled_back',
  'held',
  'rejected',
  'aborted',
];

export interface CohortStatus {
  cohort: string;
  state: CohortState;
  /** Number of waves delivered to this cohort (0: none). */
  wave: number;
  /** Vehicles of the cohort running the candidate. */
  vehicles: number;
  /** One line: the deciding statistic against its boundary, or why the cohort is where it is. */
  headline?: string;
  metrics?: MetricResult[];
}

export interface DecisionLogEntry {
  seq: number;
  /** Workflow time, ISO 8601. */
  at: string;
  /** Simulated fleet time of the data looked at, ISO 8601. */
  dataAsOf?: string;
  phase: Phase;
  wave?: number;
  look?: number;
  cohort?: string;
  action: string;
  reason: string;
  by?: string;
  metrics?: MetricResult[];
  /** A gate passed or approved: the one-line evidence the reviewers had in front of them, per cohort. */
  evidence?: string[];
}

export interface PendingGate {
  gate: string;
  /**
   * wave: a reviewer gate of the policy before a wave; escalation: the engine could not decide;
   * promotion: the policy's gate before the final promotion (`promotion.approval`).
   */
  kind?: 'wave' | 'escalation' | 'promotion';
  wave: number;
  /** The cohorts the gate is about, and the one-line evidence for each (older wave gates: absent). */
  cohorts?: string[];
  evidence?: string[];
  /** Distinct reviewers needed: each approval comes from a different name of `reviewers`. */
  required: number;
  approvals: string[];
  /** Who may approve: the policy's reviewers, without the rollout's initiator when it is excluded. */
  reviewers?: string[];
  /** The rollout's initiator (`requestedBy`) may not approve this gate. */
  excludeInitiator?: boolean;
  /** The candidate digest the gate is about; an approval naming another digest (or prefix) is refused. */
  digest?: string;
  openedAt: string;
  deadline: string;
}

/** An operator's pause: the rollout holds at its next safe point until it is resumed. */
export interface PauseState {
  by: string;
  reason: string;
  /** Workflow time of the pause, ISO 8601. */
  since: string;
}

/**
 * What a running rollout waits on now, as the workflow knows it: a hold's next look, a delivery, a look's
 * telemetry and analysis, the label wait's next poll, a gate, a pause, or a compensation being retried.
 * `fleetgate status` adds the activities the server has in flight (attempt, last failure, last heartbeat).
 */
export interface WaitingOn {
  what: string;
  /** Workflow time it began, ISO 8601. */
  since: string;
  /** When the wait ends by itself (a timer), ISO 8601. */
  until?: string;
}

export interface RolloutStatus {
  rolloutId: string;
  phase: Phase;
  /** Index (1-based) of the wave being held; 0 before the first. */
  wave: number;
  waves: number;
  look: number;
  candidate?: { name: string; version: string; digest: string };
  cohorts: CohortStatus[];
  pendingGate?: PendingGate;
  /** Set while an operator's pause holds the rollout (see `pauseUpdate`). */
  paused?: PauseState;
  /** What the rollout waits on now (absent in older workers' status and once it has ended). */
  waitingOn?: WaitingOn;
  lastDecision?: DecisionLogEntry;
  /** The last RECENT_DECISIONS entries of the decision log, oldest first (the report has them all). */
  recentDecisions: DecisionLogEntry[];
  benches: BenchResult[];
  outcome?: RolloutOutcome;
  simNow: string;
}

export type RolloutOutcome = 'completed' | 'rejected' | 'aborted';

export interface RolloutResult {
  rolloutId: string;
  outcome: RolloutOutcome;
  /** Phase in which the rollout was rejected, when it was. */
  rejectedAt?: Phase;
  reason: string;
  cohorts: CohortStatus[];
  reportPath?: string;
  historyEvents?: number;
}

export interface ApproveRequest {
  gate: string;
  reviewer: string;
  comment?: string;
  /**
   * The candidate digest the reviewer looked at (the whole digest or a prefix of at least 12 hex digits):
   * refused when it is not the candidate's, so an approval never applies to a candidate that changed.
   */
  digest?: string;
}
export interface RejectRequest {
  gate: string;
  reviewer: string;
  reason: string;
  /** As for `ApproveRequest.digest`. */
  digest?: string;
}
export interface GateReceipt {
  gate: string;
  approvals: string[];
  required: number;
  open: boolean;
}
export interface AbortRequest {
  reason: string;
  by: string;
}
export interface AbortReceipt {
  outcome: RolloutOutcome;
  compensations: number;
}

/** Hold at the next safe point (before a wave, a look, the label wait's next poll, the analysis). */
export interface PauseRequest {
  by: string;
  reason: string;
}
export interface ResumeRequest {
  by: string;
  reason?: string;
}
export interface PauseReceipt {
  paused: boolean;
  phase: Phase;
  by: string;
}
/** Operator's emergency rollback of one cohort: its changes are compensated at once, it ends rolled_back. */
export interface RollbackCohortRequest {
  cohort: string;
  by: string;
  reason: string;
}
export interface RollbackCohortReceipt {
  cohort: string;
  state: CohortState;
  compensations: number;
}

/**
 * Custom search attributes of a rollout (registered by `fleetgate server`, the demo and the tests' dev
 * servers), upserted by the workflow as it moves, so that for example
 * `temporal workflow list --query 'FleetgatePhase="canary"'` lists the rollouts in their canary.
 */
export const SEARCH_ATTRIBUTES = {
  phase: defineSearchAttributeKey('FleetgatePhase', SearchAttributeType.KEYWORD),
  candidate: defineSearchAttributeKey('FleetgateCandidate', SearchAttributeType.KEYWORD),
  production: defineSearchAttributeKey('FleetgateProduction', SearchAttributeType.KEYWORD_LIST),
  outcome: defineSearchAttributeKey('FleetgateOutcome', SearchAttributeType.KEYWORD),
} as const;

export const approveUpdate = defineUpdate<GateReceipt, [ApproveRequest]>('approve');
export const rejectUpdate = defineUpdate<GateReceipt, [RejectRequest]>('reject');
export const abortUpdate = defineUpdate<AbortReceipt, [AbortRequest]>('abort');
export const pauseUpdate = defineUpdate<PauseReceipt, [PauseRequest]>('pause');
export const resumeUpdate = defineUpdate<PauseReceipt, [ResumeRequest]>('resume');
export const rollbackCohortUpdate = defineUpdate<RollbackCohortReceipt, [RollbackCohortRequest]>(
  'rollbackCohort',
);
export const statusQuery = defineQuery<RolloutStatus>('status');

// ---- update payloads ----------------------------------------------------------------------------

/** Longest digest an approval may name: "sha256:" and 64 hex digits, with room for spaces. */
const MAX_DIGEST_CHARS = 100;

const name = z.string().max(MAX_NAME_CHARS).regex(NO_CONTROL_CHARS);
const text = z.string().max(MAX_TEXT_CHARS);
const digest = z.string().max(MAX_DIGEST_CHARS);

/**
 * The shape of each update's input: strings of bounded length (names at most MAX_NAME_CHARS without
 * control characters, reasons and comments at most MAX_TEXT_CHARS), no other fields. Emptiness and
 * everything that depends on the rollout are the validators' own checks.
 */
export const UPDATE_PAYLOADS = {
  approve: z
    .object({ gate: name, reviewer: name, comment: text.optional(), digest: digest.optional() })
    .strict(),
  reject: z.object({ gate: name, reviewer: name, reason: text, digest: digest.optional() }).strict(),
  abort: z.object({ reason: text, by: name }).strict(),
  pause: z.object({ by: name, reason: text }).strict(),
  resume: z.object({ by: name, reason: text.optional() }).strict(),
  rollbackCohort: z.object({ cohort: name, by: name, reason: text }).strict(),
} as const;
export type UpdateName = keyof typeof UPDATE_PAYLOADS;

/** What each field is, in the words of who sends it. */
const FIELD_HINTS: Record<string, string> = {
  gate: "the gate's name as status shows it",
  reviewer: "the reviewer's name as the policy lists it",
  comment: 'free text',
  digest: 'the candidate digest as the pending gate shows it',
  reason: 'why, in words',
  by: 'the name of who asks',
  cohort: "the cohort's name as status shows it",
};

const EXAMPLES: Record<UpdateName, string> = {
  approve: '{"gate":"wave-2","reviewer":"alice"}',
  reject: '{"gate":"wave-2","reviewer":"bob","reason":"night recall"}',
  abort: '{"reason":"sensor recall","by":"ops"}',
  pause: '{"reason":"sensor recall","by":"ops"}',
  resume: '{"by":"ops"}',
  rollbackCohort: '{"cohort":"hw3/nordic","reason":"field reports","by":"ops"}',
};

/** 3145728 -> "3,145,728". */
function grouped(n: number): string {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/** A value as a message may show it: short JSON, or what it is when long (never a big blob). */
function shown(v: unknown): string {
  if (typeof v === 'string' && v.length > 40) return `a string of ${grouped(v.length)} characters`;
  let json: string | undefined;
  try {
    json = JSON.stringify(v);
  } catch {
    json = undefined;
  }
  if (json === undefined) return typeof v;
  if (json.length <= 60) return json;
  return Array.isArray(v)
    ? `an array of ${v.length} items`
    : `a ${typeof v} of ${json.length} characters as JSON`;
}

/**
 * The problems of an update's input, in the caller's terms (`"gate" must be a string, ...`); [] when
 * fine. `validateUpdate` prefixes them with the update's name.
 */
export function payloadProblems(update: UpdateName, input: unknown): string[] {
  const schema = UPDATE_PAYLOADS[update];
  const r = schema.safeParse(input);
  if (r.success) return [];
  const fields = Object.keys(schema.shape);
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    return [`the input must be a JSON object such as ${EXAMPLES[update]} (got ${shown(input)})`];
  }
  return r.error.issues.map((issue) => {
    if (issue.code === 'unrecognized_keys') {
      const keys = issue.keys.map((k) => JSON.stringify(k.length > 40 ? `${k.slice(0, 37)}...` : k));
      return `unknown field${keys.length === 1 ? '' : 's'} ${keys.join(', ')}; the fields are ${fields.join(', ')}`;
    }
    const field = String(issue.path[0] ?? '');
    const value = (input as Record<string, unknown>)[field];
    const hint = FIELD_HINTS[field] ?? field;
    if (value === undefined) return `"${field}" is missing: give ${hint}`;
    if (typeof value !== 'string') return `"${field}" must be a string, ${hint} (got ${shown(value)})`;
    if (issue.code === 'too_big') {
      return `"${field}" has ${value.length.toLocaleString('en-US')} characters; at most ${grouped(Number(issue.maximum))}: shorten it`;
    }
    return `"${field}" must not contain control characters (newlines, tabs, escapes) or bidi overrides: give ${hint} on one line, as typed`;
  });
}

/**
 * How every update validator runs: the payload's shape first, refused as InvalidInput; then `check`, the
 * rollout's own checks, whose refusal (an Error with the reason) becomes Refused. Both are non-retryable
 * ApplicationFailures whose message is the reason as the caller sees it (`fleetgate: refused: <why>`).
 */
export function validateUpdate(update: UpdateName, input: unknown, check: () => void): void {
  const problems = payloadProblems(update, input);
  if (problems.length > 0) {
    throw ApplicationFailure.create({
      type: ErrorType.InvalidInput,
      nonRetryable: true,
      message: `${update}: ${problems.join('; ')}`,
    });
  }
  try {
    check();
  } catch (err) {
    if (err instanceof ApplicationFailure) throw err;
    throw ApplicationFailure.create({
      type: ErrorType.Refused,
      nonRetryable: true,
      message: err instanceof Error ? err.message : String(err),
    });
  }
}

/**
 * The messages of a rollout, defined once: the workflow, the CLI and the tests import these constants,
 * so no call site spells a message name as a string.
 *
 * Updates are what callers wait on (approve, reject, abort); each has a validator in the workflow, so a
 * refused request leaves nothing in history. `status` is a query.
 *
 * Pure: imported by workflow code.
 */
import { defineQuery, defineUpdate } from '@temporalio/workflow';
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
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

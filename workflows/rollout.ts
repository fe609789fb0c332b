/**
 * rolloutWorkflow: one model rollout, from registration to a recorded outcome per cohort.
 *
 *   register -> bench (per SKU) -> shadow -> canary waves (looks on a timer) -> label wait
 *            -> final analysis -> promote | roll back | hold, per cohort
 *
 * Deterministic code only: no I/O, no clocks but the workflow's, no imports with side effects. Activities
 * are imported as types; statistics and decisions are pure functions from `policies/`. History carries
 * references and aggregates (digests, keys, per-cohort sufficient statistics), never events, so its
 * length grows with waves x looks, not with vehicles.
 *
 * Every change applied to the fleet first pushes its compensation; a rollback (of one cohort, or of all
 * on abort) runs them last-in first-out in a non-cancellable scope, each exactly once.
 */
import {
  ActivityCancellationType,
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  condition,
  isCancellation,
  patched,
  proxyActivities,
  setHandler,
  sleep,
  upsertSearchAttributes,
  workflowInfo,
  allHandlersFinished,
} from '@temporalio/workflow';
import type { createRegistryActivities } from '../activities/registry';
import type { createInferenceActivities } from '../activities/inference';
import type { createFleetActivities } from '../activities/fleet';
import type { createLabelActivities } from '../activities/labels';
import type { createAnalysisActivities } from '../activities/analysis';
import type { createReportActivities } from '../activities/report';
import type { createNotifyActivities } from '../activities/notify';
import type {
  BenchResult,
  CohortStats,
  CoverageCount,
  ModelRecord,
  NotifyInput,
} from '../activities/contracts';
import type { Duration, RetryPolicy } from '@temporalio/common';
import { ErrorType, nonRetryableErrorTypes } from '../errors';
import {
  RolloutRequest,
  formatIssues,
  type Policy,
  type RolloutRequestInput,
  type Sku,
} from '../policies/schema';
import { parseDuration } from '../policies/duration';
import { compareContracts } from '../policies/contract';
import {
  decideLook,
  decideShadow,
  headline,
  type CohortDecision,
  type ShadowVerdict,
  type SequentialState,
} from '../policies/decide';
import { engineLook } from '../policies/engine';
import { checkShadowBudget, judgeShadow } from '../policies/shadow';
import { PATCHES } from './patches';
import { validateUpdate } from './definitions';
import {
  abortUpdate,
  approveUpdate,
  FINAL_COHORT_STATES,
  pauseUpdate,
  RECENT_DECISIONS,
  rejectUpdate,
  resumeUpdate,
  rollbackCohortUpdate,
  SEARCH_ATTRIBUTES,
  statusQuery,
  type AbortReceipt,
  type AbortRequest,
  type ApproveRequest,
  type CohortState,
  type CohortStatus,
  type DecisionLogEntry,
  type GateReceipt,
  type PauseReceipt,
  type PauseRequest,
  type PauseState,
  type PendingGate,
  type Phase,
  type RejectRequest,
  type ResumeRequest,
  type RollbackCohortReceipt,
  type RollbackCohortRequest,
  type RolloutOutcome,
  type RolloutResult,
  type RolloutStatus,
  type WaitingOn,
} from './definitions';

type Activities = ReturnType<typeof createRegistryActivities> &
  ReturnType<typeof createInferenceActivities> &
  ReturnType<typeof createFleetActivities> &
  ReturnType<typeof createLabelActivities> &
  ReturnType<typeof createAnalysisActivities> &
  ReturnType<typeof createReportActivities>;

/** The retry policy of fleetgate's activities, in every workflow: backoff from 1 s to 30 s, 5 attempts. */
export const ACTIVITY_RETRY: RetryPolicy = {
  initialInterval: '1s',
  backoffCoefficient: 2,
  maximumInterval: '30s',
  maximumAttempts: 5,
  nonRetryableErrorTypes,
};
const retry = ACTIVITY_RETRY;
/**
 * Every activity heartbeats while it runs (activities/heartbeat.ts): one on a worker that died is retried
 * elsewhere once this much passes without a heartbeat, not when its start-to-close timeout ends.
 */
export const HEARTBEAT_TIMEOUT = '20s';
/** The activities with a start-to-close timeout, the heartbeat timeout, `retry` and a cancellation type. */
function proxy(startToCloseTimeout: Duration, cancellationType?: ActivityCancellationType) {
  return proxyActivities<Activities>({
    startToCloseTimeout,
    heartbeatTimeout: HEARTBEAT_TIMEOUT,
    retry,
    ...(cancellationType ? { cancellationType } : {}),
  });
}
/**
 * Activities that change the fleet or the registry (a delivery, a pointer, a mirror): cancelled by an
 * abort and waited for until the worker confirms, so a revert never runs before what it reverts ends.
 */
const acts = proxy('5m');
/**
 * Activities that only read or compute (telemetry, analysis, registry reads, the bench): an abort cancels
 * them without waiting (patch `fault-tolerance`; older rollouts wait, as their histories did).
 */
const readActs = proxy('5m', ActivityCancellationType.TRY_CANCEL);
/** Bench runs many inferences per SKU. */
const benchActs = proxy('15m');
const benchReadActs = proxy('15m', ActivityCancellationType.TRY_CANCEL);
/**
 * A compensation that fails its five attempts is tried again after a pause that doubles from 30 s to
 * at most 10 minutes, without a limit: a rollout never ends with a change it could not undo.
 */
const COMPENSATION_PAUSE_MS = 30_000;
const COMPENSATION_PAUSE_MAX_MS = 600_000;
/** A compensation still failing is logged and notified at its first failed round and every tenth. */
const COMPENSATION_NOTIFY_EVERY = 10;
/**
 * Notifications: one request per attempt (10 s timeout inside the activity), retried with exponential
 * backoff (2 s, 4 s, ... at most a minute apart) for at most 10 minutes; then given up and logged.
 */
const notifyActs = proxyActivities<ReturnType<typeof createNotifyActivities>>({
  startToCloseTimeout: '30s',
  scheduleToCloseTimeout: '10m',
  retry: {
    initialInterval: '2s',
    backoffCoefficient: 2,
    maximumInterval: '1m',
    maximumAttempts: 10,
    nonRetryableErrorTypes,
  },
});

/** A change applied to the fleet, and what undoes it. */
type Compensation =
  | { kind: 'revertWave'; wave: number; cohorts: string[] }
  | { kind: 'endShadow'; cohorts: string[] }
  | { kind: 'clearCandidatePointer'; cohorts: string[] };

class RolloutEnded extends Error {
  constructor(
    readonly outcome: RolloutOutcome,
    readonly phase: Phase,
    readonly why: string,
  ) {
    super(why);
  }
}

/** The state of one rollout and its message handlers; the workflow function wires them. */
export class Rollout {
  private current: Phase = 'register';
  wave = 0;
  look = 0;
  candidate?: ModelRecord;
  readonly cohorts = new Map<string, CohortStatus>();
  readonly production = new Map<string, string>();
  readonly log: DecisionLogEntry[] = [];
  readonly benches: BenchResult[] = [];
  readonly compensations: Compensation[] = [];
  readonly compensationsRun: { kind: Compensation['kind']; wave?: number; cohorts: string[] }[] = [];
  pendingGate?: PendingGate;
  rejection?: RejectRequest;
  abortRequest?: AbortRequest;
  outcome?: RolloutOutcome;
  finished = false;
  seq: SequentialState = { minP: {} };
  /** Which decision engine this rollout uses: 1 for histories recorded before engine 2 existed. */
  engine: 1 | 2 = 1;
  /** Bench and delivery failures scoped to the cohorts they concern (false in older histories). */
  scopedFailures = false;
  /** Webhook notifications (false in older histories). */
  notifying = false;
  /** Quorum gates: a wave gate unanswered holds, a promotion gate (false in older histories). */
  quorum = false;
  /** Pause, resume and a cohort's emergency rollback (false in older histories). */
  controls = false;
  /** Search attributes upserted as the rollout moves (see `run`). */
  searchAttributes = false;
  /** The fleet's shadow is a mirror on its serving (a service's gateway) that must be ended. */
  mirrors = false;
  /**
   * The candidate arm's serving configuration, when it may differ from production's by that alone (the
   * same digest): a threshold experiment on a service.
   */
  configExperiment?: { threshold: number };
  /** Set while paused; the rollout holds at its next safe point (`checkpoint`). */
  paused?: PauseState;
  /** A wave being delivered: an emergency rollback waits for it, so a revert never precedes its install. */
  private delivering = false;
  /** The cohort being promoted: an emergency rollback of it is refused. */
  private promoting?: string;
  /** Emergency rollbacks under way: the rollout's end waits for them, so its report lists them. */
  rollingBack = 0;
  /** Faults of the processes handled (patch `fault-tolerance`; false in older histories). */
  faultTolerance = false;
  /** What the rollout waits on now (see `waitOn`). */
  waitingOn?: WaitingOn;
  /** The notifications raised so far, sent one after the other in that order (see `notify`). */
  private notices: Promise<void> = Promise.resolve();
  readonly startMs = Date.now();
  private lastCollectedSimMs: number;
  readonly scope = new CancellationScope();

  constructor(readonly req: RolloutRequest) {
    this.lastCollectedSimMs = this.startMs;
  }

  get policy(): Policy {
    return this.req.policy;
  }

  get phase(): Phase {
    return this.current;
  }

  /** Every change of phase is upserted as `FleetgatePhase` when the rollout keeps search attributes. */
  set phase(p: Phase) {
    if (p === this.current) return;
    this.current = p;
    if (this.searchAttributes) upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.phase, value: p }]);
  }

  /** Simulated fleet time: real workflow time stretched by the fleet's time scale. */
  simNow(): number {
    return this.startMs + Math.round((Date.now() - this.startMs) * this.req.fleet.timeScale);
  }

  status(): RolloutStatus {
    return {
      rolloutId: this.req.rolloutId,
      phase: this.phase,
      wave: this.wave,
      waves: this.policy.waves.length,
      look: this.look,
      candidate: this.candidate && {
        name: this.candidate.name,
        version: this.candidate.version,
        digest: this.candidate.digest,
      },
      cohorts: [...this.cohorts.values()],
      pendingGate: this.pendingGate,
      ...(this.paused ? { paused: this.paused } : {}),
      ...(this.waitingOn && !this.outcome ? { waitingOn: this.waitingOn } : {}),
      lastDecision: this.log[this.log.length - 1],
      recentDecisions: this.log.slice(-RECENT_DECISIONS),
      benches: this.benches,
      outcome: this.outcome,
      simNow: new Date(this.simNow()).toISOString(),
    };
  }

  /**
   * Runs `fn` with `what` shown as what the rollout waits on (`status`), restoring the previous wait
   * after it; `forMs` when the wait is a timer. It changes nothing the workflow does.
   */
  async waitOn<T>(what: string, fn: () => Promise<T>, forMs?: number): Promise<T> {
    const prev = this.waitingOn;
    const since = new Date();
    this.waitingOn = {
      what,
      since: since.toISOString(),
      ...(forMs !== undefined ? { until: new Date(since.getTime() + forMs).toISOString() } : {}),
    };
    try {
      return await fn();
    } finally {
      this.waitingOn = prev;
    }
  }

  /** The proxies of what only reads or computes: cancelled without waiting on an abort (see `readActs`). */
  get reads(): typeof acts {
    return this.faultTolerance ? readActs : acts;
  }

  get benchReads(): typeof acts {
    return this.faultTolerance ? benchReadActs : benchActs;
  }

  record(entry: Omit<DecisionLogEntry, 'seq' | 'at'>): DecisionLogEntry {
    const logged = { seq: this.log.length + 1, at: new Date().toISOString(), ...entry };
    this.log.push(logged);
    return logged;
  }

  // ---- notifications ----------------------------------------------------------------------------

  /**
   * Tells the webhook about a decision-log entry, without making the rollout wait for it. Notifications
   * run one after the other, each once the one before is delivered or given up, so a receiver gets them in
   * the order they happened even while one is being retried; the workflow awaits them all (`notified`)
   * before it writes its report. Each runs in a non-cancellable scope (an abort does not lose the
   * notifications before it) under its own retry policy; one that finally fails becomes a decision-log
   * line and nothing else. Its idempotency key is the rollout and the entry's seq, the same on every retry.
   */
  notify(event: NotifyInput['event'], entry: DecisionLogEntry): void {
    if (!this.notifying) return;
    const input: NotifyInput = {
      event,
      rolloutId: this.req.rolloutId,
      ...(entry.cohort !== undefined ? { cohort: entry.cohort } : {}),
      ...(entry.wave ? { wave: entry.wave } : {}),
      phase: entry.phase,
      at: entry.at,
      reason: entry.reason,
      idempotencyKey: `${this.req.rolloutId}/${entry.seq}`,
    };
    this.notices = this.notices.then(() => this.send(input));
  }

  private async send(input: NotifyInput): Promise<void> {
    try {
      await CancellationScope.nonCancellable(() => notifyActs.notify(input));
    } catch (err) {
      const state = err instanceof ActivityFailure ? err.retryState : undefined;
      const given =
        state === 'MAXIMUM_ATTEMPTS_REACHED'
          ? 'after its last attempt'
          : state === 'TIMEOUT'
            ? 'within its 10 minutes'
            : state === 'NON_RETRYABLE_FAILURE'
              ? 'refused, not retried'
              : 'failed';
      this.record({
        phase: this.phase,
        action: 'notify-failed',
        reason: `notification ${input.idempotencyKey} (${input.event}${input.cohort ? ` ${input.cohort}` : ''}) not delivered (${given}): ${causeMessage(err)}; the rollout goes on`,
      });
    }
  }

  /** Waits until every notification raised so far is delivered or given up. */
  async notified(): Promise<void> {
    for (let n: Promise<void> | undefined; n !== this.notices;) {
      n = this.notices;
      await n;
    }
  }

  active(): string[] {
    return [...this.cohorts.values()]
      .filter((c) => c.state === 'canary' || c.state === 'shadow')
      .map((c) => c.cohort);
  }

  setState(cohort: string, state: CohortState, headlineText?: string): void {
    const c = this.cohorts.get(cohort);
    if (!c) return;
    c.state = state;
    if (headlineText !== undefined) c.headline = headlineText;
  }

  // ---- messages ---------------------------------------------------------------------------------

  /**
   * Refuses (with what was wrong and the fix) an approval or rejection that does not fit the pending
   * gate: no gate, another gate, a reviewer the policy does not name, or a digest that is not the
   * candidate's. A validator: a refusal leaves nothing in history.
   */
  validateGate(gate: string, reviewer: string, digest?: string): void {
    const pending = this.pendingGate;
    if (!pending) {
      throw new Error(
        `no gate is pending; the rollout is in phase "${this.phase}"; wait until its status shows a pending gate`,
      );
    }
    if (gate !== pending.gate)
      throw new Error(
        `gate "${gate}" is not pending; the pending gate is "${pending.gate}": give that gate's name`,
      );
    if (!this.policy.reviewers.includes(reviewer)) {
      throw new Error(
        `reviewer "${reviewer}" is not allowed to approve; the policy's reviewers are: ${this.policy.reviewers.join(', ') || '(none)'}; ask one of them`,
      );
    }
    if (digest !== undefined) {
      const d = digest
        .trim()
        .toLowerCase()
        .replace(/^sha256:/, '');
      if (!/^[0-9a-f]{12,64}$/.test(d)) {
        throw new Error(
          `digest "${digest}" is not a candidate digest: give the whole sha256 or at least its first 12 hex digits, as the pending gate shows it`,
        );
      }
      const cand = this.candidate?.digest ?? '';
      if (!cand.startsWith(d)) {
        throw new Error(
          `digest "${digest}" is stale: the candidate of gate "${pending.gate}" is ${this.candidate ? `${this.candidate.name}@${this.candidate.version} ` : ''}${cand.slice(0, 12)}; look at the gate again and give its digest`,
        );
      }
    }
  }

  validateApprove(a: ApproveRequest): void {
    validateUpdate('approve', a, () => {
      this.validateGate(a.gate, a.reviewer, a.digest);
      const pending = this.pendingGate!;
      if (pending.excludeInitiator && a.reviewer === this.req.requestedBy) {
        const others = (pending.reviewers ?? []).filter((r) => !pending.approvals.includes(r));
        throw new Error(
          `reviewer "${a.reviewer}" started this rollout and gate "${a.gate}" excludes its initiator; another reviewer must approve${others.length ? ` (${others.join(', ')})` : ''}`,
        );
      }
      if (pending.approvals.includes(a.reviewer)) {
        const others = (pending.reviewers ?? this.policy.reviewers).filter(
          (r) => !pending.approvals.includes(r),
        );
        throw new Error(
          `reviewer "${a.reviewer}" has already approved gate "${a.gate}" (${pending.approvals.length}/${pending.required}); another reviewer must approve${others.length ? ` (${others.join(', ')})` : ''}`,
        );
      }
    });
  }

  approve(a: ApproveRequest): GateReceipt {
    const gate = this.pendingGate!;
    gate.approvals.push(a.reviewer);
    this.record({
      phase: this.phase,
      wave: gate.wave,
      action: 'approve',
      by: a.reviewer,
      reason: `${a.reviewer} approved gate "${gate.gate}" (${gate.approvals.length}/${gate.required})${a.digest ? ` for candidate ${a.digest.trim().toLowerCase().slice(0, 12)}` : ''}${a.comment ? `: ${a.comment}` : ''}`,
      ...(this.quorum && gate.evidence?.length ? { evidence: [...gate.evidence] } : {}),
    });
    return {
      gate: gate.gate,
      approvals: [...gate.approvals],
      required: gate.required,
      open: gate.approvals.length >= gate.required,
    };
  }

  validateReject(r: RejectRequest): void {
    validateUpdate('reject', r, () => {
      this.validateGate(r.gate, r.reviewer, r.digest);
      if (!r.reason || !r.reason.trim()) throw new Error('a rejection needs a reason: say why (--reason)');
    });
  }

  reject(r: RejectRequest): GateReceipt {
    const gate = this.pendingGate!;
    this.rejection = r;
    this.record({
      phase: this.phase,
      wave: gate.wave,
      action: 'reject',
      by: r.reviewer,
      reason: `${r.reviewer} rejected gate "${gate.gate}": ${r.reason}`,
    });
    return { gate: gate.gate, approvals: [...gate.approvals], required: gate.required, open: false };
  }

  /** A pending gate of the policy: who may approve it and what it shows. */
  openGate(g: {
    gate: string;
    kind: NonNullable<PendingGate['kind']>;
    required: number;
    timeoutMs: number;
    excludeInitiator?: boolean;
    cohorts?: string[];
    evidence?: string[];
  }): PendingGate {
    const reviewers = this.policy.reviewers.filter(
      (r) => !(g.excludeInitiator && r === this.req.requestedBy),
    );
    const gate: PendingGate = {
      gate: g.gate,
      kind: g.kind,
      wave: this.wave,
      required: g.required,
      approvals: [],
      openedAt: new Date().toISOString(),
      deadline: new Date(Date.now() + g.timeoutMs).toISOString(),
    };
    if (g.cohorts) gate.cohorts = g.cohorts;
    if (g.evidence) gate.evidence = g.evidence;
    if (this.quorum) {
      gate.reviewers = reviewers;
      if (g.excludeInitiator) gate.excludeInitiator = true;
      if (this.candidate) gate.digest = this.candidate.digest;
    }
    this.pendingGate = gate;
    return gate;
  }

  /** The one-line evidence of each cohort: its latest statistic against its boundary, or its headline. */
  evidenceOf(cohorts: string[]): string[] {
    return cohorts.map((c) => `${c}: ${this.cohorts.get(c)?.headline ?? 'no look yet'}`);
  }

  /** Waits for the gate's quorum, a rejection, its cohorts all gone (emergency rollbacks) or the timeout. */
  async awaitGate(pending: PendingGate, timeoutMs: number): Promise<boolean> {
    return this.waitOn(
      `the reviewers of gate "${pending.gate}" (${pending.required} approval(s) needed)`,
      () =>
        condition(
          () =>
            pending.approvals.length >= pending.required ||
            this.rejection !== undefined ||
            (pending.cohorts !== undefined && this.controls && pending.cohorts.every((c) => this.isFinal(c))),
          timeoutMs,
        ),
      timeoutMs,
    );
  }

  isFinal(cohort: string): boolean {
    const c = this.cohorts.get(cohort);
    return !c || FINAL_COHORT_STATES.includes(c.state);
  }

  // ---- operator controls ------------------------------------------------------------------------

  private ended(): string | undefined {
    if (this.finished || this.outcome || this.phase === 'done')
      return `the rollout has already ended (${this.outcome ?? 'finishing'})`;
    if (this.abortRequest) return `an abort is under way, requested by ${this.abortRequest.by}`;
    return undefined;
  }

  private needsControls(what: string): void {
    if (!this.controls) {
      throw new Error(
        `this rollout was started by a version of fleetgate without ${what}; abort it instead if it must stop`,
      );
    }
    const why = this.ended();
    if (why) throw new Error(why);
  }

  validatePause(p: PauseRequest): void {
    validateUpdate('pause', p, () => {
      this.needsControls('pause');
      if (!p.by || !p.by.trim()) throw new Error('a pause needs the name of who asks (by)');
      if (!p.reason || !p.reason.trim()) throw new Error('a pause needs a reason: say why (--reason)');
      if (this.paused) {
        throw new Error(
          `the rollout is already paused by ${this.paused.by} since ${this.paused.since}: ${this.paused.reason}; resume it first`,
        );
      }
    });
  }

  /** Holds the rollout at its next safe point (`checkpoint`); a gate pending stays open to reviewers. */
  pause(p: PauseRequest): PauseReceipt {
    this.paused = { by: p.by, reason: p.reason, since: new Date().toISOString() };
    const entry = this.record({
      phase: this.phase,
      wave: this.wave || undefined,
      action: 'pause',
      by: p.by,
      reason: `paused by ${p.by}: ${p.reason}; nothing is delivered, analysed or promoted until it is resumed`,
    });
    this.notify('paused', entry);
    return { paused: true, phase: this.phase, by: p.by };
  }

  validateResume(r: ResumeRequest): void {
    validateUpdate('resume', r, () => {
      this.needsControls('pause');
      if (!r.by || !r.by.trim()) throw new Error('a resume needs the name of who asks (by)');
      if (!this.paused) throw new Error('the rollout is not paused; there is nothing to resume');
    });
  }

  resume(r: ResumeRequest): PauseReceipt {
    const was = this.paused!;
    this.paused = undefined;
    const entry = this.record({
      phase: this.phase,
      wave: this.wave || undefined,
      action: 'resume',
      by: r.by,
      reason: `resumed by ${r.by}${r.reason ? `: ${r.reason}` : ''} (paused by ${was.by} since ${was.since}: ${was.reason})`,
    });
    this.notify('resumed', entry);
    return { paused: false, phase: this.phase, by: r.by };
  }

  /** A safe point: while paused, waits for the resume (an abort or a cancellation still goes through). */
  async checkpoint(): Promise<void> {
    if (!this.controls || !this.paused) return;
    await this.waitOn(`the resume: paused by ${this.paused.by}`, () =>
      condition(() => this.paused === undefined),
    );
  }

  validateRollbackCohort(r: RollbackCohortRequest): void {
    validateUpdate('rollbackCohort', r, () => {
      this.needsControls('emergency rollback');
      if (!r.by || !r.by.trim()) throw new Error('a rollback needs the name of who asks (by)');
      if (!r.reason || !r.reason.trim()) throw new Error('a rollback needs a reason: say why (--reason)');
      const c = this.cohorts.get(r.cohort);
      if (!c) {
        throw new Error(
          `cohort "${r.cohort}" is not in this rollout; its cohorts are: ${[...this.cohorts.keys()].join(', ') || '(none yet: the rollout is registering)'}`,
        );
      }
      if (FINAL_COHORT_STATES.includes(c.state)) {
        throw new Error(
          `cohort "${r.cohort}" is already ${c.state}, a final state; there is nothing left to roll back`,
        );
      }
      if (this.promoting === r.cohort) {
        throw new Error(
          `cohort "${r.cohort}" is being promoted right now; its promotion cannot be undone here`,
        );
      }
    });
  }

  /**
   * The operator's emergency rollback of one cohort: it ends `rolled_back` at once (so the rollout
   * delivers, analyses and promotes nothing more there) and its changes are compensated last-in first-out,
   * after a wave being delivered has landed. The other cohorts go on.
   */
  async emergencyRollback(r: RollbackCohortRequest): Promise<RollbackCohortReceipt> {
    const c = this.cohorts.get(r.cohort)!;
    c.state = 'rolled_back';
    c.headline = `emergency rollback by ${r.by}: ${r.reason}`;
    const before = this.compensationsRun.length;
    this.rollingBack++;
    try {
      await this.waitOn(`the wave being delivered, before ${r.cohort} is rolled back`, () =>
        condition(() => !this.delivering),
      );
      await this.compensate([r.cohort]);
    } finally {
      this.rollingBack--;
    }
    const entry = this.record({
      phase: this.phase,
      wave: this.wave || undefined,
      cohort: r.cohort,
      action: 'rollback',
      by: r.by,
      reason: `emergency rollback of ${r.cohort} by ${r.by}: ${r.reason}; its changes are compensated, the other cohorts go on`,
    });
    this.notify('rollback', entry);
    return {
      cohort: r.cohort,
      state: c.state,
      compensations: this.compensationsRun.length - before,
    };
  }

  // ---- search attributes ------------------------------------------------------------------------

  /** Upserts the candidate and production search attributes (the phase is upserted by its setter). */
  upsertModels(): void {
    if (!this.searchAttributes) return;
    const production = new Set<string>();
    for (const [cohort, digest] of this.production) {
      const promoted = this.cohorts.get(cohort)?.state === 'promoted' && this.candidate;
      const d = promoted ? this.candidate!.digest : digest;
      production.add(d);
      const v = this.versions[d];
      if (v && this.modelNames[d]) production.add(`${this.modelNames[d]}@${v}`);
    }
    upsertSearchAttributes([
      ...(this.candidate
        ? [{ key: SEARCH_ATTRIBUTES.candidate, value: `${this.candidate.name}@${this.candidate.version}` }]
        : []),
      { key: SEARCH_ATTRIBUTES.production, value: [...production].sort() },
    ]);
  }

  /** Model name of every digest in play, for the production search attribute. */
  private readonly modelNames: Record<string, string> = {};

  validateAbort(a: AbortRequest): void {
    validateUpdate('abort', a, () => {
      if (this.finished || this.outcome)
        throw new Error(`the rollout has already ended (${this.outcome ?? 'finishing'})`);
      if (this.abortRequest)
        throw new Error(`an abort is already under way, requested by ${this.abortRequest.by}`);
      if (!a.reason || !a.reason.trim()) throw new Error('an abort needs a reason');
      if (!a.by || !a.by.trim()) throw new Error('an abort needs the name of who asks (by)');
    });
  }

  async abort(a: AbortRequest): Promise<AbortReceipt> {
    this.abortRequest = a;
    this.record({
      phase: this.phase,
      action: 'abort',
      by: a.by,
      reason: `abort requested by ${a.by}: ${a.reason}`,
    });
    this.scope.cancel();
    await condition(() => this.finished);
    return { outcome: this.outcome ?? 'aborted', compensations: this.compensationsRun.length };
  }

  // ---- compensation -----------------------------------------------------------------------------

  /** Pushes the compensation of a change before the change is made. */
  push(c: Compensation): void {
    this.compensations.push(c);
  }

  /**
   * Runs, last-in first-out, every remaining compensation that concerns `cohorts`; each exactly once, and
   * each until it is done (`untilDone`).
   */
  async compensate(cohorts: string[]): Promise<void> {
    await CancellationScope.nonCancellable(async () => {
      for (let i = this.compensations.length - 1; i >= 0; i--) {
        const c = this.compensations[i]!;
        const mine = c.cohorts.filter((x) => cohorts.includes(x));
        if (mine.length === 0) continue;
        await this.untilDone(c, mine);
        c.cohorts = c.cohorts.filter((x) => !mine.includes(x));
        this.compensationsRun.push({
          kind: c.kind,
          wave: c.kind === 'revertWave' ? c.wave : undefined,
          cohorts: mine,
        });
      }
      for (const cohort of cohorts) {
        const s = this.cohorts.get(cohort);
        if (s) s.vehicles = 0;
      }
    });
  }

  /** Carries out one compensation for `cohorts` (idempotent activities: a retry changes nothing more). */
  private async undo(c: Compensation, cohorts: string[]): Promise<void> {
    if (c.kind === 'revertWave') {
      await acts.revertWave({
        rolloutId: this.req.rolloutId,
        manifest: this.req.fleet.manifest,
        wave: c.wave,
        cohorts,
      });
    } else if (c.kind === 'endShadow') {
      await acts.endShadow({ ...this.fleetRef(), cohorts });
    } else {
      for (const cohort of cohorts) {
        await acts.movePointer({
          cohort,
          stage: 'candidate',
          digest: null,
          expected: this.candidate!.digest,
          rolloutId: this.req.rolloutId,
          reason: 'rollback',
        });
      }
    }
  }

  /**
   * One compensation, tried until it is done: each round is the activity's own attempts (`retry`); a round
   * that fails is followed by a pause (30 s doubling to at most 10 minutes) and another round, without a
   * limit. The first failed round and every tenth are a decision-log line (`compensation-retry`) and a
   * `compensation-failing` notification; `status` shows the compensation as what the rollout waits on. The
   * rollout cannot end meanwhile, so it never ends with its candidate where it was not promoted. Older
   * rollouts (before patch `fault-tolerance`) fail as their histories did.
   */
  private async untilDone(c: Compensation, cohorts: string[]): Promise<void> {
    const what =
      c.kind === 'revertWave'
        ? `revert of wave ${c.wave} in ${cohorts.join(', ')}`
        : c.kind === 'endShadow'
          ? `end of the shadow mirror in ${cohorts.join(', ')}`
          : `clearing the candidate pointer of ${cohorts.join(', ')}`;
    let firstFailure: string | undefined;
    for (let round = 1; ; round++) {
      try {
        await this.waitOn(`compensation: ${what}`, () => this.undo(c, cohorts));
        if (round > 1) {
          this.record({
            phase: this.phase,
            action: 'compensation-done',
            reason: `compensation ${what} done after ${round} rounds (failing since ${firstFailure})`,
          });
        }
        return;
      } catch (err) {
        if (!this.faultTolerance) throw err;
        firstFailure ??= new Date().toISOString();
        const pauseMs = Math.min(COMPENSATION_PAUSE_MS * 2 ** (round - 1), COMPENSATION_PAUSE_MAX_MS);
        const why = `compensation ${what} failed (round ${round}, failing since ${firstFailure}): ${causeMessage(err)}; tried again in ${Math.round(pauseMs / 1000)} s, and until it is done: the rollout cannot end before`;
        if (round === 1 || round % COMPENSATION_NOTIFY_EVERY === 0) {
          const entry = this.record({
            phase: this.phase,
            wave: c.kind === 'revertWave' ? c.wave : undefined,
            ...(cohorts.length === 1 ? { cohort: cohorts[0] } : {}),
            action: 'compensation-retry',
            reason: why,
          });
          this.notify('compensation-failing', entry);
        }
        await this.waitOn(
          `compensation: ${what}, failing: ${causeMessage(err)}`,
          () => sleep(pauseMs),
          pauseMs,
        );
      }
    }
  }

  /** Forgets the compensations of a cohort whose promotion is final. */
  settle(cohort: string): void {
    for (const c of this.compensations) c.cohorts = c.cohorts.filter((x) => x !== cohort);
  }

  async rollbackCohort(
    cohort: string,
    state: 'rolled_back' | 'held' | 'aborted',
    why: string,
    d?: CohortDecision,
  ) {
    const prev = this.phase;
    this.phase = 'rollback';
    this.setState(cohort, state, d ? headline(d) : why);
    await this.compensate([cohort]);
    const entry = this.record({
      phase: 'rollback',
      wave: this.wave,
      cohort,
      action: state === 'held' ? 'withdraw' : 'rollback',
      reason: why,
      metrics: d?.metrics,
    });
    this.notify('rollback', entry);
    this.phase = prev;
  }

  // ---- phases -----------------------------------------------------------------------------------

  /**
   * The patches this run follows, read before the handlers are set: an update that arrives together with
   * the start is then validated by the rules of this run (a resume of a rollout that is not paused is
   * refused as such, not as a rollout without pause).
   */
  readPatches(): void {
    this.engine = patched(PATCHES.decisionEngine) ? 2 : 1;
    this.scopedFailures = patched(PATCHES.cohortScopedFailures);
    this.notifying = patched(PATCHES.notifyWebhook);
    this.quorum = patched(PATCHES.quorumGates);
    this.controls = patched(PATCHES.operatorControls);
    this.faultTolerance = patched(PATCHES.faultTolerance);
  }

  async run(): Promise<void> {
    // Only a rollout started with FleetgatePhase set upserts: its start proved that the namespace has the
    // attributes registered (an upsert of an unregistered one would fail every workflow task).
    if (
      workflowInfo().typedSearchAttributes.get(SEARCH_ATTRIBUTES.phase) !== undefined &&
      patched(PATCHES.searchAttributes)
    ) {
      this.searchAttributes = true;
      upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.phase, value: this.phase }]);
    }
    await this.register();
    await this.bench();
    await this.shadow();
    await this.canary();
    await this.labelWait();
    await this.finalAnalysis();
  }

  private fleetRef() {
    return { rolloutId: this.req.rolloutId, manifest: this.req.fleet.manifest };
  }

  /** What an event batch needs to request labels within the policy's daily budget (none: undefined). */
  private labeling() {
    const dailyBudget = this.policy.labelWait.dailyBudget;
    return dailyBudget === undefined ? undefined : { dailyBudget };
  }

  async register(): Promise<void> {
    this.phase = 'register';
    const fleet = await this.reads.describeFleet(this.fleetRef());
    this.mirrors = fleet.mirrors === true;
    // Production's own model with another serving configuration (a threshold) is a rollout of its own.
    this.configExperiment =
      fleet.candidateConfig !== undefined && patched(PATCHES.configExperiments)
        ? fleet.candidateConfig
        : undefined;
    const known = fleet.cohorts.map((c) => c.name);
    const wanted = this.policy.cohorts ?? known;
    const unknown = wanted.filter((c) => !known.includes(c));
    if (unknown.length > 0) {
      throw new RolloutEnded(
        'rejected',
        'register',
        `policy.cohorts names cohorts the fleet "${fleet.name}" does not have: ${unknown.join(', ')}; known: ${known.join(', ')}`,
      );
    }
    for (const name of wanted)
      this.cohorts.set(name, { cohort: name, state: 'pending', wave: 0, vehicles: 0 });
    this.skus = new Map(fleet.skus.map((s) => [s.name, s]));
    this.cohortSku = new Map(fleet.cohorts.map((c) => [c.name, c.sku]));

    const production = await this.reads.lookupProduction({ cohorts: wanted });
    let candidate: ModelRecord;
    try {
      candidate = await this.reads.registerCandidate({
        rolloutId: this.req.rolloutId,
        packDir: this.req.candidate.pack,
        cohorts: wanted,
        allowMajorBump: this.req.candidate.allowMajorBump === true,
      });
    } catch (err) {
      throw new RolloutEnded('rejected', 'register', `candidate pack refused: ${causeMessage(err)}`);
    }
    this.candidate = candidate;
    this.versions[candidate.digest] = candidate.version;
    this.modelNames[candidate.digest] = candidate.name;
    for (const cohort of wanted) {
      const prod = production.byCohort[cohort]!;
      this.production.set(cohort, prod.digest);
      this.versions[prod.digest] = prod.version;
      this.modelNames[prod.digest] = prod.name;
      const problems = compareContracts(prod.contract, candidate.contract);
      if (problems.length > 0) {
        throw new RolloutEnded(
          'rejected',
          'register',
          `candidate contract differs from production ${prod.name}@${prod.version} (cohort ${cohort}): ${problems.join('; ')}`,
        );
      }
      if (prod.digest === candidate.digest && !this.configExperiment) {
        throw new RolloutEnded(
          'rejected',
          'register',
          `candidate ${candidate.name}@${candidate.version} is already production for cohort ${cohort}`,
        );
      }
    }
    this.push({ kind: 'clearCandidatePointer', cohorts: [...wanted] });
    for (const cohort of wanted) {
      try {
        await acts.movePointer({
          cohort,
          stage: 'candidate',
          digest: candidate.digest,
          expected: null,
          rolloutId: this.req.rolloutId,
          reason: `rollout ${this.req.rolloutId} started by ${this.req.requestedBy}`,
        });
      } catch (err) {
        // Another rollout holds the cohort: this one ends rejected, with its report; the pointers it did
        // take are given back by its compensation, the other rollout's are left alone.
        if (failureType(err) === ErrorType.PointerConflict && patched(PATCHES.faultTolerance)) {
          throw new RolloutEnded('rejected', 'register', `cohort ${cohort} is busy: ${causeMessage(err)}`);
        }
        throw err;
      }
    }
    this.record({
      phase: 'register',
      action: 'registered',
      reason:
        `${candidate.name}@${candidate.version}` +
        (candidate.release !== undefined ? ` release ${candidate.release}` : '') +
        ` (${candidate.digest.slice(0, 12)})` +
        (candidate.signer ? `, signed by ${candidate.signer.slice(0, 16)},` : '') +
        ` registered; contract matches production in ${wanted.length} cohort(s)` +
        (this.configExperiment && [...this.production.values()].includes(candidate.digest)
          ? `; a configuration experiment: production's model served with threshold ${this.configExperiment.threshold}`
          : ''),
    });
    this.upsertModels();
  }

  private skus = new Map<string, Sku>();
  /** Version of every model digest in play: the simulated fleet slows some versions down on some SKUs. */
  private readonly versions: Record<string, string> = {};
  private cohortSku = new Map<string, string>();
  /** Each cohort's statistics at its latest canary look. */
  private lastStats = new Map<string, CohortStats>();

  async bench(): Promise<void> {
    this.phase = 'bench';
    const skuNames = [...new Set([...this.cohorts.keys()].map((c) => this.cohortSku.get(c)!))].sort();
    const results = await Promise.all(
      skuNames.map((name) =>
        this.benchReads.benchModel({
          rolloutId: this.req.rolloutId,
          digest: this.candidate!.digest,
          version: this.candidate!.version,
          recordKey: this.candidate!.recordKey,
          sku: this.skus.get(name)!,
          goldenInputs: this.policy.bench.goldenInputs,
          repeats: this.policy.bench.repeats,
        }),
      ),
    );
    this.benches.push(...results);
    const failed = results.filter((r) => !r.passed);
    for (const r of results) {
      this.record({
        phase: 'bench',
        action: r.passed ? 'bench-pass' : 'bench-fail',
        reason: `${r.sku}: p95 ${r.p95Ms.toFixed(3)} ms vs budget ${r.budgetMs} ms, deterministic ${r.deterministic}, contract ${r.contractOk ? 'ok' : 'broken'}${r.reason ? `: ${r.reason}` : ''}`,
      });
    }
    if (failed.length === 0) return;
    if (this.scopedFailures && failed.length < results.length) {
      // Only the cohorts on a failing SKU are left out; the others go on.
      const rejected = [...this.cohorts.keys()].filter((c) =>
        failed.some((f) => f.sku === this.cohortSku.get(c)),
      );
      for (const cohort of rejected) {
        const sku = this.cohortSku.get(cohort)!;
        const why = failed.find((f) => f.sku === sku)?.reason ?? 'failed';
        this.setState(cohort, 'rejected', `bench failed on ${sku}: ${why}`);
        this.record({
          phase: 'bench',
          cohort,
          action: 'rejected',
          reason: `the candidate failed the bench on ${sku} (${why}); ${cohort} runs on ${sku} and is left out of the rollout, the other cohorts go on`,
        });
      }
      await this.compensate(rejected);
      return;
    }
    for (const c of this.cohorts.values()) c.state = 'rejected';
    throw new RolloutEnded(
      'rejected',
      'bench',
      `bench failed on ${failed.map((f) => `${f.sku} (${f.reason ?? 'failed'})`).join(', ')}`,
    );
  }

  async shadow(): Promise<void> {
    this.phase = 'shadow';
    // Cohorts a failed bench left out stay out (with engine 1 every cohort is still pending here).
    const cohorts = [...this.cohorts.values()].filter((c) => c.state === 'pending').map((c) => c.cohort);
    for (const c of cohorts) this.setState(c, 'shadow');
    // A service's gateway mirrors to the candidate from the first shadow batch on: a cohort that leaves
    // the shadow without a wave (rejected, rolled back, aborted) has its mirror stopped.
    if (this.mirrors && patched(PATCHES.shadowMirrorEnded))
      this.push({ kind: 'endShadow', cohorts: [...cohorts] });
    if (patched(PATCHES.shadowEdge)) {
      await this.shadowFiltered(cohorts);
      return;
    }
    await sleep(parseDuration(this.policy.shadow.duration)!);
    const to = this.simNow();
    await acts.runShadow({
      ...this.fleetRef(),
      candidateDigest: this.candidate!.digest,
      cohorts,
      share: this.policy.shadow.share,
      fromMs: this.startMs,
      toMs: to,
      startMs: this.startMs,
      versions: this.versions,
      labeling: this.labeling(),
    });
    this.lastCollectedSimMs = to;
    const stats = await this.reads.analyze({
      rolloutId: this.req.rolloutId,
      phase: 'shadow',
      cohorts,
      asOfMs: to,
    });
    await this.applyShadowVerdicts(decideShadow(this.policy, stats), to);
  }

  /**
   * Records each cohort's shadow verdict and carries it out: a failed cohort is rejected and
   * compensated, a passed one goes on to the canary. Ends the rollout when no cohort is left.
   */
  private async applyShadowVerdicts(verdicts: ShadowVerdict[], to: number): Promise<void> {
    for (const v of verdicts) {
      // A cohort an operator rolled back during the shadow stays rolled back.
      if (this.controls && this.isFinal(v.cohort)) continue;
      this.record({
        phase: 'shadow',
        cohort: v.cohort,
        action: v.passed ? 'shadow-pass' : 'shadow-fail',
        dataAsOf: new Date(to).toISOString(),
        reason: v.reason,
      });
      if (!v.passed) {
        this.setState(v.cohort, 'rejected', `shadow gate: ${v.reason}`);
        await this.compensate([v.cohort]);
      } else {
        this.setState(
          v.cohort,
          'canary',
          `shadow: disagreement ${(v.disagreement * 100).toFixed(1)}%, latency x${v.latencyRatio.toFixed(2)}`,
        );
      }
    }
    if (this.active().length === 0) {
      throw new RolloutEnded('rejected', 'shadow', 'every cohort failed its shadow gate');
    }
  }

  /**
   * Shadow with the vehicles' upload filter, in windows of `shadow.checkEvery` (a quarter of the duration
   * by default). After each window but the last the upload budgets are checked: a cohort whose vehicles
   * hit their budget too often stops and is rejected; one that reached its upload cap stops collecting.
   * At the end every cohort still in shadow is judged (policies/shadow.ts).
   */
  async shadowFiltered(cohorts: string[]): Promise<void> {
    const sh = this.policy.shadow;
    const total = parseDuration(sh.duration)!;
    const step = sh.checkEvery !== undefined ? parseDuration(sh.checkEvery)! : Math.ceil(total / 4);
    const edge = {
      sample: sh.sample,
      lowConfidence: sh.lowConfidence,
      ...(sh.uploadBudget ? { perVehiclePerDay: sh.uploadBudget.perVehiclePerDay } : {}),
    };
    let collecting = [...cohorts];
    let from = this.startMs;
    for (let elapsed = 0; elapsed < total && collecting.length > 0;) {
      const dt = Math.min(step, total - elapsed);
      await this.waitOn('the end of the shadow window', () => sleep(dt), dt);
      elapsed += dt;
      // An operator's emergency rollback ends a cohort's shadow too.
      collecting = collecting.filter((c) => this.cohorts.get(c)!.state === 'shadow');
      if (collecting.length === 0) break;
      const to = this.simNow();
      await acts.runShadow({
        ...this.fleetRef(),
        candidateDigest: this.candidate!.digest,
        cohorts: collecting,
        share: sh.share,
        fromMs: from,
        toMs: to,
        startMs: this.startMs,
        versions: this.versions,
        labeling: this.labeling(),
        edge,
      });
      from = to;
      this.lastCollectedSimMs = to;
      if (elapsed >= total) break;
      await this.checkpoint();
      const stats = await this.reads.analyze({
        rolloutId: this.req.rolloutId,
        phase: 'shadow',
        cohorts: collecting,
        asOfMs: to,
      });
      for (const check of checkShadowBudget(this.policy, stats)) {
        if (check.action === 'continue') continue;
        collecting = collecting.filter((c) => c !== check.cohort);
        this.record({
          phase: 'shadow',
          cohort: check.cohort,
          action: check.action === 'reject' ? 'shadow-fail' : 'shadow-stop',
          dataAsOf: new Date(to).toISOString(),
          reason: check.reason,
        });
        if (check.action === 'reject') {
          this.setState(check.cohort, 'rejected', `shadow budget: ${check.reason}`);
          await this.compensate([check.cohort]);
        }
      }
    }
    await this.checkpoint();
    const judged = cohorts.filter((c) => this.cohorts.get(c)!.state === 'shadow');
    const to = this.lastCollectedSimMs;
    const stats = judged.length
      ? await this.reads.analyze({
          rolloutId: this.req.rolloutId,
          phase: 'shadow',
          cohorts: judged,
          asOfMs: to,
        })
      : [];
    await this.applyShadowVerdicts(judgeShadow(this.policy, stats), to);
  }

  async canary(): Promise<void> {
    this.phase = 'canary';
    const waves = this.policy.waves;
    for (let i = 0; i < waves.length; i++) {
      const w = waves[i]!;
      if (this.active().length === 0) break;
      if (w.approval && !(await this.gate(i + 1, w.approval))) break;
      await this.checkpoint();
      const cohorts = this.active();
      if (cohorts.length === 0) break;
      this.wave = i + 1;
      this.look = 0;
      this.push({ kind: 'revertWave', wave: this.wave, cohorts: [...cohorts] });
      this.delivering = true;
      const deliver = () =>
        acts.deliverWave({
          ...this.fleetRef(),
          wave: this.wave,
          percent: w.percent,
          cohorts,
          digest: this.candidate!.digest,
        });
      // An abort cancels a delivery in flight and waits until its worker confirms (or is found dead by
      // its heartbeat timeout); the wave's revert, pushed above, then undoes whatever landed. Older
      // rollouts delivered in a non-cancellable scope.
      const delivered = await this.waitOn(`the delivery of wave ${this.wave}`, () =>
        this.faultTolerance ? deliver() : CancellationScope.nonCancellable(deliver),
      ).finally(() => (this.delivering = false));
      // The wave's route has no mirror: the shadow of its cohorts has ended.
      for (const comp of this.compensations) {
        if (comp.kind === 'endShadow') comp.cohorts = comp.cohorts.filter((x) => !cohorts.includes(x));
      }
      for (const c of cohorts) {
        const s = this.cohorts.get(c)!;
        s.wave = this.wave;
        // A cohort rolled back by an operator while the wave was delivered has been reverted since.
        if (!(this.controls && this.isFinal(c))) s.vehicles = delivered.vehicles[c] ?? 0;
      }
      const onCandidate = cohorts.map((c) => `${c} ${delivered.vehicles[c] ?? 0}`).join(', ');
      this.record({
        phase: 'canary',
        wave: this.wave,
        action: 'deliver',
        reason: this.mirrors
          ? `wave ${this.wave} (${w.percent}%) routed to the candidate on the gateway: ${onCandidate} callers`
          : `wave ${this.wave} (${w.percent}%) delivered as OTA job ${delivered.jobId}: ${onCandidate} vehicles${installSummary(delivered.installs, cohorts)}`,
      });
      if (this.scopedFailures) await this.abortFailedInstalls(delivered.installs ?? {}, cohorts);
      if (this.active().length === 0) break;

      const interval = Math.max(1, Math.floor(parseDuration(w.hold)! / w.looks));
      let extra = 0;
      for (let k = 1; ; k++) {
        this.look = k;
        await this.waitOn(`look ${k} of wave ${this.wave}`, () => sleep(interval), interval);
        await this.checkpoint();
        const last = k >= w.looks;
        const decisions = await this.analyzeLook({
          stage: 'canary',
          isLastLookOfWave: last,
          extraLooksUsed: extra,
        });
        if (!last) continue;
        const extend = decisions.some((d) => d.action === 'extend');
        const short =
          w.minExposure !== undefined && patched(PATCHES.waveExposure)
            ? this.shortOfExposure(w.minExposure)
            : [];
        if ((extend || short.length > 0) && extra < this.policy.analysis.maxExtraLooks) {
          extra++;
          if (short.length > 0 && !extend) {
            this.record({
              phase: 'canary',
              wave: this.wave,
              look: k,
              action: 'extend',
              reason: `wave ${this.wave} extended: candidate exposure below ${w.minExposure} vehicle-hours in ${short.map((s) => `${s.cohort} (${s.hours.toFixed(1)})`).join(', ')}`,
            });
          }
          continue;
        }
        for (const s of short) {
          await this.rollbackCohort(
            s.cohort,
            'held',
            `wave ${this.wave}: the candidate drove ${s.hours.toFixed(1)} vehicle-hours in ${s.cohort}, below the wave's minExposure of ${w.minExposure}, after ${extra} extra looks; held, never promoted on too little exposure`,
          );
        }
        break;
      }
    }
  }

  /**
   * A wave whose installs failed on more than `delivery.maxFailureShare` of a cohort's targeted vehicles
   * is aborted and reverted in that cohort; the other cohorts go on. Deferred vehicles (a precondition
   * did not hold) are not failures.
   */
  async abortFailedInstalls(
    installs: Record<string, { targeted: number; failed: number; deferred: number }>,
    cohorts: string[],
  ): Promise<void> {
    const max = this.policy.delivery.maxFailureShare;
    for (const cohort of cohorts) {
      const i = installs[cohort];
      if (!i || i.targeted === 0) continue;
      const share = i.failed / i.targeted;
      if (share <= max) continue;
      const sku = this.cohortSku.get(cohort) ?? '?';
      await this.rollbackCohort(
        cohort,
        'rolled_back',
        `wave ${this.wave} aborted in ${cohort}: ${i.failed} of ${i.targeted} installs failed on ${sku} ` +
          `(${(share * 100).toFixed(1)}%, above delivery.maxFailureShare ${(max * 100).toFixed(1)}%); reverted, the other cohorts go on`,
      );
    }
  }

  /** Active cohorts whose candidate arm has driven fewer than `min` vehicle-hours, as of the last look. */
  private shortOfExposure(min: number): { cohort: string; hours: number }[] {
    return this.active()
      .map((cohort) => ({ cohort, hours: this.lastStats.get(cohort)?.candidate.safety?.exposureHours ?? 0 }))
      .filter((s) => s.hours < min);
  }

  /** Collects telemetry up to now, analyzes it and carries out the decisions of one look. */
  async analyzeLook(ctx: { stage: 'canary' | 'final'; isLastLookOfWave: boolean; extraLooksUsed: number }) {
    const cohorts = this.active();
    if (cohorts.length === 0) return [];
    const now = this.simNow();
    if (ctx.stage === 'canary' && now > this.lastCollectedSimMs) {
      await this.waitOn(`the telemetry of look ${this.look}`, () =>
        this.reads.collectTelemetry({
          ...this.fleetRef(),
          cohorts,
          candidateDigest: this.candidate!.digest,
          fromMs: this.lastCollectedSimMs,
          toMs: now,
          startMs: this.startMs,
          versions: this.versions,
          labeling: this.labeling(),
        }),
      );
      this.lastCollectedSimMs = now;
    }
    let stats: CohortStats[] = await this.waitOn(`the analysis of look ${this.look}`, () =>
      this.reads.analyze({
        rolloutId: this.req.rolloutId,
        phase: 'canary',
        cohorts,
        asOfMs: now,
      }),
    );
    // A cohort an operator rolled back during the analysis is decided no more.
    if (this.controls) stats = stats.filter((s) => !this.isFinal(s.cohort));
    for (const s of stats) this.lastStats.set(s.cohort, s);
    if (this.engine === 2) return this.carryOut(ctx, stats, now);
    const { decisions, state } = decideLook(this.policy, ctx, stats, this.seq);
    this.seq = state;
    this.recordLook(decisions, now);
    for (const d of decisions) {
      if (d.action === 'rollback') await this.rollbackCohort(d.cohort, 'rolled_back', d.reason, d);
      else if (d.action === 'hold') await this.rollbackCohort(d.cohort, 'held', d.reason, d);
    }
    return decisions;
  }

  /**
   * Engine 2: decides one look for every cohort and the fleet, records it, rolls back what was harmed
   * and puts what could not be decided to the reviewers. Escalated cohorts the reviewers approve come
   * back as `promote` (final look) or `continue` (canary); the others are rolled back or held.
   */
  private async carryOut(
    ctx: { stage: 'canary' | 'final'; isLastLookOfWave: boolean; extraLooksUsed: number },
    stats: CohortStats[],
    now: number,
  ): Promise<CohortDecision[]> {
    const { decisions, fleet, state } = engineLook(this.policy, ctx, stats, this.seq, this.cohorts.size);
    this.seq = state;
    this.recordLook(decisions, now);
    if (fleet.action === 'rollback' || (ctx.stage === 'final' && fleet.pooled.length > 0)) {
      this.record({
        phase: this.phase,
        wave: this.wave,
        look: this.look,
        action: fleet.action === 'rollback' ? 'fleet-rollback' : 'fleet-pooled',
        reason: fleet.reason,
        metrics: fleet.pooled,
        dataAsOf: new Date(now).toISOString(),
      });
    }
    for (const d of decisions) {
      if (d.action === 'rollback') await this.rollbackCohort(d.cohort, 'rolled_back', d.reason, d);
    }
    const escalated = decisions.filter((d) => d.action === 'escalate');
    if (escalated.length > 0) {
      const approved = await this.escalate(escalated);
      for (const d of escalated) {
        if (!approved.includes(d.cohort)) continue;
        d.action = ctx.stage === 'final' ? 'promote' : 'continue';
        d.reason = `${d.reason} Approved by the reviewers (${this.lastApprovals.join(', ')}).`;
      }
    }
    return decisions;
  }

  private lastApprovals: string[] = [];

  /** Shows each cohort's decision in the status and logs it with the data time of the look. */
  private recordLook(decisions: CohortDecision[], now: number): void {
    for (const d of decisions) {
      const s = this.cohorts.get(d.cohort)!;
      s.metrics = d.metrics;
      s.headline = headline(d);
      this.record({
        phase: this.phase,
        wave: this.wave,
        look: this.look,
        cohort: d.cohort,
        action: d.action,
        reason: d.reason,
        metrics: d.metrics,
        dataAsOf: new Date(now).toISOString(),
      });
    }
  }

  /**
   * Puts cohorts the engine could not decide to the reviewers, with the evidence. Returns the cohorts
   * approved. A rejection rolls them back; no answer by the timeout (or no reviewers at all) leaves
   * them held: inconclusive data never promotes by default.
   */
  async escalate(ds: CohortDecision[]): Promise<string[]> {
    const cohorts = ds.map((d) => d.cohort);
    const { required, timeout, excludeInitiator } = this.policy.analysis.escalation;
    if (this.policy.reviewers.length === 0) {
      for (const d of ds) {
        await this.rollbackCohort(
          d.cohort,
          'held',
          `${d.reason} The policy names no reviewers to escalate to, so the cohort stays held.`,
          d,
        );
      }
      return [];
    }
    const timeoutMs = parseDuration(timeout)!;
    for (const c of cohorts) this.setState(c, 'escalated');
    const pending = this.openGate({
      gate: 'escalation',
      kind: 'escalation',
      required,
      timeoutMs,
      excludeInitiator: this.quorum && excludeInitiator === true,
      cohorts,
      evidence: ds.map((d) => `${d.cohort}: ${headline(d)}`),
    });
    const opened = this.record({
      phase: this.phase,
      wave: this.wave,
      action: 'gate-open',
      reason: `escalation: waiting for ${required} approval(s) of gate "escalation" to go on with ${cohorts.join(', ')}, which the data could not decide; approve to ${this.phase === 'analysis' ? 'promote' : 'continue'}, reject to roll back`,
    });
    this.notify('escalated', opened);
    const decided = await this.awaitGate(pending, timeoutMs);
    this.pendingGate = undefined;
    const rejection = this.rejection;
    this.rejection = undefined;
    // Cohorts an operator rolled back while the gate was open are decided already.
    const open = this.controls ? ds.filter((d) => !this.isFinal(d.cohort)) : ds;
    if (rejection) {
      for (const d of open) {
        await this.rollbackCohort(
          d.cohort,
          'rolled_back',
          `escalation rejected by ${rejection.reviewer}: ${rejection.reason}`,
          d,
        );
      }
      return [];
    }
    if (!decided || pending.approvals.length < pending.required) {
      for (const d of open) {
        await this.rollbackCohort(
          d.cohort,
          'held',
          `escalation unanswered after ${timeout} (${pending.approvals.length}/${pending.required} approvals): held, never promoted by default. ${d.reason}`,
          d,
        );
      }
      return [];
    }
    this.lastApprovals = [...pending.approvals];
    const approved = open.map((d) => d.cohort);
    for (const c of approved) this.setState(c, 'canary');
    this.passed(pending, approved);
    return approved;
  }

  /** The decision-log line of a gate whose quorum approved: who, for which cohorts, on what evidence. */
  private passed(pending: PendingGate, cohorts?: string[]): void {
    const evidence = this.quorum ? (pending.evidence ?? []) : [];
    this.record({
      phase: this.phase,
      wave: pending.wave,
      action: 'gate-passed',
      ...(this.quorum ? { by: pending.approvals.join(', ') } : {}),
      reason:
        `gate "${pending.gate}" approved by ${pending.approvals.join(', ')}` +
        (cohorts ? ` for ${cohorts.join(', ')}` : '') +
        (evidence.length > 0 ? `; evidence: ${evidence.join('; ')}` : ''),
      ...(evidence.length > 0 ? { evidence: [...evidence] } : {}),
    });
  }

  /**
   * A reviewer gate before wave `wave`. Approved by its quorum: the wave goes on. Rejected: the rollout
   * ends rejected. Unanswered by its timeout: with quorum gates the cohorts waiting for it are held
   * (compensated, never promoted) and `false` is returned; in older histories the rollout was aborted.
   */
  async gate(wave: number, approval: NonNullable<Policy['waves'][number]['approval']>): Promise<boolean> {
    const timeoutMs = parseDuration(approval.timeout)!;
    const cohorts = this.quorum ? this.active() : undefined;
    const pending = this.openGate({
      gate: approval.gate,
      kind: 'wave',
      required: approval.required,
      timeoutMs,
      excludeInitiator: this.quorum && approval.excludeInitiator === true,
      cohorts,
      evidence: cohorts && this.evidenceOf(cohorts),
    });
    pending.wave = wave;
    const opened = this.record({
      phase: this.phase,
      wave,
      action: 'gate-open',
      reason: `waiting for ${approval.required} approval(s) of gate "${approval.gate}" before wave ${wave}${cohorts ? ` (${cohorts.join(', ')})` : ''}`,
    });
    this.notify('gate-pending', opened);
    const decided = await this.awaitGate(pending, timeoutMs);
    this.pendingGate = undefined;
    if (this.rejection) {
      const r = this.rejection;
      throw new RolloutEnded(
        'rejected',
        this.phase,
        `gate "${r.gate}" rejected by ${r.reviewer}: ${r.reason}`,
      );
    }
    const quorum = pending.approvals.length >= pending.required;
    if (!decided || !quorum) {
      const why = `gate "${approval.gate}" timed out after ${approval.timeout} with ${pending.approvals.length}/${pending.required} approval(s)`;
      if (!this.quorum) throw new RolloutEnded('aborted', this.phase, why);
      for (const c of (cohorts ?? []).filter((x) => !this.isFinal(x))) {
        await this.rollbackCohort(
          c,
          'held',
          `${why} before wave ${wave}: ${c} held, its waves withdrawn, never promoted without its reviewers`,
        );
      }
      return false;
    }
    this.passed(pending);
    return true;
  }

  async labelWait(): Promise<void> {
    if (this.active().length === 0) return;
    this.phase = 'label-wait';
    if (patched(PATCHES.labelWaitPerCohort)) return this.labelWaitPerCohort();
    const { coverage: wanted, poll, timeout } = this.policy.labelWait;
    const deadline = Date.now() + parseDuration(timeout)!;
    await this.reads.requestLabels({ rolloutId: this.req.rolloutId, asOfMs: this.simNow() });
    for (;;) {
      const cov = await this.reads.labelCoverage({ rolloutId: this.req.rolloutId, asOfMs: this.simNow() });
      if (cov.coverage >= wanted) {
        this.record({
          phase: 'label-wait',
          action: 'labels-ready',
          reason: `label coverage ${(cov.coverage * 100).toFixed(1)}% (${cov.labeled}/${cov.requested}) reached ${(wanted * 100).toFixed(0)}%`,
        });
        return;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        this.record({
          phase: 'label-wait',
          action: 'labels-timeout',
          reason: `label coverage ${(cov.coverage * 100).toFixed(1)}% (${cov.labeled}/${cov.requested}) below ${(wanted * 100).toFixed(0)}% at the timeout; analysing what arrived`,
        });
        return;
      }
      await sleep(Math.min(parseDuration(poll)!, left));
    }
  }

  /**
   * Waits until every active cohort's label coverage (requests counted as `labelWait.maturity` says)
   * reaches `labelWait.coverage`, polling every `poll`. At the timeout the cohorts still below it are
   * held: their waves withdrawn, never promoted, with their coverage in the decision log; the others go
   * on to the analysis.
   */
  private async labelWaitPerCohort(): Promise<void> {
    const { coverage: wanted, poll, timeout, maturity } = this.policy.labelWait;
    const deadline = Date.now() + parseDuration(timeout)!;
    const maturityMs = maturity === undefined ? 0 : parseDuration(maturity)!;
    const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
    const shown = (c: CoverageCount) =>
      `${pct(c.coverage)} (${c.labeled}/${c.requested}${c.young ? `, ${c.young} younger than the maturity not counted` : ''})`;
    for (;;) {
      await this.checkpoint();
      const cohorts = this.active();
      if (cohorts.length === 0) return;
      const asOfMs = this.simNow();
      const cov = await this.reads.labelCoverage({
        rolloutId: this.req.rolloutId,
        asOfMs,
        maturityMs,
        cohorts,
      });
      const of = (c: string) => cov.cohorts?.[c] ?? { requested: 0, labeled: 0, coverage: 0 };
      const short = cohorts.filter((c) => of(c).coverage < wanted);
      if (short.length === 0) {
        this.record({
          phase: 'label-wait',
          action: 'labels-ready',
          dataAsOf: new Date(asOfMs).toISOString(),
          reason: `label coverage reached ${pct(wanted)} in every cohort: ${cohorts.map((c) => `${c} ${shown(of(c))}`).join(', ')}`,
        });
        return;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        const ready = cohorts.filter((c) => !short.includes(c));
        this.record({
          phase: 'label-wait',
          action: 'labels-timeout',
          dataAsOf: new Date(asOfMs).toISOString(),
          reason: `label wait timed out after ${timeout}: ${short.map((c) => `${c} ${shown(of(c))}`).join(', ')} below ${pct(wanted)}, held; ${ready.length > 0 ? `${ready.map((c) => `${c} ${shown(of(c))}`).join(', ')} go on to the analysis` : 'no cohort goes on'}`,
        });
        for (const c of short) {
          await this.rollbackCohort(
            c,
            'held',
            `label coverage of ${c} ${shown(of(c))} below labelWait.coverage ${pct(wanted)} at the label wait's timeout (${timeout}): held, its waves withdrawn, never promoted without its labels`,
          );
        }
        return;
      }
      const pollMs = Math.min(parseDuration(poll)!, left);
      await this.waitOn(
        `labels: ${short.map((c) => `${c} ${shown(of(c))}`).join(', ')} below ${pct(wanted)}`,
        () => sleep(pollMs),
        pollMs,
      );
    }
  }

  async finalAnalysis(): Promise<void> {
    await this.checkpoint();
    if (this.active().length === 0) return;
    this.phase = 'analysis';
    const decisions = await this.analyzeLook({ stage: 'final', isLastLookOfWave: true, extraLooksUsed: 0 });
    this.phase = 'promote';
    let promote = decisions.filter(
      (d) => d.action === 'promote' && !(this.controls && this.isFinal(d.cohort)),
    );
    const approval = this.quorum ? this.policy.promotion?.approval : undefined;
    if (approval && promote.length > 0) promote = await this.promotionGate(approval, promote);
    await this.checkpoint();
    for (const d of promote) {
      // An operator may have rolled the cohort back while the rollout was paused.
      if (this.controls && this.isFinal(d.cohort)) continue;
      this.promoting = d.cohort;
      await CancellationScope.nonCancellable(async () => {
        const cand = this.candidate!.digest;
        const res = await acts.promoteCohort({ ...this.fleetRef(), cohort: d.cohort, digest: cand });
        await acts.movePointer({
          cohort: d.cohort,
          stage: 'production',
          digest: cand,
          expected: this.production.get(d.cohort)!,
          rolloutId: this.req.rolloutId,
          reason: headline(d),
        });
        await acts.movePointer({
          cohort: d.cohort,
          stage: 'candidate',
          digest: null,
          expected: cand,
          rolloutId: this.req.rolloutId,
          reason: 'promoted',
        });
        this.settle(d.cohort);
        const s = this.cohorts.get(d.cohort)!;
        s.state = 'promoted';
        s.vehicles = res.vehicles;
        const entry = this.record({
          phase: 'promote',
          cohort: d.cohort,
          action: 'promoted',
          reason: d.reason,
          metrics: d.metrics,
        });
        this.notify('promoted', entry);
      });
      this.promoting = undefined;
      this.upsertModels();
    }
  }

  /**
   * The policy's gate before the final promotion: it shows the cohorts about to be promoted and their
   * evidence. Approved: they are promoted. Rejected: the rollout ends rejected (everything compensated).
   * Unanswered by its timeout: they are held, never promoted.
   */
  private async promotionGate(
    approval: NonNullable<NonNullable<Policy['promotion']>['approval']>,
    ds: CohortDecision[],
  ): Promise<CohortDecision[]> {
    const timeoutMs = parseDuration(approval.timeout)!;
    const cohorts = ds.map((d) => d.cohort);
    const pending = this.openGate({
      gate: approval.gate,
      kind: 'promotion',
      required: approval.required,
      timeoutMs,
      excludeInitiator: approval.excludeInitiator,
      cohorts,
      evidence: ds.map((d) => `${d.cohort}: ${headline(d)}`),
    });
    const opened = this.record({
      phase: this.phase,
      action: 'gate-open',
      reason: `waiting for ${approval.required} approval(s) of gate "${approval.gate}" before promoting ${cohorts.join(', ')}`,
    });
    this.notify('gate-pending', opened);
    const decided = await this.awaitGate(pending, timeoutMs);
    this.pendingGate = undefined;
    if (this.rejection) {
      const r = this.rejection;
      throw new RolloutEnded(
        'rejected',
        this.phase,
        `gate "${r.gate}" rejected by ${r.reviewer}: ${r.reason}`,
      );
    }
    const open = ds.filter((d) => !this.isFinal(d.cohort));
    if (!decided || pending.approvals.length < pending.required) {
      for (const d of open) {
        await this.rollbackCohort(
          d.cohort,
          'held',
          `gate "${approval.gate}" unanswered after ${approval.timeout} (${pending.approvals.length}/${pending.required} approvals): ${d.cohort} held, never promoted without its reviewers`,
          d,
        );
      }
      return [];
    }
    this.passed(
      pending,
      open.map((d) => d.cohort),
    );
    for (const d of open) d.reason = `${d.reason} Promotion approved by ${pending.approvals.join(', ')}.`;
    return open;
  }
}

export async function rolloutWorkflow(input: RolloutRequestInput): Promise<RolloutResult> {
  const parsed = RolloutRequest.safeParse(input);
  if (!parsed.success) {
    throw ApplicationFailure.create({
      type: ErrorType.InvalidInput,
      nonRetryable: true,
      message: `invalid rollout request:\n${formatIssues(parsed.error, input)}`,
    });
  }
  const r = new Rollout(parsed.data);
  r.readPatches();
  setHandler(statusQuery, () => r.status());
  setHandler(approveUpdate, (a) => r.approve(a), { validator: (a) => r.validateApprove(a) });
  setHandler(rejectUpdate, (a) => r.reject(a), { validator: (a) => r.validateReject(a) });
  setHandler(abortUpdate, (a) => r.abort(a), { validator: (a) => r.validateAbort(a) });
  setHandler(pauseUpdate, (p) => r.pause(p), { validator: (p) => r.validatePause(p) });
  setHandler(resumeUpdate, (p) => r.resume(p), { validator: (p) => r.validateResume(p) });
  setHandler(rollbackCohortUpdate, (c) => r.emergencyRollback(c), {
    validator: (c) => r.validateRollbackCohort(c),
  });

  let outcome: RolloutOutcome = 'completed';
  let rejectedAt: Phase | undefined;
  let reason = '';
  let ended: DecisionLogEntry | undefined;
  try {
    await r.scope.run(() => r.run());
  } catch (err) {
    if (err instanceof RolloutEnded) {
      outcome = err.outcome;
      rejectedAt = err.outcome === 'rejected' ? err.phase : undefined;
      reason = err.why;
    } else if (isCancellation(err)) {
      outcome = 'aborted';
      reason = r.abortRequest
        ? `aborted by ${r.abortRequest.by}: ${r.abortRequest.reason}`
        : 'the workflow was cancelled';
    } else {
      outcome = 'aborted';
      reason = `stopped by an error: ${causeMessage(err)}`;
    }
    ended = r.record({ phase: r.phase, action: outcome, reason });
    r.phase = 'rollback';
    await r.compensate([...r.cohorts.keys()]);
    for (const c of r.cohorts.values()) {
      if (!FINAL_COHORT_STATES.includes(c.state)) c.state = outcome === 'rejected' ? 'rejected' : 'aborted';
    }
  }
  // An operator's emergency rollback still compensating is part of this outcome.
  if (r.controls) await condition(() => r.rollingBack === 0);
  r.outcome = outcome;
  if (outcome === 'completed') reason = summarize(r);
  if (r.notifying) {
    // The end is a decision of its own: logged (a completed rollout had no line for it) and notified once
    // its compensations have run; the report waits for every notification, so it lists any that failed.
    ended ??= r.record({ phase: r.phase, action: outcome, reason });
    r.notify(outcome, ended);
    await r.notified();
  }
  r.phase = 'done';
  if (r.searchAttributes) {
    r.upsertModels();
    upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.outcome, value: outcome }]);
  }

  const result: RolloutResult = {
    rolloutId: r.req.rolloutId,
    outcome,
    rejectedAt,
    reason,
    cohorts: [...r.cohorts.values()],
  };
  const report = await CancellationScope.nonCancellable(() =>
    acts.writeReport({
      rolloutId: r.req.rolloutId,
      report: {
        ...result,
        workflowId: workflowInfo().workflowId,
        runId: workflowInfo().runId,
        candidate: r.candidate,
        production: Object.fromEntries(r.production),
        policy: r.policy,
        benches: r.benches,
        compensations: r.compensationsRun,
        decisions: r.log,
        startedAt: new Date(r.startMs).toISOString(),
        finishedAt: new Date().toISOString(),
      },
    }),
  );
  result.reportPath = report.path;
  r.finished = true;
  await condition(allHandlersFinished);
  return result;
}

/** ", installs failed/deferred: ..." when any install failed or was deferred; "" otherwise. */
function installSummary(
  installs: Record<string, { targeted: number; failed: number; deferred: number }> | undefined,
  cohorts: string[],
): string {
  if (!installs) return '';
  const parts = cohorts
    .map((c) => [c, installs[c]] as const)
    .filter(([, i]) => i && (i.failed > 0 || i.deferred > 0))
    .map(([c, i]) => `${c} ${i!.failed} failed and ${i!.deferred} deferred of ${i!.targeted}`);
  return parts.length > 0 ? `; installs: ${parts.join(', ')}` : '';
}

function summarize(r: Rollout): string {
  const by = new Map<string, string[]>();
  for (const c of r.cohorts.values()) by.set(c.state, [...(by.get(c.state) ?? []), c.cohort]);
  return [...by.entries()].map(([state, cs]) => `${state}: ${cs.join(', ')}`).join('; ');
}

/** The error type of the innermost cause that has one (an activity failure wraps its ApplicationFailure). */
function failureType(err: unknown): string | undefined {
  let type: string | undefined;
  for (let e: unknown = err; e instanceof Error; e = (e as { cause?: unknown }).cause) {
    if (e instanceof ApplicationFailure && e.type) type = e.type;
  }
  return type;
}

function causeMessage(err: unknown): string {
  let e: unknown = err;
  // An activity failure wraps the ApplicationFailure that says what went wrong.
  while (e instanceof Error && (e as { cause?: unknown }).cause instanceof Error)
    e = (e as { cause?: unknown }).cause;
  return e instanceof Error ? e.message : String(e);
}

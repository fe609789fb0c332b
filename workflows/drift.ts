/**
 * driftCheckWorkflow: one drift check of the production models' input features, started by a Temporal
 * Schedule (`fleetgate drift schedule`) or at once (`fleetgate drift check`).
 *
 *   check (activity: statistics per cohort and feature, result stored) -> notify each drifted cohort
 *        -> with action "hold": pause the running rollouts of the drifted cohorts
 *
 * Deterministic code only: activities are imported as types, the input is validated with the same zod
 * schema as the CLI's, and the check's time is the workflow's clock. History carries the summary the
 * activity returns (verdicts and rounded statistics), never frames.
 */
import { ApplicationFailure, proxyActivities, workflowInfo } from '@temporalio/workflow';
import { ErrorType } from '../errors';
import { DriftCheckRequest, type DriftCheckRequestInput } from '../policies/drift-schema';
import { formatIssues } from '../policies/schema';
import type { createDriftActivities, DriftCheckSummary, HoldResult } from '../activities/drift';
import type { createNotifyActivities } from '../activities/notify';
import { ACTIVITY_RETRY } from './rollout';

const acts = proxyActivities<ReturnType<typeof createDriftActivities>>({
  startToCloseTimeout: '5m',
  retry: ACTIVITY_RETRY,
});
/** As the rollout's notifications: retried with backoff for at most 10 minutes, then given up. */
const notifyActs = proxyActivities<ReturnType<typeof createNotifyActivities>>({
  startToCloseTimeout: '30s',
  scheduleToCloseTimeout: '10m',
  retry: { ...ACTIVITY_RETRY, initialInterval: '2s', maximumInterval: '1m', maximumAttempts: 10 },
});

export interface DriftCheckOutcome extends DriftCheckSummary {
  scheduleId: string;
  action: 'alert' | 'hold';
  /** Drifted cohorts whose notification was given up. */
  notifyFailed: string[];
  /** With action hold and a drifted cohort: the rollouts paused and those that refused. */
  held?: HoldResult;
}

export async function driftCheckWorkflow(input: DriftCheckRequestInput): Promise<DriftCheckOutcome> {
  const parsed = DriftCheckRequest.safeParse(input);
  if (!parsed.success) {
    throw ApplicationFailure.create({
      type: ErrorType.InvalidInput,
      message: `invalid drift check request:\n${formatIssues(parsed.error, input)}`,
      nonRetryable: true,
    });
  }
  const req = parsed.data;
  const checkId = workflowInfo().workflowId;
  const asOfMs = Date.now();
  const summary = await acts.driftCheck({
    checkId,
    scheduleId: req.scheduleId,
    manifest: req.fleet.manifest,
    timeScale: req.fleet.timeScale,
    ...(req.cohorts ? { cohorts: req.cohorts } : {}),
    policy: req.policy,
    asOfMs,
  });
  const notifyFailed: string[] = [];
  for (const c of summary.cohorts) {
    if (c.verdict !== 'drift') continue;
    try {
      await notifyActs.notify({
        event: 'drift',
        rolloutId: req.scheduleId,
        cohort: c.cohort,
        phase: 'drift-check',
        at: new Date(asOfMs).toISOString(),
        reason: `${c.reason} (check ${checkId}, action ${req.policy.action})`,
        idempotencyKey: `${checkId}/${c.cohort}`,
      });
    } catch {
      notifyFailed.push(c.cohort);
    }
  }
  const outcome: DriftCheckOutcome = {
    ...summary,
    scheduleId: req.scheduleId,
    action: req.policy.action,
    notifyFailed,
  };
  if (req.policy.action === 'hold' && summary.drifted.length > 0) {
    const reasons = summary.cohorts.filter((c) => c.verdict === 'drift').map((c) => c.reason);
    outcome.held = await acts.holdRollouts({
      checkId,
      cohorts: summary.drifted,
      reason: `drift check ${checkId}: ${reasons.join('; ')}`,
    });
  }
  return outcome;
}

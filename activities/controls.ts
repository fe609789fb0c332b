/**
 * Operator controls of a running rollout through the Temporal client: pause, resume and the emergency
 * rollback of one cohort, each the validated update of workflows/definitions.ts. The CLI and scheduled
 * checks (a drift check holds rollouts with `by: "drift-check"`) use the same calls.
 *
 * A refusal by the workflow's validator (already paused, not paused, unknown cohort, a cohort already in
 * a final state, the rollout ended) comes back as `{ ok: false, refused }` with the validator's reason:
 * it left nothing in the rollout's history. Anything else (no such rollout, no worker answering) throws.
 * It never changes a rollout but through these updates. `startRolloutWorkflow` starts a rollout with its
 * search attributes when the namespace has them.
 */
import {
  WorkflowUpdateFailedError,
  type Client,
  type WorkflowHandle,
  type WorkflowStartOptions,
} from '@temporalio/client';
import type { RolloutRequestInput } from '../policies/schema';
import {
  pauseUpdate,
  SEARCH_ATTRIBUTES,
  WORKFLOW_TYPE,
  type RolloutResult,
  resumeUpdate,
  rollbackCohortUpdate,
  type PauseReceipt,
  type PauseRequest,
  type ResumeRequest,
  type RollbackCohortReceipt,
  type RollbackCohortRequest,
} from '../workflows/definitions';

/** The receipt of an accepted control, or the validator's reason for refusing it. */
export type ControlOutcome<T> = { ok: true; receipt: T } | { ok: false; refused: string };

/** The innermost message of an error chain: the validator's own words. */
function innermost(err: unknown): string {
  let e: unknown = err;
  while (e instanceof Error && (e as { cause?: unknown }).cause instanceof Error)
    e = (e as { cause?: unknown }).cause;
  return e instanceof Error ? e.message : String(e);
}

async function refusable<T>(run: () => Promise<T>): Promise<ControlOutcome<T>> {
  try {
    return { ok: true, receipt: await run() };
  } catch (err) {
    if (err instanceof WorkflowUpdateFailedError) return { ok: false, refused: innermost(err) };
    throw err;
  }
}

export function createRolloutControls({ client }: { client: Client }) {
  const handle = (rolloutId: string) => client.workflow.getHandle(rolloutId);
  return {
    /** Holds the rollout at its next safe point until it is resumed. */
    pause(rolloutId: string, req: PauseRequest): Promise<ControlOutcome<PauseReceipt>> {
      return refusable(() => handle(rolloutId).executeUpdate(pauseUpdate, { args: [req] }));
    },
    /** Lets a paused rollout go on from where it holds. */
    resume(rolloutId: string, req: ResumeRequest): Promise<ControlOutcome<PauseReceipt>> {
      return refusable(() => handle(rolloutId).executeUpdate(resumeUpdate, { args: [req] }));
    },
    /** Compensates one cohort at once (last in, first out) and ends it `rolled_back`; waits until done. */
    rollbackCohort(
      rolloutId: string,
      req: RollbackCohortRequest,
    ): Promise<ControlOutcome<RollbackCohortReceipt>> {
      return refusable(() => handle(rolloutId).executeUpdate(rollbackCohortUpdate, { args: [req] }));
    },
  };
}

export type RolloutControls = ReturnType<typeof createRolloutControls>;

/** Whether a start (or upsert) was refused because the namespace does not have a search attribute. */
export function unregisteredSearchAttribute(err: unknown): boolean {
  for (let e: unknown = err; e instanceof Error; e = (e as { cause?: unknown }).cause) {
    if (/search attribute/i.test(e.message) && /not defined|unknown|not registered|is not/i.test(e.message))
      return true;
  }
  return false;
}

/**
 * Starts a rollout with `FleetgatePhase` set: a rollout started so upserts its search attributes as it
 * moves (the start itself proves the namespace has them). A namespace without them refuses such a start;
 * the rollout is then started without them (it upserts nothing) and `searchAttributes` says so.
 */
export async function startRolloutWorkflow(
  client: Client,
  options: WorkflowStartOptions<(req: RolloutRequestInput) => Promise<RolloutResult>>,
): Promise<{ handle: WorkflowHandle; searchAttributes: boolean }> {
  const withAttributes = {
    ...options,
    typedSearchAttributes: [{ key: SEARCH_ATTRIBUTES.phase, value: 'register' as const }],
  };
  try {
    return { handle: await client.workflow.start(WORKFLOW_TYPE, withAttributes), searchAttributes: true };
  } catch (err) {
    if (!unregisteredSearchAttribute(err)) throw err;
    return { handle: await client.workflow.start(WORKFLOW_TYPE, options), searchAttributes: false };
  }
}

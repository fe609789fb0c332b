/**
 * Operator controls of a running rollout through the Temporal client: pause, resume and the emergency
 * rollback of one cohort, each the validated update of workflows/definitions.ts. The CLI and scheduled
 * checks (a drift check holds rollouts with `by: "drift-check"`) use the same calls.
 *
 * A refusal by the workflow's validator (already paused, not paused, unknown cohort, a cohort already in
 * a final state, the rollout ended) comes back as `{ ok: false, refused }` with the validator's reason:
 * it left nothing in the rollout's history. Anything else (no such rollout, no worker answering) throws.
 * It never changes a rollout but through these updates.
 */
import { WorkflowUpdateFailedError, type Client } from '@temporalio/client';
import {
  pauseUpdate,
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

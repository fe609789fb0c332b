/**
 * fleetInitWorkflow: `fleetgate fleet init` of a simulated vehicle fleet while a worker owns the fleet
 * database. Its one step is the `createSimulatedFleet` activity (activities/fleet-init.ts), which runs on
 * the task queue of that worker, the one process that may open the database; `fleet init` has registered
 * production in the registry before starting it, and waits for its result. Its workflow id is stable per
 * task queue and fleet (`fleetInitWorkflowId`), so inits started at once share one run.
 *
 * Deterministic code only: the activity is imported as a type; history carries the manifest path and the
 * fleet's name, vehicle count and store id, never a vehicle.
 */
import { ApplicationFailure, proxyActivities } from '@temporalio/workflow';
import { ErrorType } from '../errors';
import type { createFleetInitActivities, FleetInitInput, FleetInitResult } from '../activities/fleet-init';
import { ACTIVITY_RETRY, HEARTBEAT_TIMEOUT } from './rollout';

export const FLEET_INIT_WORKFLOW_TYPE = 'fleetInitWorkflow';

/** The workflow id of the init of `fleet` on `taskQueue`: repeated inits of one fleet share it. */
export function fleetInitWorkflowId(taskQueue: string, fleet: string): string {
  return `fleet-init/${taskQueue}/${fleet}`;
}

/**
 * A million vehicles take seconds; the schedule-to-close timeout ends an init that no worker takes
 * (its caller has gone, or the worker stopped) instead of leaving it open.
 */
const acts = proxyActivities<ReturnType<typeof createFleetInitActivities>>({
  startToCloseTimeout: '5m',
  scheduleToCloseTimeout: '10m',
  heartbeatTimeout: HEARTBEAT_TIMEOUT,
  retry: ACTIVITY_RETRY,
});

export async function fleetInitWorkflow(input: FleetInitInput): Promise<FleetInitResult> {
  const manifest = (input as Partial<FleetInitInput> | undefined)?.manifest;
  if (typeof manifest !== 'string' || manifest === '' || manifest.length > 1000) {
    throw ApplicationFailure.create({
      type: ErrorType.InvalidInput,
      message:
        `invalid fleet init request: manifest must be the fleet manifest's path relative to the worker's ` +
        `directory, such as "sim/fleets/demo.yaml" (got ${typeof manifest === 'string' ? `${manifest.length} characters` : typeof manifest})`,
      nonRetryable: true,
    });
  }
  return acts.createSimulatedFleet({ manifest });
}

/** Entry point of the workflow bundle: every workflow type the worker serves. */
export { rolloutWorkflow } from './rollout';
export { driftCheckWorkflow } from './drift';
export { fleetInitWorkflow } from './fleet-init';

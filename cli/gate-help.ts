/**
 * Help texts of `fleetgate gate show`, `pause`, `resume` and `rollback` (cli/gate.ts), kept apart so that
 * cli/main.ts lists them without loading the commands. Text only.
 */
export const GATE_HELP: Record<string, string> = {
  'gate show': `Usage: fleetgate gate show ID [--json]

Prints the rollout's pending gate: its kind (wave, escalation or promotion), the wave, the cohorts it is
about with their one-line evidence and the latest statistics of each (every metric's estimate, confidence
interval, margin, statistic and boundary), the approvals so far of the distinct reviewers required, who
may still approve, the deadline and the candidate digest to approve:
  fleetgate approve ID --gate GATE --reviewer NAME --digest DIGEST
Exit code 0 with a gate pending, 1 without one.
  --json   print {"rolloutId","phase","candidate","pendingGate","cohorts"} as JSON`,
  pause: `Usage: fleetgate pause ID --reason TEXT [--by NAME]

Holds the rollout at its next safe point: before a wave is delivered, before each look's analysis, before
each poll of the label wait, and before the final analysis and promotion. Timers keep running while it is
paused (a wave's hold goes on counting; its next look waits for the resume), a pending gate still takes
approvals, and abort and rollback still work. Nothing is delivered, analysed or promoted until "fleetgate
resume". Refused (exit 1) when already paused or ended.
  --reason TEXT  why, for the decision log and the webhook (required)
  --by NAME      who asks (default $USER, else "unknown")`,
  resume: `Usage: fleetgate resume ID [--by NAME] [--reason TEXT]

Lets a paused rollout go on from the safe point where it holds. Refused (exit 1) when it is not paused.
  --by NAME      who asks (default $USER, else "unknown")
  --reason TEXT  why, for the decision log`,
  rollback: `Usage: fleetgate rollback ID --cohort COHORT --reason TEXT [--by NAME]

Emergency rollback of one cohort: its changes are compensated at once (last in, first out; a wave being
delivered lands first) and it ends "rolled_back"; the other cohorts go on, and the rollout ends normally
once no cohort is left. Waits until the compensations have run. Refused (exit 1) for a cohort not in the
rollout, one already in a final state (promoted, rolled_back, held, rejected, aborted), or an ended rollout.
  --cohort COHORT  the cohort, e.g. hw3/nordic (required)
  --reason TEXT    why (required)
  --by NAME        who asks (default $USER, else "unknown")`,
};

/**
 * Live `patched()` ids of the rollout workflow, one place for all of them.
 *
 * A change of workflow logic that running rollouts could replay differently goes behind
 * `patched(PATCHES.x)`; once no history needs the old branch, the id moves to `deprecatePatch` and then
 * goes away. The replay test (test/workflow/replay.test.ts) replays saved histories of older versions.
 */
export const PATCHES = {
  /**
   * Decision engine 2 (policies/engine.ts): Holm and family-wise α across cohorts, group-sequential
   * designs, exact tests for safety events, fleet-wide rollback, and escalation to reviewers instead
   * of holding when the data cannot decide.
   */
  decisionEngine: 'decision-engine-2',
  /**
   * A SKU that fails the bench rejects only its own cohorts, and a wave whose installs fail in a cohort
   * beyond `delivery.maxFailureShare` is reverted in that cohort only; the others go on.
   */
  cohortScopedFailures: 'cohort-scoped-failures',
  /**
   * The label wait counts coverage per active cohort (with `labelWait.maturity`), makes no requests of
   * its own (every request is made as events are logged, within `labelWait.dailyBudget`), and at its
   * timeout holds the cohorts below the coverage while the others go on to the analysis.
   */
  labelWaitPerCohort: 'label-wait-per-cohort',
  /**
   * Shadow with the vehicles' upload filter: it runs in windows of `shadow.checkEvery`, checks the upload
   * budgets after each (stopping a cohort that exceeds them), and judges on weighted estimates with the
   * per-class recall and precision gates (policies/shadow.ts).
   */
  shadowEdge: 'shadow-edge',
  /**
   * A wave with `minExposure` is extended until each cohort's candidate arm has driven that many
   * vehicle-hours, and a cohort still short after the extra looks is held.
   */
  waveExposure: 'wave-exposure',
  /**
   * Webhook notifications (activities/notify.ts) when a gate waits, a cohort is escalated, rolled back or
   * promoted and the rollout ends; a notification that finally fails is a decision-log line, never a
   * failure of the rollout. The rollout's end is also a decision-log line (`completed`).
   */
  notifyWebhook: 'notify-webhook',
  /**
   * Quorum gates: a wave gate shows its cohorts and their evidence, and left unanswered holds them
   * (compensated, never promoted) instead of aborting the rollout; a gate passed logs its evidence; the
   * policy's `promotion.approval` gate stands before the final promotion.
   */
  quorumGates: 'quorum-gates',
  /**
   * Operator controls: `pause` holds the rollout at its next safe point until `resume`;
   * `rollbackCohort` compensates one cohort at once while the others go on.
   */
  operatorControls: 'operator-controls',
  /**
   * Search attributes (SEARCH_ATTRIBUTES of workflows/definitions.ts) upserted as the rollout moves, for a
   * rollout started with `FleetgatePhase` set (proof that its namespace has them registered).
   */
  searchAttributes: 'search-attributes',
  /**
   * A fleet whose shadow mirrors its serving (a service: `FleetSummary.mirrors`) gets an `endShadow`
   * compensation for the shadow's cohorts, so one rejected in the shadow, rolled back or aborted before
   * its first wave stops being mirrored; a wave's delivery (no mirror) ends it for its cohorts.
   */
  shadowMirrorEnded: 'shadow-mirror-ended',
  /**
   * A service whose candidate arm has its own threshold (`FleetSummary.candidateConfig`) may roll out
   * production's own model: a threshold experiment, which no longer ends rejected at register.
   */
  configExperiments: 'config-experiments',
  /**
   * Faults of the processes (issue "chaos"): an abort no longer waits for what only reads or computes
   * (telemetry, analysis, registry reads: cancelled without waiting) while a change in flight (a
   * delivery, a pointer, a mirror) is cancelled and waited for; a compensation that fails is retried in
   * rounds without a limit, logged and notified, so no rollout ends with its candidate where it was not
   * promoted; a cohort another rollout holds ends the rollout `rejected` with its report.
   */
  faultTolerance: 'fault-tolerance',
} as const;

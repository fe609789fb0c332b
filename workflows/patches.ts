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
} as const;

/**
 * Live `patched()` ids of the rollout workflow, one place for all of them.
 *
 * A change of workflow logic that running rollouts could replay differently goes behind
 * `patched(PATCHES.x)`; once no history needs the old branch, the id moves to `deprecatePatch` and then
 * goes away. The replay test (test/workflow/replay.test.ts) replays saved histories of older versions.
 */
export const PATCHES = {} as const;

/**
 * The `drift` section of a rollout policy: what a scheduled drift check compares, the thresholds of its
 * statistics (policies/drift.ts) and what it does on drift.
 *
 * Pure: imported by policies/schema.ts, the drift workflow, activities and the CLI. It must never read
 * files or the clock.
 */
import { z } from 'zod';

/** The features of the models' input frames (policies/frames.ts): four camera and four radar channels. */
export const DRIFT_FEATURES = [
  'camera0',
  'camera1',
  'camera2',
  'camera3',
  'radar0',
  'radar1',
  'radar2',
  'radar3',
] as const;

function thresholds(what: string, max: number, warn: number, drift: number) {
  return z
    .object({
      warn: z.number().gt(0).max(max).describe(`${what} at or above which a feature is "warn"`),
      drift: z.number().gt(0).max(max).describe(`${what} at or above which a feature is "drift"`),
    })
    .strict()
    .default({ warn, drift })
    .superRefine((t, ctx) => {
      if (t.drift <= t.warn) {
        ctx.addIssue({
          code: 'custom',
          path: ['drift'],
          message: `the drift threshold must be above the warn threshold ${t.warn}; raise drift or lower warn`,
        });
      }
    });
}

export const DriftPolicy = z
  .object({
    features: z
      .array(z.enum(DRIFT_FEATURES, { message: `one of ${DRIFT_FEATURES.join(', ')}` }))
      .min(1)
      .optional()
      .describe('Features compared; every feature when absent'),
    sampleSize: z
      .number()
      .int({ message: 'a whole number of frames per cohort, e.g. 5000' })
      .min(100, { message: 'at least 100 frames per cohort: fewer cannot show a shift' })
      .max(1_000_000)
      .default(5000)
      .describe('Current frames drawn per cohort and check'),
    minSamples: z
      .number()
      .int()
      .min(1)
      .default(200)
      .describe('A cohort with fewer current frames than this is "warn": too few to judge'),
    psi: thresholds('Population stability index', 100, 0.1, 0.25),
    ks: z
      .object({
        warn: z.number().gt(0).max(1).describe('KS statistic at or above which a feature is "warn"'),
        drift: z.number().gt(0).max(1).describe('KS statistic at or above which a feature is "drift"'),
        alpha: z
          .number()
          .gt(0)
          .lt(1)
          .default(0.01)
          .describe("A KS level counts only when the statistic's p-value is below alpha"),
      })
      .strict()
      .default({ warn: 0.1, drift: 0.2, alpha: 0.01 })
      .superRefine((t, ctx) => {
        if (t.drift <= t.warn) {
          ctx.addIssue({
            code: 'custom',
            path: ['drift'],
            message: `the drift threshold must be above the warn threshold ${t.warn}; raise drift or lower warn`,
          });
        }
      }),
    js: thresholds('Jensen-Shannon divergence in bits', 1, 0.02, 0.05),
    action: z
      .enum(['alert', 'hold'], {
        message: '"alert" (notify only) or "hold" (pause the active rollouts of the drifted cohorts)',
      })
      .default('alert')
      .describe('On drift: notify only, or also pause every running rollout of the cohorts concerned'),
  })
  .strict();
export type DriftPolicy = z.infer<typeof DriftPolicy>;
export type DriftPolicyInput = z.input<typeof DriftPolicy>;

/** The input of driftCheckWorkflow: what `fleetgate drift schedule` puts in its schedule's action. */
export const DriftCheckRequest = z
  .object({
    scheduleId: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/, {
        message: 'letters, digits, ".", "_" or "-", at most 100',
      })
      .describe('The schedule the check belongs to; its results are kept under this id'),
    fleet: z
      .object({
        manifest: z.string().min(1).describe('Fleet manifest file, relative to the worker'),
        timeScale: z
          .number()
          .positive()
          .default(1)
          .describe("Simulated fleet time per real second since the cohorts' first production"),
      })
      .strict(),
    cohorts: z
      .array(z.string().min(1))
      .min(1)
      .optional()
      .describe('Cohorts checked; every cohort of the fleet when absent'),
    policy: DriftPolicy.default(DriftPolicy.parse({})),
  })
  .strict();
export type DriftCheckRequest = z.infer<typeof DriftCheckRequest>;
export type DriftCheckRequestInput = z.input<typeof DriftCheckRequest>;

/**
 * The service manifest: a model served by the inference gateway (`fleetgate serve`), rolled out by the
 * same rollout workflow as a fleet of vehicles. Its canary is a routing weight on the gateway, its
 * rollback sets the candidate's weight to 0, and its traffic is a simulated user population per cohort
 * (sim/users.ts). Errors name the path, the value and the fix (`formatIssues`).
 *
 * Pure (workflows may import it); sim/users.ts `loadServiceManifest` and `manifestKind` read the files.
 */
import { z } from 'zod';
import { ArmRef, COHORT } from '../serve/api';
import { Duration, Sku } from './schema';

const Name = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._-]*$/, { message: 'lowercase letters, digits, ".", "_" or "-"' });
/** A gateway cohort name (serve/api.ts COHORT): no "/" as a fleet's cohorts have. */
const CohortName = z.string().regex(COHORT, {
  message: 'a gateway cohort name: lowercase letters, digits and "-", at most 63, such as "web-eu"',
});
const NOISE_FIX = { message: 'a share in [0, 0.5]: 0 for a labeler that is always right' };

export const ServiceCohort = z
  .object({
    name: CohortName,
    sku: Name.describe('The serving hardware of this cohort (one of skus), benched as a vehicle SKU is'),
    callers: z
      .number()
      .int()
      .min(1)
      .max(1_000_000)
      .describe('Size of the simulated user population calling the service in this cohort'),
    requestsPerCallerHour: z.number().positive().describe('Mean requests one caller makes per hour'),
    nightShare: z.number().min(0).max(1).describe("Share of requests whose features are drawn 'at night'"),
    rainShare: z.number().min(0).max(1).default(0).describe("Share drawn 'in rain'"),
    sensorNoise: z.number().positive().default(1).describe("Multiplier of the features' noise: 1 is nominal"),
  })
  .strict();
export type ServiceCohort = z.infer<typeof ServiceCohort>;

export const ServiceManifest = z
  .object({
    apiVersion: z.literal('fleetgate/v1'),
    kind: z.literal('Service'),
    name: Name,
    seed: z.number().int().default(1),
    gateway: z
      .object({
        url: z
          .url({ message: 'the gateway\'s base URL, such as "http://127.0.0.1:8080"' })
          .describe('Base URL of the inference gateway (`fleetgate serve`)'),
        tokenEnv: z
          .string()
          .regex(/^[A-Z_][A-Z0-9_]*$/, {
            message: 'an environment variable name, such as FLEETGATE_GATEWAY_TOKEN',
          })
          .default('FLEETGATE_GATEWAY_TOKEN')
          .describe("Environment variable holding the gateway's admin bearer token"),
        candidateArm: ArmRef.omit({ digest: true })
          .optional()
          .describe(
            "The candidate's serving configuration: a threshold experiment, fault injection for drills",
          ),
      })
      .strict(),
    skus: z.array(Sku).min(1),
    cohorts: z.array(ServiceCohort).min(1),
    labels: z
      .object({
        rate: z
          .number()
          .gt(0)
          .max(1)
          .describe('Share of requests whose outcome (a click, a conversion) is observed: they are labeled'),
        delay: Duration.describe('Mean delay before an outcome is observed (uniform in 50% to 150% of it)'),
        delayByCohort: z
          .record(CohortName, Duration)
          .optional()
          .describe('The mean delay for the named cohorts, instead of delay'),
        noise: z
          .number(NOISE_FIX)
          .min(0, NOISE_FIX)
          .max(0.5, {
            message: 'a share in [0, 0.5]: above 0.5 the outcome would be wrong more often than right',
          })
          .optional()
          .describe('Share of observed outcomes recorded wrong; 0 when absent'),
      })
      .strict(),
    load: z
      .object({
        maxRequestsPerWindow: z
          .number()
          .int()
          .min(1)
          .default(5000)
          .describe('Most requests one cohort sends in one collection window (the draw is capped here)'),
        concurrency: z.number().int().min(1).max(256).default(16).describe('Requests in flight at once'),
      })
      .strict()
      .default({ maxRequestsPerWindow: 5000, concurrency: 16 }),
  })
  .strict()
  .superRefine((m, ctx) => {
    const names = m.cohorts.map((c) => c.name);
    const declared = names.join(', ');
    names.forEach((n, i) => {
      if (names.indexOf(n) !== i) {
        ctx.addIssue({
          code: 'custom',
          path: ['cohorts', i, 'name'],
          message: `cohort names must be unique: "${n}" is declared twice; rename one`,
        });
      }
    });
    const skus = new Set(m.skus.map((s) => s.name));
    m.cohorts.forEach((c, i) => {
      if (!skus.has(c.sku)) {
        ctx.addIssue({
          code: 'custom',
          path: ['cohorts', i, 'sku'],
          message: `unknown SKU "${c.sku}"; declared: ${[...skus].join(', ')}`,
        });
      }
    });
    for (const c of Object.keys(m.labels.delayByCohort ?? {})) {
      if (!names.includes(c)) {
        ctx.addIssue({
          code: 'custom',
          path: ['labels', 'delayByCohort', c],
          message: `unknown cohort "${c}"; declared: ${declared}`,
        });
      }
    }
  });
export type ServiceManifest = z.infer<typeof ServiceManifest>;
export type ServiceManifestInput = z.input<typeof ServiceManifest>;

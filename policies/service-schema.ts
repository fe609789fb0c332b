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
import { Duration, NOT_RESERVED, RESERVED_COHORT, Sku } from './schema';

const Name = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._-]*$/, { message: 'lowercase letters, digits, ".", "_" or "-"' });
/** A gateway cohort name (serve/api.ts COHORT): no "/" as a fleet's cohorts have. */
const CohortName = z
  .string()
  .regex(COHORT, {
    message: 'a gateway cohort name: lowercase letters, digits and "-", at most 63, such as "web-eu"',
  })
  .regex(NOT_RESERVED, RESERVED_COHORT);
const NOISE_FIX = { message: 'a share in [0, 0.5]: 0 for a labeler that is always right' };

/**
 * The variables a service manifest may name as its gateway's admin token: FLEETGATE_GATEWAY_TOKEN, or
 * FLEETGATE_GATEWAY_TOKEN_<NAME> for a worker that serves several gateways. A worker sends a gateway no
 * other secret of its environment (AWS keys, the webhook secret, the Temporal API key).
 */
export const GATEWAY_TOKEN_ENV = /^FLEETGATE_GATEWAY_TOKEN(?:_[A-Z0-9]+)*$/;

/**
 * Why `name` may not be gateway.tokenEnv. The name is repeated only when it reads as a variable's name
 * (upper-case words joined by "_", such as AWS_SECRET_ACCESS_KEY), never other text of the file.
 */
export function tokenEnvProblem(name: string): string {
  const shown =
    /^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$/.test(name) && name.length <= 64 ? `"${name}"` : 'the name given';
  return (
    `${shown} is not a gateway token variable; name FLEETGATE_GATEWAY_TOKEN or FLEETGATE_GATEWAY_TOKEN_<NAME> ` +
    "(such as FLEETGATE_GATEWAY_TOKEN_RANKER) and put the gateway's admin token there: a worker sends a " +
    'gateway no other variable'
  );
}

/**
 * Why `url` may not be a gateway's base URL (an http:// or https:// URL without a user or password), or
 * undefined. Whether this worker may call it is the worker's to say (activities/service.ts).
 */
export function gatewayUrlProblem(url: string): string | undefined {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return 'the gateway\'s base URL, such as "http://127.0.0.1:8080"';
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    return 'an http:// or https:// URL of the gateway, such as "http://127.0.0.1:8080"';
  }
  if (u.username !== '' || u.password !== '') {
    return 'a URL without a user or password: the worker authenticates with the token of gateway.tokenEnv';
  }
  return undefined;
}

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
          .superRefine((url, ctx) => {
            // A string that is no URL at all has its issue from z.url already.
            const problem = URL.canParse(url) ? gatewayUrlProblem(url) : undefined;
            if (problem) ctx.addIssue({ code: 'custom', message: problem });
          })
          .describe(
            "Base URL of the inference gateway (`fleetgate serve`); the worker calls it only when its origin is one the worker's FLEETGATE_GATEWAY_ALLOW allows",
          ),
        tokenEnv: z
          .string()
          .superRefine((name, ctx) => {
            if (!GATEWAY_TOKEN_ENV.test(name))
              ctx.addIssue({ code: 'custom', message: tokenEnvProblem(name) });
          })
          .default('FLEETGATE_GATEWAY_TOKEN')
          .describe(
            "Environment variable holding the gateway's admin bearer token: FLEETGATE_GATEWAY_TOKEN or FLEETGATE_GATEWAY_TOKEN_<NAME>",
          ),
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

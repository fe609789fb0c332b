/**
 * The inference gateway's configuration file (`fleetgate serve --config FILE`), YAML or JSON: where it
 * listens, which cohorts it serves, their initial routes, batching, queue and request limits, and the
 * environment variable holding the admin token (never the token itself).
 *
 * Errors name the file, the field, the value and the fix; the file is never written by the gateway.
 */
import { dirname, resolve } from 'node:path';
import { z } from 'zod';
import { ArmRef, COHORT } from './api';
import { ErrorType } from '../errors';
import { formatIssues } from '../policies/schema';
import { readManifestFile } from '../fleet/manifest';

export const DEFAULT_GATEWAY_PORT = 8490;

const Cohort = z.string().regex(COHORT, { message: 'a cohort name: lowercase letters, digits and "-"' });

/** A cohort's route in the config: as CohortRoute, without a generation (it starts at 0). */
export const InitialRoute = z
  .object({
    production: ArmRef,
    candidate: ArmRef.optional(),
    weight: z.number().min(0).max(100).default(0),
    mirror: z.number().min(0).max(1).default(0),
    salt: z.string().min(1).max(200).optional().describe('Default: "<gateway name>:<cohort>:canary"'),
  })
  .strict();

const positiveInt = (max: number) => z.number().int().min(1).max(max);

export const GatewayConfig = z
  .object({
    apiVersion: z.literal('fleetgate/v1'),
    kind: z.literal('Gateway'),
    name: z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, {
      message: 'a name: lowercase letters, digits and "-", at most 63 characters',
    }),
    listen: z
      .object({
        host: z.string().min(1).default('127.0.0.1'),
        port: z.number().int().min(0).max(65535).default(DEFAULT_GATEWAY_PORT).describe('0: a free port'),
      })
      .strict()
      .default({ host: '127.0.0.1', port: DEFAULT_GATEWAY_PORT }),
    stateDir: z.string().min(1).describe('routes.json and events/; relative to the config file'),
    cohorts: z
      .array(Cohort)
      .min(1, { message: 'list at least one cohort, e.g. [web, app]' })
      .describe('Cohorts served; the first is the default cohort'),
    routes: z.record(Cohort, InitialRoute).optional(),
    batching: z
      .object({
        maxBatch: positiveInt(4096).default(32),
        maxDelayMs: z
          .number()
          .min(0)
          .max(1000)
          .default(0)
          .describe(
            'How long a row arriving at an idle model waits for more rows. 0: it runs at once, and batches ' +
              'form from the rows that arrive while the model runs (continuous batching); a positive value ' +
              'buys fuller batches at low load with that much latency',
          ),
      })
      .strict()
      .default({ maxBatch: 32, maxDelayMs: 0 }),
    queue: z
      .object({ maxQueued: positiveInt(1_000_000).default(1024) })
      .strict()
      .default({ maxQueued: 1024 }),
    shadow: z
      .object({ maxQueued: z.number().int().min(0).max(1_000_000).default(256) })
      .strict()
      .default({ maxQueued: 256 }),
    limits: z
      .object({
        maxBodyBytes: positiveInt(64 * 1024 * 1024).default(1_048_576),
        maxRows: positiveInt(100_000).default(256),
      })
      .strict()
      .default({ maxBodyBytes: 1_048_576, maxRows: 256 }),
    events: z
      .object({
        syncMs: z
          .number()
          .int()
          .min(0)
          .max(60_000)
          .default(1000)
          .describe(
            'How often the event log is fdatasynced when written to: a power loss may lose the events of ' +
              'the last syncMs (a crash of the process loses no answered request either way). 0: sync ' +
              'before every answer',
          ),
      })
      .strict()
      .default({ syncMs: 1000 }),
    adminTokenEnv: z
      .string()
      .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, { message: 'an environment variable name' })
      .default('FLEETGATE_GATEWAY_TOKEN'),
    acceptSimTime: z.boolean().default(false),
    faultInjection: z.boolean().default(false),
    otlpEndpoint: z.url({ protocol: /^https?$/, message: 'an http:// or https:// URL' }).optional(),
  })
  .strict()
  .superRefine((c, ctx) => {
    const seen = new Set<string>();
    c.cohorts.forEach((name, i) => {
      if (seen.has(name)) {
        ctx.addIssue({ code: 'custom', path: ['cohorts', i], message: `cohort "${name}" is listed twice` });
      }
      seen.add(name);
    });
    for (const name of Object.keys(c.routes ?? {})) {
      if (!seen.has(name)) {
        ctx.addIssue({
          code: 'custom',
          path: ['routes', name],
          message: `a route for a cohort not in "cohorts" (${c.cohorts.join(', ')}); add it there or remove the route`,
        });
      }
    }
    for (const [name, r] of Object.entries(c.routes ?? {})) {
      if (!r.candidate && (r.weight > 0 || r.mirror > 0)) {
        ctx.addIssue({
          code: 'custom',
          path: ['routes', name, 'candidate'],
          message: 'weight or mirror above 0 needs a candidate; add one or set them to 0',
        });
      }
    }
  });
export type GatewayConfig = z.infer<typeof GatewayConfig>;
export type GatewayConfigInput = z.input<typeof GatewayConfig>;

/** A configuration that does not load, with every problem on its own line. */
export class GatewayConfigError extends Error {
  override name = 'GatewayConfigError';
}

/**
 * Validates a parsed configuration; `baseDir` is what a relative stateDir is resolved against (the config
 * file's directory). The returned stateDir is absolute.
 */
export function parseGatewayConfig(raw: unknown, baseDir: string, what = 'gateway config'): GatewayConfig {
  const parsed = GatewayConfig.safeParse(raw);
  if (!parsed.success) {
    throw new GatewayConfigError(`invalid ${what}:\n${formatIssues(parsed.error, raw)}`);
  }
  return { ...parsed.data, stateDir: resolve(baseDir, parsed.data.stateDir) };
}

/** Reads and validates a gateway config file (.yaml, .yml or .json), as a manifest is read. */
export function loadGatewayConfig(file: string): GatewayConfig {
  let raw: unknown;
  try {
    raw = readManifestFile(file, 'gateway config');
  } catch (err) {
    const missing = (err as { type?: string }).type === ErrorType.NotFound;
    throw new GatewayConfigError(
      `${(err as Error).message}${missing ? '; pass the path of a file like examples/gateway.yaml' : ''}`,
    );
  }
  return parseGatewayConfig(raw, dirname(resolve(file)), `gateway config ${file}`);
}

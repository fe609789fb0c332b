/**
 * The inference gateway's wire contract, defined once: the gateway (`fleetgate serve`), the service
 * rollout's activities, the load benchmark and the tests import these schemas and types, so no caller
 * spells a path, header or field of its own.
 *
 * Data plane: `POST /v1/predict`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
 * Control plane (bearer token): `GET /admin/routes`, `PUT /admin/routes/:cohort`, `GET /admin/events`.
 *
 * Callers are known to the gateway by their raw id only for the time it takes to compute their keyed
 * pseudonym (HMAC with the pseudonym key, as `fleet/pseudonym.ts` `pseudonym`); nothing logged, stored,
 * counted or returned carries the raw id.
 */
import { z } from 'zod';

export const PATHS = {
  predict: '/v1/predict',
  health: '/healthz',
  ready: '/readyz',
  metrics: '/metrics',
  routes: '/admin/routes',
  /** `PUT ${PATHS.routes}/${encodeURIComponent(cohort)}` */
  route: (cohort: string) => `/admin/routes/${encodeURIComponent(cohort)}`,
  events: '/admin/events',
} as const;

/**
 * The URL of a gateway path under a base URL, keeping the base's own path: a gateway behind a proxy at
 * `https://host/ranker` is called at `https://host/ranker/v1/predict` (a bare `new URL(path, base)`
 * would drop `/ranker`).
 */
export function gatewayUrl(base: string, path: string): URL {
  const root = new URL(base);
  if (!root.pathname.endsWith('/')) root.pathname += '/';
  return new URL(path.replace(/^\/+/, ''), root);
}

export const HEADERS = {
  /** Optional caller-chosen id of a request (echoed back; the event's id). Generated when absent. */
  requestId: 'x-request-id',
  /**
   * Simulated time of a request in ms since the epoch: accepted only by a gateway configured with
   * `acceptSimTime: true` (simulated user populations and drills); a 400 otherwise.
   */
  simTime: 'x-fleetgate-sim-time',
  /** The arm that served a response: 'production' or 'candidate'. */
  arm: 'x-fleetgate-arm',
} as const;

export const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
export const COHORT = /^[a-z0-9][a-z0-9-]{0,62}$/;
const Digest = z
  .string()
  .regex(/^[0-9a-f]{64}$/, { message: 'a sha256 hex digest (64 lowercase hex digits)' });

/**
 * The largest finite float32, as a JSON number: models compute in float32, where a feature beyond it is
 * Infinity (and a logistic model's output NaN), so such features are refused, never served.
 */
export const FLOAT32_MAX = 3.4028234663852886e38;

/** A feature value: a number within float32 range. Errors give the value and the allowed range. */
export const Feature = z
  .number({
    error: (iss) =>
      typeof iss.input === 'number'
        ? `${String(iss.input)} is not a finite number; send a number from -${FLOAT32_MAX} to ${FLOAT32_MAX} (float32 range)`
        : 'expected a number',
  })
  .refine((v) => Math.abs(v) <= FLOAT32_MAX, {
    error: (iss) =>
      `${String(iss.input)} is beyond float32 range; send a number from -${FLOAT32_MAX} to ${FLOAT32_MAX}`,
  });

/** What a predict call sends. Limits on rows and body size come from the gateway's `limits`. */
export const PredictRequest = z
  .object({
    caller: z.string().min(1).max(200).describe("The caller's id (user, session, device): hashed at once"),
    cohort: z
      .string()
      .regex(COHORT, { message: 'a cohort name: lowercase letters, digits and "-"' })
      .optional()
      .describe("The caller's cohort; the gateway's first cohort when absent"),
    inputs: z
      .array(z.array(Feature))
      .min(1)
      .describe("Rows of features, each as long as the model's input contract (its second dimension)"),
  })
  .strict();
export type PredictRequest = z.infer<typeof PredictRequest>;

export interface PredictOutput {
  probs: number[];
  /** Index of the class chosen (the arm's threshold applies to class 1 of a two-class model). */
  class: number;
  /** Name of the class, from the model's inference_config.json. */
  label: string;
}
export interface PredictResponse {
  requestId: string;
  arm: Arm;
  model: { digest: string; name?: string; version?: string };
  outputs: PredictOutput[];
  /** Time in the gateway, from the parsed request to the response (queue, batching, inference), ms. */
  latencyMs: number;
}

/** Every 4xx/5xx body: what was wrong, where, and how to fix it. */
export interface ErrorBody {
  error: { status: number; field?: string; value?: unknown; message: string };
}

export type Arm = 'production' | 'candidate';

/** A model and its serving configuration: a threshold experiment is an arm with the same digest. */
export const ArmRef = z
  .object({
    digest: Digest.describe('The model: sha256 of its ONNX file, a blob in the object store'),
    threshold: z
      .number()
      .gt(0)
      .lt(1)
      .optional()
      .describe("Class 1 is chosen when its probability is at least this; the model's own config otherwise"),
    inject: z
      .object({
        latencyMs: z.number().min(0).max(10_000).optional().describe('Added to each response of this arm'),
        errorRate: z.number().min(0).max(1).optional().describe('Share of this arm’s requests answered 500'),
      })
      .strict()
      .optional()
      .describe('Fault injection for drills: refused unless the gateway runs with faultInjection: true'),
  })
  .strict();
export type ArmRef = z.infer<typeof ArmRef>;

/** How one cohort's requests are served. */
export const CohortRoute = z
  .object({
    production: ArmRef,
    candidate: ArmRef.optional(),
    /**
     * Percent (0..100) of the cohort's callers served by the candidate: a caller is the candidate's when
     * `assignmentRank(key, salt, pseudonym) / 2^32 < weight / 100` (fleet/assignment.ts), so the set of
     * callers only grows as the weight grows, and a caller keeps its arm between requests.
     */
    weight: z.number().min(0).max(100),
    /** Share (0..1) of the production arm's requests also sent to the candidate, off the response path. */
    mirror: z.number().min(0).max(1),
    /** Salt of the sticky assignment (a rollout uses its canary salt, `${rolloutId}:canary`). */
    salt: z.string().min(1).max(200),
    /** Bumped by every change; a `PUT` with `ifGeneration` other than the current one is refused (409). */
    generation: z.number().int().min(0),
  })
  .strict();
export type CohortRoute = z.infer<typeof CohortRoute>;

/** `PUT /admin/routes/:cohort`: the fields given replace the current ones (`candidate: null` removes it). */
export const RouteUpdate = z
  .object({
    production: ArmRef.optional(),
    candidate: ArmRef.nullable().optional(),
    weight: z.number().min(0).max(100).optional(),
    mirror: z.number().min(0).max(1).optional(),
    salt: z.string().min(1).max(200).optional(),
    ifGeneration: z.number().int().min(0).optional(),
  })
  .strict();
export type RouteUpdate = z.infer<typeof RouteUpdate>;

export interface RoutesResponse {
  routes: Record<string, CohortRoute>;
}

/**
 * One line of the gateway's event log: a served request (and, when it was mirrored, the candidate's
 * shadow answer). `seq` grows by one per event, in the order events are written.
 */
export interface GatewayEvent {
  seq: number;
  requestId: string;
  /** The request's time (simulated when `x-fleetgate-sim-time` was accepted), ms since the epoch. */
  tsMs: number;
  cohort: string;
  /** Keyed pseudonym of the caller (hex, as `fleet/pseudonym.ts` `pseudonym`). */
  caller: string;
  arm: Arm;
  digest: string;
  threshold?: number;
  /** Class chosen for the first row, and its probability; absent when the request failed. */
  pred?: number;
  conf?: number;
  latencyMs: number;
  status: number;
  failed: boolean;
  /** Why a failed request failed, e.g. 'nonfinite-output' (the model answered NaN or Infinity). */
  reason?: string;
  shadow?: {
    digest: string;
    pred?: number;
    conf?: number;
    latencyMs?: number;
    failed: boolean;
    /** Why the candidate failed, e.g. 'nonfinite-output'. */
    reason?: string;
    /** The shadow queue was full: the candidate never ran this request. */
    dropped: boolean;
    /** The gateway stopped before the candidate's answer was logged (also `dropped`): it is unknown. */
    lost?: boolean;
  };
}

/** `GET /admin/events?after=SEQ&limit=N` (limit at most 50,000): events with seq > after, in order. */
export interface EventsResponse {
  events: GatewayEvent[];
  /** The highest seq returned (or `after` when none): pass it as the next `after`. */
  next: number;
  /** The highest seq written so far (0 for an empty log): where a reader that wants only new events starts. */
  last: number;
}

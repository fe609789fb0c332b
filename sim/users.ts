/**
 * The simulated users of a service: per cohort a population of callers who send prediction requests to
 * the inference gateway, with the feature distribution of the cohort's conditions (sim/frames.ts), and
 * whose outcomes (the true class of each request's features) become labels after a delay.
 *
 * A caller's raw id (`${service}/${cohort}/user-${k}`) exists only while a request body is being
 * built for the gateway, which hashes it at once; everything this module returns or logs knows callers
 * by index and keyed pseudonym (fleet/pseudonym.ts) only. Draws are seeded by the batch and the
 * cohort, so a retried batch sends the same requests. The service manifest's loaders are production code
 * (fleet/manifest.ts).
 *
 * The composition root hands it to the service activities as their `CallerLoad` (`simulatedCallers`).
 * Activity-side only (node:crypto, fetch); workflows never import it.
 */
import { ErrorType, fail } from '../errors';
import { assignmentRanks } from '../fleet/assignment';
import { pseudonym } from '../fleet/pseudonym';
import { makeRng, poisson } from '../policies/rng';
import type { ServiceCohort } from '../policies/service-schema';
import {
  gatewayUrl as gatewayEndpoint,
  HEADERS,
  PATHS,
  type ErrorBody,
  type PredictRequest,
  type PredictResponse,
} from '../serve/api';
import { FEATURES } from '../policies/model-contract';
import { generateFramesWith, type Frames } from './frames';
import type { CallerLoad, CallerPopulation, CallerRequests } from '../activities/deps';

const HOUR_MS = 3_600_000;
/** Attempts of a request the gateway answers 429 (its queue is full), with exponential backoff. */
export const MAX_ATTEMPTS = 8;
const BACKOFF_MS = 10;

/** The callers of one cohort of a service. */
export class UserPopulation implements CallerPopulation {
  /** Keyed pseudonym of each caller, by caller index. */
  readonly pseudonyms: readonly string[];
  readonly #service: string;

  constructor(
    key: Buffer,
    service: string,
    readonly cohort: ServiceCohort,
  ) {
    this.#service = service;
    const pseudonyms = new Array<string>(cohort.callers);
    for (let k = 0; k < cohort.callers; k++) pseudonyms[k] = pseudonym(key, this.#rawId(k));
    this.pseudonyms = pseudonyms;
  }

  #rawId(k: number): string {
    return `${this.#service}/${this.cohort.name}/user-${k}`;
  }

  /**
   * How many callers the gateway's router gives the candidate at `weight` percent under `salt`: those
   * with `assignmentRank(key, salt, pseudonym) / 2^32 < weight / 100` (serve/api.ts CohortRoute.weight).
   */
  candidateCallers(key: Buffer, salt: string, weight: number): number {
    if (weight <= 0) return 0;
    const ranks = assignmentRanks(key, salt, this.pseudonyms);
    const share = weight / 100;
    let n = 0;
    for (const r of ranks) if (r / 4294967296 < share) n++;
    return n;
  }

  /**
   * The requests of [fromMs, toMs): n = min(cap, Poisson(callers x requestsPerCallerHour x hours)), each
   * from a uniformly drawn caller, at sorted uniform times, with features and true classes drawn under
   * the cohort's conditions. Seeded by `seed`, the batch id and the cohort: a retry draws the same.
   */
  draw(seed: number, batchId: string, fromMs: number, toMs: number, cap: number): UserRequests {
    if (!(Number.isFinite(fromMs) && Number.isFinite(toMs) && toMs > fromMs)) {
      throw fail(ErrorType.InvalidInput, `a request window needs toMs > fromMs (got ${fromMs}, ${toMs})`);
    }
    if (!(Number.isInteger(cap) && cap >= 1)) {
      throw fail(
        ErrorType.InvalidInput,
        `load.maxRequestsPerWindow must be a whole number >= 1 (got ${cap})`,
      );
    }
    const c = this.cohort;
    const rng = makeRng(`${seed}|${batchId}|${c.name}|requests`);
    const span = toMs - fromMs;
    const n = Math.min(cap, poisson(rng, (c.callers * c.requestsPerCallerHour * span) / HOUR_MS));
    const caller = new Uint32Array(n);
    const ts = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      caller[i] = Math.floor(rng() * c.callers);
      ts[i] = fromMs + Math.floor(rng() * span);
    }
    ts.sort();
    const conditions = { nightShare: c.nightShare, rainShare: c.rainShare, sensorNoise: c.sensorNoise };
    const frames = generateFramesWith(makeRng(`${batchId}|${c.name}`), n, () => conditions);
    return new UserRequests(this, c.name, n, caller, ts, frames, rng, (k) => this.#rawId(k));
  }
}

/**
 * One window's requests of a cohort. Fields are as `Simulation` of activities/fleet.ts wants them
 * (`vehicle` is the caller index), so a batch of them is written like a fleet's.
 */
export class UserRequests implements CallerRequests {
  readonly #rawId: (k: number) => string;
  readonly #population: UserPopulation;

  constructor(
    population: UserPopulation,
    readonly cohort: string,
    readonly n: number,
    /** Per request: the caller's index in the population. */
    readonly vehicle: Uint32Array,
    /** Per request: its simulated time, ms since the epoch, ascending. */
    readonly ts: Float64Array,
    /** Per request: its features (row i) and its true class, the user's outcome. */
    readonly frames: Frames,
    /** Continues the draw's seeded stream (label sampling and delays). */
    readonly rng: () => number,
    rawId: (k: number) => string,
  ) {
    this.#population = population;
    this.#rawId = rawId;
  }

  /** The population's pseudonyms, by caller index (`vehicle[i]` indexes them). */
  get pseudonyms(): readonly string[] {
    return this.#population.pseudonyms;
  }

  /** The caller pseudonym of request i. */
  callerPseudonym(i: number): string {
    return this.#population.pseudonyms[this.vehicle[i]!]!;
  }

  /** The body of request i, as the gateway wants it: the one place a raw caller id is built. */
  body(i: number): PredictRequest {
    const row = this.frames.features.subarray(i * FEATURES, (i + 1) * FEATURES);
    return { caller: this.#rawId(this.vehicle[i]!), cohort: this.cohort, inputs: [Array.from(row)] };
  }
}

/** What the gateway answered each request of a `send`. */
export interface SendResult {
  /** Per request: the final HTTP status (200, or the 5xx of a failed request). */
  status: Uint16Array;
  /** Per request: 1 when it failed (a 5xx: a fact of the service, to log). */
  failed: Uint8Array;
  /** Per request: the arm that served it (from the response; undefined when it failed). */
  arm: ('production' | 'candidate' | undefined)[];
  /** 429 answers that were retried. */
  retried: number;
}

/**
 * Posts every request to the gateway's predict endpoint, `concurrency` at a time, request i with
 * `x-request-id` = `requestIds[i]` and `x-fleetgate-sim-time` = its simulated time. A 429 is retried
 * after a short exponential backoff, at most MAX_ATTEMPTS times (then Unavailable); a 5xx is a failed
 * request, returned; any other 4xx is a bug of the caller and throws (InvalidInput, with the gateway's
 * explanation); a gateway that cannot be reached throws Unavailable.
 */
export async function send(
  gatewayUrl: string,
  requests: UserRequests,
  concurrency: number,
  requestIds: (i: number) => string,
): Promise<SendResult> {
  const url = gatewayEndpoint(gatewayUrl, PATHS.predict).toString();
  const n = requests.n;
  const result: SendResult = {
    status: new Uint16Array(n),
    failed: new Uint8Array(n),
    arm: new Array(n).fill(undefined),
    retried: 0,
  };
  let next = 0;
  const post = async (i: number): Promise<void> => {
    const body = JSON.stringify(requests.body(i));
    for (let attempt = 1; ; attempt++) {
      let res: Response;
      try {
        res = await fetch(url, {
          method: 'POST',
          // A gateway never redirects; following one would send callers' requests where the worker was not told to.
          redirect: 'error',
          headers: {
            'content-type': 'application/json',
            [HEADERS.requestId]: requestIds(i),
            [HEADERS.simTime]: String(requests.ts[i]!),
          },
          body,
        });
      } catch (err) {
        throw fail(
          ErrorType.Unavailable,
          `gateway ${gatewayUrl} cannot be reached (${(err as Error).cause ?? (err as Error).message}); ` +
            'is `fleetgate serve` running there?',
        );
      }
      if (res.status === 429 && attempt < MAX_ATTEMPTS) {
        await res.body?.cancel();
        result.retried++;
        await new Promise((r) => setTimeout(r, BACKOFF_MS * 2 ** (attempt - 1) * (0.5 + Math.random())));
        continue;
      }
      result.status[i] = res.status;
      if (res.ok) {
        const answer = (await res.json()) as PredictResponse;
        result.arm[i] = answer.arm;
        return;
      }
      const text = await res.text();
      if (res.status === 429) {
        throw fail(
          ErrorType.Unavailable,
          `gateway ${gatewayUrl} answered 429 (queue full) ${MAX_ATTEMPTS} times for one request; lower load.concurrency`,
        );
      }
      if (res.status >= 500) {
        result.failed[i] = 1;
        return;
      }
      let message = text;
      try {
        const e = (JSON.parse(text) as ErrorBody).error;
        message = `${e.field ? `${e.field}: ` : ''}${e.message}${e.value !== undefined ? ` (got ${JSON.stringify(e.value)})` : ''}`;
      } catch {
        // Not the gateway's error body: its text is the message.
      }
      throw fail(
        ErrorType.InvalidInput,
        `gateway ${gatewayUrl} refused a request of cohort ${requests.cohort} with ${res.status}: ${message}`,
      );
    }
  };
  // The first error stops every worker before its next request.
  let stopped = false;
  const workers = Array.from({ length: Math.min(concurrency, n) }, async () => {
    try {
      while (!stopped && next < n) await post(next++);
    } catch (err) {
      stopped = true;
      throw err;
    }
  });
  await Promise.all(workers);
  return result;
}

/** The simulated users as the service activities' `CallerLoad`: the composition root hands them this. */
export const simulatedCallers: CallerLoad = {
  population: (key, service, cohort) => new UserPopulation(key, service, cohort),
  send: (gatewayUrl, requests, concurrency, requestIds) => {
    if (!(requests instanceof UserRequests)) {
      throw fail(
        ErrorType.InvalidInput,
        `the simulated users send only their own requests (cohort ${requests.cohort}): draw them from their population`,
      );
    }
    return send(gatewayUrl, requests, concurrency, requestIds);
  },
};

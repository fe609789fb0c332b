/**
 * The fleet activities for a service: a model served by the inference gateway (`fleetgate serve`), rolled
 * out by the same rollout workflow as a fleet of vehicles. Same signatures as activities/fleet.ts; the
 * worker calls these when the rollout's manifest is `kind: Service` (workers/worker.ts).
 *
 * A wave is a routing weight (`PUT /admin/routes/:cohort`, serve/api.ts), a revert sets the candidate's
 * weight and mirror to 0 at once, a promotion makes the candidate the production arm; the shadow mirrors
 * a share of production's requests to the candidate. Traffic is the callers the composition root chooses
 * (`CallerLoad`: the manifest's simulated user population, sim/users.ts), sent over real HTTP; what the gateway served is read back from its event log
 * (`GET /admin/events`) and written as a batch of events exactly as a fleet's (activities/fleet.ts
 * `writeBatch`), so the labels and the analysis apply unchanged.
 *
 * Idempotent: an equal route update changes nothing on the gateway, and a batch is keyed by rollout, phase
 * and window, checked before any request is sent.
 *
 * Secrets go only where they belong: before any request, the manifest's gateway must be one the worker's
 * own configuration allows (`GatewayAllow`, FLEETGATE_GATEWAY_ALLOW of workers/config.ts) and its token
 * variable a gateway token's (FLEETGATE_GATEWAY_TOKEN[_<NAME>]); this module never sends, logs or returns
 * any other variable of the environment, nor the token's value. Callers are known only by their keyed pseudonyms: this
 * module never logs, stores or returns a raw caller id, and never returns rows per event.
 */
import type { DuckDBConnection } from '@duckdb/node-api';
import { ErrorType, fail } from '../errors';
import { parseDuration } from '../policies/duration';
import {
  GATEWAY_TOKEN_ENV,
  gatewayUrlProblem,
  tokenEnvProblem,
  type ServiceCohort,
  type ServiceManifest,
} from '../policies/service-schema';
import {
  type ArmRef,
  type CohortRoute,
  type ErrorBody,
  type EventsResponse,
  type GatewayEvent,
  gatewayUrl,
  PATHS,
  type RouteUpdate,
  type RoutesResponse,
} from '../serve/api';
import { canarySalt, waveShare } from '../fleet/assignment';
import { loadServiceManifest, manifestKind } from '../fleet/manifest';
import { bootstrapProduction, type RegistryDeps } from './registry';
import type {
  BatchResult,
  DeliverInput,
  DeliveryResult,
  FleetInput,
  EndShadowInput,
  FleetSummary,
  PromoteInput,
  RevertInput,
  ShadowInput,
  TelemetryInput,
} from './contracts';
import { confinedPath } from './confine';
import { exclusive, num, rows } from './db';
import { progress, resumeFrom, throwIfCancelled, type Progress } from './heartbeat';
import type { CallerLoad, CallerPopulation, CallerRequests, ModelRunner, ObjectStore } from './deps';
import {
  checkArtifact,
  cohortsOf,
  EventColumns,
  eventTag,
  writeBatch,
  type FleetActivities,
  type SimulatedCohort,
} from './fleet';
import { PRIORITY_CONFIDENCE } from './labels';

export interface ServiceActivityDeps {
  /** The fleet database: event logs and labels. */
  conn: DuckDBConnection;
  /** Unused by the service's own activities (the gateway runs the models); kept for the same deps. */
  runner: ModelRunner;
  /** The pseudonym key: the gateway's must be the same (its router ranks the same pseudonyms). */
  key: Buffer;
  /** Directory that manifest paths are relative to; a manifest outside it is refused (activities/confine.ts). */
  root: string;
  /** The object store of the model blobs: a route names only a digest whose stored bytes hash to it. */
  store?: ObjectStore;
  /** The gateways this worker may call (FLEETGATE_GATEWAY_ALLOW): a manifest names one of these or none. */
  gateways: GatewayAllow;
  /** The callers whose requests a batch sends through the gateway (the composition root's choice). */
  callers: CallerLoad;
}

/**
 * The gateways a worker may send requests and its gateway token to, from its configuration
 * (FLEETGATE_GATEWAY_ALLOW, workers/config.ts `loadGatewayAllow`): origins (`https://host:port`), and
 * loopback ones (127.0.0.0/8, [::1], localhost, any port) when `loopback` is set.
 */
export interface GatewayAllow {
  loopback: boolean;
  /** Allowed origins, as `URL.origin` writes them (lowercase host, no default port). */
  origins: readonly string[];
}

/** Whether `hostname` (as `URL.hostname` writes it) is this host's loopback. */
export function isLoopbackHost(hostname: string): boolean {
  return hostname === 'localhost' || hostname === '[::1]' || /^127(?:\.\d{1,3}){3}$/.test(hostname);
}

/**
 * Refuses (InvalidInput, not retried) a manifest's gateway this worker may not call, before any request:
 * a token variable that is not a gateway token's (its name is repeated, never its value), a URL that is
 * not http(s) or carries a user, or an origin the worker's FLEETGATE_GATEWAY_ALLOW does not list.
 */
export function checkGateway(
  gateway: { url: string; tokenEnv: string },
  allow: GatewayAllow,
  manifest = 'the service manifest',
): void {
  if (!GATEWAY_TOKEN_ENV.test(gateway.tokenEnv)) {
    throw fail(
      ErrorType.InvalidInput,
      `gateway.tokenEnv of ${manifest}: ${tokenEnvProblem(gateway.tokenEnv)}`,
      {
        field: 'gateway.tokenEnv',
      },
    );
  }
  const problem = gatewayUrlProblem(gateway.url);
  if (problem) {
    throw fail(ErrorType.InvalidInput, `gateway.url of ${manifest}: ${problem}`, { field: 'gateway.url' });
  }
  const url = new URL(gateway.url);
  if (allow.origins.includes(url.origin) || (allow.loopback && isLoopbackHost(url.hostname))) return;
  throw fail(
    ErrorType.InvalidInput,
    `gateway.url of ${manifest}: ${url.origin} is not a gateway this worker may call (its ` +
      'FLEETGATE_GATEWAY_ALLOW does not allow it; unset, it allows loopback gateways only); ' +
      `point gateway.url at a gateway of this worker, or add ${url.origin} to FLEETGATE_GATEWAY_ALLOW of the workers ` +
      '(they send it the token of gateway.tokenEnv)',
    { field: 'gateway.url' },
  );
}

/** Polls of the gateway's event log while waiting for a batch's events (about 10 s in all). */
const EVENT_POLLS = 200;
const EVENT_POLL_MS = 50;
/** Events read per `GET /admin/events` (the contract's maximum). */
const EVENTS_PAGE = 50_000;

/**
 * The control plane of one gateway, over HTTP, with the admin token of the manifest's `tokenEnv`. It is
 * refused at construction when the worker may not send that gateway that token (`checkGateway`), and
 * never follows a redirect (the token would go with it).
 */
export class GatewayAdmin {
  constructor(
    readonly url: string,
    private readonly tokenEnv: string,
    allow: GatewayAllow,
  ) {
    checkGateway({ url, tokenEnv }, allow);
  }

  private async call<T>(method: 'GET' | 'PUT', path: string, body?: unknown): Promise<T> {
    const token = process.env[this.tokenEnv];
    let res: Response;
    try {
      res = await fetch(gatewayUrl(this.url, path), {
        method,
        redirect: 'error',
        headers: {
          ...(token ? { authorization: `Bearer ${token}` } : {}),
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
    } catch (err) {
      throw fail(
        ErrorType.Unavailable,
        `gateway ${this.url} cannot be reached (${String((err as Error).cause ?? (err as Error).message)}); ` +
          'is `fleetgate serve` running there, and is gateway.url of the service manifest right?',
      );
    }
    if (res.ok) return (await res.json()) as T;
    const text = await res.text();
    let message = text;
    try {
      const e = (JSON.parse(text) as ErrorBody).error;
      message = `${e.field ? `${e.field}: ` : ''}${e.message}${e.value !== undefined ? ` (got ${JSON.stringify(e.value)})` : ''}`;
    } catch {
      // Not the gateway's error body: its text is the message.
    }
    const what = `gateway ${this.url}: ${method} ${path} answered ${res.status}: ${message}`;
    if (res.status === 401 || res.status === 403) {
      throw fail(
        ErrorType.InvalidInput,
        `${what}; give the worker the gateway's admin token in ${this.tokenEnv} (gateway.tokenEnv)`,
      );
    }
    if (res.status >= 500 || res.status === 409 || res.status === 429)
      throw fail(ErrorType.Unavailable, what);
    throw fail(ErrorType.InvalidInput, what);
  }

  async routes(): Promise<Record<string, CohortRoute>> {
    return (await this.call<RoutesResponse>('GET', PATHS.routes)).routes;
  }

  async update(cohort: string, update: RouteUpdate): Promise<CohortRoute> {
    return this.call<CohortRoute>('PUT', PATHS.route(cohort), update);
  }

  async events(after: number, limit: number): Promise<EventsResponse> {
    return this.call<EventsResponse>('GET', `${PATHS.events}?after=${after}&limit=${limit}`);
  }
}

/** Registers production for every cohort of a service (what `fleet init` does for one): no vehicles. */
export async function initService(
  deps: RegistryDeps,
  manifestPath: string,
  packDir: string,
  by: string,
): Promise<{
  service: string;
  cohorts: string[];
  production: Awaited<ReturnType<typeof bootstrapProduction>>;
}> {
  const manifest = loadServiceManifest(confinedPath(deps.root, manifestPath), manifestPath);
  const cohorts = manifest.cohorts.map((c) => c.name);
  const production = await bootstrapProduction(deps, packDir, cohorts, by);
  return { service: manifest.name, cohorts, production };
}

/** How far a batch's requests were sent: heartbeated, so a retry resumes (see `logRequests`). */
interface SendProgress extends Progress {
  batchId: string;
  /** The gateway's event log position before the batch's first request. */
  last: number;
  /** Cohorts of the batch (in order) whose requests were all sent. */
  sent: number;
}

export function createServiceActivities(deps: ServiceActivityDeps) {
  const { conn, key, root } = deps;
  // Every activity reads its manifest first: a gateway the worker may not call is refused before any request.
  const manifestOf = (input: FleetInput) => {
    const m = loadServiceManifest(confinedPath(root, input.manifest), input.manifest);
    checkGateway(m.gateway, deps.gateways, `service manifest ${JSON.stringify(input.manifest)}`);
    return m;
  };
  const gatewayOf = (m: ServiceManifest) =>
    new GatewayAdmin(m.gateway.url, m.gateway.tokenEnv, deps.gateways);
  const armOf = (m: ServiceManifest, digest: string): ArmRef => ({ digest, ...m.gateway.candidateArm });

  // Pseudonyms of a population cost one HMAC per caller: computed once per service, cohort and size.
  const populations = new Map<string, CallerPopulation>();
  const populationOf = (m: ServiceManifest, c: ServiceCohort): CallerPopulation => {
    const id = `${m.name}|${c.name}|${c.callers}`;
    let p = populations.get(id);
    if (!p || p.cohort !== c) {
      p = deps.callers.population(key, m.name, c);
      populations.set(id, p);
    }
    return p;
  };

  /** The gateway's routes, refusing one that does not serve every named cohort. */
  async function routesFor(m: ServiceManifest, cohorts: readonly string[]) {
    const gw = gatewayOf(m);
    const routes = await gw.routes();
    // Own keys only: a cohort named "constructor" is not a route every object has.
    const missing = cohorts.filter((c) => !Object.hasOwn(routes, c));
    if (missing.length > 0) {
      throw fail(
        ErrorType.NotFound,
        `gateway ${gw.url} has no route for cohort(s) ${missing.join(', ')} of service ${m.name} ` +
          `(it serves ${Object.keys(routes).join(', ') || 'none'}); add them to the gateway config's cohorts ` +
          'and register production for them (fleetgate fleet init --fleet <service manifest>)',
      );
    }
    return { gw, routes };
  }

  /**
   * The requested cohorts whose route has this rollout's candidate (its canary salt) and matches `keep`:
   * a revert or the end of a shadow touches only those.
   */
  async function ownRoutes(input: FleetInput & { cohorts: string[] }, keep: (r: CohortRoute) => boolean) {
    const m = manifestOf(input);
    const cohorts = cohortsOf(m, input.cohorts, 'service');
    const { gw, routes } = await routesFor(
      m,
      cohorts.map((c) => c.name),
    );
    const salt = canarySalt(input.rolloutId);
    const mine = cohorts.filter((c) => {
      const r = routes[c.name]!;
      return r.candidate !== undefined && r.salt === salt && keep(r);
    });
    return { m, gw, routes, salt, mine };
  }

  /**
   * One batch: the population of each cohort sends its requests for the window, the gateway's events
   * for them are read back, and `build` turns them into the batch's logged events. Nothing is sent when
   * the batch is already written.
   */
  async function logRequests(
    batchId: string,
    phase: 'shadow' | 'canary',
    input: FleetInput & {
      cohorts: string[];
      fromMs: number;
      toMs: number;
      labeling?: ShadowInput['labeling'];
    },
    beforeSending: (
      m: ServiceManifest,
      gw: GatewayAdmin,
      routes: Record<string, CohortRoute>,
    ) => Promise<void>,
    build: (
      m: ServiceManifest,
      draw: CallerRequests,
      events: GatewayEvent[],
      cohortIndex: number,
    ) => SimulatedCohort,
  ): Promise<BatchResult> {
    if (!(Number.isFinite(input.fromMs) && Number.isFinite(input.toMs) && input.toMs > input.fromMs)) {
      throw fail(
        ErrorType.InvalidInput,
        `batch window must have toMs > fromMs (got ${input.fromMs}, ${input.toMs})`,
      );
    }
    const [before] = await exclusive(conn, () =>
      rows(conn, `SELECT events FROM batches WHERE batch_id = ?`, [batchId]),
    );
    if (before) return { batchId, events: num(before.events), written: false };
    const m = manifestOf(input);
    const cohorts = cohortsOf(m, input.cohorts, 'service');
    const { gw, routes } = await routesFor(
      m,
      cohorts.map((c) => c.name),
    );
    await beforeSending(m, gw, routes);
    const tag = eventTag(batchId);
    // A retry of a batch whose requests were partly sent resumes: from the event log position the lost
    // attempt started at, sending only the cohorts it had not sent (the gateway serves each request
    // once more otherwise, and its users would be counted twice).
    const resumed = resumeFrom<SendProgress>();
    const same = resumed?.batchId === batchId && typeof resumed.last === 'number';
    const last = same ? resumed.last : (await gw.events(0, 0)).last;
    const sent = same ? resumed.sent : 0;
    const draws = cohorts.map((c) =>
      populationOf(m, c).draw(m.seed, batchId, input.fromMs, input.toMs, m.load.maxRequestsPerWindow),
    );
    const indexOf = cohorts.map((c) => m.cohorts.indexOf(c));
    // Request i of a cohort is event `${tag}.${cohortIndex}.${i}` of the batch (activities/fleet.ts).
    for (const [j, draw] of draws.entries()) {
      if (j < sent) continue;
      progress({
        step: `${phase} batch: sending cohort ${j + 1} of ${draws.length}`,
        batchId,
        last,
        sent: j,
      });
      await deps.callers.send(m.gateway.url, draw, m.load.concurrency, (i) => `${tag}.${indexOf[j]}.${i}`);
      progress({
        step: `${phase} batch: sent cohort ${j + 1} of ${draws.length}`,
        batchId,
        last,
        sent: j + 1,
      });
    }
    const seen = await readEvents(gw, last, tag, draws, indexOf);
    const simulated = draws.map((draw, j) => build(m, draw, seen[j]!, indexOf[j]!));
    return writeBatch(conn, {
      batchId,
      phase,
      rolloutId: input.rolloutId,
      fromMs: input.fromMs,
      toMs: input.toMs,
      seed: m.seed,
      labels: { rate: m.labels.rate, noise: m.labels.noise },
      labelDelayMs: (cohort) => labelDelayMs(m, cohort),
      // Each request stands for 1 / requestsPerCallerHour caller-hours of use.
      exposurePerEvent: (cohort) => 1 / m.cohorts.find((c) => c.name === cohort)!.requestsPerCallerHour,
      labeling: input.labeling,
      simulated,
    });
  }

  /**
   * The gateway's events of the batch's requests, per cohort by request index, read from the log after
   * `after` until every request has its event; Unavailable (retried) when some never come.
   */
  async function readEvents(
    gw: GatewayAdmin,
    after: number,
    tag: string,
    draws: CallerRequests[],
    indexOf: number[],
  ): Promise<GatewayEvent[][]> {
    const position = new Map(indexOf.map((cohortIndex, j) => [cohortIndex, j]));
    const seen = draws.map((d) => new Array<GatewayEvent>(d.n));
    let missing = draws.reduce((s, d) => s + d.n, 0);
    let cursor = after;
    let checked = false;
    for (let polls = 0; missing > 0;) {
      const page = await gw.events(cursor, EVENTS_PAGE);
      cursor = page.next;
      for (const e of page.events) {
        const m = /^([0-9a-f]{16})\.(\d+)\.(\d+)$/.exec(e.requestId);
        if (!m || m[1] !== tag) continue;
        const j = position.get(Number(m[2]));
        const i = Number(m[3]);
        if (j === undefined || i >= draws[j]!.n || seen[j]![i]) continue;
        if (!checked) {
          checked = true;
          if (e.caller !== draws[j]!.callerPseudonym(i)) {
            throw fail(
              ErrorType.InvalidInput,
              `gateway ${gw.url} hashes callers with another pseudonym key than this worker's; the canary's ` +
                "counts and the events' pseudonyms would not match: give the gateway and the worker the same key",
            );
          }
        }
        seen[j]![i] = e;
        missing--;
      }
      if (missing === 0) break;
      if (page.events.length === 0) {
        if (++polls > EVENT_POLLS) {
          throw fail(
            ErrorType.Unavailable,
            `gateway ${gw.url}: ${missing} request(s) of the batch have no event in its log after ` +
              `${(EVENT_POLLS * EVENT_POLL_MS) / 1000}s; retrying the batch`,
          );
        }
        await new Promise((r) => setTimeout(r, EVENT_POLL_MS));
      }
    }
    return seen;
  }

  return {
    /**
     * The service's name, SKUs and cohorts (callers as `vehicles`), from its manifest, `mirrors` (its
     * shadow is a gateway mirror that `endShadow` stops) and the candidate arm's threshold when the
     * manifest sets one (`candidateConfig`); NotFound when the gateway does not route every cohort,
     * Unavailable when it does not answer.
     */
    async describeFleet(input: FleetInput): Promise<FleetSummary> {
      const m = manifestOf(input);
      await routesFor(
        m,
        m.cohorts.map((c) => c.name),
      );
      return {
        name: m.name,
        skus: m.skus,
        cohorts: m.cohorts.map((c) => ({
          name: c.name,
          sku: c.sku,
          region: m.name,
          firmware: '1.0.0',
          vehicles: c.callers,
          nightShare: c.nightShare,
          rainShare: c.rainShare,
          sensorNoise: c.sensorNoise,
          availability: { online: 1, parked: 1, batteryOk: 1 },
        })),
        mirrors: true,
        ...(m.gateway.candidateArm?.threshold !== undefined
          ? { candidateConfig: { threshold: m.gateway.candidateArm.threshold } }
          : {}),
      };
    },

    /**
     * Routes `percent` of each cohort's callers to the candidate (its serving configuration from the
     * manifest's gateway.candidateArm), with the rollout's canary salt and no mirror. Returns per cohort
     * the callers the gateway's router gives the candidate. A repeat changes nothing.
     */
    async deliverWave(input: DeliverInput): Promise<DeliveryResult> {
      const m = manifestOf(input);
      const cohorts = cohortsOf(m, input.cohorts, 'service');
      const jobId = `${input.rolloutId}-w${input.wave}`;
      waveShare(input.percent);
      await checkArtifact(deps.store, input.digest, jobId);
      const { gw, routes } = await routesFor(
        m,
        cohorts.map((c) => c.name),
      );
      const salt = canarySalt(input.rolloutId);
      refuseBusy(
        gw.url,
        routes,
        cohorts.map((c) => c.name),
        salt,
      );
      const vehicles: Record<string, number> = {};
      for (const c of cohorts) {
        // An abort cancels the rest of the wave; the cohorts already routed are reverted by its compensation.
        throwIfCancelled(`routing of wave ${input.wave} in ${c.name}`);
        await gw.update(c.name, {
          candidate: armOf(m, input.digest),
          weight: input.percent,
          mirror: 0,
          salt,
        });
        vehicles[c.name] = populationOf(m, c).candidateCallers(key, salt, input.percent);
      }
      return { jobId, vehicles };
    },

    /**
     * Sets the candidate's weight and mirror to 0 in the given cohorts, all at once (the candidate stays
     * loaded and serves nothing). Only routes of this rollout (its canary salt) are touched. Returns the
     * callers that had the candidate; a second call reverts 0.
     */
    async revertWave(input: RevertInput): Promise<{ reverted: number }> {
      const { m, gw, routes, salt, mine } = await ownRoutes(input, (r) => r.weight > 0 || r.mirror > 0);
      await Promise.all(mine.map((c) => gw.update(c.name, { weight: 0, mirror: 0 })));
      let reverted = 0;
      for (const c of mine)
        reverted += populationOf(m, c).candidateCallers(key, salt, routes[c.name]!.weight);
      return { reverted };
    },

    /**
     * Ends the shadow of the given cohorts: the gateway stops mirroring their requests to the candidate
     * (mirror 0; weight untouched, the candidate stays loaded). Only routes of this rollout (its canary
     * salt) are touched. Returns the cohorts that were mirroring; a second call stops 0.
     */
    async endShadow(input: EndShadowInput): Promise<{ stopped: number }> {
      const { gw, mine } = await ownRoutes(input, (r) => r.mirror > 0);
      await Promise.all(mine.map((c) => gw.update(c.name, { mirror: 0 })));
      return { stopped: mine.length };
    },

    /**
     * Makes the candidate (with the manifest's candidateArm) the cohort's production arm, serving all of
     * its callers, and removes the candidate arm. Returns the cohort's callers. A repeat changes nothing.
     */
    async promoteCohort(input: PromoteInput): Promise<{ vehicles: number }> {
      const m = manifestOf(input);
      const [cohort] = cohortsOf(m, [input.cohort], 'service');
      await checkArtifact(deps.store, input.digest, `${input.rolloutId}-promote-${input.cohort}`);
      const { gw } = await routesFor(m, [cohort!.name]);
      await gw.update(cohort!.name, {
        production: armOf(m, input.digest),
        candidate: null,
        weight: 0,
        mirror: 0,
      });
      return { vehicles: cohort!.callers };
    },

    /**
     * One shadow batch: the gateway mirrors `share` of each cohort's production requests to the
     * candidate (weight 0: no caller is served by it); the mirrored requests the candidate answered
     * are logged as 'shadow' events with both models' outputs and latencies, and sent for labeling in
     * tiers as a fleet's shadow events are. The upload filter (`edge`) is a vehicle's: it does not
     * apply. Keyed by `${rolloutId}:shadow:${fromMs}-${toMs}`.
     */
    async runShadow(input: ShadowInput): Promise<BatchResult> {
      if (!(input.share > 0 && input.share <= 1)) {
        throw fail(ErrorType.InvalidInput, `shadow share must be in (0, 1] (got ${input.share})`);
      }
      const batchId = `${input.rolloutId}:shadow:${input.fromMs}-${input.toMs}`;
      const salt = canarySalt(input.rolloutId);
      const lowConfidence = input.edge?.lowConfidence ?? PRIORITY_CONFIDENCE;
      return logRequests(
        batchId,
        'shadow',
        input,
        async (m, gw, routes) => {
          await checkArtifact(deps.store, input.candidateDigest, batchId);
          refuseBusy(gw.url, routes, input.cohorts, salt);
          for (const c of cohortsOf(m, input.cohorts, 'service')) {
            await gw.update(c.name, {
              candidate: armOf(m, input.candidateDigest),
              weight: 0,
              mirror: input.share,
              salt,
            });
          }
        },
        (m, draw, events, cohortIndex) => {
          const n = draw.n;
          const out = new EventColumns(n);
          const keep = new Uint8Array(n);
          const failed = new Uint8Array(n);
          const request = new Uint8Array(n);
          for (let i = 0; i < n; i++) {
            const e = events[i]!;
            const sampled = draw.rng() < m.labels.rate;
            const s = e.shadow;
            if (!s || s.dropped || s.failed || s.pred === undefined) continue;
            keep[i] = 1;
            setColumns(out.candidate, i, s.pred, s.conf, s.latencyMs);
            if (e.failed) failed[i] = 1;
            else setColumns(out.production, i, e.pred, e.conf, e.latencyMs);
            const low = Math.min(out.candidate.conf[i]!, out.production.conf[i]!) < lowConfidence;
            const disagree = out.candidate.pred[i] !== out.production.pred[i];
            request[i] = low || disagree ? 1 : sampled ? 2 : 0;
          }
          return {
            sim: draw,
            out,
            arm: () => 'shadow',
            vehicles: draw.pseudonyms,
            cohortIndex,
            request,
            keep,
            failed,
          };
        },
      );
    },

    /**
     * One canary batch: each cohort's callers send their requests, served by the arm the gateway's
     * router gives them; every request is logged in its arm with the serving model's prediction,
     * confidence and the gateway's latency, and its failed flag. A seeded `labels.rate` share of the
     * answered requests is sent for labeling ('sample'). Keyed by `${rolloutId}:canary:${fromMs}-${toMs}`.
     */
    async collectTelemetry(input: TelemetryInput): Promise<BatchResult> {
      const batchId = `${input.rolloutId}:canary:${input.fromMs}-${input.toMs}`;
      return logRequests(
        batchId,
        'canary',
        input,
        async () => undefined,
        (m, draw, events, cohortIndex) => {
          const n = draw.n;
          const out = new EventColumns(n);
          const isCandidate = new Uint8Array(n);
          const failed = new Uint8Array(n);
          const request = new Uint8Array(n);
          for (let i = 0; i < n; i++) {
            const e = events[i]!;
            const sampled = draw.rng() < m.labels.rate;
            if (e.arm === 'candidate') isCandidate[i] = 1;
            const cols = e.arm === 'candidate' ? out.candidate : out.production;
            if (e.failed) {
              failed[i] = 1;
              cols.lat[i] = e.latencyMs;
            } else {
              setColumns(cols, i, e.pred, e.conf, e.latencyMs);
              // A failed request has no prediction to judge: its outcome is not asked for.
              request[i] = sampled ? 2 : 0;
            }
          }
          return {
            sim: draw,
            out,
            arm: (i: number) => (isCandidate[i] ? 'candidate' : 'production'),
            vehicles: draw.pseudonyms,
            cohortIndex,
            request,
            failed,
          };
        },
      );
    },
  };
}

export type ServiceActivities = ReturnType<typeof createServiceActivities>;

/**
 * Refuses (PointerConflict, not retried) cohorts whose route serves or mirrors the candidate of another
 * rollout (another canary salt): one rollout per cohort at a time, or each would take the other's
 * callers. A route left with weight and mirror at 0, or promoted, is free again.
 */
export function refuseBusy(
  gatewayUrl: string,
  routes: Record<string, CohortRoute>,
  cohorts: readonly string[],
  salt: string,
): void {
  const busy = cohorts.filter((c) => {
    const r = Object.hasOwn(routes, c) ? routes[c] : undefined;
    return r?.candidate !== undefined && r.salt !== salt && (r.weight > 0 || r.mirror > 0);
  });
  if (busy.length === 0) return;
  const owners = busy.map((c) => {
    const r = routes[c]!;
    return `${c} (rollout ${r.salt.replace(/:canary$/, '')}: weight ${r.weight}%, mirror ${r.mirror})`;
  });
  throw fail(
    ErrorType.PointerConflict,
    `gateway ${gatewayUrl}: cohort(s) ${owners.join(', ')} serve another rollout's candidate; one rollout ` +
      'per cohort at a time: wait for that rollout to end, or abort it (fleetgate abort ID)',
    { cohorts: busy },
  );
}

/**
 * Whether a rollout's manifest (resolved against the worker's root) is a service's (`kind: Service`):
 * its fleet activities are then the gateway's. A manifest that cannot be read, or lies outside the root
 * (not read), goes to the fleet's activities, whose errors name it.
 */
export function isServiceManifest(root: string, manifest: string): boolean {
  try {
    return manifestKind(confinedPath(root, manifest), manifest) === 'Service';
  } catch {
    return false;
  }
}

/**
 * The fleet activities that take a manifest, each dispatched on its kind: a fleet's vehicles
 * (activities/fleet.ts) or a service behind the inference gateway (activities/service.ts).
 */
export function dispatchFleetActivities(
  root: string,
  fleet: Pick<FleetActivities, DispatchedActivity>,
  service: Pick<FleetActivities, DispatchedActivity>,
): Pick<FleetActivities, DispatchedActivity> {
  const pick = (input: { manifest: string }) => (isServiceManifest(root, input.manifest) ? service : fleet);
  return {
    describeFleet: (input) => pick(input).describeFleet(input),
    deliverWave: (input) => pick(input).deliverWave(input),
    revertWave: (input) => pick(input).revertWave(input),
    promoteCohort: (input) => pick(input).promoteCohort(input),
    runShadow: (input) => pick(input).runShadow(input),
    endShadow: (input) => pick(input).endShadow(input),
    collectTelemetry: (input) => pick(input).collectTelemetry(input),
  };
}
type DispatchedActivity =
  | 'describeFleet'
  | 'deliverWave'
  | 'revertWave'
  | 'promoteCohort'
  | 'runShadow'
  | 'endShadow'
  | 'collectTelemetry';

function setColumns(
  cols: EventColumns['candidate'],
  i: number,
  pred: number | undefined,
  conf: number | undefined,
  latencyMs: number | undefined,
): void {
  if (pred !== undefined) cols.pred[i] = pred;
  if (conf !== undefined) cols.conf[i] = conf;
  if (latencyMs !== undefined) cols.lat[i] = latencyMs;
}

/** The mean delay of a cohort's outcomes. */
function labelDelayMs(m: ServiceManifest, cohort: string): number {
  return parseDuration(m.labels.delayByCohort?.[cohort] ?? m.labels.delay) ?? 0;
}

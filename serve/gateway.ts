/**
 * The inference gateway (`fleetgate serve`): registered models served behind the HTTP API of
 * serve/api.ts, with a canary routing weight, shadow mirroring and instant rollback per cohort.
 *
 *   POST /v1/predict        validate, pseudonymise the caller, pick the arm (serve/router.ts), preprocess
 *                           as the arm model's inference_config.json says, infer through the model's
 *                           micro-batcher (serve/batcher.ts), answer; then, off the response path, mirror
 *                           to the candidate and write the request's event (serve/event-log.ts)
 *   GET  /healthz /readyz   alive; ready once every routed model is loaded and while not draining
 *   GET  /metrics           Prometheus text (serve/metrics.ts)
 *   /admin/*                bearer token from the environment variable the config names: read and change
 *                           routes (saved atomically in routes.json before answering), read events
 *
 * Every answer of the served path (200, 5xx) is one event, written to the OS before the answer is sent
 * (serve/event-log.ts `commit`, shared by concurrent requests), so a crash right after an answer loses
 * none; a mirrored request's event is first a pending line, settled with the shadow's answer when it is
 * done or dropped. A request refused (400, 413 for what it sent, 429 queue full, 503 draining) has no
 * event: it is counted in `fleetgate_gateway_refused_total` and summed in one log line per 10 s
 * (serve/log-window.ts). A model output that is NaN or Infinity is never a class: the request fails (500,
 * `fleetgate_gateway_nonfinite_outputs_total`, a failed event; a failed shadow when mirrored), and a
 * feature beyond float32 range is refused (400) before the model runs (serve/decode.ts). A route update
 * with no effect (a retry) answers the route as it is, whatever its ifGeneration.
 *
 * Names that come from a request (a cohort in a path or a body) are looked up in `Map`s or arrays only,
 * never on a plain object, where `constructor` or `__proto__` would find what every object inherits; a
 * saved route under such a name is dropped with a warning at start (serve/routes-store.ts). Every answer
 * says `nosniff` and forbids framing (`X-Frame-Options`, `Content-Security-Policy`): the gateway serves
 * data, never a page.
 *
 * The raw caller id lives only as long as it takes to compute its keyed pseudonym: nothing logged, stored,
 * counted, traced or returned carries it. Memory is bounded by the body limit, the served queue's rows and
 * the shadow queue's rows; a full queue answers 429, a full shadow queue drops the mirror.
 */
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { mkdirSync } from 'node:fs';
import { isDeepStrictEqual } from 'node:util';
import { context, propagation, SpanStatusCode, trace } from '@opentelemetry/api';
import type { z } from 'zod';
import type { ModelRunner, ObjectStore } from '../activities/deps';
import { cohortPointers } from '../activities/registry-read';
import { S3ObjectStore } from '../activities/store-s3';
import { pseudonym } from '../fleet/pseudonym';
import { loadConfig, loadStoreConfig, openObjectStore } from '../workers/config';
import { blobKey, OnnxModelRunner } from '../workers/model-runner';
import { loadPseudonymKey } from '../workers/secrets';
import {
  type Arm,
  type ArmRef,
  CohortRoute,
  type ErrorBody,
  type EventsResponse,
  FLOAT32_MAX,
  type GatewayEvent,
  HEADERS,
  PATHS,
  PredictRequest,
  type PredictOutput,
  type PredictResponse,
  REQUEST_ID,
  RouteUpdate,
  type RoutesResponse,
} from './api';
import { MicroBatcher, QueueFullError, RowBudget } from './batcher';
import type { GatewayConfig } from './config';
import { decodeOutputs, FeatureRangeError, NonFiniteOutputError, preprocessRows } from './decode';
import { EventLog, MAX_READ, type PendingEvent } from './event-log';
import { LogWindow } from './log-window';
import { GatewayMetrics } from './metrics';
import { ModelCatalog, ModelUnavailableError, type ServedModel } from './models';
import { chooseArm, isInjectedError, isMirrored } from './router';
import { RoutesStore, shownName } from './routes-store';

export interface Gateway {
  url: string;
  port: number;
  routes(): Record<string, CohortRoute>;
  /** Stops taking predicts (503), finishes queued work and shadows, flushes the event log, closes the server. */
  drain(): Promise<void>;
  /** Drains (when not yet drained) and releases the runner and store it opened. */
  close(): Promise<void>;
}

export interface GatewayDeps {
  store?: ObjectStore;
  key?: Buffer;
  runner?: ModelRunner;
  dataDir?: string;
  /** Structured log lines (default: JSON on stderr). */
  log?: (line: object) => void;
}

/** A request refused, with what to put in its ErrorBody. */
class HttpError extends Error {
  override name = 'HttpError';
  /** The `reason` label a refused predict is counted under. */
  reason = 'invalid-request';
  constructor(
    readonly status: number,
    message: string,
    readonly field?: string,
    readonly value?: unknown,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

const tracer = trace.getTracer('fleetgate-gateway');
const JSON_TYPE = 'application/json; charset=utf-8';
const DEFAULT_EVENTS_LIMIT = 1000;
/** On every answer: no content sniffing, no framing by any page (the gateway serves data, not pages). */
const SECURITY_HEADERS = {
  'X-Content-Type-Options': 'nosniff',
  'X-Frame-Options': 'DENY',
  'Content-Security-Policy': "default-src 'none'; frame-ancestors 'none'",
} as const;

function defaultSalt(config: GatewayConfig, cohort: string): string {
  return `${config.name}:${cohort}:canary`;
}

function sendJson(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}) {
  const body = JSON.stringify(value);
  res.writeHead(status, {
    ...SECURITY_HEADERS,
    'Content-Type': JSON_TYPE,
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
    ...headers,
  });
  res.end(body);
}

function sendError(res: ServerResponse, err: HttpError, headers: Record<string, string> = {}) {
  const error: ErrorBody['error'] = { status: err.status, message: err.message };
  if (err.field !== undefined) error.field = err.field;
  if (err.value !== undefined) error.value = shorten(err.value);
  sendJson(res, err.status, { error } satisfies ErrorBody, { ...err.headers, ...headers });
}

/** A value to echo in an error: long ones are cut, so an error never carries a whole body back. */
function shorten(value: unknown): unknown {
  // JSON has no NaN or Infinity (they would read as null): such a value is echoed as its name.
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value);
  const s = JSON.stringify(value);
  if (s === undefined || s.length <= 200) return value;
  return `${s.slice(0, 197)}...`;
}

/** The first zod issue as an HttpError naming its field and value (the caller's id is never echoed). */
function zodError(error: z.ZodError, input: unknown, what: string): HttpError {
  const issue = error.issues[0]!;
  const field = issue.path.map(String).join('.') || undefined;
  let value: unknown = input;
  for (const k of issue.path) {
    value =
      value !== null && typeof value === 'object' && Object.hasOwn(value, k)
        ? (value as Record<PropertyKey, unknown>)[k]
        : undefined;
  }
  // The whole body is never echoed (it holds the caller), nor the caller itself.
  if (issue.path.length === 0) value = issue.code === 'unrecognized_keys' ? issue.keys : undefined;
  if (issue.path[0] === 'caller') value = undefined;
  const fix =
    issue.code === 'unrecognized_keys'
      ? `remove ${issue.keys.map((k) => `"${k}"`).join(', ')}`
      : issue.message;
  const more = error.issues.length > 1 ? ` (and ${error.issues.length - 1} more problem(s))` : '';
  const e = new HttpError(400, `${what}: ${field ?? '(body)'}: ${fix}${more}`, field, value);
  if (typeof value === 'number' && !(Math.abs(value) <= FLOAT32_MAX)) e.reason = 'out-of-range';
  return e;
}

async function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  const tooLarge = () =>
    Object.assign(
      new HttpError(413, `the body is over ${max} bytes; send fewer rows per request`, undefined, undefined, {
        Connection: 'close',
      }),
      { reason: 'body-too-large' },
    );
  if (Number.isFinite(declared) && declared > max) {
    req.resume();
    throw tooLarge();
  }
  const chunks: Buffer[] = [];
  let size = 0;
  let over = false;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > max) over = true;
    else chunks.push(chunk);
  }
  if (over) throw tooLarge();
  return Buffer.concat(chunks);
}

function parseJson(bytes: Buffer): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new HttpError(400, `the body is not JSON: ${(err as Error).message}; send a JSON object`);
  }
}

/** Equality of two secrets in time independent of where they differ (and of their lengths). */
function sameSecret(a: string, b: string): boolean {
  const ha = createHash('sha256').update(a, 'utf8').digest();
  const hb = createHash('sha256').update(b, 'utf8').digest();
  return timingSafeEqual(ha, hb);
}

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

export async function startGateway(config: GatewayConfig, deps: GatewayDeps = {}): Promise<Gateway> {
  const log =
    deps.log ??
    ((line: object) =>
      process.stderr.write(JSON.stringify({ ts: new Date().toISOString(), ...line }) + '\n'));
  const needsDataDir = !deps.store || !deps.key;
  const dataDir = deps.dataDir ?? (needsDataDir ? loadConfig().dataDir : undefined);
  const ownStore = !deps.store;
  const store = deps.store ?? openObjectStore(loadStoreConfig(), dataDir!);
  const key = deps.key ?? loadPseudonymKey(dataDir!);
  const ownRunner = !deps.runner;
  const runner = deps.runner ?? new OnnxModelRunner((digest) => store.get(blobKey(digest)));
  const releaseOwned = async () => {
    if (ownRunner) await runner.close();
    if (ownStore && store instanceof S3ObjectStore) store.close();
  };

  mkdirSync(config.stateDir, { recursive: true });
  const routesStore = new RoutesStore(config.stateDir);
  let routes: Map<string, CohortRoute>;
  /** Saved routes of cohorts this config does not serve: kept in routes.json, not served. */
  let others: Map<string, CohortRoute>;
  let events: EventLog;
  try {
    ({ routes, others } = await initialRoutes(config, routesStore, store, log));
    events = EventLog.open(config.stateDir, { syncMs: config.events.syncMs });
  } catch (err) {
    await releaseOwned();
    throw err;
  }

  const catalog = new ModelCatalog(store, runner);
  const served = new RowBudget(config.queue.maxQueued);
  const shadowBudget = new RowBudget(config.shadow.maxQueued);
  const metrics = new GatewayMetrics(() => served.rows);
  const summary = new LogWindow(log);
  /** Counts a refused predict (never logged one by one: summed in the window's summary line). */
  const refuse = (status: number, reason: string) => {
    metrics.refused.inc({ code: String(status), reason });
    summary.note(`${status} ${reason}`, `requests refused with ${status} (${reason})`);
  };
  const batchers = new Map<string, MicroBatcher>();
  const batcherOf = (model: ServedModel) => {
    let b = batchers.get(model.digest);
    if (!b) {
      b = new MicroBatcher({
        runner,
        digest: model.digest,
        features: model.features,
        maxBatch: config.batching.maxBatch,
        maxDelayMs: config.batching.maxDelayMs,
        onBatch: (rows) => metrics.batchSize.observe(rows),
      });
      batchers.set(model.digest, b);
    }
    return b;
  };
  const setRouteGauges = (cohort: string, r: CohortRoute) => {
    metrics.routeWeight.set({ cohort }, r.candidate ? r.weight : 0);
    metrics.routeMirror.set({ cohort }, r.candidate ? r.mirror : 0);
  };
  for (const [cohort, r] of routes) setRouteGauges(cohort, r);

  const routedDigests = () => {
    const ds = new Set<string>();
    for (const r of routes.values()) {
      ds.add(r.production.digest);
      if (r.candidate) ds.add(r.candidate.digest);
    }
    return [...ds];
  };
  const warm = (digests: string[]) =>
    Promise.all(
      digests.map((d) =>
        catalog.get(d).catch((err: unknown) => {
          log({
            level: 'error',
            event: 'gateway.model-unavailable',
            digest: d,
            message: (err as Error).message,
          });
        }),
      ),
    );

  let draining = false;
  let drained: Promise<void> | undefined;
  const inFlight = new Set<Promise<void>>();
  const shadows = new Set<Promise<void>>();
  let adminChain: Promise<unknown> = Promise.resolve();

  // ---- predict --------------------------------------------------------------------------------

  const predict = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    try {
      await acceptPredict(req, res);
    } catch (err) {
      if (err instanceof HttpError) refuse(err.status, err.reason);
      throw err;
    }
  };

  const acceptPredict = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (draining) {
      throw Object.assign(
        new HttpError(503, 'the gateway is draining; send the request to another instance'),
        { reason: 'draining' },
      );
    }
    const rawId = req.headers[HEADERS.requestId];
    let requestId: string;
    if (rawId === undefined) requestId = randomUUID();
    else if (typeof rawId === 'string' && REQUEST_ID.test(rawId)) requestId = rawId;
    else {
      throw new HttpError(
        400,
        `header ${HEADERS.requestId} must be 1-128 characters of letters, digits, ".", "_", ":" and "-"`,
        HEADERS.requestId,
        rawId,
      );
    }
    try {
      await servePredict(req, res, requestId);
    } catch (err) {
      if (err instanceof HttpError) err.headers[HEADERS.requestId] = requestId;
      throw err;
    }
  };

  const servePredict = async (
    req: IncomingMessage,
    res: ServerResponse,
    requestId: string,
  ): Promise<void> => {
    const simRaw = req.headers[HEADERS.simTime];
    let tsMs = Date.now();
    if (simRaw !== undefined) {
      if (!config.acceptSimTime) {
        throw new HttpError(
          400,
          `header ${HEADERS.simTime} is accepted only by a gateway configured with acceptSimTime: true; remove the header`,
          HEADERS.simTime,
          simRaw,
        );
      }
      const t = Number(simRaw);
      if (typeof simRaw !== 'string' || !/^\d{1,16}$/.test(simRaw) || !Number.isSafeInteger(t)) {
        throw new HttpError(
          400,
          `header ${HEADERS.simTime} must be whole ms since the epoch, e.g. 1767225600000`,
          HEADERS.simTime,
          simRaw,
        );
      }
      tsMs = t;
    }
    const body = parseJson(await readBody(req, config.limits.maxBodyBytes));
    const parsed = PredictRequest.safeParse(body);
    if (!parsed.success) throw zodError(parsed.error, body, 'invalid predict request');
    const started = performance.now();
    const { inputs } = parsed.data;
    const cohort = parsed.data.cohort ?? config.cohorts[0]!;
    if (!config.cohorts.includes(cohort)) {
      throw Object.assign(
        new HttpError(
          400,
          `unknown cohort "${cohort}"; this gateway serves ${config.cohorts.map((c) => `"${c}"`).join(', ')}`,
          'cohort',
          cohort,
        ),
        { reason: 'unknown-cohort' },
      );
    }
    if (inputs.length > config.limits.maxRows) {
      throw Object.assign(
        new HttpError(
          400,
          `${inputs.length} rows are over this gateway's limit of ${config.limits.maxRows}; split the request`,
          'inputs',
          inputs.length,
        ),
        { reason: 'too-many-rows' },
      );
    }
    // The raw id ends here: only its keyed pseudonym goes on.
    const caller = pseudonym(key, parsed.data.caller);
    const route = routes.get(cohort)!;
    const arm = chooseArm(key, route, caller);
    const ref = arm === 'candidate' ? route.candidate! : route.production;

    // A caller's W3C traceparent makes this request's span a child of the caller's.
    const parent = propagation.extract(context.active(), req.headers);
    await tracer.startActiveSpan('gateway.predict', {}, parent, async (span) => {
      span.setAttributes({ cohort, arm, rows: inputs.length, 'request.id': requestId });
      let status = 200;
      try {
        const result = await serveArm(cohort, arm, ref, inputs, requestId);
        status = result.status;
        const headers = { [HEADERS.arm]: arm, [HEADERS.requestId]: requestId };
        // A refused request (400 for what it sent, 429 queue full) is not a served request: it has no
        // event, and is counted (and summed in the log) only.
        if (status === 400 || status === 429) {
          refuse(status, result.error!.reason);
          metrics.requests.inc({ cohort, arm, code: String(status) });
          sendError(res, result.error!, headers);
          return;
        }
        const latencyMs = performance.now() - started;
        const event: Omit<GatewayEvent, 'seq'> = {
          requestId,
          tsMs,
          cohort,
          caller,
          arm,
          digest: ref.digest,
          ...(ref.threshold !== undefined ? { threshold: ref.threshold } : {}),
          ...(result.outputs
            ? { pred: result.outputs[0]!.class, conf: result.outputs[0]!.probs[result.outputs[0]!.class] }
            : {}),
          latencyMs,
          status,
          failed: status >= 500,
          ...(status >= 500 ? { reason: result.error!.reason } : {}),
        };
        const mirror =
          arm === 'production' &&
          status === 200 &&
          route.candidate !== undefined &&
          isMirrored(key, route.salt, requestId, route.mirror);
        // The event reaches the OS before the answer leaves: a crash after the answer loses nothing
        // answered. A mirrored request's event is pending until its shadow is done (shadow unknown if the
        // gateway dies first).
        let pending: PendingEvent | undefined;
        if (mirror) {
          pending = events.appendPending({
            ...event,
            shadow: { digest: route.candidate!.digest, failed: false, dropped: true, lost: true },
          });
          // The mirror starts at once, as the answer's turn of the event loop: it joins the candidate's
          // micro-batch with the requests it came with, so its latency compares with production's (started
          // after the commit, it would wait a batching window alone). It settles after the pending line.
          startShadow(cohort, route.candidate!, inputs, event, pending);
        } else events.append(event);
        const t0 = performance.now();
        try {
          await events.commit();
        } catch (err) {
          status = 500;
          metrics.errors.inc({ cohort, arm, reason: 'event-log' });
          summary.note('event-log', 'event log writes failed', {
            level: 'error',
            event: 'gateway.event-log-failed',
            message: (err as Error).message,
          });
          metrics.requests.inc({ cohort, arm, code: '500' });
          sendError(
            res,
            new HttpError(500, `the request's event could not be logged (${(err as Error).message}); retry`),
            headers,
          );
          return;
        }
        metrics.eventCommit.observe((performance.now() - t0) / 1000);
        metrics.requests.inc({ cohort, arm, code: String(status) });
        metrics.duration.observe({ cohort, arm }, latencyMs / 1000);
        if (result.outputs) {
          const response: PredictResponse = {
            requestId,
            arm,
            model: {
              digest: ref.digest,
              ...(result.model?.name ? { name: result.model.name } : {}),
              ...(result.model?.version ? { version: result.model.version } : {}),
            },
            outputs: result.outputs,
            latencyMs,
          };
          sendJson(res, 200, response, headers);
        } else {
          sendError(res, result.error!, headers);
        }
      } catch (err) {
        status = 500;
        span.recordException(err as Error);
        throw err;
      } finally {
        span.setAttribute('status', status);
        if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
        span.end();
      }
    });
  };

  /** Runs the arm's model on the rows: outputs, or the error to answer with. */
  const serveArm = async (
    cohort: string,
    arm: Arm,
    ref: ArmRef,
    inputs: number[][],
    requestId: string,
  ): Promise<{ status: number; outputs?: PredictOutput[]; model?: ServedModel; error?: HttpError }> => {
    const inject = config.faultInjection ? ref.inject : undefined;
    const addLatency = async () => {
      if (inject?.latencyMs) await sleep(inject.latencyMs);
    };
    let model: ServedModel;
    try {
      model = await catalog.get(ref.digest);
    } catch (err) {
      metrics.errors.inc({ cohort, arm, reason: 'model-unavailable' });
      log({
        level: 'error',
        event: 'gateway.model-unavailable',
        cohort,
        arm,
        digest: ref.digest,
        message: (err as Error).message,
      });
      return {
        status: 503,
        error: new HttpError(503, `the ${arm} model cannot be served now: ${(err as Error).message}`),
      };
    }
    for (let i = 0; i < inputs.length; i++) {
      if (inputs[i]!.length !== model.features) {
        metrics.errors.inc({ cohort, arm, reason: 'bad-input' });
        return {
          status: 400,
          model,
          error: Object.assign(
            new HttpError(
              400,
              `row ${i} has ${inputs[i]!.length} features; the model takes ${model.features} per row`,
              `inputs.${i}`,
              inputs[i]!.length,
            ),
            { reason: 'bad-input' },
          ),
        };
      }
    }
    let x: Float32Array;
    try {
      x = preprocessRows(inputs, model);
    } catch (err) {
      if (!(err instanceof FeatureRangeError)) throw err;
      return {
        status: 400,
        model,
        error: Object.assign(new HttpError(400, err.message, err.field, err.value), {
          reason: 'out-of-range',
        }),
      };
    }
    if (isInjectedError(requestId, inject?.errorRate)) {
      await addLatency();
      metrics.errors.inc({ cohort, arm, reason: 'injected' });
      return {
        status: 500,
        model,
        error: Object.assign(
          new HttpError(500, `injected fault (errorRate ${inject!.errorRate}) of the ${arm} arm`),
          { reason: 'injected' },
        ),
      };
    }
    const span = tracer.startSpan(
      'gateway.inference',
      { attributes: { digest: model.digest, rows: inputs.length } },
      context.active(),
    );
    let r;
    try {
      r = await batcherOf(model).submit(x, inputs.length, served);
      span.setAttribute('batch.size', r.batchRows);
      span.end();
    } catch (err) {
      span.end();
      if (err instanceof QueueFullError) {
        metrics.rejected.inc();
        metrics.errors.inc({ cohort, arm, reason: 'queue-full' });
        return {
          status: 429,
          model,
          error: Object.assign(
            new HttpError(
              429,
              `the gateway is busy (${err.message}); retry after 1 s`,
              undefined,
              undefined,
              {
                'Retry-After': '1',
              },
            ),
            { reason: 'queue-full' },
          ),
        };
      }
      metrics.errors.inc({ cohort, arm, reason: 'inference' });
      summary.note(`inference ${model.digest}`, `inference failures of model ${model.digest.slice(0, 12)}`, {
        level: 'error',
        event: 'gateway.inference-failed',
        cohort,
        arm,
        digest: model.digest,
        message: (err as Error).message,
      });
      return {
        status: 500,
        model,
        error: Object.assign(new HttpError(500, `inference failed: ${(err as Error).message}`), {
          reason: 'inference',
        }),
      };
    }
    let outputs: PredictOutput[];
    try {
      outputs = decodeOutputs(r.probs, r.outputsPerRow, model, ref.threshold);
    } catch (err) {
      if (!(err instanceof NonFiniteOutputError)) throw err;
      nonFinite(cohort, arm, 'served', model.digest, err);
      return {
        status: 500,
        model,
        error: Object.assign(new HttpError(500, `the ${arm} model failed: ${err.message}`), {
          reason: 'nonfinite-output',
        }),
      };
    }
    await addLatency();
    return { status: 200, model, outputs };
  };

  /** Counts (and logs, at most once per window per model) a model run whose outputs were not finite. */
  const nonFinite = (
    cohort: string,
    arm: Arm,
    path: 'served' | 'shadow',
    digest: string,
    err: NonFiniteOutputError,
  ) => {
    metrics.nonfinite.inc({ cohort, arm, path });
    metrics.errors.inc({ cohort, arm, reason: path === 'shadow' ? 'shadow' : 'nonfinite-output' });
    summary.note(`nonfinite ${digest}`, `runs of model ${digest.slice(0, 12)} with NaN or Infinity outputs`, {
      level: 'error',
      event: 'gateway.nonfinite-output',
      cohort,
      arm,
      path,
      digest,
      message: err.message,
    });
  };

  /**
   * Mirrors a production-served request to the candidate, after its response; settles its pending event
   * with the candidate's answer when done. A candidate output that is not finite is a failed shadow.
   */
  const startShadow = (
    cohort: string,
    cand: ArmRef,
    inputs: number[][],
    event: Omit<GatewayEvent, 'seq'>,
    pending: PendingEvent,
  ) => {
    metrics.shadowRequests.inc({ cohort });
    const p = (async () => {
      const t0 = performance.now();
      let shadow: NonNullable<GatewayEvent['shadow']>;
      try {
        const model = await catalog.get(cand.digest);
        if (inputs.some((row) => row.length !== model.features))
          throw new Error('the candidate takes another row length');
        const r = await batcherOf(model).submit(preprocessRows(inputs, model), inputs.length, shadowBudget);
        let out: PredictOutput;
        try {
          out = decodeOutputs(r.probs, r.outputsPerRow, model, cand.threshold)[0]!;
        } catch (err) {
          if (err instanceof NonFiniteOutputError)
            nonFinite(cohort, 'candidate', 'shadow', model.digest, err);
          throw err;
        }
        shadow = {
          digest: cand.digest,
          pred: out.class,
          conf: out.probs[out.class],
          latencyMs: performance.now() - t0,
          failed: false,
          dropped: false,
        };
      } catch (err) {
        if (err instanceof QueueFullError) {
          metrics.shadowDropped.inc({ cohort });
          shadow = { digest: cand.digest, failed: false, dropped: true };
        } else {
          if (!(err instanceof NonFiniteOutputError)) {
            metrics.errors.inc({ cohort, arm: 'candidate', reason: 'shadow' });
          }
          shadow = {
            digest: cand.digest,
            latencyMs: performance.now() - t0,
            failed: true,
            reason:
              err instanceof NonFiniteOutputError
                ? 'nonfinite-output'
                : err instanceof FeatureRangeError
                  ? 'out-of-range'
                  : 'shadow',
            dropped: false,
          };
        }
      }
      events.settle(pending, { ...event, shadow });
    })().finally(() => shadows.delete(p));
    shadows.add(p);
  };

  // ---- admin ----------------------------------------------------------------------------------

  const authorize = (req: IncomingMessage) => {
    const token = process.env[config.adminTokenEnv];
    if (!token) {
      throw new HttpError(
        503,
        `the admin API is off: set the environment variable ${config.adminTokenEnv} to a secret token and restart the gateway`,
      );
    }
    const header = req.headers.authorization ?? '';
    const m = /^Bearer (.+)$/.exec(header);
    if (!m || !sameSecret(m[1]!, token)) {
      throw new HttpError(
        401,
        `send the admin token of ${config.adminTokenEnv} as "Authorization: Bearer <token>"`,
        undefined,
        undefined,
        {
          'WWW-Authenticate': 'Bearer',
        },
      );
    }
  };

  const updateRoute = async (cohort: string, req: IncomingMessage): Promise<CohortRoute> => {
    const body = parseJson(await readBody(req, config.limits.maxBodyBytes));
    const parsed = RouteUpdate.safeParse(body);
    if (!parsed.success) throw zodError(parsed.error, body, 'invalid route update');
    const u = parsed.data;
    const current = routes.get(cohort)!;
    if (!config.faultInjection) {
      for (const arm of ['production', 'candidate'] as const) {
        if (u[arm]?.inject) {
          throw new HttpError(
            400,
            `${arm}.inject: fault injection is off on this gateway; remove "inject" or run it with faultInjection: true`,
            `${arm}.inject`,
            u[arm].inject,
          );
        }
      }
    }
    const candidate = u.candidate === null ? undefined : (u.candidate ?? current.candidate);
    const next: CohortRoute = {
      production: u.production ?? current.production,
      ...(candidate ? { candidate } : {}),
      weight: u.weight ?? (candidate ? current.weight : 0),
      mirror: u.mirror ?? (candidate ? current.mirror : 0),
      salt: u.salt ?? current.salt,
      generation: current.generation,
    };
    if (!candidate && (next.weight > 0 || next.mirror > 0)) {
      throw new HttpError(
        400,
        'weight and mirror above 0 need a candidate; add "candidate" or set them to 0',
        next.weight > 0 ? 'weight' : 'mirror',
        next.weight > 0 ? next.weight : next.mirror,
      );
    }
    // A repeated update (a retry) that changes nothing answers the route as it is.
    if (isDeepStrictEqual(next, current)) return current;
    if (u.ifGeneration !== undefined && u.ifGeneration !== current.generation) {
      throw new HttpError(
        409,
        `the route of "${cohort}" is at generation ${current.generation}, not ${u.ifGeneration}; read it again and retry`,
        'ifGeneration',
        u.ifGeneration,
      );
    }
    for (const arm of ['production', 'candidate'] as const) {
      const ref = next[arm];
      if (!ref) continue;
      try {
        await catalog.get(ref.digest);
      } catch (err) {
        if (!(err instanceof ModelUnavailableError)) throw err;
        throw new HttpError(400, `${arm}.digest: ${err.message}`, `${arm}.digest`, ref.digest);
      }
    }
    next.generation = current.generation + 1;
    const all = new Map(routes).set(cohort, next);
    await routesStore.save(new Map([...others, ...all]));
    routes = all;
    setRouteGauges(cohort, next);
    log({
      level: 'info',
      event: 'gateway.route',
      cohort,
      generation: next.generation,
      production: next.production.digest,
      candidate: next.candidate?.digest ?? null,
      weight: next.weight,
      mirror: next.mirror,
    });
    return next;
  };

  const readEvents = async (url: URL): Promise<EventsResponse> => {
    const num = (name: string, dflt: number, max: number) => {
      const raw = url.searchParams.get(name);
      if (raw === null || raw === '') return dflt;
      const n = Number(raw);
      if (!/^\d+$/.test(raw) || !Number.isSafeInteger(n) || n > max) {
        throw new HttpError(400, `${name} must be a whole number from 0 to ${max}`, name, raw);
      }
      return n;
    };
    const after = num('after', 0, Number.MAX_SAFE_INTEGER);
    const limit = num('limit', DEFAULT_EVENTS_LIMIT, MAX_READ);
    const list = await events.read(after, limit);
    return { events: list, next: list.length ? list[list.length - 1]!.seq : after, last: events.last };
  };

  const admin = async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> => {
    authorize(req);
    const path = url.pathname;
    if (path === PATHS.routes) {
      if (req.method !== 'GET') throw new HttpError(405, `${path} takes GET`);
      sendJson(res, 200, { routes: Object.fromEntries(routes) } satisfies RoutesResponse);
      return;
    }
    if (path === PATHS.events) {
      if (req.method !== 'GET') throw new HttpError(405, `${path} takes GET`);
      sendJson(res, 200, await readEvents(url));
      return;
    }
    const m = /^\/admin\/routes\/([^/]+)$/.exec(path);
    if (m) {
      let cohort: string;
      try {
        cohort = decodeURIComponent(m[1]!);
      } catch {
        throw new HttpError(400, 'malformed cohort in the path', 'cohort', m[1]);
      }
      if (req.method !== 'PUT') throw new HttpError(405, `${path} takes PUT`);
      if (!routes.has(cohort)) {
        throw new HttpError(
          404,
          `unknown cohort ${shownName(cohort)}; this gateway serves ${config.cohorts.map((c) => `"${c}"`).join(', ')}: ` +
            "use one of them, or add it to the gateway config's cohorts and restart the gateway",
          'cohort',
          cohort,
        );
      }
      const p = adminChain.then(() => updateRoute(cohort, req));
      adminChain = p.catch(() => undefined);
      sendJson(res, 200, await p);
      return;
    }
    throw new HttpError(404, `no such endpoint: ${req.method} ${path}`);
  };

  // ---- the server -----------------------------------------------------------------------------

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://gateway');
    const path = url.pathname;
    if (path === PATHS.predict) {
      if (req.method !== 'POST') throw new HttpError(405, `${path} takes POST`);
      await predict(req, res);
      return;
    }
    if (path === PATHS.health) {
      sendJson(res, 200, { ok: true });
      return;
    }
    if (path === PATHS.ready) {
      const missing = routedDigests().filter((d) => !catalog.isLoaded(d));
      if (draining) sendJson(res, 503, { ready: false, reason: 'draining' });
      else if (missing.length > 0) sendJson(res, 503, { ready: false, reason: 'loading models', missing });
      else sendJson(res, 200, { ready: true });
      return;
    }
    if (path === PATHS.metrics) {
      const m = await metrics.render();
      res.writeHead(200, {
        ...SECURITY_HEADERS,
        'Content-Type': m.contentType,
        'Content-Length': Buffer.byteLength(m.body),
      });
      res.end(m.body);
      return;
    }
    if (path.startsWith('/admin/')) {
      await admin(req, res, url);
      return;
    }
    throw new HttpError(404, `no such endpoint: ${req.method} ${path}`);
  };

  const server: Server = createServer((req, res) => {
    const p = handle(req, res)
      .catch((err: unknown) => {
        const e =
          err instanceof HttpError
            ? err
            : new HttpError(500, `internal error: ${(err as Error).message ?? String(err)}`);
        if (!(err instanceof HttpError)) log({ level: 'error', event: 'gateway.error', message: e.message });
        if (!res.headersSent) sendError(res, e);
        else res.end();
      })
      .finally(() => inFlight.delete(p));
    inFlight.add(p);
  });
  server.keepAliveTimeout = 5000;

  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.listen.port, config.listen.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    await events.close();
    await releaseOwned();
    throw err;
  }
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : config.listen.port;
  const host = config.listen.host.includes(':') ? `[${config.listen.host}]` : config.listen.host;
  const url = `http://${host}:${port}`;
  const warming = warm(routedDigests());
  log({
    level: 'info',
    event: 'gateway.start',
    name: config.name,
    url,
    cohorts: config.cohorts,
    routes: Object.fromEntries(
      [...routes].map(([c, r]) => [
        c,
        {
          production: r.production.digest,
          candidate: r.candidate?.digest ?? null,
          weight: r.weight,
          mirror: r.mirror,
          generation: r.generation,
        },
      ]),
    ),
  });

  const drain = (): Promise<void> => {
    drained ??= (async () => {
      draining = true;
      log({ level: 'info', event: 'gateway.drain', inFlight: inFlight.size, shadows: shadows.size });
      await warming;
      // Requests being answered, then what they queued, then the shadows they started.
      while (inFlight.size > 0 || shadows.size > 0) {
        await Promise.all([...batchers.values()].map((b) => b.drain()));
        await Promise.allSettled([...inFlight, ...shadows]);
      }
      await events.flush();
      summary.close();
      const closed = new Promise<void>((res) => server.close(() => res()));
      server.closeIdleConnections();
      server.closeAllConnections();
      await closed;
      log({ level: 'info', event: 'gateway.drained', lastEvent: events.last });
    })();
    return drained;
  };

  let closing: Promise<void> | undefined;
  return {
    url,
    port,
    routes: () => structuredClone(Object.fromEntries(routes)),
    drain,
    close: () => {
      closing ??= (async () => {
        await drain();
        await events.close();
        await releaseOwned();
      })();
      return closing;
    },
  };
}

/**
 * Each cohort's route: saved state first, then the config's routes, then the registry's production
 * pointer of the cohort. Saves the result when there was no saved state, so it is what a restart finds.
 */
async function initialRoutes(
  config: GatewayConfig,
  routesStore: RoutesStore,
  store: ObjectStore,
  log: (line: object) => void,
): Promise<{ routes: Map<string, CohortRoute>; others: Map<string, CohortRoute> }> {
  const saved =
    routesStore.load({
      serves: (c) => config.cohorts.includes(c),
      onDrop: (d) =>
        log({ level: 'warn', event: 'gateway.route-dropped', cohort: d.cohort, message: d.message }),
    }) ?? new Map<string, CohortRoute>();
  const out = new Map<string, CohortRoute>();
  let changed = false;
  for (const cohort of config.cohorts) {
    const s = saved.get(cohort);
    if (s) {
      out.set(cohort, s);
      continue;
    }
    changed = true;
    const c = config.routes && Object.hasOwn(config.routes, cohort) ? config.routes[cohort] : undefined;
    if (c) {
      out.set(
        cohort,
        CohortRoute.parse({
          production: c.production,
          ...(c.candidate ? { candidate: c.candidate } : {}),
          weight: c.candidate ? c.weight : 0,
          mirror: c.candidate ? c.mirror : 0,
          salt: c.salt ?? defaultSalt(config, cohort),
          generation: 0,
        }),
      );
      continue;
    }
    const [pointer] = await cohortPointers(store, { cohorts: [cohort], stages: ['production'] });
    const digest = pointer?.current?.digest;
    if (!digest) {
      throw new Error(
        `cohort "${cohort}" has no route: none saved in ${routesStore.file}, none under routes.${cohort} ` +
          'in the config, and no production pointer in the registry; add routes.' +
          `${cohort}.production.digest to the config or register production for the cohort`,
      );
    }
    out.set(cohort, {
      production: { digest },
      weight: 0,
      mirror: 0,
      salt: defaultSalt(config, cohort),
      generation: 0,
    });
  }
  if (changed) await routesStore.save(new Map([...saved, ...out]));
  const others = new Map([...saved].filter(([c]) => !config.cohorts.includes(c)));
  return { routes: out, others };
}

/**
 * `fleetgate ui`: a live status page of the rollouts on a local HTTP server (node:http, loopback by
 * default). The page (cli/ui-page.ts) polls two JSON endpoints and redraws:
 *   GET  /api/rollouts                 every rollout, from the visibility list and its search attributes
 *                                      (phase, candidate, outcome), so listing needs no query per rollout
 *   GET  /api/rollouts/:id             one rollout: a running one's `statusQuery`, an ended one's report
 *                                      JSON from the object store (reports/<id>.json), else from
 *                                      <data dir>/reports/<id>.json (cli/report.ts `readReport`); with
 *                                      its charts drawn by activities/report-html.ts
 *   POST /api/rollouts/:id/:action     approve, reject, abort, pause, resume, rollback-cohort (one cohort's
 *                                      emergency rollback): the workflow's validated
 *                                      updates of workflows/definitions.ts; a refusal is a 409 with the
 *                                      validator's reason
 *
 * A client of Temporal and a reader of the reports, nothing else: it never changes a rollout
 * except through those updates, never serves a file by a path taken from a request (a report is read
 * only under a rollout id, which names no directory), answers only requests whose Host is the address it
 * listens on and takes POSTs only as JSON from its own origin (so another site's page cannot drive it).
 * Every answer forbids framing (`X-Frame-Options: DENY` and a Content-Security-Policy header with
 * `frame-ancestors 'none'`), so no other page can put the page's buttons under a visitor's click.
 * Statuses and reports hold no vehicle identifier, and it adds none.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { parseArgs } from 'node:util';
import {
  Client,
  Connection,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
  WorkflowUpdateRPCTimeoutOrCancelledError,
  type WorkflowExecutionInfo,
} from '@temporalio/client';
import {
  abortUpdate,
  approveUpdate,
  pauseUpdate,
  rejectUpdate,
  resumeUpdate,
  rollbackCohortUpdate,
  SEARCH_ATTRIBUTES,
  statusQuery,
  WORKFLOW_TYPE,
  type CohortStatus,
  type DecisionLogEntry,
  type PauseState,
  type PendingGate,
  type RolloutStatus,
} from '../workflows/definitions';
import { connectionOptions, loadConfig, openObjectStore } from '../workers/config';
import { renderMetricCharts } from '../activities/report-html';
import type { ObjectStore } from '../activities/deps';
import { closeStore, readReport } from './report';
import { causeMessage } from './progress';
import { renderUiPage } from './ui-page';

export const UI_HELP = `Usage: fleetgate ui [--port N] [--host ADDRESS]

Serves a live status page of the rollouts at http://ADDRESS:N/ until Ctrl-C: the list of rollouts
(phase, candidate, outcome), and for one rollout its phase, wave, look, cohorts, metric charts and
decision log, redrawn every 2 s; a running rollout's pending gate can be approved or rejected, and the
rollout paused, resumed or aborted and one of its cohorts rolled back, through the same validated
updates as the CLI (a refusal shows the validator's reason). Ended rollouts' reports are read from the
object store (FLEETGATE_STORE), and from <data dir>/reports for those written before workers put them
there; the list comes from Temporal alone.
  --port N          port (default 8480; 0: any free port)
  --host ADDRESS    address to listen on (default 127.0.0.1; anything else exposes the page's actions)`;

export const DEFAULT_UI_PORT = 8480;
/** Most rollouts the list shows (newest first). */
export const UI_LIST_LIMIT = 200;

/** One row of the list. */
export interface RolloutListItem {
  id: string;
  /** The workflow execution's status: RUNNING, COMPLETED, FAILED, TERMINATED, ... */
  status: string;
  startedAt: string;
  closedAt?: string;
  phase?: string;
  candidate?: string;
  outcome?: string;
}

/** What the page draws for one rollout, the same shape for a running and an ended one. */
export interface RolloutView {
  id: string;
  running: boolean;
  /** Where the view comes from: the running workflow's status query, or the ended rollout's report. */
  source: 'status' | 'report' | 'none';
  status?: string;
  phase?: string;
  wave?: number;
  waves?: number;
  look?: number;
  candidate?: { name: string; version: string; digest: string };
  cohorts: CohortStatus[];
  pendingGate?: PendingGate;
  /** Set while an operator's pause holds the rollout. */
  paused?: PauseState;
  outcome?: string;
  reason?: string;
  /** The latest label coverage the decision log states, e.g. "93.1%". */
  labelCoverage?: string;
  decisions: DecisionLogEntry[];
  /** The "Metrics per look" section, HTML drawn (and escaped) by activities/report-html.ts. */
  chartsHtml: string;
  /** Why there is nothing more to show, e.g. a worker that does not answer. */
  note?: string;
}

export interface UiServerOptions {
  client: Client;
  dataDir: string;
  /** The object store whose reports/ are read first; none: the data directory's reports only. */
  store?: ObjectStore;
  host?: string;
  port?: number;
  /** Only the rollouts of this task queue (default: every rollout of the namespace). */
  taskQueue?: string;
  /** How long a status query or an update may take (default 10 s; abort and rollback-cohort: 10 min). */
  queryTimeoutMs?: number;
}

export interface UiServer {
  url: string;
  server: Server;
  close(): Promise<void>;
}

/** A request the server refuses, with its HTTP status and a message naming what to fix. */
class HttpError extends Error {
  override name = 'HttpError';
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

// ---- reading Temporal and the reports -----------------------------------------------------------

function listItem(info: WorkflowExecutionInfo): RolloutListItem {
  const sa = info.typedSearchAttributes;
  return {
    id: info.workflowId,
    status: info.status.name,
    startedAt: info.startTime.toISOString(),
    closedAt: info.closeTime?.toISOString(),
    phase: sa.get(SEARCH_ATTRIBUTES.phase),
    candidate: sa.get(SEARCH_ATTRIBUTES.candidate),
    outcome: sa.get(SEARCH_ATTRIBUTES.outcome),
  };
}

/** The visibility query of the list. */
export function listQuery(taskQueue?: string): string {
  const q = `WorkflowType="${WORKFLOW_TYPE}"`;
  return taskQueue ? `${q} AND TaskQueue="${taskQueue.replace(/["\\]/g, '')}"` : q;
}

export async function listRollouts(client: Client, taskQueue?: string): Promise<RolloutListItem[]> {
  const out: RolloutListItem[] = [];
  for await (const info of client.workflow.list({ query: listQuery(taskQueue), pageSize: 100 })) {
    out.push(listItem(info));
    if (out.length >= UI_LIST_LIMIT) break;
  }
  return out;
}

const COVERAGE = /label coverage (\d+(?:\.\d+)?%)/;

function labelCoverage(decisions: DecisionLogEntry[]): string | undefined {
  for (let i = decisions.length - 1; i >= 0; i--) {
    const m = COVERAGE.exec(decisions[i]!.reason);
    if (m) return m[1];
  }
  return undefined;
}

/** The view of a running rollout from its status query. */
export function viewOfStatus(id: string, s: RolloutStatus, status = 'RUNNING'): RolloutView {
  const decisions = s.recentDecisions ?? [];
  return {
    id,
    running: true,
    source: 'status',
    status,
    phase: s.phase,
    wave: s.wave,
    waves: s.waves,
    look: s.look,
    candidate: s.candidate,
    cohorts: s.cohorts ?? [],
    pendingGate: s.pendingGate,
    paused: s.paused,
    outcome: s.outcome,
    labelCoverage: labelCoverage(decisions),
    decisions,
    chartsHtml: renderMetricCharts({ cohorts: s.cohorts, decisions }, { tables: false }),
  };
}

type Obj = Record<string, unknown>;
const isObj = (x: unknown): x is Obj => typeof x === 'object' && x !== null && !Array.isArray(x);

/** The view of an ended rollout from its report JSON (read defensively: older reports lack fields). */
export function viewOfReport(id: string, report: Obj, status: string): RolloutView {
  const decisions = (Array.isArray(report.decisions) ? report.decisions : []).filter(
    isObj,
  ) as unknown as DecisionLogEntry[];
  const cohorts = (Array.isArray(report.cohorts) ? report.cohorts : []).filter(
    isObj,
  ) as unknown as CohortStatus[];
  const policy = isObj(report.policy) ? report.policy : undefined;
  const waves = Array.isArray(policy?.waves) ? policy.waves.length : undefined;
  const last = decisions[decisions.length - 1];
  const reached = Math.max(0, ...cohorts.map((c) => (typeof c.wave === 'number' ? c.wave : 0)));
  const cand = isObj(report.candidate) ? report.candidate : undefined;
  return {
    id,
    running: false,
    source: 'report',
    status,
    phase: 'done',
    wave: reached,
    waves,
    look: typeof last?.look === 'number' ? last.look : undefined,
    candidate: cand as RolloutView['candidate'],
    cohorts,
    outcome: typeof report.outcome === 'string' ? report.outcome : undefined,
    reason: typeof report.reason === 'string' ? report.reason : undefined,
    labelCoverage: labelCoverage(decisions),
    decisions,
    chartsHtml: renderMetricCharts({ cohorts, decisions, policy }, { tables: false }),
  };
}

function emptyView(id: string, status: string, note: string): RolloutView {
  return {
    id,
    running: status === 'RUNNING',
    source: 'none',
    status,
    cohorts: [],
    decisions: [],
    chartsHtml: '',
    note,
  };
}

async function rolloutView(opts: UiServerOptions, id: string): Promise<RolloutView> {
  const handle = opts.client.workflow.getHandle(id);
  let status: string;
  try {
    status = (await handle.describe()).status.name;
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw new HttpError(404, `no rollout with id "${id}"`);
    throw err;
  }
  if (status === 'RUNNING') {
    try {
      const s = await opts.client.withDeadline(Date.now() + (opts.queryTimeoutMs ?? 10_000), () =>
        handle.query(statusQuery),
      );
      return viewOfStatus(id, s, status);
    } catch (err) {
      return emptyView(
        id,
        status,
        `no status from rollout "${id}": ${causeMessage(err)}; is a fleetgate worker running on its task queue?`,
      );
    }
  }
  let report: unknown;
  try {
    const found = await readReport({ dataDir: opts.dataDir, store: opts.store }, id);
    if (!found) {
      return emptyView(
        id,
        status,
        `rollout "${id}" ended (${status.toLowerCase()}) and has no report in the ` +
          (opts.store ? 'object store or the data directory' : 'data directory'),
      );
    }
    report = JSON.parse(found.text);
  } catch (err) {
    return emptyView(id, status, `the report of "${id}" cannot be read: ${causeMessage(err)}`);
  }
  if (!isObj(report)) return emptyView(id, status, `the report of "${id}" is not a JSON object`);
  return viewOfReport(id, report, status);
}

// ---- actions ------------------------------------------------------------------------------------

export const UI_ACTIONS = ['approve', 'reject', 'abort', 'pause', 'resume', 'rollback-cohort'] as const;
export type UiAction = (typeof UI_ACTIONS)[number];

/** A required non-empty string field of an action's body, or a 400 naming it. */
function field(body: Obj, action: string, name: string, optional = false): string | undefined {
  const v = Object.hasOwn(body, name) ? body[name] : undefined;
  if (v === undefined || v === null || v === '') {
    if (optional) return undefined;
    throw new HttpError(400, `${action}: "${name}" is required (a non-empty string)`);
  }
  if (typeof v !== 'string' || !v.trim()) {
    throw new HttpError(400, `${action}: "${name}" must be a non-empty string (got ${JSON.stringify(v)})`);
  }
  return v.trim();
}

async function runAction(opts: UiServerOptions, id: string, action: UiAction, body: Obj): Promise<unknown> {
  const handle = opts.client.workflow.getHandle(id);
  const by = () => field(body, action, 'by')!;
  const call = (): Promise<unknown> => {
    switch (action) {
      // The digest the page showed goes with a gate's answer: refused if the candidate changed since.
      case 'approve': {
        const comment = field(body, action, 'comment', true);
        const digest = field(body, action, 'digest', true);
        const req = { gate: field(body, action, 'gate')!, reviewer: field(body, action, 'reviewer')! };
        return handle.executeUpdate(approveUpdate, {
          args: [{ ...req, ...(comment ? { comment } : {}), ...(digest ? { digest } : {}) }],
        });
      }
      case 'reject': {
        const digest = field(body, action, 'digest', true);
        const req = {
          gate: field(body, action, 'gate')!,
          reviewer: field(body, action, 'reviewer')!,
          reason: field(body, action, 'reason')!,
        };
        return handle.executeUpdate(rejectUpdate, { args: [{ ...req, ...(digest ? { digest } : {}) }] });
      }
      case 'abort':
        return handle.executeUpdate(abortUpdate, {
          args: [
            {
              by: by(),
              reason: field(body, action, 'reason', true) ?? 'operator abort from the status page',
            },
          ],
        });
      case 'pause':
        return handle.executeUpdate(pauseUpdate, {
          args: [{ by: by(), reason: field(body, action, 'reason', true) ?? 'paused from the status page' }],
        });
      case 'resume': {
        const reason = field(body, action, 'reason', true);
        return handle.executeUpdate(resumeUpdate, { args: [{ by: by(), ...(reason ? { reason } : {}) }] });
      }
      // Waits until the cohort's changes are compensated; the other cohorts go on.
      case 'rollback-cohort': {
        const req = {
          cohort: field(body, action, 'cohort')!,
          by: by(),
          reason: field(body, action, 'reason')!,
        };
        return handle.executeUpdate(rollbackCohortUpdate, { args: [req] });
      }
    }
  };
  const timeout =
    action === 'abort' || action === 'rollback-cohort' ? 600_000 : (opts.queryTimeoutMs ?? 10_000);
  try {
    return await opts.client.withDeadline(Date.now() + timeout, call);
  } catch (err) {
    if (err instanceof HttpError) throw err;
    if (err instanceof WorkflowUpdateFailedError) throw new HttpError(409, `refused: ${causeMessage(err)}`);
    if (err instanceof WorkflowUpdateRPCTimeoutOrCancelledError) {
      throw new HttpError(
        504,
        `no answer from rollout "${id}" within ${Math.round(timeout / 1000)} s; is a fleetgate worker running?`,
      );
    }
    if (err instanceof WorkflowNotFoundError) {
      throw new HttpError(404, `no running rollout with id "${id}" (it may have ended)`);
    }
    throw new HttpError(502, `${action} of "${id}" failed: ${causeMessage(err)}`);
  }
}

// ---- the HTTP server ----------------------------------------------------------------------------

const MAX_BODY = 16 * 1024;

async function readJson(req: IncomingMessage): Promise<Obj> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (type !== 'application/json') {
    throw new HttpError(
      415,
      `the body must be JSON (Content-Type: application/json), got "${type || 'none'}"`,
    );
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY) throw new HttpError(413, `the body is over ${MAX_BODY} bytes`);
    chunks.push(chunk);
  }
  let body: unknown;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
  } catch (err) {
    throw new HttpError(400, `the body is not JSON: ${(err as Error).message}`);
  }
  if (!isObj(body)) throw new HttpError(400, 'the body must be a JSON object');
  return body;
}

/**
 * On every answer. The CSP header is the page's own policy plus `frame-ancestors 'none'`, which a meta
 * tag cannot carry; the page keeps its meta tag for a copy opened without headers.
 */
const SECURITY_HEADERS = {
  'X-Content-Type-Options': 'nosniff',
  'Cache-Control': 'no-store',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
  'Content-Security-Policy': `${renderUiPage().csp}; frame-ancestors 'none'`,
};

function send(res: ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, {
    ...SECURITY_HEADERS,
    'Content-Type': type,
    'Content-Length': Buffer.byteLength(body),
  });
  res.end(body);
}
function sendJson(res: ServerResponse, status: number, value: unknown): void {
  send(res, status, 'application/json; charset=utf-8', JSON.stringify(value));
}

/** Starts the page's server; resolves once it listens. */
export async function startUiServer(opts: UiServerOptions): Promise<UiServer> {
  const host = opts.host ?? '127.0.0.1';
  const page = renderUiPage();
  let hosts = new Set<string>();
  // Requests being answered: close() waits for them, so none still uses the client after it.
  const inFlight = new Set<Promise<void>>();
  const server = createServer((req, res) => {
    const p = handle(req, res)
      .catch((err: unknown) => {
        const status = err instanceof HttpError ? err.status : 500;
        if (!res.headersSent) sendJson(res, status, { error: causeMessage(err) });
        else res.end();
      })
      .finally(() => inFlight.delete(p));
    inFlight.add(p);
  });
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    if (!hosts.has(req.headers.host ?? '')) {
      throw new HttpError(421, `unexpected Host "${req.headers.host ?? ''}"; open ${url} instead`);
    }
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (req.method === 'GET' && path === '/') {
      send(res, 200, 'text/html; charset=utf-8', page.html);
      return;
    }
    if (req.method === 'GET' && path === '/api/rollouts') {
      sendJson(res, 200, { rollouts: await listRollouts(opts.client, opts.taskQueue) });
      return;
    }
    const one = /^\/api\/rollouts\/([^/]+)$/.exec(path);
    if (req.method === 'GET' && one) {
      sendJson(res, 200, await rolloutView(opts, decodeId(one[1]!)));
      return;
    }
    const act = /^\/api\/rollouts\/([^/]+)\/([a-z-]+)$/.exec(path);
    if (act) {
      if (req.method !== 'POST') throw new HttpError(405, `${act[2]} takes POST`);
      const origin = req.headers.origin;
      if (origin !== undefined && !hosts.has(origin.replace(/^https?:\/\//, ''))) {
        throw new HttpError(403, `actions are taken only from the page itself (Origin "${origin}")`);
      }
      const action = act[2] as UiAction;
      if (!UI_ACTIONS.includes(action)) {
        throw new HttpError(404, `unknown action "${act[2]}"; one of ${UI_ACTIONS.join(', ')}`);
      }
      const body = await readJson(req);
      sendJson(res, 200, { ok: true, receipt: await runAction(opts, decodeId(act[1]!), action, body) });
      return;
    }
    throw new HttpError(404, `no such page: ${req.method} ${path}`);
  };
  await new Promise<void>((res, rej) => {
    server.once('error', rej);
    server.listen(opts.port ?? DEFAULT_UI_PORT, host, () => res());
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  const shownHost = host.includes(':') ? `[${host}]` : host;
  const url = `http://${shownHost}:${port}/`;
  hosts = new Set([`${shownHost}:${port}`, `localhost:${port}`]);
  if (host === '127.0.0.1' || host === '::1') hosts.add(`127.0.0.1:${port}`).add(`[::1]:${port}`);
  return {
    url,
    server,
    close: async () => {
      const closed = new Promise<void>((res) => server.close(() => res()));
      server.closeIdleConnections();
      await Promise.allSettled([...inFlight]);
      server.closeAllConnections();
      await closed;
    },
  };
}

function decodeId(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new HttpError(400, `malformed rollout id in the path: "${raw}"`);
  }
}

// ---- the command --------------------------------------------------------------------------------

/** The `ui` entry of the command table of cli/main.ts; runs until Ctrl-C. */
export async function uiCommand(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        port: { type: 'string' },
        host: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: false,
      strict: true,
    });
  } catch (err) {
    console.error(`fleetgate: ${(err as Error).message.split(/\.\s|\n/)[0]} (see "fleetgate ui --help")`);
    return 2;
  }
  if (parsed.values.help) {
    console.log(UI_HELP);
    return 0;
  }
  const rawPort = parsed.values.port ?? String(DEFAULT_UI_PORT);
  const port = Number(rawPort);
  if (!/^\d+$/.test(rawPort) || port > 65535) {
    console.error(`fleetgate: --port must be a whole number from 0 to 65535 (got "${rawPort}")`);
    return 2;
  }
  const host = parsed.values.host ?? '127.0.0.1';
  if (!host.trim()) {
    console.error('fleetgate: --host needs an address, e.g. 127.0.0.1');
    return 2;
  }
  const config = loadConfig();
  const conn = connectionOptions(config);
  let connection: Connection;
  try {
    connection = await Connection.connect({ ...conn, connectTimeout: 5000 });
  } catch (err) {
    console.error(`fleetgate: cannot reach Temporal at ${conn.address}: ${causeMessage(err)}`);
    return 1;
  }
  const client = new Client({ connection, namespace: config.namespace });
  const store = openObjectStore(config.store, config.dataDir);
  let ui: UiServer;
  try {
    ui = await startUiServer({ client, dataDir: config.dataDir, store, host, port });
  } catch (err) {
    closeStore(store);
    await connection.close();
    console.error(`fleetgate: cannot listen on ${host}:${port}: ${causeMessage(err)}`);
    return 1;
  }
  console.log(`fleetgate: status page at ${ui.url} (Temporal at ${conn.address}); Ctrl-C stops it`);
  await new Promise<void>((res) => process.once('SIGINT', () => res()));
  await ui.close();
  closeStore(store);
  await connection.close();
  return 0;
}

/**
 * The `fleetgate` command: start, watch, approve, reject and abort rollouts; run a worker or a local
 * Temporal dev server; prepare the simulated fleet; run the demo.
 *
 * A client only: rollouts are Temporal workflows, so every command goes through the Temporal API with
 * the message definitions of workflows/definitions.ts, never a string name. Policies are validated here,
 * before anything is sent. Heavy modules (worker, ONNX, DuckDB) are loaded only by the commands that
 * need them. It must never print a raw vehicle id or a secret, and prints one line per error (a stack
 * trace only with FLEETGATE_DEBUG=1).
 */
import { readFileSync, existsSync } from 'node:fs';
import { basename, extname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import YAML from 'yaml';
import {
  Client,
  Connection,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
  WorkflowUpdateRPCTimeoutOrCancelledError,
  type WorkflowHandle,
} from '@temporalio/client';
import { WorkflowExecutionAlreadyStartedError, WorkflowIdReusePolicy } from '@temporalio/common';
import { FleetManifest, Policy, RolloutRequest, formatIssues, policyWarnings } from '../policies/schema';
import type * as ServiceSchemaModule from '../policies/service-schema';
import { formatManifestIssues, manifestKindProblem } from '../policies/manifest-errors';
import { planRollout, type RolloutPlan } from '../policies/planning';
import { parseDuration } from '../policies/duration';
import {
  abortUpdate,
  approveUpdate,
  rejectUpdate,
  statusQuery,
  WORKFLOW_TYPE,
  type RolloutResult,
} from '../workflows/definitions';
import { connectionOptions, loadConfig, type Config } from '../workers/config';
import {
  causeMessage,
  inFlightLines,
  inFlightOf,
  renderResult,
  renderStatus,
  watch,
  WatchInterrupted,
  type InFlight,
} from './progress';
import { statsCommand } from './stats';
import { guardOutput, safeText } from './terminal';
import type * as DemoModule from './demo';
import type * as WorkerMainModule from '../workers/main';
import type * as WorkerModule from '../workers/worker';
import type * as DevServerModule from '../workers/dev-server';
import type * as TracingModule from '../serve/tracing';
import type * as WorkerTracingModule from '../workers/tracing';
import type * as RegistryModule from '../activities/registry';
import type * as FleetActivitiesModule from '../activities/fleet';
import type * as FleetOwnerModule from './fleet-owner';
import type * as DriftActivitiesModule from '../activities/drift';
import type * as ManifestModule from '../fleet/manifest';
import type * as ServiceActivitiesModule from '../activities/service';
import type * as IotAgentModule from '../sim/iot-agent';
import type * as SimulatorProcessModule from '../sim/simulator-process';
import type * as SimulateModule from './simulate';
import type * as ScenarioModule from '../policies/scenario';
import type * as ModelModule from './model';
import type * as SecretsModule from '../workers/secrets';
import type * as ReportModule from './report';
import type * as DriftModule from './drift';
import type * as GateModule from './gate';
import type * as ControlsModule from '../activities/controls';
import { GATE_HELP } from './gate-help';
import type * as UiModule from './ui';
import type * as ServeModule from './serve';
import type * as EventsCliModule from '../events/cli';

export const DEFAULT_FLEET = 'sim/fleets/demo.yaml';
export const DEFAULT_PRODUCTION = 'models/production';

/** A mistake in how the command was called: exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}
/** A failure with a message that says it all: exit code 1, no stack trace. */
export class CliError extends Error {
  override name = 'CliError';
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

// ---- help ---------------------------------------------------------------------------------------

const USAGE = `fleetgate: safe, statistically gated rollouts of ML models to fleets, as Temporal workflows

Usage: fleetgate <command> [options]      (fleetgate <command> --help for details)

  demo                        run the whole demo: dev server, worker, one rollout, summary
  rollout start               start a rollout from a policy file and a candidate model pack
  rollout request             print the rollout's JSON input, for "temporal workflow start"
  rollout plan                labeled events per arm and the detectable harm a policy will reach
  status ID                   show a rollout's status (--watch: follow it live)
  approve ID                  approve a pending gate
  reject ID                   reject a pending gate (the rollout rolls back)
  abort ID                    abort a rollout; its changes are compensated
  gate show ID                the pending gate: cohorts, evidence, statistics, approvals, digest to approve
  pause ID / resume ID        hold a rollout at its next safe point / let it go on
  rollback ID                 emergency rollback of one cohort (--cohort); the others go on
  report ID                   write a rollout's report as one self-contained HTML page (no server needed)
  ui                          serve a live status page of the rollouts on 127.0.0.1 (fleetgate ui --help)
  serve                       run the inference gateway of a service's models (fleetgate serve --help)
  events schema               the event contract's JSON Schema or Parquet columns (docs/events.md)
  events rebuild|prune|compact  the ingestion database from the store's Parquet partitions, retention, merging
  events pull                 read the files streams put in an object store's landing zone (fleetgate events --help)
  ingest                      run the endpoint fleets send events, labels and outcomes to (fleetgate ingest --help)
  worker                      run a worker (workflows and activities)
  server                      run a local Temporal dev server with the data directory's history
  fleet init                  register production and create the simulated fleet (idempotent)
  fleet simulate              the simulated fleet as a process of its own, sending to an ingestion endpoint
  drift                       scheduled drift checks of production's inputs: schedule, list, check, show, delete
  stats                       boundaries, sample sizes, rate ratios and simulations (no server needed)
  simulate                    dry run of a rollout against a scenario on the time-skipping test server
  model                       signing keys, model packs and the registry: keygen, pack, sign, verify,
                              trust, register, list, show, history (fleetgate model --help)

Environment: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS, FLEETGATE_DATA_DIR,
FLEETGATE_TASK_QUEUE, FLEETGATE_PSEUDONYM_KEY, FLEETGATE_TRUSTED_KEYS, FLEETGATE_DEBUG (see docs/operations.md).
`;

const REQUEST_FLAGS = `  --policy FILE          rollout policy, YAML or JSON (required)
  --candidate PACKDIR    candidate model pack directory, as the worker sees it (required)
  --fleet MANIFEST       fleet manifest (default ${DEFAULT_FLEET})
  --id ID                rollout id = workflow id (default <policy name>-<pack dir name>-<yyyymmddHHMMss>)
  --time-scale N         simulated fleet seconds per real second (default 1)
  --requested-by NAME    who asks (default $USER, else "unknown")`;

const HELP: Record<string, string> = {
  ...GATE_HELP,
  demo: `Usage: fleetgate demo

Runs the whole demo and prints a summary; about 3.5 minutes.
  - resets the simulated world in the data directory (store, fleet.duckdb, simulator.duckdb; keeps
    reports, temporal.db)
  - starts a Temporal dev server with <data dir>/temporal.db, unless TEMPORAL_ADDRESS is set
  - registers models/production for every cohort of ${DEFAULT_FLEET} and creates the simulated fleet
  - serves the ingestion endpoint on a loopback port and starts the simulated fleet as a process of its
    own (fleet simulate --ingest URL, log in <data dir>/simulator.log) that sends over HTTP
  - runs a worker and one rollout of models/candidate-regress with examples/demo-policy.yaml at 600x
    fleet time, approving its gate as "alice"
Exit code 0 when the rollout completed.`,
  'rollout start': `Usage: fleetgate rollout start --policy FILE --candidate PACKDIR [options]

Validates the policy and the whole rollout request here (and the fleet manifest, when it is here too),
then starts the rolloutWorkflow with the rollout id as its workflow id. Exit code 2 on an invalid policy
or fleet manifest (nothing is sent); warnings about legal but unusual settings go to stderr.
${REQUEST_FLAGS}
  --wait                 follow the rollout live until it ends (exit 0 only when it completed)`,
  'rollout request': `Usage: fleetgate rollout request --policy FILE --candidate PACKDIR [options] > request.json

Prints the validated rollout request (the workflow's JSON input; checked as "rollout start" checks it), for:
  temporal workflow start --type ${WORKFLOW_TYPE} --task-queue fleetgate --workflow-id ID --input-file request.json
${REQUEST_FLAGS}`,
  'rollout plan': `Usage: fleetgate rollout plan --policy FILE [--fleet MANIFEST] [--time-scale N] [--json]

Before a rollout: from the fleet's size, event and label rates and the policy's waves and holds, how
many labeled events each arm of each cohort will have, the smallest error-rate harm the gate can detect
with 80% power, and a warning when that is above the policy's own margin. No server needed.
  --fleet MANIFEST   fleet manifest (default ${'${DEFAULT_FLEET}'})
  --time-scale N     simulated fleet time per real second (default 1)
  --json             print the plan as JSON`,
  status: `Usage: fleetgate status ID [--watch] [--json]

  --watch     redraw the progress view until the rollout ends (exit 0 only when it completed)
  --json      print the status (of an ended rollout: its result) as JSON`,
  approve: `Usage: fleetgate approve ID --gate GATE --reviewer NAME [--comment TEXT] [--digest DIGEST]

Approves the pending gate ("fleetgate gate show ID" shows it). A gate opens once its required number of
distinct reviewers approved. Refused (exit 1) when that gate is not pending, the reviewer is not in the
policy's reviewers, has already approved it, or started the rollout and the gate excludes its initiator,
or the digest is not the candidate's; a refusal leaves nothing in the workflow's history.
  --digest DIGEST  the candidate digest you reviewed (whole, or its first 12+ hex digits): guards against
                   approving a candidate that changed since you looked; without it none is checked`,
  reject: `Usage: fleetgate reject ID --gate GATE --reviewer NAME --reason TEXT [--digest DIGEST]

Rejects the pending gate: the rollout ends "rejected" and every change it made is compensated.
  --digest DIGEST  as for approve: refused when it is not the candidate's`,
  abort: `Usage: fleetgate abort ID [--reason TEXT] [--by NAME]

Aborts the rollout and waits until its changes are compensated (last in, first out).
  --reason TEXT  why, for the decision log (default "operator abort, no reason given")
  --by NAME      who asks (default $USER, else "unknown")`,
  worker: `Usage: fleetgate worker

Runs a worker for the task queue (FLEETGATE_TASK_QUEUE, default "fleetgate") against TEMPORAL_ADDRESS
(default localhost:7233), with its data in FLEETGATE_DATA_DIR (default .fleetgate). Ctrl-C stops it.`,
  server: `Usage: fleetgate server

Runs a Temporal dev server on 127.0.0.1 (port 7233 and Web UI on 8233 when free) whose history is kept
in <data dir>/temporal.db, so rollouts of earlier runs (and of the demo) can be looked at again.
Runs until Ctrl-C.`,
  'fleet init': `Usage: fleetgate fleet init [--fleet MANIFEST] [--production PACKDIR]

Registers the production model pack for every cohort of the fleet and creates the simulated fleet in
the data directory. Safe to run again. While a worker owns the data directory's fleet database, that
worker creates the vehicles: fleet init then needs Temporal and the worker's task queue
(TEMPORAL_ADDRESS, FLEETGATE_TASK_QUEUE) and waits for it.
  --fleet MANIFEST       fleet manifest (default ${DEFAULT_FLEET})
  --production PACKDIR   production model pack (default ${DEFAULT_PRODUCTION})`,
  'fleet simulate': `Usage: fleetgate fleet simulate --ingest URL | --landing PREFIX|s3://BUCKET/PREFIX
                               [--store DIR|s3://BUCKET/PREFIX] [--db FILE] [--every DURATION] [--once]

The simulated fleet and its labeler as a process of their own, for a worker with
FLEETGATE_TELEMETRY=simulator: it looks in the object store for the window requests the worker's
batches publish, runs each window's simulation and sends its events and upload reports to the
ingestion endpoint (gzip NDJSON, Fleetgate-Watermark at the window's end), and answers the
label-request files of its fleets with label records. Each fleet's token is read from
FLEETGATE_INGEST_TOKEN_<FLEET>, as the endpoint reads it. With --landing it writes gzip NDJSON files
into the landing zone instead (no watermark, no token), for a worker with FLEETGATE_LANDING set to the
same place; each window's receipt names its files, so that the batch waits until the worker read them.
A restart sends nothing twice. Ctrl-C or SIGTERM stops it. See docs/events.md.
  --ingest URL      the ingestion endpoint, e.g. the worker's (FLEETGATE_INGEST_PORT): http://127.0.0.1:8790
  --landing PREFIX  instead of --ingest: files at PREFIX/<fleet>/<events|labels|uploads>/<yyyy>/<MM>/<dd>/<HH>/
                    in the store of --store (the worker's FLEETGATE_LANDING=PREFIX), or under s3://BUCKET/PREFIX
  --store DIR       the worker's object store: its directory (<data dir>/store) or s3://BUCKET/PREFIX
                    (default: FLEETGATE_STORE under FLEETGATE_DATA_DIR, as the worker opens it)
  --db FILE         its own DuckDB file: what it sent, its labeler's queue (default <data dir>/simulator.duckdb;
                    never the worker's fleet.duckdb)
  --every DURATION  how often it looks for new requests, 10ms to 1m (default 200ms)
  --once            handle what is there, then exit (exit code 1 when an item failed)`,
  simulate: `Usage: fleetgate simulate --scenario FILE [--policy FILE] [--seed N] [--seeds N] [--json]
       fleetgate simulate --schema

The dry run before a real rollout: runs the real rolloutWorkflow with the real activities against the
scenario's simulated fleet on the time-skipping test server (weeks take seconds), in a temporary data
directory, and prints per cohort the decision, the ground truth of an offline evaluation and when it
was decided. Wave gates are approved at once; escalations are left unanswered (held). See
docs/scenarios.md.
  --scenario FILE   scenario, YAML or JSON (paths inside it are relative to it)
  --policy FILE     rollout policy instead of the scenario's
  --seed N          the fleet's seed instead of the scenario's
  --seeds N         run N seeds (seed, seed+1, ...) and summarise: share of runs with any rollback
  --json            print JSON: {"cohorts":[{"cohort","decision","truth","decidedAt",...}], ...}
  --schema          print the scenario's JSON Schema (scenarios/scenario.schema.json) and exit
Exit code 0 when the run(s) completed, 1 otherwise, 2 on an invalid scenario or policy.`,
};

// ---- the rollout request ------------------------------------------------------------------------

export interface RequestFlags {
  policy: string;
  candidate: string;
  fleet?: string;
  id?: string;
  timeScale?: number;
  requestedBy?: string;
  /** Clock of the default id; now when absent. */
  now?: Date;
}

export type RequestCheck = { ok: true; request: RolloutRequest } | { ok: false; problems: string[] };

/** `yyyymmddHHMMss` in local time, with `sep` between date and time. */
export function timestamp(now: Date, sep = ''): string {
  const p = (n: number) => String(n).padStart(2, '0');
  const date = `${now.getFullYear()}${p(now.getMonth() + 1)}${p(now.getDate())}`;
  return `${date}${sep}${p(now.getHours())}${p(now.getMinutes())}${p(now.getSeconds())}`;
}

export function defaultRequester(env: NodeJS.ProcessEnv = process.env): string {
  return env.USER || env.USERNAME || 'unknown';
}

/** Reads a YAML or JSON policy file; problems are returned as lines, never thrown. */
export function readPolicyFile(
  file: string,
): { ok: true; policy: unknown } | { ok: false; problems: string[] } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return {
      ok: false,
      problems: [code === 'ENOENT' ? 'the file does not exist' : `cannot read it (${code ?? err})`],
    };
  }
  try {
    const policy: unknown = extname(file).toLowerCase() === '.json' ? JSON.parse(text) : YAML.parse(text);
    return { ok: true, policy };
  } catch (err) {
    return { ok: false, problems: [(err as Error).message.split('\n')[0]!] };
  }
}

/**
 * Builds and validates the whole rollout request (policy included) with the same zod schema the
 * workflow uses. Problems come back as `formatIssues` lines naming path and value, e.g.
 * `policy.waves.1.percent: waves must grow: ... (got 10)`.
 */
export function prepareRolloutRequest(flags: RequestFlags): RequestCheck {
  const read = readPolicyFile(flags.policy);
  if (!read.ok) return read;
  const policy = read.policy;
  const named = (policy as { name?: unknown } | null)?.name;
  const policyName = typeof named === 'string' && named ? named : 'rollout';
  const input = {
    rolloutId:
      flags.id ??
      `${policyName}-${basename(flags.candidate.replace(/[/\\]+$/, ''))}-${timestamp(flags.now ?? new Date())}`,
    candidate: { pack: flags.candidate },
    fleet: { manifest: flags.fleet ?? DEFAULT_FLEET, timeScale: flags.timeScale ?? 1 },
    policy,
    requestedBy: flags.requestedBy ?? defaultRequester(),
  };
  const parsed = RolloutRequest.safeParse(input);
  if (!parsed.success) return { ok: false, problems: formatIssues(parsed.error, input).split('\n') };
  return { ok: true, request: parsed.data };
}

// ---- argument parsing ---------------------------------------------------------------------------

type Options = NonNullable<ParseArgsConfig['options']>;
const HELP_OPTION: Options = { help: { type: 'boolean', short: 'h' } };

function parse<O extends Options>(command: string, args: string[], options: O, positionals = 0) {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: { ...HELP_OPTION, ...options },
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    throw new UsageError(`${(err as Error).message.split(/\.\s|\n/)[0]} (see "fleetgate ${command} --help")`);
  }
  if ((parsed.values as Record<string, unknown>).help) return { help: true as const };
  if (parsed.positionals.length !== positionals) {
    const want =
      positionals === 0
        ? 'no arguments'
        : positionals === 1
          ? 'one argument (the rollout id)'
          : `${positionals} arguments`;
    throw new UsageError(`"${command}" takes ${want} (see "fleetgate ${command} --help")`);
  }
  return {
    help: false as const,
    values: parsed.values as Record<string, string | boolean | undefined>,
    positionals: parsed.positionals,
  };
}

function str(values: Record<string, string | boolean | undefined>, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

function required(
  command: string,
  values: Record<string, string | boolean | undefined>,
  name: string,
): string {
  const v = str(values, name);
  if (!v || !v.trim())
    throw new UsageError(`"${command}" needs --${name} (see "fleetgate ${command} --help")`);
  return v;
}

const REQUEST_OPTIONS = {
  policy: { type: 'string' },
  candidate: { type: 'string' },
  fleet: { type: 'string' },
  id: { type: 'string' },
  'time-scale': { type: 'string' },
  'requested-by': { type: 'string' },
} as const satisfies Options;

function requestFlags(command: string, values: Record<string, string | boolean | undefined>): RequestFlags {
  let timeScale: number | undefined;
  const ts = str(values, 'time-scale');
  if (ts !== undefined) {
    timeScale = Number(ts);
    if (!Number.isFinite(timeScale) || timeScale <= 0) {
      throw new UsageError(`--time-scale must be a positive number (got "${ts}")`);
    }
  }
  return {
    policy: required(command, values, 'policy'),
    candidate: required(command, values, 'candidate'),
    fleet: str(values, 'fleet'),
    id: str(values, 'id'),
    timeScale,
    requestedBy: str(values, 'requested-by'),
  };
}

export type ManifestCheck =
  | { ok: true; kind: 'Fleet' | 'Service'; name: string; cohorts: string[] }
  | { ok: false; problems: string[] };

/**
 * Reads and validates a fleet manifest (or a `kind: Service` manifest) with its schema, as the worker
 * will: its kind, name and cohorts, or its problems as `path: message` lines that never quote the file.
 */
export function checkManifest(file: string): ManifestCheck {
  const { readManifestFile } = require('../fleet/manifest') as typeof ManifestModule;
  let raw: unknown;
  try {
    raw = readManifestFile(file, 'fleet manifest');
  } catch (err) {
    return { ok: false, problems: [causeMessage(err)] };
  }
  const kind = raw !== null && typeof raw === 'object' ? (raw as { kind?: unknown }).kind : undefined;
  if (kind === 'Service') {
    const { ServiceManifest } = require('../policies/service-schema') as typeof ServiceSchemaModule;
    const r = ServiceManifest.safeParse(raw);
    if (!r.success) return { ok: false, problems: formatManifestIssues(r.error, raw).split('\n') };
    return { ok: true, kind, name: r.data.name, cohorts: r.data.cohorts.map((c) => c.name) };
  }
  if (kind !== 'Fleet') {
    return {
      ok: false,
      problems: [
        `kind: write kind: Fleet (vehicles) or kind: Service (a model behind the inference gateway) (got ${manifestKindProblem(kind)})`,
      ],
    };
  }
  const r = FleetManifest.safeParse(raw);
  if (!r.success) return { ok: false, problems: formatManifestIssues(r.error, raw).split('\n') };
  return { ok: true, kind, name: r.data.name, cohorts: r.data.cohorts.map((c) => c.name) };
}

/** `policy.cohorts` lines naming cohorts the manifest does not declare. */
export function unknownCohorts(
  request: RolloutRequest,
  manifest: { kind: string; name: string; cohorts: string[] },
): string[] {
  const declared = manifest.cohorts.join(', ');
  const what = manifest.kind === 'Service' ? 'service' : 'fleet';
  return (request.policy.cohorts ?? []).flatMap((c, i) =>
    manifest.cohorts.includes(c)
      ? []
      : [
          `policy.cohorts.${i}: unknown cohort "${c}": ${what} "${manifest.name}" (${request.fleet.manifest}) declares ${declared}; name one of them, or leave policy.cohorts out for all (got "${c}")`,
        ],
  );
}

function validRequest(flags: RequestFlags): RolloutRequest {
  const check = prepareRolloutRequest(flags);
  if (!check.ok) {
    throw new CliError(
      `invalid policy ${flags.policy}:\n${check.problems.map((l) => `  ${l}`).join('\n')}`,
      2,
    );
  }
  // The manifest, when it is here too, is checked as the worker will: before anything is sent.
  const manifestFile = check.request.fleet.manifest;
  if (existsSync(manifestFile)) {
    const manifest = checkManifest(manifestFile);
    if (!manifest.ok) {
      throw new CliError(
        `invalid fleet manifest ${manifestFile}:\n${manifest.problems.map((l) => `  ${l}`).join('\n')}`,
        2,
      );
    }
    const unknown = unknownCohorts(check.request, manifest);
    if (unknown.length > 0) {
      throw new CliError(`invalid policy ${flags.policy}:\n${unknown.map((l) => `  ${l}`).join('\n')}`, 2);
    }
  }
  for (const w of policyWarnings(check.request.policy)) console.error(`fleetgate: warning: ${w}`);
  for (const [what, path] of [
    ['candidate pack', check.request.candidate.pack],
    ['fleet manifest', check.request.fleet.manifest],
  ] as const) {
    const rel = relative(process.cwd(), resolve(path));
    if (rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel)) {
      console.error(
        `fleetgate: warning: ${what} ${safeText(path)} is outside this directory; a worker reads packs and ` +
          'manifests only inside the directory it runs in and refuses this path: copy it there and give its relative path',
      );
    } else if (!existsSync(path)) {
      console.error(
        `fleetgate: note: ${what} ${path} is not here; the worker resolves it from its own directory`,
      );
    }
  }
  if (existsSync(check.request.fleet.manifest)) {
    const planned = planFor(flags.policy, check.request.fleet.manifest, check.request.fleet.timeScale);
    if (planned.ok) for (const w of planned.plan.warnings) console.error(`fleetgate: plan: ${w}`);
  }
  return check.request;
}

// ---- Temporal client ----------------------------------------------------------------------------

export interface Session {
  client: Client;
  connection: Connection;
  config: Config;
  address: string;
  close(): Promise<void>;
}

export async function connect(config: Config = loadConfig()): Promise<Session> {
  const opts = connectionOptions(config);
  let connection: Connection;
  try {
    connection = await Connection.connect({ ...opts, connectTimeout: 5000 });
  } catch (err) {
    const hint = config.address ? '' : '; start one with "npx fleetgate server", or set TEMPORAL_ADDRESS';
    throw new CliError(`cannot reach Temporal at ${opts.address}: ${causeMessage(err)}${hint}`);
  }
  const tracing = await clientTracing();
  const client = new Client({
    connection,
    namespace: config.namespace,
    ...(tracing ? { interceptors: tracing.interceptors } : {}),
  });
  const close = async () => {
    await connection.close();
    await tracing?.shutdown();
  };
  return { client, connection, config, address: opts.address, close };
}

/**
 * With an OTLP endpoint in the environment (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
 * OTEL_EXPORTER_OTLP_ENDPOINT), the client's calls (start, signal, update, query) open spans as
 * service `fleetgate-cli`, and the rollout's workflow run on a traced worker is their child. The
 * OpenTelemetry modules are loaded only then.
 */
async function clientTracing() {
  // serve/tracing loads the OpenTelemetry SDK only when tracing starts; workers/tracing loads it at once.
  const { endpointFromEnv, startTracing } = require('../serve/tracing') as typeof TracingModule;
  const endpoint = endpointFromEnv(process.env);
  if (!endpoint) return undefined;
  const { clientTracingInterceptors } = require('../workers/tracing') as typeof WorkerTracingModule;
  const tracing = await startTracing({ serviceName: 'fleetgate-cli', endpoint });
  return { interceptors: clientTracingInterceptors(), shutdown: () => tracing.shutdown() };
}

export async function withSession<T>(fn: (s: Session) => Promise<T>): Promise<T> {
  const s = await connect();
  try {
    return await fn(s);
  } finally {
    await s.close();
  }
}

/** Quotes a word for a POSIX shell when it needs it. */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** Connection flags of the Temporal CLI for the configured server, when not the defaults. */
function temporalConnFlags(s: { config: Config; address: string }): string {
  const flags: string[] = [];
  if (s.address !== 'localhost:7233' && s.address !== '127.0.0.1:7233') flags.push('--address', s.address);
  if (s.config.namespace !== 'default') flags.push('--namespace', s.config.namespace);
  if (s.config.tls) flags.push('--tls');
  return flags.map(shellQuote).join(' ');
}

function rolloutHandle(s: Session, id: string): WorkflowHandle {
  return s.client.workflow.getHandle(id);
}

async function notFound(err: unknown, id: string, s: Session): Promise<never> {
  if (!(err instanceof WorkflowNotFoundError)) throw err;
  // An update to a closed workflow is "not found" too: say which it is.
  const status = await rolloutHandle(s, id)
    .describe()
    .then((d) => d.status.name)
    .catch(() => undefined);
  if (status && status !== 'RUNNING') {
    throw new CliError(
      `rollout "${id}" has already ended (${status.toLowerCase()}); see "fleetgate status ${id}"`,
    );
  }
  throw new CliError(`no rollout with id "${id}" in namespace "${s.config.namespace}" at ${s.address}`);
}

/** Runs an update; a validator's refusal becomes `refused: <message>`. */
export async function update<T>(
  s: Session,
  id: string,
  timeoutMs: number,
  fn: (h: WorkflowHandle) => Promise<T>,
): Promise<T> {
  const handle = rolloutHandle(s, id);
  try {
    return await s.client.withDeadline(Date.now() + timeoutMs, () => fn(handle));
  } catch (err) {
    if (err instanceof WorkflowUpdateFailedError)
      throw new CliError(`refused: ${safeText(causeMessage(err))}`);
    if (err instanceof WorkflowUpdateRPCTimeoutOrCancelledError) {
      throw new CliError(
        `no answer from rollout "${id}" within ${Math.round(timeoutMs / 1000)} s; is a fleetgate worker running on task queue "${s.config.taskQueue}"?`,
      );
    }
    return notFound(err, id, s);
  }
}

const color = () => Boolean(process.stdout.isTTY) && !process.env.NO_COLOR;

/** Exit code of a finished rollout: 0 only when it completed. */
function resultCode(result: RolloutResult): number {
  return result.outcome === 'completed' ? 0 : 1;
}

/** Stops watching on Ctrl-C (the rollout keeps running). */
async function watchUntilDone(handle: WorkflowHandle): Promise<number> {
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal);
  try {
    const result = await watch(handle, { signal: stop.signal });
    console.log(renderResult(result, { color: color() }));
    return resultCode(result);
  } catch (err) {
    if (err instanceof WatchInterrupted) {
      console.error(`fleetgate: stopped watching; rollout ${handle.workflowId} keeps running`);
      return 130;
    }
    throw err;
  } finally {
    process.off('SIGINT', onSignal);
  }
}

// ---- commands -----------------------------------------------------------------------------------

/** The plan of a policy over a fleet, or the problems that keep it from being made. */
export function planFor(
  policyFile: string,
  fleetFile: string,
  timeScale = 1,
): { ok: true; plan: RolloutPlan; policy: Policy } | { ok: false; problems: string[] } {
  const read = readPolicyFile(policyFile);
  if (!read.ok) return read;
  const policy = Policy.safeParse(read.policy);
  if (!policy.success)
    return { ok: false, problems: formatIssues(policy.error, read.policy, 'policy').split('\n') };
  let fleet: FleetManifest;
  try {
    fleet = (require('../fleet/manifest') as typeof ManifestModule).loadFleetManifest(fleetFile);
  } catch (err) {
    return { ok: false, problems: [(err as Error).message.split('\n')[0]!] };
  }
  return { ok: true, plan: planRollout({ policy: policy.data, fleet, timeScale }), policy: policy.data };
}

async function rolloutPlanCommand(args: string[]): Promise<number> {
  const p = parse('rollout plan', args, {
    policy: { type: 'string' },
    fleet: { type: 'string' },
    'time-scale': { type: 'string' },
    json: { type: 'boolean' },
  });
  if (p.help) return help('rollout plan');
  const policyFile = required('rollout plan', p.values, 'policy');
  const ts = str(p.values, 'time-scale');
  const timeScale = ts === undefined ? 1 : Number(ts);
  if (!Number.isFinite(timeScale) || timeScale <= 0) {
    throw new UsageError(`--time-scale must be a positive number (got "${ts}")`);
  }
  const result = planFor(policyFile, str(p.values, 'fleet') ?? DEFAULT_FLEET, timeScale);
  if (!result.ok) {
    throw new CliError(`cannot plan ${policyFile}:\n${result.problems.map((l) => `  ${l}`).join('\n')}`, 2);
  }
  const { plan } = result;
  for (const w of policyWarnings(result.policy)) console.error(`fleetgate: warning: ${w}`);
  if (p.values.json) {
    process.stdout.write(JSON.stringify(plan, null, 2) + '\n');
    return 0;
  }
  const pct = (x: number | null) => (x === null ? 'none' : `${(x * 100).toFixed(2)} pts`);
  console.log('cohort            vehicles  labeled per arm (cand / prod)  detectable harm  margin     ok');
  for (const c of plan.cohorts) {
    console.log(
      `${c.cohort.padEnd(18)}${String(c.vehicles).padEnd(10)}` +
        `${`${Math.round(c.labeledPerArm.candidate)} / ${Math.round(c.labeledPerArm.production)}`.padEnd(31)}` +
        `${pct(c.mde).padEnd(17)}${pct(c.margin).padEnd(11)}${c.detectable === null ? '-' : c.detectable ? 'yes' : 'NO'}`,
    );
  }
  for (const w of plan.warnings) console.log(`warning: ${w}`);
  return 0;
}

async function rolloutCommand(args: string[]): Promise<number> {
  const sub = args[0];
  if (sub === 'plan') return rolloutPlanCommand(args.slice(1));
  if (sub !== 'start' && sub !== 'request') {
    if (sub === undefined || sub === '--help' || sub === '-h') {
      console.log(`${HELP['rollout start']}\n\n${HELP['rollout request']}\n\n${HELP['rollout plan']}`);
      return sub === undefined ? 2 : 0;
    }
    throw new UsageError(
      `unknown command "rollout ${sub}": use "rollout start", "rollout request" or "rollout plan"`,
    );
  }
  const command = `rollout ${sub}`;
  const options = sub === 'start' ? { ...REQUEST_OPTIONS, wait: { type: 'boolean' } } : REQUEST_OPTIONS;
  const p = parse(command, args.slice(1), options as Options);
  if (p.help) return help(command);
  const request = validRequest(requestFlags(command, p.values));
  if (sub === 'request') {
    process.stdout.write(JSON.stringify(request, null, 2) + '\n');
    return 0;
  }
  return withSession(async (s) => {
    let handle: WorkflowHandle;
    try {
      const { startRolloutWorkflow } = require('../activities/controls') as typeof ControlsModule;
      const started = await startRolloutWorkflow(s.client, {
        taskQueue: s.config.taskQueue,
        workflowId: request.rolloutId,
        // A rollout id names one rollout, its report and its history: never reused.
        workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
        args: [request],
      });
      handle = started.handle;
      if (!started.searchAttributes) {
        console.error(
          'fleetgate: note: the namespace has no FleetgatePhase search attribute; the rollout is not listed by phase (see docs/operations.md)',
        );
      }
    } catch (err) {
      if (err instanceof WorkflowExecutionAlreadyStartedError) {
        throw new CliError(
          `a rollout with id "${request.rolloutId}" exists already (ids are never reused); choose another --id`,
        );
      }
      throw err;
    }
    const id = request.rolloutId;
    const flags = [
      '--policy',
      p.values.policy as string,
      '--candidate',
      request.candidate.pack,
      '--fleet',
      request.fleet.manifest,
      '--id',
      id,
      '--time-scale',
      String(request.fleet.timeScale),
      '--requested-by',
      request.requestedBy,
    ]
      .map(shellQuote)
      .join(' ');
    const conn = temporalConnFlags(s);
    console.log(
      `started rollout ${id} (workflow ${WORKFLOW_TYPE}, task queue "${s.config.taskQueue}", namespace "${s.config.namespace}")`,
    );
    console.log(`  follow it:  npx fleetgate status ${shellQuote(id)} --watch`);
    console.log('  the same with the Temporal CLI:');
    console.log(`    npx fleetgate rollout request ${flags} > request.json`);
    console.log(
      `    temporal workflow start --type ${WORKFLOW_TYPE} --task-queue ${shellQuote(s.config.taskQueue)} ` +
        `--workflow-id ${shellQuote(id)} --id-reuse-policy RejectDuplicate --input-file request.json ` +
        `--search-attribute 'FleetgatePhase="register"'${conn ? ' ' + conn : ''}`,
    );
    if (!p.values.wait) return 0;
    return watchUntilDone(handle);
  });
}

async function statusCommand(args: string[]): Promise<number> {
  const p = parse('status', args, { watch: { type: 'boolean' }, json: { type: 'boolean' } }, 1);
  if (p.help) return help('status');
  const id = p.positionals[0]!;
  return withSession(async (s) => {
    const handle = rolloutHandle(s, id);
    let running: boolean;
    let inFlight: InFlight[];
    try {
      const described = await handle.describe();
      running = described.status.name === 'RUNNING';
      inFlight = inFlightOf(described.raw.pendingActivities);
    } catch (err) {
      return notFound(err, id, s);
    }
    if (!running) {
      let result: RolloutResult;
      try {
        result = (await handle.result()) as RolloutResult;
      } catch (err) {
        throw new CliError(`rollout ${id} failed: ${causeMessage(err)}`);
      }
      if (p.values.json) console.log(JSON.stringify(result, null, 2));
      else console.log(renderResult(result, { color: color() }));
      return resultCode(result);
    }
    if (p.values.watch && !p.values.json) return watchUntilDone(handle);
    if (p.values.watch) {
      const result = await watch(handle, { out: { write: () => true } });
      console.log(JSON.stringify(result, null, 2));
      return resultCode(result);
    }
    let status;
    try {
      status = await s.client.withDeadline(Date.now() + 10_000, () => handle.query(statusQuery));
    } catch (err) {
      const msg = causeMessage(err);
      // What the server knows still tells why the rollout waits: an activity on a worker that died.
      const known = inFlightLines(inFlight)
        .map((l) => `\n  in flight: ${l}`)
        .join('');
      if (/deadline/i.test(msg)) {
        throw new CliError(
          `no answer from rollout "${id}" within 10 s; is a fleetgate worker running on task queue "${s.config.taskQueue}"?${known}`,
        );
      }
      throw new CliError(`cannot read the status of ${id}: ${msg}${known}`);
    }
    console.log(
      p.values.json
        ? JSON.stringify({ ...status, inFlight }, null, 2)
        : renderStatus(status, { color: color() }, inFlight),
    );
    return 0;
  });
}

async function approveCommand(args: string[]): Promise<number> {
  const p = parse(
    'approve',
    args,
    {
      gate: { type: 'string' },
      reviewer: { type: 'string' },
      comment: { type: 'string' },
      digest: { type: 'string' },
    },
    1,
  );
  if (p.help) return help('approve');
  const id = p.positionals[0]!;
  const gate = required('approve', p.values, 'gate');
  const reviewer = required('approve', p.values, 'reviewer');
  const comment = str(p.values, 'comment');
  const digest = str(p.values, 'digest');
  const receipt = await withSession((s) =>
    update(s, id, 30_000, (h) =>
      h.executeUpdate(approveUpdate, {
        args: [{ gate, reviewer, ...(comment ? { comment } : {}), ...(digest ? { digest } : {}) }],
      }),
    ),
  );
  const state = receipt.open
    ? 'the gate is open'
    : `${receipt.required - receipt.approvals.length} more approval(s) needed`;
  console.log(
    `approved gate "${receipt.gate}" of ${id} as ${reviewer}: ${receipt.approvals.length}/${receipt.required}; ${state}`,
  );
  return 0;
}

async function rejectCommand(args: string[]): Promise<number> {
  const p = parse(
    'reject',
    args,
    {
      gate: { type: 'string' },
      reviewer: { type: 'string' },
      reason: { type: 'string' },
      digest: { type: 'string' },
    },
    1,
  );
  if (p.help) return help('reject');
  const id = p.positionals[0]!;
  const gate = required('reject', p.values, 'gate');
  const reviewer = required('reject', p.values, 'reviewer');
  const reason = required('reject', p.values, 'reason');
  const digest = str(p.values, 'digest');
  await withSession((s) =>
    update(s, id, 30_000, (h) =>
      h.executeUpdate(rejectUpdate, { args: [{ gate, reviewer, reason, ...(digest ? { digest } : {}) }] }),
    ),
  );
  console.log(`rejected gate "${gate}" of ${id} as ${reviewer}; the rollout ends "rejected" and rolls back`);
  return 0;
}

async function abortCommand(args: string[]): Promise<number> {
  const p = parse('abort', args, { reason: { type: 'string' }, by: { type: 'string' } }, 1);
  if (p.help) return help('abort');
  const id = p.positionals[0]!;
  const reason = str(p.values, 'reason') ?? 'operator abort, no reason given';
  const by = str(p.values, 'by') ?? defaultRequester();
  console.error(`fleetgate: aborting ${id}; waiting for its compensations…`);
  const receipt = await withSession((s) =>
    update(s, id, 600_000, (h) => h.executeUpdate(abortUpdate, { args: [{ reason, by }] })),
  );
  console.log(`aborted ${id}: outcome ${receipt.outcome}, ${receipt.compensations} compensation(s) run`);
  return 0;
}

async function workerCommand(args: string[]): Promise<number> {
  const p = parse('worker', args, {});
  if (p.help) return help('worker');
  const { runWorker } = require('../workers/main') as typeof WorkerMainModule;
  await runWorker();
  return 0;
}

async function serverCommand(args: string[]): Promise<number> {
  const p = parse('server', args, {});
  if (p.help) return help('server');
  const { startDevServer } = require('../workers/dev-server') as typeof DevServerModule;
  const config = loadConfig();
  const dbFile = join(config.dataDir, 'temporal.db');
  const server = await startDevServer({
    dbFile,
    port: 7233,
    uiPort: 8233,
    ui: true,
    namespace: config.namespace,
  });
  console.log(`Temporal dev server on ${server.address}, history in ${displayPath(dbFile)}`);
  if (server.uiUrl) console.log(`Web UI: ${server.uiUrl}/namespaces/${config.namespace}/workflows`);
  if (server.address !== '127.0.0.1:7233') {
    console.log(
      `port 7233 was busy: set TEMPORAL_ADDRESS=${server.address} for "fleetgate worker" and the other commands`,
    );
  }
  console.log('Ctrl-C stops it.');
  const why = await new Promise<string>((resolve) => {
    process.once('SIGINT', () => resolve('signal'));
    process.once('SIGTERM', () => resolve('signal'));
    server.process.once('exit', (code) => resolve(`exit ${code}`));
  });
  await server.stop();
  if (why !== 'signal') throw new CliError(`the Temporal dev server stopped by itself (${why})`);
  console.log('stopped.');
  return 0;
}

async function fleetCommand(args: string[]): Promise<number> {
  const sub = args[0];
  if (sub === 'simulate') return fleetSimulateCommand(args.slice(1));
  if (sub !== 'init') {
    if (sub === undefined || sub === '--help' || sub === '-h') {
      console.log(`${HELP['fleet init']}\n\n${HELP['fleet simulate']}`);
      return sub === undefined ? 2 : 0;
    }
    throw new UsageError(`unknown command "fleet ${sub}": use "fleet init" or "fleet simulate"`);
  }
  const p = parse('fleet init', args.slice(1), { fleet: { type: 'string' }, production: { type: 'string' } });
  if (p.help) return help('fleet init');
  const manifestPath = str(p.values, 'fleet') ?? DEFAULT_FLEET;
  const packDir = str(p.values, 'production') ?? DEFAULT_PRODUCTION;
  const config = loadConfig();
  const line = await initFleet(config, manifestPath, packDir, defaultRequester());
  console.log(line);
  return 0;
}

/** `fleet simulate`: the flags checked here (exit code 2 on a bad one), the process in sim/simulator-process.ts. */
async function fleetSimulateCommand(args: string[]): Promise<number> {
  const p = parse('fleet simulate', args, {
    ingest: { type: 'string' },
    landing: { type: 'string' },
    store: { type: 'string' },
    db: { type: 'string' },
    every: { type: 'string' },
    once: { type: 'boolean' },
  });
  if (p.help) return help('fleet simulate');
  const landingFlag = str(p.values, 'landing');
  if (landingFlag !== undefined && str(p.values, 'ingest') !== undefined) {
    throw new UsageError(
      '--ingest and --landing exclude each other: give --ingest URL to send over HTTP, or --landing PREFIX to write files',
    );
  }
  if (landingFlag === undefined && str(p.values, 'ingest') === undefined) {
    throw new UsageError(
      'fleet simulate needs --ingest URL (to send over HTTP) or --landing PREFIX (to write files to a landing zone)',
    );
  }
  const ingest = landingFlag === undefined ? str(p.values, 'ingest') : undefined;
  if (ingest !== undefined) {
    let url: URL | undefined;
    try {
      url = new URL(ingest);
    } catch {
      url = undefined;
    }
    if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:')) {
      throw new UsageError(
        `--ingest must be the endpoint's http:// or https:// URL, such as http://127.0.0.1:8790 (got "${safeText(ingest.slice(0, 100))}")`,
      );
    }
  }
  const landing = landingFlag?.replace(/\/+$/, '');
  if (
    landing !== undefined &&
    !landing.startsWith('s3://') &&
    (landing === '' ||
      landing.startsWith('/') ||
      landing.split('/').some((s) => s === '' || s === '.' || s === '..'))
  ) {
    throw new UsageError(
      `--landing must be a key prefix of the store such as "landing" (no leading "/", no "." or ".." levels) or s3://BUCKET/PREFIX (got "${safeText(landingFlag!.slice(0, 100))}")`,
    );
  }
  const every = str(p.values, 'every') ?? '200ms';
  const everyMs = parseDuration(every);
  if (everyMs === undefined || everyMs < 10 || everyMs > 60_000) {
    throw new UsageError(
      `--every must be a duration from 10ms to 1m, such as "200ms" or "2s" (got "${safeText(every.slice(0, 40))}")`,
    );
  }
  const config = loadConfig();
  const db = resolve(str(p.values, 'db') ?? join(config.dataDir, 'simulator.duckdb'));
  if (db === resolve(config.dataDir, 'fleet.duckdb') || basename(db) === 'fleet.duckdb') {
    throw new UsageError(
      `--db must be a file of its own, not a worker's fleet database (got "${safeText(displayPath(db))}"); ` +
        `leave it out for ${displayPath(join(config.dataDir, 'simulator.duckdb'))}`,
    );
  }
  const { simulatorCommand } = require('../sim/simulator-process') as typeof SimulatorProcessModule;
  return simulatorCommand({
    ...(ingest !== undefined ? { ingestUrl: ingest } : {}),
    ...(landing !== undefined ? { landing } : {}),
    ...(str(p.values, 'store') ? { store: str(p.values, 'store')! } : {}),
    dbPath: db,
    dataDir: config.dataDir,
    everyMs,
    once: p.values.once === true,
  });
}

/**
 * Registers the production pack for every cohort of the fleet and creates the simulated fleet, through
 * the composition root's services. Idempotent. Returns one line saying what is there.
 */
export async function initFleet(
  config: Config,
  manifestPath: string,
  packDir: string,
  by: string,
): Promise<string> {
  const { openServices } = require('../workers/worker') as typeof WorkerModule;
  const { bootstrapProduction } = require('../activities/registry') as typeof RegistryModule;
  const { initSimFleet } = require('../activities/fleet') as typeof FleetActivitiesModule;
  const { loadFleetManifest } = require('../fleet/manifest') as typeof ManifestModule;
  const { isServiceManifest } = require('../activities/service') as typeof ServiceActivitiesModule;
  if (isServiceManifest(process.cwd(), manifestPath))
    return initServiceLine(config, manifestPath, packDir, by);
  const manifest = loadFleetManifest(manifestPath);
  const cohorts = manifest.cohorts.map((c) => c.name);
  const { storeDriftReferences } = require('../activities/drift') as typeof DriftActivitiesModule;
  const productionLine = (prod: { name: string; version: string; digest: string }) =>
    `production ${prod.name}@${prod.version} (${prod.digest.slice(0, 12)}) in ${cohorts.length} cohort(s) ` +
    `(${cohorts.join(', ')})`;
  if (config.ota.kind === 'aws-iot') {
    // Delivery through AWS IoT Jobs: the vehicles are things there, registered by pseudonym. The registry
    // and AWS IoT alone, never the fleet database, so it runs beside the worker that owns it.
    const ota = config.ota;
    const { createIotClient, featureSource } = require('../workers/worker') as typeof WorkerModule;
    const { loadPseudonymKey } = require('../workers/secrets') as typeof SecretsModule;
    const { withRegistry } = require('./model') as typeof ModelModule;
    const { IotDeviceAgent } = require('../sim/iot-agent') as typeof IotAgentModule;
    return withRegistry(async (deps) => {
      const prod = await bootstrapProduction(deps, packDir, cohorts, by);
      await storeDriftReferences(deps.store, prod, manifest, featureSource());
      const productionByCohort = Object.fromEntries(cohorts.map((c) => [c, prod.digest]));
      const client = createIotClient(ota);
      try {
        const iot = await new IotDeviceAgent(client).provision(
          manifest,
          loadPseudonymKey(config.dataDir),
          productionByCohort,
        );
        return (
          `fleet "${iot.fleet}": ${iot.vehicles} vehicles registered as AWS IoT things (${iot.created} new); ` +
          `${productionLine(prod)}; data in ${displayPath(config.dataDir)}`
        );
      } finally {
        client.destroy();
      }
    }, config);
  }
  // A running owner of the data (a worker holding the fleet database or the store's lease) creates the
  // vehicles itself, on its task queue (cli/fleet-owner.ts); otherwise they are created here.
  const { initThroughOwner, leaseOwner, lockOwner } = require('./fleet-owner') as typeof FleetOwnerModule;
  let owner = await leaseOwner(config);
  let services: Awaited<ReturnType<typeof openServices>> | undefined;
  if (owner === undefined) {
    try {
      services = await openServices(config.dataDir, config.root, config.ota);
    } catch (err) {
      owner = lockOwner(err);
      if (owner === undefined) throw err;
    }
  }
  const simLine = (fleet: { fleet: string; vehicles: number; created: boolean }, production: string) =>
    `fleet "${fleet.fleet}" ${fleet.created ? 'created' : 'already there'}: ${fleet.vehicles} simulated vehicles; ` +
    `${production}; data in ${displayPath(config.dataDir)}`;
  if (!services) {
    const r = await initThroughOwner({
      config,
      owner: owner!,
      manifestPath,
      manifest,
      packDir,
      by,
      CliError,
    });
    return simLine(r.fleet, productionLine(r.production));
  }
  try {
    const prod = await bootstrapProduction(services, packDir, cohorts, by);
    // The drift checks' reference (fleetgate drift), stored beside production's record as it is registered.
    await storeDriftReferences(services.store, prod, manifest, services.features);
    const productionByCohort = Object.fromEntries(cohorts.map((c) => [c, prod.digest]));
    const production = productionLine(prod);
    const fleet = await initSimFleet(
      { conn: services.db.connection, key: services.key, root: services.root },
      manifestPath,
      productionByCohort,
    );
    return simLine(fleet, production);
  } finally {
    await services.close();
  }
}

/** `fleet init` of a service manifest: production registered for every cohort; there are no vehicles. */
async function initServiceLine(
  config: Config,
  manifestPath: string,
  packDir: string,
  by: string,
): Promise<string> {
  const { initService } = require('../activities/service') as typeof ServiceActivitiesModule;
  const { withRegistry } = require('./model') as typeof ModelModule;
  // A service has no vehicles: the registry alone, never the fleet database a running worker owns.
  const {
    service,
    cohorts,
    production: prod,
  } = await withRegistry((deps) => initService(deps, resolve(manifestPath), packDir, by), config);
  return (
    `service "${service}": production ${prod.name}@${prod.version} (${prod.digest.slice(0, 12)}) in ` +
    `${cohorts.length} cohort(s) (${cohorts.join(', ')}); the gateway serves it from the registry; ` +
    `data in ${displayPath(config.dataDir)}`
  );
}

/** A path relative to the working directory when it is inside it. */
export function displayPath(p: string): string {
  const r = relative(process.cwd(), p);
  return r && !r.startsWith('..') ? r : p;
}

async function simulateCommand(args: string[]): Promise<number> {
  const p = parse('simulate', args, {
    scenario: { type: 'string' },
    policy: { type: 'string' },
    seed: { type: 'string' },
    seeds: { type: 'string' },
    json: { type: 'boolean' },
    schema: { type: 'boolean' },
  });
  if (p.help) return help('simulate');
  const { scenarioJsonSchema } = require('../policies/scenario') as typeof ScenarioModule;
  if (p.values.schema) {
    process.stdout.write(JSON.stringify(scenarioJsonSchema(), null, 2) + '\n');
    return 0;
  }
  const scenario = required('simulate', p.values, 'scenario');
  const whole = (name: string, min: number): number | undefined => {
    const v = str(p.values, name);
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min)
      throw new UsageError(`--${name} must be a whole number ≥ ${min} (got "${v}")`);
    return n;
  };
  const seed = whole('seed', 0);
  const seeds = whole('seeds', 1);
  const sim = require('./simulate') as typeof SimulateModule;
  const progress = (line: string) => console.error(`fleetgate: ${line}`);
  try {
    if (seeds !== undefined && seeds > 1) {
      const m = await sim.simulateSeeds(scenario, {
        policyFile: str(p.values, 'policy'),
        seed,
        seeds,
        progress,
      });
      console.log(p.values.json ? JSON.stringify(m, null, 2) : sim.renderMulti(m));
      return m.runs.every((r) => r.outcome === 'completed') ? 0 : 1;
    }
    const r = await sim.simulate(scenario, { policyFile: str(p.values, 'policy'), seed });
    console.log(p.values.json ? JSON.stringify(r, null, 2) : sim.renderRun(r));
    return r.outcome === 'completed' ? 0 : 1;
  } catch (err) {
    if (err instanceof sim.ScenarioError) throw new CliError(err.message, 2);
    throw err;
  }
}

async function demoCommand(args: string[]): Promise<number> {
  const p = parse('demo', args, {});
  if (p.help) return help('demo');
  const { runDemo } = require('./demo') as typeof DemoModule;
  return runDemo();
}

function help(command?: string): number {
  console.log(command && HELP[command] ? HELP[command] : USAGE);
  return 0;
}

const COMMANDS: Record<string, (args: string[]) => Promise<number>> = {
  demo: demoCommand,
  rollout: rolloutCommand,
  status: statusCommand,
  approve: approveCommand,
  reject: rejectCommand,
  abort: abortCommand,
  gate: (args) => (require('./gate') as typeof GateModule).gateCommand(args),
  pause: (args) => (require('./gate') as typeof GateModule).pauseCommand(args),
  resume: (args) => (require('./gate') as typeof GateModule).resumeCommand(args),
  rollback: (args) => (require('./gate') as typeof GateModule).rollbackCommand(args),
  worker: workerCommand,
  server: serverCommand,
  fleet: fleetCommand,
  stats: statsCommand,
  simulate: simulateCommand,
  model: (args) => (require('./model') as typeof ModelModule).modelCommand(args),
  report: (args) => (require('./report') as typeof ReportModule).reportCommand(args),
  drift: (args) => (require('./drift') as typeof DriftModule).driftCommand(args),
  ui: (args) => (require('./ui') as typeof UiModule).uiCommand(args),
  serve: (args) => (require('./serve') as typeof ServeModule).serveCommand(args),
  events: (args) => (require('../events/cli') as typeof EventsCliModule).eventsCommand(args),
  ingest: (args) => (require('../events/cli') as typeof EventsCliModule).ingestCommand(args),
};

/** Runs one command; returns the process exit code. Never throws. */
export async function main(argv: string[]): Promise<number> {
  // Whatever a command prints, no control sequence of a value reaches the terminal (cli/terminal.ts).
  guardOutput(process.stdout);
  guardOutput(process.stderr);
  const [command, ...rest] = argv;
  try {
    if (command === undefined) {
      process.stderr.write(USAGE);
      return 2;
    }
    if (command === '--help' || command === '-h' || command === 'help') {
      const topic = rest.join(' ');
      return help(HELP[topic] ? topic : undefined);
    }
    const run = COMMANDS[command];
    if (!run) throw new UsageError(`unknown command "${command}" (see "fleetgate --help")`);
    return await run(rest);
  } catch (err) {
    return reportError(err);
  }
}

function reportError(err: unknown): number {
  if (process.env.FLEETGATE_DEBUG === '1') console.error(err);
  if (err instanceof UsageError) {
    console.error(`fleetgate: ${err.message}`);
    return 2;
  }
  if (err instanceof CliError) {
    console.error(`fleetgate: ${err.message}`);
    return err.exitCode;
  }
  const msg = causeMessage(err);
  console.error(`fleetgate: ${msg.split('\n')[0]}${msg.includes('\n') ? '\n' + indentRest(msg) : ''}`);
  return 1;
}

/** Multi-line messages (lists of problems) keep their lines, indented. */
function indentRest(msg: string): string {
  return msg
    .split('\n')
    .slice(1)
    .map((l) => `  ${l.trimStart()}`)
    .join('\n');
}

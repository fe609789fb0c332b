/**
 * Configuration from the environment, read in one place. Every variable has a default that makes the
 * embedded setup (dev server, local stores, DuckDB file, simulated fleet) work with nothing set.
 *
 *   TEMPORAL_ADDRESS        host:port of a Temporal frontend. Unset: `fleetgate demo` starts a dev server;
 *                           the worker and CLI use localhost:7233.
 *   TEMPORAL_NAMESPACE      namespace (default "default")
 *   TEMPORAL_API_KEY        API key (Temporal Cloud); turns TLS on
 *   TEMPORAL_TLS            "1" to use TLS with system roots
 *   FLEETGATE_DATA_DIR      data directory (default ".fleetgate")
 *   FLEETGATE_TASK_QUEUE    task queue (default "fleetgate")
 *   FLEETGATE_PSEUDONYM_KEY hex key of the vehicle pseudonyms (default: a key file in the data directory)
 *   FLEETGATE_SHARED_QUEUE  "1": a worker skips the check that one data store serves its task queue
 *                           (workers/ownership.ts; see docs/operations.md, "One data store per task queue")
 *
 * Over-the-air delivery (see docs/operations.md, "Delivery through AWS IoT Jobs"):
 *   FLEETGATE_OTA           "simulated" (default): the simulated fleet in the DuckDB file;
 *                           "aws-iot": AWS IoT Jobs through @aws-sdk/client-iot
 *   FLEETGATE_AWS_ENDPOINT  endpoint URL of an IoT-compatible server (e.g. moto on loopback); unset: AWS
 *   AWS_REGION, AWS_DEFAULT_REGION
 *                           region (unset: the AWS SDK's own lookup, e.g. the profile's); also the S3 store's
 *   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN
 *                           credentials; unset: the AWS SDK's default chain (profile, SSO, instance role);
 *                           also the S3 store's
 *   FLEETGATE_IOT_RATE      job executions started per minute, 1-1000 (default 100)
 *   FLEETGATE_IOT_ABORT_PERCENT
 *                           cancel a job once this % of its executed vehicles failed, were rejected or
 *                           timed out (default 10) ...
 *   FLEETGATE_IOT_ABORT_MIN_EXECUTED
 *                           ... counted after this many vehicles executed it (default 10)
 *   FLEETGATE_IOT_TIMEOUT_MINUTES
 *                           a vehicle's execution fails after this long in progress, 1-10080 (default 60)
 *   FLEETGATE_IOT_AGENT     "1": the worker also plays the fleet's vehicles (sim/iot-agent.ts), applying
 *                           fleetgate's jobs to the things; for a simulated fleet registered in IoT by
 *                           `fleetgate fleet init`. Never set it where real vehicles run the jobs.
 *   FLEETGATE_IOT_AGENT_EVERY_MS
 *                           how often the agent looks for new jobs, in ms (default 2000)
 *
 * Telemetry (the records that decide a rollout; see docs/events.md):
 *   FLEETGATE_TELEMETRY     "simulated" (default): the simulated fleet sends each window's events and its
 *                           labeler answers label requests, in process, through the ingestion writer;
 *                           "ingested": only what fleets and labelers sent (`fleetgate ingest`, the
 *                           landing zone) decides: a batch waits for the fleet's watermarks, then reads;
 *                           "simulator": as "ingested", with the simulated fleet in a process of its own
 *                           (`fleetgate fleet simulate --ingest URL`): each batch first publishes a window
 *                           request to the object store (activities/sim-requests.ts), which that process
 *                           answers by sending the window's events to the ingestion endpoint
 *   FLEETGATE_INGEST_PORT   the worker also serves the ingestion endpoint (`fleetgate ingest`'s, on the
 *                           worker's own fleet database) on this port; unset: it does not
 *   FLEETGATE_INGEST_HOST   its address (default 127.0.0.1; 0.0.0.0 to take batches from other machines)
 *   FLEETGATE_WATERMARK_WAIT
 *                           with "ingested" or "simulator": how long a batch waits for every cohort's watermark to reach
 *                           the window's end before it reads what is there, as a duration (default 60s)
 *
 * Object store (model blobs, registry records, stage pointers; see activities/store-s3.ts):
 *   FLEETGATE_STORE         "local" (default): the directory <FLEETGATE_DATA_DIR>/store;
 *                           "s3://BUCKET" or "s3://BUCKET/KEY/PREFIX": keys under that prefix of an existing
 *                           S3 bucket, written with conditional requests (If-None-Match, If-Match)
 *   FLEETGATE_S3_ENDPOINT   endpoint URL of an S3-compatible server (e.g. moto, MinIO); unset:
 *                           FLEETGATE_AWS_ENDPOINT, then AWS. With an endpoint, requests are path-style.
 *                           Region and credentials: the AWS_* variables above.
 *
 * Notifications (see docs/operations.md, "Notifications"; activities/notify.ts):
 *   FLEETGATE_WEBHOOK_URL   https:// URL that receives a JSON POST (Slack-compatible) when a gate waits, a
 *                           cohort is rolled back or promoted and a rollout ends; unset: none sent. http://
 *                           only to a loopback host (localhost, 127.0.0.0/8, [::1]); refused elsewhere.
 *                           Treat it as a secret (a Slack URL's path is one): only its host is ever logged.
 *   FLEETGATE_WEBHOOK_SECRET
 *                           key of the Fleetgate-Signature header (t=<unix seconds>,v1=<hex HMAC-SHA256 of
 *                           the timestamp, the Idempotency-Key and the body>); unset: requests are not signed
 *
 * Services behind the inference gateway (see docs/serving.md; activities/service.ts):
 *   FLEETGATE_GATEWAY_ALLOW the gateways a service manifest's gateway.url may name, which the worker sends
 *                           requests and its gateway token to: origins (https://gw.internal:8443), separated
 *                           by commas or spaces, and "loopback" for any port of 127.0.0.0/8, [::1] and
 *                           localhost. Unset or empty: "loopback". "none": no gateway at all.
 *   FLEETGATE_GATEWAY_TOKEN, FLEETGATE_GATEWAY_TOKEN_<NAME>
 *                           the gateways' admin tokens; a manifest's gateway.tokenEnv may name only these
 */
import { join, resolve } from 'node:path';
import { S3Client } from '@aws-sdk/client-s3';
import type { ObjectStore } from '../activities/deps';
import type { IotJobsSettings } from '../activities/ota-iot';
import type { WebhookConfig } from '../activities/notify';
import type { GatewayAllow } from '../activities/service';
import { LocalObjectStore } from '../activities/store';
import { S3ObjectStore } from '../activities/store-s3';
import { TASK_QUEUE } from '../workflows/definitions';
import { parseDuration } from '../policies/duration';

/** Which over-the-air channel the workers deliver through. */
export type OtaConfig = { kind: 'simulated' } | AwsIotConfig;
export interface AwsIotConfig {
  kind: 'aws-iot';
  /** FLEETGATE_AWS_ENDPOINT; undefined: AWS itself. */
  endpoint?: string;
  region?: string;
  /** From the environment's AWS_* variables; undefined: the SDK's default chain. */
  credentials?: AwsCredentials;
  /** The settings given; the channel fills in its defaults (IOT_JOBS_DEFAULTS) and checks ranges. */
  settings: Partial<IotJobsSettings>;
  /** FLEETGATE_IOT_AGENT: the worker plays the vehicles, looking for jobs every `everyMs`. */
  agent?: { everyMs: number };
}

export interface Config {
  address?: string;
  namespace: string;
  apiKey?: string;
  tls: boolean;
  dataDir: string;
  taskQueue: string;
  /** Directory that model pack and fleet manifest paths are relative to. */
  root: string;
  ota: OtaConfig;
  store: StoreConfig;
  /** The ingestion endpoint the worker serves (FLEETGATE_INGEST_PORT); absent: none. */
  ingest?: { host: string; port: number };
  /** The landing zone the worker reads into its fleet database (FLEETGATE_LANDING); absent: none. */
  landing?: LandingConfig;
  /** What the worker serves (FLEETGATE_WORKER_ROLE). */
  role: WorkerRole;
}

/**
 * What a `fleetgate worker` serves: `all` (the workflows and every activity, owning its data directory),
 * `workflows` (the workflows only: it opens no data directory, so any number of them can serve a task
 * queue beside the one that owns the data), or `activities` (every activity, owning its data directory,
 * and no workflow).
 */
export type WorkerRole = 'all' | 'workflows' | 'activities';
export const WORKER_ROLES: readonly WorkerRole[] = ['all', 'workflows', 'activities'];

/** FLEETGATE_WORKER_ROLE, default `all`. */
export function loadWorkerRole(env: NodeJS.ProcessEnv = process.env): WorkerRole {
  const raw = env.FLEETGATE_WORKER_ROLE || 'all';
  if (!(WORKER_ROLES as readonly string[]).includes(raw)) {
    throw new Error(
      `FLEETGATE_WORKER_ROLE must be ${WORKER_ROLES.map((r) => `"${r}"`).join(', ')} (got "${raw.slice(0, 40)}"): ` +
        '"workflows" serves the workflows only and opens no data directory; "activities" the activities only',
    );
  }
  return raw as WorkerRole;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  return {
    address: env.TEMPORAL_ADDRESS || undefined,
    namespace: env.TEMPORAL_NAMESPACE || 'default',
    apiKey: env.TEMPORAL_API_KEY || undefined,
    tls: env.TEMPORAL_TLS === '1' || Boolean(env.TEMPORAL_API_KEY),
    dataDir: resolve(env.FLEETGATE_DATA_DIR || '.fleetgate'),
    taskQueue: env.FLEETGATE_TASK_QUEUE || TASK_QUEUE,
    root: process.cwd(),
    ota: loadOtaConfig(env),
    store: loadStoreConfig(env),
    ...(loadIngestConfig(env) ? { ingest: loadIngestConfig(env)! } : {}),
    ...(loadLandingConfig(env) ? { landing: loadLandingConfig(env)! } : {}),
    role: loadWorkerRole(env),
  };
}

/** Where the worker reads a landing zone from, and how often. */
export interface LandingConfig {
  /** A key prefix of the store of FLEETGATE_STORE ("" for all of it), or s3://BUCKET/PREFIX. */
  location: string;
  everyMs: number;
}

/**
 * FLEETGATE_LANDING (and FLEETGATE_LANDING_EVERY, default 5s, from 100ms to 1h): the worker reads the files
 * that streams put in the landing zone (docs/events.md, "Landing zone") into its fleet database, as
 * `fleetgate events pull` does into its own. Unset or empty: it does not.
 */
export function loadLandingConfig(env: NodeJS.ProcessEnv = process.env): LandingConfig | undefined {
  const location = env.FLEETGATE_LANDING ?? '';
  if (location === '') return undefined;
  const raw = env.FLEETGATE_LANDING_EVERY || '5s';
  const everyMs = parseDuration(raw);
  if (everyMs === undefined || !(everyMs >= 100 && everyMs <= 3_600_000)) {
    throw new Error(
      `FLEETGATE_LANDING_EVERY must be a duration from 100ms to 1h, such as "5s" or "1m" (got "${raw}")`,
    );
  }
  return { location: location.replace(/\/+$/, ''), everyMs };
}

/**
 * FLEETGATE_INGEST_PORT (and FLEETGATE_INGEST_HOST): the worker also serves the ingestion endpoint on
 * its fleet database. Unset or empty: it does not.
 */
export function loadIngestConfig(
  env: NodeJS.ProcessEnv = process.env,
): { host: string; port: number } | undefined {
  const raw = env.FLEETGATE_INGEST_PORT ?? '';
  if (raw === '') return undefined;
  const port = Number(raw);
  if (!(Number.isInteger(port) && port >= 0 && port <= 65_535)) {
    throw new Error(
      `FLEETGATE_INGEST_PORT must be a TCP port from 0 to 65535 (got "${raw}"); unset it for no endpoint`,
    );
  }
  return { host: env.FLEETGATE_INGEST_HOST || '127.0.0.1', port };
}

/** The OTA channel's configuration; throws on an unknown channel or a setting that is not a number. */
export function loadOtaConfig(env: NodeJS.ProcessEnv = process.env): OtaConfig {
  const kind = env.FLEETGATE_OTA || 'simulated';
  if (kind === 'simulated') return { kind };
  if (kind !== 'aws-iot') {
    throw new Error(`FLEETGATE_OTA must be "simulated" or "aws-iot" (got "${kind}")`);
  }
  const settings: Partial<IotJobsSettings> = {};
  const setting = (name: string, key: keyof IotJobsSettings) => {
    const raw = env[name];
    if (raw === undefined || raw === '') return;
    const n = Number(raw);
    if (!Number.isFinite(n)) throw new Error(`${name} must be a number (got "${raw}")`);
    settings[key] = n;
  };
  setting('FLEETGATE_IOT_RATE', 'maximumPerMinute');
  setting('FLEETGATE_IOT_ABORT_PERCENT', 'abortThresholdPercent');
  setting('FLEETGATE_IOT_ABORT_MIN_EXECUTED', 'abortMinExecuted');
  setting('FLEETGATE_IOT_TIMEOUT_MINUTES', 'inProgressTimeoutMinutes');
  const agent = env.FLEETGATE_IOT_AGENT || '';
  if (agent !== '' && agent !== '0' && agent !== '1') {
    throw new Error(`FLEETGATE_IOT_AGENT must be "1" or "0" (got "${agent}")`);
  }
  const every = env.FLEETGATE_IOT_AGENT_EVERY_MS || '2000';
  const everyMs = Number(every);
  if (!(Number.isInteger(everyMs) && everyMs >= 100)) {
    throw new Error(
      `FLEETGATE_IOT_AGENT_EVERY_MS must be a whole number of ms, at least 100 (got "${every}")`,
    );
  }
  return {
    ...(agent === '1' ? { agent: { everyMs } } : {}),
    kind,
    endpoint: env.FLEETGATE_AWS_ENDPOINT || undefined,
    ...awsRegionAndCredentials(env),
    settings,
  };
}

export interface AwsCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/** Region and credentials of every AWS client (IoT, S3) from AWS_*; undefined: the SDK's own lookup. */
function awsRegionAndCredentials(env: NodeJS.ProcessEnv): { region?: string; credentials?: AwsCredentials } {
  return {
    region: env.AWS_REGION || env.AWS_DEFAULT_REGION || undefined,
    credentials:
      env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY
        ? {
            accessKeyId: env.AWS_ACCESS_KEY_ID,
            secretAccessKey: env.AWS_SECRET_ACCESS_KEY,
            sessionToken: env.AWS_SESSION_TOKEN || undefined,
          }
        : undefined,
  };
}

/** Where the object store is: the data directory's `store/`, or a prefix of an S3 bucket. */
export type StoreConfig = { kind: 'local' } | S3StoreConfig;
export interface S3StoreConfig {
  kind: 's3';
  bucket: string;
  /** Key prefix inside the bucket, without a trailing "/"; "" for the whole bucket. */
  prefix: string;
  /** FLEETGATE_S3_ENDPOINT, else FLEETGATE_AWS_ENDPOINT; undefined: AWS itself. */
  endpoint?: string;
  region?: string;
  credentials?: AwsCredentials;
  /** Path-style requests (http://host/bucket/key), which S3-compatible servers need: on with an endpoint. */
  forcePathStyle: boolean;
}

const STORE_FORMS = '"local" or "s3://BUCKET[/KEY/PREFIX]" (e.g. s3://fleetgate-registry/prod)';

/** The object store's configuration; throws, naming the variable, on a malformed value. */
export function loadStoreConfig(env: NodeJS.ProcessEnv = process.env): StoreConfig {
  const value = env.FLEETGATE_STORE || 'local';
  if (value === 'local') return { kind: 'local' };
  if (!value.startsWith('s3://')) {
    throw new Error(`FLEETGATE_STORE must be ${STORE_FORMS} (got "${value}")`);
  }
  const rest = value.slice('s3://'.length);
  const slash = rest.indexOf('/');
  const bucket = slash < 0 ? rest : rest.slice(0, slash);
  const given = slash < 0 ? '' : rest.slice(slash + 1);
  const prefix = given.endsWith('/') ? given.slice(0, -1) : given;
  const bucketProblem = s3BucketProblem(bucket);
  if (bucketProblem) {
    throw new Error(
      `FLEETGATE_STORE="${value}": ${bucketProblem}; set it to ${STORE_FORMS} with the name of an existing bucket`,
    );
  }
  const bad = given === '' ? undefined : prefix.split('/').find((s) => s === '' || /^\.|[\\\0]/.test(s));
  if (bad !== undefined) {
    const what = bad === '' ? 'an empty segment ("//")' : `the segment "${bad}"`;
    throw new Error(
      `FLEETGATE_STORE="${value}": key prefix "${given}" has ${what}; use plain names separated by single "/", ` +
        'none starting with "." or holding "\\"',
    );
  }
  const endpointVar = env.FLEETGATE_S3_ENDPOINT ? 'FLEETGATE_S3_ENDPOINT' : 'FLEETGATE_AWS_ENDPOINT';
  const endpoint = env[endpointVar] || undefined;
  if (endpoint !== undefined && !isHttpUrl(endpoint)) {
    throw new Error(
      `${endpointVar} must be the http:// or https:// URL of an S3-compatible server, e.g. http://127.0.0.1:9000 ` +
        `(got "${endpoint}"); unset it to use AWS`,
    );
  }
  return {
    kind: 's3',
    bucket,
    prefix,
    ...(endpoint !== undefined ? { endpoint } : {}),
    ...awsRegionAndCredentials(env),
    forcePathStyle: endpoint !== undefined,
  };
}

/** localhost, 127.0.0.0/8 or [::1], as the URL parser spells a hostname (it normalises 0x7f.1, 2130706433). */
function isLoopbackHost(hostname: string): boolean {
  return hostname === 'localhost' || hostname === '[::1]' || /^127(\.\d{1,3}){3}$/.test(hostname);
}

function isHttpUrl(value: string): boolean {
  try {
    const url = new URL(value);
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.hostname !== '';
  } catch {
    return false;
  }
}

/** Why `name` is not a valid S3 bucket name, or undefined when it is. */
function s3BucketProblem(name: string): string | undefined {
  if (name === '') return 'no bucket is named';
  const rules =
    '3-63 characters of lowercase letters, digits, "." and "-", starting and ending with a letter or digit';
  if (
    name.length < 3 ||
    name.length > 63 ||
    !/^[a-z0-9][a-z0-9.-]*[a-z0-9]$/.test(name) ||
    name.includes('..')
  ) {
    return `"${name}" is not a valid S3 bucket name (${rules})`;
  }
  if (/^\d+\.\d+\.\d+\.\d+$/.test(name))
    return `"${name}" is an IP address, not an S3 bucket name (${rules})`;
  return undefined;
}

/**
 * The object store of the configuration: a LocalObjectStore on `<dataDir>/store`, or an S3ObjectStore with
 * its own S3Client (whoever opened it ends that with `store.close()` when `store instanceof S3ObjectStore`).
 */
export function openObjectStore(config: StoreConfig, dataDir: string): ObjectStore {
  if (config.kind === 'local') return new LocalObjectStore(join(dataDir, 'store'));
  return new S3ObjectStore(createS3Client(config), { bucket: config.bucket, prefix: config.prefix });
}

/** The S3 client of the configuration: its endpoint (e.g. moto), region, credentials and addressing style. */
export function createS3Client(config: S3StoreConfig): S3Client {
  return new S3Client({
    endpoint: config.endpoint,
    region: config.region,
    credentials: config.credentials,
    forcePathStyle: config.forcePathStyle,
  });
}

/** The webhook of notifications, or undefined when FLEETGATE_WEBHOOK_URL is unset; throws on a bad URL. */
export function loadWebhookConfig(env: NodeJS.ProcessEnv = process.env): WebhookConfig | undefined {
  const url = env.FLEETGATE_WEBHOOK_URL || undefined;
  if (url === undefined) return undefined;
  if (!isHttpUrl(url)) {
    // The value is not echoed: a webhook URL carries its own secret.
    throw new Error(
      'FLEETGATE_WEBHOOK_URL must be an http:// or https:// URL (e.g. https://hooks.slack.com/services/...); unset it to send no notifications',
    );
  }
  const parsed = new URL(url);
  if (parsed.protocol === 'http:' && !isLoopbackHost(parsed.hostname)) {
    // The host only: the path and query of a webhook URL carry its secret.
    throw new Error(
      `FLEETGATE_WEBHOOK_URL is http:// to ${parsed.host}: notifications and their signatures would cross the ` +
        'network unencrypted; use its https:// URL (http:// is accepted for a loopback host only: localhost, 127.0.0.0/8, [::1])',
    );
  }
  const secret = env.FLEETGATE_WEBHOOK_SECRET || undefined;
  return { url, ...(secret !== undefined ? { secret } : {}) };
}

export const GATEWAY_ALLOW_ENV = 'FLEETGATE_GATEWAY_ALLOW';

/**
 * FLEETGATE_GATEWAY_ALLOW: the gateways this worker may call. Unset or empty: loopback only. Throws,
 * naming the variable and the entry (never one with a user or password in it), on an entry that is not
 * "loopback", "none" or an http(s) origin.
 */
export function loadGatewayAllow(env: NodeJS.ProcessEnv = process.env): GatewayAllow {
  const value = (env[GATEWAY_ALLOW_ENV] ?? '').trim();
  if (value === '') return { loopback: true, origins: [] };
  let loopback = false;
  const origins: string[] = [];
  for (const [i, entry] of value
    .split(/[\s,]+/)
    .filter(Boolean)
    .entries()) {
    if (entry === 'loopback') loopback = true;
    else if (entry !== 'none') origins.push(gatewayOrigin(entry, i + 1));
  }
  return { loopback, origins };
}

function gatewayOrigin(entry: string, n: number): string {
  let url: URL | undefined;
  try {
    url = new URL(entry);
  } catch {
    url = undefined;
  }
  const plain =
    url !== undefined &&
    (url.protocol === 'http:' || url.protocol === 'https:') &&
    url.username === '' &&
    url.password === '' &&
    url.pathname === '/' &&
    url.search === '' &&
    url.hash === '';
  if (plain) return url!.origin;
  const shown = entry.includes('@') ? `entry ${n}` : `"${entry.slice(0, 100)}"`;
  throw new Error(
    `${GATEWAY_ALLOW_ENV}: ${shown} is not a gateway origin; list origins such as https://gw.internal:8443 ` +
      '(scheme, host and port only), "loopback" or "none", separated by commas',
  );
}

export const SHARED_QUEUE_ENV = 'FLEETGATE_SHARED_QUEUE';

/** FLEETGATE_SHARED_QUEUE: "1" skips the check; unset, "" or "0" keeps it; anything else is an error. */
export function allowSharedQueue(env: NodeJS.ProcessEnv = process.env): boolean {
  const value = env[SHARED_QUEUE_ENV] ?? '';
  if (value === '' || value === '0') return false;
  if (value === '1') return true;
  throw new Error(
    `${SHARED_QUEUE_ENV} must be "1" (skip the check that one data store serves the task queue) or "0" (got "${value}")`,
  );
}

/** Options for `Connection.connect` / `NativeConnection.connect`. */
export function connectionOptions(config: Config, address = config.address ?? 'localhost:7233') {
  return { address, tls: config.tls ? {} : undefined, apiKey: config.apiKey };
}

export interface TelemetryConfig {
  /**
   * "simulated": the in-process simulated fleet and labeler; "ingested": only what was sent;
   * "simulator": only what was sent, by the simulated fleet in a process of its own, asked per window.
   */
  kind: 'simulated' | 'ingested' | 'simulator';
  /** With "ingested" or "simulator": how long a batch waits for the watermarks, in ms. */
  watermarkWaitMs: number;
}

/** FLEETGATE_TELEMETRY and FLEETGATE_WATERMARK_WAIT; a bad value is an error naming the variable and the fix. */
export function loadTelemetryConfig(env: NodeJS.ProcessEnv = process.env): TelemetryConfig {
  const kind = env.FLEETGATE_TELEMETRY || 'simulated';
  if (kind !== 'simulated' && kind !== 'ingested' && kind !== 'simulator') {
    throw new Error(
      `FLEETGATE_TELEMETRY must be "simulated", "ingested" or "simulator" (got "${kind.slice(0, 40)}"): "ingested" reads what fleets send to fleetgate ingest, "simulator" what \`fleetgate fleet simulate\` sends`,
    );
  }
  const raw = env.FLEETGATE_WATERMARK_WAIT || '60s';
  const ms = parseDuration(raw);
  if (ms === undefined || !(ms >= 0) || ms > 3_600_000) {
    throw new Error(
      `FLEETGATE_WATERMARK_WAIT must be a duration from 0s to 1h, such as "60s" or "5m" (got "${raw}")`,
    );
  }
  return { kind, watermarkWaitMs: ms };
}

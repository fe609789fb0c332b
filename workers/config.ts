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
 *
 * Over-the-air delivery (see docs/operations.md, "Delivery through AWS IoT Jobs"):
 *   FLEETGATE_OTA           "simulated" (default): the simulated fleet in the DuckDB file;
 *                           "aws-iot": AWS IoT Jobs through @aws-sdk/client-iot
 *   FLEETGATE_AWS_ENDPOINT  endpoint URL of an IoT-compatible server (e.g. moto on loopback); unset: AWS
 *   AWS_REGION, AWS_DEFAULT_REGION
 *                           region (unset: the AWS SDK's own lookup, e.g. the profile's)
 *   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN
 *                           credentials; unset: the AWS SDK's default chain (profile, SSO, instance role)
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
 */
import { resolve } from 'node:path';
import type { IotJobsSettings } from '../activities/ota-iot';
import { TASK_QUEUE } from '../workflows/definitions';

/** Which over-the-air channel the workers deliver through. */
export type OtaConfig = { kind: 'simulated' } | AwsIotConfig;
export interface AwsIotConfig {
  kind: 'aws-iot';
  /** FLEETGATE_AWS_ENDPOINT; undefined: AWS itself. */
  endpoint?: string;
  region?: string;
  /** From the environment's AWS_* variables; undefined: the SDK's default chain. */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
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
  };
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
    region: env.AWS_REGION || env.AWS_DEFAULT_REGION || undefined,
    credentials:
      env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY
        ? {
            accessKeyId: env.AWS_ACCESS_KEY_ID,
            secretAccessKey: env.AWS_SECRET_ACCESS_KEY,
            sessionToken: env.AWS_SESSION_TOKEN || undefined,
          }
        : undefined,
    settings,
  };
}

/** Options for `Connection.connect` / `NativeConnection.connect`. */
export function connectionOptions(config: Config, address = config.address ?? 'localhost:7233') {
  return { address, tls: config.tls ? {} : undefined, apiKey: config.apiKey };
}

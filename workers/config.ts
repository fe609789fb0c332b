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
 */
import { resolve } from 'node:path';
import { TASK_QUEUE } from '../workflows/definitions';

export interface Config {
  address?: string;
  namespace: string;
  apiKey?: string;
  tls: boolean;
  dataDir: string;
  taskQueue: string;
  /** Directory that model pack and fleet manifest paths are relative to. */
  root: string;
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
  };
}

/** Options for `Connection.connect` / `NativeConnection.connect`. */
export function connectionOptions(config: Config, address = config.address ?? 'localhost:7233') {
  return { address, tls: config.tls ? {} : undefined, apiKey: config.apiKey };
}

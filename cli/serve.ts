/**
 * `fleetgate serve --config FILE [--port N]`: runs the inference gateway (serve/gateway.ts) until SIGINT
 * or SIGTERM, then drains it: new predicts are refused, queued work and shadows finish, the event log is
 * flushed. Traces go to an OTLP collector when the config's otlpEndpoint or OTEL_EXPORTER_OTLP_ENDPOINT
 * names one (serve/tracing.ts, loaded only then).
 *
 * The data directory, object store and pseudonym key are the worker's (workers/config.ts); it prints the
 * URL, never the admin token or a caller id.
 */
import { parseArgs } from 'node:util';
import { causeMessage } from './progress';
import { GatewayConfigError, loadGatewayConfig } from '../serve/config';
import { startGateway } from '../serve/gateway';
import type * as TracingModule from '../serve/tracing';

export const SERVE_HELP = `Usage: fleetgate serve --config FILE [--port N]

Serves registered models behind an HTTP API (POST /v1/predict) with a canary routing weight, shadow
mirroring and instant rollback per cohort, driven through its admin API (/admin/routes, /admin/events;
bearer token from the variable the config's adminTokenEnv names, default FLEETGATE_GATEWAY_TOKEN).
Models come from the object store of FLEETGATE_DATA_DIR / FLEETGATE_STORE, as the worker's. Runs until
Ctrl-C or SIGTERM, then drains: readyz answers 503, in-flight requests are answered, the event log is
flushed. See examples/gateway.yaml.
  --config FILE   gateway config, YAML or JSON (required)
  --port N        port to listen on, over the config's listen.port (0: any free port)
Traces: to the config's otlpEndpoint, else OTEL_EXPORTER_OTLP_ENDPOINT, when either is set.`;

/** The `serve` entry of the command table of cli/main.ts. */
export async function serveCommand(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        config: { type: 'string' },
        port: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: false,
      strict: true,
    });
  } catch (err) {
    console.error(`fleetgate: ${(err as Error).message.split(/\.\s|\n/)[0]} (see "fleetgate serve --help")`);
    return 2;
  }
  if (parsed.values.help) {
    console.log(SERVE_HELP);
    return 0;
  }
  const file = parsed.values.config;
  if (!file) {
    console.error('fleetgate: serve needs --config FILE (a gateway config, e.g. examples/gateway.yaml)');
    return 2;
  }
  const rawPort = parsed.values.port;
  if (rawPort !== undefined && (!/^\d+$/.test(rawPort) || Number(rawPort) > 65535)) {
    console.error(`fleetgate: --port must be a whole number from 0 to 65535 (got "${rawPort}")`);
    return 2;
  }
  let config;
  try {
    config = loadGatewayConfig(file);
  } catch (err) {
    if (err instanceof GatewayConfigError) {
      console.error(`fleetgate: ${err.message}`);
      return 2;
    }
    throw err;
  }
  if (rawPort !== undefined) config = { ...config, listen: { ...config.listen, port: Number(rawPort) } };

  let tracing: { shutdown(): Promise<void> } | undefined;
  const { endpointFromEnv, startTracing } = require('../serve/tracing') as typeof TracingModule;
  const endpoint = config.otlpEndpoint ?? endpointFromEnv(process.env);
  if (endpoint) {
    try {
      tracing = await startTracing({ serviceName: `fleetgate-gateway-${config.name}`, endpoint });
    } catch (err) {
      console.error(`fleetgate: cannot trace to ${endpoint}: ${causeMessage(err)}`);
      return 2;
    }
  }
  let gateway;
  try {
    gateway = await startGateway(config);
  } catch (err) {
    await tracing?.shutdown();
    console.error(
      `fleetgate: cannot start gateway "${config.name}" on ${config.listen.host}:${config.listen.port}: ${causeMessage(err)}`,
    );
    return 1;
  }
  console.log(`fleetgate: gateway "${config.name}" at ${gateway.url} (cohorts ${config.cohorts.join(', ')})`);
  console.log('Ctrl-C or SIGTERM drains and stops it.');
  const signal = await new Promise<string>((res) => {
    process.once('SIGINT', () => res('SIGINT'));
    process.once('SIGTERM', () => res('SIGTERM'));
  });
  console.error(`fleetgate: ${signal}: draining…`);
  await gateway.close();
  await tracing?.shutdown();
  console.log('stopped.');
  return 0;
}

/**
 * OpenTelemetry tracing of a fleetgate process: one NodeTracerProvider, registered globally, that
 * batches spans and sends them as OTLP/HTTP JSON to a collector. Code that makes spans (the gateway,
 * workers) uses `@opentelemetry/api` only; this module is the one place that builds the SDK.
 *
 * Nothing happens without an endpoint: the SDK and the exporter are loaded only inside `startTracing`,
 * so a process that never calls it (no `otlpEndpoint`, no `OTEL_EXPORTER_OTLP_*` variable) pays nothing
 * and sends nothing. Spans must never carry a raw caller or vehicle id: that is the span makers' duty,
 * and the exporter sends what it is given.
 */
import type { Tracer, TracerOptions, TracerProvider } from '@opentelemetry/api';
import type { Resource } from '@opentelemetry/resources';
import type { SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { ErrorType, fail } from '../errors';

/** The OTLP/HTTP path of traces, appended to an endpoint that does not already end with it. */
export const TRACES_PATH = '/v1/traces';

export interface TracingOptions {
  /** The `service.name` resource attribute: how the collector names this process. */
  serviceName: string;
  /** The collector's OTLP/HTTP base URL (e.g. `http://127.0.0.1:4318`) or its full traces URL. */
  endpoint: string;
}

export interface Tracing {
  /** The batching processor in front of the exporter: spans made elsewhere (a workflow sandbox) end here. */
  readonly spanProcessor: SpanProcessor;
  /** The resource (`service.name`) of every span this process sends. */
  readonly resource: Resource;
  /** Flushes the spans still batched, stops the exporter and unregisters the provider. Idempotent. */
  shutdown(): Promise<void>;
}

/**
 * The traces URL of an OTLP/HTTP endpoint: `endpoint` + `/v1/traces` unless it already ends with it.
 * Refuses anything but an http(s) URL, naming the value.
 */
export function tracesUrl(endpoint: string): string {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw fail(
      ErrorType.InvalidInput,
      `otlpEndpoint: ${JSON.stringify(endpoint)} is not a URL; give the collector's OTLP/HTTP base, e.g. http://127.0.0.1:4318`,
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw fail(
      ErrorType.InvalidInput,
      `otlpEndpoint: ${JSON.stringify(endpoint)} is not http(s); OTLP/HTTP needs e.g. http://127.0.0.1:4318`,
    );
  }
  const base = endpoint.replace(/\/+$/, '');
  return base.endsWith(TRACES_PATH) ? base : base + TRACES_PATH;
}

/**
 * The OTLP endpoint the standard environment variables name, or undefined when none is set:
 * `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (a full traces URL) before `OTEL_EXPORTER_OTLP_ENDPOINT` (a base).
 */
export function endpointFromEnv(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const traces = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim();
  if (traces) return traces;
  const base = env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim();
  return base ? base : undefined;
}

/** The SDK provider of the tracing running in this process, if any: where the global tracers forward. */
let active: { provider: TracerProvider; serviceName: string } | undefined;
/** True once the process's forwarding provider, propagator and context manager are registered. */
let registered = false;

/**
 * A tracer that forwards each span to the provider of the tracing running when the span starts, or to a
 * no-op tracer when none runs. The global provider hands these out, so a tracer obtained once (at module
 * load, as the gateway does) keeps working across a shutdown and a later start in the same process.
 */
function forwardingTracer(
  noop: TracerProvider,
  name: string,
  version?: string,
  options?: TracerOptions,
): Tracer {
  let cached: { provider: TracerProvider; tracer: Tracer } | undefined;
  const target = (): Tracer => {
    const provider = active?.provider ?? noop;
    if (cached?.provider !== provider)
      cached = { provider, tracer: provider.getTracer(name, version, options) };
    return cached.tracer;
  };
  return {
    startSpan: (spanName, spanOptions, ctx) => target().startSpan(spanName, spanOptions, ctx),
    startActiveSpan: ((...args: Parameters<Tracer['startActiveSpan']>) => {
      const tracer = target();
      return (tracer.startActiveSpan as (...a: unknown[]) => unknown).apply(tracer, args);
    }) as Tracer['startActiveSpan'],
  };
}

/**
 * Starts tracing to `endpoint`: spans of `trace.getTracer(...)` anywhere in the process are recorded
 * from now on, batched and sent. The first start in a process registers the global tracer provider (one
 * that forwards to the running tracing), the W3C trace context and baggage propagators and an
 * AsyncLocalStorage context manager; they stay registered, and record nothing once tracing is shut down.
 * One tracing runs at a time per process: a second start before the first's shutdown is refused.
 */
export async function startTracing(options: TracingOptions): Promise<Tracing> {
  if (!options.serviceName) {
    throw fail(
      ErrorType.InvalidInput,
      'serviceName: empty; give the name the collector should show for this process',
    );
  }
  const url = tracesUrl(options.endpoint);
  const [api, core, resources, node, exporterHttp] = await Promise.all([
    import('@opentelemetry/api'),
    import('@opentelemetry/core'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/sdk-trace-node'),
    import('@opentelemetry/exporter-trace-otlp-http'),
  ]);
  const resource = resources.Resource.default().merge(
    new resources.Resource({ 'service.name': options.serviceName }),
  );
  const spanProcessor = new node.BatchSpanProcessor(new exporterHttp.OTLPTraceExporter({ url }));
  const provider = new node.NodeTracerProvider({ resource, spanProcessors: [spanProcessor] });
  if (active) {
    throw fail(
      ErrorType.InvalidInput,
      `tracing already runs in this process as service ${JSON.stringify(active.serviceName)}; ` +
        `shut it down before starting tracing as ${JSON.stringify(options.serviceName)}`,
    );
  }
  active = { provider, serviceName: options.serviceName };
  if (!registered) {
    registered = true;
    const noop = new api.ProxyTracerProvider();
    // NodeTracerProvider.register sets the context manager and the propagator; the provider it registers
    // as the global one hands out forwarding tracers and records nothing itself.
    type SdkTracer = ReturnType<InstanceType<typeof node.NodeTracerProvider>['getTracer']>;
    class ForwardingProvider extends node.NodeTracerProvider {
      // Callers reach the registered provider through the API, and see the API's Tracer interface only.
      override getTracer(name: string, version?: string, tracerOptions?: TracerOptions): SdkTracer {
        return forwardingTracer(noop, name, version, tracerOptions) as unknown as SdkTracer;
      }
    }
    new ForwardingProvider().register({
      propagator: new core.CompositePropagator({
        propagators: [new core.W3CTraceContextPropagator(), new core.W3CBaggagePropagator()],
      }),
    });
  }
  let stopped: Promise<void> | undefined;
  return {
    spanProcessor,
    resource,
    shutdown() {
      stopped ??= (async () => {
        if (active?.provider === provider) active = undefined;
        // The provider's shutdown flushes its batch processor, then shuts the exporter down.
        await provider.shutdown();
      })();
      return stopped;
    },
  };
}

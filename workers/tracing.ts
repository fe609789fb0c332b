/**
 * OpenTelemetry tracing of a fleetgate worker and its clients, with `@temporalio/interceptors-opentelemetry`:
 * a client that starts or signals a rollout opens the trace, the workflow's run (in the sandbox, through
 * `workflows/tracing-interceptors.ts`) is its child, and every activity the run schedules is the run's
 * child, so one trace shows a rollout from the CLI call to the last activity.
 *
 * Nothing here runs unless a worker is given an OTLP endpoint: `workerTracingOptions` starts the
 * process's tracing (serve/tracing.ts) and returns the worker options to merge. The workflow side is
 * bundled, not passed to the worker: fleetgate's workers take a prebuilt `workflowBundle`, and a worker
 * with one ignores (and warns about) `interceptors.workflowModules`, so a traced worker's bundle is built
 * with `workflowInterceptorModules: WORKFLOW_TRACING_MODULES`. Without them in the bundle, activities are
 * still traced, each a trace of its own.
 */
import { join, resolve } from 'node:path';
import {
  makeWorkflowExporter,
  OpenTelemetryActivityInboundInterceptor,
  OpenTelemetryActivityOutboundInterceptor,
  OpenTelemetryWorkflowClientInterceptor,
  type OpenTelemetrySinks,
} from '@temporalio/interceptors-opentelemetry';
import type { WorkflowClientInterceptor } from '@temporalio/client';
import type { InjectedSinks, WorkerInterceptors } from '@temporalio/worker';
import { startTracing, type Tracing } from '../serve/tracing';

/** The workflow interceptor modules of a traced worker's bundle: `bundleWorkflowCode`'s `workflowInterceptorModules`. */
export const WORKFLOW_TRACING_MODULES: readonly string[] = [
  join(resolve(__dirname, '..'), 'workflows', 'tracing-interceptors.ts'),
];

/**
 * The part of `WorkerOptions` that traces a worker: merge it into the options of `Worker.create` (whose
 * workflow bundle includes WORKFLOW_TRACING_MODULES).
 */
export interface WorkerTracingOptions {
  interceptors: WorkerInterceptors;
  sinks: InjectedSinks<OpenTelemetrySinks>;
}

export interface WorkerTracing {
  options: WorkerTracingOptions;
  /** Flushes the spans still batched (the workflows' too) and stops tracing; after the worker has stopped. */
  shutdown(): Promise<void>;
}

/**
 * Starts tracing to `endpoint` (an OTLP/HTTP base URL) as `serviceName`, and returns the worker options
 * that trace workflows (spans handed out of the sandbox through the `exporter` sink) and activities.
 */
export async function workerTracingOptions(endpoint: string, serviceName: string): Promise<WorkerTracing> {
  const tracing = await startTracing({ serviceName, endpoint });
  return { options: tracingWorkerOptions(tracing), shutdown: () => tracing.shutdown() };
}

/**
 * The worker options over a tracing already running in this process (one that also runs a gateway, say):
 * one tracing per process, so its owner shuts it down.
 */
export function tracingWorkerOptions(tracing: Tracing): WorkerTracingOptions {
  return {
    interceptors: {
      activity: [
        (ctx) => ({
          inbound: new OpenTelemetryActivityInboundInterceptor(ctx),
          outbound: new OpenTelemetryActivityOutboundInterceptor(ctx),
        }),
      ],
    },
    sinks: { exporter: makeWorkflowExporter(tracing.spanProcessor, tracing.resource) },
  };
}

/**
 * Workflow client interceptors that open a span for each start, signal, update and query and pass its
 * context to the workflow in the headers: `new Client({ connection, interceptors: { workflow: ... } })`.
 * Spans are recorded by the process's tracer provider (started with `startTracing`); without one they
 * are no-ops.
 */
export function clientTracingInterceptors(): { workflow: WorkflowClientInterceptor[] } {
  return { workflow: [new OpenTelemetryWorkflowClientInterceptor()] };
}

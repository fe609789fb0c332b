/**
 * The workflow side of OpenTelemetry tracing, bundled as a workflow interceptor module (never imported
 * by the workflows themselves): each run, signal, update and query is a span, and each activity and
 * child workflow it schedules carries the trace context in its headers, so the worker's activity span
 * is the workflow's child. Spans leave the sandbox through the `exporter` sink that
 * `workers/tracing.ts` registers; this module does no I/O and reads no clock of its own, so replay is
 * unaffected (only headers change, and headers are not part of a workflow's determinism).
 */
import type { WorkflowInterceptors } from '@temporalio/workflow';
import {
  OpenTelemetryInboundInterceptor,
  OpenTelemetryInternalsInterceptor,
  OpenTelemetryOutboundInterceptor,
} from '@temporalio/interceptors-opentelemetry/lib/workflow';

export const interceptors = (): WorkflowInterceptors => ({
  inbound: [new OpenTelemetryInboundInterceptor()],
  outbound: [new OpenTelemetryOutboundInterceptor()],
  internals: [new OpenTelemetryInternalsInterceptor()],
});

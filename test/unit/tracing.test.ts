/**
 * serve/tracing.ts against a real OTLP/HTTP receiver on 127.0.0.1: spans made with `@opentelemetry/api`
 * arrive as JSON with the service name and their parent links; W3C trace context is injected; shutdown
 * flushes and is idempotent, and tracing can start again (tracers obtained before any start keep working);
 * one tracing runs at a time; endpoints are normalised and bad ones refused naming the value; the
 * environment variables are read in their order of precedence; and without tracing the API records nothing.
 */
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { context, propagation, trace } from '@opentelemetry/api';
import { endpointFromEnv, startTracing, tracesUrl } from '../../serve/tracing';
import { startOtlpReceiver, type OtlpReceiver } from '../otlp-receiver';

/** Obtained at module load, before any tracing starts, as a module that makes spans does. */
const early = trace.getTracer('tracing-test-early');

let receiver: OtlpReceiver;
before(async () => {
  receiver = await startOtlpReceiver();
});
after(async () => {
  await receiver.close();
});

test('spans reach the collector with the service name and parent links; shutdown flushes and is idempotent', async () => {
  const tracing = await startTracing({ serviceName: 'fleetgate-test', endpoint: receiver.endpoint });
  const tracer = trace.getTracer('tracing-test');
  const carrier: Record<string, string> = {};
  tracer.startActiveSpan('outer', (outer) => {
    outer.setAttribute('fleetgate.cohort', 'eu-north');
    tracer.startActiveSpan('inner', (inner) => inner.end());
    propagation.inject(context.active(), carrier);
    outer.end();
  });
  // Batched: nothing need have been sent yet; shutdown must flush it.
  await Promise.all([tracing.shutdown(), tracing.shutdown()]);
  await tracing.shutdown();

  const outer = receiver.spans.find((s) => s.name === 'outer');
  const inner = receiver.spans.find((s) => s.name === 'inner');
  assert.ok(outer && inner, `received: ${receiver.spans.map((s) => s.name).join(', ')}`);
  assert.equal(outer.service, 'fleetgate-test');
  assert.equal(outer.scope, 'tracing-test');
  assert.equal(outer.attributes['fleetgate.cohort'], 'eu-north');
  assert.equal(inner.parentSpanId, outer.spanId);
  assert.equal(inner.traceId, outer.traceId);
  assert.match(carrier.traceparent ?? '', new RegExp(`^00-${outer.traceId}-${outer.spanId}-01$`));

  // Unregistered: spans made now are not recorded.
  assert.equal(trace.getTracer('tracing-test').startSpan('after-shutdown').isRecording(), false);
});

test('tracing starts again after a shutdown, with a full traces URL as endpoint', async () => {
  const tracing = await startTracing({ serviceName: 'second', endpoint: `${receiver.endpoint}/v1/traces/` });
  trace.getTracer('tracing-test').startSpan('again').end();
  await tracing.shutdown();
  const again = receiver.spans.find((s) => s.name === 'again');
  assert.equal(again?.service, 'second');
});

test('a tracer obtained before tracing started records under each later start', async () => {
  for (const service of ['first-run', 'second-run']) {
    const tracing = await startTracing({ serviceName: service, endpoint: receiver.endpoint });
    early.startActiveSpan(`early-${service}`, (span) => span.end());
    await tracing.shutdown();
    assert.equal(receiver.spans.find((s) => s.name === `early-${service}`)?.service, service);
  }
  assert.equal(early.startSpan('early-after').isRecording(), false);
});

test('one tracing at a time: a second start before the shutdown is refused', async () => {
  const tracing = await startTracing({ serviceName: 'one', endpoint: receiver.endpoint });
  try {
    await assert.rejects(
      startTracing({ serviceName: 'two', endpoint: receiver.endpoint }),
      /tracing already runs in this process as service "one"; shut it down before starting tracing as "two"/,
    );
  } finally {
    await tracing.shutdown();
  }
});

test('without startTracing the API records nothing', () => {
  const span = trace.getTracer('tracing-test').startSpan('untraced');
  assert.equal(span.isRecording(), false);
  span.end();
});

test('tracesUrl appends /v1/traces once and refuses what is not an http(s) URL', () => {
  assert.equal(tracesUrl('http://127.0.0.1:4318'), 'http://127.0.0.1:4318/v1/traces');
  assert.equal(tracesUrl('http://127.0.0.1:4318/'), 'http://127.0.0.1:4318/v1/traces');
  assert.equal(tracesUrl('https://otel.example/v1/traces'), 'https://otel.example/v1/traces');
  assert.equal(tracesUrl('http://otel.example/prefix'), 'http://otel.example/prefix/v1/traces');
  assert.throws(() => tracesUrl('127.0.0.1:4318'), /otlpEndpoint: "127\.0\.0\.1:4318" is not (a URL|http)/);
  assert.throws(() => tracesUrl('grpc://otel:4317'), /otlpEndpoint: "grpc:\/\/otel:4317" is not http\(s\)/);
});

test('startTracing refuses an empty service name before loading anything', async () => {
  await assert.rejects(startTracing({ serviceName: '', endpoint: receiver.endpoint }), /serviceName: empty/);
});

test('endpointFromEnv prefers the traces endpoint and ignores blanks', () => {
  assert.equal(endpointFromEnv({}), undefined);
  assert.equal(endpointFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: '  ' }), undefined);
  assert.equal(endpointFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://a:4318' }), 'http://a:4318');
  assert.equal(
    endpointFromEnv({
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://a:4318',
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://b:4318/v1/traces',
    }),
    'http://b:4318/v1/traces',
  );
});

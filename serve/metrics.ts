/**
 * The gateway's Prometheus metrics (`GET /metrics`), on a registry of its own (never prom-client's
 * global one, so two gateways in one process, as in tests, do not share series), with prom-client's
 * default process metrics. Labels are cohorts, arms, status codes and reasons: never a caller.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class GatewayMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<'cohort' | 'arm' | 'code'>;
  readonly duration: Histogram<'cohort' | 'arm'>;
  readonly errors: Counter<'cohort' | 'arm' | 'reason'>;
  readonly queueDepth: Gauge;
  readonly rejected: Counter;
  readonly refused: Counter<'code' | 'reason'>;
  readonly nonfinite: Counter<'cohort' | 'arm' | 'path'>;
  readonly eventCommit: Histogram;
  readonly shadowRequests: Counter<'cohort'>;
  readonly shadowDropped: Counter<'cohort'>;
  readonly batchSize: Histogram;
  readonly routeWeight: Gauge<'cohort'>;
  readonly routeMirror: Gauge<'cohort'>;

  constructor(queueRows: () => number) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.requests = new Counter({
      name: 'fleetgate_gateway_requests_total',
      help: 'Predict requests answered, by cohort, arm and HTTP status code',
      labelNames: ['cohort', 'arm', 'code'],
      registers,
    });
    this.duration = new Histogram({
      name: 'fleetgate_gateway_request_duration_seconds',
      help: 'Time from the parsed predict request to its response (queue, batching, inference)',
      labelNames: ['cohort', 'arm'],
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2],
      registers,
    });
    this.errors = new Counter({
      name: 'fleetgate_gateway_errors_total',
      help: 'Predict requests that failed, by cohort, arm and reason',
      labelNames: ['cohort', 'arm', 'reason'],
      registers,
    });
    this.queueDepth = new Gauge({
      name: 'fleetgate_gateway_queue_depth',
      help: 'Rows queued or running on the served path',
      registers,
      collect() {
        this.set(queueRows());
      },
    });
    this.rejected = new Counter({
      name: 'fleetgate_gateway_rejected_total',
      help: 'Predict requests refused with 429 because the queue was full',
      registers,
    });
    this.refused = new Counter({
      name: 'fleetgate_gateway_refused_total',
      help:
        'Predict requests refused (4xx, 429 queue full, 503 draining), by status code and reason; they have ' +
        'no event: a summary line every 10 s is all the log says of them',
      labelNames: ['code', 'reason'],
      registers,
    });
    this.nonfinite = new Counter({
      name: 'fleetgate_gateway_nonfinite_outputs_total',
      help:
        'Model runs whose outputs held NaN or Infinity, answered 500 (path "served") or logged as a failed ' +
        'shadow (path "shadow"), never as a class; by cohort and arm',
      labelNames: ['cohort', 'arm', 'path'],
      registers,
    });
    this.eventCommit = new Histogram({
      name: 'fleetgate_gateway_event_commit_seconds',
      help: "Time a response waits for its event's write to the OS (group commit) before it is sent",
      buckets: [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1],
      registers,
    });
    this.shadowRequests = new Counter({
      name: 'fleetgate_gateway_shadow_requests_total',
      help: "Production-served requests mirrored to the cohort's candidate",
      labelNames: ['cohort'],
      registers,
    });
    this.shadowDropped = new Counter({
      name: 'fleetgate_gateway_shadow_dropped_total',
      help: 'Mirrored requests dropped because the shadow queue was full',
      labelNames: ['cohort'],
      registers,
    });
    this.batchSize = new Histogram({
      name: 'fleetgate_gateway_batch_size',
      help: 'Rows per model run',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
      registers,
    });
    this.routeWeight = new Gauge({
      name: 'fleetgate_gateway_route_weight',
      help: "Percent of a cohort's callers served by its candidate",
      labelNames: ['cohort'],
      registers,
    });
    this.routeMirror = new Gauge({
      name: 'fleetgate_gateway_route_mirror',
      help: "Share of a cohort's production-served requests mirrored to its candidate",
      labelNames: ['cohort'],
      registers,
    });
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

/**
 * The simulated fleet as a producer of events, like any fleet: for a window of a rollout it draws the
 * events its vehicles would have (frames under each cohort's conditions, the ONNX models run on them
 * with onnxruntime, latency on each SKU), keeps what each vehicle's upload filter keeps (sim/edge.ts),
 * and sends inference events and upload reports of the contract `fleetgate/v1` (events/contract.ts)
 * through the one writer (events/writer.ts), with a watermark at the window's end. Its labeler keeps
 * each sent event's true class and the delay of its label privately (`sim_labeler`),
 * and answers a label request by sending a label record whose `at` is when the label comes back.
 *
 * The activities read these records as they read a real fleet's: nothing here is called by them but
 * through the `TelemetryFeed` the composition root hands them. In process (`fleetgate simulate`, the
 * workflow tests) it runs when a batch asks for its window, so time-skipping needs no clock of its own.
 * The window's production (`SimulatedProducer`) takes the units and their models from a `UnitSource`
 * and sends through a `RecordSink`: in process, the OTA channel with the pseudonym key and the writer;
 * in a process of its own (`fleetgate fleet simulate`, sim/simulator-process.ts), the window request a
 * worker published and the ingestion endpoint over HTTP.
 *
 * Deterministic: the same manifest seed, rollout and window give the same records on every machine,
 * and a window sent twice changes nothing (the writer counts the second as duplicates). It must never
 * send a raw vehicle id (units are the pseudonyms the OTA channel knows) nor a record the contract
 * refuses.
 */
import type { DuckDBConnection } from '@duckdb/node-api';
import { parseDuration } from '../policies/duration';
import type { CohortSpec, FleetManifest, Sku } from '../policies/schema';
import { CRITICAL_CLASS } from '../policies/model-contract';
import { gaussian, makeRng, poisson } from '../policies/rng';
import { shadowTargets } from '../fleet/assignment';
import type {
  LabelRequestOut,
  ModelRunner,
  OtaChannel,
  TelemetryFeed,
  TelemetryWindow,
} from '../activities/deps';
import { exclusive, rows, transaction } from '../activities/db';
import { ArmColumns, conditionsAt, eventTag, EventColumns, infer, slowdownOf } from '../activities/fleet';
import { labelerAnswer, PRIORITY_CONFIDENCE } from '../activities/labels';
import { SCHEMA_VERSION, type Inference, type Label, type Upload } from '../events/contract';
import type { EventWriter } from '../events/writer';
import { edgeFilter, windowBudget } from './edge';
import { generateFramesWith, type Frames } from './frames';

const HOUR_MS = 3_600_000;
/** Records per batch handed to the writer. */
const CHUNK = 50_000;
/** Who the simulated labeler says it is, in its label records. */
export const SIMULATED_LABELER = 'simulated-labeler';

/**
 * Where a window's units come from: what a real vehicle knows by itself (which model it runs, whether it
 * runs the candidate in shadow), and the simulated one must be told.
 */
export interface UnitSource {
  /** The units (pseudonyms) of a fleet's cohort and the digest of the model each runs now (same order). */
  inventory(fleet: string, cohort: string): Promise<{ vehicles: string[]; digests: string[] }>;
  /** Shadow: the units of `vehicles` (the cohort's inventory) that run the candidate beside production. */
  shadowUnits(w: TelemetryWindow, cohort: string, vehicles: readonly string[]): Promise<string[]>;
}

/** Where the records go: the writer in process, the ingestion endpoint from a process of its own. */
export type RecordSink = Pick<EventWriter, 'ingestTyped'>;

/** What a window or a label request sent. */
export interface Sent {
  events: number;
  uploads: number;
  labels: number;
}

export interface SimulatedProducerDeps {
  /** The producer's own tables (windows sent, the labeler's private queue) are kept on this connection. */
  conn: DuckDBConnection;
  runner: ModelRunner;
  sink: RecordSink;
}

export interface SimulatedFeedDeps {
  /** The fleet database: the vehicles (through `ota`) and the labeler's private queue. */
  conn: DuckDBConnection;
  ota: OtaChannel;
  runner: ModelRunner;
  /** The one writer of ingested records, on the same database. */
  writer: Pick<EventWriter, 'ingestTyped'>;
  /** The pseudonym key: which vehicles run a shadow is keyed by it (fleet/assignment.ts). */
  key: Buffer;
}

/** The events of one cohort in a window, drawn over the vehicles given. */
interface Simulation {
  cohort: string;
  n: number;
  /** Per event: index into the vehicles the events were drawn over. */
  vehicle: Uint32Array;
  ts: Float64Array;
  frames: Frames;
  /** Continues the window's seeded stream: latency noise, label delays. */
  rng: () => number;
}

/**
 * The simulator's own tables in the fleet database, which no activity reads: the windows it has sent,
 * and its labeler's private queue (`sim_labeler`: each sent event's true class, the labeler's answer,
 * wrong at the manifest's `labels.noise`, and when that answer comes back if asked at the event's time),
 * keyed `${fleet}:${eventId}` as the analysis tables key events; with the staging of its writes and of
 * the requests it is asked.
 */
const SIM_SCHEMA = `
CREATE TABLE IF NOT EXISTS sim_windows (window_id VARCHAR PRIMARY KEY);
CREATE TABLE IF NOT EXISTS sim_labeler (
  event_id VARCHAR NOT NULL,
  truth UTINYINT NOT NULL,
  answer UTINYINT NOT NULL,
  available_at_ms BIGINT NOT NULL
);
CREATE TEMP TABLE IF NOT EXISTS sim_labeler_stage AS SELECT * FROM sim_labeler LIMIT 0;
CREATE TEMP TABLE IF NOT EXISTS sim_requested (event_id VARCHAR NOT NULL, requested_at_ms BIGINT NOT NULL);
`;

/** The simulated fleet and labeler, as a `TelemetryFeed` in process: the OTA channel's units, the writer. */
export class SimulatedFleetFeed implements TelemetryFeed {
  private constructor(
    private readonly producer: SimulatedProducer,
    private readonly source: UnitSource,
  ) {}

  /** The feed of a fleet database (its tables created where missing). */
  static async create(deps: SimulatedFeedDeps): Promise<SimulatedFleetFeed> {
    const { conn, ota, key } = deps;
    const producer = await SimulatedProducer.create({ conn, runner: deps.runner, sink: deps.writer });
    return new SimulatedFleetFeed(producer, {
      inventory: (fleet, cohort) => exclusive(conn, () => ota.inventory(fleet, cohort)),
      shadowUnits: (w, _cohort, vehicles) =>
        Promise.resolve(shadowTargets(vehicles, key, w.rolloutId, w.share ?? 1)),
    });
  }

  async produce(w: TelemetryWindow): Promise<void> {
    await this.producer.produce(w, this.source);
  }

  async requestLabels(fleet: string, requests: readonly LabelRequestOut[]): Promise<void> {
    await this.producer.requestLabels(fleet, requests);
  }
}

/**
 * The simulated fleet's production of a window and its labeler, whatever tells it the units and wherever
 * its records go.
 */
export class SimulatedProducer {
  private constructor(private readonly deps: SimulatedProducerDeps) {}

  /** The producer on a database (its tables created where missing). */
  static async create(deps: SimulatedProducerDeps): Promise<SimulatedProducer> {
    await exclusive(deps.conn, () => deps.conn.run(SIM_SCHEMA));
    return new SimulatedProducer(deps);
  }

  /**
   * Sends the window's inference events (each cohort's last batch with the watermark at the window's
   * end) and upload reports; a window already sent sends nothing, unless `again` (the same records:
   * for a landing zone whose files must be named again after a stop). Returns what it sent.
   */
  async produce(w: TelemetryWindow, source: UnitSource, opts: { again?: boolean } = {}): Promise<Sent> {
    const { conn } = this.deps;
    const sent: Sent = { events: 0, uploads: 0, labels: 0 };
    const windowId = `${w.rolloutId}:${w.phase}:${w.fromMs}-${w.toMs}`;
    const [done] = await exclusive(conn, () =>
      rows(conn, `SELECT 1 FROM sim_windows WHERE window_id = ?`, [windowId]),
    );
    if (done && !opts.again) return sent;
    const tag = eventTag(windowId);
    for (const cohort of w.cohorts) {
      const cohortIndex = w.manifest.cohorts.indexOf(cohort);
      const fleet = await source.inventory(w.manifest.name, cohort.name);
      if (fleet.vehicles.length === 0) continue;
      const made =
        w.phase === 'shadow'
          ? await this.shadow(w, windowId, cohort, fleet, source)
          : await this.canary(w, windowId, cohort, fleet);
      const ids = made.sent.map((i) => `${tag}.${cohortIndex}.${i}`);
      await this.keepTruth(w, made.sim, made.sent, ids);
      const records = made.records(ids);
      for (let start = 0; start < records.length || start === 0; start += CHUNK) {
        const chunk = records.slice(start, start + CHUNK);
        const last = start + CHUNK >= records.length;
        if (chunk.length === 0) break;
        await this.deps.sink.ingestTyped(
          'inference',
          w.manifest.name,
          chunk,
          last ? { watermarkMs: w.toMs } : {},
        );
      }
      sent.events += records.length;
      if (made.uploads.length > 0) {
        await this.deps.sink.ingestTyped('upload', w.manifest.name, made.uploads);
        sent.uploads += made.uploads.length;
      }
    }
    await exclusive(conn, () =>
      rows(conn, `INSERT INTO sim_windows (window_id) VALUES (?) ON CONFLICT DO NOTHING`, [windowId]),
    );
    return sent;
  }

  /**
   * Answers the requests it knows: each label is the labeler's answer and comes back at the event's
   * time plus its delay, or at the request when asked later than that. Returns how many it sent.
   */
  async requestLabels(fleet: string, requests: readonly LabelRequestOut[]): Promise<number> {
    if (requests.length === 0) return 0;
    const { conn } = this.deps;
    const prefix = `${fleet}:`;
    const answers = await transaction(conn, async () => {
      await conn.run(`DELETE FROM sim_requested`);
      const a = await conn.createAppender('sim_requested');
      try {
        for (const r of requests) {
          a.appendVarchar(prefix + r.eventId);
          a.appendBigInt(BigInt(Math.round(r.requestedAtMs)));
          a.endRow();
        }
      } finally {
        a.closeSync();
      }
      return rows(
        conn,
        `SELECT q.event_id, t.answer, greatest(t.available_at_ms, q.requested_at_ms) AS at
         FROM sim_requested q JOIN sim_labeler t ON t.event_id = q.event_id
         ORDER BY q.event_id`,
      );
    });
    const labels: Label[] = answers.map((r) => ({
      schema: SCHEMA_VERSION,
      eventId: String(r.event_id).slice(prefix.length),
      label: Number(r.answer),
      labeler: SIMULATED_LABELER,
      at: Number(r.at),
    }));
    for (let start = 0; start < labels.length; start += CHUNK) {
      await this.deps.sink.ingestTyped('label', fleet, labels.slice(start, start + CHUNK));
    }
    return labels.length;
  }

  /** The labeler's private queue: each sent event's truth, its answer, when the answer would come back. */
  private async keepTruth(
    w: TelemetryWindow,
    sim: Simulation,
    sent: readonly number[],
    ids: readonly string[],
  ): Promise<void> {
    const { conn } = this.deps;
    const delayMs = labelDelayMs(w.manifest, sim.cohort);
    const noise = w.manifest.labels.noise ?? 0;
    const windowId = `${w.rolloutId}:${w.phase}:${w.fromMs}-${w.toMs}`;
    // The labeler's wrong answers on a stream of their own: the truth stays as it is.
    const noiseRng = makeRng(`${w.manifest.seed}|${windowId}|${sim.cohort}|labeler`);
    const prefix = `${w.manifest.name}:`;
    await transaction(conn, async () => {
      await conn.run(`DELETE FROM sim_labeler_stage`);
      const a = await conn.createAppender('sim_labeler_stage');
      try {
        sent.forEach((i, k) => {
          const truth = sim.frames.labels[i]!;
          a.appendVarchar(prefix + ids[k]!);
          a.appendUTinyInt(truth);
          a.appendUTinyInt(labelerAnswer(truth, noise, noiseRng));
          a.appendBigInt(BigInt(sim.ts[i]! + Math.round(delayMs * (0.5 + sim.rng()))));
          a.endRow();
        });
      } finally {
        a.closeSync();
      }
      // No key on the queue (an index costs per row): a window is kept once (`sim_windows`), and one
      // sent again after a crash adds identical rows, whose identical labels the writer counts once.
      await conn.run(`INSERT INTO sim_labeler SELECT * FROM sim_labeler_stage`);
    });
  }

  /**
   * A shadow window: on a `share` of the cohort the candidate runs beside the vehicle's production
   * model on the same frames; the vehicle acts on production's output. With `edge`, each vehicle
   * uploads what its filter keeps, each upload with its probability, and reports its counters.
   */
  private async shadow(
    w: TelemetryWindow,
    windowId: string,
    cohort: CohortSpec,
    fleet: Inventory,
    source: UnitSource,
  ): Promise<Made> {
    const { runner } = this.deps;
    const shadow = await source.shadowUnits(w, cohort.name, fleet.vehicles);
    const digestOf = new Map(fleet.vehicles.map((v, i) => [v, fleet.digests[i]!]));
    const sim = simulate(windowId, w.manifest, cohort, shadow, w.fromMs, w.toMs, w.startMs);
    const out = new EventColumns(sim.n);
    const sku = skuOf(w.manifest, cohort);
    const prodDigests = Array.from(sim.vehicle, (v) => digestOf.get(shadow[v]!)!);
    for (const [digest, idx] of groupBy(prodDigests)) {
      await infer(runner, digest, sim.frames, idx, sku, out.production, slowdownOf(sku, w.versions, digest));
    }
    await infer(
      runner,
      w.candidateDigest,
      sim.frames,
      null,
      sku,
      out.candidate,
      slowdownOf(sku, w.versions, w.candidateDigest),
    );
    for (let i = 0; i < sim.n; i++) {
      out.candidate.lat[i] = out.candidate.ms[i]! * sku.speedFactor * Math.exp(0.2 * gaussian(sim.rng));
      out.production.lat[i] = out.production.ms[i]! * sku.speedFactor * Math.exp(0.2 * gaussian(sim.rng));
    }
    const exposure = 1 / w.manifest.eventsPerVehicleHour;
    const truth = sim.frames.labels;
    const record = (i: number, id: string, tier: string, p: number): Inference => ({
      schema: SCHEMA_VERSION,
      eventId: id,
      fleet: w.manifest.name,
      cohort: cohort.name,
      unit: shadow[sim.vehicle[i]!]!,
      rolloutId: w.rolloutId,
      phase: 'shadow',
      arm: 'production',
      modelDigest: prodDigests[i]!,
      shadow: {
        digest: w.candidateDigest,
        prediction: out.candidate.pred[i]!,
        confidence: out.candidate.conf[i]!,
        latencyMs: out.candidate.lat[i]!,
        safety: missed(out.candidate.pred[i]!, truth[i]!),
      },
      prediction: out.production.pred[i]!,
      confidence: out.production.conf[i]!,
      latencyMs: out.production.lat[i]!,
      safety: missed(out.production.pred[i]!, truth[i]!),
      exposureHours: exposure,
      upload: { tier, inclusionProbability: p },
      at: sim.ts[i]!,
    });
    if (!w.edge) {
      const sent = Array.from({ length: sim.n }, (_, i) => i);
      return { sim, sent, records: (ids) => sent.map((i, k) => record(i, ids[k]!, 'all', 1)), uploads: [] };
    }
    // The vehicles' upload filter, on its own seeded stream: what is uploaded, and each upload's weight.
    const perDay = w.edge.perVehiclePerDay;
    const lowConfidence = w.edge.lowConfidence ?? PRIORITY_CONFIDENCE;
    const edge = edgeFilter(
      {
        n: sim.n,
        vehicle: sim.vehicle,
        vehicles: shadow.length,
        predCandidate: out.candidate.pred,
        predProduction: out.production.pred,
        confCandidate: out.candidate.conf,
        confProduction: out.production.conf,
      },
      {
        sample: w.edge.sample,
        lowConfidence,
        budget: perDay === undefined ? null : windowBudget(perDay, w.toMs - w.fromMs),
      },
      makeRng(`${w.manifest.seed}|${windowId}|${cohort.name}|edge`),
    );
    const sent: number[] = [];
    for (let i = 0; i < sim.n; i++) if (edge.keep[i]) sent.push(i);
    // Each vehicle's report of the window: exact counters over every event it ran.
    const per = new Map<
      number,
      { evaluated: number; priority: number; disagreements: number; uploaded: number }
    >();
    for (let i = 0; i < sim.n; i++) {
      const v = sim.vehicle[i]!;
      let c = per.get(v);
      if (!c) per.set(v, (c = { evaluated: 0, priority: 0, disagreements: 0, uploaded: 0 }));
      c.evaluated++;
      c.priority += edge.priority[i]!;
      if (out.candidate.pred[i] !== out.production.pred[i]) c.disagreements++;
      c.uploaded += edge.keep[i]!;
    }
    const uploads = [...per.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([v, c]): Upload => ({
        schema: SCHEMA_VERSION,
        fleet: w.manifest.name,
        cohort: cohort.name,
        unit: shadow[v]!,
        rolloutId: w.rolloutId,
        fromMs: w.fromMs,
        at: w.toMs,
        ...c,
        overBudget: edge.overBudgetVehicles[v] === 1,
      }));
    return {
      sim,
      sent,
      records: (ids) =>
        sent.map((i, k) => record(i, ids[k]!, edge.priority[i] ? 'priority' : 'sample', 1 / edge.weight[i]!)),
      uploads,
    };
  }

  /**
   * A canary window: every vehicle of the cohort runs the model in its active slot (what was really
   * installed); an event is in the 'candidate' arm when that is the candidate. Every event is sent.
   */
  private async canary(
    w: TelemetryWindow,
    windowId: string,
    cohort: CohortSpec,
    fleet: Inventory,
  ): Promise<Made> {
    const { runner } = this.deps;
    const sim = simulate(windowId, w.manifest, cohort, fleet.vehicles, w.fromMs, w.toMs, w.startMs);
    const out = new ArmColumns(sim.n);
    const sku = skuOf(w.manifest, cohort);
    const acting = Array.from(sim.vehicle, (v) => fleet.digests[v]!);
    for (const [digest, idx] of groupBy(acting)) {
      await infer(runner, digest, sim.frames, idx, sku, out, slowdownOf(sku, w.versions, digest));
    }
    for (let i = 0; i < sim.n; i++)
      out.lat[i] = out.ms[i]! * sku.speedFactor * Math.exp(0.2 * gaussian(sim.rng));
    const exposure = 1 / w.manifest.eventsPerVehicleHour;
    const sent = Array.from({ length: sim.n }, (_, i) => i);
    return {
      sim,
      sent,
      records: (ids) =>
        sent.map((i, k) => ({
          schema: SCHEMA_VERSION,
          eventId: ids[k]!,
          fleet: w.manifest.name,
          cohort: cohort.name,
          unit: fleet.vehicles[sim.vehicle[i]!]!,
          rolloutId: w.rolloutId,
          phase: 'canary',
          arm: acting[i] === w.candidateDigest ? 'candidate' : 'production',
          modelDigest: acting[i]!,
          prediction: out.pred[i]!,
          confidence: out.conf[i]!,
          latencyMs: out.lat[i]!,
          safety: missed(out.pred[i]!, sim.frames.labels[i]!),
          exposureHours: exposure,
          upload: { tier: 'all', inclusionProbability: 1 },
          at: sim.ts[i]!,
        })),
      uploads: [],
    };
  }
}

type Inventory = Awaited<ReturnType<UnitSource['inventory']>>;

/** What a cohort's window made: the sent events (indices into `sim`), their records, upload reports. */
interface Made {
  sim: Simulation;
  sent: number[];
  records: (ids: readonly string[]) => Inference[];
  uploads: Upload[];
}

/** Whether a model's prediction missed a critical-class frame: a safety event, known on the vehicle. */
function missed(pred: number, truth: number): boolean {
  return truth === CRITICAL_CLASS && pred !== CRITICAL_CLASS;
}

function skuOf(manifest: FleetManifest, cohort: CohortSpec): Sku {
  const sku = manifest.skus.find((s) => s.name === cohort.sku);
  if (!sku) throw new Error(`cohort ${cohort.name} names unknown SKU ${cohort.sku}`);
  return sku;
}

/** Positions of each distinct value, in first-seen order. */
function groupBy(values: readonly string[]): Map<string, number[]> {
  const groups = new Map<string, number[]>();
  values.forEach((v, i) => {
    let g = groups.get(v);
    if (!g) groups.set(v, (g = []));
    g.push(i);
  });
  return groups;
}

/** The labeler's mean delay for a cohort's events. */
function labelDelayMs(manifest: FleetManifest, cohort: string): number {
  return parseDuration(manifest.labels.delayByCohort?.[cohort] ?? manifest.labels.delay) ?? 0;
}

/**
 * The events of one cohort in [fromMs, toMs): their count ~ Poisson(vehicles x eventsPerVehicleHour x
 * hours), each from a uniformly drawn vehicle at a uniform time, with frames from the window's seed drawn
 * under the cohort's conditions at the event's time (`conditionsAt`, with drift counted from startMs).
 */
export function simulate(
  windowId: string,
  manifest: FleetManifest,
  cohort: CohortSpec,
  vehicles: readonly string[],
  fromMs: number,
  toMs: number,
  startMs: number,
): Simulation {
  const rng = makeRng(`${manifest.seed}|${windowId}|${cohort.name}|events`);
  const span = toMs - fromMs;
  const n = poisson(rng, (vehicles.length * manifest.eventsPerVehicleHour * span) / HOUR_MS);
  const vehicle = new Uint32Array(n);
  const ts = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    vehicle[i] = Math.floor(rng() * vehicles.length);
    ts[i] = fromMs + Math.floor(rng() * span);
  }
  const at = conditionsAt(manifest, cohort, startMs);
  const frames = generateFramesWith(makeRng(`${windowId}|${cohort.name}`), n, (i) => at(ts[i]!));
  return { cohort: cohort.name, n, vehicle, ts, frames, rng };
}

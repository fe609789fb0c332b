/**
 * Activities of the simulated fleet: describe it, deliver a model over the air to a wave, revert a wave,
 * promote a cohort, and log the shadow and canary events its vehicles produce.
 *
 * Every side effect is keyed so a retried activity changes nothing the second time: an OTA job by
 * `${rolloutId}-w${wave}` or `${rolloutId}-promote-${cohort}`, an event batch by rollout, phase and time
 * window. A job or batch is written in one transaction together with the row that marks it done, so a
 * crash leaves nothing half written. Vehicles are only ever known by their pseudonyms; these activities
 * must never log, store or return a raw vehicle id, and never return rows per event.
 */
import type { DuckDBAppender, DuckDBConnection } from '@duckdb/node-api';
import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import { ErrorType, fail } from '../errors';
import { parseDuration } from '../policies/duration';
import type { CohortSpec, FleetManifest, Sku } from '../policies/schema';
import { FEATURES, gaussian, generateFrames, makeRng, poisson } from '../sim/frames';
import type { Frames } from '../sim/frames';
import { loadFleetManifest, shadowTargets, simVehicles, waveTargets } from '../sim/fleet';
import type {
  BatchResult,
  DeliverInput,
  DeliveryResult,
  FleetInput,
  FleetSummary,
  PromoteInput,
  RevertInput,
  ShadowInput,
  TelemetryInput,
} from './contracts';
import { columns, exclusive, exec, num, rows, transaction } from './db';
import type { ModelRunner, RunnerSettings } from './deps';
import { PRIORITY_CONFIDENCE } from './labels';

export interface FleetActivityDeps {
  conn: DuckDBConnection;
  runner: ModelRunner;
  /** The pseudonym key (see workers/secrets.ts). */
  key: Buffer;
  /** Directory that manifest paths are relative to. */
  root: string;
}

/** Rows per inference call: bounds the memory of one run. */
const INFERENCE_CHUNK = 32_768;
const HOUR_MS = 3_600_000;
/** Sentinel of an unset prediction in a Uint8Array (stored as NULL). */
const NO_PRED = 255;

/** The digest of a vehicle's active slot, as SQL. */
const ACTIVE_DIGEST = `CASE active WHEN 'a' THEN slot_a ELSE slot_b END`;

/**
 * Creates the simulated vehicles of a fleet, every one with the cohort's production digest in slot A,
 * active. Idempotent: a fleet that already has vehicles is left as it is.
 */
export async function initSimFleet(
  deps: Pick<FleetActivityDeps, 'conn' | 'key' | 'root'>,
  manifestPath: string,
  productionByCohort: Record<string, string>,
): Promise<{ fleet: string; vehicles: number; created: boolean }> {
  const manifest = loadFleetManifest(resolve(deps.root, manifestPath));
  const missing = manifest.cohorts.filter((c) => !productionByCohort[c.name]).map((c) => c.name);
  if (missing.length > 0) {
    throw fail(
      ErrorType.InvalidInput,
      `no production digest for cohort(s) ${missing.join(', ')} of fleet ${manifest.name}`,
    );
  }
  const { conn, key } = deps;
  return transaction(conn, async () => {
    const existing = await countVehicles(conn, manifest.name);
    if (existing > 0) return { fleet: manifest.name, vehicles: existing, created: false };
    const appender = await conn.createAppender('vehicles');
    let total = 0;
    try {
      for (const { cohort, pseudonyms } of simVehicles(manifest, key)) {
        const digest = productionByCohort[cohort.name]!;
        for (const vehicle of pseudonyms) {
          appender.appendVarchar(manifest.name);
          appender.appendVarchar(cohort.name);
          appender.appendVarchar(cohort.sku);
          appender.appendVarchar(vehicle);
          appender.appendVarchar(digest);
          appender.appendNull();
          appender.appendVarchar('a');
          appender.endRow();
        }
        total += pseudonyms.length;
      }
    } finally {
      appender.closeSync();
    }
    return { fleet: manifest.name, vehicles: total, created: true };
  });
}

export function createFleetActivities(deps: FleetActivityDeps) {
  const { conn, runner, key, root } = deps;
  const manifestOf = (input: FleetInput) => loadFleetManifest(resolve(root, input.manifest));

  async function requireFleet(manifest: FleetManifest): Promise<void> {
    const n = await countVehicles(conn, manifest.name);
    if (n === 0) {
      throw fail(
        ErrorType.NotFound,
        `fleet ${manifest.name} has no vehicles in the fleet database; initialise the simulated fleet first ` +
          `(initSimFleet with the production digest of every cohort)`,
      );
    }
  }

  /** Targets of one job per cohort: appends them, switches their slots, logs one op per cohort. */
  async function applyJob(
    job: {
      jobId: string;
      rolloutId: string;
      fleet: string;
      kind: 'deliver' | 'promote';
      wave: number | null;
    },
    digest: string,
    targets: Map<string, { vehicles: string[]; prevActive: string[] }>,
    result: unknown,
  ): Promise<void> {
    const appender = await conn.createAppender('ota_targets');
    try {
      for (const [cohort, t] of targets) {
        for (let i = 0; i < t.vehicles.length; i++) {
          appender.appendVarchar(job.jobId);
          appender.appendVarchar(t.vehicles[i]!);
          appender.appendVarchar(cohort);
          appender.appendBoolean(false);
          appender.appendVarchar(t.prevActive[i]!);
          appender.endRow();
        }
      }
    } finally {
      appender.closeSync();
    }
    // Over the air: the new model goes into the inactive slot, which then becomes the active one.
    await exec(
      conn,
      `UPDATE vehicles SET
         slot_a = CASE WHEN t.prev_active = 'b' THEN ? ELSE vehicles.slot_a END,
         slot_b = CASE WHEN t.prev_active = 'a' THEN ? ELSE vehicles.slot_b END,
         active = CASE WHEN t.prev_active = 'a' THEN 'b' ELSE 'a' END
       FROM ota_targets t
       WHERE t.job_id = ? AND vehicles.fleet = ? AND vehicles.vehicle = t.vehicle`,
      [digest, digest, job.jobId, job.fleet],
    );
    for (const [cohort, t] of targets) {
      if (t.vehicles.length > 0) {
        await exec(conn, `INSERT INTO ota_ops (job_id, op, cohort, vehicles) VALUES (?, ?, ?, ?)`, [
          job.jobId,
          job.kind,
          cohort,
          t.vehicles.length,
        ]);
      }
    }
    await exec(
      conn,
      `INSERT INTO ota_jobs (job_id, rollout_id, fleet, kind, wave, digest, result) VALUES (?, ?, ?, ?, ?, ?, ?)`,
      [job.jobId, job.rolloutId, job.fleet, job.kind, job.wave, digest, JSON.stringify(result)],
    );
  }

  /** The recorded result of a job, or undefined; a job recorded with another digest is a conflict. */
  async function recordedJob(jobId: string, digest: string): Promise<unknown> {
    const [job] = await rows(conn, `SELECT digest, result FROM ota_jobs WHERE job_id = ?`, [jobId]);
    if (!job) return undefined;
    if (job.digest !== digest) {
      throw fail(
        ErrorType.ImmutableConflict,
        `OTA job ${jobId} already delivered ${String(job.digest).slice(0, 12)}, not ${digest.slice(0, 12)}`,
      );
    }
    return JSON.parse(String(job.result));
  }

  return {
    /** The fleet's name, SKUs and cohorts, from its manifest; NotFound until the fleet has vehicles. */
    async describeFleet(input: FleetInput): Promise<FleetSummary> {
      const manifest = manifestOf(input);
      await exclusive(conn, () => requireFleet(manifest));
      return { name: manifest.name, skus: manifest.skus, cohorts: manifest.cohorts };
    },

    /**
     * Delivers `digest` to the wave's share of each cohort (sticky, monotone, stratified; vehicles
     * already running it are skipped) as OTA job `${rolloutId}-w${wave}`. A retry returns the recorded
     * result and changes nothing.
     */
    async deliverWave(input: DeliverInput): Promise<DeliveryResult> {
      const manifest = manifestOf(input);
      const cohorts = cohortsOf(manifest, input.cohorts);
      const jobId = `${input.rolloutId}-w${input.wave}`;
      return transaction(conn, async () => {
        const recorded = await recordedJob(jobId, input.digest);
        if (recorded) return recorded as DeliveryResult;
        await requireFleet(manifest);
        const targets = new Map<string, { vehicles: string[]; prevActive: string[] }>();
        for (const cohort of cohorts) {
          const fleet = await cohortVehicles(conn, manifest.name, cohort.name);
          const chosen = new Set(waveTargets(fleet.vehicles, key, input.rolloutId, input.percent));
          const t = { vehicles: [] as string[], prevActive: [] as string[] };
          fleet.vehicles.forEach((v, i) => {
            if (chosen.has(v) && fleet.digests[i] !== input.digest) {
              t.vehicles.push(v);
              t.prevActive.push(fleet.active[i]!);
            }
          });
          targets.set(cohort.name, t);
        }
        const running = await runningDigest(conn, manifest.name, input.digest);
        const vehicles: Record<string, number> = {};
        for (const cohort of cohorts) {
          vehicles[cohort.name] =
            (running.get(cohort.name) ?? 0) + (targets.get(cohort.name)?.vehicles.length ?? 0);
        }
        const result: DeliveryResult = { jobId, vehicles };
        await applyJob(
          { jobId, rolloutId: input.rolloutId, fleet: manifest.name, kind: 'deliver', wave: input.wave },
          input.digest,
          targets,
          result,
        );
        return result;
      });
    },

    /**
     * Switches the vehicles of a wave's job, in the given cohorts, back to the slot they ran before it
     * and marks them reverted; logs one 'revert' op per cohort that had any. A second call reverts 0.
     * A vehicle whose active slot no longer holds the job's model is only marked.
     */
    async revertWave(input: RevertInput): Promise<{ reverted: number }> {
      const manifest = manifestOf(input);
      const cohorts = cohortsOf(manifest, input.cohorts);
      const jobId = `${input.rolloutId}-w${input.wave}`;
      return transaction(conn, async () => {
        const [job] = await rows(conn, `SELECT fleet, digest FROM ota_jobs WHERE job_id = ?`, [jobId]);
        if (!job) return { reverted: 0 };
        let reverted = 0;
        for (const cohort of cohorts) {
          const [pending] = await rows(
            conn,
            `SELECT count(*) AS n FROM ota_targets WHERE job_id = ? AND cohort = ? AND NOT reverted`,
            [jobId, cohort.name],
          );
          const n = num(pending?.n);
          if (n === 0) continue;
          await exec(
            conn,
            `UPDATE vehicles SET active = t.prev_active
             FROM ota_targets t
             WHERE t.job_id = ? AND t.cohort = ? AND NOT t.reverted
               AND vehicles.fleet = ? AND vehicles.vehicle = t.vehicle
               AND (CASE vehicles.active WHEN 'a' THEN vehicles.slot_a ELSE vehicles.slot_b END) = ?`,
            [jobId, cohort.name, String(job.fleet), String(job.digest)],
          );
          await exec(
            conn,
            `UPDATE ota_targets SET reverted = true WHERE job_id = ? AND cohort = ? AND NOT reverted`,
            [jobId, cohort.name],
          );
          await exec(conn, `INSERT INTO ota_ops (job_id, op, cohort, vehicles) VALUES (?, 'revert', ?, ?)`, [
            jobId,
            cohort.name,
            n,
          ]);
          reverted += n;
        }
        return { reverted };
      });
    },

    /**
     * Delivers `digest` to every vehicle of the cohort not yet running it (job
     * `${rolloutId}-promote-${cohort}`). Returns how many vehicles of the cohort run it afterwards; a
     * retry returns the recorded count and changes nothing.
     */
    async promoteCohort(input: PromoteInput): Promise<{ vehicles: number }> {
      const manifest = manifestOf(input);
      const [cohort] = cohortsOf(manifest, [input.cohort]);
      const jobId = `${input.rolloutId}-promote-${input.cohort}`;
      return transaction(conn, async () => {
        const recorded = await recordedJob(jobId, input.digest);
        if (recorded) return recorded as { vehicles: number };
        await requireFleet(manifest);
        const fleet = await cohortVehicles(conn, manifest.name, cohort!.name);
        const t = { vehicles: [] as string[], prevActive: [] as string[] };
        fleet.vehicles.forEach((v, i) => {
          if (fleet.digests[i] !== input.digest) {
            t.vehicles.push(v);
            t.prevActive.push(fleet.active[i]!);
          }
        });
        const result = { vehicles: fleet.vehicles.length };
        await applyJob(
          { jobId, rolloutId: input.rolloutId, fleet: manifest.name, kind: 'promote', wave: null },
          input.digest,
          new Map([[cohort!.name, t]]),
          result,
        );
        return result;
      });
    },

    /**
     * One shadow batch: on a `share` of each cohort the candidate runs beside the vehicle's production
     * model on the same frames; both outputs are logged and nothing the candidate says is acted on.
     * Disagreements and low-confidence events are sent for labeling ('priority'), and a `labels.rate`
     * share of the rest ('sample'). Keyed by `${rolloutId}:shadow:${fromMs}-${toMs}`.
     */
    async runShadow(input: ShadowInput): Promise<BatchResult> {
      if (!(input.share > 0 && input.share <= 1)) {
        throw fail(ErrorType.InvalidInput, `shadow share must be in (0, 1] (got ${input.share})`);
      }
      const batchId = `${input.rolloutId}:shadow:${input.fromMs}-${input.toMs}`;
      return logBatch(batchId, 'shadow', input, async (manifest, cohort, cohortIndex, fleet) => {
        const shadow = shadowTargets(fleet.vehicles, key, input.rolloutId, input.share);
        const digestOf = new Map(fleet.vehicles.map((v, i) => [v, fleet.digests[i]!]));
        const sim = simulate(batchId, manifest, cohort, shadow, input.fromMs, input.toMs);
        const out = new EventColumns(sim.n);
        const sku = skuOf(manifest, cohort);
        const prodDigests = Array.from(sim.vehicle, (v) => digestOf.get(shadow[v]!)!);
        for (const [digest, idx] of groupBy(prodDigests)) {
          await infer(runner, digest, sim.frames, idx, sku, out.production);
        }
        await infer(runner, input.candidateDigest, sim.frames, null, sku, out.candidate);
        const rate = manifest.labels.rate;
        const priority = new Uint8Array(sim.n);
        for (let i = 0; i < sim.n; i++) {
          out.candidate.lat[i] = out.candidate.ms[i]! * sku.speedFactor * Math.exp(0.2 * gaussian(sim.rng));
          out.production.lat[i] = out.production.ms[i]! * sku.speedFactor * Math.exp(0.2 * gaussian(sim.rng));
          const sampled = sim.rng() < rate;
          const low = Math.min(out.candidate.conf[i]!, out.production.conf[i]!) < PRIORITY_CONFIDENCE;
          const disagree = out.candidate.pred[i] !== out.production.pred[i];
          priority[i] = low || disagree ? 1 : sampled ? 2 : 0;
        }
        return { sim, out, arm: () => 'shadow', vehicles: shadow, cohortIndex, request: priority };
      });
    },

    /**
     * One canary batch: every vehicle of each cohort runs the model in its active slot; an event is in
     * the 'candidate' arm when that is `candidateDigest`, else in 'production', and only the acting
     * model's columns are filled. A seeded `labels.rate` share is sent for labeling ('sample'). Keyed by
     * `${rolloutId}:canary:${fromMs}-${toMs}`.
     */
    async collectTelemetry(input: TelemetryInput): Promise<BatchResult> {
      const batchId = `${input.rolloutId}:canary:${input.fromMs}-${input.toMs}`;
      return logBatch(batchId, 'canary', input, async (manifest, cohort, cohortIndex, fleet) => {
        const sim = simulate(batchId, manifest, cohort, fleet.vehicles, input.fromMs, input.toMs);
        const out = new EventColumns(sim.n);
        const sku = skuOf(manifest, cohort);
        const acting = Array.from(sim.vehicle, (v) => fleet.digests[v]!);
        const isCandidate = new Uint8Array(sim.n);
        for (const [digest, idx] of groupBy(acting)) {
          if (digest === input.candidateDigest) {
            for (const i of idx) isCandidate[i] = 1;
            await infer(runner, digest, sim.frames, idx, sku, out.candidate);
          } else {
            await infer(runner, digest, sim.frames, idx, sku, out.production);
          }
        }
        const rate = manifest.labels.rate;
        const request = new Uint8Array(sim.n);
        for (let i = 0; i < sim.n; i++) {
          const noise = Math.exp(0.2 * gaussian(sim.rng));
          if (isCandidate[i]) out.candidate.lat[i] = out.candidate.ms[i]! * sku.speedFactor * noise;
          else out.production.lat[i] = out.production.ms[i]! * sku.speedFactor * noise;
          request[i] = sim.rng() < rate ? 2 : 0;
        }
        return {
          sim,
          out,
          arm: (i: number) => (isCandidate[i] ? 'candidate' : 'production'),
          vehicles: fleet.vehicles,
          cohortIndex,
          request,
        };
      });
    },
  };

  /**
   * Writes one batch of events: skipped when the batch exists; otherwise every cohort is simulated,
   * then events, ground truth, label requests and the `batches` row are written in one transaction.
   */
  async function logBatch(
    batchId: string,
    phase: 'shadow' | 'canary',
    input: FleetInput & { cohorts: string[]; fromMs: number; toMs: number },
    simulateCohort: (
      manifest: FleetManifest,
      cohort: CohortSpec,
      cohortIndex: number,
      fleet: CohortFleet,
    ) => Promise<SimulatedCohort>,
  ): Promise<BatchResult> {
    if (!(Number.isFinite(input.fromMs) && Number.isFinite(input.toMs) && input.toMs > input.fromMs)) {
      throw fail(
        ErrorType.InvalidInput,
        `batch window must have toMs > fromMs (got ${input.fromMs}, ${input.toMs})`,
      );
    }
    const existing = () => rows(conn, `SELECT events FROM batches WHERE batch_id = ?`, [batchId]);
    const [before] = await exclusive(conn, existing);
    if (before) return { batchId, events: num(before.events), written: false };
    const manifest = manifestOf(input);
    const cohorts = cohortsOf(manifest, input.cohorts);
    const delayMs = parseDuration(manifest.labels.delay) ?? 0;
    const simulated: SimulatedCohort[] = [];
    for (const cohort of cohorts) {
      const fleet = await exclusive(conn, async () => {
        await requireFleet(manifest);
        return cohortVehicles(conn, manifest.name, cohort.name);
      });
      if (fleet.vehicles.length === 0) {
        throw fail(ErrorType.NotFound, `cohort ${cohort.name} of fleet ${manifest.name} has no vehicles`);
      }
      simulated.push(await simulateCohort(manifest, cohort, manifest.cohorts.indexOf(cohort), fleet));
    }
    return transaction(conn, async () => {
      const [again] = await existing();
      if (again) return { batchId, events: num(again.events), written: false };
      // Event ids are short (the index on them costs per byte): a tag of the batch id, cohort, index.
      const tag = createHash('sha256').update(batchId).digest('hex').slice(0, 16);
      let total = 0;
      await withAppender(conn, 'events', (a) => {
        for (const { sim, out, arm, vehicles, cohortIndex } of simulated) {
          for (let i = 0; i < sim.n; i++) {
            a.appendVarchar(`${tag}.${cohortIndex}.${i}`);
            a.appendVarchar(input.rolloutId);
            a.appendVarchar(batchId);
            a.appendVarchar(phase);
            a.appendVarchar(sim.cohort);
            a.appendVarchar(vehicles[sim.vehicle[i]!]!);
            a.appendBigInt(BigInt(sim.ts[i]!));
            a.appendVarchar(arm(i));
            appendPred(a, out.candidate.pred[i]!);
            appendPred(a, out.production.pred[i]!);
            appendNumber(a, out.candidate.conf[i]!, 'float');
            appendNumber(a, out.production.conf[i]!, 'float');
            appendNumber(a, out.candidate.lat[i]!, 'double');
            appendNumber(a, out.production.lat[i]!, 'double');
            a.endRow();
          }
          total += sim.n;
        }
      });
      // Ground truth and when the labeler would return it: mean delay labels.delay, uniform in ±50%.
      const availableAt = simulated.map(({ sim }) => {
        const at = new Float64Array(sim.n);
        for (let i = 0; i < sim.n; i++) at[i] = sim.ts[i]! + Math.round(delayMs * (0.5 + sim.rng()));
        return at;
      });
      await withAppender(conn, 'sim_truth', (a) => {
        simulated.forEach(({ sim, cohortIndex }, c) => {
          for (let i = 0; i < sim.n; i++) {
            a.appendVarchar(`${tag}.${cohortIndex}.${i}`);
            a.appendUTinyInt(sim.frames.labels[i]!);
            a.appendBigInt(BigInt(availableAt[c]![i]!));
            a.endRow();
          }
        });
      });
      await withAppender(conn, 'label_requests', (a) => {
        for (const { sim, cohortIndex, request } of simulated) {
          for (let i = 0; i < sim.n; i++) {
            if (request[i] === 0) continue;
            a.appendVarchar(`${tag}.${cohortIndex}.${i}`);
            a.appendVarchar(input.rolloutId);
            a.appendBigInt(BigInt(sim.ts[i]!));
            a.appendVarchar(request[i] === 1 ? 'priority' : 'sample');
            a.endRow();
          }
        }
      });
      await exec(conn, `INSERT INTO batches (batch_id, rollout_id, phase, events) VALUES (?, ?, ?, ?)`, [
        batchId,
        input.rolloutId,
        phase,
        total,
      ]);
      return { batchId, events: total, written: true };
    });
  }
}

export type FleetActivities = ReturnType<typeof createFleetActivities>;

interface CohortFleet {
  vehicles: string[];
  /** Digest of each vehicle's active slot. */
  digests: string[];
  active: string[];
}

interface Simulation {
  cohort: string;
  n: number;
  /** Per event: index into the vehicles the events were drawn over. */
  vehicle: Uint32Array;
  ts: Float64Array;
  frames: Frames;
  /** Continues the batch's seeded stream: latency noise, label sampling, label delays. */
  rng: () => number;
}

interface SimulatedCohort {
  sim: Simulation;
  out: EventColumns;
  arm: (i: number) => 'candidate' | 'production' | 'shadow';
  vehicles: readonly string[];
  cohortIndex: number;
  /** Per event: 0 not requested, 1 'priority', 2 'sample'. */
  request: Uint8Array;
}

/** Per-event outputs of one model; NaN and NO_PRED stand for NULL. */
class ArmColumns {
  readonly pred: Uint8Array;
  readonly conf: Float32Array;
  /** Measured milliseconds per frame of the inference batch the event was in. */
  readonly ms: Float64Array;
  /** Simulated latency on the vehicle's SKU. */
  readonly lat: Float64Array;
  constructor(n: number) {
    this.pred = new Uint8Array(n).fill(NO_PRED);
    this.conf = new Float32Array(n).fill(NaN);
    this.ms = new Float64Array(n).fill(NaN);
    this.lat = new Float64Array(n).fill(NaN);
  }
}

class EventColumns {
  readonly candidate: ArmColumns;
  readonly production: ArmColumns;
  constructor(n: number) {
    this.candidate = new ArmColumns(n);
    this.production = new ArmColumns(n);
  }
}

/**
 * The events of one cohort in [fromMs, toMs): their count ~ Poisson(vehicles x eventsPerVehicleHour x
 * hours), each from a uniformly drawn vehicle at a uniform time, with frames from the batch's seed.
 */
function simulate(
  batchId: string,
  manifest: FleetManifest,
  cohort: CohortSpec,
  vehicles: readonly string[],
  fromMs: number,
  toMs: number,
): Simulation {
  const rng = makeRng(`${manifest.seed}|${batchId}|${cohort.name}|events`);
  const span = toMs - fromMs;
  const n = poisson(rng, (vehicles.length * manifest.eventsPerVehicleHour * span) / HOUR_MS);
  const vehicle = new Uint32Array(n);
  const ts = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    vehicle[i] = Math.floor(rng() * vehicles.length);
    ts[i] = fromMs + Math.floor(rng() * span);
  }
  const frames = generateFrames(makeRng(`${batchId}|${cohort.name}`), n, cohort.nightShare);
  return { cohort: cohort.name, n, vehicle, ts, frames, rng };
}

/**
 * Runs one model over the selected frames (all when `idx` is null), in chunks, and writes prediction
 * (argmax), confidence (max probability) and the model's per-frame cost into the outputs at the events'
 * positions. The logged latency is simulated from this cost (see `frameCost`), times the SKU's speed
 * factor, times lognormal noise exp(0.2 z): it does not depend on how many events share a batch.
 */
async function infer(
  runner: ModelRunner,
  digest: string,
  frames: Frames,
  idx: number[] | null,
  sku: Sku,
  out: ArmColumns,
): Promise<void> {
  const total = idx ? idx.length : frames.count;
  const settings: RunnerSettings = {
    intraOpThreads: sku.intraOpThreads,
    graphOptimization: sku.graphOptimization,
  };
  const cost = await frameCost(runner, digest, settings);
  for (let start = 0; start < total; start += INFERENCE_CHUNK) {
    const rowsInChunk = Math.min(INFERENCE_CHUNK, total - start);
    let features: Float32Array;
    if (idx) {
      features = new Float32Array(rowsInChunk * FEATURES);
      for (let r = 0; r < rowsInChunk; r++) {
        const src = idx[start + r]! * FEATURES;
        features.set(frames.features.subarray(src, src + FEATURES), r * FEATURES);
      }
    } else {
      features = frames.features.slice(start * FEATURES, (start + rowsInChunk) * FEATURES);
    }
    const { probs } = await runner.run(digest, features, rowsInChunk, settings);
    for (let r = 0; r < rowsInChunk; r++) {
      const e = idx ? idx[start + r]! : start + r;
      const p0 = probs[2 * r]!;
      const p1 = probs[2 * r + 1]!;
      out.pred[e] = p1 > p0 ? 1 : 0;
      out.conf[e] = Math.max(p0, p1);
      out.ms[e] = cost;
    }
  }
}

const frameCosts = new WeakMap<ModelRunner, Map<string, Promise<number>>>();

/**
 * Milliseconds one frame takes on this host with the given settings: the 10th percentile of 128
 * single-frame runs after a warm-up (a low quantile, because a busy host only ever adds time), measured
 * once per model and settings and then cached. A vehicle runs one frame at a time, so this, not a
 * batch's time per row, is what its latency is made of.
 */
function frameCost(runner: ModelRunner, digest: string, settings: RunnerSettings): Promise<number> {
  let byKey = frameCosts.get(runner);
  if (!byKey) frameCosts.set(runner, (byKey = new Map()));
  const key = `${digest}|${settings.intraOpThreads ?? 1}|${settings.graphOptimization ?? 'all'}`;
  let cost = byKey.get(key);
  if (!cost) {
    cost = (async () => {
      const golden = generateFrames(makeRng('frame-cost'), 144, 0.5);
      const times: number[] = [];
      for (let i = 0; i < golden.count; i++) {
        const one = golden.features.slice(i * FEATURES, (i + 1) * FEATURES);
        const { elapsedMs } = await runner.run(digest, one, 1, settings);
        if (i >= 16) times.push(elapsedMs);
      }
      times.sort((a, b) => a - b);
      return times[Math.floor(times.length / 10)]!;
    })();
    cost.catch(() => byKey.delete(key));
    byKey.set(key, cost);
  }
  return cost;
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

function cohortsOf(manifest: FleetManifest, requested: readonly string[]): CohortSpec[] {
  const names = [...new Set(requested)];
  const unknown = names.filter((n) => !manifest.cohorts.some((c) => c.name === n));
  if (unknown.length > 0) {
    throw fail(
      ErrorType.InvalidInput,
      `unknown cohort(s) ${unknown.join(', ')} in fleet ${manifest.name}; declared: ${manifest.cohorts.map((c) => c.name).join(', ')}`,
    );
  }
  return names.map((n) => manifest.cohorts.find((c) => c.name === n)!);
}

function skuOf(manifest: FleetManifest, cohort: CohortSpec): Sku {
  const sku = manifest.skus.find((s) => s.name === cohort.sku);
  if (!sku) throw fail(ErrorType.InvalidInput, `cohort ${cohort.name} names unknown SKU ${cohort.sku}`);
  return sku;
}

async function countVehicles(conn: DuckDBConnection, fleet: string): Promise<number> {
  const [row] = await rows(conn, `SELECT count(*) AS n FROM vehicles WHERE fleet = ?`, [fleet]);
  return num(row?.n);
}

/** The cohort's vehicles with their active slot and its digest. Takes no lock. */
async function cohortVehicles(conn: DuckDBConnection, fleet: string, cohort: string): Promise<CohortFleet> {
  const where = `FROM vehicles WHERE fleet = ? AND cohort = ?`;
  const [distinct = []] = await columns(conn, `SELECT DISTINCT ${ACTIVE_DIGEST} ${where} ORDER BY 1`, [
    fleet,
    cohort,
  ]);
  const known = distinct as string[];
  if (known.length === 0) return { vehicles: [], digests: [], active: [] };
  // Digests travel as small codes: a cohort runs a handful of models, and a digest is 64 characters.
  const codes = known.map((_, i) => `WHEN ? THEN ${i}`).join(' ');
  const [vehicles = [], slotB = [], code = []] = await columns(
    conn,
    `SELECT vehicle, active = 'b', CASE ${ACTIVE_DIGEST} ${codes} END ${where}`,
    [...known, fleet, cohort],
  );
  return {
    vehicles: vehicles as string[],
    digests: (code as number[]).map((c) => known[c]!),
    active: (slotB as boolean[]).map((b) => (b ? 'b' : 'a')),
  };
}

/** Vehicles per cohort whose active slot holds `digest`. Takes no lock. */
async function runningDigest(
  conn: DuckDBConnection,
  fleet: string,
  digest: string,
): Promise<Map<string, number>> {
  const found = await rows(
    conn,
    `SELECT cohort, count(*) AS n FROM vehicles WHERE fleet = ? AND ${ACTIVE_DIGEST} = ? GROUP BY cohort`,
    [fleet, digest],
  );
  return new Map(found.map((r) => [String(r.cohort), num(r.n)]));
}

async function withAppender(
  conn: DuckDBConnection,
  table: string,
  fill: (appender: DuckDBAppender) => void,
): Promise<void> {
  const appender = await conn.createAppender(table);
  try {
    fill(appender);
  } finally {
    appender.closeSync();
  }
}

function appendPred(a: DuckDBAppender, value: number): void {
  if (value === NO_PRED) a.appendNull();
  else a.appendUTinyInt(value);
}

function appendNumber(a: DuckDBAppender, value: number, type: 'float' | 'double'): void {
  if (Number.isNaN(value)) a.appendNull();
  else if (type === 'float') a.appendFloat(value);
  else a.appendDouble(value);
}

/**
 * Activities of the fleet: describe it, deliver a model to a wave through the over-the-air channel
 * (`OtaChannel`), revert a wave, promote a cohort, and read the shadow and canary events the fleet sent
 * for a window (activities/telemetry.ts), asking the in-process producer for them first when there is
 * one (`TelemetryFeed`: the simulated fleet). They never make an event up.
 *
 * Every side effect is keyed so a retried activity changes nothing the second time: an OTA job by
 * `${rolloutId}-w${wave}` or `${rolloutId}-promote-${cohort}`, an event batch by rollout, phase and time
 * window. A job or batch is written in one transaction together with the row that marks it done, so a
 * crash leaves nothing half written. Only the channel changes what a vehicle runs; these activities never
 * write a vehicle's slots. Vehicles are only ever known by their pseudonyms; these activities must never
 * log, store or return a raw vehicle id, and never return rows per event.
 *
 * What a wave's install did on each target is the channel's to say (`OtaChannel.installOutcomes`: the
 * simulated fleet draws it from the manifest's install model), and only installed vehicles get the model.
 * `infer` and `conditionsAt` are shared with the simulated fleet (sim/producer.ts, sim/features.ts);
 * `writeBatch` with the services' activities (activities/service.ts), which log what their callers sent.
 */
import type { DuckDBAppender, DuckDBConnection } from '@duckdb/node-api';
import { createHash } from 'node:crypto';
import { ErrorType, fail } from '../errors';
import { parseDuration } from '../policies/duration';
import type { CohortSpec, FleetManifest, Sku } from '../policies/schema';
import { CRITICAL_CLASS, FEATURES } from '../policies/model-contract';
import { makeRng } from '../policies/rng';
import type { FrameConditions, Frames } from '../policies/frames';
import type { EdgeCounters } from './contracts';
import { loadFleetManifest } from '../fleet/manifest';
import { pseudonymSql } from '../fleet/pseudonym';
import { targetCount, waveShare, waveTargets } from '../fleet/assignment';
import { recordBatchStats } from './analysis';
import { confinedPath } from './confine';
import type {
  BatchResult,
  DeliverInput,
  DeliveryResult,
  EndShadowInput,
  FleetInput,
  FleetSummary,
  LabelingInput,
  PromoteInput,
  RevertInput,
  ShadowInput,
  TelemetryInput,
} from './contracts';
import { countVehicles, exclusive, exec, num, rows, transaction } from './db';
import { progress, throwIfCancelled } from './heartbeat';
import {
  INSTALL,
  installsAlways,
  type ModelRunner,
  type ObjectStore,
  type OtaChannel,
  type RunnerSettings,
  type TelemetryFeed,
  type TelemetryWindow,
} from './deps';
import { awaitWatermarks, readWindow, type WindowRead } from './telemetry';
import { logBatchRead } from './batch-log';
import { sha256 } from './store';
import { blobKey } from '../workers/model-runner';
import { budgetRequests, LABEL_TIERS, labelerAnswer, NO_TIER, PRIORITY_CONFIDENCE } from './labels';

export interface FleetActivityDeps {
  /** The fleet database: event logs and labels; the units of work the channel's calls run in. */
  conn: DuckDBConnection;
  /**
   * Over-the-air delivery. Its calls are made inside `exclusive` or `transaction` on `conn`, so a
   * channel that uses the fleet database (the simulated one) must use this same connection.
   */
  ota: OtaChannel;
  runner: ModelRunner;
  /** The pseudonym key (see workers/secrets.ts). */
  key: Buffer;
  /** Directory that manifest paths are relative to; a manifest outside it is refused (activities/confine.ts). */
  root: string;
  /**
   * The object store holding the model blobs. When given, every delivery hashes the exact bytes it
   * sends again and refuses bytes that differ from the digest it was asked to deliver (DigestMismatch).
   */
  store?: ObjectStore;
  /**
   * Where each batch read is logged (activities/batch-log.ts), so that a data worker on a database
   * rebuilt from the store reads it again; absent: not logged (the simulated fleet's records are made
   * again from their seed, and its database is no cache).
   */
  batchLog?: ObjectStore;
  /**
   * An in-process producer of the fleet's records (the simulated fleet): asked for each window a batch
   * reads. Absent for a real fleet, whose units send through ingestion.
   */
  feed?: TelemetryFeed;
  /** Without a feed: how long a batch waits for every cohort's watermark (default 60 s). */
  watermarkWaitMs?: number;
}

/** How long a batch waits for the fleet's watermarks by default. */
export const DEFAULT_WATERMARK_WAIT_MS = 60_000;

/**
 * Re-checks the artifact a job is about to send: the blob stored under `digest` must exist and hash to
 * it. Runs before any vehicle is targeted, so a blob damaged or swapped after registration never ships.
 */
export async function checkArtifact(
  store: ObjectStore | undefined,
  digest: string,
  jobId: string,
): Promise<void> {
  if (!store) return;
  const bytes = await store.get(blobKey(digest));
  if (!bytes) {
    throw fail(
      ErrorType.NotFound,
      `job ${jobId}: model ${digest.slice(0, 12)} is not in the object store; register its pack again`,
      { jobId, digest },
    );
  }
  const actual = sha256(bytes);
  if (actual !== digest) {
    throw fail(
      ErrorType.DigestMismatch,
      `job ${jobId}: the stored artifact of model ${digest.slice(0, 12)} hashes to ${actual.slice(0, 12)}; ` +
        'nothing was delivered. The blob was damaged or replaced after registration: restore it from the signed pack',
      { jobId, digest, actual },
    );
  }
}

/** Rows per inference call: bounds the memory of one run. */
export const INFERENCE_CHUNK = 32_768;
/** Sentinel of an unset prediction in a Uint8Array (stored as NULL). */
const NO_PRED = 255;

/**
 * Creates the simulated vehicles of a fleet, every one with the cohort's production digest in slot A,
 * active. Idempotent: a fleet that already has vehicles is left as it is.
 */
export async function initSimFleet(
  deps: Pick<FleetActivityDeps, 'conn' | 'key' | 'root'>,
  manifestPath: string,
  productionByCohort: Record<string, string>,
): Promise<{ fleet: string; vehicles: number; created: boolean }> {
  const manifest = loadFleetManifest(confinedPath(deps.root, manifestPath), manifestPath);
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
    // Pseudonyms are computed inside the database, cohort by cohort in generation order (`simVehicles`'
    // order, which inventories keep); the raw id exists only inside the expression that hashes it.
    const id = pseudonymSql(key, `$prefix || i::VARCHAR`);
    let total = 0;
    for (const [cohortIndex, cohort] of manifest.cohorts.entries()) {
      total += await exec(
        conn,
        `INSERT INTO vehicles (fleet, cohort, sku, vehicle, slot_a, slot_b, active)
         SELECT $fleet, $cohort, $sku, ${id.sql}, $digest, NULL, 'a' FROM range($n) t(i)`,
        {
          fleet: manifest.name,
          cohort: cohort.name,
          sku: cohort.sku,
          digest: productionByCohort[cohort.name]!,
          prefix: `${manifest.name}-${cohortIndex}-`,
          n: cohort.vehicles,
          ...id.params,
        },
      );
    }
    // The table has no primary-key index (it cost more than the inserts): uniqueness is checked here.
    const [dup] = await rows(
      conn,
      `SELECT count(*) - count(DISTINCT vehicle) AS n FROM vehicles WHERE fleet = ?`,
      [manifest.name],
    );
    if (num(dup?.n) > 0) {
      throw fail(ErrorType.InvalidInput, `fleet ${manifest.name}: ${num(dup?.n)} pseudonym(s) collide`);
    }
    return { fleet: manifest.name, vehicles: total, created: true };
  });
}

export function createFleetActivities(deps: FleetActivityDeps) {
  const { conn, ota, key, root, feed } = deps;
  const manifestOf = (input: FleetInput) =>
    loadFleetManifest(confinedPath(root, input.manifest), input.manifest);

  async function requireFleet(manifest: FleetManifest): Promise<void> {
    const n = await ota.vehicleCount(manifest.name);
    if (n === 0) {
      throw fail(
        ErrorType.NotFound,
        `fleet ${manifest.name} has no vehicles in the fleet database; initialise the simulated fleet first ` +
          `(initSimFleet with the production digest of every cohort)`,
      );
    }
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
     * already running it are skipped) as OTA job `${rolloutId}-w${wave}`. Of these new targets, those
     * whose install the channel reports deferred (a precondition did not hold) or failed
     * (`OtaChannel.installOutcomes`; the simulated fleet's are keyed by rollout, wave and pseudonym) are
     * left out of the job and keep what they run; `installs` counts them per cohort (present when the
     * fleet models install outcomes for a delivered cohort). A retry returns the recorded result and
     * changes nothing.
     */
    async deliverWave(input: DeliverInput): Promise<DeliveryResult> {
      const manifest = manifestOf(input);
      const cohorts = cohortsOf(manifest, input.cohorts);
      const jobId = `${input.rolloutId}-w${input.wave}`;
      return transaction(conn, async () => {
        const recorded = await ota.recordedJob(jobId, input.digest);
        if (recorded) return recorded as DeliveryResult;
        await checkArtifact(deps.store, input.digest, jobId);
        await requireFleet(manifest);
        // A channel that keeps its vehicles in the fleet database chooses each cohort's targets there; any
        // other channel's inventory is ranked here. Both give the same targets and outcomes (unit-tested).
        const staged = ota.stagedWaves;
        const sizes = staged ? await staged.cohortSizes(manifest.name) : undefined;
        const share = waveShare(input.percent);
        const targets = new Map<string, string[]>();
        const installed = new Map<string, number>();
        const installs: NonNullable<DeliveryResult['installs']> = {};
        let modelled = false;
        for (const cohort of cohorts) {
          const model = {
            availability: cohort.availability,
            installFailureRate: skuOf(manifest, cohort).installFailureRate,
          };
          modelled ||= !installsAlways(model);
          const wave = {
            rolloutId: input.rolloutId,
            wave: input.wave,
            fleet: manifest.name,
            cohort: cohort.name,
            model,
            key,
          };
          if (staged) {
            const stagedWave = await staged.stageWave({
              ...wave,
              jobId,
              digest: input.digest,
              count: targetCount(sizes!.get(cohort.name) ?? 0, share),
            });
            const { targeted, failed, deferred } = stagedWave;
            installs[cohort.name] = { targeted, failed, deferred };
            installed.set(cohort.name, stagedWave.installed);
            continue;
          }
          const fleet = await ota.inventory(manifest.name, cohort.name);
          const chosen = new Set(waveTargets(fleet.vehicles, key, input.rolloutId, input.percent));
          const fresh = fleet.vehicles.filter((v, i) => chosen.has(v) && fleet.digests[i] !== input.digest);
          const outcome = await ota.installOutcomes(wave, fresh);
          if (outcome.length !== fresh.length) {
            throw fail(
              ErrorType.Unavailable,
              `OTA job ${jobId}: the channel reported ${outcome.length} install outcome(s) for the ` +
                `${fresh.length} new target(s) of cohort ${cohort.name}; nothing was delivered`,
            );
          }
          let failed = 0;
          let deferred = 0;
          for (const o of outcome) {
            if (o === INSTALL.failed) failed++;
            else if (o === INSTALL.deferred) deferred++;
          }
          installs[cohort.name] = { targeted: fresh.length, failed, deferred };
          const cohortTargets = fresh.filter((_, i) => outcome[i] === INSTALL.installed);
          targets.set(cohort.name, cohortTargets);
          installed.set(cohort.name, cohortTargets.length);
        }
        const running = await ota.running(manifest.name, input.digest);
        const vehicles: Record<string, number> = {};
        for (const cohort of cohorts) {
          vehicles[cohort.name] = (running.get(cohort.name) ?? 0) + (installed.get(cohort.name) ?? 0);
        }
        const result: DeliveryResult = modelled ? { jobId, vehicles, installs } : { jobId, vehicles };
        const job = {
          jobId,
          rolloutId: input.rolloutId,
          fleet: manifest.name,
          kind: 'deliver' as const,
          wave: input.wave,
          digest: input.digest,
          result,
        };
        // An abort that cancelled the delivery meanwhile rolls the whole wave back here: nothing lands.
        throwIfCancelled(`delivery of wave ${input.wave}`);
        if (staged) await staged.finishJob(job, installed);
        else await ota.createJob({ ...job, targets });
        return result;
      });
    },

    /**
     * Reverts the wave's OTA job in the given cohorts: its vehicles there go back to the model they ran
     * before it, with one 'revert' op logged per cohort that had any. A second call reverts 0.
     */
    async revertWave(input: RevertInput): Promise<{ reverted: number }> {
      const manifest = manifestOf(input);
      const cohorts = cohortsOf(manifest, input.cohorts);
      const jobId = `${input.rolloutId}-w${input.wave}`;
      const reverted = await transaction(conn, () =>
        ota.revertJob(
          jobId,
          cohorts.map((c) => c.name),
        ),
      );
      return { reverted };
    },

    /**
     * Ends the shadow of the given cohorts. A vehicle's shadow runs on board and leaves nothing on the
     * fleet to undo (the fleet's summary says `mirrors` only for a service): it stops 0 cohorts.
     */
    async endShadow(input: EndShadowInput): Promise<{ stopped: number }> {
      cohortsOf(manifestOf(input), input.cohorts);
      return { stopped: 0 };
    },

    /**
     * Delivers `digest` to every vehicle of the cohort not yet running it (job
     * `${rolloutId}-promote-${cohort}`). Returns how many vehicles of the cohort run it afterwards; a
     * retry returns the recorded count and changes nothing. Install outcomes are not simulated here: a
     * promotion reaches every vehicle (a real fleet retries until it does).
     */
    async promoteCohort(input: PromoteInput): Promise<{ vehicles: number }> {
      const manifest = manifestOf(input);
      const [cohort] = cohortsOf(manifest, [input.cohort]);
      const jobId = `${input.rolloutId}-promote-${input.cohort}`;
      return transaction(conn, async () => {
        const recorded = await ota.recordedJob(jobId, input.digest);
        if (recorded) return recorded as { vehicles: number };
        await checkArtifact(deps.store, input.digest, jobId);
        await requireFleet(manifest);
        const fleet = await ota.inventory(manifest.name, cohort!.name);
        const targets = fleet.vehicles.filter((_, i) => fleet.digests[i] !== input.digest);
        const result = { vehicles: fleet.vehicles.length };
        await ota.createJob({
          jobId,
          rolloutId: input.rolloutId,
          fleet: manifest.name,
          kind: 'promote',
          wave: null,
          digest: input.digest,
          targets: new Map([[cohort!.name, targets]]),
          result,
        });
        return result;
      });
    },

    /**
     * One shadow batch: on a `share` of each cohort the candidate runs beside the vehicle's production
     * model on the same frames; both outputs are sent and nothing the candidate says is acted on. With
     * `edge`, each vehicle uploads only what its filter keeps, each upload with its probability, and
     * reports its counters (`shadow_edge`). Reads what the fleet sent for the window (`readBatch`).
     * Keyed by `${rolloutId}:shadow:${fromMs}-${toMs}`.
     */
    async runShadow(input: ShadowInput): Promise<BatchResult> {
      if (!(input.share > 0 && input.share <= 1)) {
        throw fail(ErrorType.InvalidInput, `shadow share must be in (0, 1] (got ${input.share})`);
      }
      const e = input.edge;
      if (e && !(e.sample > 0 && e.sample <= 1)) {
        throw fail(ErrorType.InvalidInput, `edge.sample must be in (0, 1] (got ${e.sample})`);
      }
      if (e && !(e.lowConfidence > 0 && e.lowConfidence < 1)) {
        throw fail(ErrorType.InvalidInput, `edge.lowConfidence must be in (0, 1) (got ${e.lowConfidence})`);
      }
      if (
        e?.perVehiclePerDay !== undefined &&
        !(Number.isInteger(e.perVehiclePerDay) && e.perVehiclePerDay >= 1)
      ) {
        throw fail(
          ErrorType.InvalidInput,
          `edge.perVehiclePerDay must be a whole number of uploads, at least 1 (got ${e.perVehiclePerDay})`,
        );
      }
      return readBatch('shadow', input, {
        share: input.share,
        ...(input.edge ? { edge: input.edge } : {}),
      });
    },

    /**
     * One canary batch: every vehicle of each cohort runs the model in its active slot (what was really
     * installed: a vehicle whose install failed or was deferred runs what it ran); an event is in
     * the 'candidate' arm when that is `candidateDigest`. A seeded `labels.rate` share is sent for
     * labeling ('sample'). Reads what the fleet sent for the window (`readBatch`). Keyed by
     * `${rolloutId}:canary:${fromMs}-${toMs}`.
     */
    async collectTelemetry(input: TelemetryInput): Promise<BatchResult> {
      return readBatch('canary', input, {});
    },
  };

  /**
   * Reads one batch of the window [fromMs, toMs) from what the fleet sent (activities/telemetry.ts):
   * skipped when the batch exists. With an in-process producer (`feed`), it is asked for the window
   * first; otherwise the batch waits, up to `watermarkWaitMs`, for every cohort's watermark to reach
   * the window's end, then reads what is there (what comes later is counted in the next batch). The
   * label requests it made go to the labelers after the commit (again on a retry: they answer once).
   */
  async function readBatch(
    phase: 'shadow' | 'canary',
    input: TelemetryInput,
    shadow: Pick<TelemetryWindow, 'share' | 'edge'>,
  ): Promise<BatchResult> {
    if (!(Number.isFinite(input.fromMs) && Number.isFinite(input.toMs) && input.toMs > input.fromMs)) {
      throw fail(
        ErrorType.InvalidInput,
        `batch window must have toMs > fromMs (got ${input.fromMs}, ${input.toMs})`,
      );
    }
    const batchId = `${input.rolloutId}:${phase}:${input.fromMs}-${input.toMs}`;
    const manifest = manifestOf(input);
    const cohorts = cohortsOf(manifest, input.cohorts);
    const [before] = await exclusive(conn, () =>
      rows(conn, `SELECT 1 FROM batches WHERE batch_id = ?`, [batchId]),
    );
    if (!before) {
      progress({ step: `${phase} batch: reading the fleet's events`, batchId });
      await exclusive(conn, async () => {
        // Only whether each cohort is empty, never its inventory nor the fleet's count (on AWS IoT both
        // list every vehicle); a fleet with no vehicles at all is told to initialise first, as before.
        if (cohorts.length === 0) await requireFleet(manifest);
        for (const cohort of cohorts) {
          if (!(await ota.hasVehicles(manifest.name, cohort.name))) {
            await requireFleet(manifest);
            throw fail(ErrorType.NotFound, `cohort ${cohort.name} of fleet ${manifest.name} has no vehicles`);
          }
        }
      });
      const startMs = await rolloutStart(manifest, input);
      if (feed?.produce) {
        await feed.produce({
          phase,
          rolloutId: input.rolloutId,
          manifest,
          cohorts,
          fromMs: input.fromMs,
          toMs: input.toMs,
          startMs,
          candidateDigest: input.candidateDigest,
          ...(input.versions ? { versions: input.versions } : {}),
          ...shadow,
        });
      } else {
        await awaitWatermarks(
          conn,
          manifest.name,
          cohorts.map((c) => c.name),
          input.toMs,
          deps.watermarkWaitMs ?? DEFAULT_WATERMARK_WAIT_MS,
        );
      }
    }
    progress({ step: `${phase} batch: writing`, batchId });
    const window: WindowRead = {
      batchId,
      phase,
      rolloutId: input.rolloutId,
      fleet: manifest.name,
      cohorts: cohorts.map((c) => c.name),
      fromMs: input.fromMs,
      toMs: input.toMs,
      candidateDigest: input.candidateDigest,
      seed: manifest.seed,
      rate: manifest.labels.rate,
      lowConfidence: shadow.edge?.lowConfidence ?? PRIORITY_CONFIDENCE,
      ...(input.labeling ? { labeling: input.labeling } : {}),
    };
    const { result, requests, read } = await readWindow(conn, window);
    if (deps.batchLog) await logBatchRead(deps.batchLog, window, read);
    if (feed && requests.length > 0) await feed.requestLabels(manifest.name, requests);
    return result;
  }

  /**
   * The simulated time the rollout started, that drift counts from: `startMs` when the caller gives it;
   * otherwise the earliest `fromMs` among this batch and the rollout's recorded batches (their ids end in
   * `:${fromMs}-${toMs}`), which is the start when the first batch (the shadow's, from the start) was
   * written first. Read only when the manifest declares drift.
   */
  async function rolloutStart(
    manifest: FleetManifest,
    input: { rolloutId: string; fromMs: number; startMs?: number },
  ): Promise<number> {
    if (input.startMs !== undefined) {
      if (!Number.isFinite(input.startMs)) {
        throw fail(ErrorType.InvalidInput, `startMs must be a finite time (got ${input.startMs})`);
      }
      return input.startMs;
    }
    if (manifest.drift.length === 0) return input.fromMs;
    const recorded = await exclusive(conn, () =>
      rows(conn, `SELECT batch_id FROM batches WHERE rollout_id = ?`, [input.rolloutId]),
    );
    let start = input.fromMs;
    for (const r of recorded) {
      const m = /:(-?\d+)-(-?\d+)$/.exec(String(r.batch_id));
      if (m) start = Math.min(start, Number(m[1]));
    }
    return start;
  }
}

/**
 * The prefix of a batch's event ids: event i of the cohort at `cohortIndex` is `${tag}.${cohortIndex}.${i}`.
 * Event ids are short (the index on them costs per byte): a tag of the batch id, cohort, index.
 */
export function eventTag(batchId: string): string {
  return createHash('sha256').update(batchId).digest('hex').slice(0, 16);
}

/** What `writeBatch` writes: one batch of simulated events, with everything its labels need. */
export interface BatchWrite {
  batchId: string;
  phase: 'shadow' | 'canary';
  rolloutId: string;
  fromMs: number;
  toMs: number;
  /** The simulation's seed (the manifest's): seeds the labeler's noise and the label requests' draws. */
  seed: number;
  /** Share of events in no priority tier sent for labeling, and the labeler's share of wrong answers. */
  labels: { rate: number; noise?: number };
  /** The labeler's mean delay for a cohort's events, in ms (each delay uniform in 50% to 150% of it). */
  labelDelayMs: (cohort: string) => number;
  /** The exposure (vehicle- or caller-hours) each event of a cohort stands for, that safety events are counted in. */
  exposurePerEvent: (cohort: string) => number;
  labeling?: LabelingInput;
  simulated: SimulatedCohort[];
}

/**
 * Writes one batch of simulated events in one transaction: the events, the shadow's upload counters
 * (`shadow_edge`), their per-batch statistics (`batch_stats`), ground truth (`sim_truth`), the labeler's
 * wrong answers, the label requests and the `batches` row. Skipped (written: false) when the batch is
 * there already, so a retried batch writes nothing twice. Shared by the fleet's and the service's
 * activities; the simulated cohorts' `vehicles` are pseudonyms, never raw ids.
 */
export async function writeBatch(conn: DuckDBConnection, w: BatchWrite): Promise<BatchResult> {
  const { batchId, phase, simulated } = w;
  const existing = () => rows(conn, `SELECT events FROM batches WHERE batch_id = ?`, [batchId]);
  return transaction(conn, async () => {
    const [again] = await existing();
    if (again) return { batchId, events: num(again.events), written: false };
    const tag = eventTag(batchId);
    let total = 0;
    await withAppender(conn, 'events', (a) => {
      for (const { sim, out, arm, vehicles, cohortIndex, keep, weight, failed } of simulated) {
        const exposure = w.exposurePerEvent(sim.cohort);
        for (let i = 0; i < sim.n; i++) {
          if (keep && !keep[i]) continue;
          a.appendVarchar(`${tag}.${cohortIndex}.${i}`);
          a.appendVarchar(w.rolloutId);
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
          appendSafety(a, out.candidate.pred[i]!, sim.frames.labels[i]!);
          appendSafety(a, out.production.pred[i]!, sim.frames.labels[i]!);
          a.appendDouble(exposure);
          a.appendDouble(weight ? weight[i]! : 1);
          a.appendBoolean(failed ? failed[i] === 1 : false);
          a.endRow();
          total++;
        }
      }
    });
    for (const { sim, edge } of simulated) {
      if (!edge) continue;
      await exec(
        conn,
        `INSERT INTO shadow_edge (batch_id, rollout_id, cohort, to_ms, vehicles, evaluated, priority,
                                  disagreements, uploaded, over_budget)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        [
          batchId,
          w.rolloutId,
          sim.cohort,
          w.toMs,
          edge.vehicles,
          edge.evaluated,
          edge.priority,
          edge.disagreements,
          edge.uploaded,
          edge.overBudget,
        ],
      );
    }
    await recordBatchStats(conn, {
      batchId,
      rolloutId: w.rolloutId,
      phase,
      fromMs: w.fromMs,
      toMs: w.toMs,
    });
    // Ground truth and when the labeler would return it: mean delay labels.delay (or the cohort's
    // labels.delayByCohort), uniform in ±50%.
    const availableAt = simulated.map(({ sim }) => {
      const delayMs = w.labelDelayMs(sim.cohort);
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
    // The labeler's wrong answers (labels.noise), on a stream of their own: the truth stays as it is.
    const noise = w.labels.noise ?? 0;
    if (noise > 0) {
      await withAppender(conn, 'sim_label_noise', (a) => {
        for (const { sim, cohortIndex, keep } of simulated) {
          const rng = makeRng(`${w.seed}|${batchId}|${sim.cohort}|labeler`);
          for (let i = 0; i < sim.n; i++) {
            if (keep && !keep[i]) continue;
            const answer = labelerAnswer(sim.frames.labels[i]!, noise, rng);
            if (answer === sim.frames.labels[i]) continue;
            a.appendVarchar(`${tag}.${cohortIndex}.${i}`);
            a.appendUTinyInt(answer);
            a.endRow();
          }
        }
      });
    }
    // Label requests, made as the events are logged: each logged event's tier (shadow: disagreement,
    // rare, low confidence, else the seeded sample; canary: the sample only, so that the arms are
    // compared on a uniform sample), then the rollout's daily budget.
    const n = simulated.reduce((sum, { sim }) => sum + sim.n, 0);
    const tiers = new Uint8Array(n).fill(NO_TIER);
    const at = new Float64Array(n);
    let k = 0;
    for (const { sim, out, request, keep } of simulated) {
      for (let i = 0; i < sim.n; i++, k++) {
        at[k] = sim.ts[i]!;
        if (keep && !keep[i]) continue;
        tiers[k] =
          phase === 'shadow' ? shadowTier(out, request, sim.frames.labels, i) : request[i] ? SAMPLE : NO_TIER;
      }
    }
    const plan = await budgetRequests(
      conn,
      {
        rolloutId: w.rolloutId,
        seed: `${w.seed}|${batchId}`,
        toMs: w.toMs,
        dailyBudget: w.labeling?.dailyBudget,
        rate: w.labels.rate,
      },
      tiers,
      at,
    );
    await withAppender(conn, 'label_requests', (a) => {
      let j = 0;
      for (const { sim, cohortIndex } of simulated) {
        for (let i = 0; i < sim.n; i++, j++) {
          if (!plan.keep[j]) continue;
          a.appendVarchar(`${tag}.${cohortIndex}.${i}`);
          a.appendVarchar(w.rolloutId);
          a.appendBigInt(BigInt(sim.ts[i]!));
          a.appendVarchar(LABEL_TIERS[tiers[j]!]!);
          a.appendDouble(plan.inclusion[j]!);
          a.endRow();
        }
      }
    });
    await exec(conn, `INSERT INTO batches (batch_id, rollout_id, phase, events) VALUES (?, ?, ?, ?)`, [
      batchId,
      w.rolloutId,
      phase,
      total,
    ]);
    return { batchId, events: total, written: true };
  });
}

export type FleetActivities = ReturnType<typeof createFleetActivities>;

export interface Simulation {
  cohort: string;
  n: number;
  /** Per event: index into the vehicles the events were drawn over. */
  vehicle: Uint32Array;
  ts: Float64Array;
  frames: Frames;
  /** Continues the batch's seeded stream: latency noise, label sampling, label delays. */
  rng: () => number;
}

export interface SimulatedCohort {
  sim: Simulation;
  out: EventColumns;
  arm: (i: number) => 'candidate' | 'production' | 'shadow';
  vehicles: readonly string[];
  cohortIndex: number;
  /** Per event: 0 not requested, 1 'priority', 2 'sample'. */
  request: Uint8Array;
  /** Shadow with the upload filter: per event, 1 when uploaded (only those are logged). */
  keep?: Uint8Array;
  /** Per event: inverse probability of its upload; 1 when absent. */
  weight?: Float64Array;
  /** The vehicles' upload counters for the window. */
  edge?: EdgeCounters;
  /**
   * Per event: 1 when the request failed (a service's error response: the acting model's columns are
   * empty). Vehicles' events never fail; absent: none did.
   */
  failed?: Uint8Array;
}

/** Per-event outputs of one model; NaN and NO_PRED stand for NULL. */
export class ArmColumns {
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

export class EventColumns {
  readonly candidate: ArmColumns;
  readonly production: ArmColumns;
  constructor(n: number) {
    this.candidate = new ArmColumns(n);
    this.production = new ArmColumns(n);
  }
}

/**
 * The conditions a cohort drives under at simulated time t: its manifest's (nightShare, rainShare,
 * sensorNoise), then every drift naming it (or naming no cohort) whose time has come (startMs + at <= t),
 * in order of `at` (the manifest's order among equal times), each replacing the conditions it sets.
 */
export function conditionsAt(
  manifest: FleetManifest,
  cohort: CohortSpec,
  startMs: number,
): (tMs: number) => FrameConditions {
  const base: FrameConditions = {
    nightShare: cohort.nightShare,
    rainShare: cohort.rainShare,
    sensorNoise: cohort.sensorNoise,
  };
  const steps = manifest.drift
    .map((d, i) => ({ atMs: startMs + (parseDuration(d.at) ?? 0), i, d }))
    .filter(({ d }) => !d.cohorts || d.cohorts.includes(cohort.name))
    .sort((a, b) => a.atMs - b.atMs || a.i - b.i);
  if (steps.length === 0) return () => base;
  // Conditions from each step's time on, accumulated.
  const from: number[] = [];
  const cond: FrameConditions[] = [];
  let cur = base;
  for (const { atMs, d } of steps) {
    const c = d.conditions;
    cur = {
      nightShare: c.nightShare ?? cur.nightShare,
      rainShare: c.rainShare ?? cur.rainShare,
      sensorNoise: c.sensorNoise ?? cur.sensorNoise,
    };
    from.push(atMs);
    cond.push(cur);
  }
  return (t) => {
    let k = -1;
    while (k + 1 < from.length && from[k + 1]! <= t) k++;
    return k < 0 ? base : cond[k]!;
  };
}

/**
 * The factor a SKU's `slowdown` applies to the latency of the model with this digest: the entry of the
 * digest's version in `versions`, else 1 (unknown version, or a version the SKU runs at full speed).
 */
export function slowdownOf(sku: Sku, versions: Record<string, string> | undefined, digest: string): number {
  const version = versions?.[digest];
  if (version === undefined) return 1;
  return sku.slowdown.find((s) => s.version === version)?.factor ?? 1;
}

/**
 * Runs one model over the selected frames (all when `idx` is null), in chunks, and writes prediction
 * (argmax), confidence (max probability) and the model's per-frame cost into the outputs at the events'
 * positions. The logged latency is simulated from this cost (see `frameCost`) times the model's slowdown
 * on the SKU (`slowdownOf`), times the SKU's speed factor, times lognormal noise exp(0.2 z).
 */
export async function infer(
  runner: ModelRunner,
  digest: string,
  frames: Frames,
  idx: number[] | null,
  sku: Sku,
  out: ArmColumns,
  slowdown = 1,
): Promise<void> {
  const total = idx ? idx.length : frames.count;
  const settings: RunnerSettings = {
    intraOpThreads: sku.intraOpThreads,
    graphOptimization: sku.graphOptimization,
  };
  const cost = (await frameCost(runner, digest, settings)) * slowdown;
  const { pred, conf } = out;
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
      // Contiguous frames: a view, no copy.
      features = frames.features.subarray(start * FEATURES, (start + rowsInChunk) * FEATURES);
    }
    const { probs } = await runner.run(digest, features, rowsInChunk, settings);
    // A model that outputs NaN or Infinity answers no class: the batch fails, never reads it as "clear".
    let nonFinite = 0;
    for (let j = 0, end = 2 * rowsInChunk; j < end; j++) if (!Number.isFinite(probs[j]!)) nonFinite++;
    if (nonFinite > 0) {
      throw fail(
        ErrorType.InvalidInput,
        `model ${digest.slice(0, 12)} output ${nonFinite} non-finite value(s) (NaN or Infinity) for ${rowsInChunk} frame(s) ` +
          `on ${sku.name}: it answers no class for them; a model that does this is not rolled out (check its export and ` +
          'its inputs against the inference config)',
      );
    }
    if (idx) {
      for (let r = 0; r < rowsInChunk; r++) {
        const e = idx[start + r]!;
        const p0 = probs[2 * r]!;
        const p1 = probs[2 * r + 1]!;
        pred[e] = p1 > p0 ? 1 : 0;
        conf[e] = p1 > p0 ? p1 : p0;
        out.ms[e] = cost;
      }
    } else {
      for (let j = 0, e = start, end = start + rowsInChunk; e < end; j += 2, e++) {
        const p0 = probs[j]!;
        const p1 = probs[j + 1]!;
        if (p1 > p0) {
          pred[e] = 1;
          conf[e] = p1;
        } else {
          pred[e] = 0;
          conf[e] = p0;
        }
      }
      out.ms.fill(cost, start, start + rowsInChunk);
    }
  }
}

/** Per-frame cost of the simulated vehicle runtime, on the reference SKU (speedFactor 1). */
export const FRAME_COST = { baseMs: 0.05, perKiBMs: 0.01 } as const;

/**
 * Milliseconds one frame of this model takes on the reference SKU in the simulated fleet: a fixed
 * runtime overhead plus a share proportional to the model's size. A model, not a measurement: timing
 * two models on a shared host gives differences that come from the host, and the simulated fleet must
 * not report a latency regression that the models do not have. Real latency on this host is what the
 * bench measures (p95 against each SKU's budget).
 */
async function frameCost(runner: ModelRunner, digest: string, _settings: RunnerSettings): Promise<number> {
  const bytes = await runner.modelBytes(digest);
  return FRAME_COST.baseMs + (FRAME_COST.perKiBMs * bytes) / 1024;
}

/** The requested cohorts of a fleet's (or a service's) manifest, once each; InvalidInput naming any unknown. */
export function cohortsOf<C extends { name: string }>(
  manifest: { name: string; cohorts: readonly C[] },
  requested: readonly string[],
  what: 'fleet' | 'service' = 'fleet',
): C[] {
  const names = [...new Set(requested)];
  const unknown = names.filter((n) => !manifest.cohorts.some((c) => c.name === n));
  if (unknown.length > 0) {
    throw fail(
      ErrorType.InvalidInput,
      `unknown cohort(s) ${unknown.join(', ')} in ${what} ${manifest.name}; declared: ${manifest.cohorts.map((c) => c.name).join(', ')}`,
    );
  }
  return names.map((n) => manifest.cohorts.find((c) => c.name === n)!);
}

function skuOf(manifest: FleetManifest, cohort: CohortSpec): Sku {
  const sku = manifest.skus.find((s) => s.name === cohort.sku);
  if (!sku) throw fail(ErrorType.InvalidInput, `cohort ${cohort.name} names unknown SKU ${cohort.sku}`);
  return sku;
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

/**
 * Whether a model that ran missed a critical-class frame (a safety event), from the frame's true class;
 * NULL where the model did not run. Derived from values already drawn: no random stream changes.
 */
const SAMPLE = LABEL_TIERS.indexOf('sample');

/**
 * The label tier of shadow event `i` (index into LABEL_TIERS): 'disagreement' when the models disagree;
 * 'rare' when either predicts the critical class or missed it (a safety event); 'low_confidence' when the
 * batch marked it a priority for that (`request` 1: low confidence or disagreement); 'sample' when it
 * was drawn into the `labels.rate` sample (`request` 2); else none.
 */
function shadowTier(out: EventColumns, request: Uint8Array, truth: ArrayLike<number>, i: number): number {
  const c = out.candidate.pred[i]!;
  const p = out.production.pred[i]!;
  if (c !== NO_PRED && p !== NO_PRED && c !== p) return LABEL_TIERS.indexOf('disagreement');
  const missed = (pred: number) => pred !== NO_PRED && truth[i] === CRITICAL_CLASS && pred !== CRITICAL_CLASS;
  if (c === CRITICAL_CLASS || p === CRITICAL_CLASS || missed(c) || missed(p))
    return LABEL_TIERS.indexOf('rare');
  if (request[i] === 1) return LABEL_TIERS.indexOf('low_confidence');
  return request[i] === 2 ? SAMPLE : NO_TIER;
}

function appendSafety(a: DuckDBAppender, pred: number, truth: number): void {
  if (pred === NO_PRED) a.appendNull();
  else a.appendBoolean(truth === CRITICAL_CLASS && pred !== CRITICAL_CLASS);
}

function appendNumber(a: DuckDBAppender, value: number, type: 'float' | 'double'): void {
  if (Number.isNaN(value)) a.appendNull();
  else if (type === 'float') a.appendFloat(value);
  else a.appendDouble(value);
}

/**
 * Interfaces of what activities depend on, and the small vocabulary they share (install outcomes).
 * `workers/` builds the implementations, real or simulated, and hands them to the activity factories;
 * unit tests of code around them may hand fakes. Nothing here may import the simulator (sim/).
 */
import type { Frames } from '../policies/frames';
import type { CohortSpec, FleetManifest } from '../policies/schema';
import type { ServiceCohort } from '../policies/service-schema';
import type { IoContract, ShadowInput } from './contracts';

/** Object store: content-addressed blobs, write-once records, pointers moved by compare-and-swap. */
export interface ObjectStore {
  /** Bytes at key, or undefined. */
  get(key: string): Promise<Buffer | undefined>;
  /**
   * Writes only if the key is absent (if-none-match). Returns 'created', or 'exists' when the same
   * bytes are already there; throws ImmutableConflict when different bytes are.
   */
  putIfAbsent(key: string, body: Buffer): Promise<'created' | 'exists'>;
  /**
   * Replaces the value at key when its current etag equals `expectedEtag` (null: key must be absent).
   * Returns the new etag; throws PointerConflict otherwise.
   */
  compareAndSwap(key: string, expectedEtag: string | null, body: Buffer): Promise<string>;
  /** Current etag (sha256 of the bytes) of key, or null when absent. */
  etag(key: string): Promise<string | null>;
  /** Keys under a prefix, sorted. */
  list(prefix: string): Promise<string[]>;
  /**
   * Removes key; an absent key is not an error. For the retention and compaction of ingested-record
   * partitions (events/partitions.ts) only: registry records and pointers are never deleted.
   */
  delete(key: string): Promise<void>;
}

/** Runs registered models with onnxruntime, one cached session per (digest, settings). */
export interface ModelRunner {
  /** Class probabilities [rows, 2] of `features` [rows, FEATURES], and the wall time of the run. */
  run(
    digest: string,
    features: Float32Array,
    rows: number,
    settings?: RunnerSettings,
  ): Promise<{ probs: Float32Array; elapsedMs: number }>;
  /** Input/output contract read from the ONNX file. */
  contract(digest: string): Promise<IoContract>;
  /** Size in bytes of the model file. */
  modelBytes(digest: string): Promise<number>;
  close(): Promise<void>;
}
export interface RunnerSettings {
  intraOpThreads?: number;
  graphOptimization?: 'disabled' | 'basic' | 'extended' | 'all';
}

/**
 * Over-the-air delivery: jobs that put a model on vehicles, and their undoing. Two implementations, chosen
 * by FLEETGATE_OTA in the composition root: the simulated fleet's per-vehicle A/B slots (sim/ota.ts),
 * where a job takes effect at once, and AWS IoT Jobs (activities/ota-iot.ts: a thing group per cohort and
 * job, an IoT job whose id is derived from `jobId`), where a vehicle runs the new model only once it has
 * applied the job and reported it, so `inventory` and `running` show what vehicles report, not what was
 * ordered. The channel, not the activity, says what a delivery did on each vehicle (`installOutcomes`).
 * Vehicles are known by their pseudonyms only. The channel does not serialise its calls: a
 * caller that reads, then creates or reverts a job, makes those calls in one unit of work (for the
 * simulated fleet, one transaction on the fleet database's connection; AWS IoT needs none, as its ids
 * make a repeated call harmless).
 */
export interface OtaChannel {
  /** How many vehicles of the fleet the channel can reach; 0 for a fleet it does not know. */
  vehicleCount(fleet: string): Promise<number>;
  /** The vehicles of a fleet's cohort, with the digest of the model each runs now (same order). */
  inventory(fleet: string, cohort: string): Promise<{ vehicles: string[]; digests: string[] }>;
  /**
   * Whether the fleet's cohort has at least one vehicle: false for a cohort or fleet the channel does not
   * know, and for a cohort of that name that only another fleet has. Reads at most one vehicle where the
   * channel can (never the cohort's inventory), for callers that need only to know it is not empty.
   */
  hasVehicles(fleet: string, cohort: string): Promise<boolean>;
  /** Vehicles per cohort running `digest` now; cohorts with none are absent. */
  running(fleet: string, digest: string): Promise<Map<string, number>>;
  /**
   * The result recorded with job `jobId`, or undefined when there is no such job. Throws
   * ImmutableConflict when the job was created with another digest.
   */
  recordedJob(jobId: string, digest: string): Promise<unknown>;
  /**
   * Creates job `jobId`: puts `digest` on the target vehicles of each cohort and logs one operation per
   * cohort with any, recording `result` for `recordedJob`. Callers check `recordedJob` first: a job id is
   * created once.
   */
  createJob(job: OtaJob): Promise<void>;
  /**
   * Undoes job `jobId` in the given cohorts: its vehicles there go back to the model they ran before it,
   * and one 'revert' operation is logged per cohort with any. Returns how many vehicles were reverted; a
   * second call, or an unknown job, reverts 0.
   */
  revertJob(jobId: string, cohorts: readonly string[]): Promise<number>;
  /**
   * What installing now does on each of `targets`, the new targets of a canary wave in one cohort: an
   * `INSTALL` code per target, in the same order. Only the vehicles that install go into the job; a
   * deferred or failed one keeps what it runs and is tried again by the next wave that targets it. The
   * simulated fleet draws them from the cohort's install model (keyed, so a retry decides the same); a
   * channel whose vehicles report their own installs (AWS IoT Jobs) answers `installed` for every target
   * and shows what the vehicles did in `inventory` and `running`.
   */
  installOutcomes(wave: WaveInstall, targets: readonly string[]): Promise<Uint8Array>;
  /**
   * Present when the channel keeps its vehicles in the fleet database: deliverWave then chooses each
   * cohort's targets and their installs there instead of ranking the inventory in JavaScript (same
   * targets, same outcomes).
   */
  readonly stagedWaves?: StagedWaves;
}

/** What happened to one targeted vehicle when a wave was installed. */
export const INSTALL = { installed: 0, deferred: 1, failed: 2 } as const;
export type InstallOutcome = (typeof INSTALL)[keyof typeof INSTALL];

/** The install model of one cohort, from the fleet manifest: its availability shares and its SKU's failure rate. */
export interface InstallModel {
  availability: CohortSpec['availability'];
  installFailureRate: number;
}

/** True when every target installs (all shares 1, no failures): the manifest models no install outcome. */
export function installsAlways(model: InstallModel): boolean {
  const { online, parked, batteryOk } = model.availability;
  return online >= 1 && parked >= 1 && batteryOk >= 1 && model.installFailureRate <= 0;
}

/** One cohort's part of canary wave `wave` of `rolloutId`, for the install outcomes of its targets. */
export interface WaveInstall {
  rolloutId: string;
  wave: number;
  fleet: string;
  cohort: string;
  model: InstallModel;
  /** The pseudonym key: a simulated install is drawn from keyed streams. */
  key: Buffer;
}

/** What staging one cohort's part of a wave did. */
export interface StagedWave {
  /** New targets: chosen and not yet running the digest. */
  targeted: number;
  failed: number;
  deferred: number;
  /** Appended to the job's targets: targeted - failed - deferred. */
  installed: number;
}

/** A channel's waves chosen inside the fleet database (`OtaChannel.stagedWaves`). */
export interface StagedWaves {
  /** Vehicles per cohort of the fleet; cohorts with none are absent. */
  cohortSizes(fleet: string): Promise<Map<string, number>>;
  /**
   * Stages one cohort's part of job `jobId`: the first `count` vehicles by the wave's keyed rank, of
   * which those not running `digest` are the new targets, their installs decided as `installOutcomes`
   * decides them; those that install are appended to the job's targets.
   */
  stageWave(wave: WaveInstall & { jobId: string; digest: string; count: number }): Promise<StagedWave>;
  /** Completes a job whose targets were staged: switches them, logs one op per cohort with any (`counts`). */
  finishJob(job: Omit<OtaJob, 'targets'>, counts: ReadonlyMap<string, number>): Promise<void>;
}
export interface OtaJob {
  jobId: string;
  rolloutId: string;
  fleet: string;
  kind: 'deliver' | 'promote';
  /** The canary wave a 'deliver' job belongs to; null for 'promote'. */
  wave: number | null;
  digest: string;
  /** Pseudonyms of the vehicles to deliver to, per cohort. */
  targets: Map<string, string[]>;
  /** What a retry of the activity that created the job returns. */
  result: unknown;
}

/** One window of a rollout's events that a batch reads: what the simulated fleet is asked to send for it. */
export interface TelemetryWindow {
  phase: 'shadow' | 'canary';
  rolloutId: string;
  /** The fleet's manifest, parsed; `cohorts` are its cohorts the batch reads. */
  manifest: FleetManifest;
  cohorts: readonly CohortSpec[];
  /** The window [fromMs, toMs), and the rollout's start that drift counts from. */
  fromMs: number;
  toMs: number;
  startMs: number;
  candidateDigest: string;
  /** The version of each digest, for the SKUs' slowdowns. */
  versions?: Record<string, string>;
  /** Shadow: the share of each cohort running the candidate beside production. */
  share?: number;
  /** Shadow: the vehicles' upload filter. */
  edge?: ShadowInput['edge'];
}

/** A label request sent to the labelers: the producer's event id and when it was requested. */
export interface LabelRequestOut {
  eventId: string;
  requestedAtMs: number;
  /** The tier it was requested in (activities/labels.ts LABEL_TIERS). */
  reason?: string;
}

/**
 * The fleet's side of the data plane, as the composition root wires it. For a real fleet it only hands
 * label requests to the labelers (activities/label-queue.ts): its units and labelers send records to
 * ingestion (events/), and the activities read what arrived. An
 * in-process producer (the simulated fleet of `fleetgate simulate` and the workflow tests) sends a
 * window's records through the same writer when a batch asks for them, and answers label requests the
 * same way; the activities read its records exactly as they read a real fleet's.
 */
export interface TelemetryFeed {
  /**
   * Sends the window's inference events and upload reports, with a watermark at its end. Absent for a
   * real fleet: a batch then waits for the watermarks its units send.
   */
  produce?(window: TelemetryWindow): Promise<void>;
  /** The labelers receive these requests (the simulated labeler answers each after its delay). */
  requestLabels(fleet: string, requests: readonly LabelRequestOut[]): Promise<void>;
}

/**
 * The load a service's rollout sends through its inference gateway in each batch window: the callers of
 * each cohort, and how their requests are sent. The composition root chooses it (workers/worker.ts: the
 * simulated users of sim/users.ts); the service activities then read back, from the gateway's event log,
 * what was served. Callers are known by their keyed pseudonyms only.
 */
export interface CallerLoad {
  /** The callers of one cohort of `service`, their pseudonyms under `key`. */
  population(key: Buffer, service: string, cohort: ServiceCohort): CallerPopulation;
  /**
   * Posts every request of `requests` to the gateway at `gatewayUrl`, `concurrency` at a time, request i
   * with request id `requestIds(i)`. Throws when the gateway refuses or cannot be reached; a request the
   * gateway failed (5xx) is a fact of the service, which its event log records.
   */
  send(
    gatewayUrl: string,
    requests: CallerRequests,
    concurrency: number,
    requestIds: (i: number) => string,
  ): Promise<unknown>;
}

/** The callers of one cohort of a service. */
export interface CallerPopulation {
  readonly cohort: ServiceCohort;
  /** Keyed pseudonym of each caller, by caller index. */
  readonly pseudonyms: readonly string[];
  /** How many callers the gateway's router gives the candidate at `weight` percent under `salt`. */
  candidateCallers(key: Buffer, salt: string, weight: number): number;
  /**
   * The requests of [fromMs, toMs), at most `cap`, seeded by `seed` and the batch id: a retried batch
   * gets the same requests.
   */
  draw(seed: number, batchId: string, fromMs: number, toMs: number, cap: number): CallerRequests;
}

/** One window's requests of a cohort, as a batch of events is written from them. */
export interface CallerRequests {
  readonly cohort: string;
  readonly n: number;
  /** Per request: the caller's index in the population. */
  readonly vehicle: Uint32Array;
  /** Per request: its simulated time, ms since the epoch, ascending. */
  readonly ts: Float64Array;
  /** Per request: its features and its true class (the caller's outcome). */
  readonly frames: Frames;
  /** Continues the draw's seeded stream (label sampling and delays). */
  readonly rng: () => number;
  /** The population's pseudonyms, by caller index. */
  readonly pseudonyms: readonly string[];
  /** The caller pseudonym of request i. */
  callerPseudonym(i: number): string;
}

/**
 * The shapes that cross the activity boundary: types only, so workflow code can import them.
 *
 * History stays small: everything here is a reference (key, digest, path) or an aggregate whose size
 * grows with cohorts and metrics, never with vehicles or events.
 */
import type { CohortSpec, Sku } from '../policies/schema';

/** Input/output contract of an ONNX model, as onnxruntime reads it from the file. */
export interface TensorSpec {
  name: string;
  type: string; // e.g. "float32"
  shape: (number | string)[]; // symbolic dims as strings
}
export interface IoContract {
  inputs: TensorSpec[];
  outputs: TensorSpec[];
}

/** An immutable registry version record. */
export interface ModelRecord {
  name: string;
  version: string;
  /** sha256 of the ONNX file; also its content-addressed key in the object store. */
  digest: string;
  /** sha256 of the manifest file. */
  manifestDigest: string;
  /** Object-store key of the write-once record. */
  recordKey: string;
  contract: IoContract;
  /*
   * The fields below come from signed packs (docs/registry.md); records written before them lack them.
   */
  /** The manifest's release counter: strictly above the production release it replaces. */
  release?: number;
  /** Every file of the pack (manifest and signature excepted) by relative path: its sha256 and blob key. */
  files?: Record<string, string>;
  /** Key id (sha256 of the raw ed25519 public key, hex) of the trusted signer whose signature verified. */
  signer?: string;
  /** sha256 of the detached signature file. */
  signatureDigest?: string;
  trainingDataHash?: string;
  codeHash?: string;
  /** SKUs the pack declares it runs on; the bench and the waves refuse others. */
  compatibleSkus?: string[];
  /** Per-SKU resource budgets of the manifest. */
  skuBudgets?: Record<string, SkuBudget>;
  /** Golden inputs and the outputs they must give, from inference_config.json (blob digests). */
  golden?: GoldenSet;
  /** Digest of inference_config.json (a blob). */
  configDigest?: string;
}

export interface SkuBudget {
  /** p95 latency ceiling in ms on that SKU (the stricter of this and the fleet's SKU budget applies). */
  latencyP95Ms?: number;
  /**
   * Ceiling in MiB of the model's own peak resident memory on that SKU: the bench child's peak minus its
   * baseline with onnxruntime already started (both are reported).
   */
  memoryMb?: number;
}

export interface GoldenSet {
  /** sha256 (blob key) of little-endian float32 inputs, [rows, features]. */
  inputs: string;
  /** sha256 (blob key) of little-endian float32 expected outputs, [rows, classes]. */
  outputs: string;
  rows: number;
  /** Largest absolute difference allowed per output value. */
  tolerance: number;
}

export interface RegisterInput {
  rolloutId: string;
  packDir: string;
  /**
   * Cohorts the candidate is meant for: its release counter must be above each one's production release,
   * and a major version above production's needs `allowMajorBump`. Absent in older histories.
   */
  cohorts?: string[];
  /** The rollout request's explicit approval of a semantic-version major bump. */
  allowMajorBump?: boolean;
}
export interface ProductionLookup {
  cohorts: string[];
}
export interface ProductionModels {
  /** Production model per cohort. */
  byCohort: Record<string, ModelRecord>;
}

export interface MovePointerInput {
  cohort: string;
  stage: 'production' | 'candidate';
  /** New digest, or null to clear the pointer. */
  digest: string | null;
  /** Compare-and-swap: the digest the pointer must hold now (null: must be unset). */
  expected: string | null;
  rolloutId: string;
  reason: string;
}

export interface BenchInput {
  rolloutId: string;
  digest: string;
  sku: Sku;
  goldenInputs: number;
  repeats: number;
  /**
   * The model's version, to apply the SKU's `slowdown` entry for it. Absent in histories recorded before
   * it existed: then no slowdown applies.
   */
  version?: string;
  /**
   * Key of the candidate's registry record: the bench reads its golden set and SKU budgets from it and
   * stores its report beside it. Absent in older histories.
   */
  recordKey?: string;
}
/**
 * One SKU's bench verdict. The optional fields came with the bench in a child process; results recorded
 * in older histories lack them.
 */
export interface BenchResult {
  sku: string;
  /** Batch-1 latency quantiles in ms, scaled to the SKU (speed factor times the version's slowdown). */
  p95Ms: number;
  p99Ms: number;
  p50Ms?: number;
  /** Latency samples behind the quantiles. */
  runs?: number;
  /** The p95 budget applied: the SKU's, or the pack's budget for the SKU when that is stricter. */
  budgetMs: number;
  deterministic: boolean;
  contractOk: boolean;
  passed: boolean;
  /** Every failure, '; '-separated; absent when passed. */
  reason?: string;
  /** False when the pack's `compatibleSkus` leaves this SKU out (nothing was run then). */
  compatible?: boolean;
  /** The process that ran the model: a child process of its own (`isolated`), or the worker's. */
  pid?: number;
  isolated?: boolean;
  /** The session options the model ran with, as passed to onnxruntime. */
  session?: {
    intraOpThreads: number;
    interOpThreads: number;
    executionMode: string;
    graphOptimization: string;
    /** Threads the bench process started while building the session (Linux only). */
    threadsStarted?: number;
  };
  /** Peak resident memory of the bench process, in MiB (isolated benches only). */
  peakRssMb?: number;
  /** Its peak before the model was read (onnxruntime loaded and warmed up). */
  baselineRssMb?: number;
  /** The model's share: peakRssMb - baselineRssMb; what the pack's memory ceiling is compared with. */
  modelRssMb?: number;
  /** The pack's memory ceiling for this SKU, in MiB. */
  memoryCeilingMb?: number;
  /** The pack's golden set: its rows, tolerance and the largest difference found. */
  goldenRows?: number;
  goldenTolerance?: number;
  goldenMaxAbsDiff?: number;
  /** Object-store key of the stored bench report. */
  reportKey?: string;
}

export interface FleetSummary {
  name: string;
  skus: Sku[];
  cohorts: CohortSpec[];
  /**
   * Whether the shadow changes how the fleet serves (a service's gateway mirrors a share of its
   * requests to the candidate), so that a cohort leaving the shadow without a wave has it undone by
   * `endShadow`. Absent for a vehicle fleet, whose shadow runs on board and changes nothing.
   */
  mirrors?: boolean;
  /**
   * The candidate's serving configuration differs from production's (a service manifest's
   * `gateway.candidateArm.threshold`), so a candidate with production's own digest is a configuration
   * experiment, not a repeat of production: `threshold` names it. Absent for a vehicle fleet.
   */
  candidateConfig?: { threshold: number };
}

export interface FleetInput {
  rolloutId: string;
  manifest: string;
}

export interface ShadowInput extends FleetInput {
  candidateDigest: string;
  cohorts: string[];
  share: number;
  /** Simulated-fleet time window [fromMs, toMs) covered by this batch. */
  fromMs: number;
  toMs: number;
  /**
   * Simulated-fleet time the rollout started, that the manifest's `drift[].at` counts from. When absent,
   * the earliest `fromMs` of the rollout's event batches (this one included) stands for it.
   */
  startMs?: number;
  /**
   * Version of each model digest the vehicles may run (the candidate and the cohorts' production
   * models), to apply the SKUs' `slowdown` entries. A digest not listed runs without slowdown.
   */
  versions?: Record<string, string>;
  /** Label requests within the policy's daily budget; absent in histories from before it existed. */
  labeling?: LabelingInput;
  /**
   * The vehicles' upload filter (sim/edge.ts). When absent every event is uploaded with weight 1 and no
   * upload counters are kept (the behaviour before the filter).
   */
  edge?: {
    sample: number;
    lowConfidence: number;
    /** Most uploads per vehicle per simulated day; absent for no cap. */
    perVehiclePerDay?: number;
  };
}

export interface DeliverInput extends FleetInput {
  wave: number;
  percent: number;
  cohorts: string[];
  digest: string;
}
export interface DeliveryResult {
  jobId: string;
  /** Vehicles running the candidate per cohort after this delivery. */
  vehicles: Record<string, number>;
  /**
   * Per cohort, this wave's new targets: how many were targeted, how many installs failed (the vehicle
   * keeps its model), and how many were deferred because a precondition (online, parked, battery) did
   * not hold. Absent in results recorded before delivery reported them, and when the fleet models no
   * install outcomes for the delivered cohorts (availability 1 and installFailureRate 0: every target
   * installs).
   */
  installs?: Record<string, { targeted: number; failed: number; deferred: number }>;
}
export interface RevertInput extends FleetInput {
  wave: number;
  cohorts: string[];
}
export interface EndShadowInput extends FleetInput {
  cohorts: string[];
}
export interface PromoteInput extends FleetInput {
  cohort: string;
  digest: string;
}

export interface TelemetryInput extends FleetInput {
  cohorts: string[];
  candidateDigest: string;
  fromMs: number;
  toMs: number;
  /** As in ShadowInput: the rollout's start in simulated time, that drift counts from. */
  startMs?: number;
  /** As in ShadowInput: the version of each digest, for the SKUs' slowdowns. */
  versions?: Record<string, string>;
  /** Label requests within the policy's daily budget; absent in histories from before it existed. */
  labeling?: LabelingInput;
}
export interface BatchResult {
  batchId: string;
  events: number;
  /** False when the batch had already been written (idempotent retry). */
  written: boolean;
  /** Events taken whose time is before the window: sent after their own window was read. */
  late?: number;
  /** Events of the window left out: their model is not the one the rollout put there. */
  mismatched?: number;
}

export interface LabelInput {
  rolloutId: string;
  asOfMs: number;
  /**
   * labelCoverage: a request younger than this at `asOfMs` (requested_at_ms > asOfMs - maturityMs)
   * counts only once its label has arrived. Absent: 0, every request counts.
   */
  maturityMs?: number;
  /** labelCoverage: cohorts to report even when they have no requests (with coverage 0). */
  cohorts?: string[];
}
/** Label coverage of one cohort, or of the whole rollout. */
export interface CoverageCount {
  /** Requests counted: the mature ones, and the younger ones whose label has arrived. */
  requested: number;
  labeled: number;
  /** labeled / requested; 0 when nothing is counted (no requests is no evidence). */
  coverage: number;
  /** Younger requests whose label has not arrived yet: not counted. Absent in old histories. */
  young?: number;
}
export interface LabelCoverage extends CoverageCount {
  /** Per cohort. Absent in results recorded before it existed. */
  cohorts?: Record<string, CoverageCount>;
}
/**
 * The labeling settings a shadow or canary batch needs (the policy's `labelWait.dailyBudget`). Absent:
 * no budget.
 */
export interface LabelingInput {
  /** Most label requests of the rollout per simulated UTC day. */
  dailyBudget?: number;
}

/** Count, sum and sum of squares of one quantity. */
export interface MomentStats {
  n: number;
  sum: number;
  sumSq: number;
}

/** Sufficient statistics of one arm. */
export interface ArmStats {
  events: number;
  labeled: number;
  errors: number;
  /** Inference latency in milliseconds. */
  latency: MomentStats;
  /**
   * ln(latency in milliseconds), for skewed latency tested on the log scale. Absent in analysis
   * results recorded before it existed (old histories); read it as empty then.
   */
  logLatency?: MomentStats;
  /**
   * Safety-critical events (a critical-class frame the acting model missed) and the exposure they
   * happened in, in vehicle-hours. Known at once on the vehicle, without waiting for labels. Absent
   * in analysis results recorded before it existed; read it as empty then.
   */
  safety?: { events: number; exposureHours: number };
  /**
   * Requests of the arm that failed (a service's error responses; `events` counts them too). Vehicles'
   * events never fail. Absent in analysis results recorded before it existed; read it as 0 then.
   */
  failed?: number;
  /**
   * Canary only: the tail of the arm's latency over the cohort's canary events so far, for latency_p95
   * and latency_p99. Absent in analysis results recorded before it existed, in the shadow phase, and
   * for an arm without latency samples.
   */
  latencyTail?: LatencyTail;
}

/**
 * One arm's latency tail as of a look, over its events that did not fail and have a latency: `n` of
 * them; per quantile q (p95: 0.95, p99: 0.99), the arm's own q-quantile in ms (DuckDB `quantile_cont`)
 * and how many of its events are slower than the production arm's q-quantile of the same cohort (the
 * threshold; 0 when production has no latency samples).
 */
export interface LatencyTail {
  n: number;
  p95: TailQuantile;
  p99: TailQuantile;
}
export interface TailQuantile {
  /** This arm's q-quantile of latency, in ms. */
  ms: number;
  /** Events with a latency above production's q-quantile (strictly above). */
  above: number;
}
export interface CohortStats {
  cohort: string;
  candidate: ArmStats;
  production: ArmStats;
  /** Shadow only: events where both models ran, and how many of them they disagreed on. */
  paired?: { events: number; disagreements: number };
  /** Shadow only, for batches written with the upload filter: counters and weighted estimates. */
  shadow?: ShadowEstimates;
}

/**
 * What the vehicles' upload filter reports per window alongside its uploads (a few integers, exact for
 * every event), summed over the shadow's windows in `ShadowEstimates`.
 */
export interface EdgeCounters {
  /** Vehicles with at least one event in the window. */
  vehicles: number;
  /** Events both models ran on. */
  evaluated: number;
  /** Events that disagree or are low-confidence. */
  priority: number;
  disagreements: number;
  /** Events uploaded (after the budget). */
  uploaded: number;
  /** Vehicles whose would-be uploads exceeded their budget. */
  overBudget: number;
}

/** What the shadow phase knows of a cohort: the vehicles' counters and estimates from the uploads. */
export interface ShadowEstimates {
  /**
   * Sums of the vehicles' counters over the shadow's windows; `vehicles` and `overBudget` count
   * vehicle-windows (a vehicle with events, or that hit its budget, in one window).
   */
  edge: EdgeCounters;
  /** Weighted (inverse upload probability) estimates over every event the vehicles ran. */
  estimated: {
    events: number;
    disagreement: number;
    /** Weighted mean latency in ms per model; 0 without samples. */
    latencyMs: { candidate: number; production: number };
  };
  /** Per class, over labeled uploads, weighted by 1 / (upload probability x label-request probability). */
  classes: ClassStats[];
}

export interface ClassStats {
  cls: number;
  /** Labeled events whose true class is `cls` (recall's support). */
  labeled: number;
  /** Labeled events each model predicted as `cls` (precision's support). */
  predicted: { candidate: number; production: number };
  /** Each model's estimate and the standard error of their difference (paired, linearised). */
  recall: { candidate: number; production: number; se: number };
  precision: { candidate: number; production: number; se: number };
}
export interface AnalyzeInput {
  rolloutId: string;
  phase: 'shadow' | 'canary';
  cohorts: string[];
  asOfMs: number;
}

export interface ReportInput {
  rolloutId: string;
  report: unknown;
}

/**
 * What a rollout tells its webhook (activities/notify.ts). `event` names what happened; the idempotency
 * key (`<rolloutId>/<seq>`, the seq of the decision-log entry it reports) is the same on every retry, so a
 * receiver drops duplicates. Never a vehicle identifier: only cohorts, phases and decision reasons.
 */
export interface NotifyInput {
  event:
    | 'gate-pending'
    | 'escalated'
    | 'decision'
    | 'rollback'
    | 'promoted'
    | 'completed'
    | 'rejected'
    | 'aborted'
    | 'drift'
    | 'paused'
    | 'resumed'
    | 'compensation-failing';
  rolloutId: string;
  cohort?: string;
  wave?: number;
  /** The rollout's phase when it happened (workflows/definitions.ts `Phase`). */
  phase: string;
  /** Workflow time of the decision, ISO 8601. */
  at: string;
  /** The decision log's reason, one line. */
  reason: string;
  idempotencyKey: string;
}

/**
 * Drift activities: compare the input features each cohort's production model sees now with the
 * reference statistics stored beside its registry record, store the result of the check, and hold the
 * running rollouts of drifted cohorts.
 *
 * Object-store layout (write-once, like the bench reports beside a record):
 *   <record key without .json>.drift/<fleet>/<cohort>.json     DriftReference: quantile bins per feature
 *   drift/checks/<schedule>/<check>.json                       DriftCheckResult: one per check
 *
 * A reference is a pure function of the fleet manifest (its seed and the cohort's conditions) through the
 * feature source, so every writer writes the same bytes: `fleetgate fleet init` writes it when production is registered, and a
 * check writes it for a production model registered by a rollout (a promoted candidate). A check's result
 * is a pure function of its input (check id, simulated time, policy) and of the stored reference, so a
 * retried activity finds its result stored and returns it.
 *
 * Where the features come from is a dependency the composition root chooses (`FeatureSource`): the
 * simulated fleet (sim/features.ts) draws them under the manifest's conditions, at the check's simulated
 * time with drift included for the current ones; a deployment would read its logged features. These
 * activities never draw a feature themselves. These activities never return or store a frame, only bin counts and
 * statistics, and never a vehicle identifier.
 */
import { Context } from '@temporalio/activity';
import { type Client, WorkflowUpdateFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { ErrorType, fail } from '../errors';
import {
  binCounts,
  featureDrift,
  judgeDrift,
  quantileEdges,
  worstVerdict,
  type BinnedReference,
  type DriftVerdict,
} from '../policies/drift';
import { DRIFT_FEATURES, type DriftPolicy } from '../policies/drift-schema';
import type { CohortSpec, FleetManifest } from '../policies/schema';
import { FEATURES } from '../policies/model-contract';
import type { FrameConditions } from '../policies/frames';
import { loadFleetManifest } from '../fleet/manifest';
import { FINAL_COHORT_STATES, pauseUpdate, statusQuery, WORKFLOW_TYPE } from '../workflows/definitions';
import { confinedPath } from './confine';
import type { ModelRecord } from './contracts';
import type { ObjectStore } from './deps';
import { pointerHistory, readPointer } from './registry';
import { parseStoredJson } from './store';

/** Frames of a reference sample per cohort. */
export const REFERENCE_FRAMES = 10_000;
/** Quantile bins per feature (deciles). */
export const REFERENCE_BINS = 10;
/** Who a drift check's pause request names. */
export const DRIFT_REQUESTER = 'drift-check';

export interface DriftReference {
  apiVersion: 'fleetgate/v1';
  kind: 'DriftReference';
  fleet: string;
  cohort: string;
  model: { name: string; version: string; digest: string };
  recordKey: string;
  /** The conditions the reference sample was drawn under (the cohort's, before any drift). */
  conditions: FrameConditions;
  frames: number;
  seed: string;
  features: BinnedReference[];
}

/** One feature's row of a stored check. */
export interface DriftFeatureRow {
  feature: string;
  verdict: DriftVerdict;
  psi: number;
  ks: number;
  ksPValue: number;
  js: number;
  n: number;
  m: number;
  reason: string;
}

export interface DriftCohortResult {
  cohort: string;
  verdict: DriftVerdict;
  reason: string;
  model: { name: string; version: string; digest: string };
  features: DriftFeatureRow[];
}

export interface DriftCheckResult {
  apiVersion: 'fleetgate/v1';
  kind: 'DriftCheck';
  key: string;
  checkId: string;
  scheduleId: string;
  fleet: string;
  /** Workflow time of the check, ISO 8601. */
  at: string;
  /** Simulated fleet time the current features were drawn at, ISO 8601. */
  simAt: string;
  verdict: DriftVerdict;
  policy: DriftPolicy;
  cohorts: DriftCohortResult[];
}

export interface DriftCheckInput {
  checkId: string;
  scheduleId: string;
  /** Fleet manifest, relative to the worker's root. */
  manifest: string;
  /** Simulated fleet time per real second since the drift origin (default 1). */
  timeScale?: number;
  /** Cohorts checked; every cohort of the fleet when absent. */
  cohorts?: string[];
  policy: DriftPolicy;
  /** Workflow time of the check, ms since the epoch. */
  asOfMs: number;
}

/** What a check returns to its workflow: verdicts and statistics, rounded; no frames. */
export interface DriftCheckSummary {
  checkId: string;
  resultKey: string;
  verdict: DriftVerdict;
  simAt: string;
  /** Cohorts whose verdict is drift. */
  drifted: string[];
  cohorts: {
    cohort: string;
    verdict: DriftVerdict;
    reason: string;
    features: Pick<DriftFeatureRow, 'feature' | 'verdict' | 'psi' | 'ks' | 'ksPValue' | 'js'>[];
  }[];
  /** References this check wrote because none was stored (production registered by a rollout). */
  referencesWritten: number;
}

export interface HoldInput {
  checkId: string;
  cohorts: string[];
  reason: string;
}

export interface HoldResult {
  /** Rollouts paused by this request. */
  paused: string[];
  /** Rollouts that refused the pause (e.g. already paused), with the refusal. */
  refused: { rolloutId: string; why: string }[];
}

/**
 * Where a cohort's features come from: the current ones a check compares, and the reference sample stored
 * when production is registered. The composition root chooses it (workers/worker.ts: the simulated fleet,
 * sim/features.ts; a deployment would read its logged and its training features).
 */
export interface FeatureSource {
  /**
   * `count` frames' features of `cohort` as of simulated time `simAtMs` (row-major [count, FEATURES]),
   * seeded by `seed` where the source is a simulation.
   */
  currentFeatures(req: {
    manifest: FleetManifest;
    cohort: CohortSpec;
    simAtMs: number;
    originMs: number;
    count: number;
    seed: string;
  }): Promise<{ count: number; features: Float32Array }>;
  /**
   * The reference sample of `cohort`: `count` frames' features (row-major [count, FEATURES]) under the
   * conditions they were drawn in, which the reference records. The same request must give the same
   * sample (a reference is written once, and every writer must write the same bytes).
   */
  referenceFeatures(req: {
    manifest: FleetManifest;
    cohort: CohortSpec;
    count: number;
    seed: string;
  }): Promise<{ count: number; features: Float32Array; conditions: FrameConditions }>;
}

/** Cohort names hold "/": a file-safe segment for keys (letters, digits, ".", "_", "-"). */
function segment(s: string): string {
  return s.replace(/[^A-Za-z0-9._-]/g, '_');
}

/** Key of a cohort's reference beside a registry record. */
export function referenceKey(recordKey: string, fleet: string, cohort: string): string {
  return `${recordKey.replace(/\.json$/, '')}.drift/${fleet}/${cohort}.json`;
}

export function checksPrefix(scheduleId: string): string {
  return `drift/checks/${segment(scheduleId)}/`;
}
export function checkKey(scheduleId: string, checkId: string): string {
  return `${checksPrefix(scheduleId)}${segment(checkId)}.json`;
}

function json(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value, null, 2) + '\n');
}

/** Column j of row-major [count, FEATURES] features. */
function column(features: Float32Array, count: number, j: number): Float64Array {
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) out[i] = features[i * FEATURES + j]!;
  return out;
}

/** A cohort's reference: REFERENCE_FRAMES of the source's reference sample, binned per feature. */
export async function buildReference(
  manifest: FleetManifest,
  cohort: CohortSpec,
  record: ModelRecord,
  source: FeatureSource,
): Promise<DriftReference> {
  const seed = `${manifest.seed}|drift-reference|${cohort.name}`;
  const { conditions, ...frames } = await source.referenceFeatures({
    manifest,
    cohort,
    count: REFERENCE_FRAMES,
    seed,
  });
  const features = DRIFT_FEATURES.map((feature, j) => {
    const values = column(frames.features, frames.count, j);
    const edges = quantileEdges(values, REFERENCE_BINS);
    return { feature, edges, counts: binCounts(values, edges) };
  });
  return {
    apiVersion: 'fleetgate/v1',
    kind: 'DriftReference',
    fleet: manifest.name,
    cohort: cohort.name,
    model: { name: record.name, version: record.version, digest: record.digest },
    recordKey: record.recordKey,
    conditions,
    frames: REFERENCE_FRAMES,
    seed,
    features,
  };
}

/**
 * Writes, write-once, the reference of every cohort of the fleet beside the record of the production
 * model just registered; a reference already there is kept, even when the manifest's conditions have
 * changed since (drift is measured against the registration's). Returns the keys.
 */
export async function storeDriftReferences(
  store: ObjectStore,
  record: ModelRecord,
  manifest: FleetManifest,
  source: FeatureSource,
  cohorts: readonly string[] = manifest.cohorts.map((c) => c.name),
): Promise<string[]> {
  const keys: string[] = [];
  for (const cohort of manifest.cohorts) {
    if (!cohorts.includes(cohort.name)) continue;
    const key = referenceKey(record.recordKey, manifest.name, cohort.name);
    try {
      await store.putIfAbsent(key, json(await buildReference(manifest, cohort, record, source)));
    } catch (err) {
      // The manifest's conditions changed since production was registered: the reference stays the one
      // of the registration (write-once), which is what drift is measured against.
      if (!(err instanceof ApplicationFailure) || err.type !== ErrorType.ImmutableConflict) throw err;
    }
    keys.push(key);
  }
  return keys;
}

/** The stored result of one check, or undefined. */
export async function readDriftCheck(store: ObjectStore, key: string): Promise<DriftCheckResult | undefined> {
  const bytes = await store.get(key);
  return bytes === undefined ? undefined : parseStoredJson<DriftCheckResult>(bytes, key);
}

/** The stored checks of a schedule, oldest first (the last `limit` of them). */
export async function recentDriftChecks(
  store: ObjectStore,
  scheduleId: string,
  limit = 10,
): Promise<DriftCheckResult[]> {
  const keys = (await store.list(checksPrefix(scheduleId))).filter((k) => k.endsWith('.json'));
  const results: DriftCheckResult[] = [];
  for (const key of keys) {
    const r = await readDriftCheck(store, key);
    if (r) results.push(r);
  }
  return results.sort((a, b) => a.at.localeCompare(b.at) || a.checkId.localeCompare(b.checkId)).slice(-limit);
}

const round = (x: number) => Number(x.toPrecision(4));

function summarize(r: DriftCheckResult, referencesWritten: number): DriftCheckSummary {
  return {
    checkId: r.checkId,
    resultKey: r.key,
    verdict: r.verdict,
    simAt: r.simAt,
    drifted: r.cohorts.filter((c) => c.verdict === 'drift').map((c) => c.cohort),
    cohorts: r.cohorts.map((c) => ({
      cohort: c.cohort,
      verdict: c.verdict,
      reason: c.reason,
      features: c.features.map((f) => ({
        feature: f.feature,
        verdict: f.verdict,
        psi: round(f.psi),
        ks: round(f.ks),
        ksPValue: round(f.ksPValue),
        js: round(f.js),
      })),
    })),
    referencesWritten,
  };
}

export interface DriftActivityDeps {
  /** The registry's object store: records, pointers, references and check results. */
  store: ObjectStore;
  /** Directory that fleet manifest paths are resolved against. */
  root: string;
  /** Where the current features and a missing reference's sample come from (the composition root's choice). */
  features: FeatureSource;
  /** The Temporal client that finds and pauses rollouts (default: the worker's, from the activity context). */
  temporal?: () => Client;
  /** The rollouts that may need a hold (default: `runningRollouts`, a visibility query). */
  rollouts?: (client: Client) => AsyncIterable<{ workflowId: string; runId?: string }>;
}

/** The visibility query of the running rollouts. */
export const RUNNING_ROLLOUTS = `WorkflowType="${WORKFLOW_TYPE}" AND ExecutionStatus="Running"`;

/** Every running rolloutWorkflow, through the server's visibility (a list query). */
export function runningRollouts(client: Client): AsyncIterable<{ workflowId: string; runId?: string }> {
  return client.workflow.list({ query: RUNNING_ROLLOUTS });
}

export function createDriftActivities(deps: DriftActivityDeps) {
  const { store, root } = deps;
  const source = deps.features;
  const temporal = deps.temporal ?? (() => Context.current().client);
  const listRollouts = deps.rollouts ?? runningRollouts;

  async function readRecord(key: string, cohort: string): Promise<ModelRecord> {
    const bytes = await store.get(key);
    if (bytes === undefined) {
      throw fail(
        ErrorType.NotFound,
        `cohort ${cohort}: production pointer names record ${key}, which does not exist; register that model version again`,
      );
    }
    return parseStoredJson<ModelRecord>(bytes, key);
  }

  return {
    /**
     * One drift check: per cohort, its production model's reference, the current features at the
     * check's simulated time, PSI, KS and JS per feature, and the policy's verdicts. The result is
     * stored write-once under the schedule and check ids; a retry returns the stored result.
     */
    async driftCheck(input: DriftCheckInput): Promise<DriftCheckSummary> {
      const key = checkKey(input.scheduleId, input.checkId);
      const stored = await readDriftCheck(store, key);
      if (stored) return summarize(stored, 0);
      const manifest = loadFleetManifest(confinedPath(root, input.manifest), input.manifest);
      const names = manifest.cohorts.map((c) => c.name);
      const unknown = (input.cohorts ?? []).filter((c) => !names.includes(c));
      if (unknown.length > 0) {
        throw fail(
          ErrorType.InvalidInput,
          `cohorts: ${unknown.map((c) => `"${c}"`).join(', ')} not in fleet ${manifest.name}; declared: ${names.join(', ')}`,
        );
      }
      const timeScale = input.timeScale ?? 1;
      if (!(timeScale > 0 && Number.isFinite(timeScale))) {
        throw fail(ErrorType.InvalidInput, `timeScale must be a positive number (got ${timeScale})`);
      }
      const cohorts = manifest.cohorts.filter((c) => !input.cohorts || input.cohorts.includes(c.name));
      const features = input.policy.features ?? [...DRIFT_FEATURES];
      const results: DriftCohortResult[] = [];
      let referencesWritten = 0;
      let simAtMs = input.asOfMs;
      for (const cohort of cohorts) {
        const { pointer } = await readPointer(store, cohort.name, 'production');
        if (!pointer?.recordKey) {
          throw fail(
            ErrorType.NotFound,
            `cohort ${cohort.name} has no production model; run "fleetgate fleet init --fleet ${input.manifest}" first`,
          );
        }
        const record = await readRecord(pointer.recordKey, cohort.name);
        const refKey = referenceKey(record.recordKey, manifest.name, cohort.name);
        let refBytes = await store.get(refKey);
        if (refBytes === undefined) {
          refBytes = json(await buildReference(manifest, cohort, record, source));
          await store.putIfAbsent(refKey, refBytes);
          referencesWritten++;
        }
        const reference = parseStoredJson<DriftReference>(refBytes, refKey);
        // Drift counts from the cohort's first production (fleet init): the manifest's `drift[].at`.
        const history = await pointerHistory(store, cohort.name, 'production');
        const originMs = new Date(history[0]?.at ?? pointer.at).getTime();
        simAtMs = originMs + Math.max(0, input.asOfMs - originMs) * timeScale;
        const current = await source.currentFeatures({
          manifest,
          cohort,
          simAtMs,
          originMs,
          count: input.policy.sampleSize,
          seed: `${manifest.seed}|drift|${input.scheduleId}|${input.checkId}|${cohort.name}`,
        });
        const stats = features.map((feature) => {
          const j = DRIFT_FEATURES.indexOf(feature);
          const ref = reference.features.find((f) => f.feature === feature);
          if (!ref) {
            throw fail(
              ErrorType.InvalidInput,
              `reference ${refKey} has no feature ${feature}; features: ${reference.features.map((f) => f.feature).join(', ')}`,
            );
          }
          return featureDrift(
            cohort.name,
            ref,
            binCounts(column(current.features, current.count, j), ref.edges),
          );
        });
        const [verdict] = judgeDrift(input.policy, stats);
        results.push({
          cohort: cohort.name,
          verdict: verdict!.verdict,
          reason: verdict!.reason,
          model: reference.model,
          features: stats.map((s, i) => ({
            feature: s.feature,
            verdict: verdict!.features[i]!.verdict,
            psi: s.psi,
            ks: s.ks,
            ksPValue: s.ksPValue,
            js: s.js,
            n: s.n,
            m: s.m,
            reason: verdict!.features[i]!.reason,
          })),
        });
      }
      const result: DriftCheckResult = {
        apiVersion: 'fleetgate/v1',
        kind: 'DriftCheck',
        key,
        checkId: input.checkId,
        scheduleId: input.scheduleId,
        fleet: manifest.name,
        at: new Date(input.asOfMs).toISOString(),
        simAt: new Date(simAtMs).toISOString(),
        verdict: worstVerdict(results.map((r) => r.verdict)),
        policy: input.policy,
        cohorts: results,
      };
      try {
        await store.putIfAbsent(key, json(result));
      } catch (err) {
        // A concurrent attempt stored its result first: that one is the check's.
        if (!(err instanceof ApplicationFailure) || err.type !== ErrorType.ImmutableConflict) throw err;
        const first = await readDriftCheck(store, key);
        if (first) return summarize(first, referencesWritten);
        throw err;
      }
      return summarize(result, referencesWritten);
    },

    /**
     * Pauses every running rollout with a cohort among `cohorts` that has not reached its outcome, with
     * the pauseUpdate of workflows/definitions.ts. A refusal (already paused, nothing left to pause) is
     * reported, not thrown; a rollout that ended meanwhile is skipped. Pausing twice changes nothing.
     */
    async holdRollouts(input: HoldInput): Promise<HoldResult> {
      const client = temporal();
      const paused: string[] = [];
      const refused: HoldResult['refused'] = [];
      const wanted = new Set(input.cohorts);
      for await (const wf of listRollouts(client)) {
        const handle = client.workflow.getHandle(wf.workflowId, wf.runId);
        let concerned: boolean;
        try {
          const status = await handle.query(statusQuery);
          concerned = status.cohorts.some(
            (c) => wanted.has(c.cohort) && !FINAL_COHORT_STATES.includes(c.state),
          );
        } catch {
          continue; // ended between the list and the query, or its worker is away: nothing to hold now
        }
        if (!concerned) continue;
        try {
          await handle.executeUpdate(pauseUpdate, { args: [{ by: DRIFT_REQUESTER, reason: input.reason }] });
          paused.push(wf.workflowId);
        } catch (err) {
          if (!(err instanceof WorkflowUpdateFailedError)) throw err;
          const why = err.cause instanceof Error ? err.cause.message : err.message;
          refused.push({ rolloutId: wf.workflowId, why });
        }
      }
      return { paused, refused };
    },
  };
}

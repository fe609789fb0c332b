/**
 * The "look after ingestion" row of `npm run bench` (scripts/bench.ts): what a canary batch and its look
 * cost when the batch reads what a fleet sent, against the same look on events written in process.
 *
 *   subject:  the window's events were sent earlier (through the one writer, as `fleetgate ingest`
 *             stores them); the batch (`collectTelemetry` with no in-process producer: it reads the
 *             window from the ingested records, writes the analysis rows, the batch's statistics and its
 *             label requests) and then the look (`analyze`).
 *   baseline: the same events appended in process straight into the analysis table with DuckDB's
 *             appender, their label sample and batch statistics, and the same look: what a look on
 *             simulated events cost when the simulator wrote them inside the activity.
 *
 * The goal, the subject at most 1.2 times the baseline, is printed as met or not: a figure to
 * read, never a failure. Both looks must give the same counts before their times mean anything. The
 * events carry keyed pseudonyms; nothing here prints a record or a unit.
 */
import type { DuckDBConnection } from '@duckdb/node-api';
import { createAnalysisActivities, recordBatchStats } from '../activities/analysis';
import { transaction } from '../activities/db';
import { createFleetActivities } from '../activities/fleet';
import type { Services } from '../workers/worker';
import { SCHEMA_VERSION, type Inference } from '../events/contract';
import { pseudonym } from '../fleet/pseudonym';
import { makeRng } from '../policies/rng';
import type { BenchRow } from './bench-shadow';

const HOUR = 3_600_000;
/** Events in the window: a 4-hour canary batch of a fleet of some 8,000 vehicles at 30 events an hour. */
const EVENTS = Number(process.env.FLEETGATE_BENCH_LOOK_EVENTS || 240_000);
/** Runs of each, the best kept: one run on a busy 2-core host could be twice another. */
const RUNS = Number(process.env.FLEETGATE_BENCH_LOOK_RUNS || 5);

export interface LookBenchInput {
  services: Services;
  /** The fleet manifest (relative to the root) and its name and cohorts. */
  manifest: string;
  fleet: string;
  cohorts: string[];
  candidateDigest: string;
  productionDigest: string;
  /** The fleet's share of events sampled for labels (its manifest's `labels.rate`). */
  labelRate: number;
}

/** The window's events as a fleet sends them: both arms in every cohort, every field of the contract. */
function eventsOf(input: LookBenchInput, rolloutId: string, fromMs: number): Inference[] {
  const rng = makeRng('bench-look'); // the same events for both rollouts
  const units = Array.from({ length: 2_000 }, (_, i) => pseudonym(input.services.key, `bench-look-${i}`));
  return Array.from({ length: EVENTS }, (_, i): Inference => {
    const candidate = rng() < 0.25;
    return {
      schema: SCHEMA_VERSION,
      eventId: `${rolloutId}.${i}`,
      fleet: input.fleet,
      cohort: input.cohorts[i % input.cohorts.length]!,
      unit: units[i % units.length]!,
      rolloutId,
      phase: 'canary',
      arm: candidate ? 'candidate' : 'production',
      modelDigest: candidate ? input.candidateDigest : input.productionDigest,
      prediction: Math.floor(rng() * 4),
      confidence: 0.5 + rng() / 2,
      latencyMs: 2 + rng() * 6,
      safety: rng() < 0.001,
      exposureHours: 1 / 30,
      upload: { tier: 'all', inclusionProbability: 1 },
      at: fromMs + Math.floor((i / EVENTS) * 4 * HOUR),
    };
  });
}

/** The baseline's write: the events appended as analysis rows, with their batch statistics, in one transaction. */
async function writeDirect(
  conn: DuckDBConnection,
  events: Inference[],
  batchId: string,
  fromMs: number,
  rate: number,
) {
  await transaction(conn, async () => {
    const a = await conn.createAppender('events');
    try {
      for (const e of events) {
        const cand = e.arm === 'candidate';
        a.appendVarchar(`${e.fleet}:${e.eventId}`);
        a.appendVarchar(e.rolloutId!);
        a.appendVarchar(batchId);
        a.appendVarchar('canary');
        a.appendVarchar(e.cohort);
        a.appendVarchar(e.unit);
        a.appendBigInt(BigInt(e.at));
        a.appendVarchar(e.arm);
        if (cand) a.appendUTinyInt(e.prediction);
        else a.appendNull();
        if (cand) a.appendNull();
        else a.appendUTinyInt(e.prediction);
        if (cand) a.appendFloat(e.confidence);
        else a.appendNull();
        if (cand) a.appendNull();
        else a.appendFloat(e.confidence);
        if (cand) a.appendDouble(e.latencyMs);
        else a.appendNull();
        if (cand) a.appendNull();
        else a.appendDouble(e.latencyMs);
        if (cand) a.appendBoolean(e.safety);
        else a.appendNull();
        if (cand) a.appendNull();
        else a.appendBoolean(e.safety);
        a.appendDouble(e.exposureHours);
        a.appendDouble(1);
        a.appendBoolean(false);
        a.endRow();
      }
    } finally {
      a.closeSync();
    }
    // Its label requests, as the simulated path made them: the seeded sample of the fleet's rate.
    const sample = makeRng(`${batchId}|sample`);
    const r = await conn.createAppender('label_requests');
    try {
      for (const e of events) {
        if (sample() >= rate) continue;
        r.appendVarchar(`${e.fleet}:${e.eventId}`);
        r.appendVarchar(e.rolloutId!);
        r.appendBigInt(BigInt(e.at));
        r.appendVarchar('sample');
        r.appendDouble(rate);
        r.endRow();
      }
    } finally {
      r.closeSync();
    }
    await recordBatchStats(conn, {
      batchId,
      rolloutId: events[0]!.rolloutId!,
      phase: 'canary',
      fromMs,
      toMs: fromMs + 4 * HOUR,
    });
  });
}

export async function lookBench(input: LookBenchInput): Promise<BenchRow> {
  if (!(Number.isInteger(RUNS) && RUNS >= 1)) {
    throw new Error(
      `FLEETGATE_BENCH_LOOK_RUNS must be a whole number of runs, at least 1 (got "${String(process.env.FLEETGATE_BENCH_LOOK_RUNS).slice(0, 20)}"); unset, it is 5`,
    );
  }
  const { services } = input;
  const conn = services.db.connection;
  // A real fleet's side: no in-process producer, the watermark already there, label requests dropped.
  const fleet = createFleetActivities({
    conn,
    ota: services.ota,
    runner: services.runner,
    key: services.key,
    root: services.root,
    feed: { requestLabels: async () => undefined },
    watermarkWaitMs: 0,
  });
  const analysis = createAnalysisActivities({ conn });
  const fromMs = Date.UTC(2026, 5, 1);
  const toMs = fromMs + 4 * HOUR;
  const asOfMs = toMs + HOUR;

  // Each run reads a rollout of its own (a batch is read once) and writes one of its own directly; the
  // best of RUNS of each is kept, the two measured in turn and in alternating order, so that what else
  // runs on the host weighs on both alike.
  let subjectMs = Infinity;
  let baselineMs = Infinity;
  let subject: Awaited<ReturnType<typeof analysis.analyze>> = [];
  let baseline: Awaited<ReturnType<typeof analysis.analyze>> = [];
  const measureSubject = async (run: number) => {
    const ingested = `bench-look-ingested-${run}`;
    const sent = eventsOf(input, ingested, fromMs);
    for (let i = 0; i < sent.length; i += 50_000) {
      // The watermark with the last part: every event of the window has then been sent.
      const last = i + 50_000 >= sent.length;
      await services.writer.ingestTyped('inference', input.fleet, sent.slice(i, i + 50_000), {
        ...(last ? { watermarkMs: toMs } : {}),
      });
    }
    const t0 = process.hrtime.bigint();
    await fleet.collectTelemetry({
      rolloutId: ingested,
      manifest: input.manifest,
      cohorts: input.cohorts,
      candidateDigest: input.candidateDigest,
      fromMs,
      toMs,
    });
    subject = await analysis.analyze({
      rolloutId: ingested,
      phase: 'canary',
      cohorts: input.cohorts,
      asOfMs,
    });
    subjectMs = Math.min(subjectMs, Number(process.hrtime.bigint() - t0) / 1e6);
  };
  const measureBaseline = async (run: number) => {
    const written = `bench-look-direct-${run}`;
    const direct = eventsOf(input, written, fromMs);
    const t1 = process.hrtime.bigint();
    await writeDirect(conn, direct, `${written}:canary:1`, fromMs, input.labelRate);
    baseline = await analysis.analyze({
      rolloutId: written,
      phase: 'canary',
      cohorts: input.cohorts,
      asOfMs,
    });
    baselineMs = Math.min(baselineMs, Number(process.hrtime.bigint() - t1) / 1e6);
  };
  for (let run = 0; run < RUNS; run++) {
    if (run % 2 === 0) {
      await measureSubject(run);
      await measureBaseline(run);
    } else {
      await measureBaseline(run);
      await measureSubject(run);
    }
  }

  for (const s of subject) {
    const b = baseline.find((r) => r.cohort === s.cohort);
    if (!b || b.candidate.events !== s.candidate.events || b.production.events !== s.production.events) {
      throw new Error(
        `the look after ingestion and the direct look disagree for ${s.cohort}: ${JSON.stringify([s.candidate, s.production, b?.candidate, b?.production])}`,
      );
    }
  }
  const ratio = subjectMs / baselineMs;
  return {
    name: `look after ingestion (${EVENTS} events; goal at most 1.2x: ${ratio <= 1.2 ? 'met' : 'not met'}, ${ratio.toFixed(2)}x)`,
    subject: 'batch read + look',
    baseline: 'appender + look',
    subjectMs,
    baselineMs,
    speedup: baselineMs / subjectMs,
  };
}

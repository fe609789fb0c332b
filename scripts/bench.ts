/**
 * `npm run bench`: speed and memory of the hot paths, each printed as a ratio against a baseline
 * measured in the same run on the same data (never an absolute time to assert against).
 *
 *   1. analysis look: the DuckDB aggregation of the analysis activity vs reading every event into
 *      JavaScript and aggregating there (what a look would cost without pushing it into the database);
 *   1b. a look after ingestion: a canary batch that reads what a fleet sent, and its look, vs the same look
 *      on events appended in process (scripts/bench-look.ts; the issue's goal: at most 1.2x);
 *   2. inference: batched onnxruntime runs vs one run per frame;
 *   3. canary assignment: waveTargets over a large cohort vs sorting objects by an HMAC hex string;
 *   4. looks over a large log (FLEETGATE_BENCH_EVENTS, default 10 million): the first look vs one plain
 *      GROUP BY, a later look over a tenth as many new events vs the first look, and the ingestion of
 *      the log with its per-batch statistics vs writing the events alone.
 *   5. fleet scale: 1M vehicles' init and waves; 6. shadow inference and the vehicle's p99
 *      (scripts/bench-shadow.ts); 7. verifying a signed pack with a 100 MB model vs sha256sum
 *      (scripts/bench-pack.ts); 8. the status page's first render in headless Chromium with 50 rollouts
 *      listed vs its empty list (scripts/bench-ui.ts); 9. the inference gateway: p50/p99 and saturation against
 *      direct runs, p99 with 100% mirroring, and overload against a small queue (scripts/bench-serve.ts);
 *      10. ingestion: `fleetgate ingest` over HTTP (NDJSON, gzip, Parquet) against DuckDB's appender, its
 *      peak resident set, and a rebuild from partitions against the write (scripts/bench-ingest.ts).
 *
 * `npm run bench -- ingest` (or `look`, or both) runs only the sections named (those of ALONE), without the
 * statistics.
 *
 * Then the statistics of the sequential designs, from the seeded simulation of `fleetgate stats simulate`:
 * the A/A false-alarm rate of each design over many looks against α, and power and samples to a decision
 * at the minimum effect and twice it, against the fixed-horizon sample size.
 *
 * Runs against a temporary data directory; prints two tables and a JSON line.
 */
import { createHmac } from 'node:crypto';
import type { DuckDBConnection } from '@duckdb/node-api';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { bootstrapProduction, createRegistryActivities } from '../activities/registry';
import { createFleetActivities, initSimFleet } from '../activities/fleet';
import { createAnalysisActivities } from '../activities/analysis';
import { createLabelActivities } from '../activities/labels';
import { openFleetDatabase, rows, transaction } from '../activities/db';
import { canaryFull, canaryLook, recordBatchStats } from '../activities/analysis';
import { openServices, trustFixtureSigner, type Services } from '../workers/worker';
import { loadFleetManifest } from '../fleet/manifest';
import { pseudonym } from '../fleet/pseudonym';
import { waveTargets } from '../fleet/assignment';
import { FEATURES } from '../policies/model-contract';
import { generateFrames } from '../sim/frames';
import { makeRng } from '../policies/rng';
import { SimulatedOta } from '../sim/ota';
import { SimulatedFleetFeed } from '../sim/producer';
import { EventWriter } from '../events/writer';
import { SIM_BASELINE, SIM_LOOK_SIZE, simulate, type SimulationInput } from '../cli/stats';
import { MAX_LOOKS } from '../policies/gsd';
import { sampleSize } from '../policies/planning';
import { shadowBench, type BenchRow } from './bench-shadow';
import { packBench } from './bench-pack';
import { uiBench } from './bench-ui';
import { serveBench } from './bench-serve';
import { ingestBench } from './bench-ingest';
import { lookBench, type LookBenchInput } from './bench-look';

const ROOT = resolve(__dirname, '..');
const FLEET = 'sim/fleets/demo.yaml';

interface Result extends BenchRow {
  subjectHeapMB?: number;
  baselineHeapMB?: number;
}

async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; heapMB: number; value: T }> {
  global.gc?.();
  const heap0 = process.memoryUsage().heapUsed;
  const t0 = process.hrtime.bigint();
  const value = await fn();
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const heapMB = Math.max(0, process.memoryUsage().heapUsed - heap0) / 2 ** 20;
  return { ms, heapMB, value };
}

async function best<T>(n: number, fn: () => Promise<T>) {
  let out = await timed(fn);
  for (let i = 1; i < n; i++) {
    const r = await timed(fn);
    if (r.ms < out.ms) out = r;
  }
  return out;
}

/** Sections that `npm run bench -- NAME...` runs alone. */
const ALONE: Record<string, () => Promise<Result[]>> = {
  ingest: () => ingestBench(ROOT),
  look: async () => [await lookAlone()],
};

/**
 * A new data directory that trusts the fixtures' signer, and its services with the simulated fleet,
 * which sends each window's events as a batch asks for it (sim/producer.ts).
 */
async function benchServices() {
  const dataDir = mkdtempSync(join(tmpdir(), 'fleetgate-bench-'));
  trustFixtureSigner(dataDir);
  const services = await openServices(
    dataDir,
    ROOT,
    { kind: 'simulated' },
    { kind: 'simulated', watermarkWaitMs: 0 },
  );
  return { dataDir, services };
}

/**
 * The bench fleet in `services`: production registered for every cohort, the simulated vehicles, the
 * good candidate registered for rollout "bench"; and the look-after-ingestion row's input on it.
 */
async function benchFleet(services: Services) {
  const manifest = loadFleetManifest(join(ROOT, FLEET));
  const cohorts = manifest.cohorts.map((c) => c.name);
  const prod = await bootstrapProduction(services, 'models/production', cohorts, 'bench');
  await initSimFleet(
    { conn: services.db.connection, key: services.key, root: ROOT },
    FLEET,
    Object.fromEntries(cohorts.map((c) => [c, prod.digest])),
  );
  const candidateDigest = (
    await createRegistryActivities(services).registerCandidate({
      rolloutId: 'bench',
      packDir: 'models/candidate-good',
    })
  ).digest;
  const look: LookBenchInput = {
    services,
    manifest: FLEET,
    fleet: manifest.name,
    cohorts,
    candidateDigest,
    productionDigest: prod.digest,
    labelRate: manifest.labels.rate,
  };
  return { manifest, cohorts, prod, candidateDigest, look };
}

/** Section 1b alone: the fleet, its production model and the candidate it needs, then its row. */
async function lookAlone(): Promise<Result> {
  const { dataDir, services } = await benchServices();
  try {
    return await lookBench((await benchFleet(services)).look);
  } finally {
    await services.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const only = process.argv.slice(2);
  const unknown = only.filter((name) => !Object.hasOwn(ALONE, name));
  if (unknown.length > 0) {
    throw new Error(
      `no bench section "${unknown[0]!.slice(0, 40)}": name one of ${Object.keys(ALONE).join(', ')}, or none to run them all`,
    );
  }
  if (only.length > 0) {
    const results: Result[] = [];
    for (const name of only) results.push(...(await ALONE[name]!()));
    printResults(results);
    console.log(
      JSON.stringify({
        bench: results.map((r) => ({ name: r.name, speedup: Number(r.speedup.toFixed(2)) })),
      }),
    );
    return;
  }
  const { dataDir, services } = await benchServices();
  const results: Result[] = [];
  try {
    const bench = await benchFleet(services);
    const { cohorts, candidateDigest, prod } = bench;
    const conn = services.db.connection;
    const fleet = createFleetActivities({
      conn,
      ota: services.ota,
      runner: services.runner,
      key: services.key,
      root: ROOT,
      ...(services.feed ? { feed: services.feed } : {}),
    });
    const analysis = createAnalysisActivities({ conn });
    const labels = createLabelActivities({ conn });
    const rolloutId = 'bench';
    const ref = { rolloutId, manifest: FLEET };

    // 1. Analysis look over a day of canary telemetry.
    await fleet.deliverWave({ ...ref, wave: 1, percent: 25, cohorts, digest: candidateDigest });
    const t0 = Date.UTC(2026, 0, 1);
    for (let h = 0; h < 24; h += 4) {
      await fleet.collectTelemetry({
        ...ref,
        cohorts,
        candidateDigest,
        fromMs: t0 + h * 3_600_000,
        toMs: t0 + (h + 4) * 3_600_000,
      });
    }
    const asOfMs = t0 + 36 * 3_600_000;
    await labels.labelCoverage({ rolloutId, asOfMs });
    const [count] = await rows(conn, 'SELECT count(*)::INTEGER AS n FROM events');
    const subject = await best(5, () => analysis.analyze({ rolloutId, phase: 'canary', cohorts, asOfMs }));
    const baseline = await best(3, async () => {
      const all = await rows(
        conn,
        `SELECT e.cohort, e.arm, e.pred_candidate, e.pred_production, e.lat_candidate, e.lat_production, l.label
         FROM events e LEFT JOIN labels l ON l.event_id = e.event_id AND l.arrived_at_ms <= ${asOfMs}
         WHERE e.rollout_id = '${rolloutId}' AND e.phase = 'canary' AND e.ts_ms < ${asOfMs}`,
      );
      const acc = new Map<
        string,
        { n: number; labeled: number; errors: number; sum: number; sumSq: number }
      >();
      for (const r of all) {
        const k = `${String(r.cohort)}|${String(r.arm)}`;
        const a = acc.get(k) ?? { n: 0, labeled: 0, errors: 0, sum: 0, sumSq: 0 };
        const cand = r.arm === 'candidate';
        const pred = Number(cand ? r.pred_candidate : r.pred_production);
        const lat = Number(cand ? r.lat_candidate : r.lat_production);
        a.n++;
        if (r.label !== null && r.label !== undefined) {
          a.labeled++;
          if (Number(r.label) !== pred) a.errors++;
        }
        a.sum += lat;
        a.sumSq += lat * lat;
        acc.set(k, a);
      }
      return acc;
    });
    // Both must agree before their speeds mean anything.
    for (const s of subject.value) {
      const b = baseline.value.get(`${s.cohort}|candidate`);
      if (!b || b.n !== s.candidate.events || b.errors !== s.candidate.errors) {
        throw new Error(`analysis and baseline disagree for ${s.cohort}`);
      }
    }
    results.push({
      name: `analysis look (${Number(count?.n)} events)`,
      subject: 'DuckDB aggregate',
      baseline: 'rows into JS',
      subjectMs: subject.ms,
      baselineMs: baseline.ms,
      speedup: baseline.ms / subject.ms,
      subjectHeapMB: subject.heapMB,
      baselineHeapMB: baseline.heapMB,
    });

    // 1b. A canary batch and its look on what a fleet sent, against the same look on events written in process.
    results.push(await lookBench(bench.look));

    // 2. Inference: 20,000 frames batched vs 2,000 frames one at a time (scaled to 20,000).
    const frames = generateFrames(makeRng('bench'), 20_000, 0.3);
    await services.runner.run(prod.digest, frames.features.slice(0, FEATURES), 1);
    const batched = await best(3, async () => {
      for (let i = 0; i < frames.count; i += 4096) {
        const n = Math.min(4096, frames.count - i);
        await services.runner.run(prod.digest, frames.features.slice(i * FEATURES, (i + n) * FEATURES), n);
      }
    });
    const single = await best(2, async () => {
      for (let i = 0; i < 2000; i++) {
        await services.runner.run(prod.digest, frames.features.slice(i * FEATURES, (i + 1) * FEATURES), 1);
      }
    });
    results.push({
      name: 'inference (20,000 frames)',
      subject: 'batches of 4096',
      baseline: 'one frame per run',
      subjectMs: batched.ms,
      baselineMs: single.ms * 10,
      speedup: (single.ms * 10) / batched.ms,
    });

    // 3. Assignment of a 200,000-vehicle cohort to a 25% wave.
    const ids = Array.from({ length: 200_000 }, (_, i) => pseudonym(services.key, `bench-${i}`));
    const fast = await best(3, async () => waveTargets(ids, services.key, 'bench-rollout', 25));
    const naive = await best(2, async () => {
      const ranked = ids.map((id) => ({
        id,
        rank: createHmac('sha256', services.key).update(`bench-rollout:canary${id}`).digest('hex'),
      }));
      ranked.sort((a, b) => (a.rank < b.rank ? -1 : a.rank > b.rank ? 1 : 0));
      return ranked.slice(0, Math.ceil(ids.length / 4)).map((r) => r.id);
    });
    results.push({
      name: 'wave assignment (200,000 vehicles)',
      subject: 'waveTargets',
      baseline: 'objects + HMAC hex sort',
      subjectMs: fast.ms,
      baselineMs: naive.ms,
      speedup: naive.ms / fast.ms,
      subjectHeapMB: fast.heapMB,
      baselineHeapMB: naive.heapMB,
    });
    // 4. Looks over a large event log: the first over everything, a later one over new rows only.
    results.push(...(await lookScaling(conn)));
    // 5. A 1,000,000-vehicle fleet: creating it, then targeting waves.
    results.push(...(await fleetScale()));
    // 6. Shadow: inference throughput against onnxruntime, and the vehicle's p99 with shadow on and off.
    results.push(...(await shadowBench(ROOT)));
    // 7. Verifying a signed pack with a 100 MB model, against sha256sum of its files.
    results.push(await packBench());
    // 8. The status page's first render with 50 rollouts listed, against the same page's empty list.
    results.push(await uiBench());
    // 9. The inference gateway against direct runs of its model, with mirroring, and overloaded.
    results.push(...(await serveBench(ROOT)));
    // 10. Ingestion over HTTP against the appender, the server's memory, and a rebuild against the write.
    results.push(...(await ingestBench(ROOT)));
  } finally {
    await services.close();
    rmSync(dataDir, { recursive: true, force: true });
  }

  printResults(results);
  const statistics = statisticsSection();
  printStatistics(statistics);
  const round = (x: number) => Number(x.toFixed(4));
  console.log(
    JSON.stringify({
      bench: results.map((r) => ({ name: r.name, speedup: Number(r.speedup.toFixed(2)) })),
      statistics: {
        ...statistics,
        rows: statistics.rows.map((r) => ({
          ...r,
          falseAlarmRate: round(r.falseAlarmRate),
          se: round(r.se),
          power: r.power.map(round),
          samplesRatio: r.samplesRatio.map(round),
        })),
      },
    }),
  );
}

/** The table of results: each column as wide as its longest entry, plus two spaces. */
function printResults(results: Result[]): void {
  const pad = (s: string, n: number) => s.padEnd(n);
  const width = (pick: (r: BenchRow) => string, head: string) =>
    Math.max(head.length, ...results.map((r) => pick(r).length)) + 2;
  const [wName, wSubject, wBaseline] = [
    width((r) => r.name, 'benchmark'),
    width((r) => r.subject, 'subject'),
    width((r) => r.baseline, 'baseline'),
  ];
  console.log(
    pad('benchmark', wName) +
      pad('subject', wSubject) +
      pad('baseline', wBaseline) +
      'speed-up   heap (subject / baseline)',
  );
  for (const r of results) {
    const heap =
      r.subjectHeapMB !== undefined
        ? `${r.subjectHeapMB.toFixed(1)} MB / ${r.baselineHeapMB!.toFixed(1)} MB`
        : '';
    console.log(
      pad(r.name, wName) +
        pad(r.subject, wSubject) +
        pad(r.baseline, wBaseline) +
        pad(`${r.speedup.toFixed(2)}x`, 11) +
        heap,
    );
  }
  console.log('');
}

type SimDesign = SimulationInput['design'];

/** Settings of the statistics section; every row uses the same seed, so designs see the same data. */
const STATS = {
  runs: 10_000,
  seed: 'fleetgate-bench',
  alpha: 0.05,
  sides: 1 as const,
  power: 0.8,
  /** Looks of SIM_LOOK_SIZE per arm: up to 10,000 per arm. */
  looks: 100,
  /** Minimum effect on the error rate, and twice it. */
  effects: [0.02, 0.04],
  designs: ['naive', 'msprt', 'ld-obf', 'ld-pocock', 'obf', 'pocock'] as SimDesign[],
};

interface StatisticsRow {
  design: SimDesign;
  looks: number;
  /** Share of A/A runs that rejected at some look, with its Monte Carlo standard error. */
  falseAlarmRate: number;
  se: number;
  /** Against α: within 2 standard errors, below (conservative) or above (inflated). */
  verdict: 'within 2 se' | 'conservative' | 'inflated';
  /** Per effect: share of runs that rejected, and mean samples per arm to a decision over nFixed. */
  power: number[];
  samplesRatio: number[];
}

interface StatisticsSection {
  runs: number;
  seed: string;
  alpha: number;
  sides: 1 | 2;
  baseline: number;
  lookSize: number;
  effects: number[];
  /** Fixed-horizon samples per arm for each effect at the same α, sides and power. */
  nFixed: number[];
  notes: string[];
  rows: StatisticsRow[];
}

/**
 * A/A false alarms, power and samples to a decision of each design, by `simulate` of cli/stats.ts.
 * Every design runs at STATS.looks (within MAX_LOOKS of policies/gsd.ts), on the same seeded data.
 */
function statisticsSection(): StatisticsSection {
  const { runs, seed, alpha, sides, effects } = STATS;
  const nFixed = effects.map((mde) => {
    const n = sampleSize({
      kind: 'proportion',
      baseline: SIM_BASELINE,
      mde,
      alpha,
      power: STATS.power,
      sides,
    });
    if (!n) throw new Error(`no fixed-horizon sample size for effect ${mde}`);
    return n.nPerArm;
  });
  const notes: string[] = [];
  if (STATS.looks > MAX_LOOKS) {
    throw new Error(`STATS.looks is ${STATS.looks}, but policies/gsd.ts allows at most ${MAX_LOOKS} looks`);
  }
  const plan = STATS.designs.map((design) => ({ design, looks: STATS.looks }));
  const rows = plan.map(({ design, looks }): StatisticsRow => {
    const run = (effect: number) => simulate({ design, effect, runs, looks, alpha, sides, seed });
    const aa = run(0).rejectionRate;
    const se = Math.sqrt((aa * (1 - aa)) / runs);
    const verdict = Math.abs(aa - alpha) <= 2 * se ? 'within 2 se' : aa < alpha ? 'conservative' : 'inflated';
    const alternatives = effects.map(run);
    return {
      design,
      looks,
      falseAlarmRate: aa,
      se,
      verdict,
      power: alternatives.map((r) => r.rejectionRate),
      samplesRatio: alternatives.map((r, i) => r.meanSamplesPerArm / nFixed[i]!),
    };
  });
  return {
    runs,
    seed,
    alpha,
    sides,
    baseline: SIM_BASELINE,
    lookSize: SIM_LOOK_SIZE,
    effects,
    nFixed,
    notes,
    rows,
  };
}

function printStatistics(s: StatisticsSection): void {
  const side = s.sides === 1 ? 'one-sided (harm)' : 'two-sided';
  console.log(
    `statistics: error rate ${s.baseline} in both arms (A/A) or ${s.effects.map((e) => `+${e}`).join(' / ')}, ` +
      `a look every ${s.lookSize} per arm, alpha ${s.alpha} ${side}, ${s.runs} runs per cell, seed "${s.seed}"`,
  );
  console.log(
    `fixed-horizon n per arm (power ${STATS.power}): ` +
      s.effects.map((e, i) => `${s.nFixed[i]} at +${e}`).join(', ') +
      '; E[n]/fixed = mean samples per arm to a decision (the last look when none) over that n',
  );
  for (const note of s.notes) console.log(`note: ${note}`);
  const header = [
    'design',
    'looks',
    'max/arm',
    'A/A false alarms',
    'MC se',
    `vs alpha ${s.alpha}`,
    ...s.effects.flatMap((e) => [`power +${e}`, `E[n]/fixed +${e}`]),
  ];
  const body = s.rows.map((r) => [
    r.design,
    String(r.looks),
    String(r.looks * s.lookSize),
    r.falseAlarmRate.toFixed(4),
    r.se.toFixed(4),
    r.verdict,
    ...r.power.flatMap((p, i) => [p.toFixed(3), `${r.samplesRatio[i]!.toFixed(2)}x`]),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === 0 || i === 5 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
      .join('  ')
      .trimEnd();
  console.log(line(header));
  for (const r of body) console.log(line(r));
}

/**
 * Synthesises a canary event log of BIG events (and labels for a third of them) straight in DuckDB,
 * written as ingestion writes telemetry: in batches of BATCH events (a third per cohort), each batch's
 * events, its statistics (`recordBatchStats`, what `logBatch` calls) and its `batches` row in one
 * transaction. Then times: the first look (`canaryLook`) against one plain GROUP BY over the same rows;
 * after NEW more events arrive, the next look against the first; and the ingestion of the BIG events
 * with their batch statistics against writing the same events alone (the same transactions less the
 * statistics statement), the cost the looks moved to ingestion. A look should cost about what a plain
 * aggregate costs, and a later look should follow the new rows, not the total. The baseline is the least
 * a look must do (count and latency sum per cohort and arm); a look also sums squares, ln(latency) and
 * its square, safety events and exposure per arm, and reads the labels that arrived.
 */
async function lookScaling(conn: DuckDBConnection): Promise<Result[]> {
  const BIG = Number(process.env.FLEETGATE_BENCH_EVENTS ?? 10_000_000);
  const NEW = Math.round(BIG / 10);
  const BATCH = 300_000;
  const rollout = 'bench-big';
  const ingestion = { batches: 0, ms: 0, statsMs: 0 };
  const since = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;
  // Event i at i * 10 ms: true class hash(i + 2) % 2; a safety event where the acting model missed a
  // true 1; each event 1/20 vehicle-hour. A third of the events get their label 1 s later, in the row
  // shape that ingestArrivedLabels writes (the event's look columns and each model's error copied in).
  const writeEvents = async (batchId: string, from: number, to: number) => {
    await conn.run(`
      INSERT INTO events
      SELECT 'b' || i, '${rollout}', '${batchId}', 'canary', 'c' || (i % 3), 'v' || (i % 20000), i * 10, arm,
             pc, pp, NULL, NULL,
             CASE WHEN arm = 'candidate' THEN 1 + (hash(i) % 100) / 100.0 END,
             CASE WHEN arm = 'production' THEN 1 + (hash(i) % 100) / 100.0 END,
             truth = 1 AND pc = 0, truth = 1 AND pp = 0, 1 / 20, 1.0, false
      FROM (
        SELECT i, CASE WHEN i % 10 < 2 THEN 'candidate' ELSE 'production' END AS arm,
               CASE WHEN i % 10 < 2 THEN (hash(i) % 2)::UTINYINT END AS pc,
               CASE WHEN i % 10 >= 2 THEN (hash(i + 1) % 2)::UTINYINT END AS pp,
               hash(i + 2) % 2 AS truth
        FROM range(${from}, ${to}) t(i)
      )`);
  };
  const insert = async (from: number, to: number) => {
    for (let lo = from; lo < to; lo += BATCH) {
      const hi = Math.min(to, lo + BATCH);
      const batch = { batchId: `${rollout}:canary:${lo * 10}-${hi * 10}`, fromMs: lo * 10, toMs: hi * 10 };
      const t0 = process.hrtime.bigint();
      await transaction(conn, async () => {
        await writeEvents(batch.batchId, lo, hi);
        const t1 = process.hrtime.bigint();
        await recordBatchStats(conn, { ...batch, rolloutId: rollout, phase: 'canary' });
        ingestion.statsMs += since(t1);
        await conn.run(`INSERT INTO batches VALUES ('${batch.batchId}', '${rollout}', 'canary', ${hi - lo})`);
      });
      ingestion.ms += since(t0);
      ingestion.batches++;
    }
    await conn.run(`
      INSERT INTO labels (event_id, rollout_id, label, arrived_at_ms,
                          phase, cohort, arm, ts_ms, err_candidate, err_production)
      SELECT event_id, rollout_id, label, ts_ms + 1000,
             phase, cohort, arm, ts_ms, pred_candidate <> label, pred_production <> label
      FROM (SELECT *, (hash(ts_ms // 10 + 2) % 2)::UTINYINT AS label FROM events
            WHERE rollout_id = '${rollout}' AND ts_ms >= ${from * 10} AND ts_ms < ${to * 10})
      WHERE (ts_ms // 10) % 3 = 0`);
  };
  await insert(0, BIG);
  const ingested = { ...ingestion };
  const firstAsOf = BIG * 10 + 5000;
  const first = await timed(() => canaryLook(conn, rollout, firstAsOf));
  const plain = await best(3, () =>
    rows(
      conn,
      `SELECT cohort, arm, count(*), sum(coalesce(lat_candidate, lat_production)) FROM events
       WHERE rollout_id = '${rollout}' GROUP BY ALL`,
    ),
  );
  await insert(BIG, BIG + NEW);
  const laterAsOf = (BIG + NEW) * 10 + 5000;
  const later = await timed(() => canaryLook(conn, rollout, laterAsOf));
  // What the later look would cost without the stored looks: the same statistics from every event.
  const full = await timed(() => canaryFull(conn, rollout, laterAsOf));
  const fmt = (n: number) => (n >= 1e6 ? `${n / 1e6}M` : `${n / 1e3}k`);
  return [
    {
      name: `first look (${fmt(BIG)} events)`,
      subject: 'canaryLook',
      baseline: 'plain GROUP BY',
      subjectMs: first.ms,
      baselineMs: plain.ms,
      speedup: plain.ms / first.ms,
    },
    {
      name: `later look (+${fmt(NEW)} new events)`,
      subject: 'canaryLook (new)',
      baseline: 'first look',
      subjectMs: later.ms,
      baselineMs: first.ms,
      speedup: first.ms / later.ms,
    },
    {
      name: `later look (+${fmt(NEW)} new events)`,
      subject: 'canaryLook (new)',
      baseline: `full query, ${fmt(BIG + NEW)} events`,
      subjectMs: later.ms,
      baselineMs: full.ms,
      speedup: full.ms / later.ms,
    },
    {
      name: `ingestion (${fmt(BIG)} events, ${ingested.batches} batches)`,
      subject: 'with batch_stats',
      baseline: 'events only',
      subjectMs: ingested.ms,
      baselineMs: ingested.ms - ingested.statsMs,
      speedup: (ingested.ms - ingested.statsMs) / ingested.ms,
    },
  ];
}

/**
 * A fleet of FLEETGATE_BENCH_VEHICLES (default 1,000,000) simulated vehicles in 4 cohorts, in a fresh
 * fleet database: `initSimFleet` (keyed pseudonyms and the `vehicles` rows) against a plain INSERT of as
 * many rows of the same shape into the same table, then `deliverWave` of 1% and of 25% (keyed ranking of
 * every vehicle, install draws, the OTA job, all inside the database) against sorting as many random keys
 * in JavaScript. Prints the peak growth of the resident set over the section: it must stay bounded (no
 * per-vehicle JavaScript objects), whatever the fleet's size.
 */
async function fleetScale(): Promise<Result[]> {
  const VEHICLES = Number(process.env.FLEETGATE_BENCH_VEHICLES ?? 1_000_000);
  const COHORTS = 4;
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-bench-fleet-'));
  const { rss: rss0, heapUsed: heap0 } = process.memoryUsage();
  let peak = rss0;
  let peakHeap = heap0;
  const sampler = setInterval(() => {
    const { rss, heapUsed } = process.memoryUsage();
    peak = Math.max(peak, rss);
    peakHeap = Math.max(peakHeap, heapUsed);
  }, 10);
  const key = Buffer.alloc(32, 0x5a);
  const cohorts = Array.from({ length: COHORTS }, (_, i) => `c${i}/bench`);
  writeFileSync(
    join(dir, 'fleet.yaml'),
    [
      'apiVersion: fleetgate/v1',
      'kind: Fleet',
      'name: bigfleet',
      'skus: [{ name: hw3, speedFactor: 10, latencyBudgetMs: 10, installFailureRate: 0.02 }]',
      'cohorts:',
      ...cohorts.map(
        (c) =>
          `  - { name: ${c}, sku: hw3, region: eu, vehicles: ${Math.ceil(VEHICLES / COHORTS)}, nightShare: 0.2, availability: { online: 0.9 } }`,
      ),
      'labels: { rate: 0.1, delay: 1h }',
    ].join('\n'),
  );
  const total = Math.ceil(VEHICLES / COHORTS) * COHORTS;
  const digest = 'd'.repeat(64);
  const out: Result[] = [];
  try {
    const plainDb = await openFleetDatabase(join(dir, 'plain.duckdb'));
    const plain = await timed(() =>
      transaction(plainDb.connection, () =>
        plainDb.connection.run(
          `INSERT INTO vehicles SELECT 'bigfleet', 'c' || (i % ${COHORTS}) || '/bench', 'hw3',
                  substr(sha256(i::VARCHAR), 1, 20), '${digest}', NULL, 'a' FROM range(${total}) t(i)`,
        ),
      ),
    );
    await plainDb.close();
    const db = await openFleetDatabase(join(dir, 'fleet.duckdb'));
    let writer: EventWriter | undefined;
    try {
      const conn = db.connection;
      const init = await timed(() =>
        initSimFleet(
          { conn, key, root: dir },
          'fleet.yaml',
          Object.fromEntries(cohorts.map((c) => [c, digest])),
        ),
      );
      const rng = makeRng('bench-sort');
      const sort = await best(3, async () => {
        const keys = new Float64Array(total);
        for (let i = 0; i < total; i++) keys[i] = rng();
        return keys.sort();
      });
      const unusedRunner = {
        run: () => Promise.reject(new Error('no inference here')),
        contract: () => Promise.reject(new Error('no inference here')),
        modelBytes: () => Promise.reject(new Error('no inference here')),
        close: async () => undefined,
      };
      const ota = new SimulatedOta(conn);
      writer = await EventWriter.attach(db.instance);
      const feed = await SimulatedFleetFeed.create({ conn, ota, runner: unusedRunner, writer, key });
      const fleet = createFleetActivities({ conn, ota, runner: unusedRunner, key, root: dir, feed });
      const ref = { rolloutId: 'bench-fleet', manifest: 'fleet.yaml', cohorts, digest: 'e'.repeat(64) };
      const wave1 = await timed(() => fleet.deliverWave({ ...ref, wave: 1, percent: 1 }));
      const wave2 = await timed(() => fleet.deliverWave({ ...ref, wave: 2, percent: 25 }));
      const fmt = (n: number) => (n >= 1e6 ? `${n / 1e6}M` : `${n / 1e3}k`);
      out.push(
        {
          name: `fleet init (${fmt(total)} vehicles)`,
          subject: 'initSimFleet',
          baseline: 'plain INSERT, same rows',
          subjectMs: init.ms,
          baselineMs: plain.ms,
          speedup: plain.ms / init.ms,
        },
        ...[wave1, wave2].map((w, i) => ({
          name: `wave ${i === 0 ? '1%' : '25%'} (${fmt(total)} vehicles)`,
          subject: 'deliverWave',
          baseline: `sort ${fmt(total)} keys in JS`,
          subjectMs: w.ms,
          baselineMs: sort.ms,
          speedup: sort.ms / w.ms,
        })),
      );
      clearInterval(sampler);
      console.log(
        `fleet scale (${fmt(total)} vehicles, ${COHORTS} cohorts): init ${(init.ms / 1000).toFixed(1)} s ` +
          `(plain INSERT ${(plain.ms / 1000).toFixed(1)} s), wave 1% ${(wave1.ms / 1000).toFixed(1)} s, ` +
          `wave 25% ${(wave2.ms / 1000).toFixed(1)} s (sort ${sort.ms.toFixed(0)} ms); ` +
          `peak RSS growth ${((peak - rss0) / 2 ** 20).toFixed(0)} MB ` +
          `(JavaScript heap ${((peakHeap - heap0) / 2 ** 20).toFixed(0)} MB; the rest is DuckDB's buffer pool)`,
      );
    } finally {
      await writer?.close();
      await db.close();
    }
  } finally {
    clearInterval(sampler);
    rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

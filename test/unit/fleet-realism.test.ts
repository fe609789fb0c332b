/**
 * The simulated fleet's realism, on real onnxruntime sessions of the fixture models and a real DuckDB
 * file: rain and sensor noise raise the models' error rates (and rain hurts the camera-heavy
 * candidate-regress more than production); drift changes a cohort's conditions from its time after the
 * rollout's start; installs fail and are deferred at the configured shares, deterministically, and only
 * installed vehicles run (and report on) the candidate; a SKU's slowdown of a model version fails the
 * bench on that SKU only and slows that version's fleet latency there.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { DuckDBConnection } from '@duckdb/node-api';
import { num, openFleetDatabase, rows } from '../../activities/db';
import type { FleetDatabase } from '../../activities/db';
import { conditionsAt, createFleetActivities, initSimFleet } from '../../activities/fleet';
import { createInferenceActivities } from '../../activities/inference';
import { FleetManifest } from '../../policies/schema';
import type { Sku } from '../../policies/schema';
import { generateFrames } from '../../sim/frames';
import { makeRng } from '../../policies/rng';
import type { FrameConditions, Frames } from '../../sim/frames';
import { installOutcomes } from '../../sim/ota';
import { INSTALL } from '../../activities/deps';
import type { EventWriter } from '../../events/writer';
import { OnnxModelRunner } from '../../workers/model-runner';
import { simulatedFleet, T0 } from '../feed-support';

const ROOT = resolve(__dirname, '..', '..');
const HOUR = 3_600_000;
const KEY = Buffer.from('3c'.repeat(32), 'hex');

function model(pack: string): { bytes: Buffer; digest: string; version: string } {
  const bytes = readFileSync(join(ROOT, 'models', pack, 'model.onnx'));
  const manifest = JSON.parse(readFileSync(join(ROOT, 'models', pack, 'manifest.json'), 'utf8')) as {
    version: string;
  };
  return { bytes, digest: createHash('sha256').update(bytes).digest('hex'), version: manifest.version };
}

const production = model('production');
const good = model('candidate-good');
const regress = model('candidate-regress');

async function one(conn: DuckDBConnection, sql: string, params: (string | number)[] = []): Promise<number> {
  const [row] = await rows(conn, sql, params);
  return num(row ? Object.values(row)[0] : 0);
}

/** |observed - p| within `z` binomial standard errors of n draws. */
function withinBinomial(observed: number, p: number, n: number, z = 4): boolean {
  return Math.abs(observed - p) <= z * Math.sqrt((p * (1 - p)) / n) + 1e-12;
}

let runner: OnnxModelRunner;
before(() => {
  const blobs = new Map([production, good, regress].map((m) => [m.digest, m.bytes]));
  runner = new OnnxModelRunner(async (digest) => blobs.get(digest));
});
after(async () => {
  await runner.close();
});

void describe('frames under rain and sensor noise', () => {
  const FRAMES = 20_000;

  async function errorRate(digest: string, frames: Frames): Promise<number> {
    const { probs } = await runner.run(digest, frames.features, frames.count);
    let wrong = 0;
    for (let i = 0; i < frames.count; i++) {
      if ((probs[2 * i + 1]! > probs[2 * i]! ? 1 : 0) !== frames.labels[i]) wrong++;
    }
    return wrong / frames.count;
  }

  void it('dry, nominal conditions give the frames of before rain existed, bit for bit', () => {
    // sha256 of these frames as the generator drew them before rainShare and sensorNoise existed.
    const before = 'f1ae779eed74ee498536cc3a1d75b20dcee76ad5a78e815ea3617d24670b7ef7';
    for (const [a, b] of [
      [0.37, 1],
      [{ nightShare: 0.37, rainShare: 0, sensorNoise: 1 }, { nightShare: 1 }],
    ] as const) {
      const f = generateFrames(makeRng('x'), 50_000, a);
      const g = generateFrames(makeRng('y'), 50_000, b);
      const hash = createHash('sha256')
        .update(Buffer.from(f.features.buffer))
        .update(f.labels)
        .update(Buffer.from(g.features.buffer))
        .digest('hex');
      assert.equal(hash, before);
      assert.equal(
        f.rain.reduce((n, r) => n + r, 0),
        0,
      );
    }
  });

  void it('draws rain at its share', () => {
    const f = generateFrames(makeRng('rain-share'), FRAMES, { nightShare: 0.3, rainShare: 0.25 });
    const rain = f.rain.reduce((n, r) => n + r, 0) / FRAMES;
    assert.ok(withinBinomial(rain, 0.25, FRAMES), `rain share ${rain}`);
  });

  void it('rain and sensor noise raise error rates; rain hurts candidate-regress more than production', async (t) => {
    const conditions: Record<string, FrameConditions> = {
      day: { nightShare: 0 },
      'day, rain': { nightShare: 0, rainShare: 1 },
      'day, noise x2': { nightShare: 0, sensorNoise: 2 },
    };
    const rates: Record<string, Record<string, number>> = {};
    for (const [name, c] of Object.entries(conditions)) {
      const frames = generateFrames(makeRng(`realism-${name}`), FRAMES, c);
      rates[name] = {
        production: await errorRate(production.digest, frames),
        good: await errorRate(good.digest, frames),
        regress: await errorRate(regress.digest, frames),
      };
      t.diagnostic(
        `${name.padEnd(14)} ` +
          Object.entries(rates[name])
            .map(([m, r]) => `${m} ${(100 * r).toFixed(2)}%`)
            .join('  '),
      );
    }
    const day = rates.day!;
    const rain = rates['day, rain']!;
    const noise = rates['day, noise x2']!;
    for (const m of ['production', 'good', 'regress']) {
      assert.ok(rain[m]! >= day[m]! + 0.04, `${m}: rain ${rain[m]} vs dry ${day[m]}`);
      assert.ok(noise[m]! >= day[m]! + 0.04, `${m}: noise ${noise[m]} vs nominal ${day[m]}`);
    }
    // By day candidate-regress beats production; in rain, which fades the camera it leans on, it is
    // clearly worse: a cohort-specific regression, as at night.
    assert.ok(day.regress! < day.production!);
    assert.ok(rain.regress! - day.regress! >= rain.production! - day.production! + 0.08);
    assert.ok(
      rain.regress! >= rain.production! + 0.05,
      `regress ${rain.regress} production ${rain.production}`,
    );
  });
});

const A = 'hw3/eu';
const B = 'hw4/us';
const SIZES = { [A]: 20_000, [B]: 2_000 } as const;
const AVAILABILITY = { online: 0.8, parked: 0.9, batteryOk: 0.95 };
const FAILURE_RATE = 0.1;
const SLOWDOWN = 3;

const MANIFEST = `apiVersion: fleetgate/v1
kind: Fleet
name: realism
seed: 11
skus:
  - name: hw3
    speedFactor: 10
    latencyBudgetMs: 50
    installFailureRate: ${FAILURE_RATE}
    slowdown: [{ version: "${regress.version}", factor: ${SLOWDOWN} }]
  - { name: hw4, speedFactor: 4, latencyBudgetMs: 50 }
cohorts:
  - name: ${A}
    sku: hw3
    region: eu
    vehicles: ${SIZES[A]}
    nightShare: 0
    availability: { online: ${AVAILABILITY.online}, parked: ${AVAILABILITY.parked}, batteryOk: ${AVAILABILITY.batteryOk} }
  - { name: ${B}, sku: hw4, region: us, vehicles: ${SIZES[B]}, nightShare: 0 }
eventsPerVehicleHour: 0.5
drift:
  - { at: 2h, cohorts: [${A}], conditions: { rainShare: 1, sensorNoise: 1.5 } }
labels: { rate: 0.2, delay: 1h }
`;

void describe('drift', () => {
  const manifest = FleetManifest.parse({
    apiVersion: 'fleetgate/v1',
    kind: 'Fleet',
    name: 'd',
    skus: [{ name: 'hw3', speedFactor: 1, latencyBudgetMs: 5 }],
    cohorts: [
      { name: 'a/x', sku: 'hw3', region: 'eu', vehicles: 10, nightShare: 0.1, rainShare: 0.2 },
      { name: 'b/x', sku: 'hw3', region: 'eu', vehicles: 10, nightShare: 0.3 },
    ],
    drift: [
      { at: '3h', conditions: { sensorNoise: 2 } },
      { at: '1h', cohorts: ['a/x'], conditions: { rainShare: 0.9, nightShare: 0.5 } },
    ],
    labels: { rate: 0.1, delay: '1h' },
  });

  void it('changes a cohort conditions at start + at, in order of at, for the cohorts it names', () => {
    const start = 1_000_000;
    const a = conditionsAt(manifest, manifest.cohorts[0]!, start);
    const b = conditionsAt(manifest, manifest.cohorts[1]!, start);
    assert.deepEqual(a(start + HOUR - 1), { nightShare: 0.1, rainShare: 0.2, sensorNoise: 1 });
    assert.deepEqual(a(start + HOUR), { nightShare: 0.5, rainShare: 0.9, sensorNoise: 1 });
    assert.deepEqual(a(start + 3 * HOUR), { nightShare: 0.5, rainShare: 0.9, sensorNoise: 2 });
    assert.deepEqual(b(start + 2 * HOUR), { nightShare: 0.3, rainShare: 0, sensorNoise: 1 });
    assert.deepEqual(b(start + 3 * HOUR), { nightShare: 0.3, rainShare: 0, sensorNoise: 2 });
    assert.deepEqual(b(start - HOUR), { nightShare: 0.3, rainShare: 0, sensorNoise: 1 });
  });
});

void describe('the realistic simulated fleet', () => {
  let dir: string;
  let db: FleetDatabase;
  let conn: DuckDBConnection;
  let writer: EventWriter;
  let fleet: ReturnType<typeof createFleetActivities>;
  const base = { manifest: 'fleet.yaml' };
  const versions = Object.fromEntries([production, regress].map((m) => [m.digest, m.version]));

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fleetgate-realism-'));
    writeFileSync(join(dir, 'fleet.yaml'), MANIFEST);
    db = await openFleetDatabase(join(dir, 'fleet.duckdb'));
    conn = db.connection;
    const sim = await simulatedFleet(db, runner, KEY);
    writer = sim.writer;
    fleet = createFleetActivities({ conn, ota: sim.ota, runner, key: KEY, root: dir, feed: sim.feed });
    await initSimFleet({ conn, key: KEY, root: dir }, 'fleet.yaml', {
      [A]: production.digest,
      [B]: production.digest,
    });
  });

  after(async () => {
    await writer.close();
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Production's error rate per cohort before and after `splitMs` in a batch, from the ground truth. */
  async function errorsAround(batchId: string, splitMs: number) {
    const found = await rows(
      conn,
      `SELECT e.cohort, e.ts_ms >= ? AS late, avg((e.pred_production <> t.truth)::INTEGER) AS err, count(*) AS n
       FROM events e JOIN sim_labeler t USING (event_id)
       WHERE e.batch_id = ? AND e.arm = 'production' GROUP BY ALL`,
      [splitMs, batchId],
    );
    const out: Record<string, { early: number; late: number; n: number }> = {};
    for (const r of found) {
      const o = (out[String(r.cohort)] ??= { early: NaN, late: NaN, n: 0 });
      o[r.late ? 'late' : 'early'] = Number(r.err);
      o.n += num(r.n);
    }
    return out;
  }

  void it('drifts the named cohort from start + at on, and no other', async () => {
    const start = T0 + 10 * HOUR;
    const r = await fleet.collectTelemetry({
      rolloutId: 'drift',
      ...base,
      cohorts: [A, B],
      candidateDigest: regress.digest,
      fromMs: start,
      toMs: start + 4 * HOUR,
      startMs: start,
    });
    assert.equal(r.written, true);
    const e = await errorsAround(r.batchId, start + 2 * HOUR);
    // Dry by day production errs ~11%; in rain with 1.5x sensor noise well above 20%.
    assert.ok(e[A]!.early < 0.14 && e[A]!.late > 0.2, JSON.stringify(e[A]));
    assert.ok(Math.abs(e[B]!.late - e[B]!.early) < 0.04, JSON.stringify(e[B]));
  });

  void it('without startMs, drift counts from the rollout first batch', async () => {
    const start = T0 + 100 * HOUR;
    const ref = { rolloutId: 'drift2', ...base, cohorts: [A], candidateDigest: regress.digest };
    await fleet.collectTelemetry({ ...ref, fromMs: start, toMs: start + HOUR });
    const r = await fleet.collectTelemetry({ ...ref, fromMs: start + HOUR, toMs: start + 4 * HOUR });
    const e = await errorsAround(r.batchId, start + 2 * HOUR);
    assert.ok(e[A]!.early < 0.14 && e[A]!.late > 0.2, JSON.stringify(e[A]));
    // Given explicitly, an earlier start moves the drift earlier: all of this window is drifted.
    const shifted = await fleet.collectTelemetry({
      ...ref,
      rolloutId: 'drift3',
      fromMs: start + HOUR,
      toMs: start + 2 * HOUR,
      startMs: start - 5 * HOUR,
    });
    const s = await errorsAround(shifted.batchId, start + HOUR);
    assert.ok(s[A]!.late > 0.2 && Number.isNaN(s[A]!.early), JSON.stringify(s[A]));
  });

  const wave1 = { rolloutId: 'inst', ...base, wave: 1, percent: 50, cohorts: [A, B], digest: regress.digest };

  void it('defers and fails installs at the configured shares, once, and installs only the rest', async () => {
    const first = await fleet.deliverWave(wave1);
    const a = first.installs![A]!;
    const b = first.installs![B]!;
    assert.equal(a.targeted, SIZES[A] / 2);
    assert.deepEqual(b, { targeted: SIZES[B] / 2, failed: 0, deferred: 0 });
    const pDeferred = 1 - AVAILABILITY.online * AVAILABILITY.parked * AVAILABILITY.batteryOk;
    assert.ok(withinBinomial(a.deferred / a.targeted, pDeferred, a.targeted), JSON.stringify(a));
    const attempted = a.targeted - a.deferred;
    assert.ok(withinBinomial(a.failed / attempted, FAILURE_RATE, attempted), JSON.stringify(a));
    const installed = a.targeted - a.failed - a.deferred;
    assert.deepEqual(first.vehicles, { [A]: installed, [B]: SIZES[B] / 2 });

    // A retry returns the same result and installs nothing twice.
    assert.deepEqual(await fleet.deliverWave(wave1), first);
    assert.equal(await one(conn, `SELECT count(*) FROM ota_ops WHERE job_id = 'inst-w1'`), 2);
    assert.equal(
      await one(conn, `SELECT count(*) FROM ota_targets WHERE job_id = 'inst-w1' AND cohort = ?`, [A]),
      installed,
    );
    assert.equal(
      await one(
        conn,
        `SELECT count(*) FROM vehicles WHERE cohort = ? AND (CASE active WHEN 'a' THEN slot_a ELSE slot_b END) = ?`,
        [A, regress.digest],
      ),
      installed,
    );
    // Failed and deferred vehicles kept their slots untouched.
    assert.equal(
      await one(
        conn,
        `SELECT count(*) FROM vehicles v WHERE cohort = ? AND active = 'a' AND slot_b IS NULL AND slot_a = ?
         AND NOT EXISTS (SELECT 1 FROM ota_targets t WHERE t.vehicle = v.vehicle)`,
        [A, production.digest],
      ),
      SIZES[A] - installed,
    );
  });

  void it('decides each vehicle the same whatever the order, and independently per wave', async () => {
    const targets = (await rows(conn, `SELECT vehicle FROM vehicles WHERE cohort = ? LIMIT 5000`, [A])).map(
      (r) => String(r.vehicle),
    );
    const model = { availability: { ...AVAILABILITY }, installFailureRate: FAILURE_RATE };
    const forward = installOutcomes(KEY, 'inst', 1, targets, model);
    const reversed = installOutcomes(KEY, 'inst', 1, [...targets].reverse(), model).reverse();
    assert.deepEqual(forward, reversed);
    const wave2 = installOutcomes(KEY, 'inst', 2, targets, model);
    let same = 0;
    for (let i = 0; i < targets.length; i++) if (forward[i] === wave2[i]) same++;
    assert.ok(same < 0.8 * targets.length, `${same} of ${targets.length} identical across waves`);
    const perfect = installOutcomes(KEY, 'inst', 1, targets, {
      availability: { online: 1, parked: 1, batteryOk: 1 },
      installFailureRate: 0,
    });
    assert.ok(perfect.every((o) => o === INSTALL.installed));
  });

  void it('reports telemetry of the candidate from installed vehicles only, slowed on its SKU', async () => {
    const ref = { rolloutId: 'inst', ...base, cohorts: [A, B], candidateDigest: regress.digest, startMs: T0 };
    // Before the drift (at 2h): dry frames.
    const slowed = await fleet.collectTelemetry({ ...ref, fromMs: T0, toMs: T0 + HOUR / 2, versions });
    const plain = await fleet.collectTelemetry({ ...ref, fromMs: T0 + HOUR / 2, toMs: T0 + HOUR });
    assert.equal(
      await one(
        conn,
        `SELECT count(*) FROM events e WHERE e.rollout_id = 'inst' AND e.arm = 'candidate'
         AND NOT EXISTS (SELECT 1 FROM ota_targets t WHERE t.job_id = 'inst-w1' AND t.vehicle = e.vehicle)`,
      ),
      0,
    );
    const candidateVehicles = await one(
      conn,
      `SELECT count(DISTINCT vehicle) FROM events WHERE rollout_id = 'inst' AND arm = 'candidate' AND cohort = ?`,
      [A],
    );
    assert.ok(candidateVehicles > 1000, `${candidateVehicles} candidate vehicles reported`);
    // The never-installed vehicles of cohort A report production.
    assert.ok(
      (await one(
        conn,
        `SELECT count(*) FROM events WHERE rollout_id = 'inst' AND arm = 'production' AND cohort = ?`,
        [A],
      )) > 0,
    );
    const meanLatency = async (batchId: string, cohort: string, arm: 'candidate' | 'production') =>
      one(conn, `SELECT avg(lat_${arm}) FROM events WHERE batch_id = ? AND cohort = ? AND arm = ?`, [
        batchId,
        cohort,
        arm,
      ]);
    // The slowed version on hw3 (cohort A): SLOWDOWN times slower; on hw4, and production, unchanged.
    const ratio = async (cohort: string, arm: 'candidate' | 'production') =>
      (await meanLatency(slowed.batchId, cohort, arm)) / (await meanLatency(plain.batchId, cohort, arm));
    const rA = await ratio(A, 'candidate');
    assert.ok(Math.abs(rA / SLOWDOWN - 1) < 0.05, `hw3 candidate latency ratio ${rA}`);
    for (const [cohort, arm] of [
      [A, 'production'],
      [B, 'candidate'],
      [B, 'production'],
    ] as const) {
      const r = await ratio(cohort, arm);
      assert.ok(Math.abs(r - 1) < 0.05, `${cohort} ${arm} latency ratio ${r}`);
    }
  });

  void it('reverts only the vehicles that installed, and the next wave retries the others', async () => {
    const installed = await one(
      conn,
      `SELECT count(*) FROM ota_targets WHERE job_id = 'inst-w1' AND cohort = ?`,
      [A],
    );
    const wave2 = await fleet.deliverWave({ ...wave1, wave: 2, percent: 60, cohorts: [A] });
    const a2 = wave2.installs![A]!;
    // Wave 2 targets the 60% less those running the candidate: the new 10% and wave 1's failures and deferrals.
    assert.equal(a2.targeted, 0.6 * SIZES[A] - installed);
    assert.deepEqual(await fleet.revertWave({ ...wave1, wave: 1, cohorts: [A] }), { reverted: installed });
    assert.equal(
      await one(
        conn,
        `SELECT count(*) FROM vehicles WHERE cohort = ? AND (CASE active WHEN 'a' THEN slot_a ELSE slot_b END) = ?`,
        [A, regress.digest],
      ),
      a2.targeted - a2.failed - a2.deferred,
    );
  });
});

void describe('bench under a SKU slowdown', () => {
  const sku = (name: string, budget: number, slowdown: Sku['slowdown']): Sku => ({
    name,
    speedFactor: 1,
    latencyBudgetMs: budget,
    intraOpThreads: 1,
    graphOptimization: 'all',
    installFailureRate: 0,
    slowdown,
  });

  void it('fails the budget on the slowed SKU only, and only for the slowed version', async () => {
    const { benchModel } = createInferenceActivities({ runner });
    const input = { rolloutId: 'r', digest: regress.digest, goldenInputs: 64, repeats: 3 };
    const calibrate = await benchModel({ ...input, sku: sku('hw4', 1e6, []) });
    // A budget 50 times what this host measures; the slowdown is 1000 times.
    const budget = 50 * calibrate.p95Ms;
    const slow = [{ version: regress.version, factor: 1000 }];
    const onSlowed = await benchModel({ ...input, version: regress.version, sku: sku('hw3', budget, slow) });
    const onOther = await benchModel({ ...input, version: regress.version, sku: sku('hw4', budget, []) });
    const otherVersion = await benchModel({ ...input, version: '9.9.9', sku: sku('hw3', budget, slow) });
    const unversioned = await benchModel({ ...input, sku: sku('hw3', budget, slow) });
    assert.equal(onSlowed.passed, false);
    assert.match(
      onSlowed.reason ?? '',
      /exceeds the budget .* on hw3 \(speed factor 1, slowdown x1000 of version 1\.2\.0/,
    );
    for (const r of [onOther, otherVersion, unversioned]) assert.equal(r.passed, true, r.reason);
  });
});

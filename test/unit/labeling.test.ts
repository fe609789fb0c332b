/**
 * Labeling on a real DuckDB file with real onnxruntime sessions of the fixture models: requests in tiers
 * (disagreement, rare, low confidence, sample) within a daily budget paced over the simulated day, the
 * inclusion probability of each request (weighted estimates over labeled events are unbiased, unweighted
 * ones are not), a labeler that is wrong as often as the manifest says while the truth stays apart,
 * idempotent batches, and label coverage per cohort with maturity.
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
import { createFleetActivities, initSimFleet } from '../../activities/fleet';
import {
  budgetRequests,
  chooseWithinBudget,
  createLabelActivities,
  DAY_MS,
  LABEL_TIERS,
  labelerAnswer,
  NO_TIER,
  pacedBudget,
  tierBase,
} from '../../activities/labels';
import { FleetManifest, formatIssues, Policy } from '../../policies/schema';
import { makeRng } from '../../policies/rng';
import type { EventWriter } from '../../events/writer';
import { OnnxModelRunner } from '../../workers/model-runner';
import { loadPseudonymKey } from '../../workers/secrets';
import { loadPolicy } from '../support';
import { simulatedFleet, T0 } from '../feed-support';

const ROOT = resolve(__dirname, '..', '..');
const HOUR = 3_600_000;
const A = 'hw3/eu';
const B = 'hw4/nordic';
const BUDGET = 4800;

function manifest(name: string, labels: string): string {
  return `apiVersion: fleetgate/v1
kind: Fleet
name: ${name}
seed: 7
skus:
  - { name: hw3, speedFactor: 40, latencyBudgetMs: 50 }
  - { name: hw4, speedFactor: 15, latencyBudgetMs: 50 }
cohorts:
  - { name: ${A}, sku: hw3, region: eu, vehicles: 80, nightShare: 0.1 }
  - { name: ${B}, sku: hw4, region: nordic, vehicles: 40, nightShare: 0.8 }
eventsPerVehicleHour: 10
labels: ${labels}
`;
}

function model(pack: string): { bytes: Buffer; digest: string } {
  const bytes = readFileSync(join(ROOT, 'models', pack, 'model.onnx'));
  return { bytes, digest: createHash('sha256').update(bytes).digest('hex') };
}

async function one(conn: DuckDBConnection, sql: string, params: (string | number)[] = []): Promise<number> {
  const [row] = await rows(conn, sql, params);
  return num(row ? Object.values(row)[0] : 0);
}

/** Each logged event's tier as the fleet activities define it, except 'sample' (a seeded draw). */
const TIER_SQL = `CASE
  WHEN e.pred_candidate <> e.pred_production THEN 'disagreement'
  WHEN e.pred_candidate = 1 OR e.pred_production = 1 OR e.safety_candidate OR e.safety_production THEN 'rare'
  WHEN least(e.conf_candidate, e.conf_production) < 0.6 THEN 'low_confidence'
  ELSE 'other' END`;

void describe('choosing requests within a budget (pure)', () => {
  const rng = () => makeRng('t');
  const cases: {
    name: string;
    tiers: number[];
    allowance: number | null;
    kept: number[];
    inclusion: number[];
  }[] = [
    {
      name: 'no budget keeps every candidate at its base inclusion',
      tiers: [0, 1, 2, 3, NO_TIER],
      allowance: null,
      kept: [1, 1, 1, 1],
      inclusion: [1, 1, 1, 0.25],
    },
    {
      name: 'whole tiers while they fit, then a cut tier, then nothing',
      tiers: [3, 3, 2, 2, 2, 2, 1, 0, 0, NO_TIER],
      allowance: 5,
      kept: [2, 1, 2, 0],
      inclusion: [1, 1, 0.5, 0],
    },
    {
      name: 'a cut first tier takes the whole allowance',
      tiers: [0, 0, 0, 0, 1, 3],
      allowance: 1,
      kept: [1, 0, 0, 0],
      inclusion: [0.25, 0, 0, 0],
    },
    {
      name: 'a cut sample tier: rate times the share kept',
      tiers: [1, 3, 3, 3, 3],
      allowance: 3,
      kept: [0, 1, 0, 2],
      inclusion: [0, 1, 0, 0.125],
    },
    {
      name: 'nothing allowed, nothing requested',
      tiers: [0, 1, 2, 3],
      allowance: 0,
      kept: [0, 0, 0, 0],
      inclusion: [0, 0, 0, 0],
    },
  ];
  for (const c of cases) {
    void it(c.name, () => {
      const plan = chooseWithinBudget(c.tiers, tierBase(0.25), c.allowance, rng());
      const kept = LABEL_TIERS.map((_, t) => c.tiers.filter((x, i) => x === t && plan.keep[i]).length);
      assert.deepEqual(kept, c.kept);
      c.tiers.forEach((t, i) => {
        if (t === NO_TIER || !plan.keep[i]) assert.equal(plan.inclusion[i], 0);
        else assert.equal(plan.inclusion[i], c.inclusion[t]);
      });
      assert.deepEqual(chooseWithinBudget(c.tiers, tierBase(0.25), c.allowance, rng()), plan, 'seeded');
    });
  }

  void it('paces the daily budget over the day', () => {
    assert.equal(pacedBudget(240, 0, 0), 0);
    assert.equal(pacedBudget(240, 0, 6 * HOUR), 60);
    assert.equal(pacedBudget(240, 0, 24 * HOUR), 240);
    assert.equal(pacedBudget(240, 0, 30 * HOUR), 240);
    assert.equal(pacedBudget(240, 1, 30 * HOUR), 60);
    assert.equal(pacedBudget(240, 2, 30 * HOUR), 0);
  });

  void it('answers wrong as often as the noise says, with the other class', () => {
    const r = makeRng('noise');
    let wrong = 0;
    const n = 20_000;
    for (let i = 0; i < n; i++) {
      const truth = i % 2;
      const answer = labelerAnswer(truth, 0.15, r);
      assert.ok(answer === 0 || answer === 1);
      if (answer !== truth) wrong++;
    }
    assert.ok(Math.abs(wrong / n - 0.15) < 4 * Math.sqrt((0.15 * 0.85) / n), `${wrong / n}`);
    assert.equal(
      labelerAnswer(1, 0, () => assert.fail('no draw without noise')),
      1,
    );
  });
});

void describe('inclusion probabilities weight labeled events back to every logged event', () => {
  let db: FleetDatabase;
  before(async () => {
    db = await openFleetDatabase(':memory:');
  });
  after(async () => {
    await db.close();
  });

  void it('the weighted error rate is unbiased over seeds; the unweighted one is not', async () => {
    // A day of logged events: disagreements err often, rare ones sometimes, the rest seldom. The budget
    // takes the three priority tiers whole and cuts the sample, so every event has a chance: a tier
    // left out entirely would have inclusion 0, and no weighting can stand in for it.
    const pop = makeRng('population');
    const n = 3000;
    const tier = new Uint8Array(n);
    const err = new Uint8Array(n);
    const at = new Float64Array(n);
    const errRate = [0.5, 0.2, 0.1, 0.02];
    for (let i = 0; i < n; i++) {
      const u = pop();
      tier[i] = u < 0.1 ? 0 : u < 0.3 ? 1 : u < 0.5 ? 2 : 3;
      err[i] = pop() < errRate[tier[i]!]! ? 1 : 0;
      at[i] = Math.floor(pop() * DAY_MS);
    }
    const truth = err.reduce((s, e) => s + e, 0) / n;
    const rate = 0.3;
    const seeds = 300;
    let weighted = 0;
    let unweighted = 0;
    for (let s = 0; s < seeds; s++) {
      // The batch's own draws: which of the 'sample' tier were drawn into the rate sample.
      const draw = makeRng(`sample|${s}`);
      const tiers = Uint8Array.from(tier, (t) => (t === 3 ? (draw() < rate ? 3 : NO_TIER) : t));
      const plan = await budgetRequests(
        db.connection,
        { rolloutId: `ipw-${s}`, seed: `seed-${s}`, toMs: DAY_MS, dailyBudget: 1700, rate },
        tiers,
        at,
      );
      let ht = 0;
      let k = 0;
      let e = 0;
      for (let i = 0; i < n; i++) {
        if (!plan.keep[i]) continue;
        ht += err[i]! / plan.inclusion[i]!;
        k++;
        e += err[i]!;
      }
      assert.equal(k, 1700, 'the budget is used up, never exceeded');
      weighted += ht / n;
      unweighted += e / k;
    }
    weighted /= seeds;
    unweighted /= seeds;
    assert.ok(Math.abs(weighted - truth) < 0.006, `weighted ${weighted} vs ${truth}`);
    assert.ok(unweighted - truth > 0.05, `unweighted ${unweighted} vs ${truth}`);
  });
});

void describe('label requests of real event batches', () => {
  let dir: string;
  let db: FleetDatabase;
  let conn: DuckDBConnection;
  let runner: OnnxModelRunner;
  let writer: EventWriter;
  let fleet: ReturnType<typeof createFleetActivities>;
  let labels: ReturnType<typeof createLabelActivities>;
  const production = model('production');
  const candidate = model('candidate-regress');

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fleetgate-labeling-'));
    writeFileSync(join(dir, 'budget.yaml'), manifest('budgetfleet', '{ rate: 0.3, delay: 2h }'));
    writeFileSync(join(dir, 'noisy.yaml'), manifest('noisyfleet', '{ rate: 1, delay: 1h, noise: 0.2 }'));
    const key = loadPseudonymKey(dir, {});
    db = await openFleetDatabase(join(dir, 'fleet.duckdb'));
    conn = db.connection;
    const blobs = new Map([production, candidate].map((m) => [m.digest, m.bytes]));
    runner = new OnnxModelRunner(async (digest) => blobs.get(digest));
    const sim = await simulatedFleet(db, runner, key);
    writer = sim.writer;
    fleet = createFleetActivities({ conn, ota: sim.ota, runner, key, root: dir, feed: sim.feed });
    labels = createLabelActivities({ conn });
    const prod = { [A]: production.digest, [B]: production.digest };
    await initSimFleet({ conn, key, root: dir }, 'budget.yaml', prod);
    await initSimFleet({ conn, key, root: dir }, 'noisy.yaml', prod);
  });

  after(async () => {
    await runner.close();
    await writer.close();
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const shadow = (rolloutId: string, file: string, fromMs: number, toMs: number, dailyBudget?: number) =>
    fleet.runShadow({
      rolloutId,
      manifest: file,
      candidateDigest: candidate.digest,
      cohorts: [A, B],
      share: 0.5,
      fromMs,
      toMs,
      labeling: dailyBudget === undefined ? undefined : { dailyBudget },
    });

  void it('without a budget, every logged event of a priority tier is requested with inclusion 1', async () => {
    await shadow('free', 'budget.yaml', T0, T0 + 2 * HOUR);
    const byTier = await rows(
      conn,
      `SELECT ${TIER_SQL} AS tier, count(*) AS events, count(r.event_id) AS requested,
              count(*) FILTER (WHERE r.reason = ${TIER_SQL}) AS as_tier,
              min(r.inclusion) AS lo, max(r.inclusion) AS hi
       FROM events e LEFT JOIN label_requests r USING (event_id)
       WHERE e.rollout_id = 'free' GROUP BY ALL ORDER BY tier`,
    );
    for (const t of byTier) {
      if (t.tier === 'other') {
        // Only the seeded sample of the rest: about labels.rate of it, inclusion labels.rate.
        const share = num(t.requested) / num(t.events);
        assert.ok(Math.abs(share - 0.3) < 0.05, `sample share ${share}`);
        assert.deepEqual([t.lo, t.hi], [0.3, 0.3]);
      } else {
        assert.equal(num(t.requested), num(t.events), `${String(t.tier)}: all requested`);
        assert.equal(num(t.as_tier), num(t.events), `${String(t.tier)}: stored with its reason`);
        assert.deepEqual([t.lo, t.hi], [1, 1]);
      }
    }
    assert.deepEqual(byTier.map((t) => t.tier).sort(), ['disagreement', 'low_confidence', 'other', 'rare']);
  });

  void it('keeps to the daily budget, paced over the day, in tier order', async () => {
    // Two simulated days in 3-hour batches from T0 (the start of a UTC day); the second starts at T0 + DAY_MS.
    const day0 = T0 / DAY_MS;
    assert.ok(Number.isInteger(day0));
    for (let from = T0; from < T0 + 2 * DAY_MS; from += 3 * HOUR) {
      await shadow('budget', 'budget.yaml', from, from + 3 * HOUR, BUDGET);
      const byDay = await rows(
        conn,
        `SELECT CAST(floor(requested_at_ms / ${DAY_MS}) AS BIGINT) AS day, count(*) AS n
         FROM label_requests WHERE rollout_id = 'budget' GROUP BY ALL`,
      );
      for (const d of byDay) {
        assert.ok(num(d.n) <= pacedBudget(BUDGET, num(d.day), from + 3 * HOUR), `day ${d.day}: ${d.n}`);
      }
    }
    // Demand is above the budget: each day uses all of it, and no more.
    assert.deepEqual(
      await rows(
        conn,
        `SELECT CAST(floor(requested_at_ms / ${DAY_MS}) AS INTEGER) AS day, CAST(count(*) AS INTEGER) AS n
         FROM label_requests WHERE rollout_id = 'budget' GROUP BY ALL ORDER BY day`,
      ),
      [
        { day: day0, n: BUDGET },
        { day: day0 + 1, n: BUDGET },
      ],
    );
    // Per batch: whole tiers, then at most one cut tier (a uniform share, its inclusion), then none.
    const perBatch = await rows(
      conn,
      `SELECT e.batch_id, ${TIER_SQL} AS tier, count(*) AS events, count(r.event_id) AS requested,
              count(*) FILTER (WHERE r.reason IS NOT NULL AND r.reason <> ${TIER_SQL}) AS other_reason,
              min(r.inclusion) AS lo, max(r.inclusion) AS hi
       FROM events e LEFT JOIN label_requests r USING (event_id)
       WHERE e.rollout_id = 'budget' GROUP BY ALL`,
    );
    const order = ['disagreement', 'rare', 'low_confidence'];
    let cuts = 0;
    let whole = 0;
    for (const batch of new Set(perBatch.map((r) => String(r.batch_id)))) {
      const of = (tier: string) => perBatch.find((r) => r.batch_id === batch && r.tier === tier);
      let closed = false;
      for (const tier of order) {
        const r = of(tier);
        if (!r) continue;
        const [events, requested] = [num(r.events), num(r.requested)];
        assert.equal(num(r.other_reason), 0);
        if (closed) {
          assert.equal(requested, 0, `${batch}: ${tier} after a cut tier`);
          continue;
        }
        if (requested === events) {
          whole++;
          assert.deepEqual([r.lo, r.hi], [1, 1]);
          continue;
        }
        closed = true;
        if (requested === 0) continue;
        cuts++;
        assert.deepEqual([r.lo, r.hi], [requested / events, requested / events], `${batch} ${tier}`);
      }
      const rest = of('other');
      if (closed && rest) {
        assert.equal(num(rest.requested), 0, `${batch}: no sample after a cut tier`);
      }
    }
    assert.ok(cuts > 0 && whole > 0, `cut ${cuts}, whole ${whole}: the budget must both cut and fit`);
  });

  void it('decides a batch once: a retried batch requests nothing twice', async () => {
    const before = await rows(
      conn,
      `SELECT event_id, reason, inclusion FROM label_requests WHERE rollout_id = 'budget' ORDER BY event_id`,
    );
    const again = await shadow('budget', 'budget.yaml', T0 + DAY_MS, T0 + DAY_MS + 3 * HOUR, BUDGET);
    assert.equal(again.written, false);
    const after = await rows(
      conn,
      `SELECT event_id, reason, inclusion FROM label_requests WHERE rollout_id = 'budget' ORDER BY event_id`,
    );
    assert.deepEqual(after, before);
    // The same batch in a fresh rollout state decides the same: the choice is seeded, not random.
    const tiers = Uint8Array.from([0, 0, 1, 1, 1, 2, 3, 3]);
    const at = new Float64Array(tiers.length).fill(5 * HOUR);
    const args = { rolloutId: 'nobody', seed: 's', toMs: DAY_MS, dailyBudget: 3, rate: 0.3 };
    assert.deepEqual(
      await budgetRequests(conn, args, tiers, at),
      await budgetRequests(conn, args, tiers, at),
    );
  });

  void it('a noisy labeler is wrong as often as labels.noise says; the truth stays apart', async () => {
    await shadow('noisy', 'noisy.yaml', T0, T0 + 4 * HOUR);
    await labels.labelCoverage({ rolloutId: 'noisy', asOfMs: T0 + 10 * DAY_MS });
    await labels.labelCoverage({ rolloutId: 'free', asOfMs: T0 + 10 * DAY_MS });
    // The labeler's private queue (sim_labeler) keeps the truth beside its answer; labels are its answers.
    const [r] = await rows(
      conn,
      `SELECT count(*) AS n, count(*) FILTER (WHERE l.label <> t.truth) AS wrong,
              count(*) FILTER (WHERE l.label <> t.answer) AS not_answer,
              count(*) FILTER (WHERE l.err_production IS DISTINCT FROM (e.pred_production <> l.label)) AS bad_err
       FROM labels l JOIN sim_labeler t USING (event_id) JOIN events e USING (event_id)
       WHERE l.rollout_id = 'noisy'`,
    );
    const n = num(r!.n);
    const share = num(r!.wrong) / n;
    assert.ok(n > 1000, `${n} labels`);
    assert.ok(Math.abs(share - 0.2) < 4 * Math.sqrt((0.2 * 0.8) / n), `wrong share ${share}`);
    assert.equal(num(r!.not_answer), 0, 'a label is the answer the labeler gave');
    assert.equal(num(r!.bad_err), 0, 'errors are scored against the label the labeler gave');
    // The fleet without noise: every label is the truth.
    assert.ok(
      (await one(conn, `SELECT count(*) FROM labels WHERE rollout_id = 'free'`)) > 100,
      'the fleet without noise has labels',
    );
    assert.equal(
      await one(
        conn,
        `SELECT count(*) FROM labels l JOIN sim_labeler t USING (event_id)
         WHERE l.rollout_id <> 'noisy' AND l.label <> t.truth`,
      ),
      0,
    );
  });
});

void describe('label coverage per cohort, with maturity', () => {
  let db: FleetDatabase;
  let labels: ReturnType<typeof createLabelActivities>;
  before(async () => {
    db = await openFleetDatabase(':memory:');
    labels = createLabelActivities({ conn: db.connection });
    // Cohort x: 4 requests at 0h, 1h, 2h, 9h; labels back 3h after the event, except the 1h one (30h).
    // Cohort y: 2 requests at 8h and 9h, labels back at 9h30 and 20h.
    const ev: [string, string, number, number][] = [
      ['x0', 'x', 0, 3],
      ['x1', 'x', 1, 30],
      ['x2', 'x', 2, 5],
      ['x9', 'x', 9, 12],
      ['y8', 'y', 8, 9.5],
      ['y9', 'y', 9, 20],
    ];
    for (const [id, cohort, h, back] of ev) {
      await db.connection.run(
        `INSERT INTO events (event_id, rollout_id, batch_id, phase, cohort, vehicle, ts_ms, arm, pred_candidate, pred_production)
         VALUES ($id, 'cov', 'b', 'canary', $cohort, 'v', $ts, 'candidate', 0, NULL)`,
        { id, cohort, ts: h * HOUR },
      );
      await db.connection.run(`INSERT INTO sim_truth VALUES ($id, 0, $at)`, { id, at: back * HOUR });
      await db.connection.run(`INSERT INTO label_requests VALUES ($id, 'cov', $ts, 'sample', 0.5)`, {
        id,
        ts: h * HOUR,
      });
    }
  });
  after(async () => {
    await db.close();
  });

  const cases: {
    name: string;
    asOfH: number;
    maturityH?: number;
    x: [number, number, number];
    y: [number, number, number];
  }[] = [
    // [counted, labeled, young]
    { name: 'no maturity: every request counts', asOfH: 10, x: [4, 2, 0], y: [2, 1, 0] },
    {
      name: 'maturity 4h: younger requests count only once labeled',
      asOfH: 10,
      maturityH: 4,
      x: [3, 2, 1],
      y: [1, 1, 1],
    },
    { name: 'a later look', asOfH: 21, maturityH: 4, x: [4, 3, 0], y: [2, 2, 0] },
    { name: 'requests after the look do not exist yet', asOfH: 1.5, x: [2, 0, 0], y: [0, 0, 0] },
  ];
  for (const c of cases) {
    void it(c.name, async () => {
      const cov = await labels.labelCoverage({
        rolloutId: 'cov',
        asOfMs: c.asOfH * HOUR,
        maturityMs: c.maturityH === undefined ? undefined : c.maturityH * HOUR,
        cohorts: ['x', 'y', 'z'],
      });
      const want = ([requested, labeled, young]: [number, number, number]) => ({
        requested,
        labeled,
        young,
        coverage: requested === 0 ? 0 : labeled / requested,
      });
      assert.deepEqual(cov.cohorts, { x: want(c.x), y: want(c.y), z: want([0, 0, 0]) });
      assert.deepEqual(
        [cov.requested, cov.labeled, cov.young],
        [c.x[0] + c.y[0], c.x[1] + c.y[1], c.x[2] + c.y[2]],
      );
    });
  }

  void it('refuses a negative maturity', async () => {
    await assert.rejects(labels.labelCoverage({ rolloutId: 'cov', asOfMs: 0, maturityMs: -1 }), /maturityMs/);
  });
});

void describe('labeling settings in the policy and the fleet manifest', () => {
  const policy = () => loadPolicy('test/fixtures/policy-week.yaml') as Record<string, unknown>;
  const fleetDoc = () => ({
    apiVersion: 'fleetgate/v1',
    kind: 'Fleet',
    name: 'f',
    skus: [{ name: 'hw3', speedFactor: 10, latencyBudgetMs: 50 }],
    cohorts: [{ name: 'hw3/eu', sku: 'hw3', region: 'eu', vehicles: 10, nightShare: 0.1 }],
    labels: { rate: 0.3, delay: '6h' } as Record<string, unknown>,
  });
  const problems = (schema: typeof Policy | typeof FleetManifest, input: unknown) => {
    const r = schema.safeParse(input);
    return r.success ? '' : formatIssues(r.error, input);
  };

  void it('accepts a budget and a maturity, and leaves both out by default', () => {
    const p = policy();
    assert.equal(Policy.parse(p).labelWait.dailyBudget, undefined);
    p.labelWait = { coverage: 0.9, timeout: '1d', dailyBudget: 500, maturity: '6h' };
    const parsed = Policy.parse(p).labelWait;
    assert.deepEqual([parsed.dailyBudget, parsed.maturity], [500, '6h']);
  });

  for (const [value, shown] of [
    [0, '0'],
    [2.5, '2.5'],
    ['ten', '"ten"'],
  ] as const) {
    void it(`names the field, the value and the fix of dailyBudget ${shown}`, () => {
      const p = policy();
      p.labelWait = { coverage: 0.9, timeout: '1d', dailyBudget: value };
      assert.match(
        problems(Policy, p),
        new RegExp(
          `^labelWait\\.dailyBudget: a whole number of labels per simulated day, at least 1; leave it out for no budget \\(got ${shown.replace('.', '\\.')}\\)$`,
        ),
      );
    });
  }

  void it('names the field, the value and the fix of a bad maturity, noise or cohort delay', () => {
    const p = policy();
    p.labelWait = { coverage: 0.9, timeout: '1d', maturity: 'soon' };
    assert.match(problems(Policy, p), /^labelWait\.maturity: .*a duration such as .*\(got "soon"\)$/m);
    const f = fleetDoc();
    f.labels.noise = 0.7;
    assert.match(
      problems(FleetManifest, f),
      /^labels\.noise: a share in \[0, 0\.5\]: above 0\.5 the labeler would be wrong more often than right \(got 0\.7\)$/,
    );
    const g = fleetDoc();
    g.labels.delayByCohort = { 'hw9/mars': '2d' };
    assert.match(
      problems(FleetManifest, g),
      /^labels\.delayByCohort\.hw9\/mars: unknown cohort "hw9\/mars"; declared: hw3\/eu \(got "2d"\)$/,
    );
    const ok = fleetDoc();
    ok.labels.noise = 0.1;
    ok.labels.delayByCohort = { 'hw3/eu': '2d' };
    assert.equal(problems(FleetManifest, ok), '');
  });
});

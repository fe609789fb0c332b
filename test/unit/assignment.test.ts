/**
 * Who gets the candidate: keyed pseudonyms and the sticky, monotone, exactly stratified assignment of
 * vehicles to canary waves and to the shadow share; the pseudonym key's life cycle; and the promise that
 * the fleet database holds pseudonyms only, never a raw vehicle id.
 */
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { num, openFleetDatabase, rows } from '../../activities/db';
import type { FleetDatabase } from '../../activities/db';
import { createFleetActivities, initSimFleet } from '../../activities/fleet';
import type { ModelRunner } from '../../activities/deps';
import type { EventWriter } from '../../events/writer';
import { FleetManifest } from '../../policies/schema';
import {
  assignmentRank,
  assignmentRanks,
  keyedUniforms,
  rankOrder,
  saltedSql,
  shadowTargets,
  targetCount,
  waveTargets,
} from '../../fleet/assignment';
import { loadFleetManifest } from '../../fleet/manifest';
import { pseudonym, pseudonymSql } from '../../fleet/pseudonym';
import { simVehicles } from '../../sim/fleet';
import { simulatedFleet } from '../feed-support';
import { loadPseudonymKey, pseudonymKeyPath } from '../../workers/secrets';

const KEY = Buffer.from('5a'.repeat(32), 'hex');
const WAVES = [1, 5, 25, 100];

function manifest(name: string, sizes: number[]): FleetManifest {
  return FleetManifest.parse({
    apiVersion: 'fleetgate/v1',
    kind: 'Fleet',
    name,
    seed: 1,
    skus: [{ name: 'hw3', speedFactor: 10, latencyBudgetMs: 5, intraOpThreads: 1, graphOptimization: 'all' }],
    cohorts: sizes.map((vehicles, i) => ({
      name: `c${i}/x`,
      sku: 'hw3',
      region: 'eu',
      vehicles,
      nightShare: 0.1,
    })),
    eventsPerVehicleHour: 20,
    labels: { rate: 0.1, delay: '1h' },
  });
}

function cohortPseudonyms(sizes: number[]): string[][] {
  return [...simVehicles(manifest('fleet', sizes), KEY)].map((c) => c.pseudonyms);
}

void describe('pseudonyms', () => {
  void it('are HMAC-SHA256 of the raw id under the key, 20 hex characters', () => {
    const expected = createHmac('sha256', KEY).update('fleet-0-3').digest('hex').slice(0, 20);
    assert.equal(pseudonym(KEY, 'fleet-0-3'), expected);
    const [first] = cohortPseudonyms([10]);
    assert.equal(first![3], expected);
    for (const [i, p] of first!.entries()) {
      assert.match(p, /^[0-9a-f]{20}$/);
      assert.equal(p, pseudonym(KEY, `fleet-0-${i}`));
    }
    assert.notEqual(pseudonym(randomBytes(32), 'fleet-0-3'), expected);
  });

  void it('batch ranks equal single ranks for short, long, non-ASCII messages and long keys', () => {
    for (const key of [KEY, randomBytes(64), randomBytes(100)]) {
      const msgs = Array.from(
        { length: 300 },
        (_, i) => 'v'.repeat(i % 70) + String(i) + (i % 7 === 0 ? 'é' : ''),
      );
      const ranks = assignmentRanks(key, 'roll:canary', msgs);
      msgs.forEach((m, i) => assert.equal(ranks[i], assignmentRank(key, 'roll:canary', m)));
    }
  });
});

void describe('wave assignment', () => {
  const sizes = [1, 7, 99, 100, 1000, 4321];
  const cohorts = cohortPseudonyms(sizes);

  void it('is sticky: the same rollout gives the same vehicles, whatever order they are listed in', () => {
    for (const vs of cohorts) {
      const shuffled = [...vs].reverse();
      for (const p of WAVES) {
        const a = waveTargets(vs, KEY, 'roll-1', p);
        assert.deepEqual(waveTargets(vs, KEY, 'roll-1', p), a);
        assert.deepEqual(waveTargets(shuffled, KEY, 'roll-1', p), a);
      }
    }
  });

  void it('is monotone across 1% -> 5% -> 25% -> 100%: each wave contains every smaller one', () => {
    for (const vs of cohorts) {
      let previous = new Set<string>();
      for (const p of WAVES) {
        const wave = waveTargets(vs, KEY, 'roll-1', p);
        const current = new Set(wave);
        assert.equal(current.size, wave.length, 'no vehicle twice');
        for (const v of previous) assert.ok(current.has(v), `${v} left the ${p}% wave`);
        previous = current;
      }
      assert.equal(previous.size, vs.length);
    }
  });

  void it('gives each cohort exactly ceil(percent/100 * n) vehicles', () => {
    cohorts.forEach((vs, i) => {
      const n = sizes[i]!;
      for (const p of [...WAVES, 7, 29, 50]) {
        assert.equal(waveTargets(vs, KEY, 'roll-1', p).length, Math.floor((p * n + 99) / 100));
      }
      assert.equal(waveTargets(vs, KEY, 'roll-1', 0.5).length, Math.floor((n + 199) / 200));
    });
    assert.equal(targetCount(100, 0.07), 7);
    assert.equal(targetCount(100, 0.29), 29);
    assert.equal(targetCount(3, 1 / 3), 1);
    assert.throws(() => waveTargets(cohorts[0]!, KEY, 'roll-1', 0));
    assert.throws(() => waveTargets(cohorts[0]!, KEY, 'roll-1', 101));
  });

  void it('orders vehicles independently per rollout and per phase', () => {
    const vs = cohorts.at(-1)!;
    const a = new Set(waveTargets(vs, KEY, 'roll-1', 10));
    const b = waveTargets(vs, KEY, 'roll-2', 10);
    const overlap = b.filter((v) => a.has(v)).length;
    // Independent 10% samples of 4321 overlap in about 43 vehicles.
    assert.ok(overlap > 10 && overlap < 100, `overlap ${overlap}`);
    const shadow = shadowTargets(vs, KEY, 'roll-1', 0.1);
    assert.equal(shadow.length, a.size);
    assert.notDeepEqual(new Set(shadow), a);
    assert.deepEqual(shadowTargets(vs, KEY, 'roll-1', 0.5).slice(0, shadow.length), shadow);
    assert.notDeepEqual(waveTargets(vs, randomBytes(32), 'roll-1', 10), [...a]);
  });

  void it('ranks are uniform enough that a cohort is not split by its listing order', () => {
    const vs = cohorts.at(-1)!;
    const wave = new Set(waveTargets(vs, KEY, 'roll-1', 50));
    const firstHalf = vs.slice(0, vs.length / 2).filter((v) => wave.has(v)).length;
    assert.ok(Math.abs(firstHalf - vs.length / 4) < 4 * Math.sqrt(vs.length / 16), `first half ${firstHalf}`);
  });

  void it('assigns a 100k-vehicle cohort: exact, growing waves and a total order (speed: npm run bench)', () => {
    const [big] = [...simVehicles(manifest('big', [100_000]), KEY)];
    let previous = 0;
    for (const p of WAVES) {
      const wave = waveTargets(big!.pseudonyms, KEY, 'roll-big', p);
      assert.equal(wave.length, 1000 * p);
      assert.ok(wave.length > previous);
      previous = wave.length;
    }
    const order = rankOrder(big!.pseudonyms, KEY, 'roll-big:canary');
    assert.equal(new Set(order).size, 100_000);
  });
});

void describe('pseudonym key', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'fleetgate-key-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  void it('is created once with 32 random bytes, readable by its owner only, and then reused', () => {
    const key = loadPseudonymKey(dir, {});
    assert.equal(key.length, 32);
    assert.equal(statSync(pseudonymKeyPath(dir)).mode & 0o777, 0o600);
    assert.deepEqual(loadPseudonymKey(dir, {}), key);
    assert.deepEqual(readFileSync(pseudonymKeyPath(dir)), key);
  });

  void it('comes from FLEETGATE_PSEUDONYM_KEY when set, and refuses a short or non-hex one', () => {
    const hex = 'ab'.repeat(40);
    assert.deepEqual(loadPseudonymKey(dir, { FLEETGATE_PSEUDONYM_KEY: hex }), Buffer.from(hex, 'hex'));
    for (const bad of ['ab'.repeat(31), 'zz'.repeat(32), 'abc']) {
      assert.throws(
        () => loadPseudonymKey(dir, { FLEETGATE_PSEUDONYM_KEY: bad }),
        (err: Error & { type?: string }) => {
          assert.equal(err.type, 'InvalidInput');
          assert.ok(!err.message.includes(bad), 'the key never appears in an error');
          return true;
        },
      );
    }
  });
});

void describe('the fleet database', () => {
  let dir: string;
  let db: FleetDatabase;
  let writer: EventWriter | undefined;
  const fleetName = 'privfleet';
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fleetgate-assign-'));
    db = await openFleetDatabase(join(dir, 'fleet.duckdb'));
  });
  after(async () => {
    await writer?.close();
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  void it('hashes inside DuckDB exactly as in JavaScript: pseudonyms, ranks and install draws', async () => {
    const conn = db.connection;
    const raw = ['f-0-0', 'f-1-123456', `${'long-'.repeat(20)}7`, 'véhicule-ü-9'];
    for (const key of [KEY, randomBytes(100)]) {
      const id = pseudonymSql(key, '$raw');
      for (const r of raw) {
        const [row] = await rows(conn, `SELECT ${id.sql} AS p`, { raw: r, ...id.params });
        assert.equal(row?.p, pseudonym(key, r), r);
      }
      const pseudonyms = cohortPseudonyms([50])[0]!;
      const mac = saltedSql(key, 'r9:canary', 'rank');
      const found = await rows(
        conn,
        `SELECT v, ${mac.hex('encode(v)')} AS h FROM unnest($list::VARCHAR[]) t(v)`,
        { list: `[${pseudonyms.join(',')}]`, ...mac.params },
      );
      const draws = keyedUniforms(key, 'r9:canary', pseudonyms, 8);
      for (const r of found) {
        const i = pseudonyms.indexOf(String(r.v));
        const h = String(r.h);
        assert.equal(parseInt(h.slice(0, 8), 16), assignmentRank(key, 'r9:canary', String(r.v)));
        for (let d = 0; d < 8; d++)
          assert.equal(parseInt(h.slice(8 * d, 8 * d + 8), 16) / 2 ** 32, draws[8 * i + d]);
      }
      assert.equal(found.length, pseudonyms.length);
    }
  });

  void it('loads manifests from YAML or JSON and names the file, path and value of a problem', () => {
    const m = manifest(fleetName, [50, 30]);
    writeFileSync(join(dir, 'fleet.json'), JSON.stringify(m));
    writeFileSync(join(dir, 'fleet.yaml'), `# comment\n${JSON.stringify(m)}\n`);
    assert.deepEqual(loadFleetManifest(join(dir, 'fleet.json')), m);
    assert.deepEqual(loadFleetManifest(join(dir, 'fleet.yaml')), m);
    const bad = { ...m, cohorts: [{ ...m.cohorts[0]!, vehicles: -3 }] };
    writeFileSync(join(dir, 'bad.json'), JSON.stringify(bad));
    assert.throws(
      () => loadFleetManifest(join(dir, 'bad.json')),
      (err: Error & { type?: string }) => {
        assert.equal(err.type, 'InvalidInput');
        assert.match(err.message, /bad\.json/);
        assert.match(err.message, /cohorts\.0\.vehicles: .*\(got -3\)/);
        return true;
      },
    );
    assert.throws(
      () => loadFleetManifest(join(dir, 'missing.yaml')),
      (err: Error & { type?: string }) => err.type === 'NotFound',
    );
  });

  void it('stores pseudonyms only: no raw vehicle id appears in any table after init and delivery', async () => {
    const conn = db.connection;
    const unusedRunner: ModelRunner = {
      run: () => Promise.reject(new Error('no inference in this test')),
      contract: () => Promise.reject(new Error('no inference in this test')),
      modelBytes: () => Promise.reject(new Error('no inference in this test')),
      close: async () => undefined,
    };
    await initSimFleet({ conn, key: KEY, root: dir }, 'fleet.yaml', {
      'c0/x': 'd'.repeat(64),
      'c1/x': 'd'.repeat(64),
    });
    // The fleet as the composition root wires it: the producer's tables are in the database too.
    const sim = await simulatedFleet(db, unusedRunner, KEY);
    writer = sim.writer;
    const { ota, feed } = sim;
    const fleet = createFleetActivities({ conn, ota, runner: unusedRunner, key: KEY, root: dir, feed });
    const deliver = {
      rolloutId: 'rp',
      manifest: 'fleet.yaml',
      cohorts: ['c0/x', 'c1/x'],
      digest: 'e'.repeat(64),
    };
    await fleet.deliverWave({ ...deliver, wave: 1, percent: 10 });
    await fleet.deliverWave({ ...deliver, wave: 2, percent: 50 });
    await fleet.revertWave({ ...deliver, wave: 2 });
    await fleet.promoteCohort({
      rolloutId: 'rp',
      manifest: 'fleet.yaml',
      cohort: 'c1/x',
      digest: 'e'.repeat(64),
    });

    const stored = new Set((await rows(conn, `SELECT vehicle FROM vehicles`)).map((r) => String(r.vehicle)));
    const expected = [...simVehicles(loadFleetManifest(join(dir, 'fleet.yaml')), KEY)].flatMap(
      (c) => c.pseudonyms,
    );
    assert.deepEqual(stored, new Set(expected));
    const cols = await rows(
      conn,
      `SELECT table_name, column_name FROM information_schema.columns WHERE data_type = 'VARCHAR'`,
    );
    let checked = 0;
    for (const c of cols) {
      const [hit] = await rows(
        conn,
        `SELECT count(*) AS n FROM "${c.table_name}" WHERE regexp_matches("${c.column_name}", ?)`,
        [`${fleetName}-[0-9]+-[0-9]+`],
      );
      assert.equal(num(hit?.n), 0, `raw id in ${c.table_name}.${c.column_name}`);
      checked++;
    }
    assert.ok(checked >= 20);
    const targets = await rows(conn, `SELECT DISTINCT vehicle FROM ota_targets`);
    for (const r of targets) assert.ok(stored.has(String(r.vehicle)));
  });
});

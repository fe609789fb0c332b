/**
 * The fleet at scale: creation by one INSERT per cohort, the inventory read as packed strings, and the
 * per-rollout wave order cached in `wave_orders` give the same vehicles, order and outcomes as the
 * plain computation; a database created with the old primary keys keeps working.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DuckDBInstance } from '@duckdb/node-api';
import { num, openFleetDatabase, rows } from '../../activities/db';
import type { FleetDatabase } from '../../activities/db';
import type { ModelRunner } from '../../activities/deps';
import { createFleetActivities, initSimFleet } from '../../activities/fleet';
import { loadFleetManifest, simVehicles, waveTargets } from '../../sim/fleet';
import { INSTALL, installOutcomes, SimulatedOta } from '../../sim/ota';

const KEY = Buffer.from('5a'.repeat(32), 'hex');
const PROD = 'd'.repeat(64);
const CAND = 'e'.repeat(64);
const COHORTS = ['c0/x', 'c1/x'];
const MANIFEST = `apiVersion: fleetgate/v1
kind: Fleet
name: scalefleet
skus: [{ name: hw3, speedFactor: 10, latencyBudgetMs: 10, installFailureRate: 0.05 }]
cohorts:
  - { name: c0/x, sku: hw3, region: eu, vehicles: 3000, nightShare: 0.2, availability: { online: 0.9 } }
  - { name: c1/x, sku: hw3, region: eu, vehicles: 1234, nightShare: 0.2 }
labels: { rate: 0.1, delay: 1h }
`;

const unusedRunner: ModelRunner = {
  run: () => Promise.reject(new Error('no inference in this test')),
  contract: () => Promise.reject(new Error('no inference in this test')),
  modelBytes: () => Promise.reject(new Error('no inference in this test')),
  close: async () => undefined,
};

/** The old schema of the two tables that lost their primary key. */
const OLD_SCHEMA = `
CREATE TABLE vehicles (fleet VARCHAR NOT NULL, cohort VARCHAR NOT NULL, sku VARCHAR NOT NULL,
  vehicle VARCHAR NOT NULL, slot_a VARCHAR, slot_b VARCHAR,
  active VARCHAR NOT NULL CHECK (active IN ('a', 'b')), PRIMARY KEY (fleet, vehicle));
CREATE TABLE ota_targets (job_id VARCHAR NOT NULL, vehicle VARCHAR NOT NULL, cohort VARCHAR NOT NULL,
  reverted BOOLEAN NOT NULL DEFAULT false, prev_active VARCHAR NOT NULL CHECK (prev_active IN ('a', 'b')),
  PRIMARY KEY (job_id, vehicle));
`;

for (const schema of ['new', 'old'] as const) {
  void describe(`the fleet at scale (${schema} schema)`, () => {
    let dir: string;
    let db: FleetDatabase;
    before(async () => {
      dir = mkdtempSync(join(tmpdir(), 'fleetgate-scale-'));
      writeFileSync(join(dir, 'fleet.yaml'), MANIFEST);
      if (schema === 'old') {
        const instance = await DuckDBInstance.create(join(dir, 'fleet.duckdb'));
        const conn = await instance.connect();
        await conn.run(OLD_SCHEMA);
        conn.closeSync();
        instance.closeSync();
      }
      db = await openFleetDatabase(join(dir, 'fleet.duckdb'));
    });
    after(async () => {
      await db.close();
      rmSync(dir, { recursive: true, force: true });
    });

    void it('creates vehicles in generation order; the inventory gives them in that order', async () => {
      const { connection: conn } = db;
      const init = () =>
        initSimFleet({ conn, key: KEY, root: dir }, 'fleet.yaml', { 'c0/x': PROD, 'c1/x': PROD });
      assert.deepEqual(await init(), { fleet: 'scalefleet', vehicles: 4234, created: true });
      assert.deepEqual(await init(), { fleet: 'scalefleet', vehicles: 4234, created: false });
      const ota = new SimulatedOta(conn);
      const generated = [...simVehicles(loadFleetManifest(join(dir, 'fleet.yaml')), KEY)];
      for (const { cohort, pseudonyms } of generated) {
        const inv = await ota.inventory('scalefleet', cohort.name);
        assert.deepEqual(inv.vehicles, pseudonyms);
        assert.deepEqual(inv.digests, new Array<string>(pseudonyms.length).fill(PROD));
        const stored = await rows(conn, `SELECT sku, slot_a, slot_b, active FROM vehicles WHERE cohort = ?`, [
          cohort.name,
        ]);
        assert.ok(
          stored.every((r) => r.sku === 'hw3' && r.slot_a === PROD && r.slot_b === null && r.active === 'a'),
        );
      }
    });

    void it('delivers waves with the cached order exactly as computed afresh, idempotently', async () => {
      const { connection: conn } = db;
      const ota = new SimulatedOta(conn);
      const fleet = createFleetActivities({ conn, ota, runner: unusedRunner, key: KEY, root: dir });
      const ref = { rolloutId: 'r-scale', manifest: 'fleet.yaml', cohorts: COHORTS, digest: CAND };
      const manifest = loadFleetManifest(join(dir, 'fleet.yaml'));
      const generated = [...simVehicles(manifest, KEY)];
      const installedBefore = new Map<string, Set<string>>(COHORTS.map((c) => [c, new Set()]));
      for (const [wave, percent] of [
        [1, 5],
        [2, 25],
        [3, 60],
      ] as const) {
        const result = await fleet.deliverWave({ ...ref, wave, percent });
        assert.deepEqual(await fleet.deliverWave({ ...ref, wave, percent }), result, 'a retry is recorded');
        for (const { cohort, pseudonyms } of generated) {
          // Expected: the wave's targets not yet running the candidate, minus failures and deferrals.
          const done = installedBefore.get(cohort.name)!;
          const fresh = new Set(
            waveTargets(pseudonyms, KEY, ref.rolloutId, percent).filter((v) => !done.has(v)),
          );
          const ordered = pseudonyms.filter((v) => fresh.has(v));
          const outcome = installOutcomes(KEY, ref.rolloutId, wave, ordered, {
            availability: cohort.availability,
            installFailureRate: 0.05,
          });
          const installed = ordered.filter((_, i) => outcome[i] === INSTALL.installed);
          assert.equal(result.installs?.[cohort.name]?.targeted, ordered.length);
          const targets = await rows(
            conn,
            `SELECT vehicle FROM ota_targets WHERE job_id = ? AND cohort = ?`,
            [`${ref.rolloutId}-w${wave}`, cohort.name],
          );
          assert.deepEqual(new Set(targets.map((r) => String(r.vehicle))), new Set(installed));
          assert.equal(targets.length, installed.length, 'no target twice');
          for (const v of installed) done.add(v);
          assert.equal(result.vehicles[cohort.name], done.size);
        }
      }
      const [cached] = await rows(
        conn,
        `SELECT count(*) AS n FROM wave_orders WHERE salt = 'r-scale:canary'`,
      );
      assert.equal(num(cached?.n), 2, 'one order per cohort and rollout');
      // A stored order of another inventory is not used: it is recomputed, with the same vehicles.
      await conn.run(`UPDATE wave_orders SET inventory = 'stale' WHERE salt = 'r-scale:canary'`);
      const expected: Record<string, number> = {};
      for (const { cohort, pseudonyms } of generated) {
        const inv = await ota.inventory('scalefleet', cohort.name);
        const runs = new Set(inv.vehicles.filter((_, k) => inv.digests[k] === CAND));
        expected[cohort.name] = waveTargets(pseudonyms, KEY, ref.rolloutId, 60).filter(
          (v) => !runs.has(v),
        ).length;
      }
      const again = await fleet.deliverWave({ ...ref, wave: 4, percent: 60 });
      for (const c of COHORTS) assert.equal(again.installs?.[c]?.targeted, expected[c]);
      const [stale] = await rows(conn, `SELECT count(*) AS n FROM wave_orders WHERE inventory = 'stale'`);
      assert.equal(num(stale?.n), 0);
      const reverted = await fleet.revertWave({ ...ref, wave: 3 });
      assert.ok(reverted.reverted > 0);
      assert.deepEqual(await fleet.revertWave({ ...ref, wave: 3 }), { reverted: 0 });
    });
  });
}

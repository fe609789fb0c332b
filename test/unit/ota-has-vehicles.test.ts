/**
 * Whether a cohort of a fleet has any vehicle, without reading the cohort: the simulated channel's
 * `hasVehicles` on a real fleet database holding two fleets that share a cohort name, and a batch read
 * (activities/fleet.ts) that asks only that, never for the cohort's inventory or the fleet's count.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { exec, openFleetDatabase, type FleetDatabase } from '../../activities/db';
import type { OtaChannel } from '../../activities/deps';
import { createFleetActivities, initSimFleet } from '../../activities/fleet';
import { SimulatedOta } from '../../sim/ota';
import { loadPseudonymKey } from '../../workers/secrets';

const PROD = 'd'.repeat(64);
const HOUR = 3_600_000;

function manifest(name: string, cohorts: [string, number][]): string {
  return [
    'apiVersion: fleetgate/v1',
    'kind: Fleet',
    `name: ${name}`,
    'skus: [{ name: hw3, speedFactor: 10, latencyBudgetMs: 10 }, { name: hw4, speedFactor: 10, latencyBudgetMs: 10 }]',
    'cohorts:',
    ...cohorts.map(
      ([c, n]) =>
        `  - { name: ${c}, sku: ${c.split('/')[0]}, region: ${c.split('/')[1]}, vehicles: ${n}, nightShare: 0.1 }`,
    ),
    'labels: { rate: 0.1, delay: 1h }',
  ].join('\n');
}

void describe('OtaChannel.hasVehicles', () => {
  let dir: string;
  let db: FleetDatabase;
  let sim: SimulatedOta;
  let key: Buffer;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fleetgate-has-'));
    // Two fleets that share the cohort name hw3/eu; hw4/us is alpha's only, hw4/apac beta's only.
    writeFileSync(
      join(dir, 'alpha.yaml'),
      manifest('alpha', [
        ['hw3/eu', 7],
        ['hw4/us', 3],
      ]),
    );
    writeFileSync(
      join(dir, 'beta.yaml'),
      manifest('beta', [
        ['hw3/eu', 4],
        ['hw4/apac', 5],
      ]),
    );
    key = loadPseudonymKey(dir, {});
    db = await openFleetDatabase(join(dir, 'fleet.duckdb'));
    sim = new SimulatedOta(db.connection);
    const deps = { conn: db.connection, key, root: dir };
    await initSimFleet(deps, 'alpha.yaml', { 'hw3/eu': PROD, 'hw4/us': PROD });
    await initSimFleet(deps, 'beta.yaml', { 'hw3/eu': PROD, 'hw4/apac': PROD });
  });

  after(async () => {
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  void it('the simulated channel: true for a populated cohort, false for an empty or another fleet’s', async () => {
    assert.equal(await sim.hasVehicles('alpha', 'hw3/eu'), true);
    assert.equal(await sim.hasVehicles('alpha', 'hw4/us'), true);
    assert.equal(await sim.hasVehicles('beta', 'hw3/eu'), true);
    assert.equal(await sim.hasVehicles('beta', 'hw4/apac'), true);
    // A cohort only another fleet has, in both directions.
    assert.equal(await sim.hasVehicles('alpha', 'hw4/apac'), false);
    assert.equal(await sim.hasVehicles('beta', 'hw4/us'), false);
    // A cohort no fleet has, and a fleet the database does not know.
    assert.equal(await sim.hasVehicles('alpha', 'hw9/none'), false);
    assert.equal(await sim.hasVehicles('gamma', 'hw3/eu'), false);
    // A cohort emptied in one fleet while the other fleet's cohort of the same name keeps its vehicles.
    await exec(db.connection, `DELETE FROM vehicles WHERE fleet = 'beta' AND cohort = 'hw3/eu'`);
    assert.equal(await sim.hasVehicles('beta', 'hw3/eu'), false);
    assert.equal(await sim.hasVehicles('alpha', 'hw3/eu'), true);
  });

  void it('a batch read asks whether each cohort has vehicles, never for its inventory', async () => {
    const calls = { inventory: 0, vehicleCount: 0, hasVehicles: 0 };
    // The real simulated channel, with its calls counted.
    const ota: OtaChannel = {
      vehicleCount: (fleet) => (calls.vehicleCount++, sim.vehicleCount(fleet)),
      inventory: (fleet, cohort) => (calls.inventory++, sim.inventory(fleet, cohort)),
      hasVehicles: (fleet, cohort) => (calls.hasVehicles++, sim.hasVehicles(fleet, cohort)),
      running: sim.running.bind(sim),
      recordedJob: sim.recordedJob.bind(sim),
      createJob: sim.createJob.bind(sim),
      revertJob: sim.revertJob.bind(sim),
      installOutcomes: sim.installOutcomes.bind(sim),
    };
    const unusedRunner = {
      run: () => Promise.reject(new Error('no inference here')),
      contract: () => Promise.reject(new Error('no inference here')),
      modelBytes: () => Promise.reject(new Error('no inference here')),
      close: async () => undefined,
    };
    const fleet = createFleetActivities({
      conn: db.connection,
      ota,
      runner: unusedRunner,
      key,
      root: dir,
      watermarkWaitMs: 0,
    });
    const window = { candidateDigest: 'e'.repeat(64), fromMs: 0, toMs: HOUR };

    const read = await fleet.collectTelemetry({
      ...window,
      rolloutId: 'ra',
      manifest: 'alpha.yaml',
      cohorts: ['hw3/eu', 'hw4/us'],
    });
    assert.equal(read.written, true);
    assert.deepEqual(calls, { inventory: 0, vehicleCount: 0, hasVehicles: 2 });

    // beta's hw3/eu was emptied above: the batch is refused, naming the cohort and the fleet.
    await assert.rejects(
      fleet.collectTelemetry({
        ...window,
        rolloutId: 'rb',
        manifest: 'beta.yaml',
        cohorts: ['hw4/apac', 'hw3/eu'],
      }),
      (err) => {
        assert.equal((err as { type?: string }).type, 'NotFound');
        assert.match((err as Error).message, /^cohort hw3\/eu of fleet beta has no vehicles$/);
        return true;
      },
    );
    assert.equal(calls.inventory, 0);

    // A fleet with no vehicles at all is still told to initialise the fleet first.
    writeFileSync(join(dir, 'gamma.yaml'), manifest('gamma', [['hw3/eu', 2]]));
    await assert.rejects(
      fleet.collectTelemetry({ ...window, rolloutId: 'rc', manifest: 'gamma.yaml', cohorts: ['hw3/eu'] }),
      /fleet gamma has no vehicles in the fleet database; initialise the simulated fleet first/,
    );
    assert.equal(calls.inventory, 0);
  });
});

/**
 * The activity of `fleet init` on the worker that owns the fleet database (activities/fleet-init.ts),
 * through the composition root's activities over a real DuckDB file and local store: it creates the
 * vehicles only on the production the registry names for each cohort (none registered: NotFound, nothing
 * written), once (a second call changes nothing), and a worker whose vehicles are AWS IoT things refuses.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, it } from 'node:test';
import { bootstrapProduction, readPointer } from '../../activities/registry';
import { createFleetInitActivities } from '../../activities/fleet-init';
import { createActivities, openServices, trustFixtureSigner, type Services } from '../../workers/worker';
import { storeId } from '../../workers/ownership';
import { ROOT } from '../support';

const FLEET = 'test/fixtures/fleet.yaml';
const COHORTS = ['hw3/eu', 'hw4/us', 'hw3/nordic'];

let tmp: string;
let services: Services;

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'fleetgate-finit-act-'));
  trustFixtureSigner(tmp);
  services = await openServices(tmp, ROOT, { kind: 'simulated' });
  delete services.webhook;
});

after(async () => {
  await services?.close();
  rmSync(tmp, { recursive: true, force: true });
});

async function vehicles(): Promise<{ cohort: string; n: number; digest: string }[]> {
  const reader = await services.db.connection.runAndReadAll(
    `SELECT cohort, CAST(count(*) AS INTEGER) AS n, max(slot_a) AS digest FROM vehicles
     WHERE fleet = 'testfleet' GROUP BY cohort ORDER BY cohort`,
  );
  return reader.getRowObjectsJson() as unknown as { cohort: string; n: number; digest: string }[];
}

void it('creates the fleet on each cohort production, once; without production it refuses and writes nothing', async () => {
  const acts = createActivities(services);
  await assert.rejects(
    acts.createSimulatedFleet({ manifest: FLEET }),
    (err: Error & { type?: string; nonRetryable?: boolean }) => {
      assert.equal(err.type, 'NotFound');
      assert.equal(err.nonRetryable, true);
      assert.match(err.message, /cohort hw3\/eu of fleet testfleet has no production model/);
      assert.match(err.message, /run "fleetgate fleet init" with the same FLEETGATE_STORE as the worker/);
      return true;
    },
  );
  assert.deepEqual(await vehicles(), []);

  const prod = await bootstrapProduction(services, 'models/production', COHORTS, 'test');
  const first = await acts.createSimulatedFleet({ manifest: FLEET });
  const own = storeId(tmp, services.store, services.owner);
  assert.deepEqual(first, { fleet: 'testfleet', vehicles: 900, created: true, store: own });
  for (const row of await vehicles()) {
    assert.equal(row.n, 300);
    assert.equal(row.digest, (await readPointer(services.store, row.cohort, 'production')).pointer?.digest);
    assert.equal(row.digest, prod.digest);
  }
  const second = await acts.createSimulatedFleet({ manifest: FLEET });
  assert.deepEqual(second, { fleet: 'testfleet', vehicles: 900, created: false, store: own });
  assert.equal(
    (await vehicles()).reduce((a, r) => a + r.n, 0),
    900,
  );
});

void it('a worker whose vehicles are AWS IoT things refuses, saying how to register them', async () => {
  const acts = createFleetInitActivities({
    conn: services.db.connection,
    key: services.key,
    root: ROOT,
    store: services.store,
    storeId: 'x',
    vehiclesInDatabase: false,
  });
  await assert.rejects(
    acts.createSimulatedFleet({ manifest: 'test/fixtures/fleet-slow.yaml' }),
    (err: Error & { type?: string; nonRetryable?: boolean }) => {
      assert.equal(err.type, 'Refused');
      assert.equal(err.nonRetryable, true);
      assert.match(err.message, /FLEETGATE_OTA=aws-iot/);
      return true;
    },
  );
});

/**
 * The worker's dispatch of the fleet activities on the manifest's kind: a `kind: Service` manifest goes
 * to the service's implementation, a fleet's (and a manifest that cannot be read, whose error the
 * fleet's activities give) to the fleet's; every one of the seven activities is dispatched.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, describe, it } from 'node:test';
import { dispatchFleetActivities, isServiceManifest } from '../../activities/service';
import type { FleetActivities } from '../../activities/fleet';

const ROOT = resolve(__dirname, '..', '..');
const NAMES = [
  'describeFleet',
  'deliverWave',
  'revertWave',
  'promoteCohort',
  'runShadow',
  'endShadow',
  'collectTelemetry',
] as const;
type Dispatched = Parameters<typeof dispatchFleetActivities>[1];

/** An implementation that answers which one it is and records the inputs it was called with. */
function recorder(who: string, calls: string[]): Dispatched {
  return Object.fromEntries(
    NAMES.map((name) => [
      name,
      async (input: { manifest: string }) => {
        calls.push(`${who}.${name}:${input.manifest}`);
        return who;
      },
    ]),
  ) as unknown as Pick<FleetActivities, (typeof NAMES)[number]>;
}

describe('fleet activity dispatch', () => {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-dispatch-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('tells a service manifest from a fleet manifest, against the root', () => {
    assert.equal(isServiceManifest(ROOT, 'examples/service/ranker.yaml'), true);
    assert.equal(isServiceManifest(ROOT, 'test/fixtures/fleet.yaml'), false);
    assert.equal(isServiceManifest(ROOT, 'test/fixtures/no-such-manifest.yaml'), false);
    const broken = join(dir, 'broken.yaml');
    writeFileSync(broken, 'kind: [');
    assert.equal(isServiceManifest(ROOT, broken), false);
  });

  it('calls the service implementation for a service and the fleet one otherwise, for all seven', async () => {
    const calls: string[] = [];
    const acts = dispatchFleetActivities(ROOT, recorder('fleet', calls), recorder('service', calls));
    assert.deepEqual(Object.keys(acts).sort(), [...NAMES].sort());
    for (const name of NAMES) {
      const call = acts[name] as (input: { manifest: string; rolloutId: string }) => Promise<unknown>;
      assert.equal(await call({ rolloutId: 'r', manifest: 'examples/service/ranker.yaml' }), 'service');
      assert.equal(await call({ rolloutId: 'r', manifest: 'test/fixtures/fleet.yaml' }), 'fleet');
      assert.equal(await call({ rolloutId: 'r', manifest: 'missing.yaml' }), 'fleet');
    }
    assert.equal(calls.length, NAMES.length * 3);
    assert.deepEqual(calls.slice(0, 3), [
      'service.describeFleet:examples/service/ranker.yaml',
      'fleet.describeFleet:test/fixtures/fleet.yaml',
      'fleet.describeFleet:missing.yaml',
    ]);
  });
});

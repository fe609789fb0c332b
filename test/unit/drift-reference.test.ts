/**
 * Drift references in a real local object store: one per cohort beside the record, the same bytes on
 * every run (fleet init is safe to run again), the registration's reference kept when the manifest's
 * conditions change later, and the simulated source of current features applying the manifest's drift
 * from its time on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  REFERENCE_FRAMES,
  referenceKey,
  storeDriftReferences,
  type DriftReference,
  type FeatureSource,
} from '../../activities/drift';
import type { ModelRecord } from '../../activities/contracts';
import { LocalObjectStore } from '../../activities/store';
import { simulatedFeatures } from '../../sim/features';
import { loadFleetManifest } from '../../fleet/manifest';
import { ROOT } from '../support';

const record = {
  name: 'prod',
  version: '1.0.0',
  digest: 'a'.repeat(64),
  recordKey: 'registry/prod/1.0.0.json',
} as ModelRecord;

test('references are written once per cohort and kept as registered', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-drift-ref-'));
  try {
    const store = new LocalObjectStore(dir);
    const manifest = loadFleetManifest(join(ROOT, 'test/fixtures/fleet-drift.yaml'));
    const keys = await storeDriftReferences(store, record, manifest, simulatedFeatures);
    assert.deepEqual(keys, [
      'registry/prod/1.0.0.drift/driftfleet/hw3/eu.json',
      'registry/prod/1.0.0.drift/driftfleet/hw4/us.json',
      'registry/prod/1.0.0.drift/driftfleet/hw3/nordic.json',
    ]);
    const first = await store.get(keys[1]!);
    assert.deepEqual(await storeDriftReferences(store, record, manifest, simulatedFeatures), keys);
    assert.ok(first!.equals((await store.get(keys[1]!))!), 'the same bytes on a second run');

    const changed = { ...manifest, cohorts: manifest.cohorts.map((c) => ({ ...c, nightShare: 0.9 })) };
    await storeDriftReferences(store, record, changed, simulatedFeatures);
    const kept = JSON.parse(
      (await store.get(referenceKey(record.recordKey, 'driftfleet', 'hw4/us')))!.toString(),
    ) as DriftReference;
    assert.equal(kept.conditions.nightShare, 0.1);
    assert.equal(
      kept.features.reduce((s, f) => s + f.counts.reduce((a, b) => a + b, 0), 0),
      8 * kept.frames,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the simulated source applies the manifest's drift from its time on", async () => {
  const manifest = loadFleetManifest(join(ROOT, 'test/fixtures/fleet-drift.yaml'));
  const us = manifest.cohorts.find((c) => c.name === 'hw4/us')!;
  const draw = (simAtMs: number) =>
    simulatedFeatures.currentFeatures({ manifest, cohort: us, simAtMs, originMs: 0, count: 4000, seed: 'x' });
  const spread = (f: Float32Array) => {
    let s = 0;
    for (let i = 0; i < f.length; i += 8) s += f[i]! * f[i]!;
    return s / (f.length / 8);
  };
  const before = await draw(2 * 3600_000 - 1);
  const after = await draw(2 * 3600_000);
  // Rain (camera noise x1.8 in 60% of frames) and worn sensors (x1.5) widen camera0 several times over.
  assert.ok(
    spread(after.features) > 2 * spread(before.features),
    `${spread(after.features)} vs ${spread(before.features)}`,
  );
  assert.equal(after.count, 4000);
});

test("a cohort's reference bins the feature source's sample, under the conditions the source names", async () => {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-drift-src-'));
  try {
    const store = new LocalObjectStore(dir);
    const manifest = loadFleetManifest(join(ROOT, 'test/fixtures/fleet-drift.yaml'));
    const asked: string[] = [];
    // A source that is not the simulated fleet: every feature j of frame i is i + j.
    const source: FeatureSource = {
      currentFeatures: () => Promise.reject(new Error('a reference reads no current features')),
      referenceFeatures: ({ cohort, count, seed }) => {
        asked.push(`${cohort.name}|${count}|${seed}`);
        const features = new Float32Array(count * 8).map((_, k) => Math.floor(k / 8) + (k % 8));
        return Promise.resolve({ count, features, conditions: { nightShare: 0.5 } });
      },
    };
    const [key] = await storeDriftReferences(store, record, manifest, source, ['hw4/us']);
    assert.deepEqual(asked, [`hw4/us|${REFERENCE_FRAMES}|${manifest.seed}|drift-reference|hw4/us`]);
    const stored = JSON.parse((await store.get(key!))!.toString()) as DriftReference;
    assert.deepEqual(stored.conditions, { nightShare: 0.5 });
    // The first decile of feature 3 over frames 0..n-1 (values 3..n+2), interpolated.
    const edge = stored.features[3]!.edges[0]!;
    assert.ok(Math.abs(edge - (3 + (REFERENCE_FRAMES - 1) / 10)) < 1e-9, String(edge));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

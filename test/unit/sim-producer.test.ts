/**
 * The simulated fleet is a producer like any fleet: every record it sends (shadow events with their
 * upload filter and budget, upload reports, canary events of both arms, its labeler's labels) passes
 * the event contract `fleetgate/v1`, checked here with the contract's own validation, since the writer
 * takes its typed records without parsing them again (`EventWriter.ingestTyped`). Its units are the
 * OTA channel's pseudonyms, and a window sent twice stores nothing new.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openFleetDatabase, type FleetDatabase } from '../../activities/db';
import { initSimFleet } from '../../activities/fleet';
import { EventWriter } from '../../events/writer';
import { validateBatch, type RecordKind, type RecordOf } from '../../events/contract';
import { loadFleetManifest } from '../../fleet/manifest';
import { SimulatedOta } from '../../sim/ota';
import { SimulatedFleetFeed } from '../../sim/producer';
import { OnnxModelRunner } from '../../workers/model-runner';
import { loadPseudonymKey } from '../../workers/secrets';
import { T0 } from '../feed-support';

const ROOT = resolve(__dirname, '..', '..');
const HOUR = 3_600_000;
const pack = (name: string) => {
  const bytes = readFileSync(join(ROOT, 'models', name, 'model.onnx'));
  return { bytes, digest: createHash('sha256').update(bytes).digest('hex') };
};

void describe('the simulated fleet as a producer', () => {
  let dir: string;
  let db: FleetDatabase;
  let runner: OnnxModelRunner;
  let writer: EventWriter;
  let feed: SimulatedFleetFeed;
  const sent: { kind: RecordKind; records: readonly unknown[] }[] = [];
  const production = pack('production');
  const candidate = pack('candidate-regress');

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fleetgate-producer-'));
    writeFileSync(
      join(dir, 'fleet.yaml'),
      `apiVersion: fleetgate/v1
kind: Fleet
name: prodfleet
seed: 5
skus: [{ name: hw3, speedFactor: 10, latencyBudgetMs: 50 }]
cohorts:
  - { name: hw3/eu, sku: hw3, region: eu, vehicles: 200, nightShare: 0.5 }
  - { name: hw3/us, sku: hw3, region: us, vehicles: 100, nightShare: 0.1 }
eventsPerVehicleHour: 20
labels: { rate: 0.5, delay: 1h, noise: 0.1 }
`,
    );
    const key = loadPseudonymKey(dir, {});
    db = await openFleetDatabase(join(dir, 'fleet.duckdb'));
    const blobs = new Map([production, candidate].map((m) => [m.digest, m.bytes]));
    runner = new OnnxModelRunner(async (digest) => blobs.get(digest));
    await initSimFleet({ conn: db.connection, key, root: dir }, 'fleet.yaml', {
      'hw3/eu': production.digest,
      'hw3/us': production.digest,
    });
    writer = await EventWriter.attach(db.instance);
    // The writer as the feed sees it: every batch checked against the contract on its way in.
    const checked = {
      ingestTyped: <K extends RecordKind>(
        kind: K,
        fleet: string,
        records: readonly RecordOf<K>[],
        opts?: { watermarkMs?: number },
      ) => {
        const v = validateBatch(kind, fleet, records, 'line');
        assert.ok(v.ok, `${kind}: ${JSON.stringify(v.ok ? [] : v.problems)}`);
        sent.push({ kind, records });
        return writer.ingestTyped(kind, fleet, records, opts);
      },
    };
    const conn = db.connection;
    feed = await SimulatedFleetFeed.create({
      conn,
      ota: new SimulatedOta(conn),
      runner,
      writer: checked,
      key,
    });
  });

  after(async () => {
    await runner.close();
    await writer.close();
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('sends shadow events, upload reports, canary events and labels that pass the contract', async () => {
    const manifest = loadFleetManifest(join(dir, 'fleet.yaml'), 'fleet.yaml');
    const window = {
      rolloutId: 'p-1',
      manifest,
      cohorts: manifest.cohorts,
      startMs: T0,
      candidateDigest: candidate.digest,
    };
    await feed.produce({
      ...window,
      phase: 'shadow',
      fromMs: T0,
      toMs: T0 + HOUR,
      share: 0.5,
      edge: { sample: 0.2, lowConfidence: 0.6, perVehiclePerDay: 48 },
    });
    await feed.produce({ ...window, phase: 'canary', fromMs: T0 + HOUR, toMs: T0 + 2 * HOUR });
    const kinds = (k: RecordKind) => sent.filter((s) => s.kind === k).flatMap((s) => s.records);
    const events = kinds('inference') as RecordOf<'inference'>[];
    const shadow = events.filter((e) => e.phase === 'shadow');
    assert.ok(shadow.length > 100, `${shadow.length} shadow events`);
    assert.ok(
      shadow.every((e) => e.shadow?.digest === candidate.digest && typeof e.shadow.safety === 'boolean'),
    );
    assert.ok(
      shadow.some((e) => e.upload.inclusionProbability < 1),
      'sampled uploads carry their probability',
    );
    const uploads = kinds('upload') as RecordOf<'upload'>[];
    assert.ok(uploads.length > 0 && uploads.every((u) => u.fromMs === T0 && u.at === T0 + HOUR));
    assert.equal(
      uploads.reduce((n, u) => n + u.uploaded, 0),
      shadow.length,
      'the reports count every upload sent',
    );
    const canary = events.filter((e) => e.phase === 'canary');
    assert.ok(
      canary.length > 1000 && canary.every((e) => e.arm === 'production'),
      'production runs everywhere',
    );
    // Units are the fleet's pseudonyms, never anything else.
    const units = new Set(
      (await db.connection.runAndReadAll(`SELECT vehicle FROM vehicles`))
        .getRowObjectsJS()
        .map((r) => r.vehicle),
    );
    assert.ok(events.every((e) => units.has(e.unit)));
    // The labeler answers what it is asked, after the delay.
    const asked = canary.slice(0, 50).map((e) => ({ eventId: e.eventId, requestedAtMs: e.at }));
    await feed.requestLabels('prodfleet', asked);
    const labels = kinds('label') as RecordOf<'label'>[];
    assert.equal(labels.length, 50);
    for (const [i, l] of labels.entries()) {
      const e = canary.find((c) => c.eventId === l.eventId)!;
      assert.ok(l.at >= e.at + 0.5 * HOUR && l.at <= e.at + 1.5 * HOUR, `label ${i} after its delay`);
    }
    // A window sent again sends nothing.
    const before = sent.length;
    await feed.produce({ ...window, phase: 'canary', fromMs: T0 + HOUR, toMs: T0 + 2 * HOUR });
    assert.equal(sent.length, before);
  });
});

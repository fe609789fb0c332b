/**
 * A rollout's batches read what a fleet sent over HTTP, with FLEETGATE_TELEMETRY=ingested: a worker's
 * services with the ingestion endpoint on their own fleet database (as `fleetgate worker` serves it with
 * FLEETGATE_INGEST_PORT), events and labels POSTed as NDJSON on 127.0.0.1, and the real fleet, label and
 * analysis activities. A batch counts exactly the events of its window, leaves out events that claim the
 * candidate with another model, counts late events in the next batch, waits for the watermark and then
 * reads what is there, and its label requests reach the labelers as files in the object store; labels
 * count only once their time has come.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openSimWorld, type SimWorld } from '../../sim/world';
import { createActivities, openServices } from '../../workers/worker';
import { startIngestServer, tokenVariable, type IngestServer } from '../../events/ingest-server';
import { recordRollout } from '../../events/rollouts';
import { labelRequestPrefix } from '../../activities/label-queue';
import { num, rows } from '../../activities/db';
import type { WindowResult } from '../../activities/telemetry';
import { gzipSync } from 'node:zlib';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { startMoto } from '../moto';
import {
  createS3Client,
  loadLandingConfig,
  loadStoreConfig,
  openObjectStore,
  type S3StoreConfig,
} from '../../workers/config';
import { startLandingLoop } from '../../workers/landing';

const ROOT = join(__dirname, '..', '..');
const FLEET = 'testfleet';
const TOKEN = 'fleet-token-0123456789abcdef';
const T = Date.UTC(2026, 2, 1);
const HOUR = 3_600_000;
const CAND = 'c'.repeat(64);
const OTHER = 'e'.repeat(64);
const unit = (i: number) => (i % 97).toString(16).padStart(20, '0');

type Acts = ReturnType<typeof createActivities>;

function event(id: string, at: number, over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    schema: 'fleetgate/v1',
    eventId: id,
    fleet: FLEET,
    cohort: 'hw3/eu',
    unit: unit(Number(id.replace(/\D/g, '')) || 0),
    rolloutId: 'ing-1',
    phase: 'canary',
    arm: 'production',
    modelDigest: 'd'.repeat(64),
    prediction: 0,
    confidence: 0.9,
    latencyMs: 3,
    safety: false,
    exposureHours: 0.1,
    upload: { tier: 'all', inclusionProbability: 1 },
    at,
    ...over,
  };
}

describe('a rollout reads what the fleet sent (FLEETGATE_TELEMETRY=ingested)', () => {
  let dir: string;
  let world: SimWorld;
  let server: IngestServer;
  let acts: Acts;
  let prod: string;

  async function send(kind: 'events' | 'labels', records: Record<string, unknown>[], watermark?: number) {
    const res = await fetch(`${server.url}/v1/${kind}/${FLEET}`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${TOKEN}`,
        'content-type': 'application/x-ndjson',
        ...(watermark === undefined ? {} : { 'fleetgate-watermark': String(watermark) }),
      },
      body: records.map((r) => JSON.stringify(r)).join('\n'),
    });
    const body = (await res.json()) as Record<string, unknown>;
    assert.equal(res.status, 200, JSON.stringify(body));
    return body;
  }

  const canary = (cohorts: string[], fromMs: number, toMs: number) =>
    acts.collectTelemetry({
      rolloutId: 'ing-1',
      manifest: 'test/fixtures/fleet.yaml',
      cohorts,
      candidateDigest: CAND,
      fromMs,
      toMs,
    }) as Promise<WindowResult>;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fleetgate-ingested-'));
    world = await openSimWorld({
      dataDir: dir,
      root: ROOT,
      fleet: 'test/fixtures/fleet.yaml',
      production: 'models/production',
      by: 'test',
      telemetry: { kind: 'ingested', watermarkWaitMs: 1500 },
    });
    prod = world.productionDigest;
    // The rollout the events name, as it is recorded when it takes its cohorts (events/rollouts.ts).
    await recordRollout(world.services.store, 'ing-1');
    server = await startIngestServer({
      writer: world.services.writer,
      env: { [tokenVariable(FLEET)]: TOKEN },
    });
    acts = createActivities(world.services);
  });

  after(async () => {
    await server?.close();
    await world?.close(false);
    rmSync(dir, { recursive: true, force: true });
  });

  test('a batch takes its window: both arms, never a candidate event of another model', async () => {
    const batch = [
      ...Array.from({ length: 120 }, (_, i) =>
        event(`a${i}`, T + i * 1000, { arm: 'candidate', modelDigest: CAND, prediction: i % 2 }),
      ),
      ...Array.from({ length: 80 }, (_, i) => event(`b${i}`, T + i * 1000, { modelDigest: prod })),
      // Claims the candidate's arm with another model: never counted for the candidate.
      ...Array.from({ length: 5 }, (_, i) => event(`x${i}`, T + i, { arm: 'candidate', modelDigest: OTHER })),
      // After the window: the next batch's.
      event('n0', T + HOUR + 5),
    ];
    const sent = await send('events', batch, T + HOUR);
    assert.equal(sent.accepted, 206);
    const first = await canary(['hw3/eu'], T, T + HOUR);
    assert.equal(first.written, true);
    assert.equal(first.events, 200);
    assert.equal(first.mismatched, 5);
    assert.equal(first.late, 0);
    // What the fleet sent is also kept in the object store, from which a new data worker rebuilds it.
    const kept = await world.services.store.list(`events/inference/fleet=${FLEET}/`);
    assert.ok(kept.length >= 1 && kept.every((k) => k.endsWith('.parquet')), kept.join(', '));
    const conn = world.services.db.connection;
    const byArm = await rows(
      conn,
      `SELECT arm, count(*) AS n, count(pred_candidate) AS c, count(pred_production) AS p FROM events
       WHERE batch_id = ? GROUP BY arm ORDER BY arm`,
      [first.batchId],
    );
    assert.deepEqual(
      byArm.map((r) => [r.arm, num(r.n), num(r.c), num(r.p)]),
      [
        ['candidate', 120, 120, 0],
        ['production', 80, 0, 80],
      ],
    );
    // The same batch again, and the same records again: nothing changes.
    assert.equal((await send('events', batch, T + HOUR)).duplicates, 206);
    assert.deepEqual(await canary(['hw3/eu'], T, T + HOUR), { ...first, written: false, mismatched: 0 });
  });

  test('events of a rollout the worker does not know are refused, naming the line and the field; nothing is stored', async () => {
    const before = await rows(world.services.db.connection, `SELECT count(*) AS n FROM ingested_inference`);
    const res = await fetch(`${server.url}/v1/events/${FLEET}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/x-ndjson' },
      body: [event('k0', T), event('k1', T, { rolloutId: 'ing-l' }), event('k2', T, { rolloutId: 'ing-l' })]
        .map((r) => JSON.stringify(r))
        .join('\n'),
    });
    assert.equal(res.status, 400);
    const { error: body } = (await res.json()) as {
      error: { code: string; problems: { line: number; field: string; message: string }[] };
    };
    assert.equal(body.code, 'invalid-batch');
    assert.deepEqual(
      body.problems.map((p) => [p.line, p.field]),
      [
        [2, 'rolloutId'],
        [3, 'rolloutId'],
      ],
    );
    assert.match(body.problems[0]!.message, /names no rollout this worker knows \("ing-l"\)/);
    assert.match(body.problems[0]!.message, /fleetgate status lists them/);
    const after = await rows(world.services.db.connection, `SELECT count(*) AS n FROM ingested_inference`);
    assert.equal(num(after[0]!.n), num(before[0]!.n), 'nothing of the batch was stored');
  });

  test('a window in which the fleet sent nothing is read as a batch of no events', async () => {
    const empty = await canary(['hw4/us'], T + 40 * HOUR, T + 41 * HOUR);
    assert.equal(empty.written, true);
    assert.equal(empty.events, 0);
    assert.equal(empty.late, 0);
  });

  test('events sent after their window was read are counted, late, in the next batch', async () => {
    await send('events', [event('l0', T + 10), event('l1', T + 20), event('l2', T + 30)]);
    await send('events', [event('m0', T + HOUR + 60), event('m1', T + HOUR + 70)], T + 2 * HOUR);
    const second = await canary(['hw3/eu'], T + HOUR, T + 2 * HOUR);
    assert.equal(second.events, 6, 'n0, m0, m1 and the three late ones');
    assert.equal(second.late, 3);
  });

  test('without a watermark a batch waits, then reads what is there', async () => {
    const at = T + 2 * HOUR;
    await send('events', [
      event('u0', at + 100, { cohort: 'hw4/us' }),
      event('u1', at + 200, { cohort: 'hw4/us' }),
    ]);
    const started = Date.now();
    const r = await canary(['hw4/us'], at, at + HOUR);
    assert.ok(Date.now() - started >= 1400, `waited ${Date.now() - started} ms for the watermark`);
    assert.equal(r.events, 2);
  });

  test('label requests reach the labelers as files; labels count from their time on', async () => {
    const files = await world.services.store.list(labelRequestPrefix(FLEET));
    assert.ok(files.length >= 1, 'a request file per batch with requests');
    const requested: string[] = [];
    for (const f of files) {
      const text = (await world.services.store.get(f))!.toString('utf8');
      for (const line of text.trim().split('\n')) {
        const r = JSON.parse(line) as {
          schema: string;
          eventId: string;
          requestedAt: number;
          reason: string;
        };
        assert.equal(r.schema, 'fleetgate/v1');
        assert.equal(r.reason, 'sample');
        requested.push(r.eventId);
      }
    }
    // labels.rate is 0.3 of the test fleet: about 0.3 of the 208 events read.
    assert.ok(requested.length > 30 && requested.length < 100, `${requested.length} requests`);
    const labelAt = T + 5 * HOUR;
    await send(
      'labels',
      requested.map((eventId) => ({
        schema: 'fleetgate/v1',
        eventId,
        label: 1,
        labeler: 'vendor-a',
        at: labelAt,
      })),
    );
    const before = await acts.labelCoverage({ rolloutId: 'ing-1', asOfMs: labelAt - 1 });
    assert.equal(before.labeled, 0, 'no label before its time');
    const after = await acts.labelCoverage({ rolloutId: 'ing-1', asOfMs: labelAt });
    assert.equal(after.labeled, requested.length);
    assert.equal(after.requested, requested.length);
  });

  test("a new data directory on the same store rebuilds the database and reads the rollout's batches again, alike", async () => {
    // The same object store under another data directory (a copy of the local store stands for S3).
    const dir2 = join(dir, 'new-owner');
    cpSync(join(dir, 'store'), join(dir2, 'store'), { recursive: true });
    const lines: string[] = [];
    const services = await openServices(
      dir2,
      ROOT,
      { kind: 'simulated' },
      { kind: 'ingested', watermarkWaitMs: 1500 },
      (line) => lines.push(line),
    );
    try {
      assert.match(
        lines.join('\n'),
        /rebuilt the fleet database from \d+ partitions of the store \(21\d events/,
      );
      const acts2 = createActivities(services);
      const labelAt = T + 5 * HOUR;
      // The first activity of the rollout reads its logged batches again, before it reads the database.
      const coverage = await acts2.labelCoverage({ rolloutId: 'ing-1', asOfMs: labelAt });
      assert.deepEqual(coverage, await acts.labelCoverage({ rolloutId: 'ing-1', asOfMs: labelAt }));
      const snapshot = (conn: typeof services.db.connection) =>
        rows(
          conn,
          `SELECT 'events' AS t, batch_id AS k, count(*) AS n, sum(ts_ms) AS s FROM events GROUP BY ALL
           UNION ALL SELECT 'batches', batch_id, events, 0 FROM batches
           UNION ALL SELECT 'stats', batch_id || cohort || arm, events, lat_sum FROM batch_stats
           UNION ALL SELECT 'requests', reason, count(*), sum(inclusion) FROM label_requests GROUP BY ALL
           UNION ALL SELECT 'labels', rollout_id, count(*), sum(label) FROM labels GROUP BY ALL
           ORDER BY ALL`,
        );
      const before = await snapshot(world.services.db.connection);
      assert.ok(before.filter((r) => r.t === 'batches').length >= 4);
      assert.deepEqual(await snapshot(services.db.connection), before);
      // Records ingested after a batch was read are left to the batch that took them: the second batch
      // took three late events, read again it takes the same three.
      const late = await rows(
        services.db.connection,
        `SELECT count(*) AS n FROM events WHERE batch_id LIKE '%canary:${T + HOUR}-%' AND ts_ms < ${T + HOUR}`,
      );
      assert.equal(num(late[0]!.n), 3);
    } finally {
      await services.close();
    }
  });

  test("files a stream puts in an S3 landing zone are read by the worker's loop and taken by the next batch", async () => {
    const moto = await startMoto();
    const env = {
      FLEETGATE_S3_ENDPOINT: moto.endpoint,
      AWS_REGION: 'eu-west-1',
      AWS_ACCESS_KEY_ID: 'test',
      AWS_SECRET_ACCESS_KEY: 'test',
    };
    const bucket = 'fleet-stream';
    const config = loadStoreConfig({ ...env, FLEETGATE_STORE: `s3://${bucket}/firehose` }) as S3StoreConfig;
    const admin = createS3Client(config);
    const lines: string[] = [];
    const loop = await startLandingLoop({
      writer: world.services.writer,
      config: loadLandingConfig({
        FLEETGATE_LANDING: `s3://${bucket}/firehose/`,
        FLEETGATE_LANDING_EVERY: '200ms',
      })!,
      store: loadStoreConfig({}),
      dataDir: dir,
      log: (line) => lines.push(line),
      env,
    });
    try {
      await admin.send(
        new CreateBucketCommand({
          Bucket: bucket,
          CreateBucketConfiguration: { LocationConstraint: 'eu-west-1' },
        }),
      );
      const zone = openObjectStore(config, dir);
      const from = T + 10 * HOUR;
      // What a Firehose stream writes: gzipped NDJSON under the fleet's events/ and the event's UTC hour.
      const records = Array.from({ length: 60 }, (_, i) =>
        event(`z${i}`, from + i * 1000, { prediction: i % 3 }),
      );
      const body = gzipSync(Buffer.from(records.map((r) => JSON.stringify(r)).join('\n') + '\n'));
      await zone.putIfAbsent(`${FLEET}/events/2026/03/01/10/part-0001.ndjson.gz`, body);
      // The same file delivered twice (a stream's retry): nothing counts twice.
      await zone.putIfAbsent(`${FLEET}/events/2026/03/01/10/part-0001-retry.ndjson.gz`, body);
      (zone as { close?: () => void }).close?.();
      for (let i = 0; ; i++) {
        const [r] = await world.services.writer.read(
          `SELECT count(*)::INTEGER AS n FROM ingested_inference WHERE fleet = $f AND event_id LIKE 'z%'`,
          { f: FLEET },
        );
        if (r!.n === 60 && lines.length >= 1) break;
        assert.ok(i < 150, `the loop read ${String(r!.n)} of 60 records: ${lines.join(' | ')}`);
        await new Promise((res) => setTimeout(res, 100));
      }
      const batch = await canary(['hw3/eu'], from, from + HOUR);
      assert.equal(batch.events, 60);
      assert.match(lines.join('\n'), /file\(s\) read/);
    } finally {
      await loop.stop();
      admin.destroy();
      await moto.stop();
    }
  });
});

/**
 * The simulated fleet in a process of its own (FLEETGATE_TELEMETRY=simulator): a batch publishes its
 * window request and waits for the watermarks or the simulator's receipt; the request carries what the
 * in-process feed reads from the OTA channel and the key, so the simulator makes exactly the in-process
 * feed's records from it; the process (`runSimulator`) sends them to a real ingestion endpoint, answers
 * label-request files, and sends nothing twice after a restart; its HTTP client splits, retries and
 * refuses as documented. Real DuckDB, onnxruntime, object store and HTTP on 127.0.0.1 throughout.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { openFleetDatabase, rows, type FleetDatabase } from '../../activities/db';
import { initSimFleet } from '../../activities/fleet';
import type { TelemetryWindow } from '../../activities/deps';
import { LocalObjectStore } from '../../activities/store';
import { StoreLabelQueue } from '../../activities/label-queue';
import {
  receiptFiles,
  receiptKey,
  SimulatorFeed,
  windowRequestKey,
  WindowRequest,
  SIM_REQUEST_PREFIX,
} from '../../activities/sim-requests';
import { EventWriter } from '../../events/writer';
import type { RecordKind } from '../../events/contract';
import { startIngestServer, tokenVariable, type IngestServer } from '../../events/ingest-server';
import { IngestClient, IngestRefused } from '../../events/sender';
import { loadFleetManifest } from '../../fleet/manifest';
import { SimulatedOta } from '../../sim/ota';
import { SimulatedFleetFeed, SimulatedProducer, type RecordSink } from '../../sim/producer';
import { runSimulator, windowOfRequest } from '../../sim/simulator-process';
import { loadTelemetryConfig } from '../../workers/config';
import { OnnxModelRunner } from '../../workers/model-runner';
import { loadPseudonymKey } from '../../workers/secrets';
import { T0 } from '../feed-support';

const ROOT = resolve(__dirname, '..', '..');
const HOUR = 3_600_000;
const FLEET = 'reqfleet';
const TOKEN = 'req-fleet-token-0123456789';
const pack = (name: string) => {
  const bytes = readFileSync(join(ROOT, 'models', name, 'model.onnx'));
  return { bytes, digest: createHash('sha256').update(bytes).digest('hex') };
};

/** A sink that keeps what it is given, in order, and stores nothing. */
function capture(): {
  sink: RecordSink;
  sent: { kind: RecordKind; records: unknown[]; watermarkMs?: number }[];
} {
  const sent: { kind: RecordKind; records: unknown[]; watermarkMs?: number }[] = [];
  return {
    sent,
    sink: {
      ingestTyped: (kind, _fleet, records, opts) => {
        sent.push({
          kind,
          records: [...records],
          ...(opts?.watermarkMs ? { watermarkMs: opts.watermarkMs } : {}),
        });
        return Promise.resolve({ accepted: records.length, duplicates: 0, late: 0, watermark: null });
      },
    },
  };
}

describe('FLEETGATE_TELEMETRY=simulator', () => {
  it('is a mode of its own; a bad value names the variable, the value and the modes', () => {
    assert.equal(loadTelemetryConfig({ FLEETGATE_TELEMETRY: 'simulator' }).kind, 'simulator');
    assert.equal(loadTelemetryConfig({ FLEETGATE_TELEMETRY: 'simulator' }).watermarkWaitMs, 60_000);
    assert.throws(
      () => loadTelemetryConfig({ FLEETGATE_TELEMETRY: 'simulater' }),
      /FLEETGATE_TELEMETRY must be "simulated", "ingested" or "simulator" \(got "simulater"\)/,
    );
  });
});

describe('window requests and the simulator process', () => {
  let dir: string;
  let db: FleetDatabase;
  let runner: OnnxModelRunner;
  let store: LocalObjectStore;
  let key: Buffer;
  let manifest: ReturnType<typeof loadFleetManifest>;
  let feed: SimulatorFeed;
  const production = pack('production');
  const candidate = pack('candidate-regress');
  let window: Omit<TelemetryWindow, 'phase' | 'fromMs' | 'toMs'>;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fleetgate-simreq-'));
    writeFileSync(
      join(dir, 'fleet.yaml'),
      `apiVersion: fleetgate/v1
kind: Fleet
name: ${FLEET}
seed: 7
skus: [{ name: hw3, speedFactor: 10, latencyBudgetMs: 50 }]
cohorts:
  - { name: hw3/eu, sku: hw3, region: eu, vehicles: 120, nightShare: 0.5 }
  - { name: hw3/us, sku: hw3, region: us, vehicles: 80, nightShare: 0.1 }
eventsPerVehicleHour: 20
labels: { rate: 0.5, delay: 1h, noise: 0.1 }
drift: [{ at: 30m, conditions: { nightShare: 0.9 } }]
`,
    );
    key = loadPseudonymKey(dir, {});
    db = await openFleetDatabase(join(dir, 'fleet.duckdb'));
    store = new LocalObjectStore(join(dir, 'store'));
    const blobs = new Map([production, candidate].map((m) => [m.digest, m.bytes]));
    runner = new OnnxModelRunner(async (digest) => blobs.get(digest));
    await initSimFleet({ conn: db.connection, key, root: dir }, 'fleet.yaml', {
      'hw3/eu': production.digest,
      'hw3/us': production.digest,
    });
    // Half of hw3/eu runs the candidate: a canary window has both arms.
    const ota = new SimulatedOta(db.connection);
    const eu = await ota.inventory(FLEET, 'hw3/eu');
    await ota.createJob({
      jobId: 'req-1:wave:1',
      rolloutId: 'req-1',
      fleet: FLEET,
      kind: 'deliver',
      wave: 1,
      digest: candidate.digest,
      targets: new Map([['hw3/eu', eu.vehicles.slice(0, 60)]]),
      result: null,
    });
    manifest = loadFleetManifest(join(dir, 'fleet.yaml'), 'fleet.yaml');
    window = {
      rolloutId: 'req-1',
      manifest,
      cohorts: manifest.cohorts,
      startMs: T0,
      candidateDigest: candidate.digest,
      versions: { [candidate.digest]: '2.0.0' },
    };
    feed = new SimulatorFeed({ store, conn: db.connection, ota, key, watermarkWaitMs: 300 });
  });

  after(async () => {
    await runner.close();
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const shadowWindow = (): TelemetryWindow => ({
    ...window,
    phase: 'shadow',
    fromMs: T0,
    toMs: T0 + HOUR,
    share: 0.5,
    edge: { sample: 0.3, lowConfidence: 0.6, perVehiclePerDay: 100 },
  });
  const canaryWindow = (): TelemetryWindow => ({
    ...window,
    phase: 'canary',
    fromMs: T0 + HOUR,
    toMs: T0 + 2 * HOUR,
  });

  it('a batch publishes its request, of pseudonyms only, and waits no longer than the wait', async () => {
    for (const w of [shadowWindow(), canaryWindow()]) {
      const started = Date.now();
      await feed.produce(w);
      const waited = Date.now() - started;
      assert.ok(waited >= 280 && waited < 5_000, `waited ${waited} ms for watermarks that never came`);
      const k = windowRequestKey({ ...w, fleet: FLEET });
      assert.equal(k, `${SIM_REQUEST_PREFIX}${FLEET}/req-1/${w.phase}/${w.fromMs}-${w.toMs}.json`);
      const req = WindowRequest.parse(JSON.parse((await store.get(k))!.toString('utf8')));
      const vehicles = new Set(
        (await rows(db.connection, `SELECT vehicle FROM vehicles`)).map((r) => String(r.vehicle)),
      );
      assert.ok(
        req.cohorts.every((c) => c.units.every((u) => vehicles.has(u))),
        'units are pseudonyms',
      );
      const raw = (await store.get(k))!.toString('utf8');
      assert.ok(!raw.includes(key.toString('hex')), 'the key is never written');
      // Half of hw3/eu runs the candidate (the wave of before()): two models, each unit's named.
      const eu = req.cohorts.find((c) => c.name === 'hw3/eu')!;
      assert.deepEqual([...eu.models].sort(), [production.digest, candidate.digest].sort());
      if (w.phase === 'shadow') assert.equal(req.cohorts[0]!.shadow!.length, 60);
    }
    // Published again (a retried batch): the same object, no error.
    await feed.produce(canaryWindow());
  });

  it('a batch stops waiting once the simulator wrote its receipt', async () => {
    const w: TelemetryWindow = { ...window, phase: 'canary', fromMs: T0 + 5 * HOUR, toMs: T0 + 6 * HOUR };
    const slow = new SimulatorFeed({
      store,
      conn: db.connection,
      ota: new SimulatedOta(db.connection),
      key,
      watermarkWaitMs: 20_000,
    });
    const started = Date.now();
    setTimeout(() => {
      void store.putIfAbsent(receiptKey(windowRequestKey({ ...w, fleet: FLEET })), Buffer.from('{}\n'));
    }, 300);
    await slow.produce(w);
    assert.ok(Date.now() - started < 5_000, `waited ${Date.now() - started} ms`);
  });

  it('a batch waits for the receipt even where the watermarks are past its window (a later rollout)', async () => {
    // An earlier, time-scaled rollout of this data directory left every cohort's watermark far ahead.
    const ahead = T0 + 1000 * HOUR;
    for (const cohort of ['hw3/eu', 'hw3/us']) {
      await rows(db.connection, `INSERT OR REPLACE INTO ingest_watermarks VALUES (?, ?, ?, ?)`, [
        FLEET,
        cohort,
        ahead,
        Date.now(),
      ]);
    }
    const w: TelemetryWindow = { ...window, phase: 'canary', fromMs: T0 + 7 * HOUR, toMs: T0 + 8 * HOUR };
    const waiting = new SimulatorFeed({
      store,
      conn: db.connection,
      ota: new SimulatedOta(db.connection),
      key,
      watermarkWaitMs: 20_000,
    });
    try {
      const started = Date.now();
      setTimeout(() => {
        void store.putIfAbsent(receiptKey(windowRequestKey({ ...w, fleet: FLEET })), Buffer.from('{}\n'));
      }, 700);
      await waiting.produce(w);
      const waited = Date.now() - started;
      assert.ok(waited >= 650, `read after ${waited} ms, before the simulator sent the window`);
      assert.ok(waited < 5_000, `waited ${waited} ms`);
    } finally {
      await rows(db.connection, `DELETE FROM ingest_watermarks WHERE fleet = ?`, [FLEET]);
    }
  });

  it('the simulator makes from a request exactly the records of the in-process feed', async () => {
    const inProcess = capture();
    const inFeed = await SimulatedFleetFeed.create({
      conn: db.connection,
      ota: new SimulatedOta(db.connection),
      runner,
      writer: inProcess.sink,
      key,
    });
    const fromRequest = capture();
    const other = await openFleetDatabase(':memory:');
    try {
      const producer = await SimulatedProducer.create({
        conn: other.connection,
        runner,
        sink: fromRequest.sink,
      });
      for (const w of [shadowWindow(), canaryWindow()]) {
        await inFeed.produce(w);
        const req = WindowRequest.parse(
          JSON.parse((await store.get(windowRequestKey({ ...w, fleet: FLEET })))!.toString('utf8')),
        );
        const { window: asked, source } = windowOfRequest(req);
        await producer.produce(asked, source);
      }
      assert.ok(inProcess.sent.length >= 4, `${inProcess.sent.length} batches`);
      assert.deepEqual(fromRequest.sent, inProcess.sent);
      const kinds = new Set(inProcess.sent.map((s) => s.kind));
      assert.deepEqual([...kinds].sort(), ['inference', 'upload']);
      // The labeler answers the same.
      const events = inProcess.sent.filter((s) => s.kind === 'inference').flatMap((s) => s.records);
      const asked = (events as { eventId: string; at: number }[])
        .slice(0, 30)
        .map((e) => ({ eventId: e.eventId, requestedAtMs: e.at }));
      await inFeed.requestLabels(FLEET, asked);
      assert.equal(await producer.requestLabels(FLEET, asked), 30);
      assert.deepEqual(fromRequest.sent.at(-1), inProcess.sent.at(-1));
    } finally {
      await other.close();
    }
  });

  it('the process sends each window and label file to the endpoint once, across a restart', async () => {
    const ingestDir = join(dir, 'ingest');
    const writer = await EventWriter.open(join(ingestDir, 'ingest.duckdb'));
    const env = { [tokenVariable(FLEET)]: TOKEN };
    // The simulated fleet's clock is ahead of this one: the endpoint takes its watermarks anyway.
    const server = await startIngestServer({
      writer,
      env,
      maxWatermarkAheadMs: Infinity,
      log: () => undefined,
    });
    try {
      await new StoreLabelQueue(store).requestLabels(FLEET, [
        { eventId: 'not-simulated-0', requestedAtMs: T0 + 3 * HOUR, reason: 'sample' },
      ]);
      await store.putIfAbsent(
        `${SIM_REQUEST_PREFIX}${FLEET}/bad/canary/1-2.json`,
        Buffer.from('{"schema":1}'),
      );
      const lines: string[] = [];
      const opts = {
        ingestUrl: server.url,
        store,
        runner,
        dbPath: join(dir, 'simulator.duckdb'),
        everyMs: 50,
        once: true,
        env,
        log: (l: string) => lines.push(l),
      };
      const first = await runSimulator(opts);
      // The two published windows and those of the two receipt tests (already receipted: sent all the same).
      assert.equal(first.windows, 4);
      assert.equal(first.failed, 0, lines.join('\n'));
      assert.ok(first.events > 1000, `${first.events} events`);
      assert.equal(first.labelFiles, 1);
      assert.equal(first.labels, 0, 'an event it never sent gets no label');
      assert.ok(
        lines.some((l) => /window request .*bad.* left alone: schema: /.test(l)),
        lines.join('\n'),
      );
      const conn = await writer.connect();
      const query = async (sql: string) => (await conn.runAndReadAll(sql)).getRowObjectsJS();
      const count = async (table: string) =>
        Number((await query(`SELECT count(*) AS n FROM ${table}`))[0]!.n);
      assert.equal(await count('ingested_inference'), first.events);
      assert.ok((await count('ingested_uploads')) > 0);
      for (const w of [shadowWindow(), canaryWindow()]) {
        assert.ok(
          await store.get(receiptKey(windowRequestKey({ ...w, fleet: FLEET }))),
          'a receipt per window',
        );
      }
      const [wm] = await query(`SELECT max(watermark_ms) AS w FROM ingest_watermarks`);
      assert.equal(Number(wm!.w), T0 + 8 * HOUR);
      // The worker asks for labels of what was sent: the simulator answers them.
      const sentIds = (await query(`SELECT event_id FROM ingested_inference ORDER BY event_id LIMIT 25`)).map(
        (r) => String(r.event_id),
      );
      await new StoreLabelQueue(store).requestLabels(
        FLEET,
        sentIds.map((eventId) => ({ eventId, requestedAtMs: T0 + 2 * HOUR, reason: 'sample' })),
      );
      const again = await runSimulator({ ...opts, log: () => undefined });
      assert.deepEqual(
        { windows: again.windows, events: again.events, labelFiles: again.labelFiles, labels: again.labels },
        { windows: 0, events: 0, labelFiles: 1, labels: 25 },
        'a restart sends nothing twice, only the new file',
      );
      assert.equal(await count('ingested_labels'), 25);
      assert.ok(
        lines.every((l) => !sentIds.some((id) => l.includes(id))),
        'no event id in the log',
      );
      conn.closeSync();
    } finally {
      await server.close();
      await writer.close();
    }
  });

  it('with a landing zone, a window whose receipt a stop kept from being written names its files again', async () => {
    const w: TelemetryWindow = { ...window, phase: 'canary', fromMs: T0 + 10 * HOUR, toMs: T0 + 11 * HOUR };
    await feed.produce(w); // publishes the request; nobody answers within the wait
    const k = windowRequestKey({ ...w, fleet: FLEET });
    const dbPath = join(dir, 'simulator-landing.duckdb');
    const opts = {
      landing: { store, prefix: 'zone' },
      store,
      runner,
      dbPath,
      everyMs: 50,
      once: true,
      log: () => undefined,
    };
    await runSimulator(opts);
    const files = receiptFiles((await store.get(receiptKey(k)))!);
    assert.ok(
      files.length > 0 && files.every((f) => f.startsWith(`zone/${FLEET}/events/`)),
      files.join(', '),
    );
    // A stop after the window was written and before its receipt: the receipt is not there, and the
    // process has not marked the request done.
    await store.delete(receiptKey(k));
    const db2 = await openFleetDatabase(dbPath);
    await rows(db2.connection, `DELETE FROM sim_done WHERE key = ?`, [k]);
    await db2.close();
    const again = await runSimulator(opts);
    assert.equal(again.windows, 1);
    assert.deepEqual(
      receiptFiles((await store.get(receiptKey(k)))!),
      files,
      'the same files (content-named), named again, so the batch waits for them',
    );
  });
});

describe('the ingestion client', () => {
  let dir: string;
  let writer: EventWriter;
  let server: IngestServer;
  const env = { [tokenVariable(FLEET)]: TOKEN };
  const label = (i: number) => ({
    schema: 'fleetgate/v1' as const,
    eventId: `e${i}`,
    label: i % 2,
    labeler: 'vendor',
    at: T0 + i,
  });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fleetgate-sender-'));
    writer = await EventWriter.open(join(dir, 'ingest.duckdb'));
    server = await startIngestServer({ writer, env, log: () => undefined });
  });
  after(async () => {
    await server.close();
    await writer.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('sends in parts, sums what the endpoint did, and counts a second send as duplicates', async () => {
    const client = new IngestClient({ url: server.url, env, recordsPerRequest: 40 });
    const records = Array.from({ length: 100 }, (_, i) => label(i));
    assert.deepEqual(await client.ingestTyped('label', FLEET, records), {
      accepted: 100,
      duplicates: 0,
      late: 0,
      watermark: null,
    });
    assert.equal((await client.ingestTyped('label', FLEET, records)).duplicates, 100);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(metrics, /fleetgate_ingest_batches_total\{kind="label"\} 6/);
  });

  it('refuses at once what no retry fixes, naming the token variable, never the token', async () => {
    const client = new IngestClient({ url: server.url, env: { [tokenVariable(FLEET)]: 'wrong' } });
    await assert.rejects(client.ingestTyped('label', FLEET, [label(1)]), (err: Error) => {
      assert.ok(err instanceof IngestRefused && err.status === 401, String(err));
      assert.match(err.message, /FLEETGATE_INGEST_TOKEN_REQFLEET/);
      assert.ok(!err.message.includes('wrong'));
      return true;
    });
    await assert.rejects(
      new IngestClient({ url: server.url, env: {} }).ingestTyped('label', FLEET, [label(1)]),
      /no token for fleet "reqfleet": set FLEETGATE_INGEST_TOKEN_REQFLEET/,
    );
    assert.throws(() => new IngestClient({ url: 'ftp://x' }), /must be http:\/\/ or https:\/\//);
  });

  it('a watermark over an hour ahead is refused by default, taken when the endpoint allows it', async () => {
    const event = {
      schema: 'fleetgate/v1',
      eventId: 'w0',
      fleet: FLEET,
      cohort: 'hw3/eu',
      unit: 'a'.repeat(20),
      rolloutId: 'r',
      phase: 'canary',
      arm: 'production',
      modelDigest: 'd'.repeat(64),
      prediction: 0,
      confidence: 0.9,
      latencyMs: 3,
      safety: false,
      exposureHours: 0.1,
      upload: { tier: 'all', inclusionProbability: 1 },
      at: Date.now(),
    } as const;
    const ahead = Date.now() + 5 * HOUR;
    const client = new IngestClient({ url: server.url, env });
    await assert.rejects(
      client.ingestTyped('inference', FLEET, [event], { watermarkMs: ahead }),
      (err: Error) => {
        assert.match(err.message, /400 bad-watermark/);
        // It says how far ahead, what it takes, and where a time-scaled fleet sends instead.
        assert.match(err.message, /1800\d s ahead of the server's clock, more than the 3600 s of clock skew/);
        assert.match(err.message, /FLEETGATE_TELEMETRY=simulator/);
        return true;
      },
    );
    const open = await startIngestServer({
      writer,
      env,
      maxWatermarkAheadMs: Infinity,
      log: () => undefined,
    });
    try {
      const r = await new IngestClient({ url: open.url, env }).ingestTyped('inference', FLEET, [event], {
        watermarkMs: ahead,
      });
      assert.deepEqual(r.watermark, { 'hw3/eu': ahead });
    } finally {
      await open.close();
    }
  });

  it('retries a busy or failing endpoint after Retry-After, and a refused connection with backoff', async () => {
    let calls = 0;
    const flaky: Server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        calls++;
        if (calls === 1)
          return res.writeHead(429, { 'retry-after': '0' }).end('{"error":{"code":"busy","message":"m"}}');
        if (calls === 2) return res.writeHead(503).end('{"error":{"code":"closing","message":"m"}}');
        res.writeHead(200).end('{"accepted":1,"duplicates":0,"late":0,"watermark":null}');
      });
    });
    await new Promise<void>((r) => flaky.listen(0, '127.0.0.1', r));
    const port = (flaky.address() as AddressInfo).port;
    const retries: number[] = [];
    try {
      const client = new IngestClient({
        url: `http://127.0.0.1:${port}`,
        env,
        baseDelayMs: 20,
        onRetry: (i) => retries.push(i.status),
      });
      assert.equal((await client.ingestTyped('label', FLEET, [label(1)])).accepted, 1);
      assert.deepEqual(retries, [429, 503]);
    } finally {
      await new Promise((r) => flaky.close(r));
    }
    // Nothing listens on the port until the endpoint starts: the client waits for it.
    retries.length = 0;
    const client = new IngestClient({
      url: `http://127.0.0.1:${port}`,
      env,
      baseDelayMs: 100,
      onRetry: (i) => retries.push(i.status),
    });
    let late: IngestServer | undefined;
    const starting = new Promise<void>((r) =>
      setTimeout(() => {
        void startIngestServer({ writer, env, port, log: () => undefined }).then((s) => {
          late = s;
          r();
        });
      }, 400),
    );
    try {
      const r = await client.ingestTyped('label', FLEET, [label(500)]);
      assert.equal(r.accepted, 1);
      assert.ok(retries.length >= 1 && retries.every((s) => s === 0), JSON.stringify(retries));
    } finally {
      await starting;
      await late?.close();
    }
  });

  it('`fleetgate fleet simulate` refuses bad flags with exit code 2, naming the flag and the fix', async () => {
    const run = (args: string[]) =>
      promisify(execFile)(process.execPath, ['bin/fleetgate.js', 'fleet', 'simulate', ...args], {
        cwd: ROOT,
        encoding: 'utf8',
      }).then(
        () => ({ code: 0, stderr: '' }),
        (err: { code: number; stderr: string }) => ({ code: err.code, stderr: err.stderr }),
      );
    const noUrl = await run(['--every', '1s']);
    assert.equal(noUrl.code, 2);
    assert.match(noUrl.stderr, /needs --ingest/);
    const fast = await run(['--ingest', 'http://127.0.0.1:1', '--every', '1ms']);
    assert.equal(fast.code, 2);
    assert.match(fast.stderr, /--every must be a duration from 10ms to 1m.*\(got "1ms"\)/);
  });
});

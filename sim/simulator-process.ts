/**
 * The simulated fleet and its labeler as a process of their own (`fleetgate fleet simulate --ingest URL`),
 * for a worker with FLEETGATE_TELEMETRY=simulator: it polls the object store for the window requests the
 * worker's batches publish (activities/sim-requests.ts), runs each window's simulation (the code of the
 * in-process feed, sim/producer.ts, with the request's units and shadow units) and sends its inference
 * events, each cohort's last part with `Fleetgate-Watermark` at the window's end, and upload reports to
 * the ingestion endpoint over HTTP (events/sender.ts), or, with `--landing`, writes them as gzip NDJSON
 * files into the landing zone the worker reads (events/landing-writer.ts; no watermark there), then
 * writes the window's receipt beside the request (naming the landing files, once they are all in the
 * store, so that the batch also waits for the worker to read them). It answers the label-request files
 * of the fleets it simulates (activities/label-queue.ts) by sending (or writing) the labeler's label
 * records. Models are the ONNX blobs of the object store, as the worker loads them.
 *
 * What it has done (windows sent, label files answered) and the labeler's private queue are kept in a
 * DuckDB file of its own (default `<data dir>/simulator.duckdb`), never the worker's fleet database: a
 * restart sends nothing twice (and the endpoint counts a record sent again as a duplicate). It logs one
 * line per window and per label file, and must never log or send a raw unit id (units are the
 * pseudonyms of the requests), a token, or a record the contract refuses (the endpoint validates them),
 * and never overwrite a landing file (write-once keys).
 */
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import type { LabelRequestOut, ModelRunner, ObjectStore, TelemetryWindow } from '../activities/deps';
import { exclusive, lockedError, rows } from '../activities/db';
import { labelRequestPrefix } from '../activities/label-queue';
import {
  isWindowRequestKey,
  receiptKey,
  SIM_REQUEST_PREFIX,
  WindowRequest,
} from '../activities/sim-requests';
import { IngestClient } from '../events/sender';
import { LandingWriter } from '../events/landing-writer';
import { loadStoreConfig, openObjectStore } from '../workers/config';
import { OnnxModelRunner, blobKey } from '../workers/model-runner';
import { LocalObjectStore } from '../activities/store';
import { SimulatedProducer, type UnitSource } from './producer';

export interface SimulatorOptions {
  /** The ingestion endpoint, e.g. the worker's (FLEETGATE_INGEST_PORT); unused with `landing`. */
  ingestUrl?: string;
  /** Instead of the endpoint: files in this landing zone (the store and key prefix the worker reads). */
  landing?: { store: ObjectStore; prefix: string };
  /** The worker's object store: window requests, label-request files and model blobs. */
  store: ObjectStore;
  runner: ModelRunner;
  /** The process's own DuckDB file. */
  dbPath: string;
  /** How often it looks for new requests. */
  everyMs: number;
  /** Handle what is there once, then return. */
  once?: boolean;
  /** Where the fleets' ingestion tokens are read (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Stops the process: it returns after the item at hand (an HTTP wait is cut short). */
  signal?: AbortSignal;
  log: (line: string) => void;
}

/** What a run did. */
export interface SimulatorRun {
  windows: number;
  labelFiles: number;
  events: number;
  labels: number;
  /** Items that failed in their last attempt (tried again on the next pass, unless `once`). */
  failed: number;
}

const DONE_SCHEMA = `CREATE TABLE IF NOT EXISTS sim_done (key VARCHAR PRIMARY KEY);`;

/** The window a request asks for, and its units as the producer reads them. */
export function windowOfRequest(req: WindowRequest): { window: TelemetryWindow; source: UnitSource } {
  const manifest = req.manifest;
  const byName = new Map(req.cohorts.map((c) => [c.name, c]));
  const window: TelemetryWindow = {
    phase: req.phase,
    rolloutId: req.rolloutId,
    manifest,
    cohorts: req.cohorts.map((c) => manifest.cohorts.find((m) => m.name === c.name)!),
    fromMs: req.fromMs,
    toMs: req.toMs,
    startMs: req.startMs,
    candidateDigest: req.candidateDigest,
    ...(req.versions ? { versions: req.versions } : {}),
    ...(req.share !== undefined ? { share: req.share } : {}),
    ...(req.edge ? { edge: req.edge } : {}),
  };
  const source: UnitSource = {
    inventory: (_fleet, cohort) => {
      const c = byName.get(cohort);
      return Promise.resolve(
        c ? { vehicles: c.units, digests: c.model.map((i) => c.models[i]!) } : { vehicles: [], digests: [] },
      );
    },
    shadowUnits: (_w, cohort) => {
      const c = byName.get(cohort);
      return Promise.resolve(c ? (c.shadow ?? []).map((i) => c.units[i]!) : []);
    },
  };
  return { window, source };
}

/** Polls and sends until stopped (or once). */
export async function runSimulator(opts: SimulatorOptions): Promise<SimulatorRun> {
  const { store, log, signal } = opts;
  if (opts.dbPath !== ':memory:') mkdirSync(dirname(opts.dbPath), { recursive: true });
  let instance: DuckDBInstance;
  try {
    instance = await DuckDBInstance.create(opts.dbPath);
  } catch (err) {
    throw lockedError(opts.dbPath, err);
  }
  const conn = await instance.connect();
  const run: SimulatorRun = { windows: 0, labelFiles: 0, events: 0, labels: 0, failed: 0 };
  try {
    await conn.run(DONE_SCHEMA);
    const done = new Set((await rows(conn, `SELECT key FROM sim_done`)).map((r) => String(r.key)));
    const markDone = async (key: string) => {
      await exclusive(conn, () =>
        rows(conn, `INSERT INTO sim_done VALUES (?) ON CONFLICT DO NOTHING`, [key]),
      );
      done.add(key);
    };
    const landing = opts.landing ? new LandingWriter(opts.landing) : undefined;
    if (!landing && opts.ingestUrl === undefined)
      throw new Error('give the ingestion endpoint or a landing zone');
    const client =
      landing ??
      new IngestClient({
        url: opts.ingestUrl!,
        ...(opts.env ? { env: opts.env } : {}),
        ...(signal ? { signal } : {}),
        onRetry: ({ status, delayMs }) =>
          log(
            `the endpoint ${status === 0 ? 'could not be reached' : `answered ${status}`}; again in ${delayMs} ms`,
          ),
      });
    const producer = await SimulatedProducer.create({ conn, runner: opts.runner, sink: client });
    /** Requests that are not window requests of this version: said once, never tried again. */
    const unreadable = new Set<string>();
    while (!signal?.aborted) {
      run.failed = 0;
      const keys = (await store.list(SIM_REQUEST_PREFIX)).filter(isWindowRequestKey);
      const fleets = [...new Set(keys.map((k) => k.slice(SIM_REQUEST_PREFIX.length).split('/')[0]!))];
      // Windows in time order (the watermark of a cohort only goes up), then by key.
      const pending = keys
        .filter((k) => !done.has(k) && !unreadable.has(k))
        .map((k) => ({ k, from: Number(/\/(\d+)-\d+\.json$/.exec(k)![1]) }))
        .sort((a, b) => a.from - b.from || (a.k < b.k ? -1 : 1));
      for (const { k } of pending) {
        if (signal?.aborted) break;
        const parsed = await readRequest(store, k);
        if (!parsed.ok) {
          unreadable.add(k);
          log(`window request ${k} left alone: ${parsed.problem}`);
          continue;
        }
        try {
          const { window, source } = windowOfRequest(parsed.request);
          landing?.takeWritten();
          const receipt = receiptKey(k);
          const receipted = (await store.get(receipt)) !== undefined;
          // A window sent to a landing zone before a stop that came before its receipt is written again:
          // the same records make the same files (content-named, write-once), which the receipt then names.
          const sent = await producer.produce(window, source, { again: landing !== undefined && !receipted });
          // The receipt ends the batch's wait, written once every file is in the store and naming them;
          // one already there (a restart) is kept as it is.
          const files = landing?.takeWritten();
          if (!receipted) {
            await store.putIfAbsent(
              receipt,
              Buffer.from(JSON.stringify({ request: k, ...(files ? { files } : {}) }) + '\n'),
            );
          }
          await markDone(k);
          run.windows++;
          run.events += sent.events;
          log(
            `window ${window.manifest.name} ${window.rolloutId} ${window.phase} ` +
              `${new Date(window.fromMs).toISOString()}..${new Date(window.toMs).toISOString()}: ` +
              `${sent.events} events, ${sent.uploads} upload reports ${landing ? `written in ${files!.length} landing file(s)` : 'sent'}`,
          );
        } catch (err) {
          if (signal?.aborted) break;
          run.failed++;
          log(`window request ${k} failed: ${firstLine(err)}; trying again on the next pass`);
        }
      }
      for (const fleet of fleets) {
        if (signal?.aborted) break;
        const files = (await store.list(labelRequestPrefix(fleet))).filter(
          (k) => k.endsWith('.ndjson') && !done.has(k) && !unreadable.has(k),
        );
        for (const k of files) {
          if (signal?.aborted) break;
          const requests = await readLabelRequests(store, k);
          if (!requests.ok) {
            unreadable.add(k);
            log(`label-request file ${k} left alone: ${requests.problem}`);
            continue;
          }
          try {
            landing?.takeWritten();
            const n = await producer.requestLabels(fleet, requests.requests);
            await markDone(k);
            run.labelFiles++;
            run.labels += n;
            const where = landing ? ` in ${landing.takeWritten().length} landing file(s)` : '';
            log(`label-request file ${k}: ${n} labels sent${where} for ${requests.requests.length} requests`);
          } catch (err) {
            if (signal?.aborted) break;
            run.failed++;
            log(`label-request file ${k} failed: ${firstLine(err)}; trying again on the next pass`);
          }
        }
      }
      if (opts.once) break;
      await pause(opts.everyMs, signal);
    }
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
  return run;
}

/** A window request of the store, or what is wrong with it (field and fix, never its units). */
async function readRequest(
  store: ObjectStore,
  key: string,
): Promise<{ ok: true; request: WindowRequest } | { ok: false; problem: string }> {
  const bytes = await store.get(key);
  if (!bytes) return { ok: false, problem: 'it is gone' };
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch {
    return { ok: false, problem: 'it is not JSON; a worker with FLEETGATE_TELEMETRY=simulator writes them' };
  }
  const r = WindowRequest.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    return {
      ok: false,
      problem: `${issue.path.join('.') || '(the object)'}: ${issue.message} (a request of another version? update this command to the worker's)`,
    };
  }
  return { ok: true, request: r.data };
}

/** The requests of a label-request file (one JSON line each: eventId, requestedAt). */
async function readLabelRequests(
  store: ObjectStore,
  key: string,
): Promise<{ ok: true; requests: LabelRequestOut[] } | { ok: false; problem: string }> {
  const bytes = await store.get(key);
  if (!bytes) return { ok: false, problem: 'it is gone' };
  const requests: LabelRequestOut[] = [];
  const lines = bytes.toString('utf8').split('\n');
  for (const [i, line] of lines.entries()) {
    if (line.trim() === '') continue;
    let r: { eventId?: unknown; requestedAt?: unknown };
    try {
      r = JSON.parse(line) as typeof r;
    } catch {
      return { ok: false, problem: `line ${i + 1} is not JSON` };
    }
    if (typeof r.eventId !== 'string' || typeof r.requestedAt !== 'number') {
      return { ok: false, problem: `line ${i + 1} needs "eventId" (a string) and "requestedAt" (epoch ms)` };
    }
    requests.push({ eventId: r.eventId, requestedAtMs: r.requestedAt });
  }
  return { ok: true, requests };
}

function firstLine(err: unknown): string {
  return String((err as Error)?.message ?? err).split('\n')[0]!;
}

function pause(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** What `fleetgate fleet simulate` was given, checked by the command. */
export interface SimulatorCommand {
  /** The ingestion endpoint; or `landing`. */
  ingestUrl?: string;
  /** A key prefix of the store (`store`), or s3://BUCKET/PREFIX: files there instead of HTTP. */
  landing?: string;
  /** A store directory, or s3://BUCKET/PREFIX; absent: the configured store (FLEETGATE_STORE). */
  store?: string;
  dbPath: string;
  dataDir: string;
  everyMs: number;
  once: boolean;
}

/**
 * Runs the process until SIGINT or SIGTERM (or once): the store, the models from its blobs, the
 * endpoint. Returns the exit code: 0, or 1 when `once` left an item failed.
 */
export async function simulatorCommand(c: SimulatorCommand): Promise<number> {
  const storeConfig =
    c.store === undefined
      ? loadStoreConfig()
      : c.store.startsWith('s3://')
        ? loadStoreConfig({ ...process.env, FLEETGATE_STORE: c.store })
        : undefined;
  const store = storeConfig
    ? openObjectStore(storeConfig, c.dataDir)
    : new LocalObjectStore(resolve(c.store!));
  const landing =
    c.landing === undefined
      ? undefined
      : c.landing.startsWith('s3://')
        ? { store: openLandingS3(c.landing, c.dataDir), prefix: '' }
        : { store, prefix: c.landing };
  const runner = new OnnxModelRunner((digest) => store.get(blobKey(digest)));
  const stop = new AbortController();
  const onSignal = () => stop.abort(new Error('stopped by a signal'));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const log = (line: string) => console.log(`fleetgate fleet simulate: ${line}`);
  log(
    `${landing ? `writing files into the landing zone ${c.landing}` : `sending to ${new URL(c.ingestUrl!).origin}`}, ` +
      `looking for window requests every ${c.everyMs} ms${c.once ? ' (once)' : ''}; its own database ${c.dbPath}`,
  );
  try {
    const run = await runSimulator({
      ...(c.ingestUrl !== undefined ? { ingestUrl: c.ingestUrl } : {}),
      ...(landing ? { landing } : {}),
      store,
      runner,
      dbPath: c.dbPath,
      everyMs: c.everyMs,
      once: c.once,
      signal: stop.signal,
      log,
    });
    log(
      `${stop.signal.aborted ? 'stopped' : 'done'}: ${run.windows} windows (${run.events} events) and ` +
        `${run.labelFiles} label-request files (${run.labels} labels) sent`,
    );
    return c.once && run.failed > 0 ? 1 : 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await runner.close();
    (store as { close?: () => void }).close?.();
    if (landing && landing.store !== store) (landing.store as { close?: () => void }).close?.();
  }
}

/** The store of an s3:// landing zone (endpoint and credentials as FLEETGATE_STORE's); errors name --landing. */
function openLandingS3(location: string, dataDir: string): ObjectStore {
  try {
    return openObjectStore(loadStoreConfig({ ...process.env, FLEETGATE_STORE: location }), dataDir);
  } catch (err) {
    throw new Error((err as Error).message.replace('FLEETGATE_STORE=', '--landing '), { cause: err });
  }
}

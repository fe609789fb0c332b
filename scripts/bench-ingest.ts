/**
 * The ingestion rows of `npm run bench` (scripts/bench.ts; alone with `npm run bench -- ingest`), each a
 * ratio against a baseline measured in the same run on the same rows:
 *
 *   1. HTTP ingestion through a real `fleetgate ingest` (bin/fleetgate.js as a child process, a fresh data
 *      directory per format, keeping partitions in its local object store as deployed) of NDJSON, gzip
 *      NDJSON and Parquet batches by several concurrent senders, against DuckDB's appender writing the same
 *      rows in this process into the same table (one appender and commit per batch). The goals of the
 *      issue, at least 0.5x the appender and at least 100,000 events/s, are printed as met or not: figures
 *      to read, never a failure.
 *      Beside the rates, the CPU time per 10,000 events (every thread) of the server (/proc/<pid>/stat), of
 *      the senders and of the appender: on a host of few cores, what an event costs bounds the rate.
 *   2. The server's peak resident set (VmHWM of /proc/<pid>/status, Linux) against its resident set after
 *      a warm-up batch.
 *   3. Rebuilding the database from the Parquet partitions of N events (`rebuildFromStore`) against
 *      writing them through the writer in the first place (FLEETGATE_BENCH_REBUILD_EVENTS, default 1M;
 *      10M with FLEETGATE_BENCH_FULL=1, the issue's figure).
 *
 * FLEETGATE_BENCH_INGEST_PROFILE=DIR has each server write a CPU profile (node --cpu-prof) into DIR, to see
 * where its time goes.
 *
 * The server is a child process, not an in-process `startIngestServer`: so it is what operators run
 * (the command's store, flags and shutdown), it has an event loop and a core of its own instead of
 * sharing them with the senders, and its resident set is its own. Events carry keyed pseudonyms
 * (fleet/pseudonym.ts) and every field of the contract's inference event; they and every body are built
 * once, before any timed region. The rows stored are counted against the rows sent, so a figure cannot
 * come from a refusal.
 *
 * It must never print a record, a unit or a token, and never leave its temporary directories behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Agent, request } from 'node:http';
import { gzipSync } from 'node:zlib';
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import { LocalObjectStore } from '../activities/store';
import { parquetColumnsOf, SCHEMA_VERSION, type Inference } from '../events/contract';
import { NDJSON, PARQUET, tokenVariable } from '../events/ingest-server';
import { sqlString } from '../events/partitions';
import { rebuildFromStore } from '../events/rebuild';
import { recordRollout } from '../events/rollouts';
import { append, EventWriter, SCHEMA_SQL, TABLES } from '../events/writer';
import { pseudonym } from '../fleet/pseudonym';
import { makeRng } from '../policies/rng';
import type { BenchRow } from './bench-shadow';

const FLEET = 'bench';
const COHORTS = ['hw3/eu', 'hw3/us', 'hw4/eu'];
const UNITS = 20_000;
const T0 = Date.UTC(2026, 0, 1);
const COLUMNS = parquetColumnsOf('inference');
const TABLE = TABLES.inference.table;

const knob = (name: string, fallback: number) => {
  const raw = process.env[`FLEETGATE_BENCH_${name}`];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) {
    throw new Error(`FLEETGATE_BENCH_${name} must be a whole number from 1 (got "${raw.slice(0, 20)}")`);
  }
  return n;
};
const perSecond = (n: number) => `${Math.round(n).toLocaleString('en-US')}/s`;
const fmt = (n: number) => (n >= 1e6 ? `${n / 1e6}M` : n >= 1e3 ? `${n / 1e3}k` : String(n));
const mb = (kB: number) => `${(kB / 1024).toFixed(0)} MB`;
const since = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

/** Inference events `from` to `from + count` of the bench fleet: a canary of 20% over 3 cohorts. */
function makeEvents(units: string[], from: number, count: number): Inference[] {
  const rng = makeRng(`bench-ingest-${from}`);
  const production = 'a'.repeat(64);
  const candidate = 'b'.repeat(64);
  const out: Inference[] = [];
  for (let i = from; i < from + count; i++) {
    const cand = i % 10 < 2;
    out.push({
      schema: SCHEMA_VERSION,
      eventId: `ev-${i}`,
      fleet: FLEET,
      cohort: COHORTS[i % COHORTS.length]!,
      unit: units[i % units.length]!,
      rolloutId: 'bench-rollout',
      phase: 'canary',
      arm: cand ? 'candidate' : 'production',
      modelDigest: cand ? candidate : production,
      prediction: rng() < 0.5 ? 0 : 1,
      confidence: Math.round((0.5 + rng() / 2) * 1e4) / 1e4,
      latencyMs: Math.round(rng() * 2000) / 100,
      safety: i % 997 === 0,
      exposureHours: 0.05,
      upload: { tier: 'sample', inclusionProbability: 0.25 },
      at: T0 + i * 10,
    });
  }
  return out;
}

function valueOf(r: Inference, field: readonly string[]): unknown {
  let v: unknown = r;
  for (const k of field)
    v = v !== null && typeof v === 'object' ? (v as Record<string, unknown>)[k] : undefined;
  return v ?? null;
}

/** Appends records to `table`, whose columns are the contract's (then `ingested_at_ms` when `now` is given). */
async function appendRows(conn: DuckDBConnection, table: string, records: Inference[], now?: number) {
  const a = await conn.createAppender(table);
  try {
    for (const r of records) {
      for (const c of COLUMNS) append(a, c.type, valueOf(r, c.field));
      if (now !== undefined) a.appendBigInt(BigInt(now));
      a.endRow();
    }
  } finally {
    a.closeSync();
  }
}

type Format = 'NDJSON' | 'gzip NDJSON' | 'Parquet';
interface Body {
  bytes: Buffer;
  headers: Record<string, string>;
}

/** The bodies of every batch in each format, written once (Parquet by DuckDB, gzip by zlib). */
async function makeBodies(batches: Inference[][], dir: string): Promise<Record<Format, Body[]>> {
  const instance = await DuckDBInstance.create(':memory:');
  const conn = await instance.connect();
  const out: Record<Format, Body[]> = { NDJSON: [], 'gzip NDJSON': [], Parquet: [] };
  try {
    await conn.run(`CREATE TABLE body (${COLUMNS.map((c) => `"${c.name}" ${c.type}`).join(', ')})`);
    const file = join(dir, 'body.parquet');
    for (const batch of batches) {
      const ndjson = Buffer.from(batch.map((r) => JSON.stringify(r)).join('\n') + '\n');
      out.NDJSON.push({ bytes: ndjson, headers: { 'content-type': NDJSON } });
      out['gzip NDJSON'].push({
        bytes: gzipSync(ndjson),
        headers: { 'content-type': NDJSON, 'content-encoding': 'gzip' },
      });
      await conn.run('DELETE FROM body');
      await appendRows(conn, 'body', batch);
      await conn.run(`COPY body TO ${sqlString(file)} (FORMAT parquet)`);
      out.Parquet.push({ bytes: readFileSync(file), headers: { 'content-type': PARQUET } });
      rmSync(file);
    }
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
  return out;
}

interface Server {
  url: string;
  pid: number;
  /** Stops it with SIGTERM, as an operator would, and waits for its exit. */
  close(): Promise<void>;
}

/** With FLEETGATE_BENCH_INGEST_PROFILE=DIR, the server writes a CPU profile of its run into DIR (node --cpu-prof). */
function profileArgs(): string[] {
  const dir = process.env.FLEETGATE_BENCH_INGEST_PROFILE;
  return dir ? ['--cpu-prof', `--cpu-prof-dir=${dir}`] : [];
}

/** `fleetgate ingest --port 0` in a fresh data directory (the local object store), with the fleet's token. */
async function startServer(root: string, dir: string, token: string): Promise<Server> {
  const env: NodeJS.ProcessEnv = { ...process.env, FLEETGATE_DATA_DIR: dir, [tokenVariable(FLEET)]: token };
  delete env.FLEETGATE_STORE;
  // The rollout the events name, as a worker records it when the rollout takes its cohorts.
  await recordRollout(new LocalObjectStore(join(dir, 'store')), 'bench-rollout');
  const child: ChildProcess = spawn(
    process.execPath,
    [
      ...profileArgs(),
      join(root, 'bin/fleetgate.js'),
      'ingest',
      '--port',
      '0',
      '--db',
      join(dir, 'ingest.duckdb'),
    ],
    { env, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  const url = await new Promise<string>((res, reject) => {
    let out = '';
    const onData = (chunk: Buffer) => {
      out += chunk.toString('utf8');
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) {
        child.stdout!.off('data', onData);
        child.stdout!.resume();
        res(m[1]!);
      }
    };
    child.stdout!.on('data', onData);
    void exited.then((code) => reject(new Error(`fleetgate ingest exited with ${code} before listening`)));
  });
  return {
    url,
    pid: child.pid!,
    close: async () => {
      child.kill('SIGTERM');
      const code = await exited;
      if (code !== 0) throw new Error(`fleetgate ingest exited with ${code} on SIGTERM`);
    },
  };
}

/** The resident set now and at its peak (kB) of a process, from /proc; undefined elsewhere than Linux. */
function memoryOf(pid: number): { rssKB: number; peakKB: number } | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = /VmRSS:\s+(\d+) kB/.exec(status);
    const hwm = /VmHWM:\s+(\d+) kB/.exec(status);
    return rss && hwm ? { rssKB: Number(rss[1]), peakKB: Number(hwm[1]) } : undefined;
  } catch {
    return undefined;
  }
}

/** Sends bodies over `senders` concurrent connections; 429 is retried after 50 ms (and counted). */
/** CPU time (user + system, ms) a process has used so far, every thread (/proc/<pid>/stat, Linux). */
function cpuMsOf(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // USER_HZ is 100 on Linux
  } catch {
    return undefined;
  }
}

/**
 * POSTs a body with node:http on a keep-alive agent, written in one call: the senders share the host's
 * cores with the server, so they should cost as little as a sender can (fetch spent some 80 ms of CPU per
 * 4 MB body).
 */
function post(
  agent: Agent,
  url: string,
  headers: Record<string, string>,
  body: Buffer,
): Promise<{ status: number; text: string }> {
  return new Promise((resolveIt, reject) => {
    const req = request(
      url,
      { method: 'POST', agent, headers: { ...headers, 'content-length': String(body.length) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolveIt({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

async function sendAll(url: string, token: string, bodies: Body[], senders: number) {
  const agent = new Agent({ keepAlive: true, maxSockets: senders });
  let next = 0;
  const sum = { accepted: 0, duplicates: 0, retries: 0 };
  const sender = async () => {
    for (let i = next++; i < bodies.length; i = next++) {
      const { bytes, headers } = bodies[i]!;
      for (;;) {
        const res = await post(
          agent,
          `${url}/v1/events/${FLEET}`,
          { ...headers, authorization: `Bearer ${token}` },
          bytes,
        );
        const text = res.text;
        if (res.status === 429) {
          sum.retries++;
          await new Promise((r) => setTimeout(r, 50));
          continue;
        }
        if (res.status !== 200)
          throw new Error(`batch ${i} was answered ${res.status}: ${text.slice(0, 300)}`);
        const r = JSON.parse(text) as { accepted: number; duplicates: number };
        sum.accepted += r.accepted;
        sum.duplicates += r.duplicates;
        break;
      }
    }
  };
  const t0 = process.hrtime.bigint();
  try {
    await Promise.all(Array.from({ length: senders }, sender));
  } finally {
    agent.destroy();
  }
  return { ms: since(t0), ...sum };
}

/** The rows of the ingestion table of a database file (opened once its server has stopped). */
async function countRows(file: string): Promise<number> {
  const instance = await DuckDBInstance.create(file);
  const conn = await instance.connect();
  try {
    const r = await conn.runAndReadAll(`SELECT count(*)::BIGINT AS n FROM ${TABLE}`);
    return Number(r.getRowObjectsJS()[0]!.n);
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
}

export async function ingestBench(root: string): Promise<BenchRow[]> {
  const batchSize = knob('INGEST_BATCH', 10_000);
  const timedBatches = knob('INGEST_BATCHES', 24);
  const senders = knob('INGEST_SENDERS', 4);
  const rebuildEvents = knob(
    'REBUILD_EVENTS',
    process.env.FLEETGATE_BENCH_FULL === '1' ? 10_000_000 : 1_000_000,
  );
  const key = randomBytes(32);
  const units = Array.from({ length: UNITS }, (_, i) => pseudonym(key, `bench-vehicle-${i}`));
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-bench-ingest-'));
  const rows: BenchRow[] = [];
  try {
    // The first batch warms each path up (untimed); the next `timedBatches` are timed.
    const batches = Array.from({ length: timedBatches + 1 }, (_, b) =>
      makeEvents(units, b * batchSize, batchSize),
    );
    const timedEvents = timedBatches * batchSize;
    const bodies = await makeBodies(batches, dir);

    // Baseline: DuckDB's appender, in this process, into the writer's table; one commit per batch.
    const baseDb = await DuckDBInstance.create(join(dir, 'appender.duckdb'));
    const baseConn = await baseDb.connect();
    let appenderMs: number;
    let appenderCpuMs: number;
    try {
      await baseConn.run(SCHEMA_SQL);
      await appendRows(baseConn, TABLE, batches[0]!, Date.now());
      const t0 = process.hrtime.bigint();
      const cpu0 = process.cpuUsage();
      for (const batch of batches.slice(1)) await appendRows(baseConn, TABLE, batch, Date.now());
      appenderMs = since(t0);
      const cpu = process.cpuUsage(cpu0);
      appenderCpuMs = (cpu.user + cpu.system) / 1000;
      const n = Number(
        (await baseConn.runAndReadAll(`SELECT count(*)::BIGINT AS n FROM ${TABLE}`)).getRowObjectsJS()[0]!.n,
      );
      if (n !== batches.length * batchSize)
        throw new Error(`the appender stored ${n} rows, not ${batches.length * batchSize}`);
    } finally {
      baseConn.closeSync();
      baseDb.closeSync();
    }
    const appenderRate = timedEvents / (appenderMs / 1000);

    // The server, once per format in a fresh data directory.
    const token = randomBytes(16).toString('hex');
    const formats: Format[] = ['NDJSON', 'gzip NDJSON', 'Parquet'];
    const measured: {
      format: Format;
      rate: number;
      mbPerBatch: number;
      warmKB?: number;
      peakKB?: number;
      retries: number;
      /** CPU time of the server (every thread) and of this process's senders during the timed run. */
      serverCpuMs?: number;
      sendersCpuMs: number;
    }[] = [];
    for (const format of formats) {
      const serverDir = mkdtempSync(join(dir, 'server-'));
      const server = await startServer(root, serverDir, token);
      let run;
      let warm;
      let peak;
      let serverCpuMs: number | undefined;
      let sendersCpuMs = 0;
      try {
        const warmUp = await sendAll(server.url, token, bodies[format].slice(0, 1), 1);
        warm = memoryOf(server.pid);
        const cpu0 = cpuMsOf(server.pid);
        const own0 = process.cpuUsage();
        run = await sendAll(server.url, token, bodies[format].slice(1), senders);
        const cpu1 = cpuMsOf(server.pid);
        const own = process.cpuUsage(own0);
        serverCpuMs = cpu0 !== undefined && cpu1 !== undefined ? cpu1 - cpu0 : undefined;
        sendersCpuMs = (own.user + own.system) / 1000;
        peak = memoryOf(server.pid);
        if (warmUp.accepted + run.accepted !== batches.length * batchSize || run.duplicates !== 0) {
          throw new Error(
            `${format}: the server accepted ${warmUp.accepted + run.accepted} of ${batches.length * batchSize} events ` +
              `(${run.duplicates} duplicates)`,
          );
        }
      } finally {
        await server.close();
      }
      const stored = await countRows(join(serverDir, 'ingest.duckdb'));
      if (stored !== batches.length * batchSize) {
        throw new Error(
          `${format}: the server's database holds ${stored} rows, not ${batches.length * batchSize}`,
        );
      }
      rmSync(serverDir, { recursive: true, force: true });
      const bytes = bodies[format].reduce((a, b) => a + b.bytes.length, 0) / bodies[format].length;
      measured.push({
        format,
        rate: timedEvents / (run.ms / 1000),
        mbPerBatch: bytes / 2 ** 20,
        warmKB: warm?.rssKB,
        peakKB: peak?.peakKB,
        retries: run.retries,
        serverCpuMs,
        sendersCpuMs,
      });
    }
    const met = (ok: boolean) => (ok ? 'met' : 'not met');
    console.log(
      `ingestion over HTTP (fleetgate ingest as a child process, ${timedBatches} batches of ${batchSize} events ` +
        `after one warm-up, ${senders} senders, partitions kept in its local store): ` +
        measured
          .map(
            (m) =>
              `${m.format} ${perSecond(m.rate)} (${m.mbPerBatch.toFixed(2)} MB a batch, ${(m.rate / appenderRate).toFixed(2)}x ` +
              `the appender: goal >= 0.5x ${met(m.rate >= 0.5 * appenderRate)}, >= 100,000/s ${met(m.rate >= 100_000)}` +
              `${m.retries > 0 ? `, ${m.retries} 429s retried` : ''}` +
              `${m.peakKB !== undefined ? `, server RSS after warm-up ${mb(m.warmKB!)}, peak ${mb(m.peakKB)}` : ''})`,
          )
          .join('; ') +
        `; DuckDB appender in-process ${perSecond(appenderRate)}`,
    );
    // Where the cores went: on a host of few cores, the CPU an event costs bounds the rate.
    const per10k = (ms: number) => `${((ms / timedEvents) * 10_000).toFixed(0)} ms`;
    console.log(
      `CPU time per 10,000 events (every thread): ` +
        measured
          .map(
            (m) =>
              `${m.format} server ${m.serverCpuMs === undefined ? 'n/a' : per10k(m.serverCpuMs)}, senders ${per10k(m.sendersCpuMs)}`,
          )
          .join('; ') +
        `; appender ${per10k(appenderCpuMs)}`,
    );
    for (const m of measured) {
      rows.push({
        name: `ingest HTTP, ${m.format} (goal >= 0.5x, >= 100k/s)`,
        subject: `HTTP ${perSecond(m.rate)}`,
        baseline: `appender ${perSecond(appenderRate)}`,
        subjectMs: 1000 / m.rate,
        baselineMs: 1000 / appenderRate,
        speedup: m.rate / appenderRate,
      });
    }
    const withMemory = measured.filter((m) => m.peakKB !== undefined);
    if (withMemory.length > 0) {
      const top = withMemory.reduce((a, b) => (b.peakKB! - b.warmKB! > a.peakKB! - a.warmKB! ? b : a));
      rows.push({
        name: `ingest server peak RSS, ${top.format} (+${mb(top.peakKB! - top.warmKB!)})`,
        subject: `peak ${mb(top.peakKB!)}`,
        baseline: `after warm-up ${mb(top.warmKB!)}`,
        subjectMs: top.peakKB! / 1024,
        baselineMs: top.warmKB! / 1024,
        speedup: top.warmKB! / top.peakKB!,
      });
    }
    batches.length = 0;

    rows.push(await rebuildRow(units, rebuildEvents, batchSize, dir));
    return rows;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Writes `total` events through the writer (with a local object store, batches of `batchSize`, as the
 * server does; only `ingest` is timed), then rebuilds a database from the partitions it left.
 */
async function rebuildRow(
  units: string[],
  total: number,
  batchSize: number,
  parent: string,
): Promise<BenchRow> {
  const dir = mkdtempSync(join(parent, 'rebuild-'));
  const store = new LocalObjectStore(join(dir, 'store'));
  const writer = await EventWriter.open(join(dir, 'written.duckdb'), { store });
  let writeMs = 0;
  let accepted = 0;
  try {
    for (let from = 0; from < total; from += batchSize) {
      const raw = makeEvents(units, from, Math.min(batchSize, total - from));
      const t0 = process.hrtime.bigint();
      const r = await writer.ingest('inference', FLEET, raw, { where: 'line' });
      writeMs += since(t0);
      accepted += r.accepted;
    }
  } finally {
    await writer.close();
  }
  if (accepted !== total) throw new Error(`the writer accepted ${accepted} of ${total} events`);
  const t0 = process.hrtime.bigint();
  const result = await rebuildFromStore(store, join(dir, 'rebuilt.duckdb'), { cacheDir: dir });
  const rebuildMs = since(t0);
  if (result.rows.inference !== total || (await countRows(join(dir, 'rebuilt.duckdb'))) !== total) {
    throw new Error(`the rebuild holds ${result.rows.inference} of ${total} events`);
  }
  console.log(
    `rebuild (${fmt(total)} events, ${result.partitions.inference} partitions of ${fmt(batchSize)}): ` +
      `rebuildFromStore ${(rebuildMs / 1000).toFixed(1)} s against writing them through the writer ` +
      `${(writeMs / 1000).toFixed(1)} s (${perSecond(total / (writeMs / 1000))}); ${(rebuildMs / writeMs).toFixed(2)}x ` +
      `the write, goal <= 1x ${rebuildMs <= writeMs ? 'met' : 'not met'}`,
  );
  rmSync(dir, { recursive: true, force: true });
  return {
    name: `rebuild (${fmt(total)} events, ${result.partitions.inference} partitions; goal: speed-up >= 1x)`,
    subject: 'rebuildFromStore',
    baseline: 'writer.ingest',
    subjectMs: rebuildMs,
    baselineMs: writeMs,
    speedup: writeMs / rebuildMs,
  };
}

if (require.main === module) {
  ingestBench(resolve(__dirname, '..')).then(
    (rows) => {
      for (const r of rows) {
        console.log(
          `${r.name.padEnd(56)}${r.subject.padEnd(32)}${r.baseline.padEnd(30)}${r.speedup.toFixed(2)}x`,
        );
      }
    },
    (err: unknown) => {
      console.error(err);
      process.exitCode = 1;
    },
  );
}

/**
 * The gateway's event log under crashes and overload, with `fleetgate serve` as a real child process on
 * 127.0.0.1 (real onnxruntime, bare model blobs in a LocalObjectStore):
 *
 * - SIGKILL while concurrent clients have requests in flight, three times on the same state directory
 *   (half the requests mirrored to a candidate): every request answered 2xx has exactly one event,
 *   found by its request id once the log is reopened; requests never answered may or may not be there.
 * - Overload: the 429s are counted in /metrics by status and reason, none is an event, and the process
 *   logs a bounded number of lines (a summary, not a line per refusal).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HEADERS, PATHS, type GatewayEvent } from '../../serve/api';
import { EventLog, MAX_READ } from '../../serve/event-log';
import { blobKey } from '../../workers/model-runner';

const ROOT = join(__dirname, '..', '..');
const BIN = join(ROOT, 'bin', 'fleetgate.js');
const dir = mkdtempSync(join(tmpdir(), 'fleetgate-durability-'));
const children: ChildProcess[] = [];
after(() => {
  // A failed test leaves no gateway running.
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

let prod: string;
let cand: string;
const ROW = [0.12, -0.4, 0.33, 0.9, -0.05, 0.61, -0.27, 0.44];

function putBlob(file: string): string {
  const bytes = readFileSync(join(ROOT, 'models', file));
  const digest = createHash('sha256').update(bytes).digest('hex');
  const blob = join(dir, 'store', ...blobKey(digest).split('/'));
  mkdirSync(join(blob, '..'), { recursive: true });
  writeFileSync(blob, bytes);
  return digest;
}

before(() => {
  prod = putBlob('production/model.onnx');
  cand = putBlob('candidate-good/model.onnx');
});

interface Running {
  child: ChildProcess;
  url: string;
  out: () => string;
  err: () => string;
  exited: Promise<number | null>;
}

/** Starts `fleetgate serve` on a free port with the config lines given; resolves once it prints its URL. */
async function serve(name: string, lines: string[]): Promise<Running> {
  const file = join(dir, `${name}.yaml`);
  writeFileSync(
    file,
    ['apiVersion: fleetgate/v1', 'kind: Gateway', `name: ${name}`, `stateDir: ${name}`, ...lines, ''].join(
      '\n',
    ),
  );
  const child = spawn(process.execPath, [BIN, 'serve', '--config', file, '--port', '0'], {
    cwd: ROOT,
    env: { ...process.env, FLEETGATE_DATA_DIR: dir, OTEL_EXPORTER_OTLP_ENDPOINT: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  const url = await new Promise<string>((res, rej) => {
    const t = setInterval(() => {
      const m = /at (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
      if (m) {
        clearInterval(t);
        res(m[1]!);
      }
    }, 20);
    void exited.then((code) => {
      clearInterval(t);
      rej(new Error(`the gateway exited ${code}: ${err}`));
    });
  });
  // Ready: its models are loaded.
  for (let i = 0; ; i++) {
    const r = await fetch(url + PATHS.ready).catch(() => undefined);
    if (r?.status === 200) break;
    if (i > 500) throw new Error(`the gateway is not ready: ${err}`);
    await new Promise((r2) => setTimeout(r2, 20));
  }
  return { child, url, out: () => out, err: () => err, exited };
}

/**
 * `clients` loops posting predicts with ids `${prefix}-<client>-<i>` until `stop()` is true or a request
 * fails to get an answer; returns the ids answered 2xx and the count of every status.
 */
async function load(
  url: string,
  prefix: string,
  clients: number,
  stop: () => boolean,
  answered = new Set<string>(),
): Promise<{ answered: Set<string>; byStatus: Record<number, number>; unanswered: number }> {
  const byStatus: Record<number, number> = {};
  let unanswered = 0;
  const body = JSON.stringify({ caller: 'durability-caller', inputs: [ROW] });
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let i = 0; !stop(); i++) {
        const id = `${prefix}-${c}-${i}`;
        let status: number;
        try {
          const res = await fetch(url + PATHS.predict, {
            method: 'POST',
            headers: { 'content-type': 'application/json', [HEADERS.requestId]: id },
            body,
          });
          status = res.status;
          await res.arrayBuffer().catch(() => undefined);
        } catch {
          unanswered++;
          return;
        }
        byStatus[status] = (byStatus[status] ?? 0) + 1;
        if (status >= 200 && status < 300) answered.add(id);
      }
    }),
  );
  return { answered, byStatus, unanswered };
}

/** Every event of a state directory's log, read by reopening it (as a restarted gateway would). */
async function readLog(stateDir: string): Promise<GatewayEvent[]> {
  const log = EventLog.open(stateDir);
  try {
    const out: GatewayEvent[] = [];
    for (let after = 0; ;) {
      const page = await log.read(after, MAX_READ);
      if (page.length === 0) return out;
      out.push(...page);
      after = page[page.length - 1]!.seq;
    }
  } finally {
    await log.close();
  }
}

describe('the gateway event log', () => {
  it('holds every answered request after SIGKILL under concurrent load, three times over', async (t) => {
    const answered = new Set<string>();
    let inFlightAtKill = 0;
    for (let round = 0; round < 3; round++) {
      // Each answer takes 20 ms more (injected), so the clients always have requests in the gateway.
      const g = await serve('durable', [
        'cohorts: [web]',
        'faultInjection: true',
        `routes: { web: { production: { digest: ${prod}, inject: { latencyMs: 20 } }, ` +
          `candidate: { digest: ${cand} }, mirror: 0.5 } }`,
      ]);
      let killed = false;
      const live = new Set<string>();
      const running = load(g.url, `k${round}`, 32, () => killed, live);
      // Kill once a good number of requests were answered, in the middle of the load.
      for (let i = 0; i < 1000 && live.size < 300; i++) await new Promise((r) => setTimeout(r, 10));
      g.child.kill('SIGKILL');
      killed = true;
      await g.exited;
      const r = await running;
      inFlightAtKill += r.unanswered;
      assert.ok(r.answered.size > 100, `round ${round}: ${r.answered.size} answered`);
      for (const id of r.answered) answered.add(id);
    }
    assert.ok(inFlightAtKill > 0, 'requests were in flight when the gateway was killed');
    const events = await readLog(join(dir, 'durable'));
    const count = new Map<string, number>();
    for (const e of events) count.set(e.requestId, (count.get(e.requestId) ?? 0) + 1);
    const missing = [...answered].filter((id) => !count.has(id));
    assert.deepEqual(
      missing.slice(0, 10),
      [],
      `${missing.length} of ${answered.size} answered have no event`,
    );
    const twice = [...count].filter(([, n]) => n > 1);
    assert.deepEqual(twice.slice(0, 10), [], 'one event per request');
    for (let i = 1; i < events.length; i++) assert.equal(events[i]!.seq, events[i - 1]!.seq + 1);
    // Mirrored requests are among them: settled with the shadow's answer, or recovered as lost.
    t.diagnostic(
      `${answered.size} answered, ${inFlightAtKill} in flight at the kills, ${events.length} events, ` +
        `${events.filter((e) => e.shadow?.lost).length} recovered with their shadow lost`,
    );
    const mirrored = events.filter((e) => e.shadow);
    assert.ok(mirrored.length > 50, `${mirrored.length} mirrored events`);
    for (const e of mirrored) {
      if (e.shadow!.lost) assert.equal(e.shadow!.dropped, true);
    }
  });

  it('counts 429s under overload in /metrics, writes none as an event, and logs a bounded number of lines', async () => {
    const g = await serve('overload', [
      'cohorts: [web]',
      `routes: { web: { production: { digest: ${prod} } } }`,
      'queue: { maxQueued: 2 }',
      'batching: { maxBatch: 2, maxDelayMs: 20 }',
    ]);
    let done = false;
    const timer = setTimeout(() => (done = true), 2500);
    const r = await load(g.url, 'o', 64, () => done);
    clearTimeout(timer);
    const refused = r.byStatus[429] ?? 0;
    const ok = r.byStatus[200] ?? 0;
    assert.ok(refused > 100, `${refused} answered 429`);
    assert.ok(ok > 10, `${ok} answered 200`);
    assert.deepEqual(Object.keys(r.byStatus).sort(), ['200', '429']);
    const metrics = await (await fetch(g.url + PATHS.metrics)).text();
    assert.match(
      metrics,
      new RegExp(`fleetgate_gateway_refused_total\\{code="429",reason="queue-full"\\} ${refused}\\n`),
    );
    g.child.kill('SIGTERM');
    assert.equal(await g.exited, 0, g.err());
    const events = await readLog(join(dir, 'overload'));
    assert.equal(events.length, ok, 'an event per request answered 200, none for a 429');
    assert.ok(events.every((e) => e.status === 200));
    // The process's whole log: start, drain, drained and a summary, never a line per refusal.
    const logLines = g.err().trim().split('\n');
    assert.ok(logLines.length <= 10, `${logLines.length} log lines:\n${g.err().slice(0, 2000)}`);
    const summaries = logLines
      .filter((l) => l.includes('"gateway.summary"'))
      .map((l) => JSON.parse(l) as { counts: Record<string, number>; message: string });
    assert.ok(summaries.length >= 1, 'a summary line');
    assert.match(summaries[0]!.message, /\d+ requests refused with 429 \(queue-full\) in the last \d+ s/);
    assert.equal(
      summaries.reduce((n, l) => n + (l.counts['429 queue-full'] ?? 0), 0),
      refused,
      'the summaries count every 429',
    );
    const size = readdirSync(join(dir, 'overload', 'events'))
      .map((f) => readFileSync(join(dir, 'overload', 'events', f)).length)
      .reduce((a, b) => a + b, 0);
    assert.ok(size < ok * 600, `${size} bytes of events for ${ok} answered`);
  });
});

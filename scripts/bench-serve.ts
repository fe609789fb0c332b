/**
 * The inference gateway's benches of `npm run bench` (scripts/bench.ts): `fleetgate serve` (serve/gateway.ts)
 * on real onnxruntime sessions over a LocalObjectStore in a temporary directory, production the bench MLP
 * (models/bench/mlp-8x64x64x2.onnx) and candidate the fixture candidate-good, both bare blobs (served with
 * identity preprocessing). The load comes from autocannon in a child process, so the load generator does
 * not share the gateway's event loop (one child for the whole bench); the gateway runs in this process,
 * where its memory is sampled.
 *
 *   1. gateway vs direct: batch-1 predicts over a few connections at a fixed overall rate (a third of
 *      the gateway's measured saturation) against `OnnxModelRunner.run` called in this process at the
 *      same concurrency and rate, paced the way autocannon paces (each connection sends its share of a
 *      second's requests as fast as answers come, then waits for the next second). p50, p99, and the
 *      saturation throughput of both at that concurrency. Goal printed: p50 overhead <= 1.2x. In the same
 *      rotation, to tell the parts of the overhead apart: the gateway with a batching wait
 *      (maxDelayMs 2; the default is 0), the gateway that fdatasyncs its event log before every answer
 *      (events.syncMs 0; the default writes each group of events to the OS before answering and syncs
 *      every second), and the least HTTP server around the same runner (parse, run, answer) under the
 *      same load: the gateway's own cost over what any HTTP service of this model pays.
 *   2. p99 with every production request mirrored to the candidate against no mirroring, at the same
 *      rate: rotations of off / on / off (the second off an A/A control of the host's noise), medians.
 *      Goal: <= 1.05x.
 *   3. overload: an open-ended load of several times the saturation rate over many connections against a
 *      gateway with a small queue: the share answered 429, the p99 of the requests answered 200 against
 *      the p99 at the moderate rate, and the peak resident set during the overload against the resident
 *      set after a warm-up: it must stay bounded (the queue, not the offered load, sets the memory).
 *
 * Every row is a ratio against a baseline measured in the same run. About a minute by default; knobs:
 * FLEETGATE_BENCH_SERVE_SECONDS (each load run, default 2.5), _REPS (rotations, default 2), _CONNECTIONS
 * (default 4), _OVERLOAD (times saturation, default 4), _QUEUE (rows of the overload gateway's queue,
 * default 16), _OVERLOAD_CONNECTIONS (default 64). `node --import tsx scripts/bench-serve.ts` runs it alone.
 */
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import autocannon from 'autocannon';
import { median, quantileSorted } from 'simple-statistics';
import { LocalObjectStore, sha256 } from '../activities/store';
import { HEADERS, PATHS, type PredictRequest, type PredictResponse, type RouteUpdate } from '../serve/api';
import { parseGatewayConfig } from '../serve/config';
import { startGateway, type Gateway } from '../serve/gateway';
import { blobKey, OnnxModelRunner } from '../workers/model-runner';
import type { BenchRow } from './bench-shadow';

const knob = (name: string, fallback: number) => {
  const raw = process.env[`FLEETGATE_BENCH_SERVE_${name}`];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!(n > 0)) {
    throw new Error(
      `FLEETGATE_BENCH_SERVE_${name}=${JSON.stringify(raw)}: give a positive number (default ${fallback})`,
    );
  }
  return n;
};

/** What one autocannon run in the child process measured. */
interface LoadResult {
  /** Responses by status code. */
  byStatus: Record<string, number>;
  /** Latency of each 2xx response, ms, in arrival order. */
  okMs: number[];
  errors: number;
  timeouts: number;
  durationS: number;
}

interface LoadOptions {
  url: string;
  body: string;
  connections: number;
  /** Requests per second over all connections; none: as fast as answers come. */
  overallRate?: number;
  durationS: number;
}

interface Loader {
  run(opts: LoadOptions): Promise<LoadResult>;
  close(): Promise<void>;
}

/**
 * A child process (this file with `--load`) that runs autocannon for each `run`, so the load generator
 * does not share the gateway's event loop. One child serves the whole bench, runs one at a time.
 */
function startLoader(): Loader {
  const child = fork(__filename, ['--load'], {
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  let waiting: { resolve: (r: LoadResult) => void; reject: (e: Error) => void } | undefined;
  let exited = false;
  child.on('message', (m) => {
    const w = waiting;
    waiting = undefined;
    const msg = m as { result?: LoadResult; error?: string };
    if (msg.result) w?.resolve(msg.result);
    else w?.reject(new Error(`the load process failed: ${msg.error}`));
  });
  child.on('exit', (code) => {
    exited = true;
    waiting?.reject(new Error(`the load process exited with ${code} during a run`));
    waiting = undefined;
  });
  return {
    run(opts) {
      if (exited) return Promise.reject(new Error('the load process has exited'));
      return new Promise((resolvePromise, reject) => {
        waiting = { resolve: resolvePromise, reject };
        child.send(opts);
      });
    },
    close() {
      if (exited) return Promise.resolve();
      return new Promise((res) => {
        child.once('exit', () => res());
        child.disconnect();
      });
    },
  };
}

/** The child's side: each message is a run; the result goes back the same way. Ends when disconnected. */
function loadChild(): void {
  process.on('message', (opts: LoadOptions) => {
    autocannonRun(opts).then(
      (result) => process.send!({ result }),
      (err: unknown) => process.send!({ error: String(err) }),
    );
  });
  process.on('disconnect', () => process.exit(0));
}

async function autocannonRun(opts: LoadOptions): Promise<LoadResult> {
  const byStatus: Record<string, number> = {};
  const okMs: number[] = [];
  const r = await new Promise<autocannon.Result>((done, fail) => {
    const instance = autocannon(
      {
        url: opts.url,
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: opts.body,
        connections: opts.connections,
        ...(opts.overallRate ? { overallRate: Math.max(1, Math.round(opts.overallRate)) } : {}),
        duration: opts.durationS,
        timeout: 10,
      },
      (err, result) => (err ? fail(err as Error) : done(result)),
    );
    instance.on('response', (_client, statusCode, _bytes, ms) => {
      byStatus[statusCode] = (byStatus[statusCode] ?? 0) + 1;
      if (statusCode >= 200 && statusCode < 300) okMs.push(ms);
    });
  });
  return { byStatus, okMs, errors: r.errors, timeouts: r.timeouts, durationS: r.duration };
}

/**
 * `run` called by `connections` loops for `durationS`, paced as autocannon paces a connection: each loop
 * makes its share of `overallRate` requests a second back to back, then waits for its next second.
 */
async function direct(
  run: () => Promise<unknown>,
  connections: number,
  overallRate: number | undefined,
  durationS: number,
): Promise<{ okMs: number[]; count: number; durationS: number }> {
  const okMs: number[] = [];
  const t0 = performance.now();
  const end = t0 + durationS * 1000;
  const loop = async (i: number) => {
    const quota = overallRate
      ? Math.floor(overallRate / connections) + (i + 1 <= overallRate % connections ? 1 : 0)
      : Infinity;
    let second = 0;
    let made = 0;
    while (performance.now() < end) {
      if (made >= quota) {
        second++;
        made = 0;
        const wait = t0 + second * 1000 - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        continue;
      }
      made++;
      const s = performance.now();
      await run();
      okMs.push(performance.now() - s);
    }
  };
  await Promise.all(Array.from({ length: connections }, (_, i) => loop(i)));
  return { okMs, count: okMs.length, durationS: (performance.now() - t0) / 1000 };
}

const sorted = (xs: number[]) => Float64Array.from(xs).sort() as unknown as number[];
const p = (xs: number[], q: number) => (xs.length ? quantileSorted(sorted(xs), q) : NaN);
const ok = (r: LoadResult) => r.okMs.length;
const total = (r: LoadResult) => Object.values(r.byStatus).reduce((a, b) => a + b, 0);
const ms = (x: number) => `${x.toFixed(2)} ms`;
const perSecond = (x: number) => `${Math.round(x).toLocaleString('en-US')}/s`;

function checkAllOk(r: LoadResult, what: string): void {
  const bad = Object.entries(r.byStatus).filter(([code]) => code !== '200');
  if (bad.length > 0 || r.errors > 0 || r.timeouts > 0) {
    throw new Error(
      `${what}: expected only 200s, got ${JSON.stringify(r.byStatus)}, ${r.errors} errors, ${r.timeouts} timeouts`,
    );
  }
}

/**
 * The least HTTP service around the same model: parse the body, run its first row, answer the
 * probabilities. What a predict costs with no validation, routing, batching, events or metrics.
 */
async function bareServer(
  runner: OnnxModelRunner,
  digest: string,
): Promise<{ url: string; close(): Promise<void> }> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const { inputs } = JSON.parse(Buffer.concat(chunks).toString('utf8')) as PredictRequest;
      runner.run(digest, Float32Array.from(inputs[0]!), 1).then(
        ({ probs }) => {
          const out = JSON.stringify({ probs: Array.from(probs) });
          res.writeHead(200, {
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(out),
          });
          res.end(out);
        },
        (err: unknown) => res.writeHead(500).end(String(err)),
      );
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/`,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
}

export async function serveBench(root: string): Promise<BenchRow[]> {
  const seconds = knob('SECONDS', 2.5);
  const reps = knob('REPS', 2);
  const connections = knob('CONNECTIONS', 4);
  const overload = knob('OVERLOAD', 4);
  const smallQueue = knob('QUEUE', 16);
  const overloadConnections = knob('OVERLOAD_CONNECTIONS', 64);

  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-bench-serve-'));
  const store = new LocalObjectStore(join(dir, 'store'), { durable: false });
  const put = async (file: string) => {
    const bytes = readFileSync(join(root, 'models', file));
    await store.putIfAbsent(blobKey(sha256(bytes)), bytes);
    return sha256(bytes);
  };
  const production = await put('bench/mlp-8x64x64x2.onnx');
  const candidate = await put('candidate-good/model.onnx');
  const runner = new OnnxModelRunner((d) => store.get(blobKey(d)));
  const key = randomBytes(32);
  const tokenEnv = 'FLEETGATE_BENCH_SERVE_TOKEN';
  const token = randomBytes(16).toString('hex');
  process.env[tokenEnv] = token;
  let errorLogs = 0;
  const log = (line: object) => {
    if ((line as { level?: string }).level === 'error') errorLogs++;
  };
  const gatewayAt = (name: string, maxQueued: number, maxDelayMs?: number, syncMs?: number) =>
    startGateway(
      parseGatewayConfig(
        {
          apiVersion: 'fleetgate/v1',
          kind: 'Gateway',
          name,
          listen: { port: 0 },
          stateDir: name,
          cohorts: ['bench'],
          routes: { bench: { production: { digest: production }, candidate: { digest: candidate } } },
          queue: { maxQueued },
          ...(maxDelayMs === undefined ? {} : { batching: { maxDelayMs } }),
          ...(syncMs === undefined ? {} : { events: { syncMs } }),
          adminTokenEnv: tokenEnv,
        },
        dir,
      ),
      { store, key, runner, log },
    );
  const features = [0.12, -0.4, 0.33, 0.9, -0.05, 0.61, -0.27, 0.44];
  const request: PredictRequest = { caller: 'bench-caller', cohort: 'bench', inputs: [features] };
  const body = JSON.stringify(request);
  const x = Float32Array.from(features);
  const runDirect = () => runner.run(production, x, 1);

  const rows: BenchRow[] = [];
  let gateway: Gateway | undefined;
  const loader = startLoader();
  try {
    gateway = await gatewayAt('bench-serve', 1024);
    const url = gateway.url + PATHS.predict;
    const setMirror = async (mirror: number) => {
      const update: RouteUpdate = { mirror };
      const res = await fetch(gateway!.url + PATHS.route('bench'), {
        method: 'PUT',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        body: JSON.stringify(update),
      });
      if (res.status !== 200) throw new Error(`PUT route: ${res.status} ${await res.text()}`);
    };

    // Both paths must give the same answer before their speeds mean anything.
    const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    const answer = (await res.json()) as PredictResponse;
    const { probs } = await runDirect();
    if (
      res.status !== 200 ||
      res.headers.get(HEADERS.arm) !== 'production' ||
      answer.outputs[0]!.probs.some((v, i) => Math.abs(v - probs[i]!) > 1e-6)
    ) {
      throw new Error(
        `the gateway's answer ${JSON.stringify(answer)} is not the model's ${Array.from(probs)}`,
      );
    }

    // Warm-up, then saturation of both at the bench's concurrency.
    await loader.run({ url, body, connections, durationS: 1 });
    await direct(runDirect, connections, undefined, 1);
    const satLoad = await loader.run({ url, body, connections, durationS: seconds });
    checkAllOk(satLoad, 'gateway at saturation');
    const satGateway = ok(satLoad) / satLoad.durationS;
    const satDirectRun = await direct(runDirect, connections, undefined, seconds);
    const satDirect = satDirectRun.count / satDirectRun.durationS;
    const rate = Math.max(connections, Math.round(satGateway / 3));

    // 1. At a third of the gateway's saturation, in rotation: the gateway (continuous batching, its
    // default); the gateway with a 2 ms batching wait; the least HTTP server around the same runner; and
    // runner.run itself.
    const waiting = await gatewayAt('bench-serve-wait', 1024, 2);
    const synced = await gatewayAt('bench-serve-synced', 1024, undefined, 0);
    const bare = await bareServer(runner, production);
    type Arm = { name: string; p50: number[]; p99: number[]; served: number[] };
    const arm = (name: string): Arm => ({ name, p50: [], p99: [], served: [] });
    const subjects: [Arm, () => Promise<{ okMs: number[]; served: number }>][] = [
      [arm('gateway'), () => httpRun(url)],
      [arm('gateway, maxDelayMs 2'), () => httpRun(waiting.url + PATHS.predict)],
      [arm('bare HTTP + runner.run'), () => httpRun(bare.url)],
      [arm('gateway, events.syncMs 0'), () => httpRun(synced.url + PATHS.predict)],
      [
        arm('runner.run direct'),
        async () => {
          const d = await direct(runDirect, connections, rate, seconds);
          return { okMs: d.okMs, served: d.count / d.durationS };
        },
      ],
    ];
    async function httpRun(target: string) {
      const r = await loader.run({ url: target, body, connections, overallRate: rate, durationS: seconds });
      checkAllOk(r, `${target} at the moderate rate`);
      return { okMs: r.okMs, served: ok(r) / r.durationS };
    }
    try {
      for (let i = 0; i < reps; i++) {
        for (let j = 0; j < subjects.length; j++) {
          const [a, run] = subjects[(i + j) % subjects.length]!;
          const r = await run();
          a.p50.push(p(r.okMs, 0.5));
          a.p99.push(p(r.okMs, 0.99));
          a.served.push(r.served);
        }
      }
    } finally {
      await waiting.close();
      await synced.close();
      await bare.close();
    }
    const [gw, nw, hb, sy, dr] = subjects.map(([a]) => ({
      p50: median(a.p50),
      p99: median(a.p99),
      served: median(a.served),
    })) as [Stats, Stats, Stats, Stats, Stats];
    type Stats = { p50: number; p99: number; served: number };
    const both = (s: Stats) => `${ms(s.p50)} / ${ms(s.p99)}`;
    console.log(
      `gateway vs direct (batch 1, ${connections} connections, ${perSecond(rate)} = a third of the gateway's ` +
        `saturation, ${seconds} s runs, ${reps} rotations, medians): p50 / p99 gateway ${both(gw)}, ` +
        `with a 2 ms batching wait ${both(nw)}, with an fdatasync before every answer ${both(sy)}, ` +
        `bare HTTP + runner.run ${both(hb)}, runner.run direct ` +
        `${both(dr)}; p50 overhead over direct ${(gw.p50 / dr.p50).toFixed(2)}x (goal <= 1.2x), of the ` +
        `gateway over bare HTTP ${(gw.p50 / hb.p50).toFixed(2)}x; served ` +
        `${perSecond(gw.served)} vs ${perSecond(dr.served)}; saturation at ${connections} connections: ` +
        `gateway ${perSecond(satGateway)}, direct ${perSecond(satDirect)}`,
    );
    rows.push(
      {
        name: `serve p50, batch 1 at ${perSecond(rate)} (goal overhead <= 1.2x)`,
        subject: 'gateway over HTTP',
        baseline: 'runner.run direct',
        subjectMs: gw.p50,
        baselineMs: dr.p50,
        speedup: dr.p50 / gw.p50,
      },
      {
        name: `serve p99, batch 1 at ${perSecond(rate)}`,
        subject: 'gateway over HTTP',
        baseline: 'runner.run direct',
        subjectMs: gw.p99,
        baselineMs: dr.p99,
        speedup: dr.p99 / gw.p99,
      },
      {
        name: `serve p50, batch 1 at ${perSecond(rate)}`,
        subject: 'gateway over HTTP',
        baseline: 'bare HTTP + runner.run',
        subjectMs: gw.p50,
        baselineMs: hb.p50,
        speedup: hb.p50 / gw.p50,
      },
      {
        name: `serve p50, batch 1 at ${perSecond(rate)}`,
        subject: 'gateway, maxDelayMs 2',
        baseline: 'gateway, maxDelayMs 0',
        subjectMs: nw.p50,
        baselineMs: gw.p50,
        speedup: gw.p50 / nw.p50,
      },
      {
        name: `serve p50, batch 1 at ${perSecond(rate)}`,
        subject: 'gateway, events.syncMs 0',
        baseline: 'gateway, events.syncMs 1000',
        subjectMs: sy.p50,
        baselineMs: gw.p50,
        speedup: gw.p50 / sy.p50,
      },
      {
        name: `serve saturation, ${connections} connections`,
        subject: `gateway ${perSecond(satGateway)}`,
        baseline: `direct ${perSecond(satDirect)}`,
        subjectMs: 1000 / satGateway,
        baselineMs: 1000 / satDirect,
        speedup: satGateway / satDirect,
      },
    );

    // 2. p99 with every production request mirrored vs none: rotations of off / on / off.
    const arms = [
      { mirror: 0, p99: [] as number[] },
      { mirror: 1, p99: [] as number[] },
      { mirror: 0, p99: [] as number[] },
    ];
    for (let i = 0; i < reps; i++) {
      for (let j = 0; j < arms.length; j++) {
        const arm = arms[(i + j) % arms.length]!;
        await setMirror(arm.mirror);
        const r = await loader.run({ url, body, connections, overallRate: rate, durationS: seconds });
        checkAllOk(r, `gateway with mirror ${arm.mirror}`);
        arm.p99.push(p(r.okMs, 0.99));
      }
    }
    await setMirror(0);
    const [off, on, control] = arms.map((a) => median(a.p99)) as [number, number, number];
    const metrics = await (await fetch(gateway.url + PATHS.metrics)).text();
    const counter = (name: string) =>
      metrics
        .split('\n')
        .filter((l) => l.startsWith(name))
        .reduce((a, l) => a + Number(l.split(' ').at(-1)), 0);
    console.log(
      `mirroring (${perSecond(rate)}, ${reps} rotations of off/on/off, medians): p99 off ${ms(off)}, ` +
        `100% mirrored ${ms(on)}, ratio ${(on / off).toFixed(2)}x (goal <= 1.05x), A/A off/off ` +
        `${(control / off).toFixed(2)}x; shadows ${counter('fleetgate_gateway_shadow_requests_total')} run, ` +
        `${counter('fleetgate_gateway_shadow_dropped_total')} dropped`,
    );
    rows.push({
      name: `serve p99, 100% mirror at ${perSecond(rate)} (goal <= 1.05x)`,
      subject: 'mirror 1',
      baseline: 'mirror 0',
      subjectMs: on,
      baselineMs: off,
      speedup: off / on,
    });
    await gateway.close();
    gateway = undefined;

    // 3. Overload against a small queue; the resident set sampled throughout.
    gateway = await gatewayAt('bench-serve-overload', smallQueue);
    const overloadUrl = gateway.url + PATHS.predict;
    await loader.run({ url: overloadUrl, body, connections, overallRate: rate, durationS: seconds });
    global.gc?.();
    const rssWarm = process.memoryUsage().rss;
    let peak = rssWarm;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 10);
    let over: LoadResult;
    try {
      over = await loader.run({
        url: overloadUrl,
        body,
        connections: overloadConnections,
        overallRate: satGateway * overload,
        durationS: seconds * 2,
      });
    } finally {
      clearInterval(sampler);
    }
    const rssAfter = process.memoryUsage().rss;
    const rejected = over.byStatus['429'] ?? 0;
    const other = total(over) - ok(over) - rejected;
    const overP99 = p(over.okMs, 0.99);
    const mb = (b: number) => `${(b / 2 ** 20).toFixed(0)} MB`;
    console.log(
      `overload (${overload}x saturation = ${perSecond(satGateway * overload)} offered over ${overloadConnections} ` +
        `connections, queue ${smallQueue} rows, ${seconds * 2} s): ${total(over)} answered, ` +
        `${((100 * rejected) / Math.max(1, total(over))).toFixed(1)}% 429, ${other} other non-200, ` +
        `${over.errors} errors, ${over.timeouts} timeouts; 200s ${perSecond(ok(over) / over.durationS)}, p99 ` +
        `${ms(overP99)} (${ms(gw.p99)} at the moderate rate); RSS after warm-up ${mb(rssWarm)}, peak ${mb(peak)} ` +
        `(+${mb(peak - rssWarm)}), after ${mb(rssAfter)}; host load average ${loadavg()[0]!.toFixed(1)} on ` +
        `${cpus().length} cores`,
    );
    rows.push(
      {
        name: `serve overload p99 of 200s (${((100 * rejected) / Math.max(1, total(over))).toFixed(0)}% 429)`,
        subject: `${overload}x saturation, queue ${smallQueue}`,
        baseline: 'moderate rate',
        subjectMs: overP99,
        baselineMs: gw.p99,
        speedup: gw.p99 / overP99,
      },
      {
        name: `serve overload peak RSS (+${mb(peak - rssWarm)})`,
        subject: `peak ${mb(peak)}`,
        baseline: `after warm-up ${mb(rssWarm)}`,
        subjectMs: peak / 2 ** 20,
        baselineMs: rssWarm / 2 ** 20,
        speedup: rssWarm / peak,
      },
    );
    if (errorLogs > 0) console.log(`gateway logged ${errorLogs} errors during the bench`);
    return rows;
  } finally {
    await loader.close();
    await gateway?.close();
    await runner.close();
    delete process.env[tokenEnv];
    rmSync(dir, { recursive: true, force: true });
  }
}

if (require.main === module) {
  if (process.argv[2] === '--load') {
    loadChild();
  } else {
    serveBench(resolve(__dirname, '..')).then(
      (rows) => {
        for (const r of rows) {
          console.log(
            `${r.name.padEnd(52)}${r.subject.padEnd(30)}${r.baseline.padEnd(28)}${r.speedup.toFixed(2)}x`,
          );
        }
      },
      (err: unknown) => {
        console.error(err);
        process.exitCode = 1;
      },
    );
  }
}

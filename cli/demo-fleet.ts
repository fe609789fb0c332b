/**
 * The demo's fleet as a producer of its own (FLEETGATE_TELEMETRY=simulator): the ingestion endpoint
 * served on the demo worker's fleet database (events/ingest-server.ts, on a free loopback port, as
 * `fleetgate worker` serves it with FLEETGATE_INGEST_PORT), with a random token made for this run, and
 * `fleetgate fleet simulate --ingest URL` started as a child process that answers the window requests
 * and label-request files the demo's batches write to the object store by sending over HTTP. The
 * child's output goes to `<data dir>/simulator.log`.
 *
 * It must never print or write down the token (it reaches the child through its environment only), and
 * never leave the child running: `close` stops it (SIGTERM, then SIGKILL after 10 s) and `kill` is for
 * the exit handler of last resort; a child that dies before it is stopped is reported through `died`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { startIngestServer, tokenVariable, type IngestServer } from '../events/ingest-server';
import type { EventWriter } from '../events/writer';

/** Where the child's output goes, in the data directory. */
export const SIMULATOR_LOG = 'simulator.log';

export interface DemoFleet {
  /** The endpoint the child sends to. */
  url: string;
  /** The child's process id. */
  pid: number;
  /** The child's log file. */
  logFile: string;
  /** Rejects when the child exits before `stop`/`close` (with its exit code and where its log is). */
  died: Promise<never>;
  /** What the endpoint stored so far, by the child: inference events, labels, upload reports. */
  received(): Promise<{ events: number; labels: number; uploads: number }>;
  /** Stops the child (SIGTERM, SIGKILL after 10 s) and waits for it; the endpoint stays. */
  stop(): Promise<void>;
  /** Stops the child, then the endpoint. */
  close(): Promise<void>;
  /** SIGKILL at once, for an exit handler (synchronous). */
  kill(): void;
}

/** The endpoint's counter `name` for a record kind, 0 when absent. */
function counter(metrics: string, name: string, kind: string): number {
  const m = new RegExp(`^${name}\\{kind="${kind}"\\} (\\d+)$`, 'm').exec(metrics);
  return m ? Number(m[1]) : 0;
}

export async function startDemoFleet(opts: {
  writer: EventWriter;
  fleet: string;
  dataDir: string;
  root: string;
}): Promise<DemoFleet> {
  const variable = tokenVariable(opts.fleet);
  const token = randomBytes(24).toString('hex');
  const ingest: IngestServer = await startIngestServer({
    writer: opts.writer,
    env: { [variable]: token },
    // The simulated fleet's time runs ahead of the clock by the rollout's time scale.
    maxWatermarkAheadMs: Infinity,
    log: () => undefined,
  });
  const logFile = join(opts.dataDir, SIMULATOR_LOG);
  let child: ChildProcess;
  const fd = openSync(logFile, 'w');
  try {
    child = spawn(
      process.execPath,
      [
        join(opts.root, 'bin', 'fleetgate.js'),
        'fleet',
        'simulate',
        '--ingest',
        ingest.url,
        '--db',
        join(opts.dataDir, 'simulator.duckdb'),
        '--every',
        '100ms',
      ],
      {
        cwd: opts.root,
        env: { ...process.env, FLEETGATE_DATA_DIR: opts.dataDir, [variable]: token },
        stdio: ['ignore', fd, fd],
      },
    );
  } catch (err) {
    await ingest.close();
    throw err;
  } finally {
    closeSync(fd);
  }
  let stopping = false;
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : null)));
    child.once('error', () => resolve(-1));
  });
  const died = exited.then((code) => {
    if (stopping) return new Promise<never>(() => undefined);
    throw new Error(
      `the simulated fleet's process (fleetgate fleet simulate) exited with code ${code}; its log: ${logFile}`,
    );
  });
  died.catch(() => undefined);
  const stop = async () => {
    stopping = true;
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };
  return {
    url: ingest.url,
    pid: child.pid ?? -1,
    logFile,
    died,
    async received() {
      const metrics = await (await fetch(`${ingest.url}/metrics`)).text();
      const n = (kind: string) => counter(metrics, 'fleetgate_ingest_rows_accepted_total', kind);
      return { events: n('inference'), labels: n('label'), uploads: n('upload') };
    },
    stop,
    async close() {
      await stop();
      await ingest.close();
    },
    kill() {
      stopping = true;
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

/**
 * Starts moto's server (`moto_server`, pinned and installed by scripts/bootstrap.sh) on loopback, on a
 * free port, for tests that make real AWS SDK calls against it; `stop()` ends it and waits for the exit.
 * Each server starts empty and keeps its state in memory only.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { freePort } from '../workers/dev-server';
import { motoServer } from '../workers/tools';

export interface Moto {
  /** e.g. http://127.0.0.1:41234: the value of FLEETGATE_AWS_ENDPOINT for this server. */
  endpoint: string;
  process: ChildProcess;
  stop(): Promise<void>;
}

export async function startMoto(): Promise<Moto> {
  const port = await freePort();
  const child = spawn(motoServer(), ['-H', '127.0.0.1', '-p', String(port)], {
    stdio: ['ignore', 'ignore', 'pipe'],
    // moto signs nothing and checks no credentials; these only keep it from looking for real ones.
    env: { ...process.env, AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test' },
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const endpoint = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`moto_server exited (${child.exitCode}): ${stderr.trim()}`);
    try {
      const res = await fetch(`${endpoint}/moto-api/data.json`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.ok) break;
    } catch (err) {
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`moto_server did not answer on ${endpoint} within 60 s: ${stderr.trim()}`, {
          cause: err,
        });
      }
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  return { endpoint, process: child, stop };
}

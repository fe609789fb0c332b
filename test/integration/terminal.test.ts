/**
 * The real `fleetgate` executable against a real rollout on a Temporal dev server, with operator text
 * that holds terminal control sequences and a bidi override: a pause reason that would retitle
 * (`ESC ] 0 ; … BEL`) and clear (`ESC [ 2 J`) the terminal, forge a line, and reverse what follows it;
 * a name with an override. `pause`, `status` (running and ended), the refusal of a second pause and
 * `abort` must print none of them raw, show each escaped, and keep `--json` exact.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { startDevServer, type DevServer } from '../../workers/dev-server';
import { createFleetgateWorker, quietRuntime } from '../../workers/worker';
import { WORKFLOW_TYPE, statusQuery } from '../../workflows/definitions';
import { RolloutRequest } from '../../policies/schema';
import { loadPolicy, makeWorld, ROOT, rolloutRequest, type World } from '../support';

/** Every character a terminal must not receive raw from a value. */
// eslint-disable-next-line no-control-regex
const RAW = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/u;
const REASON = 'sensor recall \u001b]0;pwned\u0007 \u001b[2J then \u202eevil\noutcome completed';
const BY = 'ops\u202e';

let server: DevServer;
let tmp: string;

before(async () => {
  quietRuntime();
  tmp = mkdtempSync(join(tmpdir(), 'fleetgate-terminal-'));
  server = await startDevServer({ dbFile: join(tmp, 'temporal.db') });
});

after(async () => {
  await server?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The real executable, without blocking this process's event loop (the worker runs here). */
function fleetgate(env: NodeJS.ProcessEnv, ...args: string[]): Promise<Run> {
  return new Promise((done, failed) => {
    const child = spawn(process.execPath, [join(ROOT, 'bin', 'fleetgate.js'), ...args], {
      cwd: ROOT,
      env: { ...process.env, ...env, FLEETGATE_DEBUG: '', NO_COLOR: '' },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.on('error', failed);
    child.on('close', (code) => done({ code, stdout, stderr }));
  });
}

/** No raw control character or bidi override anywhere in the output. */
function assertSafe(r: Run, what: string): void {
  for (const [name, text] of [
    ['stdout', r.stdout],
    ['stderr', r.stderr],
  ] as const) {
    const m = RAW.exec(text);
    assert.equal(
      m,
      null,
      `${what}: raw U+${m?.[0].codePointAt(0)?.toString(16)} in ${name}: ${JSON.stringify(text)}`,
    );
  }
}

test('pause, status, a refused second pause and abort print operator text escaped, never raw', async () => {
  const world: World = await makeWorld();
  const connection = await NativeConnection.connect({ address: server.address });
  const clientConn = await Connection.connect({ address: server.address });
  const client = new Client({ connection: clientConn });
  const taskQueue = `terminal-${process.pid}`;
  const env = {
    TEMPORAL_ADDRESS: server.address,
    FLEETGATE_TASK_QUEUE: taskQueue,
    FLEETGATE_DATA_DIR: world.dataDir,
  };
  try {
    const worker = await createFleetgateWorker({
      connection,
      namespace: 'default',
      taskQueue,
      services: world.services,
    });
    await worker.runUntil(async () => {
      const id = `terminal-${process.pid}`;
      const request = RolloutRequest.parse(
        rolloutRequest(id, 'models/candidate-good', loadPolicy('examples/demo-policy.yaml')),
      );
      const handle = await client.workflow.start(WORKFLOW_TYPE, {
        taskQueue,
        workflowId: id,
        args: [request],
      });

      // A name with a bidi override is refused (names are one plain line); a reason may hold anything.
      const odd = await fleetgate(env, 'pause', id, '--reason', REASON, '--by', BY);
      assert.equal(odd.code, 1, odd.stdout);
      assertSafe(odd, 'refused name');
      assert.match(
        odd.stderr,
        /"by" must not contain control characters \(newlines, tabs, escapes\) or bidi/,
      );
      const paused = await fleetgate(env, 'pause', id, '--reason', REASON, '--by', 'ops');
      assert.equal(paused.code, 0, paused.stderr);
      assertSafe(paused, 'pause');
      assert.match(paused.stdout, /as ops:/);
      assert.equal((await handle.query(statusQuery)).paused?.reason, REASON, 'the reason is stored as sent');

      const status = await fleetgate(env, 'status', id);
      assert.equal(status.code, 0, status.stderr);
      assertSafe(status, 'status');
      const escaped = 'sensor recall \\x1b]0;pwned\\x07 \\x1b[2J then \\u202eevil\\noutcome completed';
      assert.ok(status.stdout.includes(`paused by ops since `), status.stdout);
      assert.ok(status.stdout.includes(`: ${escaped} (holds at its next safe point`), status.stdout);
      assert.ok(!/^outcome completed/m.test(status.stdout), 'the newline of the reason forges no line');

      const json = await fleetgate(env, 'status', id, '--json');
      assert.equal(json.code, 0, json.stderr);
      assertSafe(json, 'status --json');
      assert.ok(json.stdout.includes('\\u202e'), 'the override is a JSON escape');
      const parsed = JSON.parse(json.stdout) as { paused: { reason: string; by: string } };
      assert.equal(parsed.paused.reason, REASON, '--json holds the exact value');
      assert.equal(parsed.paused.by, 'ops');

      const again = await fleetgate(env, 'pause', id, '--reason', 'again', '--by', 'ops');
      assert.equal(again.code, 1);
      assertSafe(again, 'refused pause');
      assert.match(
        again.stderr,
        /^fleetgate: refused: the rollout is already paused by ops since .*\\x1b\]0;pwned\\x07/,
      );
      assert.equal(again.stderr.trimEnd().split('\n').length, 1, 'one line');

      const aborted = await fleetgate(env, 'abort', id, '--reason', REASON, '--by', 'ops');
      assert.equal(aborted.code, 0, aborted.stderr);
      assertSafe(aborted, 'abort');

      const ended = await fleetgate(env, 'status', id);
      assertSafe(ended, 'status of the ended rollout');
      assert.match(ended.stdout, /^outcome aborted/);
      assert.ok(ended.stdout.includes('\\x1b]0;pwned\\x07'), ended.stdout);
      assert.equal(ended.stdout.match(/^outcome /gm)?.length, 1, 'one outcome line');
    });
  } finally {
    await clientConn.close();
    await connection.close();
    await world.close();
  }
});

/**
 * Takes docs/status-page.png: the `fleetgate ui` page of a rollout in progress, in headless Chromium.
 * Runs a dev server, a worker with the real activities on the test fleet in a temporary data directory,
 * and one rollout of models/candidate-regress at 7200x fleet time; the picture is taken while its wave-2
 * gate waits, after wave 1's looks (so the charts have points). Usage:
 *   node --import tsx scripts/screenshot-ui.ts [OUT.png]
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import YAML from 'yaml';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { startDevServer } from '../workers/dev-server';
import { createFleetgateWorker, quietRuntime } from '../workers/worker';
import { openSimWorld } from '../sim/world';
import { RolloutRequest, type PolicyInput } from '../policies/schema';
import { SEARCH_ATTRIBUTES, WORKFLOW_TYPE, statusQuery } from '../workflows/definitions';
import { startUiServer } from '../cli/ui';
import { launchChromium } from './chromium';

const ROOT = resolve(__dirname, '..');
const FLEET = 'test/fixtures/fleet.yaml';

async function main(out: string): Promise<void> {
  quietRuntime();
  const tmp = mkdtempSync(join(tmpdir(), 'fleetgate-shot-'));
  const server = await startDevServer({});
  const world = await openSimWorld({
    dataDir: join(tmp, 'data'),
    root: ROOT,
    fleet: FLEET,
    production: 'models/production',
    by: 'screenshot',
  });
  const native = await NativeConnection.connect({ address: server.address });
  const conn = await Connection.connect({ address: server.address });
  const client = new Client({ connection: conn });
  const browser = await launchChromium();
  try {
    const taskQueue = 'screenshot';
    const worker = await createFleetgateWorker({
      connection: native,
      namespace: 'default',
      taskQueue,
      services: world.services,
    });
    const ui = await startUiServer({ client, dataDir: world.dataDir, port: 0 });
    await worker.runUntil(async () => {
      const policy = YAML.parse(readFileSync(join(ROOT, 'examples/demo-policy.yaml'), 'utf8')) as PolicyInput;
      policy.shadow!.duration = '3s';
      delete policy.shadow!.classGates;
      policy.waves = [
        { percent: 5, hold: '9s', looks: 3 },
        { percent: 25, hold: '30s', looks: 3, approval: { gate: 'wave-2', required: 1, timeout: '10m' } },
        { percent: 50, hold: '30s', looks: 3 },
      ];
      const id = 'nightvision-2.1-canary';
      const request = RolloutRequest.parse({
        rolloutId: id,
        candidate: { pack: 'models/candidate-regress' },
        fleet: { manifest: FLEET, timeScale: 7200 },
        policy,
        requestedBy: 'carol',
      });
      const handle = await client.workflow.start(WORKFLOW_TYPE, {
        workflowId: id,
        taskQueue,
        args: [request],
        typedSearchAttributes: [{ key: SEARCH_ATTRIBUTES.phase, value: 'register' }],
      });
      for (;;) {
        if ((await handle.query(statusQuery)).pendingGate) break;
        await new Promise((r) => setTimeout(r, 250));
      }
      const page = await browser.newPage({ viewport: { width: 1400, height: 1500 } });
      await page.goto(`${ui.url}#rollout=${encodeURIComponent(id)}`);
      await page.locator('#gate:not(.hidden)').waitFor();
      await page.locator('#charts svg.chart').first().waitFor();
      await page.screenshot({ path: out });
      await page.close();
      await ui.close();
    });
  } finally {
    await browser.close();
    await conn.close();
    await native.close();
    await world.close();
    await server.stop();
    rmSync(tmp, { recursive: true, force: true });
  }
}

main(resolve(process.argv[2] ?? join(ROOT, 'docs/status-page.png'))).then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);

/**
 * The status page of `fleetgate ui` in headless Chromium, against a real rollout: a dev server, a worker
 * with the real activities, the test fleet and a policy with a wave gate. The page must list the
 * rollout, show its phase and per-cohort states, show a validator's refusal of an action taken from it,
 * follow the rollout past the gate once approved from the page, pause and resume it from the page
 * (showing a reason's markup as text), roll back one cohort from the page (refused without a reason),
 * and, once aborted from the page, show the ended rollout from its report.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import type { Browser, Page } from 'playwright-core';
import { startDevServer, type DevServer } from '../../workers/dev-server';
import { createFleetgateWorker, quietRuntime } from '../../workers/worker';
import { SEARCH_ATTRIBUTES, WORKFLOW_TYPE } from '../../workflows/definitions';
import { RolloutRequest } from '../../policies/schema';
import { startUiServer, type UiServer } from '../../cli/ui';
import { launchChromium } from '../../scripts/chromium';
import { loadPolicy, makeWorld, query, resultWithin, rolloutRequest, type World } from '../support';

let server: DevServer;
let tmp: string;
let browser: Browser;

before(async () => {
  quietRuntime();
  tmp = mkdtempSync(join(tmpdir(), 'fleetgate-ui-'));
  server = await startDevServer({ dbFile: join(tmp, 'temporal.db') });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

/** Waits for an element, holding `text` when given, to be on the page; returns its text. */
async function shown(page: Page, selector: string, text?: RegExp): Promise<string> {
  const el = page.locator(selector, text ? { hasText: text } : {}).first();
  await el.waitFor({ state: 'attached', timeout: 120_000 });
  return (await el.textContent()) ?? '';
}

test('the status page follows a rollout through its gate, shows a refusal and the ended rollout', async () => {
  const world: World = await makeWorld();
  const connection = await NativeConnection.connect({ address: server.address });
  const clientConn = await Connection.connect({ address: server.address });
  const client = new Client({ connection: clientConn });
  const taskQueue = `ui-${process.pid}`;
  let ui: UiServer | undefined;
  try {
    const worker = await createFleetgateWorker({
      connection,
      namespace: 'default',
      taskQueue,
      services: world.services,
    });
    ui = await startUiServer({ client, dataDir: world.dataDir, port: 0 });
    await worker.runUntil(async () => {
      const policy = loadPolicy('examples/demo-policy.yaml');
      policy.shadow!.duration = '3s';
      delete policy.shadow!.classGates;
      policy.waves = [
        { percent: 5, hold: '4s', looks: 2 },
        { percent: 25, hold: '30s', looks: 2, approval: { gate: 'wave-2', required: 1, timeout: '10m' } },
        { percent: 50, hold: '30s', looks: 2 },
      ];
      policy.labelWait = { coverage: 0.9, poll: '2s', timeout: '20s' };
      const id = `ui-rollout-${process.pid}`;
      const request = RolloutRequest.parse(
        rolloutRequest(id, 'models/candidate-good', policy, 'test/fixtures/fleet.yaml', 7200),
      );
      const handle = await client.workflow.start(WORKFLOW_TYPE, {
        workflowId: id,
        taskQueue,
        args: [request],
        typedSearchAttributes: [
          { key: SEARCH_ATTRIBUTES.phase, value: 'register' },
          { key: SEARCH_ATTRIBUTES.candidate, value: 'models/candidate-good' },
        ],
      });

      const page = await browser.newPage();
      page.on('dialog', (d) => void d.accept());
      await page.goto(`${ui!.url}#rollout=${encodeURIComponent(id)}`);

      // Listed, with its phase from the search attributes; its cohorts with their states.
      await shown(page, `#list tr[data-id="${id}"]`);
      const gate = await shown(page, '#gate:not(.hidden) #gate-name');
      assert.match(gate, /^wave-2/);
      assert.match(await shown(page, '[data-kpi="phase"]'), /canary/);
      assert.match(await shown(page, '[data-kpi="wave"]'), /1 \/ 3/);
      await shown(page, `#list tr[data-id="${id}"]`, /canary/);
      const rows = await page.$$eval('#cohorts tr[data-cohort]', (trs) =>
        trs.map((tr) => [tr.getAttribute('data-cohort'), tr.getAttribute('data-state')]),
      );
      assert.deepEqual(rows.map(([c]) => c).sort(), [...world.cohorts].sort());
      for (const [cohort, state] of rows) assert.ok(state, `cohort ${cohort} shows a state`);

      // A reviewer outside the policy's list: the validator's reason is shown, the gate stays.
      await page.fill('#reviewer', 'mallory');
      await page.click('#approve');
      const refusal = await shown(page, '#action-result', /refused/);
      assert.match(refusal, /^refused: reviewer "mallory" is not allowed to approve/);
      assert.ok(await page.$('#gate:not(.hidden)'), 'the gate is still pending');

      // Approved from the page: the page follows the rollout into wave 2.
      await page.fill('#reviewer', 'alice');
      await page.fill('#gate-text', 'looks fine');
      await page.click('#approve');
      await shown(page, 'body[data-wave="2"]');
      assert.ok(await page.$('#gate.hidden'), 'the gate is gone once approved');
      await shown(page, '#log tr.entry', /alice approved gate "wave-2"/);

      // No vehicle identifier on the page.
      const html = await page.content();
      const vehicles = await query<{ vehicle: string }>(world, 'SELECT vehicle FROM vehicles');
      assert.ok(vehicles.length > 0);
      for (const v of vehicles) assert.ok(!html.includes(v.vehicle), 'a vehicle pseudonym on the page');

      // Paused and resumed from the page; a reason holding markup is shown as text.
      await page.fill('#by', 'alice');
      await page.fill('#why', '<b>checking</b> the canary');
      await page.click('#pause');
      await shown(page, 'body[data-phase="paused"] [data-kpi="phase"]', /paused.*in canary by alice/);
      await shown(page, '#log tr.entry', /paused by alice: <b>checking<\/b> the canary/);
      assert.equal(await page.$('#log b'), null, 'markup of a reason is never markup on the page');
      await page.click('#resume');
      await shown(page, 'body[data-phase="canary"]');
      await shown(page, '#log tr.entry', /resumed by alice/);

      // One cohort rolled back from the page: refused without a reason, then done; the others go on.
      const target = rows[0]![0]!;
      const button = `#cohorts tr[data-cohort="${target}"] button.rollback`;
      await page.fill('#why', '');
      await page.click(button);
      assert.match(await shown(page, '#action-result.refused'), /^rollback-cohort: "reason" is required/);
      assert.ok(await page.$(button), 'the refused rollback left the cohort as it was');
      await page.fill('#why', 'field reports');
      await page.click(button);
      await shown(page, `#cohorts tr[data-cohort="${target}"][data-state="rolled_back"]`);
      assert.equal(await page.$(button), null, 'a rolled back cohort has no Roll back button');
      // The decision log says who and why: columns Action, Cohort, By, Reason.
      await shown(page, '#log tr.entry', /emergency rollback of .+ by alice: field reports/);
      const entry = page.locator('#log tr.entry', { hasText: /emergency rollback of/ }).first();
      const cells = await entry.locator('td').allTextContents();
      assert.deepEqual(cells.slice(4, 7), ['rollback', target, 'alice']);
      assert.ok(cells[7]!.startsWith(`emergency rollback of ${target} by alice: field reports`), cells[7]);
      assert.ok((await page.$$('#cohorts button.rollback')).length > 0, 'the other cohorts can still be');

      // Aborted from the page: the ended rollout is read from its report.
      await page.fill('#why', 'enough for this test');
      await page.click('#abort');
      const result = await resultWithin(handle, 180_000);
      assert.equal(result.outcome, 'aborted');
      await shown(page, 'body[data-phase="done"] [data-kpi="outcome"]', /aborted/);
      await shown(page, '#reason', /enough for this test/);
      await shown(page, `#list tr[data-id="${id}"]`, /aborted/);
      await shown(page, `#cohorts tr[data-cohort="${target}"][data-state="rolled_back"]`);
      assert.equal(await page.$('#cohorts button.rollback'), null, 'no Roll back once it ended');
      await shown(page, '#charts h2', /Metrics per look/);
      assert.ok((await page.$$('#charts svg.chart')).length > 0, 'charts of the looks are drawn');
      await page.close();
    });
  } finally {
    await ui?.close();
    await clientConn.close();
    await connection.close();
    await world.close();
  }
});

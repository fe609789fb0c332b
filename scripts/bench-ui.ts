/**
 * The status page's bench of `npm run bench` (scripts/bench.ts): the first render of `fleetgate ui`'s
 * page in headless Chromium with 50 rollouts listed, against the same page with an empty list, both
 * served the same way in the same run. First render: from navigation to the page's
 * `fleetgate:list-drawn` performance mark (the list drawn from /api/rollouts). Goal: under a second.
 *
 * The 50 rollouts are rolloutWorkflow executions started on a dev server (which registers the search
 * attributes) with their phase and candidate attributes and no worker polling their task queue, so they sit in the list the way real ones
 * do and the list endpoint reads them the same way. Runs alternate; the median of each is kept.
 */
import { Client, Connection } from '@temporalio/client';
import type { Browser } from 'playwright-core';
import { startDevServer } from '../workers/dev-server';
import { SEARCH_ATTRIBUTES, WORKFLOW_TYPE } from '../workflows/definitions';
import { startUiServer } from '../cli/ui';
import { launchChromium } from './chromium';
import type { BenchRow } from './bench-shadow';

const ROLLOUTS = 50;
const RUNS = 7;

/** Milliseconds from navigation to the list drawn, as the page's own performance mark says. */
async function firstRender(browser: Browser, url: string): Promise<number> {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    await page.goto(url);
    // A selector and a function, never a string to evaluate: the page's CSP forbids eval.
    await page.waitForSelector('body[data-list-drawn]', { state: 'attached' });
    return await page.evaluate(
      () => globalThis.performance.getEntriesByName('fleetgate:list-drawn', 'mark')[0]!.startTime,
    );
  } finally {
    await context.close();
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

export async function uiBench(): Promise<BenchRow> {
  const server = await startDevServer({});
  const connection = await Connection.connect({ address: server.address });
  const client = new Client({ connection });
  const browser = await launchChromium();
  const queue = `bench-ui-${process.pid}`;
  const full = await startUiServer({ client, dataDir: '/nonexistent', port: 0, taskQueue: queue });
  const empty = await startUiServer({ client, dataDir: '/nonexistent', port: 0, taskQueue: `${queue}-none` });
  try {
    for (let i = 0; i < ROLLOUTS; i++) {
      await client.workflow.start(WORKFLOW_TYPE, {
        workflowId: `bench-ui-${process.pid}-${String(i).padStart(2, '0')}`,
        taskQueue: queue,
        args: [],
        typedSearchAttributes: [
          { key: SEARCH_ATTRIBUTES.phase, value: i % 3 === 0 ? 'canary' : 'shadow' },
          { key: SEARCH_ATTRIBUTES.candidate, value: `candidate-${i}@1.0.${i}` },
        ],
      });
    }
    // Visibility is eventually consistent: wait until the list holds all of them.
    for (let i = 0; ; i++) {
      const r = (await (await fetch(`${full.url}api/rollouts`)).json()) as { rollouts: unknown[] };
      if (r.rollouts.length >= ROLLOUTS) break;
      if (i > 120) throw new Error(`the list shows ${r.rollouts.length} of ${ROLLOUTS} rollouts after 30 s`);
      await new Promise((res) => setTimeout(res, 250));
    }
    await firstRender(browser, full.url);
    await firstRender(browser, empty.url);
    const subject: number[] = [];
    const baseline: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      subject.push(await firstRender(browser, full.url));
      baseline.push(await firstRender(browser, empty.url));
    }
    const s = median(subject);
    const b = median(baseline);
    return {
      name: `status page first render (${ROLLOUTS} rollouts; goal < 1 s)`,
      subject: `${ROLLOUTS} listed: ${s.toFixed(0)} ms`,
      baseline: `empty list: ${b.toFixed(0)} ms`,
      subjectMs: s,
      baselineMs: b,
      speedup: b / s,
    };
  } finally {
    await browser.close();
    await full.close();
    await empty.close();
    await connection.close();
    await server.stop();
  }
}

if (require.main === module) {
  uiBench().then(
    (r) => console.log(r),
    (err: unknown) => {
      console.error(err);
      process.exitCode = 1;
    },
  );
}

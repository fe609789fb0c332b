/**
 * The status page's server (cli/ui.ts) over real HTTP with a stand-in Temporal client: the list read
 * from search attributes, an ended rollout read from its report (test/fixtures/report-demo.json), the
 * same read from the object store's reports/ with an empty data directory, the
 * refusals it gives before anything reaches Temporal (Host, Origin, content type, a missing field), a
 * validator's refusal passed through as 409, and the page's own Content-Security-Policy.
 * The browser test against a real rollout is test/integration/ui.test.ts.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { WorkflowUpdateFailedError, type Client } from '@temporalio/client';
import { ApplicationFailure, TypedSearchAttributes } from '@temporalio/common';
import { rollbackCohortUpdate, SEARCH_ATTRIBUTES } from '../../workflows/definitions';
import { startUiServer, type UiServer } from '../../cli/ui';
import { renderUiPage } from '../../cli/ui-page';
import { reportKey } from '../../activities/report';
import { LocalObjectStore } from '../../activities/store';

const ROOT = resolve(__dirname, '..', '..');
const REPORTED = 'demo-20261122-061738';

let dataDir: string;
let ui: UiServer;
const updates: { id: string; name: string; args: unknown[] }[] = [];

/** The part of a Temporal client the server uses: two executions, one running, one ended. */
const fakeClient = {
  workflow: {
    async *list() {
      yield {
        workflowId: 'running-1',
        status: { name: 'RUNNING' },
        startTime: new Date('2026-12-01T10:00:00Z'),
        typedSearchAttributes: new TypedSearchAttributes([
          { key: SEARCH_ATTRIBUTES.phase, value: 'canary' },
          { key: SEARCH_ATTRIBUTES.candidate, value: 'hazard-detector@1.2.0' },
        ]),
      };
      yield {
        workflowId: REPORTED,
        status: { name: 'COMPLETED' },
        startTime: new Date('2026-11-22T06:17:38Z'),
        closeTime: new Date('2026-11-22T06:20:00Z'),
        typedSearchAttributes: new TypedSearchAttributes([
          { key: SEARCH_ATTRIBUTES.outcome, value: 'completed' },
        ]),
      };
    },
    getHandle(id: string) {
      return {
        describe: async () => ({ status: { name: id === 'running-1' ? 'RUNNING' : 'COMPLETED' } }),
        executeUpdate: async (def: { name: string }, opts: { args: unknown[] }) => {
          updates.push({ id, name: def.name, args: opts.args });
          const cause = ApplicationFailure.nonRetryable('reviewer "mallory" is not allowed to approve');
          throw new WorkflowUpdateFailedError('Workflow Update failed', cause);
        },
      };
    },
  },
  withDeadline: <T>(_deadline: number, fn: () => Promise<T>) => fn(),
} as unknown as Client;

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'fleetgate-ui-unit-'));
  mkdirSync(join(dataDir, 'reports'));
  copyFileSync(join(ROOT, 'test/fixtures/report-demo.json'), join(dataDir, 'reports', `${REPORTED}.json`));
  ui = await startUiServer({ client: fakeClient, dataDir, port: 0 });
});

after(async () => {
  await ui?.close();
  rmSync(dataDir, { recursive: true, force: true });
});

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function call(path: string, opts: { method?: string; headers?: Record<string, string>; body?: string } = {}) {
  const url = new URL(path, ui.url);
  return new Promise<Answer>((res, rej) => {
    const req = request(url, { method: opts.method ?? 'GET', headers: opts.headers }, (r) => {
      let body = '';
      r.setEncoding('utf8');
      r.on('data', (d: string) => (body += d));
      r.on('end', () => res({ status: r.statusCode ?? 0, headers: r.headers, body }));
    });
    req.on('error', rej);
    req.end(opts.body);
  });
}

test('the list comes from each execution’s search attributes', async () => {
  const r = await call('/api/rollouts');
  assert.equal(r.status, 200);
  const { rollouts } = JSON.parse(r.body);
  assert.deepEqual(
    rollouts.map((x: Record<string, unknown>) => [x.id, x.status, x.phase, x.candidate, x.outcome]),
    [
      ['running-1', 'RUNNING', 'canary', 'hazard-detector@1.2.0', undefined],
      [REPORTED, 'COMPLETED', undefined, undefined, 'completed'],
    ],
  );
});

test('an ended rollout is read from its report, its charts drawn by the report’s code', async () => {
  const r = await call(`/api/rollouts/${REPORTED}`);
  assert.equal(r.status, 200);
  const v = JSON.parse(r.body);
  assert.equal(v.source, 'report');
  assert.equal(v.running, false);
  assert.equal(v.outcome, 'completed');
  assert.deepEqual(
    v.cohorts.map((c: { cohort: string; state: string }) => `${c.cohort}:${c.state}`),
    ['hw3/eu:promoted', 'hw4/us:promoted', 'hw3/nordic:rolled_back'],
  );
  assert.ok(v.decisions.length > 30, 'the whole decision log');
  assert.match(v.chartsHtml, /<svg class="chart" data-cohort="hw3\/nordic" data-metric="error_rate"/);
  assert.doesNotMatch(v.chartsHtml, /<table class="looks"/, 'charts without the per-look tables');
});

test('an ended rollout is read only from a report the reports directory lists', async () => {
  const r = await call(`/api/rollouts/..%2Freports%2F${REPORTED}`);
  assert.equal(r.status, 200);
  const v = JSON.parse(r.body);
  assert.equal(v.source, 'none');
  assert.equal(
    v.note,
    `rollout "../reports/${REPORTED}" ended (completed) and has no report in the data directory`,
  );
});

test('requests for another host, from another origin or not as JSON are refused before Temporal', async () => {
  const before = updates.length;
  const other = await call('/api/rollouts', { headers: { Host: 'attacker.example:80' } });
  assert.equal(other.status, 421);
  assert.match(JSON.parse(other.body).error, /unexpected Host "attacker\.example:80"/);
  const cross = await call('/api/rollouts/running-1/abort', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Origin: 'http://attacker.example' },
    body: '{"by":"x"}',
  });
  assert.equal(cross.status, 403);
  const form = await call('/api/rollouts/running-1/abort', {
    method: 'POST',
    headers: { 'Content-Type': 'text/plain' },
    body: '{"by":"x"}',
  });
  assert.equal(form.status, 415);
  const missing = await call('/api/rollouts/running-1/approve', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: '{"gate":"wave-2"}',
  });
  assert.equal(missing.status, 400);
  assert.equal(JSON.parse(missing.body).error, 'approve: "reviewer" is required (a non-empty string)');
  const unknown = await call('/api/rollouts/running-1/promote', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: '{}',
  });
  assert.equal(unknown.status, 404);
  assert.equal(updates.length, before, 'nothing reached the workflow');
});

test('a validator’s refusal is a 409 with its reason; the update carries the page’s digest', async () => {
  const r = await call('/api/rollouts/running-1/approve', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Origin: ui.url.replace(/\/$/, '') },
    body: JSON.stringify({ gate: 'wave-2', reviewer: 'mallory', digest: 'a8e7350bc4ef' }),
  });
  assert.equal(r.status, 409);
  assert.equal(JSON.parse(r.body).error, 'refused: reviewer "mallory" is not allowed to approve');
  assert.deepEqual(updates.at(-1), {
    id: 'running-1',
    name: 'approve',
    args: [{ gate: 'wave-2', reviewer: 'mallory', digest: 'a8e7350bc4ef' }],
  });
});

test('a cohort’s rollback passes cohort, by and reason to its update; a missing cohort is a 400', async () => {
  const post = (body: unknown) =>
    call('/api/rollouts/running-1/rollback-cohort', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Origin: ui.url.replace(/\/$/, '') },
      body: JSON.stringify(body),
    });
  const before = updates.length;
  const missing = await post({ by: 'alice', reason: 'field reports' });
  assert.equal(missing.status, 400);
  assert.equal(JSON.parse(missing.body).error, 'rollback-cohort: "cohort" is required (a non-empty string)');
  const noReason = await post({ cohort: 'hw3/nordic', by: 'alice' });
  assert.equal(noReason.status, 400);
  assert.equal(JSON.parse(noReason.body).error, 'rollback-cohort: "reason" is required (a non-empty string)');
  assert.equal(updates.length, before, 'nothing reached the workflow');
  const r = await post({ cohort: 'hw3/nordic', by: 'alice', reason: 'field reports' });
  assert.equal(r.status, 409);
  assert.match(JSON.parse(r.body).error, /^refused: /);
  assert.deepEqual(updates.at(-1), {
    id: 'running-1',
    name: rollbackCohortUpdate.name,
    args: [{ cohort: 'hw3/nordic', by: 'alice', reason: 'field reports' }],
  });
});

test('the page allows only its own script and loads nothing from elsewhere', async () => {
  const r = await call('/');
  assert.equal(r.status, 200);
  assert.equal(r.body, renderUiPage().html);
  const script = /<script>([\s\S]*)<\/script>/.exec(r.body)![1]!;
  const hash = createHash('sha256').update(script).digest('base64');
  assert.ok(renderUiPage().csp.includes(`script-src 'sha256-${hash}'`));
  assert.match(renderUiPage().csp, /^default-src 'none';/);
  assert.doesNotMatch(r.body, /(src|href)="(https?:)?\/\//);
});

test('every answer (page, JSON, refusals, errors, 404s) forbids framing and sniffing and sends no referrer', async () => {
  const json = { 'Content-Type': 'application/json', Origin: ui.url.replace(/\/$/, '') };
  const answers = [
    await call('/'),
    await call('/api/rollouts'),
    await call(`/api/rollouts/${REPORTED}`),
    await call('/api/rollouts/running-1/approve', {
      method: 'POST',
      headers: json,
      body: JSON.stringify({ gate: 'wave-2', reviewer: 'mallory' }),
    }),
    await call('/api/rollouts/running-1/approve', { method: 'POST', headers: json, body: '{}' }),
    await call('/api/rollouts/running-1/approve', { method: 'POST', headers: json, body: '{' }),
    await call('/api/rollouts/running-1/approve'),
    await call('/api/rollouts/running-1/constructor', { method: 'POST', headers: json, body: '{}' }),
    await call('/favicon.ico'),
    await call('/api/rollouts', { headers: { Host: 'attacker.example:80' } }),
  ];
  assert.deepEqual(
    answers.map((a) => a.status),
    [200, 200, 200, 409, 400, 400, 405, 404, 404, 421],
  );
  const csp = `${renderUiPage().csp}; frame-ancestors 'none'`;
  for (const a of answers) {
    assert.equal(a.headers['x-frame-options'], 'DENY');
    assert.equal(a.headers['content-security-policy'], csp);
    assert.equal(a.headers['x-content-type-options'], 'nosniff');
    assert.equal(a.headers['referrer-policy'], 'no-referrer');
  }
  // The page keeps its meta policy too (a saved copy opened from disk has no headers).
  assert.ok(
    answers[0]!.body.includes(`<meta http-equiv="Content-Security-Policy" content="${renderUiPage().csp}">`),
  );
});

test('an ended rollout is read from the object store’s reports/ when the data directory has none', async () => {
  const empty = mkdtempSync(join(tmpdir(), 'fleetgate-ui-empty-'));
  const store = new LocalObjectStore(mkdtempSync(join(tmpdir(), 'fleetgate-ui-store-')));
  const fixture = readFileSync(join(ROOT, 'test/fixtures/report-demo.json'));
  await store.putIfAbsent(reportKey('stored-1'), fixture);
  const other = await startUiServer({ client: fakeClient, dataDir: empty, store, port: 0 });
  try {
    const res = await fetch(new URL('/api/rollouts/stored-1', other.url));
    assert.equal(res.status, 200);
    const v = (await res.json()) as { source: string; outcome: string; decisions: unknown[] };
    assert.equal(v.source, 'report');
    assert.equal(v.outcome, 'completed');
    assert.ok(v.decisions.length > 30, 'the whole decision log');
    const none = (await (await fetch(new URL('/api/rollouts/stored-2', other.url))).json()) as {
      note: string;
    };
    assert.equal(
      none.note,
      'rollout "stored-2" ended (completed) and has no report in the object store or the data directory',
    );
  } finally {
    await other.close();
    rmSync(empty, { recursive: true, force: true });
    rmSync(store.root, { recursive: true, force: true });
  }
});

/**
 * Saved histories of earlier rollouts (test/histories/*.json) replay against today's workflow code:
 * a change to workflow logic that is not behind `patched()` fails here before it reaches a running
 * rollout. Histories are recorded with `npm run record-histories`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Worker, bundleWorkflowCode, type ReplayWorkerOptions } from '@temporalio/worker';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils';
import { getWorkflowBundle } from '../../workers/bundle';
import { quietRuntime } from '../../workers/worker';
import { ROOT } from '../support';

const dir = join(ROOT, 'test', 'histories');
const files = readdirSync(dir)
  .filter((f) => f.endsWith('.json'))
  .sort();

function histories() {
  return files.map((f) => ({
    workflowId: f.replace(/\.json$/, ''),
    history: historyFromJSON(JSON.parse(readFileSync(join(dir, f), 'utf8'))),
  }));
}

test('saved histories are there to replay', () => {
  assert.ok(files.length >= 3, `expected recorded histories in test/histories, found ${files.length}`);
});

test('every saved history replays without a non-determinism error', async () => {
  quietRuntime();
  const options: ReplayWorkerOptions = { workflowBundle: await getWorkflowBundle() };
  let replayed = 0;
  for await (const r of Worker.runReplayHistories(options, histories())) {
    assert.equal(r.error, undefined, `${r.workflowId}: ${r.error?.message}`);
    replayed++;
  }
  assert.equal(replayed, files.length);
});

test('a workflow changed without patched() fails to replay them', async () => {
  quietRuntime();
  const bundle = await bundleWorkflowCode({
    workflowsPath: join(ROOT, 'test', 'fixtures', 'drifted-workflows.ts'),
    logger: { log() {}, trace() {}, debug() {}, info() {}, warn() {}, error() {} },
  });
  const [first] = histories();
  assert.ok(first);
  let failed = 0;
  for await (const r of Worker.runReplayHistories({ workflowBundle: bundle }, [first])) {
    if (r.error) {
      failed++;
      assert.match(r.error.name + r.error.message, /[Dd]eterminism/);
    }
  }
  assert.equal(failed, 1);
});

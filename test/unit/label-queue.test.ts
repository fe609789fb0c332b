/**
 * The label requests of a real fleet as files in the object store (activities/label-queue.ts), on a real
 * local store: one file per batch under the hour of its first request, whatever the batch's size.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalObjectStore } from '../../activities/store';
import { StoreLabelQueue, labelRequestPrefix } from '../../activities/label-queue';

test('a batch asking for more labels than a call takes arguments is one file under its first hour', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-label-queue-'));
  try {
    const store = new LocalObjectStore(join(dir, 'store'));
    const T = Date.UTC(2026, 2, 1, 7, 30);
    const n = 300_000;
    const requests = Array.from({ length: n }, (_, i) => ({
      eventId: `e${i}`,
      requestedAtMs: T + ((i * 7919) % n) * 10,
      reason: 'sample',
    }));
    await new StoreLabelQueue(store).requestLabels('big', requests);
    const files = await store.list(labelRequestPrefix('big'));
    assert.equal(files.length, 1);
    assert.match(files[0]!, /\/2026\/03\/01\/07\/[0-9a-f]{32}\.ndjson$/);
    const lines = (await store.get(files[0]!))!.toString('utf8').trim().split('\n');
    assert.equal(lines.length, n);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

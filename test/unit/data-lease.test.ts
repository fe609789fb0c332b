/**
 * The object store's data-owner lease (workers/data-lease.ts) on a real local store: one holder at a
 * time; a live lease of another holder refuses with its name and when it runs out; a lease that ran out
 * is taken over; a holder whose lease was taken over is told so and stops renewing; two that take an
 * expired lease at once: one wins.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalObjectStore } from '../../activities/store';
import {
  DataOwnerError,
  LEASE_KEY,
  acquireLease,
  keepLease,
  type DataOwnerLease,
} from '../../workers/data-lease';
import { storeId } from '../../workers/ownership';

function withStore(fn: (store: LocalObjectStore, dir: string) => Promise<void>) {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fleetgate-lease-'));
    try {
      await fn(new LocalObjectStore(join(dir, 'store')), dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

test(
  'a live lease refuses another holder, naming it and when it runs out; once run out it is taken over',
  withStore(async (store) => {
    let now = 1_000_000;
    const clock = { now: () => now, ttlMs: 30_000 };
    await acquireLease(store, '11@host-a dir=aaaa', clock);
    // The holder itself may take it again (a restart of the same directory).
    await acquireLease(store, '11@host-a dir=aaaa', clock);
    now += 12_000;
    await assert.rejects(acquireLease(store, '22@host-b dir=bbbb', clock), (err: Error) => {
      assert.ok(err instanceof DataOwnerError);
      assert.match(err.message, /owned by the data worker 11@host-a dir=aaaa/);
      assert.match(err.message, /renewed 12 s ago/);
      assert.match(err.message, /start this one again in 18 s, when its lease runs out/);
      return true;
    });
    now += 18_001;
    await acquireLease(store, '22@host-b dir=bbbb', clock);
    const lease = JSON.parse((await store.get(LEASE_KEY))!.toString('utf8')) as DataOwnerLease;
    assert.equal(lease.holder, '22@host-b dir=bbbb');
    assert.equal(lease.renewedAtMs, now);
  }),
);

test(
  'of two that take a run-out lease at once, one wins; the loser is refused',
  withStore(async (store) => {
    let now = 0;
    const clock = { now: () => now, ttlMs: 1_000 };
    await acquireLease(store, 'dead', clock);
    now = 5_000;
    const results = await Promise.allSettled([
      acquireLease(store, 'one', clock),
      acquireLease(store, 'two', clock),
    ]);
    const won = results.filter((r) => r.status === 'fulfilled');
    assert.equal(won.length, 1, JSON.stringify(results.map((r) => r.status)));
    const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    assert.ok(lost.reason instanceof DataOwnerError, String(lost.reason));
  }),
);

test(
  'a holder renews its lease, and is told when another took it over',
  withStore(async (store) => {
    let now = 0;
    const clock = { now: () => now, ttlMs: 300 };
    const { etag } = await acquireLease(store, 'first', clock);
    let lost: DataOwnerError | undefined;
    const stop = keepLease(store, 'first', etag, (err) => (lost = err), clock);
    try {
      now = 100;
      await new Promise((r) => setTimeout(r, 250));
      const renewed = JSON.parse((await store.get(LEASE_KEY))!.toString('utf8')) as DataOwnerLease;
      assert.equal(renewed.holder, 'first');
      assert.equal(renewed.renewedAtMs, 100, 'renewed within a third of its time to live');
      assert.equal(lost, undefined);
      // Its clock stops (a paused process): the lease runs out and another takes it.
      now = 10_000;
      await acquireLease(store, 'second', clock);
      for (let i = 0; i < 40 && !lost; i++) await new Promise((r) => setTimeout(r, 50));
      const told = lost as DataOwnerError | undefined;
      assert.ok(told instanceof DataOwnerError);
      assert.match(told.message, /taken over by second/);
      const after = JSON.parse((await store.get(LEASE_KEY))!.toString('utf8')) as DataOwnerLease;
      assert.equal(after.holder, 'second', 'the one that lost never writes the lease again');
    } finally {
      stop();
    }
  }),
);

test(
  "with the store as owner, every data directory on it has the store's id; otherwise each its own",
  withStore(async (store, dir) => {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    assert.equal(storeId(a, store, 'store'), storeId(b, store, 'store'));
    assert.notEqual(storeId(a, store), storeId(b, store));
    assert.match(storeId(a, store, 'store'), /^[0-9a-f]{12}$/);
  }),
);

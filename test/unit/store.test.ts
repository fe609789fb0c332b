/**
 * LocalObjectStore on a temp directory: write-once semantics, compare-and-swap under contention, key
 * checks, listing, and a lock left behind by a dead process.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, existsSync, utimesSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createHash } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { LocalObjectStore } from '../../activities/store';
import { ErrorType } from '../../errors';

function withStore(fn: (store: LocalObjectStore, dir: string) => Promise<void>) {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fleetgate-store-'));
    try {
      await fn(new LocalObjectStore(dir, { durable: false }), dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

const sha = (s: string) => createHash('sha256').update(s).digest('hex');

async function failureType(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (err) {
    return (err as { type?: string }).type;
  }
  assert.fail('expected a failure');
}

void test(
  'delete removes a key (a later putIfAbsent creates it anew); an absent key is fine; keys are checked',
  withStore(async (store, dir) => {
    const key = 'events/inference/fleet=demo/date=2025-01-01/a.parquet';
    await store.putIfAbsent(key, Buffer.from('a'));
    await store.putIfAbsent('events/inference/fleet=demo/date=2025-01-01/b.parquet', Buffer.from('b'));
    await store.delete(key);
    assert.equal(await store.get(key), undefined);
    assert.deepEqual(await store.list('events/'), ['events/inference/fleet=demo/date=2025-01-01/b.parquet']);
    await store.delete(key);
    await store.delete('events/none/x.parquet');
    assert.equal(await store.putIfAbsent(key, Buffer.from('other')), 'created');
    assert.equal(await failureType(store.delete('../outside')), ErrorType.InvalidInput);
    assert.ok(existsSync(dir));
  }),
);

void test(
  'putIfAbsent creates once, accepts the same bytes again, refuses different bytes',
  withStore(async (store) => {
    assert.equal(await store.putIfAbsent('registry/m/1.0.0.json', Buffer.from('a')), 'created');
    assert.equal(await store.putIfAbsent('registry/m/1.0.0.json', Buffer.from('a')), 'exists');
    assert.equal(
      await failureType(store.putIfAbsent('registry/m/1.0.0.json', Buffer.from('b'))),
      ErrorType.ImmutableConflict,
    );
    assert.equal((await store.get('registry/m/1.0.0.json'))?.toString(), 'a');
    assert.equal(await store.etag('registry/m/1.0.0.json'), sha('a'));
    assert.equal(await store.etag('registry/m/2.0.0.json'), null);
    assert.equal(await store.get('registry/m/2.0.0.json'), undefined);
  }),
);

void test(
  'concurrent putIfAbsent of one key: one creates, the others see the same bytes',
  withStore(async (store) => {
    const results = await Promise.all(
      Array.from({ length: 20 }, () => store.putIfAbsent('blobs/sha256/x', Buffer.from('same'))),
    );
    assert.equal(results.filter((r) => r === 'created').length, 1);
    assert.equal(results.filter((r) => r === 'exists').length, 19);
  }),
);

void test(
  'compareAndSwap: absent -> value -> value, and a stale etag is a PointerConflict',
  withStore(async (store) => {
    const e1 = await store.compareAndSwap('pointers/c/production.json', null, Buffer.from('one'));
    assert.equal(e1, sha('one'));
    assert.equal(
      await failureType(store.compareAndSwap('pointers/c/production.json', null, Buffer.from('x'))),
      ErrorType.PointerConflict,
    );
    const e2 = await store.compareAndSwap('pointers/c/production.json', e1, Buffer.from('two'));
    assert.equal(e2, sha('two'));
    assert.equal(
      await failureType(store.compareAndSwap('pointers/c/production.json', e1, Buffer.from('three'))),
      ErrorType.PointerConflict,
    );
    assert.equal((await store.get('pointers/c/production.json'))?.toString(), 'two');
  }),
);

void test(
  'concurrent compareAndSwap: exactly one winner per expected etag',
  withStore(async (store) => {
    const key = 'pointers/hw3/eu/production.json';
    let expected: string | null = null;
    for (let round = 0; round < 3; round++) {
      const outcomes = await Promise.allSettled(
        Array.from({ length: 25 }, (_, i) =>
          store.compareAndSwap(key, expected, Buffer.from(`r${round}-w${i}`)),
        ),
      );
      const won = outcomes.filter((o) => o.status === 'fulfilled');
      const lost = outcomes.filter((o) => o.status === 'rejected');
      assert.equal(won.length, 1, `round ${round}: one winner`);
      for (const o of lost) assert.equal((o.reason as { type?: string }).type, ErrorType.PointerConflict);
      const winner = (won[0] as PromiseFulfilledResult<string>).value;
      assert.equal(await store.etag(key), winner);
      expected = winner;
    }
  }),
);

void test(
  'keys that could leave the root are refused',
  withStore(async (store) => {
    for (const key of ['../x', 'a/../../x', '/etc/passwd', 'a//b', '', 'a/./b', '.locks/x', 'a\\b']) {
      assert.equal(await failureType(store.get(key)), ErrorType.InvalidInput, key);
      assert.equal(await failureType(store.putIfAbsent(key, Buffer.from('x'))), ErrorType.InvalidInput, key);
      assert.equal(
        await failureType(store.compareAndSwap(key, null, Buffer.from('x'))),
        ErrorType.InvalidInput,
        key,
      );
    }
  }),
);

void test(
  'list returns keys under a prefix, sorted, without internal files',
  withStore(async (store) => {
    await store.putIfAbsent('pointers/c/production.history/00000002.json', Buffer.from('2'));
    await store.putIfAbsent('pointers/c/production.history/00000001.json', Buffer.from('1'));
    await store.compareAndSwap('pointers/c/production.json', null, Buffer.from('p'));
    await store.putIfAbsent('registry/m/1.0.0.json', Buffer.from('r'));
    assert.deepEqual(await store.list('pointers/c/production.history/'), [
      'pointers/c/production.history/00000001.json',
      'pointers/c/production.history/00000002.json',
    ]);
    assert.deepEqual(await store.list('pointers/c/production'), [
      'pointers/c/production.history/00000001.json',
      'pointers/c/production.history/00000002.json',
      'pointers/c/production.json',
    ]);
    assert.equal((await store.list('')).length, 4);
    assert.deepEqual(await store.list('nothing/here/'), []);
  }),
);

void test(
  'a lock left by a dead process or too old is broken; a fresh one makes the swap wait then fail',
  withStore(async (_unused, dir) => {
    const key = 'pointers/c/production.json';
    const lockDir = join(dir, '.locks');
    mkdirSync(lockDir, { recursive: true });
    const lockFile = join(lockDir, `${sha(key)}.lock`);

    const busy = new LocalObjectStore(dir, { durable: false, lockTimeoutMs: 150, staleLockMs: 60_000 });
    writeFileSync(lockFile, JSON.stringify({ token: 'other', pid: process.pid, host: 'elsewhere' }));
    assert.equal(await failureType(busy.compareAndSwap(key, null, Buffer.from('x'))), ErrorType.Unavailable);

    const dead = spawnSync(process.execPath, ['-e', '0']).pid;
    writeFileSync(lockFile, JSON.stringify({ token: 'other', pid: dead, host: hostname() }));
    assert.equal(await busy.compareAndSwap(key, null, Buffer.from('x')), sha('x'));
    assert.equal(existsSync(lockFile), false);

    writeFileSync(lockFile, JSON.stringify({ token: 'other', pid: process.pid, host: 'elsewhere' }));
    const old = new Date(Date.now() - 120_000);
    utimesSync(lockFile, old, old);
    assert.equal(await busy.compareAndSwap(key, sha('x'), Buffer.from('y')), sha('y'));
    assert.equal(existsSync(lockFile), false);
  }),
);

void test(
  'compareAndSwap from several processes: no increment is lost',
  withStore(async (store, dir) => {
    const workers = 4;
    const increments = 25;
    const script = join(dir, 'incrementer.ts');
    const storeModule = resolve(__dirname, '../../activities/store');
    writeFileSync(
      script,
      `import { LocalObjectStore, sha256 } from ${JSON.stringify(storeModule)};
const store = new LocalObjectStore(process.argv[2]!, { durable: false });
(async () => {
  for (let i = 0; i < ${increments}; i++) {
    for (;;) {
      const bytes = await store.get('counter');
      const etag = bytes === undefined ? null : sha256(bytes);
      const next = Buffer.from(String(Number(bytes?.toString() ?? '0') + 1));
      try {
        await store.compareAndSwap('counter', etag, next);
        break;
      } catch (err) {
        if ((err as { type?: string }).type !== 'PointerConflict') throw err;
      }
    }
  }
})().catch((err) => { console.error(err); process.exit(1); });
`,
    );
    const codes = await Promise.all(
      Array.from(
        { length: workers },
        () =>
          new Promise<number | null>((done) => {
            const child = spawn(process.execPath, ['--import', 'tsx', script, dir], {
              stdio: ['ignore', 'ignore', 'inherit'],
            });
            child.on('exit', (code) => done(code));
          }),
      ),
    );
    assert.deepEqual(codes, Array(workers).fill(0));
    assert.equal((await store.get('counter'))?.toString(), String(workers * increments));
  }),
);

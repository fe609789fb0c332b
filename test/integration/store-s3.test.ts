/**
 * The S3 object store (activities/store-s3.ts) with real AWS SDK calls against moto's S3 on loopback
 * (started here, see test/moto.ts): every ObjectStore method, conditional writes under races between two
 * store instances, list pagination and prefix isolation, errors that must not be swallowed, the
 * registry's stage pointers over S3, and the FLEETGATE_STORE configuration.
 *
 * moto's threaded server checks a PutObject's condition and stores the object in two steps, so two truly
 * simultaneous conditional writes can both pass there (S3 itself decides them atomically). The tests that
 * need exactly one winner therefore hold one writer's PutObject until the other writer has finished, which
 * is the interleaving the conditions exist for; the free-running races assert what holds on any server.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CreateBucketCommand,
  GetObjectCommand,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { ApplicationFailure } from '@temporalio/common';
import type { ModelRunner } from '../../activities/deps';
import {
  bootstrapProduction,
  createRegistryActivities,
  pointerAt,
  pointerHistory,
  readPointer,
} from '../../activities/registry';
import { loadTrust } from '../../activities/pack';
import { OnnxModelRunner, blobKey } from '../../workers/model-runner';
import { LocalObjectStore, sha256 } from '../../activities/store';
import { S3ObjectStore } from '../../activities/store-s3';
import { ErrorType } from '../../errors';
import {
  type S3StoreConfig,
  createS3Client,
  loadConfig,
  loadStoreConfig,
  openObjectStore,
} from '../../workers/config';
import { freePort } from '../../workers/dev-server';
import { startMoto, type Moto } from '../moto';

const BUCKET = 'fleetgate-registry';
const REGION = 'eu-west-1';
const CREDENTIALS = { AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test' };

let moto: Moto;
let tmp: string;
let config: S3StoreConfig;
/** The store a worker would open from FLEETGATE_STORE=s3://fleetgate-registry/fleet/a. */
let store: S3ObjectStore;
/** A second worker's store on the same bucket and prefix, with its own client. */
let other: S3ObjectStore;
/** Plain client on the bucket, to look behind the stores. */
let raw: S3Client;
/** Every request `store` sent: command and the condition headers of writes. */
const sent: { command: string; key?: string; ifMatch?: string; ifNoneMatch?: string }[] = [];
const clients: S3Client[] = [];

before(async () => {
  moto = await startMoto();
  tmp = mkdtempSync(join(tmpdir(), 'fleetgate-s3-'));
  // Exactly what a worker would read from its environment.
  const loaded = loadConfig({
    FLEETGATE_DATA_DIR: join(tmp, 'data'),
    FLEETGATE_STORE: `s3://${BUCKET}/fleet/a`,
    FLEETGATE_S3_ENDPOINT: moto.endpoint,
    AWS_REGION: REGION,
    ...CREDENTIALS,
  });
  assert.equal(loaded.store.kind, 's3');
  config = loaded.store as S3StoreConfig;
  raw = track(createS3Client(config));
  await raw.send(
    new CreateBucketCommand({ Bucket: BUCKET, CreateBucketConfiguration: { LocationConstraint: REGION } }),
  );
  const opened = openObjectStore(config, loaded.dataDir);
  assert.ok(opened instanceof S3ObjectStore, 'FLEETGATE_STORE=s3://... opens the S3 store');
  store = opened;
  track(store.client);
  store.client.middlewareStack.add(
    (next, context) => async (args) => {
      const input = args.input as { Key?: string; IfMatch?: string; IfNoneMatch?: string };
      sent.push({
        command: context.commandName ?? '?',
        key: input.Key,
        ifMatch: input.IfMatch,
        ifNoneMatch: input.IfNoneMatch,
      });
      return next(args);
    },
    { step: 'initialize', name: 'recordRequests' },
  );
  other = openObjectStore(config, loaded.dataDir) as S3ObjectStore;
  track(other.client);
});

after(async () => {
  for (const c of clients) c.destroy();
  await moto?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

function track(client: S3Client): S3Client {
  clients.push(client);
  return client;
}

/** A store on the same moto server with its own client, prefix and options. */
function storeAt(prefix: string, options: { pageSize?: number } = {}): S3ObjectStore {
  return new S3ObjectStore(track(createS3Client(config)), { bucket: BUCKET, prefix, ...options });
}

async function failureOf(p: Promise<unknown>): Promise<ApplicationFailure> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof ApplicationFailure, `expected an ApplicationFailure, got ${String(err)}`);
    return err;
  }
  assert.fail('expected a failure');
}

async function rawGet(key: string): Promise<string | undefined> {
  try {
    const res = await raw.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
    return await res.Body?.transformToString();
  } catch (err) {
    if ((err as Error).name === 'NoSuchKey') return undefined;
    throw err;
  }
}

/**
 * Holds the next PutObject of `s` on `key` before it is sent; `held` resolves once it waits, and the
 * request goes on after `release()`.
 */
function holdNextPut(s: S3ObjectStore, key: string): { held: Promise<void>; release: () => void } {
  const name = `hold-${Math.random().toString(36).slice(2)}`;
  let signal!: () => void;
  let release!: () => void;
  const held = new Promise<void>((r) => (signal = r));
  const gate = new Promise<void>((r) => (release = r));
  let armed = true;
  s.client.middlewareStack.add(
    (next, context) => async (args) => {
      const input = args.input as { Key?: string };
      if (armed && context.commandName === 'PutObjectCommand' && input.Key === s.objectKey(key)) {
        armed = false;
        signal();
        await gate;
      }
      return next(args);
    },
    { step: 'initialize', name },
  );
  return {
    held,
    release: () => {
      release();
      s.client.middlewareStack.remove(name);
    },
  };
}

const bytes = (s: string) => Buffer.from(s);

test('get and etag of a missing key: undefined and null', async () => {
  assert.equal(await store.get('registry/none/1.0.0.json'), undefined);
  assert.equal(await store.etag('registry/none/1.0.0.json'), null);
});

test('putIfAbsent writes once: created, same bytes again is exists, other bytes are refused', async () => {
  const key = 'registry/m/1.0.0.json';
  assert.equal(await store.putIfAbsent(key, bytes('first')), 'created');
  assert.equal(await rawGet(`fleet/a/${key}`), 'first', 'stored under the prefix');
  assert.equal(await store.putIfAbsent(key, bytes('first')), 'exists');
  assert.equal(await other.putIfAbsent(key, bytes('first')), 'exists', 'idempotent from another instance');
  const err = await failureOf(store.putIfAbsent(key, bytes('second')));
  assert.equal(err.type, ErrorType.ImmutableConflict);
  assert.equal(err.nonRetryable, true);
  assert.equal(
    err.message,
    `${key} is write-once and already holds other bytes (sha256 ${sha256(bytes('first'))}, new ` +
      `${sha256(bytes('second'))}); write under a new key (e.g. a new version) instead`,
  );
  assert.deepEqual(err.details, [
    { key, existingEtag: sha256(bytes('first')), newEtag: sha256(bytes('second')) },
  ]);
  assert.equal((await store.get(key))?.toString(), 'first', 'the refused write changed nothing');
  assert.equal(await store.etag(key), sha256(bytes('first')), 'etag is sha256 of the bytes');
});

test('putIfAbsent on the same new key from two instances at once: both succeed, the late one is told exists', async () => {
  for (let round = 0; round < 5; round++) {
    const key = `blobs/sha256/race-${round}`;
    const results = await Promise.all([
      store.putIfAbsent(key, bytes(`blob ${round}`)),
      other.putIfAbsent(key, bytes(`blob ${round}`)),
    ]);
    assert.ok(results.includes('created'), `round ${round}: ${results.join(', ')}`);
    assert.equal((await store.get(key))?.toString(), `blob ${round}`);
  }
  // Held: the second writer's request reaches the server after the first wrote, so it is told 'exists'.
  const hold = holdNextPut(other, 'blobs/sha256/held');
  const late = other.putIfAbsent('blobs/sha256/held', bytes('same'));
  await hold.held;
  assert.equal(await store.putIfAbsent('blobs/sha256/held', bytes('same')), 'created');
  hold.release();
  assert.equal(await late, 'exists');
});

test('delete removes a key under the prefix only; an absent key is fine; keys are checked first', async () => {
  // Its own store: the registry's requests through `store` are checked below never to delete.
  const store = storeAt('fleet/a');
  const key = 'events/inference/fleet=demo/date=2025-01-01/a.parquet';
  await store.putIfAbsent(key, bytes('a'));
  await storeAt('fleet/b').putIfAbsent(key, bytes('b'));
  await store.delete(key);
  assert.equal(await store.get(key), undefined);
  assert.equal(await rawGet(`fleet/a/${key}`), undefined);
  assert.equal(await rawGet(`fleet/b/${key}`), 'b', 'a sibling prefix keeps its key');
  await store.delete(key);
  assert.equal(await store.putIfAbsent(key, bytes('again')), 'created', 'the key can be written anew');
  await store.delete(key);
  const err = await failureOf(store.delete('../a'));
  assert.equal(err.type, ErrorType.InvalidInput);
});

test('compareAndSwap: create when absent, swap on the current etag, refuse stale and absent etags', async () => {
  const key = 'pointers/hw3-eu/production.json';
  const e1 = await store.compareAndSwap(key, null, bytes('v1'));
  assert.equal(e1, sha256(bytes('v1')));
  assert.equal(await store.etag(key), e1);

  const present = await failureOf(store.compareAndSwap(key, null, bytes('v1-again')));
  assert.equal(present.type, ErrorType.PointerConflict);
  assert.equal(present.nonRetryable, true);
  assert.equal(
    present.message,
    `compare-and-swap on ${key}: expected etag (absent) but found ${e1}; re-read the key and retry with its current etag`,
  );

  const e2 = await store.compareAndSwap(key, e1, bytes('v2'));
  assert.equal(e2, sha256(bytes('v2')));
  assert.equal((await other.get(key))?.toString(), 'v2', 'another instance reads the swap');

  const stale = await failureOf(other.compareAndSwap(key, e1, bytes('v3')));
  assert.equal(stale.type, ErrorType.PointerConflict);
  assert.match(stale.message, new RegExp(`expected etag ${e1} but found ${e2};`));
  assert.deepEqual(stale.details, [{ key, expectedEtag: e1, actualEtag: e2 }]);
  assert.equal((await store.get(key))?.toString(), 'v2', 'a refused swap changes nothing');

  const absent = await failureOf(store.compareAndSwap('pointers/none/production.json', e2, bytes('x')));
  assert.equal(absent.type, ErrorType.PointerConflict);
  assert.match(absent.message, /but found \(absent\);/);
  assert.equal(await store.get('pointers/none/production.json'), undefined);

  // Same bytes written again is still a swap with a new etag equal to the old (sha256 of the bytes).
  assert.equal(await store.compareAndSwap(key, e2, bytes('v2')), e2);
});

test('every write is conditional: If-None-Match for creates, If-Match with the S3 ETag for swaps', () => {
  const puts = sent.filter((r) => r.command === 'PutObjectCommand');
  assert.ok(puts.length >= 5);
  for (const p of puts) {
    assert.ok(p.ifNoneMatch === '*' || (p.ifMatch && /^"[0-9a-f]{32}"$/.test(p.ifMatch)), JSON.stringify(p));
  }
  assert.ok(
    puts.some((p) => p.ifMatch),
    'swaps send If-Match',
  );
  assert.ok(!sent.some((r) => /Delete|Copy/.test(r.command)), 'nothing deletes or copies');
});

test('a write between the read and the write of a swap: the If-Match condition refuses it', async () => {
  const key = 'pointers/hw4-us/candidate.json';
  const e0 = await store.compareAndSwap(key, null, bytes('base'));
  // `other` has read the pointer and checked its etag; its write waits while `store` swaps.
  const hold = holdNextPut(other, key);
  const late = other.compareAndSwap(key, e0, bytes('late'));
  await hold.held;
  const won = await store.compareAndSwap(key, e0, bytes('early'));
  hold.release();
  const lost = await failureOf(late);
  assert.equal(lost.type, ErrorType.PointerConflict);
  assert.deepEqual(lost.details, [{ key, expectedEtag: e0, actualEtag: won }]);
  assert.equal((await store.get(key))?.toString(), 'early');

  // The same for create-when-absent.
  const fresh = 'pointers/hw5-eu/candidate.json';
  const hold2 = holdNextPut(store, fresh);
  const late2 = store.compareAndSwap(fresh, null, bytes('late'));
  await hold2.held;
  await other.compareAndSwap(fresh, null, bytes('early'));
  hold2.release();
  const lost2 = await failureOf(late2);
  assert.equal(lost2.type, ErrorType.PointerConflict);
  assert.match(lost2.message, /expected etag \(absent\) but found [0-9a-f]{64};/);
  assert.equal((await other.get(fresh))?.toString(), 'early');
});

test('free-running swaps from two instances: never both refused, losers get PointerConflict', async () => {
  const key = 'pointers/race/candidate.json';
  let etag = await store.compareAndSwap(key, null, bytes('start'));
  for (let round = 0; round < 10; round++) {
    const bodies = [bytes(`store ${round}`), bytes(`other ${round}`)];
    const results = await Promise.allSettled([
      store.compareAndSwap(key, etag, bodies[0]!),
      other.compareAndSwap(key, etag, bodies[1]!),
    ]);
    const winners = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
    assert.ok(winners.length >= 1, `round ${round}: no swap landed`);
    for (const r of results) {
      if (r.status === 'rejected') {
        assert.ok(r.reason instanceof ApplicationFailure && r.reason.type === ErrorType.PointerConflict);
      }
    }
    const now = (await store.get(key))!;
    assert.ok(
      winners.some((i) => bodies[i]!.equals(now)),
      `round ${round}: the object holds a winner's bytes`,
    );
    etag = sha256(now);
  }
});

test('keys are checked like LocalObjectStore checks them, before any request', async () => {
  const local = new LocalObjectStore(join(tmp, 'local-store'));
  const before = sent.length;
  for (const key of [
    '',
    '/abs',
    'a/../b',
    'a//b',
    'a/./b',
    '.tmp/x',
    'a/.locks',
    'a\\b',
    'a/\0',
    'C:x',
    'x/',
  ]) {
    const err = await failureOf(store.putIfAbsent(key, bytes('x')));
    assert.equal(err.type, ErrorType.InvalidInput, JSON.stringify(key));
    assert.equal(err.nonRetryable, true);
    let localMessage = '';
    try {
      local.pathOf(key);
    } catch (e) {
      localMessage = (e as Error).message;
    }
    assert.equal(err.message, localMessage, `same message as LocalObjectStore for ${JSON.stringify(key)}`);
    assert.equal((await failureOf(store.get(key))).type, ErrorType.InvalidInput);
    assert.equal((await failureOf(store.compareAndSwap(key, null, bytes('x')))).type, ErrorType.InvalidInput);
  }
  const long = await failureOf(store.get('k/' + 'x'.repeat(1100)));
  assert.equal(long.type, ErrorType.InvalidInput);
  assert.match(long.message, /over S3's 1024; use a shorter key or prefix/);
  assert.equal((await failureOf(store.list('a/../'))).type, ErrorType.InvalidInput);
  assert.equal(sent.length, before, 'no request was sent for an invalid key');
});

test('list pages through ListObjectsV2 and returns sorted keys under the prefix, without it', async () => {
  const paged = storeAt('fleet/list', { pageSize: 7 });
  let pages = 0;
  paged.client.middlewareStack.add(
    (next, context) => async (args) => {
      if (context.commandName === 'ListObjectsV2Command') pages++;
      return next(args);
    },
    { step: 'initialize', name: 'countPages' },
  );
  const keys: string[] = [];
  for (let i = 0; i < 25; i++) keys.push(`index/sha256/d${(i * 7) % 25}/m/1.${i}.0.json`);
  keys.push('registry/m/1.0.0.json', 'registry/m2/1.0.0.json', 'pointers/c/production.json');
  // Written in a shuffled order; listed sorted.
  for (const k of [...keys].reverse()) assert.equal(await paged.putIfAbsent(k, bytes(k)), 'created');
  const all = await paged.list('');
  assert.deepEqual(all, [...keys].sort());
  assert.ok(pages >= 4, `28 keys in pages of 7 need 4 or 5 requests (${pages})`);
  assert.deepEqual(await paged.list('registry/'), ['registry/m/1.0.0.json', 'registry/m2/1.0.0.json']);
  assert.deepEqual(await paged.list('registry/m/'), ['registry/m/1.0.0.json'], 'a "/" ends the prefix');
  assert.deepEqual(await paged.list('registry/m'), ['registry/m/1.0.0.json', 'registry/m2/1.0.0.json']);
  assert.deepEqual(await paged.list('nothing/'), []);

  // Objects other tools left that no store key can name: a folder marker and a "."-name.
  await raw.send(
    new PutObjectCommand({ Bucket: BUCKET, Key: 'fleet/list/registry/', Body: '', ContentLength: 0 }),
  );
  await raw.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'fleet/list/registry/.DS_Store', Body: 'x' }));
  assert.deepEqual(await paged.list('registry/'), ['registry/m/1.0.0.json', 'registry/m2/1.0.0.json']);

  // LocalObjectStore lists the same keys the same way.
  const local = new LocalObjectStore(join(tmp, 'list-local'), { durable: false });
  for (const k of keys) await local.putIfAbsent(k, bytes(k));
  for (const prefix of ['', 'registry/', 'registry/m', 'index/sha256/d1', 'pointers/c/']) {
    assert.deepEqual(await paged.list(prefix), await local.list(prefix), `list(${JSON.stringify(prefix)})`);
  }
});

test('prefix isolation: stores on sibling prefixes of one bucket never see each other', async () => {
  const a = storeAt('iso/a');
  const ab = storeAt('iso/ab/');
  const root = storeAt('');
  assert.equal(a.prefix, 'iso/a/');
  assert.equal(ab.prefix, 'iso/ab/', 'a trailing "/" is the same prefix');
  await a.putIfAbsent('k', bytes('in a'));
  await ab.putIfAbsent('k', bytes('in ab'));
  await ab.putIfAbsent('only-ab', bytes('x'));
  assert.deepEqual(await a.list(''), ['k']);
  assert.deepEqual(await ab.list(''), ['k', 'only-ab']);
  assert.equal((await a.get('k'))?.toString(), 'in a');
  assert.equal(await a.get('only-ab'), undefined);
  const e = await a.compareAndSwap('p', null, bytes('a'));
  assert.equal(await ab.etag('p'), null);
  await ab.compareAndSwap('p', null, bytes('ab'));
  assert.equal(await a.etag('p'), e, "ab's pointer is not a's");
  assert.deepEqual(await root.list('iso/'), ['iso/a/k', 'iso/a/p', 'iso/ab/k', 'iso/ab/only-ab', 'iso/ab/p']);
  assert.throws(
    () => storeAt('iso/../x'),
    (err: unknown) => (err as ApplicationFailure).type === 'InvalidInput',
  );
});

test('failures are never answers: no bucket, refused connections, 5xx and 403 are Unavailable', async () => {
  const missing = new S3ObjectStore(track(createS3Client(config)), { bucket: 'no-such-bucket-here' });
  const noBucket = await failureOf(missing.get('x'));
  assert.equal(noBucket.type, ErrorType.Unavailable);
  assert.equal(noBucket.nonRetryable, false);
  assert.match(
    noBucket.message,
    /^object store s3:\/\/no-such-bucket-here\/: could not read x: NoSuchBucket 404: /,
  );
  assert.match(noBucket.message, /create bucket no-such-bucket-here or fix FLEETGATE_STORE$/);
  assert.equal((await failureOf(missing.list(''))).type, ErrorType.Unavailable);
  assert.equal((await failureOf(missing.putIfAbsent('x', bytes('x')))).type, ErrorType.Unavailable);

  const quick: S3ClientConfig = { maxAttempts: 1 };
  const closed = `http://127.0.0.1:${await freePort()}`;
  const down = new S3ObjectStore(track(new S3Client({ ...clientConfig(closed), ...quick })), {
    bucket: BUCKET,
  });
  const refused = await failureOf(down.get('x'));
  assert.equal(refused.type, ErrorType.Unavailable);
  assert.equal(refused.nonRetryable, false);
  assert.match(refused.message, /could not read x: .*ECONNREFUSED.* \(transient; retried\)$/);
  assert.ok(refused.cause, 'the SDK error is kept as the cause');
  assert.equal((await failureOf(down.compareAndSwap('p', null, bytes('x')))).type, ErrorType.Unavailable);

  // A loopback server that throttles one bucket and denies another.
  const server = await listen((bucket) =>
    bucket === 'slow-bucket'
      ? { status: 503, code: 'SlowDown', message: 'Please reduce your request rate.' }
      : { status: 403, code: 'AccessDenied', message: 'Access Denied' },
  );
  try {
    const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    const client = track(new S3Client({ ...clientConfig(url), ...quick }));
    const slow = new S3ObjectStore(client, { bucket: 'slow-bucket' });
    const calls = [
      () => slow.get('k'),
      () => slow.putIfAbsent('k', bytes('x')),
      () => slow.compareAndSwap('k', null, bytes('x')),
      () => slow.list(''),
    ];
    for (const call of calls) {
      const err = await failureOf(call());
      assert.equal(err.type, ErrorType.Unavailable);
      assert.equal(err.nonRetryable, false);
      assert.match(err.message, /SlowDown 503: Please reduce your request rate\. \(transient; retried\)$/);
    }
    const denied = new S3ObjectStore(client, { bucket: 'denied-bucket', prefix: 'p' });
    const err = await failureOf(denied.get('k'));
    assert.equal(err.type, ErrorType.Unavailable);
    assert.match(
      err.message,
      /^object store s3:\/\/denied-bucket\/p\/: could not read k: AccessDenied 403: Access Denied;/,
    );
    assert.match(err.message, /without s3:ListBucket S3 answers 403 for a missing key/);
  } finally {
    await new Promise<void>((r) => server.close(() => r()));
  }
});

test('a swap whose answer was lost and that the SDK sent again is recognised as landed', async () => {
  // A one-object S3 on loopback that drops the connection after storing the first PutObject, as a
  // network failure after the write would; the SDK sends it again and is refused with 412.
  let stored = { body: Buffer.from('v1'), etag: '"etag-1"' };
  let puts = 0;
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method === 'GET') {
        res.writeHead(200, { etag: stored.etag, 'content-length': stored.body.length });
        res.end(stored.body);
        return;
      }
      puts++;
      if (req.headers['if-match'] !== stored.etag) {
        res.writeHead(412, { 'content-type': 'application/xml' });
        res.end(
          '<Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>',
        );
        return;
      }
      stored = { body: Buffer.concat(chunks), etag: `"etag-${puts + 1}"` };
      req.socket.destroy();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  try {
    const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    const flaky = new S3ObjectStore(track(new S3Client({ ...clientConfig(url), maxAttempts: 3 })), {
      bucket: 'one-object',
    });
    const body = bytes('v2');
    assert.equal(await flaky.compareAndSwap('k', sha256(bytes('v1')), body), sha256(body));
    assert.equal(puts, 2, 'the SDK sent the write twice');
    assert.equal(stored.body.toString(), 'v2');
  } finally {
    await new Promise<void>((r) => server.close(() => r()));
  }
});

function clientConfig(endpoint: string): S3ClientConfig {
  return {
    endpoint,
    region: REGION,
    forcePathStyle: true,
    credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
  };
}

/** An HTTP server on loopback answering every request with an S3 error chosen by bucket. */
async function listen(
  answer: (bucket: string) => { status: number; code: string; message: string },
): Promise<Server> {
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const bucket = (req.url ?? '/').split(/[/?]/)[1] ?? '';
      const { status, code, message } = answer(bucket);
      res.writeHead(status, { 'content-type': 'application/xml' });
      res.end(
        `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${message}</Message>` +
          '<RequestId>test</RequestId></Error>',
      );
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return server;
}

test('loadStoreConfig: local by default, s3 URLs with prefix, endpoint, region and credentials', () => {
  assert.deepEqual(loadStoreConfig({}), { kind: 'local' });
  assert.deepEqual(loadStoreConfig({ FLEETGATE_STORE: '' }), { kind: 'local' });
  assert.deepEqual(loadStoreConfig({ FLEETGATE_STORE: 'local', FLEETGATE_S3_ENDPOINT: 'ignored' }), {
    kind: 'local',
  });
  assert.deepEqual(loadStoreConfig({ FLEETGATE_STORE: 's3://my-bucket' }), {
    kind: 's3',
    bucket: 'my-bucket',
    prefix: '',
    region: undefined,
    credentials: undefined,
    forcePathStyle: false,
  });
  assert.deepEqual(
    loadStoreConfig({
      FLEETGATE_STORE: 's3://fleet.registry-01/prod/eu/',
      FLEETGATE_S3_ENDPOINT: 'http://127.0.0.1:9000',
      FLEETGATE_AWS_ENDPOINT: 'http://127.0.0.1:5000',
      AWS_DEFAULT_REGION: 'us-east-2',
      AWS_ACCESS_KEY_ID: 'AKID',
      AWS_SECRET_ACCESS_KEY: 'secret',
      AWS_SESSION_TOKEN: 'token',
    }),
    {
      kind: 's3',
      bucket: 'fleet.registry-01',
      prefix: 'prod/eu',
      endpoint: 'http://127.0.0.1:9000',
      region: 'us-east-2',
      credentials: { accessKeyId: 'AKID', secretAccessKey: 'secret', sessionToken: 'token' },
      forcePathStyle: true,
    },
  );
  const fallback = loadStoreConfig({
    FLEETGATE_STORE: 's3://abc',
    FLEETGATE_AWS_ENDPOINT: 'https://s3.internal.example:8443',
    AWS_REGION: 'eu-west-1',
    AWS_DEFAULT_REGION: 'us-east-2',
  });
  assert.equal(fallback.kind === 's3' && fallback.endpoint, 'https://s3.internal.example:8443');
  assert.equal(fallback.kind === 's3' && fallback.forcePathStyle, true);
  assert.equal(fallback.kind === 's3' && fallback.region, 'eu-west-1', 'AWS_REGION wins, as for AWS IoT');
  assert.deepEqual(loadConfig({}).store, { kind: 'local' }, 'loadConfig reads the store section');

  const dataDir = join(tmp, 'factory');
  const local = openObjectStore({ kind: 'local' }, dataDir);
  assert.ok(local instanceof LocalObjectStore);
  assert.equal(local.root, join(dataDir, 'store'));
});

test('loadStoreConfig: each malformed value is refused with the variable, the value and the fix', () => {
  const forms = '"local" or "s3://BUCKET[/KEY/PREFIX]" (e.g. s3://fleetgate-registry/prod)';
  const cases: [NodeJS.ProcessEnv, string][] = [
    [{ FLEETGATE_STORE: 'Local' }, `FLEETGATE_STORE must be ${forms} (got "Local")`],
    [{ FLEETGATE_STORE: 'S3://bucket' }, `FLEETGATE_STORE must be ${forms} (got "S3://bucket")`],
    [
      { FLEETGATE_STORE: '/var/fleetgate/store' },
      `FLEETGATE_STORE must be ${forms} (got "/var/fleetgate/store")`,
    ],
    [
      { FLEETGATE_STORE: 's3://' },
      `FLEETGATE_STORE="s3://": no bucket is named; set it to ${forms} with the name of an existing bucket`,
    ],
    [
      { FLEETGATE_STORE: 's3:///prefix' },
      `FLEETGATE_STORE="s3:///prefix": no bucket is named; set it to ${forms} with the name of an existing bucket`,
    ],
    ...['My_Bucket', 'ab', 'a'.repeat(64), '-bucket', 'bucket-', 'my..bucket', 'bucket?x=1'].map(
      (b): [NodeJS.ProcessEnv, string] => [
        { FLEETGATE_STORE: `s3://${b}/p` },
        `FLEETGATE_STORE="s3://${b}/p": "${b}" is not a valid S3 bucket name (3-63 characters of lowercase ` +
          'letters, digits, "." and "-", starting and ending with a letter or digit); set it to ' +
          `${forms} with the name of an existing bucket`,
      ],
    ),
    [
      { FLEETGATE_STORE: 's3://10.0.0.1' },
      'FLEETGATE_STORE="s3://10.0.0.1": "10.0.0.1" is an IP address, not an S3 bucket name (3-63 characters of ' +
        'lowercase letters, digits, "." and "-", starting and ending with a letter or digit); set it to ' +
        `${forms} with the name of an existing bucket`,
    ],
    [
      { FLEETGATE_STORE: 's3://bucket/a//b' },
      'FLEETGATE_STORE="s3://bucket/a//b": key prefix "a//b" has an empty segment ("//"); use plain names ' +
        'separated by single "/", none starting with "." or holding "\\"',
    ],
    [
      { FLEETGATE_STORE: 's3://bucket/a/../b' },
      'FLEETGATE_STORE="s3://bucket/a/../b": key prefix "a/../b" has the segment ".."; use plain names ' +
        'separated by single "/", none starting with "." or holding "\\"',
    ],
    [
      { FLEETGATE_STORE: 's3://bucket/.hidden' },
      'FLEETGATE_STORE="s3://bucket/.hidden": key prefix ".hidden" has the segment ".hidden"; use plain names ' +
        'separated by single "/", none starting with "." or holding "\\"',
    ],
    [
      { FLEETGATE_STORE: 's3://bucket//' },
      'FLEETGATE_STORE="s3://bucket//": key prefix "/" has an empty segment ("//"); use plain names ' +
        'separated by single "/", none starting with "." or holding "\\"',
    ],
    [
      { FLEETGATE_STORE: 's3://bucket', FLEETGATE_S3_ENDPOINT: 'localhost:9000' },
      'FLEETGATE_S3_ENDPOINT must be the http:// or https:// URL of an S3-compatible server, e.g. ' +
        'http://127.0.0.1:9000 (got "localhost:9000"); unset it to use AWS',
    ],
    [
      { FLEETGATE_STORE: 's3://bucket', FLEETGATE_S3_ENDPOINT: 'ftp://127.0.0.1' },
      'FLEETGATE_S3_ENDPOINT must be the http:// or https:// URL of an S3-compatible server, e.g. ' +
        'http://127.0.0.1:9000 (got "ftp://127.0.0.1"); unset it to use AWS',
    ],
    [
      { FLEETGATE_STORE: 's3://bucket', FLEETGATE_AWS_ENDPOINT: '127.0.0.1:5000' },
      'FLEETGATE_AWS_ENDPOINT must be the http:// or https:// URL of an S3-compatible server, e.g. ' +
        'http://127.0.0.1:9000 (got "127.0.0.1:5000"); unset it to use AWS',
    ],
  ];
  for (const [env, message] of cases) {
    assert.throws(() => loadStoreConfig(env), { message }, JSON.stringify(env));
  }
  assert.throws(() => loadConfig({ FLEETGATE_STORE: 'gs://bucket' }), /FLEETGATE_STORE must be/);
});

// --- The registry's stage pointers over S3 -------------------------------------------------------------

const digest = (name: string) => createHash('sha256').update(name).digest('hex');
const PROD = digest('production');
const GOOD = digest('better');
const BAD = digest('regress');

/** A runner the pointer activities never call. */
const noRunner: ModelRunner = {
  run: () => Promise.reject(new Error('not used')),
  contract: () => Promise.reject(new Error('not used')),
  modelBytes: () => Promise.reject(new Error('not used')),
  close: () => Promise.resolve(),
};

/**
 * Registry activities over `s`. Only the pointer functions are used, which need no pack: the registry's
 * own records and index entries are written here as registerCandidate writes them.
 */
function registryOver(s: S3ObjectStore) {
  const deps = { store: s, runner: noRunner, root: tmp, trust: new Map() };
  return createRegistryActivities(deps);
}

async function registerRecord(s: S3ObjectStore, d: string, name: string, version: string): Promise<string> {
  const recordKey = `registry/${name}/${version}.json`;
  await s.putIfAbsent(recordKey, Buffer.from(JSON.stringify({ name, version, digest: d })));
  await s.putIfAbsent(
    `index/sha256/${d}/${name}/${version}.json`,
    Buffer.from(JSON.stringify({ recordKey })),
  );
  return recordKey;
}

test('registry over S3: movePointer by compare-and-swap, history, pointerAt and production lookup', async () => {
  const s = storeAt('registry-run');
  const acts = registryOver(s);
  const prodKey = await registerRecord(s, PROD, 'hazard', '1.0.0');
  await registerRecord(s, GOOD, 'hazard', '1.1.0');
  await registerRecord(s, BAD, 'hazard', '1.2.0');
  const cohort = 'hw3/eu';
  const move = { cohort, stage: 'production' as const, rolloutId: 'r1', reason: 'test' };

  assert.deepEqual(await readPointer(s, cohort, 'production'), { pointer: null, etag: null });
  assert.deepEqual(await acts.movePointer({ ...move, digest: PROD, expected: null, reason: 'bootstrap' }), {
    moved: true,
    previous: null,
  });
  const first = await readPointer(s, cohort, 'production');
  assert.equal(first.pointer?.digest, PROD);
  assert.equal(first.pointer?.recordKey, prodKey);
  assert.equal(first.etag, await s.etag(`pointers/${cohort}/production.json`), 'etag is sha256 of the bytes');
  const t1 = new Date();
  await new Promise((r) => setTimeout(r, 20));

  assert.deepEqual(await acts.movePointer({ ...move, digest: GOOD, expected: PROD }), {
    moved: true,
    previous: PROD,
  });
  assert.deepEqual(await acts.movePointer({ ...move, digest: GOOD, expected: PROD }), {
    moved: false,
    previous: PROD,
  });
  const conflict = await failureOf(acts.movePointer({ ...move, digest: BAD, expected: PROD }));
  assert.equal(conflict.type, ErrorType.PointerConflict);
  assert.match(conflict.message, /production pointer of cohort hw3\/eu holds [0-9a-f]{64}, not the expected/);

  const history = await pointerHistory(s, cohort, 'production');
  assert.deepEqual(
    history.map((e) => [e.seq, e.from, e.to, e.reason]),
    [
      [1, null, PROD, 'bootstrap'],
      [2, PROD, GOOD, 'test'],
    ],
  );
  assert.equal(await pointerAt(s, cohort, 'production', t1), PROD);
  assert.equal(await pointerAt(s, cohort, 'production', new Date()), GOOD);
  assert.equal(await pointerAt(s, cohort, 'production', new Date(0)), null);

  const { byCohort } = await acts.lookupProduction({ cohorts: [cohort] });
  assert.deepEqual(byCohort[cohort], { name: 'hazard', version: '1.1.0', digest: GOOD });
  assert.equal((await failureOf(acts.lookupProduction({ cohorts: ['hw9/none'] }))).type, ErrorType.NotFound);
});

test('registry over S3: two workers move one pointer from the same value, one wins, history has one entry', async () => {
  const a = storeAt('registry-race');
  const b = storeAt('registry-race');
  await registerRecord(a, PROD, 'hazard', '1.0.0');
  await registerRecord(a, GOOD, 'hazard', '1.1.0');
  await registerRecord(a, BAD, 'hazard', '1.2.0');
  const cohort = 'hw4/us';
  const move = { cohort, stage: 'candidate' as const, expected: PROD, reason: 'race' };
  await registryOver(a).movePointer({ ...move, digest: PROD, expected: null, rolloutId: 'seed' });

  // b has read the pointer; its swap reaches S3 only after a's whole move.
  const hold = holdNextPut(b, `pointers/${cohort}/candidate.json`);
  const late = registryOver(b).movePointer({ ...move, digest: BAD, rolloutId: 'rb' });
  await hold.held;
  assert.deepEqual(await registryOver(a).movePointer({ ...move, digest: GOOD, rolloutId: 'ra' }), {
    moved: true,
    previous: PROD,
  });
  hold.release();
  const lost = await failureOf(late);
  assert.equal(lost.type, ErrorType.PointerConflict);
  assert.match(lost.message, /last moved by ra: race/);
  assert.equal((await readPointer(b, cohort, 'candidate')).pointer?.digest, GOOD);
  assert.deepEqual(
    (await pointerHistory(b, cohort, 'candidate')).map((e) => [e.seq, e.to, e.rolloutId]),
    [
      [1, PROD, 'seed'],
      [2, GOOD, 'ra'],
    ],
  );
});

test('registry over S3: signed packs register with their blobs, the history answers "production at T", tampering is refused', async () => {
  const s = storeAt('registry-packs');
  const root = join(__dirname, '..', '..');
  const runner = new OnnxModelRunner((d) => s.get(blobKey(d)));
  const trust = await loadTrust([join(root, 'models', 'keys', 'fixture-signer.pub')]);
  const deps = { store: s, runner, root, trust };
  try {
    const acts = createRegistryActivities(deps);
    const cohort = 'hw3/eu';
    const prod = await bootstrapProduction(deps, 'models/production', [cohort], 'seed');
    const good = await acts.registerCandidate({
      rolloutId: 'r1',
      packDir: 'models/candidate-good',
      cohorts: [cohort],
    });
    assert.deepEqual(
      await acts.registerCandidate({ rolloutId: 'r1', packDir: 'models/candidate-good' }),
      good,
    );
    for (const d of Object.values(good.files!)) assert.equal(sha256((await s.get(blobKey(d)))!), d);
    assert.equal(good.release, 2);
    const beforePromotion = new Date();
    await new Promise((r) => setTimeout(r, 5));
    await acts.movePointer({
      cohort,
      stage: 'production',
      digest: good.digest,
      expected: prod.digest,
      rolloutId: 'r1',
      reason: 'promoted',
    });
    assert.equal(await pointerAt(s, cohort, 'production', beforePromotion), prod.digest);
    assert.equal(await pointerAt(s, cohort, 'production', new Date()), good.digest);
    // Production is now release 2: candidate-good again as a candidate is its own production (allowed),
    // while production's pack (release 1) would be a rollback.
    const rollback = await failureOf(
      acts.registerCandidate({ rolloutId: 'r2', packDir: 'models/production', cohorts: [cohort] }),
    );
    assert.equal(rollback.type, ErrorType.ReleaseRollback);
    // Registered versions are write-once on S3 too (If-None-Match).
    const conflict = await failureOf(s.putIfAbsent(good.recordKey, Buffer.from('{}')));
    assert.equal(conflict.type, ErrorType.ImmutableConflict);
  } finally {
    await runner.close();
  }
});

/**
 * One data store per task queue (workers/ownership.ts): the data directory's identity file (created
 * once by one of several racing processes, stable, mode 0600, covering an S3 store's location), the
 * store id carried in a worker's identity, and the pure decision over a task queue's pollers, table style.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { S3Client } from '@aws-sdk/client-s3';
import { LocalObjectStore } from '../../activities/store';
import { S3ObjectStore } from '../../activities/store-s3';
import { allowSharedQueue } from '../../workers/config';
import {
  dataDirId,
  decideOwnership,
  storeId,
  storeIdPath,
  storeOfIdentity,
  taskQueueOwnership,
  TaskQueueOwnerError,
  workerIdentity,
  type Poller,
} from '../../workers/ownership';
import type { NativeConnection } from '@temporalio/worker';

function withDir(fn: (dir: string) => void | Promise<void>) {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fleetgate-owner-'));
    try {
      await fn(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

const ROOT = join(__dirname, '..', '..');

void test(
  "a data directory's identity is created once, is stable and is readable by its owner only",
  withDir((dir) => {
    const first = dataDirId(dir);
    assert.match(first, /^[0-9a-f]{32}$/);
    assert.equal(statSync(storeIdPath(dir)).mode & 0o777, 0o600);
    assert.equal(dataDirId(dir), first);
    assert.equal(readFileSync(storeIdPath(dir), 'utf8').trim(), first);
    const local = new LocalObjectStore(join(dir, 'store'));
    assert.match(storeId(dir, local), /^[0-9a-f]{12}$/);
    assert.equal(storeId(dir, local), storeId(dir, local));
  }),
);

void test(
  'processes starting at once on one data directory agree on one identity',
  withDir(async (dir) => {
    const script = `const { dataDirId } = require(${JSON.stringify(join(ROOT, 'workers', 'ownership.ts'))});
process.stdout.write(dataDirId(process.argv[1]));`;
    const ids = await Promise.all(
      Array.from(
        { length: 4 },
        () =>
          new Promise<string>((done, fail) => {
            const child = spawn(process.execPath, ['--import', 'tsx', '-e', script, dir], {
              stdio: ['ignore', 'pipe', 'inherit'],
            });
            let out = '';
            child.stdout.on('data', (d: Buffer) => (out += d.toString()));
            child.on('exit', (code) => (code === 0 ? done(out) : fail(new Error(`exit ${code}`))));
          }),
      ),
    );
    assert.equal(new Set(ids).size, 1, ids.join(' '));
    assert.equal(ids[0], dataDirId(dir));
  }),
);

void test(
  'two data directories, or one directory with another registry store, are different stores',
  withDir((dir) => {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    const local = new LocalObjectStore(join(a, 'store'));
    assert.notEqual(storeId(a, local), storeId(b, local));
    const s3 = new S3ObjectStore(new S3Client({ region: 'us-east-1' }), {
      bucket: 'fleet-a',
      prefix: 'prod',
    });
    const s3Other = new S3ObjectStore(new S3Client({ region: 'us-east-1' }), {
      bucket: 'fleet-a',
      prefix: 'test',
    });
    assert.notEqual(storeId(a, s3), storeId(a, local));
    assert.notEqual(storeId(a, s3), storeId(a, s3Other));
    assert.equal(storeId(a, s3), storeId(a, s3));
  }),
);

void test(
  'a malformed identity file is an error naming the file and the fix',
  withDir((dir) => {
    writeFileSync(storeIdPath(dir), 'not-an-id\n');
    assert.throws(() => dataDirId(dir), /store-id does not hold 32 lowercase hex digits.*delete it/);
  }),
);

void test("a worker's identity names its store, and only a well-formed store id is read back", () => {
  const identity = workerIdentity('0123456789ab', 4711, 'host-a');
  assert.equal(identity, 'fleetgate/4711@host-a store=0123456789ab');
  assert.equal(storeOfIdentity(identity), '0123456789ab');
  for (const other of ['4711@host-a', 'fleetgate/1@h store=0123', 'x restore=0123456789ab', ''])
    assert.equal(storeOfIdentity(other), undefined, other);
});

void test('FLEETGATE_SHARED_QUEUE is "1" or "0"; anything else names the variable', () => {
  assert.equal(allowSharedQueue({}), false);
  assert.equal(allowSharedQueue({ FLEETGATE_SHARED_QUEUE: '0' }), false);
  assert.equal(allowSharedQueue({ FLEETGATE_SHARED_QUEUE: '1' }), true);
  assert.throws(
    () => allowSharedQueue({ FLEETGATE_SHARED_QUEUE: 'yes' }),
    /FLEETGATE_SHARED_QUEUE must be "1".*\(got "yes"\)/,
  );
});

const NOW = Date.parse('2025-03-01T12:00:00Z');
const OWN = 'aaaaaaaaaaaa';
const OTHER = workerIdentity('bbbbbbbbbbbb', 42, 'host-b');
const SELF = workerIdentity(OWN, 7, 'host-a');
const ago = (s: number) => NOW - s * 1000;
const both = (identity: string, lastAccessMs?: number): Poller[] => [
  { identity, kind: 'workflow', ...(lastAccessMs !== undefined ? { lastAccessMs } : {}) },
  { identity, kind: 'activity', ...(lastAccessMs !== undefined ? { lastAccessMs } : {}) },
];

const CASES: {
  name: string;
  pollers: Poller[];
  ok: boolean;
  /** Every one must be in the message (refused) or in the notes (allowed). */
  says?: RegExp[];
  notes?: number;
}[] = [
  { name: 'nobody polls the queue', pollers: [], ok: true, notes: 0 },
  {
    name: 'only this store polls (itself, or its own earlier run)',
    pollers: both(SELF, ago(3)),
    ok: true,
    notes: 0,
  },
  {
    name: 'another store polled 12 s ago',
    pollers: [...both(SELF, ago(1)), ...both(OTHER, ago(12))],
    ok: false,
    says: [
      /^task queue "q" is served by fleetgate\/42@host-b store=bbbbbbbbbbbb \(workflows and activities, last seen 12 s ago\)/,
      /this worker's \(store=aaaaaaaaaaaa\)/,
      /Stop that worker, or point this one at the same data directory and FLEETGATE_STORE/,
      /start this one again in 108 s/,
      /FLEETGATE_SHARED_QUEUE=1 skips this check/,
    ],
  },
  {
    name: 'another store polls workflows only',
    pollers: [{ identity: OTHER, kind: 'workflow', lastAccessMs: ago(30) }],
    ok: false,
    says: [/\(workflows, last seen 30 s ago\)/, /again in 90 s/],
  },
  {
    name: 'another store whose last poll the server does not date',
    pollers: [{ identity: OTHER, kind: 'activity' }],
    ok: false,
    says: [/\(activities, last seen at an unknown time\)/, /again in 120 s/],
  },
  {
    name: 'two other stores: both named, the longer wait given',
    pollers: [
      ...both(OTHER, ago(100)),
      { identity: workerIdentity('cccccccccccc', 9, 'host-c'), kind: 'activity', lastAccessMs: ago(5) },
    ],
    ok: false,
    says: [/store=bbbbbbbbbbbb .*store=cccccccccccc/, /Stop those workers/, /again in 115 s/],
  },
  {
    name: 'another store last seen over 2 minutes ago has stopped',
    pollers: both(OTHER, ago(121)),
    ok: true,
    notes: 0,
  },
  {
    name: 'a workflow poller naming no store (no activities: no store touched)',
    pollers: [{ identity: '99@host-z', kind: 'workflow', lastAccessMs: ago(2) }],
    ok: true,
    notes: 0,
  },
  {
    name: 'an activity poller naming no store is a note, not a refusal',
    pollers: both('99@host-z', ago(2)),
    ok: true,
    notes: 1,
    says: [/polled for activities by 99@host-z \(last seen 2 s ago\), which does not name its data store/],
  },
  {
    name: 'an activity poller naming no store, stopped',
    pollers: both('99@host-z', ago(300)),
    ok: true,
    notes: 0,
  },
];

for (const c of CASES) {
  void test(`ownership: ${c.name}`, () => {
    const d = decideOwnership({ taskQueue: 'q', own: OWN, pollers: c.pollers, nowMs: NOW });
    assert.equal(d.ok, c.ok, JSON.stringify(d));
    if (!d.ok) {
      assert.doesNotMatch(d.message, /\n/);
      for (const re of c.says ?? []) assert.match(d.message, re);
    } else {
      if (c.notes !== undefined) assert.equal(d.notes.length, c.notes, JSON.stringify(d.notes));
      for (const re of c.says ?? [])
        assert.ok(
          d.notes.some((n) => re.test(n.text)),
          `${re} in ${JSON.stringify(d.notes)}`,
        );
    }
  });
}

void test(
  'a server that refuses to list the pollers refuses the worker (naming the queue and the way out); one without the list is noted',
  withDir(async (dir) => {
    // A fake connection: only its describeTaskQueue is used, and it fails as a server denying it would.
    const connection = {
      workflowService: {
        describeTaskQueue: () => Promise.reject(new Error('7 PERMISSION_DENIED: Request unauthorized.')),
      },
    } as unknown as NativeConnection;
    const plugin = taskQueueOwnership({ dataDir: dir, store: new LocalObjectStore(join(dir, 'store')) });
    await assert.rejects(
      Promise.resolve(plugin.configureWorker!({ connection, taskQueue: 'q' })),
      (err: Error) => {
        assert.ok(err instanceof TaskQueueOwnerError);
        assert.equal(
          err.message,
          'refusing to start: could not ask the server who polls task queue "q" (7 PERMISSION_DENIED: ' +
            "Request unauthorized.); let this worker's credentials describe task queues, or set " +
            'FLEETGATE_SHARED_QUEUE=1 to start without the check that one data store serves it',
        );
        return true;
      },
    );
    const notes: string[] = [];
    // The time-skipping test server has no DescribeTaskQueue: nothing to check, a note says so.
    const unimplemented = Object.assign(new Error('12 UNIMPLEMENTED: Method ... is unimplemented'), {
      code: 12,
    });
    const testServer = {
      workflowService: { describeTaskQueue: () => Promise.reject(unimplemented) },
    } as unknown as NativeConnection;
    const unlisted = await taskQueueOwnership(
      { dataDir: dir, store: new LocalObjectStore(join(dir, 'store')) },
      { log: (l) => notes.push(l) },
    ).configureWorker!({ connection: testServer, taskQueue: 'q' });
    assert.match(unlisted.identity!, / store=[0-9a-f]{12}$/);
    assert.deepEqual(notes, [
      `fleetgate: note: the server does not list task queue "q"'s pollers; the check that one data store serves it is skipped`,
    ]);
    notes.length = 0;
    const allowed = taskQueueOwnership(
      { dataDir: dir, store: new LocalObjectStore(join(dir, 'store')) },
      { env: { FLEETGATE_SHARED_QUEUE: '1' }, log: (l) => notes.push(l) },
    );
    const opts = await allowed.configureWorker!({ connection, taskQueue: 'q' });
    assert.match(opts.identity!, / store=[0-9a-f]{12}$/);
    assert.equal(notes.length, 1);
  }),
);

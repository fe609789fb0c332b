/**
 * The gateway's state on disk: routes.json written atomically and read back (a damaged file is named,
 * never silently replaced), and the event log's segments, whose seq continues across reopenings and
 * survives a torn last line; plus the configuration's errors, which name field, value and fix.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { CohortRoute } from '../../serve/api';
import { loadGatewayConfig, parseGatewayConfig } from '../../serve/config';
import { EventLog } from '../../serve/event-log';
import { RoutesStore } from '../../serve/routes-store';

const dirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), 'fleetgate-serve-'));
  dirs.push(d);
  return d;
};
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

const route = (weight: number, generation: number): CohortRoute => ({
  production: { digest: 'a'.repeat(64) },
  candidate: { digest: 'b'.repeat(64), threshold: 0.4 },
  weight,
  mirror: 0.5,
  salt: 'r1:canary',
  generation,
});

describe('RoutesStore', () => {
  it('has nothing before the first save, then reads back what was saved', async () => {
    const dir = tmp();
    const s = new RoutesStore(dir);
    assert.equal(s.load(), undefined);
    await s.save(new Map([['web', route(30, 1)]]));
    assert.deepEqual(new RoutesStore(dir).load(), new Map([['web', route(30, 1)]]));
  });

  it('replaces the file by rename: no temporary file is left and concurrent saves end with the last', async () => {
    const dir = tmp();
    const s = new RoutesStore(dir);
    await Promise.all([1, 2, 3, 4, 5].map((g) => s.save(new Map([['web', route(g * 10, g)]]))));
    assert.deepEqual(readdirSync(dir), ['routes.json']);
    assert.equal(s.load()!.get('web')!.generation, 5);
  });

  it('names a damaged file and says how to recover, rather than starting over', () => {
    const dir = tmp();
    writeFileSync(join(dir, 'routes.json'), '{"apiVersion":"fleetgate/v1"');
    assert.throws(() => new RoutesStore(dir).load(), /routes\.json is not JSON.*remove it/s);
    writeFileSync(
      join(dir, 'routes.json'),
      JSON.stringify({
        apiVersion: 'fleetgate/v1',
        kind: 'GatewayRoutes',
        routes: { web: { ...route(30, 1), weight: 300 } },
      }),
    );
    assert.throws(() => new RoutesStore(dir).load(), /routes\.web\.weight: .*got 300/);
  });

  it('leaves out names a plain object inherits and damaged routes of cohorts not served, telling why', () => {
    const dir = tmp();
    const broken = { weight: 0, mirror: 0, generation: null };
    writeFileSync(
      join(dir, 'routes.json'),
      '{"apiVersion":"fleetgate/v1","kind":"GatewayRoutes","routes":{' +
        `"web":${JSON.stringify(route(30, 1))},"__proto__":${JSON.stringify(route(1, 1))},` +
        `"hasOwnProperty":${JSON.stringify(route(1, 1))},"constructor":${JSON.stringify(broken)}}}`,
    );
    const dropped: string[] = [];
    const loaded = new RoutesStore(dir).load({
      serves: (c) => c === 'web',
      onDrop: (d) => dropped.push(`${d.cohort}: ${d.message}`),
    });
    assert.deepEqual(loaded, new Map([['web', route(30, 1)]]));
    assert.equal(dropped.length, 3);
    assert.match(
      dropped[0]!,
      /^__proto__: .*routes\.json: the route saved as "__proto__" is not a cohort name/,
    );
    assert.match(dropped[1]!, /^hasOwnProperty: .*is not a cohort name/);
    assert.match(dropped[2]!, /^constructor: .*is damaged \(3 problem\(s\)\) and its cohort is not served/);
    assert.ok(dropped.every((d) => d.includes('goes at the next route change')));
    // A damaged route of a served cohort is still named, never dropped.
    assert.throws(
      () => new RoutesStore(dir).load({ serves: () => true }),
      /routes\.constructor\.generation: .*got null/,
    );
  });
});

const event = (i: number) => ({
  requestId: `r${i}`,
  tsMs: 1_700_000_000_000 + i,
  cohort: 'web',
  caller: 'f'.repeat(20),
  arm: 'production' as const,
  digest: 'a'.repeat(64),
  latencyMs: 1,
  status: 200,
  failed: false,
});

describe('EventLog', () => {
  it('numbers events from 1, reads after a seq with a limit, and continues the seq when reopened', async () => {
    const dir = tmp();
    const log = EventLog.open(dir);
    assert.equal(log.last, 0);
    for (let i = 1; i <= 5; i++) assert.equal(log.append(event(i)).seq, i);
    assert.deepEqual(
      (await log.read(2, 2)).map((e) => e.seq),
      [3, 4],
    );
    await log.close();
    const again = EventLog.open(dir);
    assert.equal(again.last, 5);
    assert.equal(again.append(event(6)).seq, 6);
    assert.deepEqual(
      (await again.read(0, 100)).map((e) => e.requestId),
      ['r1', 'r2', 'r3', 'r4', 'r5', 'r6'],
    );
    await again.close();
  });

  it('rotates segments by size and reads across them', async () => {
    const dir = tmp();
    const log = EventLog.open(dir, { segmentBytes: 600 });
    for (let i = 1; i <= 20; i++) {
      log.append(event(i));
      await log.flush();
    }
    await log.close();
    const segments = readdirSync(join(dir, 'events'));
    assert.ok(segments.length > 2, `${segments.length} segments`);
    const again = EventLog.open(dir, { segmentBytes: 600 });
    assert.equal(again.last, 20);
    assert.deepEqual(
      (await again.read(7, 5)).map((e) => e.seq),
      [8, 9, 10, 11, 12],
    );
    assert.equal((await again.read(0, 1000)).length, 20);
    await again.close();
  });

  it('reads from any seq, through its read marks and across segments, before and after reopening', async () => {
    const dir = tmp();
    const opts = { segmentBytes: 200_000 };
    const log = EventLog.open(dir, opts);
    for (let i = 1; i <= 6000; i++) {
      log.append(event(i));
      if (i % 300 === 0) await log.flush();
    }
    const check = async (l: EventLog) => {
      for (const after of [0, 1, 299, 300, 1023, 1024, 1025, 2047, 3333, 5990, 5999]) {
        const want = Array.from({ length: Math.min(7, 6000 - after) }, (_, i) => after + 1 + i);
        assert.deepEqual(
          (await l.read(after, 7)).map((e) => e.seq),
          want,
          `after ${after}`,
        );
      }
      assert.deepEqual(await l.read(6000, 10), []);
      assert.equal((await l.read(0, 50_000)).length, 6000);
    };
    await check(log);
    await log.close();
    assert.ok(readdirSync(join(dir, 'events')).length > 3);
    const again = EventLog.open(dir, opts);
    await check(again);
    await again.close();
  });

  it('cuts a torn last line off when reopened', async () => {
    const dir = tmp();
    const log = EventLog.open(dir);
    log.append(event(1));
    log.append(event(2));
    await log.close();
    const [seg] = readdirSync(join(dir, 'events'));
    appendFileSync(join(dir, 'events', seg!), '{"seq":3,"reque');
    const again = EventLog.open(dir);
    assert.equal(again.last, 2);
    again.append(event(3));
    await again.close();
    const lines = readFileSync(join(dir, 'events', seg!), 'utf8')
      .trim()
      .split('\n');
    assert.deepEqual(
      lines.map((l) => (JSON.parse(l) as { seq: number }).seq),
      [1, 2, 3],
    );
  });

  it('flushes on its own within its flush interval', async () => {
    const dir = tmp();
    const log = EventLog.open(dir, { flushMs: 20 });
    log.append(event(1));
    for (let i = 0; i < 100 && readdirSync(join(dir, 'events')).length === 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const [seg] = readdirSync(join(dir, 'events'));
    for (let i = 0; i < 100 && readFileSync(join(dir, 'events', seg!), 'utf8') === ''; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.match(readFileSync(join(dir, 'events', seg!), 'utf8'), /"seq":1/);
    await log.close();
  });
});

describe('GatewayConfig', () => {
  const base = {
    apiVersion: 'fleetgate/v1',
    kind: 'Gateway',
    name: 'svc',
    stateDir: 'state',
    cohorts: ['web', 'app'],
  };

  it('fills the defaults and resolves stateDir against the config file', () => {
    const dir = tmp();
    const file = join(dir, 'gw.yaml');
    writeFileSync(
      file,
      'apiVersion: fleetgate/v1\nkind: Gateway\nname: svc\nstateDir: state\ncohorts: [web, app]\n',
    );
    const c = loadGatewayConfig(file);
    assert.equal(c.stateDir, join(dir, 'state'));
    assert.deepEqual(c.listen, { host: '127.0.0.1', port: 8490 });
    assert.deepEqual(c.batching, { maxBatch: 32, maxDelayMs: 0 });
    assert.equal(c.queue.maxQueued, 1024);
    assert.equal(c.shadow.maxQueued, 256);
    assert.deepEqual(c.limits, { maxBodyBytes: 1_048_576, maxRows: 256 });
    assert.equal(c.adminTokenEnv, 'FLEETGATE_GATEWAY_TOKEN');
    assert.equal(c.acceptSimTime, false);
    assert.equal(c.faultInjection, false);
  });

  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['no cohorts', { cohorts: [] }, /cohorts: .*got \[\]/],
    ['a bad cohort name', { cohorts: ['Web'] }, /cohorts\.0: a cohort name.*got "Web"/],
    ['a duplicate cohort', { cohorts: ['web', 'web'] }, /cohorts\.1: cohort "web" is listed twice/],
    ['a port out of range', { listen: { port: 70000 } }, /listen\.port: .*got 70000/],
    ['a negative batch', { batching: { maxBatch: 0 } }, /batching\.maxBatch: .*got 0/],
    ['an unknown field', { shadows: {} }, /\(root\): .*shadows/],
    [
      'a route of an unknown cohort',
      { routes: { tv: { production: { digest: 'a'.repeat(64) } } } },
      /routes\.tv: a route for a cohort not in "cohorts" \(web, app\); add it there/,
    ],
    [
      'a bad digest',
      { routes: { web: { production: { digest: 'abc' } } } },
      /routes\.web\.production\.digest: a sha256 hex digest.*got "abc"/,
    ],
    [
      'a weight without a candidate',
      { routes: { web: { production: { digest: 'a'.repeat(64) }, weight: 10 } } },
      /routes\.web\.candidate: weight or mirror above 0 needs a candidate/,
    ],
    [
      'a bad OTLP endpoint',
      { otlpEndpoint: 'localhost:4318' },
      /otlpEndpoint: an http:\/\/ or https:\/\/ URL/,
    ],
  ];
  for (const [what, patch, message] of cases) {
    it(`refuses ${what}, naming the field and value`, () => {
      assert.throws(() => parseGatewayConfig({ ...base, ...patch }, '/'), message);
    });
  }

  it('names a missing file and a bad extension', () => {
    assert.throws(() => loadGatewayConfig(join(tmp(), 'nope.yaml')), /does not exist; pass the path/);
    const file = join(tmp(), 'gw.toml');
    writeFileSync(file, '');
    assert.throws(() => loadGatewayConfig(file), /unknown extension "\.toml"/);
  });
});

/**
 * The inference gateway against hostile names and hostile pages, over real HTTP on 127.0.0.1 with real
 * onnxruntime on the production pack: a cohort named after a property every JavaScript object inherits
 * (`constructor`, `__proto__`, `toString`, `hasOwnProperty`) is an unknown cohort in the admin API and in
 * a predict, nothing of it is saved and a restart starts; a routes.json that already holds such an entry
 * (as an older gateway saved it) starts with the entry dropped and a warning; and every answer carries
 * `X-Content-Type-Options: nosniff` and the framing headers.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadTrust } from '../../activities/pack';
import { bootstrapProduction } from '../../activities/registry';
import { LocalObjectStore } from '../../activities/store';
import { PATHS, type ErrorBody, type RoutesResponse } from '../../serve/api';
import { parseGatewayConfig } from '../../serve/config';
import { startGateway, type Gateway } from '../../serve/gateway';
import { OnnxModelRunner, blobKey } from '../../workers/model-runner';
import { trustFixtureSigner, trustedKeyPaths } from '../../workers/worker';
import { ROOT } from '../support';

const TOKEN_ENV = 'FLEETGATE_TEST_GATEWAY_SEC_TOKEN';
const TOKEN = randomBytes(16).toString('hex');
/** Names every plain JavaScript object answers to. */
const INHERITED = ['constructor', '__proto__', 'toString', 'hasOwnProperty'];

let dataDir: string;
let store: LocalObjectStore;
let runner: OnnxModelRunner;
let prodDigest: string;
const key = Buffer.from('5a'.repeat(32), 'hex');
const logs: Record<string, unknown>[] = [];
const open: Gateway[] = [];

before(async () => {
  process.env[TOKEN_ENV] = TOKEN;
  dataDir = mkdtempSync(join(tmpdir(), 'fleetgate-gateway-sec-'));
  trustFixtureSigner(dataDir);
  store = new LocalObjectStore(join(dataDir, 'store'));
  runner = new OnnxModelRunner((d) => store.get(blobKey(d)));
  const deps = { store, runner, trust: await loadTrust(trustedKeyPaths(dataDir)), root: ROOT };
  prodDigest = (await bootstrapProduction(deps, 'models/production', ['web', 'app'], 'test')).digest;
});

after(async () => {
  for (const g of open) await g.close();
  await runner?.close();
  delete process.env[TOKEN_ENV];
  rmSync(dataDir, { recursive: true, force: true });
});

async function start(stateDir: string): Promise<Gateway> {
  const config = parseGatewayConfig(
    {
      apiVersion: 'fleetgate/v1',
      kind: 'Gateway',
      name: 'svc',
      listen: { port: 0 },
      stateDir,
      cohorts: ['web', 'app'],
      adminTokenEnv: TOKEN_ENV,
    },
    dataDir,
  );
  const g = await startGateway(config, { store, runner, key, log: (l) => logs.push(l as never) });
  open.push(g);
  return g;
}

async function stop(g: Gateway): Promise<void> {
  await g.close();
  open.splice(open.indexOf(g), 1);
}

async function call<T = unknown>(
  g: Gateway,
  path: string,
  init: { method?: string; body?: unknown; token?: boolean } = {},
): Promise<{ status: number; headers: Headers; body: T }> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (init.token !== false) headers.authorization = `Bearer ${TOKEN}`;
  const res = await fetch(g.url + path, {
    method: init.method ?? (init.body !== undefined ? 'POST' : 'GET'),
    headers,
    body: init.body !== undefined ? JSON.stringify(init.body) : undefined,
  });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // text (metrics)
  }
  return { status: res.status, headers: res.headers, body: body as T };
}

const routesFile = (stateDir: string) => join(dataDir, stateDir, 'routes.json');

describe('cohort names a plain object inherits', () => {
  it('are unknown cohorts to the admin API: 404 naming the cohort and the fix, nothing saved, a restart starts', async () => {
    let g = await start('state-names');
    const saved = readFileSync(routesFile('state-names'), 'utf8');
    for (const name of INHERITED) {
      for (const update of [
        { weight: 0 },
        { production: { digest: prodDigest }, salt: 'x', weight: 0, mirror: 0 },
      ]) {
        const r = await call<ErrorBody>(g, PATHS.route(name), { method: 'PUT', body: update });
        assert.equal(r.status, 404, `${name}: ${JSON.stringify(r.body)}`);
        assert.equal(r.body.error.field, 'cohort');
        assert.equal(r.body.error.value, name);
        assert.ok(
          r.body.error.message.includes(`unknown cohort ${JSON.stringify(name)}`),
          r.body.error.message,
        );
        assert.match(r.body.error.message, /serves "web", "app"/);
        assert.match(r.body.error.message, /add it to the gateway config's cohorts/);
      }
      const p = await call<ErrorBody>(g, PATHS.predict, {
        body: { caller: 'someone', cohort: name, inputs: [[0, 0, 0, 0, 0, 0, 0, 0]] },
      });
      assert.equal(p.status, 400, `${name}: ${JSON.stringify(p.body)}`);
      assert.equal(p.body.error.field, 'cohort');
    }
    assert.equal(readFileSync(routesFile('state-names'), 'utf8'), saved, 'routes.json unchanged');
    const listed = await call<RoutesResponse>(g, PATHS.routes);
    assert.deepEqual(Object.keys(listed.body.routes), ['web', 'app']);
    await stop(g);
    g = await start('state-names');
    assert.deepEqual(Object.keys(g.routes()), ['web', 'app']);
    const ok = await call(g, PATHS.predict, {
      body: { caller: 'someone', cohort: 'web', inputs: [[0, 0, 0, 0, 0, 0, 0, 0]] },
    });
    assert.equal(ok.status, 200);
  });

  it('in a routes.json an older gateway saved are dropped with a warning, and the gateway starts', async () => {
    const stateDir = 'state-saved-names';
    mkdirSync(join(dataDir, stateDir), { recursive: true });
    const good = (cohort: string) => ({
      production: { digest: prodDigest },
      weight: 0,
      mirror: 0,
      salt: `svc:${cohort}:canary`,
      generation: 3,
    });
    // What `PUT /admin/routes/constructor` with `{"weight":0}` saved before: no production, generation null.
    const broken = { weight: 0, mirror: 0, generation: null };
    writeFileSync(
      routesFile(stateDir),
      `{"apiVersion":"fleetgate/v1","kind":"GatewayRoutes","routes":{` +
        `"web":${JSON.stringify(good('web'))},"app":${JSON.stringify(good('app'))},` +
        `"constructor":${JSON.stringify(broken)},"__proto__":${JSON.stringify(good('x'))},` +
        `"toString":${JSON.stringify(broken)}}}\n`,
    );
    const from = logs.length;
    const g = await start(stateDir);
    assert.deepEqual(g.routes(), { web: good('web'), app: good('app') });
    const dropped = logs.slice(from).filter((l) => l.event === 'gateway.route-dropped');
    assert.deepEqual(dropped.map((l) => l.cohort).sort(), ['__proto__', 'constructor', 'toString']);
    for (const l of dropped) {
      assert.equal(l.level, 'warn');
      assert.match(String(l.message), /routes\.json/);
      assert.match(String(l.message), /is not served|not a cohort name/);
    }
    // The next change of a route writes the file without them.
    const r = await call(g, PATHS.route('web'), { method: 'PUT', body: { salt: 'svc:web:new' } });
    assert.equal(r.status, 200);
    const file = JSON.parse(readFileSync(routesFile(stateDir), 'utf8')) as RoutesResponse;
    assert.deepEqual(Object.keys(file.routes), ['web', 'app']);
  });
});

describe('response headers', () => {
  it('every answer of the gateway says nosniff and cannot be framed', async () => {
    const g = await start('state-headers');
    const answers = [
      await call(g, PATHS.predict, { body: { caller: 'c', inputs: [[0, 0, 0, 0, 0, 0, 0, 0]] } }),
      await call(g, PATHS.predict, { body: { caller: 'c', inputs: 'no' } }),
      await call(g, PATHS.health),
      await call(g, PATHS.ready),
      await call(g, PATHS.metrics),
      await call(g, PATHS.routes),
      await call(g, PATHS.routes, { token: false }),
      await call(g, '/nowhere'),
    ];
    assert.deepEqual(
      answers.map((a) => a.status),
      [200, 400, 200, 200, 200, 200, 401, 404],
    );
    for (const a of answers) {
      assert.equal(a.headers.get('x-content-type-options'), 'nosniff');
      assert.equal(a.headers.get('x-frame-options'), 'DENY');
      assert.equal(a.headers.get('content-security-policy'), "default-src 'none'; frame-ancestors 'none'");
    }
  });
});

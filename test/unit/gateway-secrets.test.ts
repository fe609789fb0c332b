/**
 * A service manifest cannot send a worker's secrets elsewhere: a real HTTP receiver on 127.0.0.1 stands
 * for a stranger's server, and receives no request at all when a manifest names it as its gateway
 * without the worker allowing it (FLEETGATE_GATEWAY_ALLOW), or names another secret of the worker's
 * environment as the gateway's token (the webhook secret, the AWS secret key). Each refusal is
 * InvalidInput (not retried), names the field, the variable's name and the fix, and never the secret.
 * Also the worker setting's parsing (workers/config.ts `loadGatewayAllow`).
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { after, before, describe, it } from 'node:test';
import YAML from 'yaml';
import { createServiceActivities, GatewayAdmin, type GatewayAllow } from '../../activities/service';
import { loadGatewayAllow } from '../../workers/config';
import { openServices, type Services } from '../../workers/worker';
import { ROOT } from '../support';

const SECRET = 'SECRETVALUE123-webhook';
const TOKEN = 'gateway-token-value-456';
const TOKEN_ENV = 'FLEETGATE_GATEWAY_TOKEN_TEST_SECRETS';

let receiver: Server;
let receiverUrl: string;
const received: { method?: string; url?: string; headers: IncomingHttpHeaders }[] = [];
let tmp: string;
let manifests: string;
let services: Services;

before(async () => {
  receiver = createServer((req, res) => {
    received.push({ method: req.method, url: req.url, headers: req.headers });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"routes":{},"events":[],"last":0,"next":0}');
  });
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
  receiverUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`;
  process.env.FLEETGATE_WEBHOOK_SECRET = SECRET;
  process.env[TOKEN_ENV] = TOKEN;
  tmp = mkdtempSync(join(tmpdir(), 'fleetgate-gateway-secrets-'));
  mkdirSync(join(ROOT, 'tmp'), { recursive: true });
  manifests = mkdtempSync(join(ROOT, 'tmp', 'gateway-secrets-'));
  services = await openServices(join(tmp, 'data'), ROOT, { kind: 'simulated' });
  delete services.webhook;
});

after(async () => {
  await services?.close();
  await new Promise((r) => receiver?.close(r));
  delete process.env.FLEETGATE_WEBHOOK_SECRET;
  delete process.env[TOKEN_ENV];
  rmSync(tmp, { recursive: true, force: true });
  if (manifests) rmSync(manifests, { recursive: true, force: true });
});

let files = 0;
/** A service manifest inside the root naming `url` and `tokenEnv`; its path relative to the root. */
function manifest(url: string, tokenEnv: string): string {
  const file = join(manifests, `m${++files}.yaml`);
  writeFileSync(
    file,
    YAML.stringify({
      apiVersion: 'fleetgate/v1',
      kind: 'Service',
      name: 'ranker',
      gateway: { url, tokenEnv },
      skus: [{ name: 'hw4', speedFactor: 1, latencyBudgetMs: 50 }],
      cohorts: [{ name: 'web-eu', sku: 'hw4', callers: 50, requestsPerCallerHour: 2, nightShare: 0.1 }],
      labels: { rate: 0.3, delay: '2h' },
    }),
  );
  return relative(ROOT, file);
}

function activities(gateways: GatewayAllow) {
  return createServiceActivities({
    conn: services.db.connection,
    runner: services.runner,
    key: services.key,
    root: ROOT,
    store: services.store,
    gateways,
    callers: services.callers,
  });
}

/** Every activity that would call the gateway, each refused with `pattern`, none retried. */
async function allRefused(acts: ReturnType<typeof activities>, file: string, pattern: RegExp) {
  const input = { rolloutId: 'stranger', manifest: file, cohorts: ['web-eu'] };
  const calls: [string, () => Promise<unknown>][] = [
    ['describeFleet', () => acts.describeFleet(input)],
    ['deliverWave', () => acts.deliverWave({ ...input, wave: 1, percent: 10, digest: 'a'.repeat(64) })],
    ['revertWave', () => acts.revertWave({ ...input, wave: 1 })],
    ['endShadow', () => acts.endShadow(input)],
    ['promoteCohort', () => acts.promoteCohort({ ...input, cohort: 'web-eu', digest: 'a'.repeat(64) })],
    [
      'collectTelemetry',
      () => acts.collectTelemetry({ ...input, candidateDigest: 'a'.repeat(64), fromMs: 0, toMs: 3_600_000 }),
    ],
  ];
  const errors: [string, Error & { type?: string; nonRetryable?: boolean }][] = [];
  for (const [name, call] of calls) {
    try {
      await call();
      assert.fail(`${name} was not refused`);
    } catch (err) {
      errors.push([name, err as Error]);
    }
  }
  // First what left the worker: before any check of the errors, so a leak is what a failure says.
  const leaked = received.filter((r) =>
    /SECRETVALUE123|gateway-token-value/.test(String(r.headers.authorization)),
  );
  assert.equal(
    received.length,
    0,
    `the receiver got ${received.length} request(s), ${leaked.length} with a secret`,
  );
  for (const [name, err] of errors) {
    assert.equal(err.type, 'InvalidInput', `${name}: ${err.message}`);
    assert.equal(err.nonRetryable, true, name);
    assert.match(err.message, pattern, name);
    assert.ok(!err.message.includes(SECRET) && !err.message.includes(TOKEN), `${name} names no secret`);
  }
}

describe('a service manifest cannot send the worker secrets elsewhere (real receiver on 127.0.0.1)', () => {
  it('sends nothing, not even the gateway token, to a gateway the worker does not allow', async () => {
    const other = { loopback: false, origins: ['http://127.0.0.1:1'] };
    await allRefused(
      activities(other),
      manifest(receiverUrl, TOKEN_ENV),
      new RegExp(
        `gateway\\.url of service manifest .*: ${receiverUrl} is not a gateway this worker may call .*` +
          `add ${receiverUrl} to FLEETGATE_GATEWAY_ALLOW`,
      ),
    );
    assert.deepEqual(received, [], 'the receiver got no request');
  });

  it("sends nothing when the manifest names another secret as the gateway's token", async () => {
    for (const tokenEnv of ['FLEETGATE_WEBHOOK_SECRET', 'AWS_SECRET_ACCESS_KEY', 'TEMPORAL_API_KEY']) {
      // The receiver is on loopback, which a worker without FLEETGATE_GATEWAY_ALLOW allows.
      await allRefused(
        activities({ loopback: true, origins: [] }),
        manifest(receiverUrl, tokenEnv),
        new RegExp(
          `gateway\\.tokenEnv: "${tokenEnv}" is not a gateway token variable; name FLEETGATE_GATEWAY_TOKEN`,
        ),
      );
    }
    assert.deepEqual(received, [], 'the receiver got no request');
  });

  it('refuses at the point of use too: a gateway client for another variable or origin is never made', async () => {
    assert.throws(
      () => new GatewayAdmin(receiverUrl, 'FLEETGATE_WEBHOOK_SECRET', { loopback: true, origins: [] }),
      /gateway\.tokenEnv of the service manifest: "FLEETGATE_WEBHOOK_SECRET" is not a gateway token variable/,
    );
    assert.throws(
      () => new GatewayAdmin(receiverUrl, TOKEN_ENV, { loopback: false, origins: [] }),
      /is not a gateway this worker may call/,
    );
    assert.deepEqual(received, [], 'the receiver got no request');
  });

  it('calls an allowed gateway with its token (the receiver sees the token, and only it)', async () => {
    const gw = new GatewayAdmin(
      receiverUrl,
      TOKEN_ENV,
      loadGatewayAllow({ FLEETGATE_GATEWAY_ALLOW: receiverUrl }),
    );
    assert.deepEqual(await gw.routes(), {});
    assert.equal(received.length, 1);
    assert.equal(received[0]!.headers.authorization, `Bearer ${TOKEN}`);
    received.length = 0;
  });
});

describe('FLEETGATE_GATEWAY_ALLOW', () => {
  it('allows loopback gateways when unset, and exactly what it lists when set', () => {
    assert.deepEqual(loadGatewayAllow({}), { loopback: true, origins: [] });
    assert.deepEqual(loadGatewayAllow({ FLEETGATE_GATEWAY_ALLOW: '' }), { loopback: true, origins: [] });
    assert.deepEqual(
      loadGatewayAllow({ FLEETGATE_GATEWAY_ALLOW: 'https://GW.internal:443, http://10.0.0.5:8080 loopback' }),
      { loopback: true, origins: ['https://gw.internal', 'http://10.0.0.5:8080'] },
    );
    assert.deepEqual(loadGatewayAllow({ FLEETGATE_GATEWAY_ALLOW: 'https://gw.internal:8443' }), {
      loopback: false,
      origins: ['https://gw.internal:8443'],
    });
    assert.deepEqual(loadGatewayAllow({ FLEETGATE_GATEWAY_ALLOW: 'none' }), { loopback: false, origins: [] });
  });

  it('refuses an entry that is not an origin, naming the variable and the fix', () => {
    for (const entry of ['gw.internal', 'ftp://gw.internal', 'https://gw.internal/admin', 'https://gw?x=1']) {
      assert.throws(
        () => loadGatewayAllow({ FLEETGATE_GATEWAY_ALLOW: entry }),
        /^Error: FLEETGATE_GATEWAY_ALLOW: ".*" is not a gateway origin; list origins such as https:\/\/gw\.internal:8443/,
        entry,
      );
    }
    assert.throws(
      () => loadGatewayAllow({ FLEETGATE_GATEWAY_ALLOW: 'loopback,https://ops:hunter2@gw.internal' }),
      (err: Error) => {
        assert.match(err.message, /FLEETGATE_GATEWAY_ALLOW: entry 2 is not a gateway origin/);
        assert.doesNotMatch(err.message, /hunter2/);
        return true;
      },
    );
  });
});

/**
 * The service manifest: the example loads; each kind of mistake is refused with the field, the value
 * (a number; never text, which could be another file's) and the fix; a gateway token variable outside
 * FLEETGATE_GATEWAY_TOKEN[_<NAME>] and a URL that is not http(s) or carries a password are refused; `manifestKind` tells a service from a fleet and names the fix for anything else; the
 * gateway's URL keeps its path prefix.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, describe, it } from 'node:test';
import YAML from 'yaml';
import type { ServiceManifestInput } from '../../policies/service-schema';
import { gatewayUrl, PATHS } from '../../serve/api';
import { loadServiceManifest, manifestKind } from '../../fleet/manifest';

const ROOT = resolve(__dirname, '..', '..');
const dir = mkdtempSync(join(tmpdir(), 'fleetgate-service-manifest-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function base(): ServiceManifestInput {
  return {
    apiVersion: 'fleetgate/v1',
    kind: 'Service',
    name: 'ranker',
    gateway: { url: 'http://127.0.0.1:8480' },
    skus: [{ name: 'hw4', speedFactor: 1, latencyBudgetMs: 50 }],
    cohorts: [{ name: 'web-eu', sku: 'hw4', callers: 100, requestsPerCallerHour: 2, nightShare: 0.1 }],
    labels: { rate: 0.3, delay: '2h' },
  };
}

let files = 0;
function write(doc: unknown, ext = '.yaml'): string {
  const file = join(dir, `m${++files}${ext}`);
  writeFileSync(file, ext === '.json' ? JSON.stringify(doc) : YAML.stringify(doc));
  return file;
}

function refused(doc: unknown, ...patterns: RegExp[]): void {
  const file = write(doc);
  assert.throws(
    () => loadServiceManifest(file),
    (err: Error & { type?: string }) => {
      assert.equal(err.type, 'InvalidInput');
      assert.match(
        err.message,
        new RegExp(`invalid service manifest ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`),
      );
      for (const p of patterns) assert.match(err.message, p);
      return true;
    },
  );
}

describe('service manifest', () => {
  it('loads the example with its defaults', () => {
    const m = loadServiceManifest(join(ROOT, 'examples/service/ranker.yaml'));
    assert.equal(m.kind, 'Service');
    assert.deepEqual(
      m.cohorts.map((c) => c.name),
      ['web-eu', 'web-us'],
    );
    assert.equal(m.gateway.tokenEnv, 'FLEETGATE_GATEWAY_TOKEN');
    const minimal = loadServiceManifest(write(base(), '.json'));
    assert.equal(minimal.seed, 1);
    assert.deepEqual(minimal.load, { maxRequestsPerWindow: 5000, concurrency: 16 });
    assert.equal(minimal.cohorts[0]!.rainShare, 0);
    assert.equal(minimal.cohorts[0]!.sensorNoise, 1);
  });

  it('refuses each mistake with the field, the value (numbers only) and the fix', () => {
    const cases: [string, (m: ServiceManifestInput) => void, RegExp[]][] = [
      [
        'a fleet cohort name (a "/" the gateway does not take)',
        (m) => (m.cohorts[0]!.name = 'web/eu'),
        [/cohorts\.0\.name: a gateway cohort name/, /"web-eu"/],
      ],
      [
        'an unknown SKU',
        (m) => (m.cohorts[0]!.sku = 'gpu'),
        [/cohorts\.0\.sku: unknown SKU "gpu"; declared: hw4/],
      ],
      [
        'a cohort declared twice',
        (m) => m.cohorts.push({ ...m.cohorts[0]! }),
        [/cohorts\.1\.name: cohort names must be unique: "web-eu" is declared twice; rename one/],
      ],
      [
        'a delay for an unknown cohort',
        (m) => (m.labels.delayByCohort = { 'web-us': '1h' }),
        [/labels\.delayByCohort\.web-us: unknown cohort "web-us"; declared: web-eu/],
      ],
      [
        'a gateway URL that is not one',
        (m) => (m.gateway.url = 'localhost 8480'),
        [/gateway\.url: the gateway's base URL/],
      ],
      [
        'a token variable that is not a variable name',
        (m) => (m.gateway.tokenEnv = 'my token'),
        [
          /gateway\.tokenEnv: the name given is not a gateway token variable; name FLEETGATE_GATEWAY_TOKEN or FLEETGATE_GATEWAY_TOKEN_<NAME>/,
        ],
      ],
      [
        'an unknown field of the candidate arm',
        (m) => (m.gateway.candidateArm = { weight: 5 } as never),
        [/gateway\.candidateArm/, /weight/],
      ],
      [
        'a digest in the candidate arm (the rollout names the candidate)',
        (m) => (m.gateway.candidateArm = { digest: 'a'.repeat(64) } as never),
        [/gateway\.candidateArm/, /digest/],
      ],
      [
        'a threshold outside (0, 1)',
        (m) => (m.gateway.candidateArm = { threshold: 1.5 }),
        [/gateway\.candidateArm\.threshold/, /\(got 1\.5\)/],
      ],
      ['no callers', (m) => (m.cohorts[0]!.callers = 0), [/cohorts\.0\.callers/, /\(got 0\)/]],
      [
        'a labeler noise above 0.5',
        (m) => (m.labels.noise = 0.7),
        [
          /labels\.noise: a share in \[0, 0\.5\]: above 0\.5 the outcome would be wrong more often than right \(got 0\.7\)/,
        ],
      ],
      [
        'a load of no requests',
        (m) => (m.load = { maxRequestsPerWindow: 0 }),
        [/load\.maxRequestsPerWindow/, /\(got 0\)/],
      ],
      [
        'a token variable of another secret (the AWS secret key)',
        (m) => (m.gateway.tokenEnv = 'AWS_SECRET_ACCESS_KEY'),
        [
          /gateway\.tokenEnv: "AWS_SECRET_ACCESS_KEY" is not a gateway token variable; name FLEETGATE_GATEWAY_TOKEN/,
        ],
      ],
      [
        'a token variable of another secret (the webhook secret)',
        (m) => (m.gateway.tokenEnv = 'FLEETGATE_WEBHOOK_SECRET'),
        [/gateway\.tokenEnv: "FLEETGATE_WEBHOOK_SECRET" is not a gateway token variable/],
      ],
      [
        'a token variable that only starts like the gateway token',
        (m) => (m.gateway.tokenEnv = 'FLEETGATE_GATEWAY_TOKENS'),
        [/gateway\.tokenEnv: "FLEETGATE_GATEWAY_TOKENS" is not a gateway token variable/],
      ],
      [
        'a gateway URL that is not http(s)',
        (m) => (m.gateway.url = 'file:///etc/passwd'),
        [/gateway\.url: an http:\/\/ or https:\/\/ URL of the gateway/],
      ],
      [
        'a gateway URL with a password',
        (m) => (m.gateway.url = 'http://ops:hunter2@127.0.0.1:8480'),
        [/gateway\.url: a URL without a user or password/, /^(?![\s\S]*hunter2)/],
      ],
    ];
    for (const [what, change, patterns] of cases) {
      const m = base();
      change(m);
      try {
        refused(m, ...patterns);
      } catch (err) {
        throw new Error(`${what}: ${(err as Error).message}`, { cause: err });
      }
    }
  });

  it('takes FLEETGATE_GATEWAY_TOKEN and FLEETGATE_GATEWAY_TOKEN_<NAME> as the token variable', () => {
    for (const tokenEnv of [
      'FLEETGATE_GATEWAY_TOKEN',
      'FLEETGATE_GATEWAY_TOKEN_RANKER',
      'FLEETGATE_GATEWAY_TOKEN_EU_2',
    ]) {
      const m = base();
      m.gateway.tokenEnv = tokenEnv;
      assert.equal(loadServiceManifest(write(m)).gateway.tokenEnv, tokenEnv);
    }
  });

  it('tells a service from a fleet, and names the fix for any other kind', () => {
    assert.equal(manifestKind(join(ROOT, 'examples/service/ranker.yaml')), 'Service');
    assert.equal(manifestKind(join(ROOT, 'test/fixtures/fleet.yaml')), 'Fleet');
    const other = write({ ...base(), kind: 'Gateway' });
    assert.throws(
      () => manifestKind(other),
      /kind: "Gateway"; write kind: Fleet \(vehicles\) or kind: Service/,
    );
    assert.throws(() => manifestKind(join(dir, 'missing.yaml')), /missing\.yaml does not exist/);
    const txt = join(dir, 'manifest.txt');
    writeFileSync(txt, 'kind: Service');
    assert.throws(() => manifestKind(txt), /unknown extension "\.txt": use \.yaml, \.yml or \.json/);
  });
});

describe('gateway URLs', () => {
  it("keeps the base URL's own path, so a gateway behind a path prefix is reached", () => {
    assert.equal(gatewayUrl('http://127.0.0.1:8480', PATHS.predict).href, 'http://127.0.0.1:8480/v1/predict');
    assert.equal(
      gatewayUrl('https://ml.example/ranker', PATHS.route('web-eu')).href,
      'https://ml.example/ranker/admin/routes/web-eu',
    );
    assert.equal(
      gatewayUrl('https://ml.example/ranker/', PATHS.events).href,
      'https://ml.example/ranker/admin/events',
    );
  });
});

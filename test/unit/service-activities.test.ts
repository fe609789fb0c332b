/**
 * The service's fleet activities against a real inference gateway on 127.0.0.1 (real onnxruntime on the
 * fixture packs, a real DuckDB file, real HTTP): a wave is a routing weight whose caller counts are the
 * router's own, a repeat changes nothing, a revert sets the weight to 0 at once, a batch is sent and
 * written once, shadow events carry both models, ending the shadow stops the mirror, a promotion makes
 * the candidate production; a cohort serving one rollout's candidate is refused to another; a gateway
 * that lacks a cohort is named with the cohort; no raw caller id reaches the event log.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import YAML from 'yaml';
import { num, rows } from '../../activities/db';
import { createRegistryActivities } from '../../activities/registry';
import { createServiceActivities, initService } from '../../activities/service';
import type { ServiceManifestInput } from '../../policies/service-schema';
import { parseGatewayConfig } from '../../serve/config';
import { startGateway, type Gateway } from '../../serve/gateway';
import { chooseArm } from '../../serve/router';
import { canarySalt } from '../../fleet/assignment';
import { loadServiceManifest } from '../../fleet/manifest';
import { UserPopulation } from '../../sim/users';
import { openServices, trustFixtureSigner, type Services } from '../../workers/worker';

const ROOT = resolve(__dirname, '..', '..');
const HOUR = 3_600_000;
const T0 = Date.UTC(2026, 0, 5);
const TOKEN_ENV = 'FLEETGATE_GATEWAY_TOKEN_TEST_SERVICE_ACTS';

let tmp: string;
/** The manifests, inside the worker's root (a worker reads no manifest outside it). */
let manifests: string;
let services: Services;
let gateway: Gateway;
let manifest: string;
let candidate: string;
let production: string;
let acts: ReturnType<typeof createServiceActivities>;

function doc(
  url: string,
  extra: ServiceManifestInput['cohorts'] = [],
  candidateArm?: NonNullable<ServiceManifestInput['gateway']['candidateArm']>,
): ServiceManifestInput {
  return {
    apiVersion: 'fleetgate/v1',
    kind: 'Service',
    name: 'ranker',
    seed: 4,
    gateway: { url, tokenEnv: TOKEN_ENV, ...(candidateArm ? { candidateArm } : {}) },
    skus: [{ name: 'hw4', speedFactor: 1, latencyBudgetMs: 50 }],
    cohorts: [
      { name: 'web-eu', sku: 'hw4', callers: 300, requestsPerCallerHour: 2, nightShare: 0.2 },
      { name: 'web-us', sku: 'hw4', callers: 200, requestsPerCallerHour: 2, nightShare: 0.5 },
      ...extra,
    ],
    labels: { rate: 0.5, delay: '1h' },
    load: { maxRequestsPerWindow: 400, concurrency: 8 },
  };
}

async function count(sql: string, params: (string | number)[] = []): Promise<number> {
  const [row] = await rows(services.db.connection, sql, params);
  return num(row ? Object.values(row)[0] : 0);
}

before(async () => {
  process.env[TOKEN_ENV] = randomBytes(16).toString('hex');
  tmp = mkdtempSync(join(tmpdir(), 'fleetgate-service-acts-'));
  mkdirSync(join(ROOT, 'tmp'), { recursive: true });
  manifests = mkdtempSync(join(ROOT, 'tmp', 'service-acts-'));
  const dataDir = join(tmp, 'data');
  trustFixtureSigner(dataDir);
  services = await openServices(dataDir, ROOT, { kind: 'simulated' });
  manifest = join(manifests, 'ranker.yaml');
  writeFileSync(manifest, YAML.stringify(doc('http://127.0.0.1:1')));
  production = (await initService(services, manifest, 'models/production', 'test')).production.digest;
  candidate = (
    await createRegistryActivities(services).registerCandidate({
      rolloutId: 't',
      packDir: 'models/candidate-good',
    })
  ).digest;
  const config = parseGatewayConfig(
    {
      apiVersion: 'fleetgate/v1',
      kind: 'Gateway',
      name: 'ranker',
      listen: { host: '127.0.0.1', port: 0 },
      stateDir: join(tmp, 'gateway'),
      cohorts: ['web-eu', 'web-us'],
      adminTokenEnv: TOKEN_ENV,
      acceptSimTime: true,
      faultInjection: true,
    },
    tmp,
  );
  gateway = await startGateway(config, {
    store: services.store,
    key: services.key,
    runner: services.runner,
    log: () => undefined,
  });
  writeFileSync(manifest, YAML.stringify(doc(gateway.url)));
  acts = createServiceActivities({
    conn: services.db.connection,
    runner: services.runner,
    key: services.key,
    root: ROOT,
    store: services.store,
    gateways: { loopback: true, origins: [] },
    callers: services.callers,
  });
});

after(async () => {
  await gateway?.close();
  await services?.close();
  delete process.env[TOKEN_ENV];
  rmSync(tmp, { recursive: true, force: true });
  if (manifests) rmSync(manifests, { recursive: true, force: true });
});

/** Callers of a cohort the gateway's router sends to the candidate under its current route. */
function routedToCandidate(cohort: string): number {
  const m = loadServiceManifest(manifest);
  const population = new UserPopulation(
    services.key,
    m.name,
    m.cohorts.find((c) => c.name === cohort)!,
  );
  const route = gateway.routes()[cohort]!;
  return population.pseudonyms.filter((p) => chooseArm(services.key, route, p) === 'candidate').length;
}

describe('service activities on a real gateway', () => {
  const base = { rolloutId: 'svc1', manifest: '' };
  before(() => (base.manifest = manifest));

  it('describes the service, and names the gateway and the cohort it does not route', async () => {
    const summary = await acts.describeFleet(base);
    assert.equal(summary.name, 'ranker');
    assert.equal(summary.mirrors, true, 'its shadow is a mirror that endShadow stops');
    assert.deepEqual(
      summary.cohorts.map((c) => [c.name, c.sku, c.vehicles]),
      [
        ['web-eu', 'hw4', 300],
        ['web-us', 'hw4', 200],
      ],
    );
    const wider = join(manifests, 'wider.yaml');
    writeFileSync(
      wider,
      YAML.stringify(
        doc(gateway.url, [
          { name: 'web-asia', sku: 'hw4', callers: 10, requestsPerCallerHour: 1, nightShare: 0 },
        ]),
      ),
    );
    await assert.rejects(
      acts.describeFleet({ ...base, manifest: wider }),
      (err: Error & { type?: string }) => {
        assert.equal(err.type, 'NotFound');
        assert.match(
          err.message,
          new RegExp(`gateway ${gateway.url.replace(/[.]/g, '\\.')} has no route for cohort\\(s\\) web-asia`),
        );
        return true;
      },
    );
    // A cohort named like a property every object inherits is refused by the manifest's schema.
    const inherited = join(manifests, 'inherited.yaml');
    writeFileSync(
      inherited,
      YAML.stringify(
        doc(gateway.url, [
          { name: 'constructor', sku: 'hw4', callers: 10, requestsPerCallerHour: 1, nightShare: 0 },
        ]),
      ),
    );
    await assert.rejects(
      acts.describeFleet({ ...base, manifest: inherited }),
      (err: Error & { type?: string }) => {
        assert.equal(err.type, 'InvalidInput');
        assert.match(
          err.message,
          /cohorts\.\d+\.name: "constructor" is a reserved name; choose another cohort name/,
        );
        return true;
      },
    );
  });

  it('delivers a wave as a weight whose callers are the router’s, and a repeat changes nothing', async () => {
    const input = { ...base, wave: 1, percent: 25, cohorts: ['web-eu', 'web-us'], digest: candidate };
    const first = await acts.deliverWave(input);
    const generations = Object.fromEntries(
      Object.entries(gateway.routes()).map(([c, r]) => [c, r.generation]),
    );
    assert.equal(first.jobId, 'svc1-w1');
    for (const cohort of ['web-eu', 'web-us']) {
      const r = gateway.routes()[cohort]!;
      assert.equal(r.weight, 25);
      assert.equal(r.mirror, 0);
      assert.equal(r.salt, canarySalt('svc1'));
      assert.equal(r.candidate?.digest, candidate);
      assert.equal(first.vehicles[cohort], routedToCandidate(cohort));
      assert.ok(first.vehicles[cohort]! > 0);
    }
    const again = await acts.deliverWave(input);
    assert.deepEqual(again, first);
    assert.deepEqual(
      Object.fromEntries(Object.entries(gateway.routes()).map(([c, r]) => [c, r.generation])),
      generations,
    );
  });

  it('logs every canary request once, in the arm that served it, with no raw caller id', async () => {
    const input = {
      ...base,
      cohorts: ['web-eu', 'web-us'],
      candidateDigest: candidate,
      fromMs: T0,
      toMs: T0 + HOUR,
    };
    const written = await acts.collectTelemetry(input);
    assert.equal(written.written, true);
    // 300 x 2 = 600 drawn for web-eu, capped at 400; 200 x 2 = about 400 for web-us.
    assert.ok(written.events > 600 && written.events <= 800, `${written.events} events`);
    const batch = `svc1:canary:${T0}-${T0 + HOUR}`;
    assert.equal(await count(`SELECT count(*) FROM events WHERE batch_id = ?`, [batch]), written.events);
    const candidateCallers = await count(
      `SELECT count(DISTINCT vehicle) FROM events WHERE batch_id = ? AND arm = 'candidate' AND cohort = 'web-eu'`,
      [batch],
    );
    assert.ok(candidateCallers > 0 && candidateCallers <= routedToCandidate('web-eu'));
    assert.equal(
      await count(
        `SELECT count(*) FROM events WHERE batch_id = ? AND arm = 'candidate' AND pred_candidate IS NULL`,
        [batch],
      ),
      0,
    );
    assert.equal(
      await count(
        `SELECT count(*) FROM events WHERE batch_id = ? AND (lat_candidate > 0 OR lat_production > 0)`,
        [batch],
      ),
      written.events,
    );
    assert.ok((await count(`SELECT count(*) FROM label_requests WHERE rollout_id = 'svc1'`)) > 0);
    assert.equal(await count(`SELECT count(*) FROM events WHERE vehicle LIKE '%user-%'`), 0);
    assert.equal(await count(`SELECT count(*) FROM events WHERE length(vehicle) <> 20`), 0);
    // A retry sends nothing and writes nothing.
    const before = (await (
      await fetch(`${gateway.url}/admin/events?after=0&limit=0`, {
        headers: { authorization: `Bearer ${process.env[TOKEN_ENV]}` },
      })
    ).json()) as { last: number };
    const retry = await acts.collectTelemetry(input);
    assert.deepEqual(retry, { ...written, written: false });
    const after = (await (
      await fetch(`${gateway.url}/admin/events?after=0&limit=0`, {
        headers: { authorization: `Bearer ${process.env[TOKEN_ENV]}` },
      })
    ).json()) as { last: number };
    assert.equal(after.last, before.last);
  });

  it("refuses a second rollout on a cohort that serves another rollout's candidate, changing nothing", async () => {
    const before = gateway.routes()['web-eu']!;
    const other = { ...base, rolloutId: 'svc-other' };
    const busy = (err: Error & { type?: string }) => {
      assert.equal(err.type, 'PointerConflict');
      assert.match(err.message, /cohort\(s\) web-eu \(rollout svc1: weight 25%, mirror 0\)/);
      assert.match(err.message, /one rollout per cohort at a time/);
      return true;
    };
    await assert.rejects(
      acts.deliverWave({ ...other, wave: 1, percent: 5, cohorts: ['web-eu'], digest: candidate }),
      busy,
    );
    await assert.rejects(
      acts.runShadow({
        ...other,
        candidateDigest: candidate,
        cohorts: ['web-eu'],
        share: 0.1,
        fromMs: T0,
        toMs: T0 + HOUR,
      }),
      busy,
    );
    assert.deepEqual(gateway.routes()['web-eu'], before);
  });

  it('reverts at once: weight 0, the callers that had the candidate; a second revert reverts 0', async () => {
    const had = routedToCandidate('web-eu') + routedToCandidate('web-us');
    const first = await acts.revertWave({ ...base, wave: 1, cohorts: ['web-eu', 'web-us'] });
    assert.equal(first.reverted, had);
    for (const r of Object.values(gateway.routes())) {
      assert.equal(r.weight, 0);
      assert.equal(r.candidate?.digest, candidate, 'the candidate stays loaded');
    }
    assert.deepEqual(await acts.revertWave({ ...base, wave: 1, cohorts: ['web-eu', 'web-us'] }), {
      reverted: 0,
    });
  });

  it('shadows on mirrored requests with both models, then promotes the candidate', async () => {
    const shadow = await acts.runShadow({
      ...base,
      rolloutId: 'svc2',
      candidateDigest: candidate,
      cohorts: ['web-us'],
      share: 0.5,
      fromMs: T0,
      toMs: T0 + HOUR,
    });
    assert.equal(gateway.routes()['web-us']!.mirror, 0.5);
    assert.equal(gateway.routes()['web-us']!.weight, 0);
    const batch = `svc2:shadow:${T0}-${T0 + HOUR}`;
    assert.ok(shadow.events > 100 && shadow.events < 300, `${shadow.events} mirrored of about 400`);
    assert.equal(
      await count(
        `SELECT count(*) FROM events WHERE batch_id = ? AND arm = 'shadow'
           AND pred_candidate IS NOT NULL AND pred_production IS NOT NULL AND lat_candidate > 0`,
        [batch],
      ),
      shadow.events,
    );
    // Ending the shadow stops the mirror of this rollout's routes only, and only once.
    assert.deepEqual(await acts.endShadow({ ...base, rolloutId: 'other', cohorts: ['web-us'] }), {
      stopped: 0,
    });
    assert.equal(gateway.routes()['web-us']!.mirror, 0.5);
    assert.deepEqual(await acts.endShadow({ ...base, rolloutId: 'svc2', cohorts: ['web-us', 'web-eu'] }), {
      stopped: 1,
    });
    assert.equal(gateway.routes()['web-us']!.mirror, 0);
    assert.equal(gateway.routes()['web-us']!.weight, 0);
    assert.equal(gateway.routes()['web-us']!.candidate?.digest, candidate, 'the candidate stays loaded');
    assert.deepEqual(await acts.endShadow({ ...base, rolloutId: 'svc2', cohorts: ['web-us'] }), {
      stopped: 0,
    });
    const promoted = await acts.promoteCohort({
      ...base,
      rolloutId: 'svc2',
      cohort: 'web-us',
      digest: candidate,
    });
    assert.deepEqual(promoted, { vehicles: 200 });
    const r = gateway.routes()['web-us']!;
    assert.equal(r.production.digest, candidate);
    assert.equal(r.candidate, undefined);
    assert.equal(r.weight, 0);
    assert.equal(gateway.routes()['web-eu']!.production.digest, production);
  });

  it("logs the candidate arm's error responses as failed requests, never sent for labeling", async () => {
    const faulty = join(manifests, 'faulty.yaml');
    writeFileSync(faulty, YAML.stringify(doc(gateway.url, [], { inject: { errorRate: 0.5 } })));
    const input = { rolloutId: 'svc3', manifest: faulty };
    await acts.deliverWave({ ...input, wave: 1, percent: 50, cohorts: ['web-eu'], digest: candidate });
    assert.deepEqual(gateway.routes()['web-eu']!.candidate?.inject, { errorRate: 0.5 });
    const batch = await acts.collectTelemetry({
      ...input,
      cohorts: ['web-eu'],
      candidateDigest: candidate,
      fromMs: T0 + HOUR,
      toMs: T0 + 2 * HOUR,
    });
    const id = `svc3:canary:${T0 + HOUR}-${T0 + 2 * HOUR}`;
    const failed = await count(`SELECT count(*) FROM events WHERE batch_id = ? AND failed`, [id]);
    const candidateEvents = await count(
      `SELECT count(*) FROM events WHERE batch_id = ? AND arm = 'candidate'`,
      [id],
    );
    assert.ok(
      failed > 0.3 * candidateEvents && failed < 0.7 * candidateEvents,
      `${failed} of ${candidateEvents}`,
    );
    assert.equal(
      await count(`SELECT count(*) FROM events WHERE batch_id = ? AND failed AND arm <> 'candidate'`, [id]),
      0,
    );
    assert.equal(
      await count(
        `SELECT count(*) FROM events WHERE batch_id = ? AND failed AND pred_candidate IS NOT NULL`,
        [id],
      ),
      0,
    );
    assert.equal(
      await count(
        `SELECT count(*) FROM label_requests r JOIN events e ON e.event_id = r.event_id
         WHERE e.batch_id = ? AND e.failed`,
        [id],
      ),
      0,
    );
    assert.ok(batch.events > 0);
    await acts.revertWave({ ...input, wave: 1, cohorts: ['web-eu'] });
  });
});

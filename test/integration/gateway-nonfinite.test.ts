/**
 * The gateway never answers a class for a model output that is NaN or Infinity, over real HTTP on
 * 127.0.0.1 with real onnxruntime on the fixture packs: features beyond float32 range are refused with a
 * 400 naming the field, the value and the range; finite features the fixture models answer NaN for (all
 * at the float32 maximum: w.x overflows to Infinity - Infinity) fail with a 500 on the production and the
 * candidate arm, counted and logged as failed events, and a mirrored candidate's NaN is a failed shadow.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadTrust } from '../../activities/pack';
import { bootstrapProduction, createRegistryActivities } from '../../activities/registry';
import { LocalObjectStore } from '../../activities/store';
import {
  FLOAT32_MAX,
  HEADERS,
  PATHS,
  type ErrorBody,
  type EventsResponse,
  type GatewayEvent,
  type PredictResponse,
} from '../../serve/api';
import { parseGatewayConfig, type GatewayConfigInput } from '../../serve/config';
import { startGateway, type Gateway } from '../../serve/gateway';
import { OnnxModelRunner, blobKey } from '../../workers/model-runner';
import { trustFixtureSigner, trustedKeyPaths } from '../../workers/worker';
import { ROOT } from '../support';

const TOKEN_ENV = 'FLEETGATE_TEST_NONFINITE_TOKEN';
const TOKEN = randomBytes(16).toString('hex');

let dataDir: string;
let store: LocalObjectStore;
let runner: OnnxModelRunner;
let prodDigest: string;
let candDigest: string;
let golden: number[];
const logs: object[] = [];
const open: Gateway[] = [];
/** Finite features (each the largest float32) for which both fixture models answer [NaN, NaN]. */
const NAN_ROW = Array<number>(8).fill(FLOAT32_MAX);

before(async () => {
  process.env[TOKEN_ENV] = TOKEN;
  dataDir = mkdtempSync(join(tmpdir(), 'fleetgate-nonfinite-'));
  trustFixtureSigner(dataDir);
  store = new LocalObjectStore(join(dataDir, 'store'));
  runner = new OnnxModelRunner((d) => store.get(blobKey(d)));
  const deps = { store, runner, trust: await loadTrust(trustedKeyPaths(dataDir)), root: ROOT };
  prodDigest = (await bootstrapProduction(deps, 'models/production', ['web'], 'test')).digest;
  candDigest = (
    await createRegistryActivities(deps).registerCandidate({
      rolloutId: 'test',
      packDir: 'models/candidate-good',
    })
  ).digest;
  const bytes = readFileSync(join(ROOT, 'models/production/golden/inputs.f32'));
  golden = Array.from(new Float32Array(bytes.buffer, bytes.byteOffset, 8));
});

after(async () => {
  for (const g of open) await g.close();
  await runner?.close();
  delete process.env[TOKEN_ENV];
  rmSync(dataDir, { recursive: true, force: true });
});

async function start(stateDir: string, patch: Partial<GatewayConfigInput> = {}): Promise<Gateway> {
  const config = parseGatewayConfig(
    {
      apiVersion: 'fleetgate/v1',
      kind: 'Gateway',
      name: 'svc',
      listen: { port: 0 },
      stateDir,
      cohorts: ['web'],
      adminTokenEnv: TOKEN_ENV,
      ...patch,
    },
    dataDir,
  );
  const g = await startGateway(config, {
    store,
    runner,
    key: Buffer.from('5a'.repeat(32), 'hex'),
    log: (l) => logs.push(l),
  });
  open.push(g);
  return g;
}

async function post(g: Gateway, body: string, requestId: string) {
  const res = await fetch(g.url + PATHS.predict, {
    method: 'POST',
    headers: { 'content-type': 'application/json', [HEADERS.requestId]: requestId },
    body,
  });
  return { status: res.status, body: (await res.json()) as PredictResponse & ErrorBody };
}

async function events(g: Gateway): Promise<GatewayEvent[]> {
  const res = await fetch(`${g.url}${PATHS.events}?after=0&limit=1000`, {
    headers: { authorization: `Bearer ${TOKEN}` },
  });
  return ((await res.json()) as EventsResponse).events;
}

const metrics = async (g: Gateway) => (await fetch(g.url + PATHS.metrics)).text();

describe('the gateway and values beyond float32', () => {
  it('refuses features beyond float32 range with a 400 naming the field, the value and the range', async () => {
    const g = await start('state-range');
    const cases: [string, string, string | number][] = [
      ['3.5e38', '3.5e38', 3.5e38],
      ['1e39', '1e39', 1e39],
      ['-1e39', '-1e39', -1e39],
      ['1e308', '1e308', 1e308],
      // JSON.parse reads 1e400 as Infinity: echoed by name (JSON has no Infinity).
      ['1e400', '1e400', 'Infinity'],
    ];
    for (const [what, literal, value] of cases) {
      const raw = `{"caller":"c-${what}","inputs":[${JSON.stringify(golden)},[${golden
        .map((v, i) => (i === 3 ? literal : String(v)))
        .join(',')}]]}`;
      const r = await post(g, raw, `range-${what}`);
      assert.equal(r.status, 400, what);
      assert.equal(r.body.error.field, 'inputs.1.3', what);
      assert.equal(r.body.error.value, value, what);
      assert.match(r.body.error.message, /float32 range/, what);
      assert.ok(r.body.error.message.includes(`${FLOAT32_MAX}`), `${what}: the range is given`);
      assert.equal(r.body.outputs, undefined, `${what}: no class`);
    }
    // The largest float32 itself is accepted (what the model makes of it is the next test's concern).
    const ok = await post(g, JSON.stringify({ caller: 'c-ok', inputs: [golden] }), 'range-ok');
    assert.equal(ok.status, 200);
    const m = await metrics(g);
    assert.match(m, /fleetgate_gateway_refused_total\{code="400",reason="out-of-range"\} 5\n/);
    assert.deepEqual(
      (await events(g)).map((e) => e.requestId),
      ['range-ok'],
      'refused requests have no event',
    );
  });

  it('answers 500, never a class, when the production model outputs NaN; the event is a failure', async () => {
    const g = await start('state-nan-prod');
    const r = await post(g, JSON.stringify({ caller: 'c-nan', inputs: [golden, NAN_ROW] }), 'nan-prod');
    assert.equal(r.status, 500);
    assert.equal(r.body.outputs, undefined);
    assert.match(r.body.error.message, /production model failed: the model output NaN for row 1/);
    assert.ok(!JSON.stringify(r.body).includes('clear'), 'no label');
    const [e] = await events(g);
    assert.equal(e?.requestId, 'nan-prod');
    assert.equal(e.status, 500);
    assert.equal(e.failed, true);
    assert.equal(e.reason, 'nonfinite-output');
    assert.equal(e.pred, undefined);
    const m = await metrics(g);
    assert.match(
      m,
      /fleetgate_gateway_nonfinite_outputs_total\{cohort="web",arm="production",path="served"\} 1\n/,
    );
    assert.match(m, /fleetgate_gateway_requests_total\{cohort="web",arm="production",code="500"\} 1\n/);
    assert.ok(logs.some((l) => (l as { event?: string }).event === 'gateway.nonfinite-output'));
  });

  it('answers 500 when the candidate arm outputs NaN, and logs a mirrored NaN as a failed shadow', async () => {
    const g = await start('state-nan-cand', {
      routes: {
        web: { production: { digest: prodDigest }, candidate: { digest: candDigest }, weight: 100 },
      },
    });
    const r = await post(g, JSON.stringify({ caller: 'c-cand', inputs: [NAN_ROW] }), 'nan-cand');
    assert.equal(r.status, 500);
    assert.equal(r.body.outputs, undefined);
    assert.match(r.body.error.message, /candidate model failed/);

    const m1 = await start('state-nan-shadow', {
      routes: {
        web: { production: { digest: prodDigest }, candidate: { digest: candDigest }, mirror: 1 },
      },
    });
    // A finite row the production model answers ([0, 1]) and the candidate answers [NaN, NaN] for.
    const M = FLOAT32_MAX;
    const split = [-1e38, 0, 1e38, -M, M, -M, -M, -M];
    const good = await post(m1, JSON.stringify({ caller: 'c-sh', inputs: [golden] }), 'shadow-ok');
    assert.equal(good.status, 200);
    const served = await post(m1, JSON.stringify({ caller: 'c-sh', inputs: [split] }), 'shadow-nan');
    assert.equal(served.status, 200, 'production answers: the mirror never changes the response');
    assert.equal(served.body.arm, 'production');
    assert.ok(served.body.outputs[0]!.probs.every(Number.isFinite));
    const both = await post(m1, JSON.stringify({ caller: 'c-sh', inputs: [NAN_ROW] }), 'both-nan');
    assert.equal(both.status, 500, 'production answers NaN too: 500, and no mirror');
    const ev = await (async () => {
      for (let i = 0; i < 200; i++) {
        const list = await events(m1);
        if (list.length === 3) return list;
        await new Promise((res) => setTimeout(res, 20));
      }
      throw new Error('timed out waiting for the events');
    })();
    const byId = Object.fromEntries(ev.map((e) => [e.requestId, e]));
    assert.equal(byId['shadow-ok']!.shadow?.failed, false);
    assert.equal(typeof byId['shadow-ok']!.shadow?.pred, 'number');
    const sh = byId['shadow-nan']!.shadow!;
    assert.deepEqual(
      { failed: sh.failed, reason: sh.reason, pred: sh.pred, conf: sh.conf, dropped: sh.dropped },
      { failed: true, reason: 'nonfinite-output', pred: undefined, conf: undefined, dropped: false },
      'a candidate failure, never a prediction',
    );
    assert.equal(byId['shadow-nan']!.failed, false, 'the production answer stands');
    assert.equal(byId['both-nan']!.shadow, undefined, 'a failed request is not mirrored');
    assert.match(
      await metrics(m1),
      /fleetgate_gateway_nonfinite_outputs_total\{cohort="web",arm="candidate",path="shadow"\} 1\n/,
    );
    const mc = await metrics(g);
    assert.match(
      mc,
      /fleetgate_gateway_nonfinite_outputs_total\{cohort="web",arm="candidate",path="served"\} 1\n/,
    );
  });
});

/**
 * The simulated users of a service: seeded draws (a retry sends the same requests), counts as the rate
 * says and capped, sorted times inside the window, the candidate's callers counted by the gateway's own
 * router rule, no raw caller id in anything returned; and `send` over real HTTP to a small server that
 * answers 429, 500 and 400: retried, returned as failed, thrown.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { ServiceCohort } from '../../policies/service-schema';
import { HEADERS, PATHS, PredictRequest } from '../../serve/api';
import { chooseArm } from '../../serve/router';
import { pseudonym } from '../../fleet/pseudonym';
import { FEATURES } from '../../policies/model-contract';
import { send, UserPopulation } from '../../sim/users';

const HOUR = 3_600_000;
const key = randomBytes(32);
const cohort = ServiceCohort.parse({
  name: 'web-eu',
  sku: 'hw4',
  callers: 500,
  requestsPerCallerHour: 4,
  nightShare: 0.2,
});
const population = new UserPopulation(key, 'ranker', cohort);

describe('user population', () => {
  it('draws the same requests for the same batch, other requests for another', () => {
    const a = population.draw(1, 'r1:canary:0-3600000', 0, HOUR, 10_000);
    const b = population.draw(1, 'r1:canary:0-3600000', 0, HOUR, 10_000);
    const c = population.draw(1, 'r1:canary:3600000-7200000', HOUR, 2 * HOUR, 10_000);
    assert.equal(a.n, b.n);
    assert.deepEqual(a.vehicle, b.vehicle);
    assert.deepEqual(a.ts, b.ts);
    assert.deepEqual(a.frames.features, b.frames.features);
    assert.deepEqual(a.frames.labels, b.frames.labels);
    assert.notDeepEqual(Array.from(c.vehicle.subarray(0, 50)), Array.from(a.vehicle.subarray(0, 50)));
  });

  it('draws about callers x rate x hours requests, capped, at sorted times in the window', () => {
    let total = 0;
    const windows = 20;
    for (let w = 0; w < windows; w++) {
      const from = w * HOUR;
      const d = population.draw(9, `b${w}`, from, from + HOUR, 1_000_000);
      total += d.n;
      for (let i = 0; i < d.n; i++) {
        assert.ok(d.ts[i]! >= from && d.ts[i]! < from + HOUR);
        if (i > 0) assert.ok(d.ts[i]! >= d.ts[i - 1]!, 'times are sorted');
        assert.ok(d.vehicle[i]! < cohort.callers);
      }
      assert.equal(d.frames.count, d.n);
    }
    const mean = cohort.callers * cohort.requestsPerCallerHour; // 2000 per hour
    // Poisson: the mean over 20 windows has sd sqrt(2000 / 20) = 10.
    assert.ok(Math.abs(total / windows - mean) < 50, `mean ${total / windows} near ${mean}`);
    assert.equal(population.draw(9, 'capped', 0, HOUR, 300).n, 300);
    assert.throws(() => population.draw(9, 'x', HOUR, HOUR, 10), /toMs > fromMs/);
  });

  it('builds valid predict requests, and returns no raw caller id anywhere', () => {
    const d = population.draw(1, 'r1:shadow:0-3600000', 0, HOUR, 200);
    const body = PredictRequest.parse(d.body(3));
    assert.equal(body.cohort, 'web-eu');
    assert.equal(body.inputs.length, 1);
    assert.equal(body.inputs[0]!.length, FEATURES);
    assert.equal(pseudonym(key, body.caller), d.callerPseudonym(3));
    const shown = JSON.stringify({ d, population, p: d.pseudonyms }) + Object.keys(d).join();
    assert.doesNotMatch(shown, /user-\d/);
    assert.doesNotMatch(shown, /ranker\//);
    assert.equal(d.pseudonyms.length, cohort.callers);
  });

  it("counts the candidate's callers by the gateway router's rule, growing with the weight", () => {
    const salt = 'r1:canary';
    let previous = 0;
    for (const weight of [0, 5, 25, 50, 100]) {
      const route = { candidate: { digest: 'c'.repeat(64) }, weight, salt };
      const routed = population.pseudonyms.filter((p) => chooseArm(key, route, p) === 'candidate').length;
      const counted = population.candidateCallers(key, salt, weight);
      assert.equal(counted, routed, `weight ${weight}`);
      assert.ok(counted >= previous);
      previous = counted;
    }
    assert.equal(previous, cohort.callers);
  });
});

describe('send', () => {
  let server: Server;
  let url: string;
  const seen = new Map<string, number>();
  const simTimes: string[] = [];
  before(async () => {
    server = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        assert.equal(req.url, PATHS.predict);
        const id = String(req.headers[HEADERS.requestId]);
        simTimes.push(String(req.headers[HEADERS.simTime]));
        const tries = (seen.get(id) ?? 0) + 1;
        seen.set(id, tries);
        const i = Number(id.split('.').pop());
        const parsed = PredictRequest.safeParse(JSON.parse(body));
        const answer = (status: number, json: object) => {
          res.writeHead(status, { 'content-type': 'application/json' });
          res.end(JSON.stringify(json));
        };
        if (!parsed.success) return answer(400, { error: { status: 400, message: 'bad body' } });
        if (i === 7)
          return answer(400, { error: { status: 400, field: 'inputs.0', value: 3, message: 'too short' } });
        if (i % 5 === 1 && tries < 3) return answer(429, { error: { status: 429, message: 'queue full' } });
        if (i % 4 === 2) return answer(500, { error: { status: 500, message: 'injected' } });
        answer(200, { requestId: id, arm: i % 2 ? 'candidate' : 'production', outputs: [], latencyMs: 1 });
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  it('retries a 429, returns a 500 as a failed request, and throws on a refused request', async () => {
    const d = population.draw(1, 'send', 0, HOUR, 7);
    const r = await send(url, d, 3, (i) => `t.0.${i}`);
    assert.equal(d.n, 7);
    assert.deepEqual(Array.from(r.status), [200, 200, 500, 200, 200, 200, 500]);
    assert.deepEqual(Array.from(r.failed), [0, 0, 1, 0, 0, 0, 1]);
    assert.deepEqual(r.arm, [
      'production',
      'candidate',
      undefined,
      'candidate',
      'production',
      'candidate',
      undefined,
    ]);
    assert.equal(r.retried, 4, 'requests 1 and 6 were each answered 429 twice');
    assert.equal(seen.get('t.0.1'), 3);
    assert.ok(simTimes.every((t) => /^\d+$/.test(t)));
    await assert.rejects(
      send(url, population.draw(1, 'send', 0, HOUR, 8), 2, (i) => `u.0.${i}`),
      (err: Error & { type?: string }) => {
        assert.equal(err.type, 'InvalidInput');
        assert.match(
          err.message,
          /refused a request of cohort web-eu with 400: inputs\.0: too short \(got 3\)/,
        );
        return true;
      },
    );
    await assert.rejects(
      send('http://127.0.0.1:1', d, 2, (i) => `v.0.${i}`),
      (err: Error & { type?: string }) => err.type === 'Unavailable' && /cannot be reached/.test(err.message),
    );
  });
});

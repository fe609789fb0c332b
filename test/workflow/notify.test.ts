/**
 * Webhook notifications of rolloutWorkflow on the time-skipping server, to a real HTTP receiver on
 * 127.0.0.1: a receiver that fails each notification twice gets every one once per idempotency key, in
 * the order the decision log has them (the gate, the regressing cohort's rollback, the promotions, the
 * end); a receiver that always fails changes nothing in the rollout but a decision-log line per
 * notification given up.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { approveUpdate, statusQuery, type RolloutResult } from '../../workflows/definitions';
import { verifySignature } from '../../activities/notify';
import {
  loadPolicy,
  makeWorld,
  reportOf,
  rolloutRequest,
  startRollout,
  timeSkippingServer,
  withWorker,
  type ReportEntry,
  type World,
} from '../support';
import type { PolicyInput } from '../../policies/schema';

const server = timeSkippingServer();
const secret = 'notify-test-secret';

interface Delivery {
  key: string;
  event: string;
  cohort?: string;
  text: string;
}

/** The receiver: answers each request with `status(key, attempt)`; keeps what it accepted, once per key. */
const receiver = {
  server: undefined as Server | undefined,
  url: '',
  status: (_key: string, _attempt: number) => 200,
  attempts: new Map<string, number>(),
  accepted: [] as Delivery[],
  badSignatures: 0,
  reset(status: (key: string, attempt: number) => number) {
    this.status = status;
    this.attempts.clear();
    this.accepted = [];
    this.badSignatures = 0;
  },
};

before(async () => {
  receiver.server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      if (!verifySignature(secret, req.headers, body).ok) receiver.badSignatures++;
      const key = String(req.headers['idempotency-key']);
      const attempt = (receiver.attempts.get(key) ?? 0) + 1;
      receiver.attempts.set(key, attempt);
      const status = receiver.status(key, attempt);
      if (status === 200 && !receiver.accepted.some((d) => d.key === key)) {
        const b = JSON.parse(body);
        receiver.accepted.push({ key, event: b.fleetgate.event, cohort: b.fleetgate.cohort, text: b.text });
      }
      res.writeHead(status).end(status === 200 ? 'ok' : 'try again');
    });
  });
  await new Promise<void>((ok) => receiver.server!.listen(0, '127.0.0.1', ok));
  receiver.url = `http://127.0.0.1:${(receiver.server!.address() as AddressInfo).port}/hook?token=t0ken`;
});

after(async () => {
  receiver.server?.closeAllConnections();
  await new Promise<void>((ok) => receiver.server?.close(() => ok()) ?? ok());
});

/** The week policy with a reviewer gate before the first wave: the gate is the first thing notified. */
function gated(): PolicyInput {
  const policy = loadPolicy('test/fixtures/policy-week.yaml');
  policy.waves![0] = { ...policy.waves![0]!, approval: { gate: 'wave-1', required: 1, timeout: '7d' } };
  return policy;
}

/** Runs the regressing candidate to its end under `gated()`, alice approving the gate. */
async function regressRollout(world: World, id: string): Promise<RolloutResult> {
  world.services.webhook = { url: receiver.url, secret };
  return withWorker(server.env, server.bundle, world, async (tq) => {
    const handle = await startRollout(
      server.env,
      tq,
      rolloutRequest(id, 'models/candidate-regress', gated()),
    );
    for (let i = 0; i < 100; i++) {
      if ((await handle.query(statusQuery)).pendingGate) break;
      await server.env.sleep('1h');
    }
    await handle.executeUpdate(approveUpdate, { args: [{ gate: 'wave-1', reviewer: 'alice' }] });
    return handle.result();
  });
}

const EVENT_OF: Record<string, string> = {
  'gate-open': 'gate-pending',
  rollback: 'rollback',
  withdraw: 'rollback',
  promoted: 'promoted',
  completed: 'completed',
};

/**
 * The notifications the decision log calls for, in its order: `<event> <cohort>`. A look's own `rollback`
 * decision is not one; the entry of the rollback carried out (phase `rollback`) is.
 */
function expectedEvents(decisions: ReportEntry[]): string[] {
  return decisions
    .filter((d) => EVENT_OF[d.action] !== undefined)
    .filter((d) => !['rollback', 'withdraw'].includes(d.action) || d.phase === 'rollback')
    .map((d) => `${EVENT_OF[d.action]}${d.cohort ? ` ${d.cohort}` : ''}`);
}

const states = (r: RolloutResult) => Object.fromEntries(r.cohorts.map((c) => [c.cohort, c.state]));

let flakyStates: Record<string, string> | undefined;

describe('webhook notifications of rolloutWorkflow (time-skipping)', () => {
  test('a receiver that fails twice gets each event once per key, in order; the rollout is unchanged', async () => {
    // Every notification fails twice (500, then 503) and is accepted at its third attempt.
    receiver.reset((_key, attempt) => (attempt === 1 ? 500 : attempt === 2 ? 503 : 200));
    const world = await makeWorld();
    try {
      const id = `notify-flaky`;
      const result = await regressRollout(world, id);
      assert.equal(result.outcome, 'completed', result.reason);
      const byCohort = states(result);
      assert.equal(byCohort['hw3/nordic'], 'rolled_back');
      for (const c of ['hw3/eu', 'hw4/us']) assert.notEqual(byCohort[c], 'rolled_back', `${c} kept`);
      flakyStates = byCohort;

      const { decisions } = reportOf(result);
      assert.ok(!decisions.some((d) => d.action === 'notify-failed'), 'every notification got through');
      const got = receiver.accepted.map((d) => `${d.event}${d.cohort ? ` ${d.cohort}` : ''}`);
      assert.deepEqual(got, expectedEvents(decisions));
      assert.equal(got[0], 'gate-pending');
      assert.ok(got.indexOf('rollback hw3/nordic') > 0, got.join(', '));
      for (const [c, s] of Object.entries(byCohort)) {
        if (s === 'promoted') assert.ok(got.includes(`promoted ${c}`), `promotion of ${c} notified`);
      }
      assert.equal(got[got.length - 1], 'completed');
      assert.ok(got.includes('promoted hw3/eu') || got.includes('promoted hw4/us'), got.join(', '));

      // One key per decision-log entry, in the log's order; each tried exactly three times.
      const keys = receiver.accepted.map((d) => d.key);
      const seqs = keys.map((k) => Number(k.slice(`${id}/`.length)));
      assert.ok(keys.every((k) => k.startsWith(`${id}/`)));
      assert.deepEqual(
        seqs,
        [...seqs].sort((a, b) => a - b),
      );
      assert.equal(new Set(keys).size, keys.length);
      assert.deepEqual(
        [...receiver.attempts.values()],
        keys.map(() => 3),
      );
      assert.equal(receiver.badSignatures, 0, 'every request signed with the secret');
      assert.match(receiver.accepted[0]!.text, new RegExp(`^fleetgate ${id}: approval gate pending`));
    } finally {
      await world.close();
    }
  });

  test('a receiver that always fails: the same outcome, and the decision log notes each failed notification', async () => {
    receiver.reset(() => 500);
    const world = await makeWorld();
    try {
      const result = await regressRollout(world, `notify-down`);
      assert.equal(result.outcome, 'completed', result.reason);
      assert.equal(states(result)['hw3/nordic'], 'rolled_back');
      if (flakyStates) assert.deepEqual(states(result), flakyStates, 'the same decisions as with a receiver');
      assert.equal(receiver.accepted.length, 0);

      const { decisions } = reportOf(result);
      const expected = expectedEvents(decisions);
      const failed = decisions.filter((d) => d.action === 'notify-failed');
      assert.equal(failed.length, expected.length, failed.map((d) => d.reason).join('\n'));
      for (const d of failed) {
        assert.match(
          d.reason,
          /not delivered \(after its last attempt\): webhook at 127\.0\.0\.1:\d+ answered 500/,
        );
        assert.ok(!d.reason.includes('t0ken'), 'the URL beyond its host is never logged');
      }
      // Every notification was retried to the retry policy's last attempt.
      assert.deepEqual(
        [...receiver.attempts.values()],
        expected.map(() => 10),
      );
    } finally {
      await world.close();
    }
  });
});
